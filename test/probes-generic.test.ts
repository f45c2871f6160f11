/**
 * Generic injection detectors (issue 7): the new vector families produce the vectors they claim,
 * the update-Mahalanobis score matches an independent computation, detectors refuse another
 * model, the same inputs give the same bytes, and the daemon's scorer on a written ensemble equals
 * the offline combination the report uses.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { aggregateSequence, createAggregator, skipFrom, validateAggregatorSpec } from '../src/probes/aggregators.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { corpusRequests, loadCorpora, loadCorpus, resolveCorpus } from '../src/lab/corpus.js';
import { calibrate, detectorTokenScores, fitAnomalyDetector, MemberScoreCache, requestScore, scoreSeq, windowFromLayer, type Seq } from '../src/lab/generic.js';
import { fitGaussian } from '../src/lab/gaussian-fit.js';
import { createProbe, loadProbe } from '../src/probes/probe.js';
import { mahalanobisBody, parseProbeFile, serializeProbeFile, validateProbeFile } from '../src/probes/probe-file.js';
import { createRng } from '../src/rng.js';
import { resolveTrialConfig } from '../src/lab/trial-config.js';
import { createFamily, crossLayerSource } from '../src/lab/trial-families.js';
import { CONFIGS, tinyConfigObject } from './probes-trials-helpers.js';

const STORE_DIR = new URL('../models/qwen2-code-16m/concepts/', import.meta.url).pathname;
const tmp = mkdtempSync(join(tmpdir(), 'lw-generic-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// ---- independent linear algebra (Gauss–Jordan inverse), no code shared with src/probes ----------
function inverse(a: number[][]): number[][] {
  const n = a.length;
  const m = a.map((row, i) => [...row, ...Array.from({ length: n }, (_, j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r][c]) > Math.abs(m[p][c])) p = r;
    [m[c], m[p]] = [m[p], m[c]];
    const piv = m[c][c];
    for (let j = 0; j < 2 * n; j++) m[c][j] /= piv;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r][c];
      for (let j = 0; j < 2 * n; j++) m[r][j] -= f * m[c][j];
    }
  }
  return m.map((row) => row.slice(n));
}

/** d² = cᵀ Σ⁻¹ c with Σ = (1 − s)·S + s·(tr S / d)·I, S the population covariance of `rows`. */
function independentMahalanobis(rows: number[][], s: number, x: number[]): number {
  const n = rows.length;
  const d = rows[0].length;
  const mean = Array.from({ length: d }, (_, j) => rows.reduce((a, r) => a + r[j], 0) / n);
  const S = Array.from({ length: d }, (_, i) => Array.from({ length: d }, (_, j) => rows.reduce((a, r) => a + (r[i] - mean[i]) * (r[j] - mean[j]), 0) / n));
  const mu = S.reduce((a, row, i) => a + row[i], 0) / d;
  const sigma = S.map((row, i) => row.map((v, j) => (1 - s) * v + (i === j ? s * mu : 0)));
  const inv = inverse(sigma);
  const c = x.map((v, j) => v - mean[j]);
  let q = 0;
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) q += c[i] * inv[i][j] * c[j];
  return Math.sqrt(q);
}

const FP = 'lw1-generic-test-model-a';
const none = { trials: 0, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };

describe('Mahalanobis of a layer update (input: difference)', () => {
  // Two "layers" of 3 features; the update is layer 1 − layer 0.
  const l0 = [
    [1, 2, 0.5],
    [0.2, 1.1, -0.3],
    [1.5, -0.7, 2.2],
    [-0.4, 0.3, 1.0],
    [0.9, 0.8, -1.2],
    [2.1, -1.5, 0.4],
  ];
  const l1 = [
    [1.3, 2.9, 0.1],
    [0.1, 1.9, 0.4],
    [2.2, -0.1, 2.0],
    [0.3, 0.2, 1.9],
    [0.5, 1.7, -0.8],
    [2.0, -0.6, 1.5],
  ];
  const upd = l1.map((r, i) => r.map((v, j) => v - l0[i][j]));
  const g = fitGaussian({ rows: 6, cols: 3, data: Float32Array.from(upd.flat()) }, { shrinkage: 0.25 });
  const file = validateProbeFile({
    formatVersion: 1,
    id: 'upd',
    label: 'update',
    description: '',
    modelFingerprint: FP,
    hook: ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'],
    dModel: 3,
    threshold: 1,
    targetFpr: 0.01,
    aggregator: { kind: 'max' },
    training: none,
    evaluation: none,
    ...mahalanobisBody(g, 'difference'),
  });

  // The daemon's scorer whitens with L⁻¹ rounded to int16 and rounds the input too (probes/simd.ts):
  // within 2e-4 relative of the float64 explicit inverse here (test/probes-fastpath.test.ts: real data).
  it('scores ‖Σ^(-1/2)(x₁ − x₀ − μ)‖ as an explicit-inverse computation does (rel. 2e-4)', () => {
    const probe = createProbe(file);
    expect(probe.inputDim).toBe(6);
    for (const [a, b] of [
      [[0.3, -0.2, 1.0], [1.1, 0.4, 0.2]],
      [[5, 5, 5], [-5, 0, 5]],
      [[0, 0, 0], [0, 0, 0]],
    ]) {
      const row = Float32Array.from([...a, ...b]);
      const want = independentMahalanobis(upd, 0.25, b.map((v, j) => Math.fround(v) - Math.fround(a[j])));
      expect(Math.abs(probe.scoreRow(row, 0) - want) / Math.max(1e-12, want)).toBeLessThan(2e-4);
    }
  });

  it('round-trips, and refuses difference input on one hook or an unknown input kind', () => {
    const text = serializeProbeFile(file);
    expect(text).toContain('"input": "difference"');
    expect(serializeProbeFile(parseProbeFile(text, FP))).toBe(text);
    const bad1 = { ...JSON.parse(text), hook: 'blocks.1.hook_resid_post' };
    expect(() => validateProbeFile(bad1)).toThrow(/LW_ERR_PROBE_INVALID|exactly two hooks/);
    const bad2 = { ...JSON.parse(text), input: 'sum' };
    expect(() => validateProbeFile(bad2)).toThrow(/expected one of difference/);
  });
});

describe('aggregator skip', () => {
  it('the first k scores are NaN and not aggregated', () => {
    const a = createAggregator({ kind: 'rolling-mean', window: 2, skip: 2 });
    expect([a.push(100), a.push(100), a.push(1), a.push(3), a.push(5)]).toEqual([NaN, NaN, 1, 2, 4]);
    expect(a.count).toBe(5);
    a.reset();
    expect(Number.isNaN(a.push(7))).toBe(true);
  });
  it('skip 0 is dropped from the canonical spec; skipFrom lowers it for a later start', () => {
    expect(validateAggregatorSpec({ kind: 'max', skip: 0 })).toEqual({ kind: 'max' });
    expect(skipFrom({ kind: 'max', skip: 4 }, 1)).toEqual({ kind: 'max', skip: 3 });
    expect(skipFrom({ kind: 'max', skip: 4 }, 9)).toEqual({ kind: 'max' });
    expect(() => validateAggregatorSpec({ kind: 'max', skip: -1 })).toThrow(/skip/);
    expect(Array.from(aggregateSequence({ kind: 'max', skip: 1 }, [9, 1, 2]))).toEqual([NaN, 1, 2]);
  });
});

// ---- synthetic clean sequences: rows per layer with a layer-to-layer structure ----------------------
const D = 8;
const L = 3;
function synthSeq(id: string, positions: number, seed: number, inject?: { layer: number; v: number[]; from: number }): Seq {
  const rng = createRng(seed);
  const layers: Float32Array[] = [];
  let prev = new Float32Array(positions * D);
  for (let l = 0; l < L; l++) {
    const x = new Float32Array(positions * D);
    for (let p = 0; p < positions; p++) {
      for (let j = 0; j < D; j++) {
        const base = l === 0 ? 3 * rng.gaussian() : prev[p * D + j];
        x[p * D + j] = base + 0.3 * rng.gaussian() + (j === l ? 0.5 : 0);
      }
    }
    if (inject) for (let p = inject.from; p < positions; p++) if (l >= inject.layer) for (let j = 0; j < D; j++) x[p * D + j] += inject.v[j];
    layers.push(x);
    prev = x;
  }
  // Token ids: natural text rarely repeats a token pair; these never do (every position is novel).
  const ids = Array.from({ length: positions }, (_, p) => 1 + ((seed * 31 + p * 7) % 5000));
  return { id, source: 'corpus', start: 0, positions, ids, rows: (l) => layers[l] };
}

function fitSmall(fp = FP) {
  const fit = Array.from({ length: 30 }, (_, i) => synthSeq(`fit${i}`, 20, 100 + i));
  const cal = Array.from({ length: 20 }, (_, i) => synthSeq(`cal${i}`, 20, 500 + i));
  const cache = new MemberScoreCache({ modelFingerprint: fp, dModel: D });
  const det = fitAnomalyDetector(fit, cal, { numLayers: L, modelFingerprint: fp, dModel: D, targetFpr: 0.05 }, cache);
  return { det, cache };
}

describe('anomaly detector (fit-anomaly)', () => {
  it('same inputs, same bytes; members are the layer updates (resid at layer 0), per token and windowed', () => {
    const a = fitSmall();
    const b = fitSmall();
    expect(serializeProbeFile(a.det.file)).toBe(serializeProbeFile(b.det.file));
    expect(a.det.file.kind).toBe('ensemble-max');
    // Windowed members from layer max(2, ⌊layers/4⌋) on: the first layers' windows see what the text is.
    expect(a.det.members.map((m) => m.id)).toEqual(['resid-L0', 'update-L1', 'update-L2', 'update-L2-w16']);
    expect([3, 6, 8, 24, 28].map(windowFromLayer)).toEqual([2, 2, 2, 6, 7]);
    const windowed = a.det.file.kind === 'ensemble-max' ? a.det.file.members.slice(3) : [];
    for (const m of windowed) expect(m.kind === 'mahalanobis' && m.window).toMatchObject({ size: 16, positions: 'novel-bigram', spread: { reference: expect.any(Number) } });
    expect(a.det.file.aggregator).toEqual({ kind: 'rolling-mean', window: 8, skip: 4 });
    expect(a.det.file.label).toBe('generic injection (any direction)');
  });

  it('a detector fitted on one model is refused on another (LW_ERR_PROBE_MODEL_MISMATCH)', async () => {
    const { det } = fitSmall('lw1-model-a');
    const path = join(tmp, 'a.probe.json');
    writeFileSync(path, serializeProbeFile(det.file));
    await expect(loadProbe(path, 'lw1-model-b')).rejects.toMatchObject({ code: 'LW_ERR_PROBE_MODEL_MISMATCH' });
    expect(() => parseProbeFile(serializeProbeFile(det.file), 'lw1-model-b')).toThrow(expect.objectContaining({ code: 'LW_ERR_PROBE_MODEL_MISMATCH' }));
    expect((await loadProbe(path, 'lw1-model-a')).id).toBe('generic-injection');
  });

  it("the daemon's scorer on the written file equals the offline member combination", () => {
    const { det, cache } = fitSmall();
    const probe = createProbe(parseProbeFile(serializeProbeFile(det.file), FP));
    const s = synthSeq('x', 20, 9999, { layer: 1, v: [0, 0, 0, 0, 3, 0, 0, 0], from: 10 });
    const a = scoreSeq(probe, s);
    const b = detectorTokenScores(det, cache, s);
    for (let p = 0; p < a.length; p++) expect(a[p]).toBeCloseTo(b[p], 5);
  });

  it('flags an injected update of any direction and not clean requests', () => {
    const { det, cache } = fitSmall();
    const rng = createRng(3);
    let flagged = 0;
    for (let k = 0; k < 10; k++) {
      const v = Array.from({ length: D }, () => rng.gaussian());
      const n = Math.hypot(...v);
      const s = synthSeq(`inj${k}`, 20, 2000 + k, { layer: 1 + (k % 2), v: v.map((x) => (2 * x) / n), from: 6 });
      if (requestScore(detectorTokenScores(det, cache, s), det.aggregator) > det.threshold) flagged++;
    }
    expect(flagged).toBe(10);
    let fp = 0;
    for (let k = 0; k < 40; k++) {
      const s = synthSeq(`clean${k}`, 20, 3000 + k);
      if (requestScore(detectorTokenScores(det, cache, s), det.aggregator) > det.threshold) fp++;
    }
    expect(fp).toBeLessThanOrEqual(4);
  });

  it('calibrated on held-out styles, it tolerates a style the fit never saw; on held-out requests it does not', () => {
    // A style is a persistent offset of one coordinate of the layer-1 update; the fit holds two
    // styles, the test a third. Leaving one style out per calibration request makes the threshold
    // carry what a style change looks like.
    const styled = (id: string, seed: number, style: string, dim: number | null, inject?: { layer: number; v: number[]; from: number }): Seq => {
      const s = synthSeq(id, 24, seed, inject);
      const rows = (l: number) => {
        const x = Float32Array.from(s.rows(l));
        if (dim !== null && l >= 1) for (let p = 0; p < 24; p++) x[p * D + dim] += 1.2;
        return x;
      };
      const cached = [0, 1, 2].map(rows);
      return { ...s, run: { style } as Seq['run'], rows: (l) => cached[l] };
    };
    const fit = Array.from({ length: 40 }, (_, i) => styled(`fit${i}`, 100 + i, i % 2 ? 'a' : 'b', i % 2 ? null : 5));
    const cal = Array.from({ length: 40 }, (_, i) => styled(`cal${i}`, 500 + i, i % 2 ? 'a' : 'b', i % 2 ? null : 5));
    const unseen = Array.from({ length: 40 }, (_, i) => styled(`new${i}`, 900 + i, 'c', 6));
    const rate = (calibrateOn: 'styles' | 'requests') => {
      const cache = new MemberScoreCache({ modelFingerprint: FP, dModel: D });
      const det = fitAnomalyDetector(fit, cal, { numLayers: L, modelFingerprint: FP, dModel: D, targetFpr: 0.05, calibrateOn }, cache);
      const fired = (xs: Seq[]) => xs.filter((s) => requestScore(detectorTokenScores(det, cache, s), det.aggregator) > det.threshold).length / xs.length;
      const injected = Array.from({ length: 10 }, (_, k) => styled(`inj${k}`, 2000 + k, 'c', 6, { layer: 1, v: [0, 0, 0, 4, 0, 0, 0, 0], from: 6 }));
      return { unseen: fired(unseen), injected: fired(injected), det };
    };
    const byStyles = rate('styles');
    const byRequests = rate('requests');
    expect(byRequests.unseen).toBeGreaterThan(0.5);
    expect(byStyles.unseen).toBeLessThanOrEqual(0.1);
    expect(byStyles.injected).toBe(1);
    expect(byStyles.det.file.description).toContain('fitted without its style');
  });

  it('calibration: median and 99th percentile spread', () => {
    const xs = Array.from({ length: 101 }, (_, i) => i);
    expect(calibrate(xs)).toEqual({ center: 50, scale: 49 });
  });
});

describe('vector families (issue 7)', () => {
  const store = ConceptStore.open(STORE_DIR, null);
  const ctx = { store, seed: 11 };

  it('cross-layer: the concept vector of the source layer, whatever the injection layer', () => {
    const f = createFamily({ name: 'x', kind: 'cross-layer', items: ['Dust', 'Snow'], source: { offset: 2 } }, ctx);
    expect(f.items).toEqual(['Dust', 'Snow']);
    expect(f.splitKey('Dust')).toBe('Dust');
    expect(Array.from(f.vector('Dust', 3))).toEqual(Array.from(store.vector('Dust', 5, 'concept')));
    expect(Array.from(f.vector('Snow', 7))).toEqual(Array.from(store.vector('Snow', 7, 'concept'))); // clipped
    expect(crossLayerSource({ layer: 1 }, 6, 8)).toBe(1);
    expect(crossLayerSource({ depth: 0.25 }, 6, 8)).toBe(2);
    expect(crossLayerSource({ offset: -3 }, 1, 8)).toBe(0);
  });

  for (const basis of ['concept', 'random'] as const) {
    it(`subspace (${basis}): lies in the span of its basis, norm-matched, deterministic`, () => {
      const f = createFamily({ name: `sub-${basis}`, kind: 'subspace', basis, rank: 3, count: 4, pool: basis === 'concept' ? ['Dust', 'Snow', 'Bread', 'Peace', 'Oceans'] : undefined }, ctx);
      expect(f.items).toEqual(['subspace-0', 'subspace-1', 'subspace-2', 'subspace-3']);
      for (const layer of [2, 5]) {
        const v = f.vector('subspace-1', layer);
        const b = f.basis!('subspace-1', layer);
        expect(b).toHaveLength(3);
        // Least squares of v on the basis (normal equations, independent inverse): residual ≈ 0.
        const G = b.map((u) => b.map((w) => u.reduce((a, x, i) => a + x * w[i], 0)));
        const r = b.map((u) => u.reduce((a, x, i) => a + x * v[i], 0));
        const coef = inverse(G).map((row) => row.reduce((a, x, j) => a + x * r[j], 0));
        let res = 0;
        let norm = 0;
        for (let i = 0; i < v.length; i++) {
          const proj = b.reduce((a, u, k) => a + coef[k] * u[i], 0);
          res += (v[i] - proj) ** 2;
          norm += v[i] ** 2;
        }
        expect(Math.sqrt(res) / Math.sqrt(norm)).toBeLessThan(1e-5);
        expect(Math.sqrt(norm)).toBeCloseTo(store.meanConceptNorm(layer), 3);
        expect(Array.from(f.vector('subspace-1', layer))).toEqual(Array.from(v));
        if (basis === 'concept') {
          const units = ['Dust', 'Snow', 'Bread', 'Peace', 'Oceans'].map((c) => {
            const x = store.vector(c, layer, 'concept');
            const n = Math.hypot(...x);
            return Array.from(x, (y) => y / n);
          });
          for (const u of b) expect(units.some((w) => w.every((y, i) => Math.abs(y - u[i]) < 1e-6))).toBe(true);
        }
      }
      expect(Array.from(f.vector('subspace-0', 2))).not.toEqual(Array.from(f.vector('subspace-1', 2)));
    });
  }

  it('random: Gaussian, norm-matched to the mean concept vector of the layer, per item and layer', () => {
    const f = createFamily({ name: 'random', kind: 'random', count: 2 }, ctx);
    const v = f.vector('random-0', 4);
    expect(Math.hypot(...v)).toBeCloseTo(store.meanConceptNorm(4), 3);
    expect(Array.from(v)).not.toEqual(Array.from(f.vector('random-1', 4)));
  });

  it('the config schema takes the new kinds and checks them', () => {
    const fams = [
      { name: 'concept', kind: 'concept', items: 'all' },
      { name: 'xl', kind: 'cross-layer', items: 2, source: { offset: 2 } },
      { name: 'sub', kind: 'subspace', basis: 'concept', rank: 2, count: 3 },
    ];
    const ok = resolveTrialConfig(tinyConfigObject({ injection: { ...(tinyConfigObject().injection as object), families: fams } }), resolve(CONFIGS, 'trials'));
    expect(ok.injection.families.map((f) => f.kind)).toEqual(['concept', 'cross-layer', 'subspace']);
    const bad = [{ name: 'sub', kind: 'subspace', basis: 'concept', rank: 99, count: 3 }];
    expect(() => resolveTrialConfig(tinyConfigObject({ injection: { ...(tinyConfigObject().injection as object), families: bad } }), resolve(CONFIGS, 'trials'))).toThrow(/rank 99/);
    const typo = [{ name: 'xl', kind: 'cross-layer', items: 2, source: { ofset: 2 } }];
    expect(() => resolveTrialConfig(tinyConfigObject({ injection: { ...(tinyConfigObject().injection as object), families: typo } }), resolve(CONFIGS, 'trials'))).toThrow(expect.objectContaining({ code: 'LW_ERR_TRIALS_CONFIG_INVALID' }));
  });
});

describe('clean corpus', () => {
  it('the shipped corpus config loads; holdout styles are all test; the split is deterministic', () => {
    const c = loadCorpus(new URL('../configs/corpus/clean.json', import.meta.url).pathname);
    expect(c.styles.map((s) => s.name)).toEqual(expect.arrayContaining(['code-python', 'prose-general', 'chat', 'long-context']));
    const reqs = corpusRequests(c);
    const holdout = reqs.filter((r) => c.styles.find((s) => s.name === r.style)!.holdout);
    expect(holdout.length).toBeGreaterThan(0);
    for (const r of holdout) expect(r.split).toBe('test');
    expect(corpusRequests(c)).toEqual(reqs);
    expect(reqs.some((r) => r.split === 'fit')).toBe(true);
  });
  it('rejects unknown keys and empty prompts with LW_ERR_CORPUS_INVALID; reads JSONL traffic', () => {
    expect(() => resolveCorpus({ formatVersion: 1, name: 'x', styles: [{ name: 'a', prompts: ['p'], extra: 1 }] })).toThrow(expect.objectContaining({ code: 'LW_ERR_CORPUS_INVALID' }));
    expect(() => resolveCorpus({ formatVersion: 1, name: 'x', styles: [{ name: 'a', prompts: [''] }] })).toThrow(expect.objectContaining({ code: 'LW_ERR_CORPUS_INVALID' }));
    const p = join(tmp, 'traffic.jsonl');
    writeFileSync(p, '"hello there"\n{"prompt": "def f(): pass", "style": "code"}\n\n');
    const c = loadCorpus(p);
    expect(c.styles.map((s) => [s.name, s.prompts.length])).toEqual([
      ['traffic', 1],
      ['code', 1],
    ]);
    expect(corpusRequests(c).map((r) => r.maxTokens)).toEqual([8, 8]);
    writeFileSync(p, '{"text": 1}\n');
    expect(() => loadCorpus(p)).toThrow(expect.objectContaining({ code: 'LW_ERR_CORPUS_INVALID' }));
    expect(() => loadCorpus(join(tmp, 'missing.json'))).toThrow(expect.objectContaining({ code: 'LW_ERR_CORPUS_NOT_FOUND' }));
  });

  const trafficLines = (n: number, style?: string) => Array.from({ length: n }, (_, i) => JSON.stringify(style ? { prompt: `request ${i}`, style } : `request ${i}`)).join('\n') + '\n';

  it('JSONL traffic holds out a hashed 0.3 share per style, the same on every load (issue 12)', () => {
    const p = join(tmp, 'held.jsonl');
    writeFileSync(p, trafficLines(40) + trafficLines(20, 'code'));
    const c = loadCorpus(p);
    expect(c.split.testFraction).toBe(0.3);
    const reqs = corpusRequests(c);
    for (const st of ['traffic', 'code']) {
      const mine = reqs.filter((r) => r.style === st);
      expect(mine.some((r) => r.split === 'test')).toBe(true);
      expect(mine.some((r) => r.split === 'fit')).toBe(true);
    }
    const share = reqs.filter((r) => r.split === 'test').length / reqs.length;
    expect(share).toBeGreaterThan(0.1);
    expect(share).toBeLessThan(0.5);
    // Hashed by style and index, as corpusRequests does for a config's styles: lines appended later do not move earlier ones.
    writeFileSync(p, trafficLines(40) + trafficLines(20, 'code') + trafficLines(10));
    const more = corpusRequests(loadCorpus(p));
    for (const r of reqs) expect(more.find((m) => m.id === r.id)!.split).toBe(r.split);
  });

  it('a JSONL line carries its own max_tokens; --max-tokens sets the rest; bad values name the line', () => {
    const p = join(tmp, 'len.jsonl');
    writeFileSync(p, '{"prompt": "a", "max_tokens": 3}\n"b"\n{"prompt": "c", "max_tokens": 0}\n');
    expect(corpusRequests(loadCorpus(p)).map((r) => r.maxTokens)).toEqual([3, 8, 0]);
    expect(corpusRequests(loadCorpus(p, { maxTokens: 5 })).map((r) => r.maxTokens)).toEqual([3, 5, 0]);
    for (const bad of ['-1', '2.5', '"4"', '5000']) {
      writeFileSync(p, `"ok"\n{"prompt": "a", "max_tokens": ${bad}}\n`);
      expect(() => loadCorpus(p)).toThrow(expect.objectContaining({ code: 'LW_ERR_CORPUS_INVALID', message: expect.stringContaining('line 2') }));
    }
    writeFileSync(p, '"ok"\n');
    expect(() => loadCorpus(p, { maxTokens: -2 })).toThrow(expect.objectContaining({ code: 'LW_ERR_CORPUS_INVALID' }));
  });

  it('several files merge: styles distinct, ids unique, each split and length as alone', () => {
    const config = new URL('../configs/corpus/clean.json', import.meta.url).pathname;
    const a = join(tmp, 'merge-a.jsonl');
    const b = join(tmp, 'merge-b.jsonl');
    writeFileSync(a, trafficLines(12) + '{"prompt": "x", "style": "chat", "max_tokens": 2}\n');
    writeFileSync(b, trafficLines(6));
    const alone = { config: corpusRequests(loadCorpus(config)), a: corpusRequests(loadCorpus(a)), b: corpusRequests(loadCorpus(b)) };
    const m = loadCorpora([config, a, b]);
    const reqs = corpusRequests(m);
    expect(reqs.length).toBe(alone.config.length + alone.a.length + alone.b.length);
    expect(new Set(reqs.map((r) => r.id)).size).toBe(reqs.length);
    expect(new Set(m.styles.map((s) => s.name)).size).toBe(m.styles.length);
    expect(m.styles.map((s) => s.name)).toEqual(expect.arrayContaining(['code-python', 'chat', 'traffic', 'chat-2', 'traffic-2']));
    expect(m.generation).toEqual(loadCorpus(config).generation);
    const strip = (r: { id: string; style: string }) => ({ ...r, id: undefined, style: undefined });
    expect(reqs.slice(0, alone.config.length)).toEqual(alone.config);
    expect(reqs.slice(alone.config.length, alone.config.length + alone.a.length).map(strip)).toEqual(alone.a.map(strip));
    expect(reqs.slice(alone.config.length + alone.a.length).map(strip)).toEqual(alone.b.map(strip));
    expect(reqs.find((r) => r.style === 'chat-2')).toMatchObject({ id: 'chat-2/0', maxTokens: 2, text: 'x' });
    // A traffic file after a config takes the config's length unless --max-tokens says otherwise.
    const cfg = join(tmp, 'merge-cfg.json');
    writeFileSync(cfg, JSON.stringify({ formatVersion: 1, name: 'c', generation: { maxTokens: 4 }, styles: [{ name: 'p', prompts: ['q'] }] }));
    expect(corpusRequests(loadCorpora([cfg, b])).map((r) => r.maxTokens)).toEqual([4, 4, 4, 4, 4, 4, 4]);
    expect(corpusRequests(loadCorpora([cfg, b], { maxTokens: 1 })).map((r) => r.maxTokens)).toEqual([4, 1, 1, 1, 1, 1, 1]);
  });
});

