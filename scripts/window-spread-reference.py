#!/usr/bin/env python3
"""Reference figures for the windowed members' spread discount (probes/window.ts), computed with
numpy alone, independently of the TypeScript code (test/probes-window-spread.test.ts):

- the fit: on fixed clean requests, scale = 1/σ per dimension of the update rows at positions ≥ skip,
  reference = the mean over full windows of novel positions of Σ_j scale_j² · (the window's variance
  of dimension j about its own mean);
- the scorer: one request whose rows spread 3× wider in positions 10–17 (a kind of text the fit
  never held) and carry an added vector from position 20 on (an injection); per position, the
  window mean's Mahalanobis distance divided by √max(1, spread / reference).

    python3 scripts/window-spread-reference.py > test/fixtures/window-spread-reference.json
"""
import json
import sys

import numpy as np

rng = np.random.default_rng(20261204)
d, size, skip = 5, 4, 4


def novelty(ids):
    seen, out, prev = set(), [], None
    for t in ids:
        out.append((prev, t) not in seen)
        seen.add((prev, t))
        prev = t
    return out


def request(n, spread_rows=(), shift_from=None, shift=None):
    ids = [int(x) for x in rng.integers(0, 6, size=n)]
    h0 = rng.normal(size=(n, d))
    noise = rng.normal(size=(n, d)) * 0.7
    for p in spread_rows:
        noise[p] *= 3.0
    h1 = h0 + noise + np.array([0.3, -0.2, 0.1, 0.0, 0.5])
    if shift_from is not None:
        h1[shift_from:] += shift
    return ids, h0, h1


# ---- the fit ---------------------------------------------------------------------------------
fit = [request(int(rng.integers(20, 36))) for _ in range(10)]
rows, window_vars = [], []
for ids, h0, h1 in fit:
    u = (h1 - h0).astype(np.float32).astype(np.float64)
    rows.append(u[skip:])
    nov = novelty(ids)
    ring = []
    for p in range(skip, len(ids)):
        if not nov[p]:
            continue
        ring = (ring + [u[p]])[-size:]
        if len(ring) == size:
            window_vars.append(np.var(np.array(ring), axis=0))
rows = np.concatenate(rows)
scale = 1 / np.sqrt(np.var(rows, axis=0))
reference = float(np.mean([np.sum(scale**2 * v) for v in window_vars]))

# ---- the scorer ------------------------------------------------------------------------------
ids, h0, h1 = request(30, spread_rows=range(10, 18), shift_from=20, shift=np.array([1.5, 0.0, -1.0, 0.5, 0.0]))
win_mean = rng.normal(size=d) * 0.2
a = rng.normal(size=(d, d)) * 0.2
win_l = np.linalg.cholesky(a @ a.T + np.eye(d) * 0.15)
u = h1 - h0
nov = novelty(ids)
ring, last_plain, last_spread = [], 0.0, 0.0
plain, discounted = [], []
for p in range(len(ids)):
    if nov[p]:
        ring = (ring + [u[p]])[-size:]
        mean = (np.sum(ring, axis=0) + (size - len(ring)) * win_mean) / size
        c = mean - win_mean
        dist = float(np.sqrt(c @ np.linalg.solve(win_l @ win_l.T, c)))
        x = np.array(ring)
        s = float(np.mean(np.sum(((x - x.mean(axis=0)) * scale) ** 2, axis=1))) if len(ring) >= 2 else float("nan")
        discount = np.sqrt(s / reference) if np.isfinite(s) and s > reference else 1.0
        last_plain, last_spread = dist, dist / discount
    plain.append(last_plain)
    discounted.append(last_spread)

hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
figures = {"trials": 0, "concepts": [], "auroc": None, "tpr_at_fpr_0.01": None, "tpr_at_fpr_0.05": None}
probe = {
    "formatVersion": 1,
    "id": "window-spread-reference",
    "kind": "mahalanobis",
    "label": "window spread reference",
    "description": "scripts/window-spread-reference.py",
    "modelFingerprint": "lw1-reference",
    "hook": hooks,
    "dModel": d,
    "threshold": 1.0,
    "targetFpr": 0.01,
    "aggregator": {"kind": "max"},
    "training": figures,
    "evaluation": figures,
    "input": "difference",
    "window": {"size": size, "positions": "novel-bigram", "spread": {"scale": scale.tolist(), "reference": reference}},
    "gaussian": {"form": "cholesky", "shrinkage": 0, "mean": win_mean.tolist(), "factor": [float(win_l[i, j]) for i in range(d) for j in range(i + 1)]},
}
json.dump(
    {
        "fit": [{"ids": i, "h0": a0.ravel().tolist(), "h1": a1.ravel().tolist()} for i, a0, a1 in fit],
        "skip": skip,
        "scale": scale.tolist(),
        "reference": reference,
        "probe": probe,
        "ids": ids,
        "h0": h0.ravel().tolist(),
        "h1": h1.ravel().tolist(),
        "plain": plain,
        "discounted": discounted,
    },
    sys.stdout,
)
