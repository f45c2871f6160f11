"""
Issue 12: can a probe trained on injection trials catch concepts it never saw if it reads energies
(squared whitened coordinates) instead of directions? A linear score w.x moves by s(w.u) under an
injection s.u, so it sees a held-out concept only through what u shares with the training concepts
(docs/trials.md); an energy sum_i w_i z_i^2 grows for any direction with w_i > 0.

    npx tsx scripts/dump-trial-updates.ts /tmp/lw-qwen3-generic /tmp/q3-updates
    python3 scripts/quadratic-probe-study.py /tmp/q3-updates [WINDOW]

Per layer: whitening (mean, covariance + 1e-3 mean-variance ridge) fitted on 100 clean training
trials; z-bar = the mean of the last WINDOW (8) whitened updates; per-trial score = max over
positions >= 4 + WINDOW - 1. Scores: 'maha' sum(z-bar^2) (no training); 'quad' logistic regression
on z-bar^2, positives = positions inside the injection window of training-concept trials (injected
at or below the layer), negatives = clean positions; 'quadc' the same with training random-direction
injections added to the negatives (concept-specific energy); 'lin' logistic regression on z-bar
(the linear probe on updates); 'span' the energy of z-bar in the span of the training concepts'
mean shifts. Layers are combined by the max of (score - median) / (q99 - median) on the other 100
clean training trials; the threshold is their 99th percentile. Printed per detector: eval clean
trials fired; per family and strength (eval split: held-out concepts) AUROC against the eval clean
trials, flagged at the threshold, and TPR at the eval clean trials' own 1%.
"""
import json
import sys

import numpy as np

D = sys.argv[1]
W = int(sys.argv[2]) if len(sys.argv) > 2 else 8
SKIP = 4
meta = json.load(open(f'{D}/meta.json'))
d, L, R, T = meta['d'], meta['L'], meta['rows'], meta['trials']


def rows_of(ts):
    return np.concatenate([np.arange(t['offset'] + SKIP, t['offset'] + t['positions']) for t in ts])


def window_rows(ts, layer):
    """Rows inside each trial's injection window, for injections at or below `layer`."""
    out = []
    for t in ts:
        w, s = t['window'], t['start']
        if t['layer'] is not None and t['layer'] > layer:
            continue
        lo = max(w['start'], s + SKIP)
        hi = min(w['end'] if w['end'] is not None else 10**9, s + t['positions'])
        if hi > lo:
            out.append(np.arange(t['offset'] + lo - s, t['offset'] + hi - s))
    return np.concatenate(out) if out else np.array([], int)


def auroc(pos, neg):
    allv = np.concatenate([pos, neg])
    r = allv.argsort().argsort() + 1
    return (r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def fit_logistic(xp, xn, l2=1e-2, iterations=300):
    """Balanced, L2-penalised logistic regression on standardised features (gradient descent)."""
    x = np.vstack([xp, xn])
    y = np.r_[np.ones(len(xp)), np.zeros(len(xn))]
    wt = np.r_[np.full(len(xp), 0.5 / len(xp)), np.full(len(xn), 0.5 / len(xn))]
    m, s = x.mean(0), x.std(0) + 1e-6
    xs = (x - m) / s
    w, b = np.zeros(xs.shape[1]), 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(xs @ w + b)))
        w -= 4 * (xs.T @ ((p - y) * wt) + l2 * w)
        b -= 4 * ((p - y) * wt).sum()
    return w / s


rng = np.random.default_rng(0)
clean_train = [t for t in T if t['condition'] == 'none' and t['split'] == 'train']
clean_eval = [t for t in T if t['condition'] == 'none' and t['split'] == 'eval']
concept_train = [t for t in T if t['family'] == 'concept' and t['split'] == 'train']
random_train = [t for t in T if t['family'] in ('random', 'random-heldout') and t['split'] == 'train']
order = rng.permutation(len(clean_train))
clean_fit = [clean_train[i] for i in order[:100]]
clean_val = [clean_train[i] for i in order[100:]]
scores = {}  # detector -> layer -> trial id -> score
for layer in range(L):
    x = np.fromfile(f'{D}/L{layer}.f32', dtype=np.float32).reshape(R, d)
    fr = rows_of(clean_fit)
    mu = x[fr].mean(0)
    cov = np.cov(x[fr] - mu, rowvar=False)
    cov += 1e-3 * np.trace(cov) / d * np.eye(d)
    ev, vec = np.linalg.eigh(cov)
    z = (x - mu) @ ((vec / np.sqrt(ev)) @ vec.T)
    zb = np.zeros_like(z)
    for t in T:
        a, p = t['offset'], t['positions']
        c = np.cumsum(np.vstack([np.zeros((1, d), np.float32), z[a : a + p]]), 0)
        k = np.arange(1, p + 1)
        lo = np.maximum(0, k - W)
        zb[a : a + p] = (c[k] - c[lo]) / (k - lo)[:, None]
    f = zb**2
    pos, neg, rnd = window_rows(concept_train, layer), rows_of(clean_fit), window_rows(random_train, layer)
    out = {'maha': f.sum(1)}
    if len(pos):
        out['quad'] = f @ fit_logistic(f[pos], f[neg])
        out['lin'] = zb @ fit_logistic(zb[pos], zb[neg])
        if len(rnd):
            out['quadc'] = f @ fit_logistic(f[pos], np.vstack([f[neg], f[rnd]]))
        base = zb[neg].mean(0)
        shifts = []
        for concept in sorted({t['concept'] for t in concept_train}):
            rows = window_rows([t for t in concept_train if t['concept'] == concept], layer)
            if len(rows):
                v = zb[rows].mean(0) - base
                shifts.append(v / np.linalg.norm(v))
        q = np.linalg.qr(np.array(shifts).T)[0]
        out['span'] = ((zb @ q) ** 2).sum(1)
    for name, v in out.items():
        first = SKIP + W - 1
        scores.setdefault(name, {})[layer] = {
            t['id']: float(v[t['offset'] + (first if t['positions'] > first + 1 else SKIP) : t['offset'] + t['positions']].max()) for t in T
        }
    del x, z, zb, f


def report(name, layers):
    combined = {}
    for layer in layers:
        sc = scores[name][layer]
        v = np.array([sc[t['id']] for t in clean_val])
        med, q99 = np.median(v), np.quantile(v, 0.99)
        for k, s in sc.items():
            combined[k] = max(combined.get(k, -np.inf), (s - med) / (q99 - med + 1e-9))
    threshold = np.quantile([combined[t['id']] for t in clean_val], 0.99)
    neg = np.array([combined[t['id']] for t in clean_eval])
    parts = [f'{name:5s} layers {layers}: eval clean fired {np.mean(neg > threshold):.3f}']
    for family in ['concept', 'random', 'random-heldout', 'contrast']:
        for s in [0.25, 0.5, 1]:
            p = np.array([combined[t['id']] for t in T if t['family'] == family and t['split'] == 'eval' and t['strength'] == s])
            if len(p):
                parts.append(f'{family} x{s}: AUROC {auroc(p, neg):.3f} flagged {np.mean(p > threshold):.2f} TPR@1% {np.mean(p > np.quantile(neg, 0.99)):.2f}')
    print(' | '.join(parts))


for name in ['maha', 'quad', 'quadc', 'lin', 'span']:
    layers = sorted(scores[name])
    report(name, layers)
    for layer in layers:
        report(name, [layer])
