#!/usr/bin/env python3
"""Reference scores for windowed probe members (test/probes-window.test.ts), computed with numpy
alone, independently of the TypeScript scorer: fixed random data, a two-member ensemble (a per-token
Mahalanobis member of the update and a windowed one over novel positions), its per-position scores.

    python3 scripts/window-reference.py > test/fixtures/window-reference.json
"""
import json

import numpy as np

rng = np.random.default_rng(12)
d, size, positions = 6, 4, 24
ids = [5, 9, 5, 9, 5, 9, 5, 9, 2, 7, 7, 7, 7, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
assert len(ids) == positions
h0 = rng.normal(size=(positions, d))
h1 = h0 + rng.normal(size=(positions, d)) * 0.7 + 0.3


def gaussian():
    a = rng.normal(size=(d, d)) * 0.4
    cov = a @ a.T + np.eye(d) * 0.5
    return rng.normal(size=d) * 0.2, np.linalg.cholesky(cov)


def packed(l):
    return [float(l[i, j]) for i in range(d) for j in range(i + 1)]


def distance(x, mean, l):
    cov = l @ l.T
    c = x - mean
    return float(np.sqrt(c @ np.linalg.solve(cov, c)))


tok_mean, tok_l = gaussian()
win_mean, win_l = gaussian()
tok_cal = (1.5, 2.0)
win_cal = (0.8, 1.25)

# Novel: (previous id, id) seen for the first time; the first position's previous id is "none".
seen, novel = set(), []
prev = None
for t in ids:
    novel.append((prev, t) not in seen)
    seen.add((prev, t))
    prev = t

update = h1 - h0
ring, last = [], 0.0
token_scores, window_scores, ensemble = [], [], []
for p in range(positions):
    tok = distance(update[p], tok_mean, tok_l)
    if novel[p]:
        ring = (ring + [update[p]])[-size:]
        mean = (np.sum(ring, axis=0) + (size - len(ring)) * win_mean) / size
        last = distance(mean, win_mean, win_l)
    token_scores.append(tok)
    window_scores.append(last)
    ensemble.append(max((tok - tok_cal[0]) / tok_cal[1], (last - win_cal[0]) / win_cal[1]))

hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
member = lambda mid, mean, l, cal, window: {
    "id": mid,
    "kind": "mahalanobis",
    "hook": hooks,
    "calibration": {"center": cal[0], "scale": cal[1]},
    "input": "difference",
    **({"window": {"size": size, "positions": "novel-bigram"}} if window else {}),
    "gaussian": {"form": "cholesky", "shrinkage": 0, "mean": [float(x) for x in mean], "factor": packed(l)},
}
figures = {"trials": 0, "concepts": [], "auroc": None, "tpr_at_fpr_0.01": None, "tpr_at_fpr_0.05": None}
probe = {
    "formatVersion": 1,
    "id": "window-reference",
    "kind": "ensemble-max",
    "label": "window reference",
    "description": "scripts/window-reference.py",
    "modelFingerprint": "lw1-reference",
    "hook": hooks,
    "dModel": d,
    "threshold": 1.0,
    "targetFpr": 0.01,
    "aggregator": {"kind": "max"},
    "training": figures,
    "evaluation": figures,
    "members": [member("update-L1", tok_mean, tok_l, tok_cal, False), member("update-L1-w4", win_mean, win_l, win_cal, True)],
}
json.dump(
    {
        "probe": probe,
        "ids": ids,
        "novel": novel,
        "h0": h0.ravel().tolist(),
        "h1": h1.ravel().tolist(),
        "tokenScores": token_scores,
        "windowScores": window_scores,
        "ensemble": ensemble,
    },
    __import__("sys").stdout,
)
