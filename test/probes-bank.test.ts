import { describe, expect, it } from 'vitest';
import { isLatentwatchError } from '../src/errors.js';
import { fitGaussian } from '../src/lab/gaussian-fit.js';
import { mahalanobis } from '../src/probes/gaussian.js';
import { fitLogistic, predictProbability } from '../src/lab/logistic.js';
import { matrix } from '../src/probes/matrix.js';
import { linearBody, mahalanobisBody, parseProbeFile, serializeProbeFile, type EnsembleProbeFile, type ProbeFile, type ProbeHeader, type ProbeKind } from '../src/probes/probe-file.js';
import { createProbe, ProbeBank, type TapTensor } from '../src/probes/probe.js';

const FP = 'sha256:test-model';
const D = 6;
const POSITIONS = 5;
const H = (l: number): string => `blocks.${l}.hook_resid_post`;

function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
}

function header<K extends ProbeKind>(id: string, hook: string | string[], kind: K): Omit<ProbeHeader, 'kind'> & { kind: K } {
  const figures = { trials: 0, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };
  return {
    formatVersion: 1, id, kind, label: 'test', description: '', modelFingerprint: FP, hook, dModel: D,
    threshold: 0.5, targetFpr: 0.01, aggregator: { kind: 'max' }, training: figures, evaluation: figures,
  };
}

const r = rng(42);
const vec = (n: number): number[] => Array.from({ length: n }, () => r() * 2);
const linear: ProbeFile = { ...header('lin', H(2), 'linear'), bias: 0.3, normalisation: { mean: vec(D), std: vec(D).map((v) => 0.5 + Math.abs(v)) }, weights: vec(D) };
const twoHookBody = { kind: 'direction' as const, bias: -0.1, normalisation: { mean: vec(2 * D), std: Array(2 * D).fill(1) }, weights: vec(2 * D) };
const twoHook: ProbeFile = { ...header('dir2', [H(3), H(1)], 'direction'), ...twoHookBody };
const clean = matrix(40, D, Float32Array.from(vec(40 * D)));
const gauss = fitGaussian(clean);
const mahal: ProbeFile = { ...header('gen', H(1), 'mahalanobis'), ...mahalanobisBody(gauss) };
const ensemble: ProbeFile = {
  ...header('ens', [H(1), H(3)], 'ensemble-max'),
  members: [
    { id: 'a', kind: 'mahalanobis', hook: H(1), calibration: { center: 2, scale: 0.5 }, gaussian: mahalanobisBody(gauss).gaussian },
    // Hooks 3 then 1, reversed inside the ensemble's input (1 then 3): exercises the gather path.
    { id: 'b', hook: [H(3), H(1)], calibration: { center: 0, scale: 2 }, ...twoHookBody },
  ],
};

function taps(seed: number, positions = POSITIONS): Map<string, TapTensor> {
  const g = rng(seed);
  const m = new Map<string, TapTensor>();
  for (const l of [0, 1, 2, 3]) m.set(H(l), { positions, dModel: D, data: Float32Array.from({ length: positions * D }, () => g() * 3) });
  return m;
}

function row(t: Map<string, TapTensor>, hooks: string[], p: number): Float32Array {
  const out = new Float32Array(hooks.length * D);
  hooks.forEach((h, k) => out.set(t.get(h)!.data.subarray(p * D, (p + 1) * D), k * D));
  return out;
}

describe('Probe.scoreRow', () => {
  const t = taps(7);

  it('linear: σ(bias + Σ w (x − mean)/std), computed directly', () => {
    const probe = createProbe(linear);
    if (linear.kind !== 'linear') throw new Error();
    for (let p = 0; p < POSITIONS; p++) {
      const x = row(t, [H(2)], p);
      let z = linear.bias;
      for (let j = 0; j < D; j++) z += (linear.weights[j] * (x[j] - linear.normalisation.mean[j])) / linear.normalisation.std[j];
      // Linear probes run in float32 (the SIMD kernel, probes/simd.ts): within 1e-6 of float64.
      expect(Math.abs(probe.scoreRow(t.get(H(2))!.data, p * D) - 1 / (1 + Math.exp(-z)))).toBeLessThan(1e-6);
    }
  });

  it('linear probe from fitLogistic scores like predictProbability', () => {
    const y = Array.from({ length: 40 }, (_, i) => (clean.data[i * D] + clean.data[i * D + 1] > 0 ? 1 : 0));
    const fit = fitLogistic(clean, y, { l2: 0.1 });
    const probe = createProbe({ ...header('fit', H(0), 'linear'), ...linearBody(fit) });
    const want = predictProbability(fit, clean);
    for (let i = 0; i < 40; i++) expect(Math.abs(probe.scoreRow(clean.data as Float32Array, i * D) - want[i])).toBeLessThan(1e-6);
  });

  // Full-covariance members score as ‖L⁻¹(x − mean)‖ with L⁻¹ and the input rounded to int16 (SIMD):
  // within 2e-3 relative of the float64 solve (test/probes-fastpath.test.ts checks real activations).
  const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

  it('mahalanobis: the fitted distance (int16 whitening, rel. 2e-3), plain and as a layer update', () => {
    const probe = createProbe(mahal);
    for (let p = 0; p < POSITIONS; p++) expect(rel(probe.scoreRow(t.get(H(1))!.data, p * D), mahalanobis(gauss, row(t, [H(1)], p), 0, new Float64Array(D)))).toBeLessThan(2e-3);
    const update = createProbe({ ...header('upd', [H(0), H(1)], 'mahalanobis'), ...mahalanobisBody(gauss, 'difference') });
    for (let p = 0; p < POSITIONS; p++) {
      const x0 = row(t, [H(0)], p);
      const diff = row(t, [H(1)], p).map((v, j) => v - x0[j]);
      expect(rel(update.scoreRow(row(t, [H(0), H(1)], p), 0), mahalanobis(gauss, diff, 0, new Float64Array(D)))).toBeLessThan(2e-3);
    }
  });

  it('ensemble-max: max of calibrated member scores', () => {
    const probe = createProbe(ensemble);
    const dir = createProbe(twoHook);
    expect(probe.inputDim).toBe(2 * D);
    for (let p = 0; p < POSITIONS; p++) {
      const a = (mahalanobis(gauss, row(t, [H(1)], p), 0, new Float64Array(D)) - 2) / 0.5;
      const b = dir.scoreRow(row(t, [H(3), H(1)], p), 0) / 2;
      expect(Math.abs(probe.scoreRow(row(t, [H(1), H(3)], p), 0) - Math.max(a, b))).toBeLessThan(2e-3 * Math.max(1, Math.abs(Math.max(a, b))) * 2);
    }
  });

  it('mahalanobis low-rank (float32 SIMD path): the fitted distance, plain and as a layer update (rel. 1e-5)', () => {
    const low = fitGaussian(clean, { covariance: 'lowrank', rank: 2 });
    const plain = createProbe({ ...header('low', H(1), 'mahalanobis'), ...mahalanobisBody(low) });
    const update = createProbe({ ...header('low-upd', [H(0), H(1)], 'mahalanobis'), ...mahalanobisBody(low, 'difference') });
    for (let p = 0; p < POSITIONS; p++) {
      const want = mahalanobis(low, row(t, [H(1)], p), 0, new Float64Array(D));
      expect(Math.abs(plain.scoreRow(t.get(H(1))!.data, p * D) - want) / want).toBeLessThan(1e-5);
      const x0 = row(t, [H(0)], p);
      const diff = row(t, [H(1)], p).map((v, j) => v - x0[j]);
      const wantDiff = mahalanobis(low, diff, 0, new Float64Array(D));
      expect(Math.abs(update.scoreRow(row(t, [H(0), H(1)], p), 0) - wantDiff) / wantDiff).toBeLessThan(1e-5);
    }
  });

  it('aggregator comes from the file', () => {
    const agg = createProbe(linear).createAggregator();
    expect(agg.spec).toEqual({ kind: 'max' });
    agg.push(0.2);
    expect(agg.push(0.1)).toBe(0.2);
  });
});

describe('ProbeBank', () => {
  const probes = [linear, twoHook, mahal, ensemble].map((f) => createProbe(parseProbeFile(serializeProbeFile(f), FP)));
  const bank = new ProbeBank(probes);

  it('hooks(): every needed hook once, in first-use order', () => {
    expect(bank.hooks()).toEqual([H(2), H(3), H(1)]);
  });

  it('score(taps) equals scoreRow on each position, for every probe', () => {
    for (const seed of [1, 2]) {
      const t = taps(seed);
      const out = bank.score(t);
      expect(out.map((o) => o.probeId)).toEqual(['lin', 'dir2', 'gen', 'ens']);
      out.forEach((o, k) => {
        const probe = probes[k];
        expect(o.scores).toBeInstanceOf(Float32Array);
        expect(o.scores.length).toBe(POSITIONS);
        for (let p = 0; p < POSITIONS; p++) {
          expect(o.scores[p]).toBe(Math.fround(probe.scoreRow(row(t, [...probe.hooks], p), 0)));
        }
      });
    }
  });

  it("a novel-only member scores new token pairs and reports 0, its clean median, at repeated ones", () => {
    // Member 'a' novel-only with its centre far below its scores (all > 0), member 'b' every position.
    const novelOnly = { ...ensemble, id: 'ens-novel', members: [{ ...ensemble.members[0], positions: 'novel-bigram', calibration: { center: -50, scale: 1 } }, { ...ensemble.members[1], calibration: { center: 1e6, scale: 1 } }] } as EnsembleProbeFile;
    const probe = createProbe(parseProbeFile(serializeProbeFile(novelOnly), FP));
    expect(probe.ordered).toBe(true);
    expect(() => probe.scoreRow(new Float32Array(2 * D), 0)).toThrow(/earlier positions/);
    const t = taps(4);
    const own = new ProbeBank([probe]);
    expect(() => own.score(t)).toThrow(/token id/);
    // Ids 7 7 7 8 7: pairs (·,7) (7,7) (7,7) (7,8) (8,7): positions 2 repeats (7,7).
    const got = own.score(t, [7, 7, 7, 8, 7])[0].scores;
    const direct = createProbe(parseProbeFile(serializeProbeFile({ ...novelOnly, members: [{ ...novelOnly.members[0], positions: undefined }, novelOnly.members[1]] } as ProbeFile), FP));
    for (let p = 0; p < POSITIONS; p++) {
      const all = direct.scoreRow(row(t, [H(1), H(3)], p), 0);
      expect(all).toBeGreaterThan(40);
      expect(got[p]).toBe(p === 2 ? 0 : Math.fround(all));
    }
  });

  it('one position per decode step; repeated calls give fresh, equal results', () => {
    const t = taps(3, 1);
    const a = bank.score(t);
    const b = bank.score(t);
    expect(a[0].scores).not.toBe(b[0].scores);
    expect(a).toEqual(b);
  });

  it('missing hook, wrong d_model, mismatched positions → LW_ERR_PROBE_INPUT_MISMATCH', () => {
    const cases: Array<Map<string, TapTensor>> = [];
    const missing = taps(4);
    missing.delete(H(3));
    cases.push(missing);
    const wide = taps(4);
    wide.set(H(2), { positions: 1, dModel: D + 1, data: new Float32Array(D + 1) });
    cases.push(wide);
    const uneven = taps(4);
    uneven.set(H(3), { positions: 2, dModel: D, data: new Float32Array(2 * D) });
    cases.push(uneven);
    const short = taps(4);
    short.set(H(2), { positions: POSITIONS, dModel: D, data: new Float32Array(D) });
    cases.push(short);
    for (const t of cases) {
      try {
        bank.score(t);
        expect.unreachable();
      } catch (e) {
        expect(isLatentwatchError(e) && e.code).toBe('LW_ERR_PROBE_INPUT_MISMATCH');
      }
    }
  });

  it('duplicate probe ids are refused', () => {
    expect(() => new ProbeBank([probes[0], probes[0]])).toThrow(/share the id/);
  });

  // Speed is measured by bench/daemon.ts (the monitor's work per token: ProbeBank.score over the
  // taps of one token) and bench/probes.ts --generic, not asserted here.
  it('eight d=896 probes on the hot path: repeated scoring of the same taps gives the same scores', () => {
    const d = 896;
    const g = rng(9);
    const big = createProbe({
      ...header('big', H(0), 'linear'), dModel: d, bias: 0,
      normalisation: { mean: Array.from({ length: d }, g), std: Array(d).fill(1) }, weights: Array.from({ length: d }, g),
    });
    const many = new ProbeBank(Array.from({ length: 8 }, (_, i) => createProbe({ ...big.file, id: `p${i}` })));
    const t = new Map([[H(0), { positions: 1, dModel: d, data: Float32Array.from({ length: d }, g) }]]);
    const first = many.score(t);
    // The logit, w · (x − mean) (bias 0, std 1), against float64; each of the eight scores is its σ.
    const f = big.file;
    if (f.kind !== 'linear') throw new Error('the hot-path probe is linear');
    const x = t.get(H(0))!.data;
    let z = 0;
    let scale = 0;
    for (let j = 0; j < d; j++) {
      z += f.weights[j] * (x[j] - f.normalisation.mean[j]);
      scale += Math.abs(f.weights[j] * (x[j] - f.normalisation.mean[j]));
    }
    const logit = createProbe({ ...f, id: 'logit', kind: 'direction' }).scoreRow(x, 0);
    expect(Math.abs(logit - z)).toBeLessThan(1e-5 * scale);
    for (const s of first) expect(s.scores[0]).toBeCloseTo(1 / (1 + Math.exp(-logit)), 6);
    for (let i = 0; i < 2000; i++) many.score(t);
    expect(many.score(t).map((s) => Array.from(s.scores))).toEqual(first.map((s) => Array.from(s.scores)));
  });
});
