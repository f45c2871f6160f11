import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isLatentwatchError } from '../src/errors.js';
import { decisionFunction, fitDiffMeans, fitLogistic, predictProbability, standardisation } from '../src/lab/logistic.js';
import { matrix, matrixFromRows } from '../src/probes/matrix.js';

// Expected values: numpy Newton on the same objective, from test/fixtures/probes/make_expected.py.
const expected = JSON.parse(readFileSync(new URL('./fixtures/probes/expected.json', import.meta.url), 'utf8'));
const small = expected.logisticSmall;
const wide = expected.logisticWide;

interface NumpyFit {
  mean: number[];
  std: number[];
  weights: number[];
  bias: number;
  loss: number;
  probabilities: number[];
}

function expectClose(actual: ArrayLike<number>, wanted: readonly number[], tol: number): void {
  expect(actual.length).toBe(wanted.length);
  let worst = 0;
  for (let i = 0; i < wanted.length; i++) worst = Math.max(worst, Math.abs(actual[i] - wanted[i]));
  expect(worst).toBeLessThanOrEqual(tol);
}

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('logistic regression vs numpy Newton', () => {
  const xSmall = matrixFromRows(small.X);
  const xSmall32 = matrix(xSmall.rows, xSmall.cols, Float32Array.from(xSmall.data));
  const cases: Array<[string, NumpyFit, Parameters<typeof fitLogistic>[2]]> = [
    ['l2 0.1', small['l2_0.1'], { l2: 0.1 }],
    ['l2 0.01, balanced classes', small['l2_0.01_balanced'], { l2: 0.01, classWeight: 'balanced' }],
    ['l2 0.05, sample weights', small['l2_0.05_sampleWeights'], { l2: 0.05, sampleWeights: small.sampleWeights }],
  ];

  for (const [name, want, options] of cases) {
    for (const solver of ['newton', 'lbfgs'] as const) {
      it(`${name} (${solver}): weights, bias, loss and probabilities within 1e-7`, () => {
        // Tolerance: both sides converge to a gradient ≤ 1e-11, far below 1e-7 on well-conditioned
        // problems; 1e-7 leaves room for summation-order differences.
        const fit = fitLogistic(xSmall32, small.y, { ...options, solver, tolerance: 1e-11 });
        expect(fit.converged).toBe(true);
        expect(fit.solver).toBe(solver);
        expectClose(fit.mean, want.mean, 1e-12);
        expectClose(fit.std, want.std, 1e-12);
        expectClose(fit.weights, want.weights, 1e-7);
        expect(Math.abs(fit.bias - want.bias)).toBeLessThanOrEqual(1e-7);
        expect(Math.abs(fit.loss - want.loss)).toBeLessThanOrEqual(1e-12);
        expectClose(predictProbability(fit, xSmall), want.probabilities, 1e-7);
      });
    }
  }

  it('constant feature: std 1, weight exactly 0 (penalty pulls it to zero)', () => {
    const fit = fitLogistic(xSmall, small.y, { l2: 0.1 });
    expect(fit.std[4]).toBe(1);
    expect(fit.weights[4]).toBe(0);
  });

  it('d = 40: auto (Newton) and L-BFGS agree with numpy within 1e-6', () => {
    const x = matrix(wide.rows, wide.cols, Float32Array.from(wide.X));
    const want: NumpyFit = wide['l2_0.001'];
    for (const solver of ['auto', 'lbfgs'] as const) {
      const fit = fitLogistic(x, wide.y, { l2: 1e-3, solver, tolerance: 1e-10 });
      expect(fit.converged).toBe(true);
      expectClose(fit.weights, want.weights, 1e-6);
      expect(Math.abs(fit.bias - want.bias)).toBeLessThanOrEqual(1e-6);
      expectClose(predictProbability(fit, x), want.probabilities, 1e-7);
    }
  });

  it('is deterministic: the same input gives bit-identical weights', () => {
    const x = matrix(wide.rows, wide.cols, Float32Array.from(wide.X));
    const a = fitLogistic(x, wide.y, { solver: 'lbfgs' });
    const b = fitLogistic(x, wide.y, { solver: 'lbfgs' });
    expect(Buffer.from(a.weights.buffer).equals(Buffer.from(b.weights.buffer))).toBe(true);
    expect(a.bias).toBe(b.bias);
  });

  it('decisionFunction is the logit of predictProbability', () => {
    const fit = fitLogistic(xSmall, small.y, { l2: 0.1 });
    const z = decisionFunction(fit, xSmall);
    const p = predictProbability(fit, xSmall);
    for (let i = 0; i < z.length; i++) expect(p[i]).toBeCloseTo(1 / (1 + Math.exp(-z[i])), 14);
  });

  it('refuses one-class labels, bad labels and mismatched lengths with LW_ERR_PROBE_FIT', () => {
    const x = matrixFromRows([[1], [2], [3]]);
    for (const y of [[1, 1, 1], [0, 2, 1], [0, 1]]) {
      try {
        fitLogistic(x, y);
        expect.unreachable();
      } catch (e) {
        expect(isLatentwatchError(e) && e.code).toBe('LW_ERR_PROBE_FIT');
      }
    }
    expect(() => fitLogistic(x, [0, 1, 1], { l2: 0 })).toThrow(RangeError);
  });

  it('separable data stays finite thanks to the L2 penalty', () => {
    const x = matrixFromRows([[-2], [-1], [1], [2]]);
    const fit = fitLogistic(x, [0, 0, 1, 1], { l2: 1e-3 });
    expect(fit.converged).toBe(true);
    expect(Number.isFinite(fit.weights[0])).toBe(true);
    expect(fit.weights[0]).toBeGreaterThan(1);
  });

  // Fit time (~2-3 s on the 2-core dev box) is a speed figure: bench/probes.ts times probe training.
  it('fits n = 5000, d = 896 to convergence (L-BFGS)', () => {
    const n = 5000;
    const d = 896;
    const rnd = mulberry32(1);
    const gauss = (): number => Math.sqrt(-2 * Math.log(rnd() || 1e-12)) * Math.cos(2 * Math.PI * rnd());
    // Correlated features (32 shared latent factors), uneven scales and offsets, class signal
    // along one random direction: closer to residual-stream rows than i.i.d. noise.
    const dir = Float64Array.from({ length: d }, () => gauss() / Math.sqrt(d));
    const scale = Float64Array.from({ length: d }, () => Math.exp(gauss()));
    const k = 32;
    const mix = Float64Array.from({ length: k * d }, () => gauss() * 0.3);
    const data = new Float32Array(n * d);
    const y = new Uint8Array(n);
    const latent = new Float64Array(k);
    for (let i = 0; i < n; i++) {
      y[i] = i % 3 === 0 ? 1 : 0;
      for (let a = 0; a < k; a++) latent[a] = gauss();
      for (let j = 0; j < d; j++) {
        let v = gauss() * scale[j] + 3 + (y[i] ? 1.5 * dir[j] * scale[j] : 0);
        for (let a = 0; a < k; a++) v += latent[a] * mix[a * d + j];
        data[i * d + j] = v;
      }
    }
    const fit = fitLogistic(matrix(n, d, data), y);
    console.log(`fitLogistic n=${n} d=${d}: ${fit.iterations} iterations (${fit.solver})`);
    expect(fit.converged).toBe(true);
  });
});

describe('difference of means', () => {
  it('matches numpy: midpoint, unit direction, projections', () => {
    const x = matrixFromRows(small.X);
    const m = fitDiffMeans(x, small.y);
    expectClose(m.mean, expected.diffMeans.midpoint, 1e-12);
    expectClose(m.weights, expected.diffMeans.direction, 1e-12);
    expect(m.bias).toBe(0);
    expect([...m.std].every((s) => s === 1)).toBe(true);
    expectClose(decisionFunction(m, x), expected.diffMeans.scores, 1e-10);
  });

  it('refuses equal class means', () => {
    expect(() => fitDiffMeans(matrixFromRows([[1], [1]]), [0, 1])).toThrow(/class means/);
  });
});

describe('standardisation', () => {
  it('population std, zero spread → 1', () => {
    const { mean, std } = standardisation(matrixFromRows([[1, 5], [3, 5]]));
    expect([...mean]).toEqual([2, 5]);
    expect([...std]).toEqual([1, 1]);
  });
});
