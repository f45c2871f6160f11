#!/usr/bin/env python3
"""Reference figures for the length allowance (src/probes/aggregators.ts, calibration.ts), computed
with numpy alone, independently of the TypeScript code: fixed clean per-position aggregates, the
allowance's slope (mean excess over the 99th percentile), and request scores (maximum over positions
of a rolling mean, first positions skipped, less perLog * ln(n / from) once n > from).

    python3 scripts/length-allowance-reference.py > test/fixtures/length-allowance-reference.json
"""
import json
import sys

import numpy as np

rng = np.random.default_rng(20261204)
# Clean per-position aggregates of a few requests: a Gumbel body (what a maximum over members looks like).
lengths = [700, 1200, 90, 400]
aggregates = [rng.gumbel(loc=0.0, scale=0.35, size=n) for n in lengths]
pooled = np.sort(np.concatenate(aggregates))
u = pooled[int(np.floor(0.99 * len(pooled)))]
per_log = float(np.mean(pooled[pooled > u] - u))

# Request scores: per-position scores, rolling mean over `window`, the first `skip` positions unscored,
# the n-th scored position (n from 1) lowered by per_log * ln(n / frm) when n > frm.
window, skip, frm = 3, 2, 4
requests = [rng.normal(size=n) + (1.5 if i == 2 else 0.0) * (np.arange(n) > 30) for i, n in enumerate([12, 60, 200])]


def request_score(x, per_log):
    best = -np.inf
    for p in range(skip, len(x)):
        n = p - skip + 1
        lo = max(skip, p - window + 1)
        v = float(np.mean(x[lo : p + 1]))
        if n > frm:
            v -= per_log * np.log(n / frm)
        best = max(best, v)
    return best


json.dump(
    {
        "aggregates": [a.tolist() for a in aggregates],
        "perLog": per_log,
        "aggregator": {"kind": "rolling-mean", "window": window, "skip": skip, "lengthAllowance": {"perLog": 0.3, "from": frm}},
        "requests": [r.tolist() for r in requests],
        "requestScores": [request_score(r, 0.3) for r in requests],
        "requestScoresPlain": [request_score(r, 0.0) for r in requests],
    },
    sys.stdout,
)
