import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isLatentwatchError } from '../src/errors.js';
import { fitGaussian, ledoitWolfShrinkage, mahalanobisRows, symmetricEigen } from '../src/lab/gaussian-fit.js';
import { mahalanobis } from '../src/probes/gaussian.js';
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
    expect(mahalanobis(g, Float64Array.from([3, 4]), 0, new Float64Array(2))).toBeCloseTo(5 / Math.sqrt(0.5), 12);
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

  // Independent reference: numpy's eigh of the same shrunk covariance (the full form above is
  // checked against numpy; its eigenpairs are computed here in float64 by the Jacobi routine).
  describe('low-rank (probabilistic PCA) form', () => {
    for (const c of expected.gaussian) {
      const x = matrix(c.rows, c.cols, Float32Array.from(c.X));
      const q = matrix(5, c.cols, Float32Array.from(c.queries));

      it(`${c.name}: rank d−1 reproduces the full distance (rel. 1e-8)`, () => {
        const full = mahalanobisRows(fitGaussian(x), q);
        const low = fitGaussian(x, { covariance: 'lowrank', rank: c.cols - 1 });
        expect(low.form).toBe('lowrank');
        mahalanobisRows(low, q).forEach((v, i) => expect(Math.abs(v - full[i]) / full[i]).toBeLessThan(1e-8));
      });

      it(`${c.name}: components orthonormal, eigenvalues descending and Σv = λv`, () => {
        const g = fitGaussian(x, { covariance: 'lowrank', rank: 3 });
        if (g.form !== 'lowrank') throw new Error('form');
        const d = c.cols;
        const full = fitGaussian(x);
        if (full.form !== 'cholesky') throw new Error('form');
        // Σ = L·Lᵀ from the numpy-checked factor.
        const L = (i: number, j: number) => (j <= i ? full.factor[(i * (i + 1)) / 2 + j] : 0);
        for (let a = 0; a < 3; a++) {
          if (a > 0) expect(g.eigenvalues[a]).toBeLessThanOrEqual(g.eigenvalues[a - 1]);
          for (let b = 0; b < 3; b++) {
            let s = 0;
            for (let j = 0; j < d; j++) s += g.components[a * d + j] * g.components[b * d + j];
            expect(Math.abs(s - (a === b ? 1 : 0))).toBeLessThan(1e-10);
          }
          for (let i = 0; i < d; i++) {
            let sv = 0;
            for (let j = 0; j < d; j++) {
              let sij = 0;
              for (let k = 0; k < d; k++) sij += L(i, k) * L(j, k);
              sv += sij * g.components[a * d + j];
            }
            expect(Math.abs(sv - g.eigenvalues[a] * g.components[a * d + i])).toBeLessThan(1e-8 * g.eigenvalues[0]);
          }
        }
        expect(g.residualVariance).toBeGreaterThan(0);
        expect(g.residualVariance).toBeLessThanOrEqual(g.eigenvalues[2]);
      });
    }

    it('Jacobi eigen-decomposition reconstructs the matrix', () => {
      const n = 7;
      const a = new Float64Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) a[i * n + j] = a[j * n + i] = Math.sin(i * 3 + j * 7) + (i === j ? 3 : 0);
      const { values, vectors } = symmetricEigen(a, n);
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let k = 0; k < n; k++) s += vectors[i * n + k] * values[k] * vectors[j * n + k];
          expect(Math.abs(s - a[i * n + j])).toBeLessThan(1e-10);
        }
      }
    });

    it('is deterministic and rejects a rank outside [1, d−1] with LW_ERR_PROBE_FIT', () => {
      const c = expected.gaussian[0];
      const x = matrix(c.rows, c.cols, Float32Array.from(c.X));
      const a = fitGaussian(x, { covariance: 'lowrank', rank: 2 });
      const b = fitGaussian(x, { covariance: 'lowrank', rank: 2 });
      if (a.form !== 'lowrank' || b.form !== 'lowrank') throw new Error('form');
      expect(Buffer.from(a.components.buffer).equals(Buffer.from(b.components.buffer))).toBe(true);
      for (const rank of [0, c.cols, 2.5]) {
        try {
          fitGaussian(x, { covariance: 'lowrank', rank });
          expect.unreachable();
        } catch (e) {
          expect(isLatentwatchError(e) && e.code).toBe('LW_ERR_PROBE_FIT');
        }
      }
    });
  });
});
