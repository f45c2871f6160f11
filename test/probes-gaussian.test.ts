import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isLatentwatchError } from '../src/errors.js';
import { fitGaussian, ledoitWolfShrinkage, mahalanobis, mahalanobisRows } from '../src/probes/gaussian.js';
import { matrix, matrixFromRows } from '../src/probes/matrix.js';

// numpy: Ledoit-Wolf by the explicit formula (checked in the script against scikit-learn's
// documented example), np.linalg.cholesky, distances via np.linalg.solve. Script:
// test/fixtures/probes/make_expected.py.
const expected = JSON.parse(readFileSync(new URL('./fixtures/probes/expected.json', import.meta.url), 'utf8'));

function maxAbsDiff(a: ArrayLike<number>, b: readonly number[]): number {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

describe('Gaussian fit and Mahalanobis distance vs numpy', () => {
  for (const c of expected.gaussian) {
    const x = matrix(c.rows, c.cols, Float32Array.from(c.X));
    const q = matrix(5, c.cols, Float32Array.from(c.queries));

    it(`${c.name}: Ledoit-Wolf shrinkage, mean, Cholesky factor, distances (rel. 1e-10)`, () => {
      expect(ledoitWolfShrinkage(x)).toBeCloseTo(c.ledoitWolf, 12);
      const g = fitGaussian(x);
      if (g.form !== 'cholesky') throw new Error('expected the full form');
      expect(g.shrinkage).toBeCloseTo(c.ledoitWolf, 12);
      expect(maxAbsDiff(g.mean, c.mean)).toBeLessThan(1e-12);
      const packed = (c.lwCholesky as number[][]).flatMap((row, i) => row.slice(0, i + 1));
      expect(maxAbsDiff(g.factor, packed)).toBeLessThan(1e-10);
      const got = mahalanobisRows(g, q);
      got.forEach((v, i) => expect(Math.abs(v - c.lwDistances[i]) / c.lwDistances[i]).toBeLessThan(1e-10));
    });

    it(`${c.name}: fixed shrinkage 0.2 and diagonal (shrinkage 0.1)`, () => {
      const full = mahalanobisRows(fitGaussian(x, { shrinkage: 0.2 }), q);
      full.forEach((v, i) => expect(Math.abs(v - c['fixed0.2Distances'][i]) / v).toBeLessThan(1e-10));
      const diag = mahalanobisRows(fitGaussian(x, { covariance: 'diagonal', shrinkage: 0.1 }), q);
      diag.forEach((v, i) => expect(Math.abs(v - c['diagonal0.1Distances'][i]) / v).toBeLessThan(1e-12));
    });
  }

  it('hand case: identity covariance is Euclidean distance from the mean', () => {
    // Rows (±1, 0), (0, ±1): mean 0, S = diag(.5, .5) = μI so Ledoit-Wolf shrinkage is 0.
    const g = fitGaussian(matrixFromRows([[1, 0], [-1, 0], [0, 1], [0, -1]]));
    expect(g.shrinkage).toBe(0);
    // Σ = 0.5·I → distance = ‖x‖ / √0.5.
    expect(mahalanobis(g, Float64Array.from([3, 4]))).toBeCloseTo(5 / Math.sqrt(0.5), 12);
  });

  it('reads a row at an offset and reuses scratch', () => {
    const c = expected.gaussian[0];
    const g = fitGaussian(matrix(c.rows, c.cols, Float32Array.from(c.X)));
    const q = Float32Array.from(c.queries);
    const scratch = new Float64Array(c.cols);
    expect(mahalanobis(g, q, 2 * c.cols, scratch)).toBeCloseTo(c.lwDistances[2], 9);
  });

  it('is deterministic', () => {
    const c = expected.gaussian[0];
    const x = matrix(c.rows, c.cols, Float32Array.from(c.X));
    const a = fitGaussian(x);
    const b = fitGaussian(x);
    if (a.form !== 'cholesky' || b.form !== 'cholesky') throw new Error('form');
    expect(Buffer.from(a.factor.buffer).equals(Buffer.from(b.factor.buffer))).toBe(true);
  });

  it('singular covariance without shrinkage → LW_ERR_PROBE_FIT', () => {
    const c = expected.gaussian[1]; // n = 8 < d = 12
    try {
      fitGaussian(matrix(c.rows, c.cols, Float32Array.from(c.X)), { shrinkage: 0 });
      expect.unreachable();
    } catch (e) {
      expect(isLatentwatchError(e) && e.code).toBe('LW_ERR_PROBE_FIT');
    }
  });
});
