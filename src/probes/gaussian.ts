/**
 * The Gaussian a probe file stores and its Mahalanobis distance (fitting: lab/gaussian-fit.ts).
 *
 * Unsupervised anomaly score (issue 7): fit a Gaussian to clean activations of one hook (or a
 * concatenation of hooks) and score a row by its Mahalanobis distance from that fit. It needs no
 * injection trials, so it can flag an added vector of any direction, and it can be refitted from
 * live traffic. The threshold is then set at a target FPR on clean rows (metrics.thresholdAtFpr).
 *
 * Covariance (population, 1/n) is shrunk toward a scaled identity, as scikit-learn's
 * ShrunkCovariance / LedoitWolf do:  Σ = (1 − s)·S + s·μ·I,  μ = trace(S) / d,
 * with s fixed or chosen by the Ledoit–Wolf formula (the same closed form scikit-learn uses).
 *
 * Two stored forms:
 * - 'cholesky' (default): the lower-triangular L with Σ = L·Lᵀ, packed row by row
 *   (d(d+1)/2 numbers). The distance is ‖L⁻¹(x − mean)‖ by forward substitution, O(d²/2) per row,
 *   with no explicit inverse (more accurate than storing Σ⁻¹). Fitting costs O(n·d²/2) for S plus
 *   O(d³/3) for the factor: seconds at d ≈ 1024, fine to d ≈ 2048; the file holds d(d+1)/2 numbers.
 * - 'diagonal': per-feature variances only, O(d) per row and O(n·d) to fit. For very wide models
 *   (d = 5120) or quick fits; it ignores correlations, so it is weaker against directions that
 *   hide in correlated features.
 * - 'lowrank': the top-k eigenvectors of the shrunk Σ with their eigenvalues, every other direction
 *   given the mean of the remaining eigenvalues (probabilistic PCA): O(k·d) per row instead of
 *   O(d²/2), so a per-token, every-layer detector stays a small share of a token's cost (k = 32 at
 *   d = 384 is 1/6 of the work; at d = 896, 1/14). The top eigenpairs come from seeded subspace
 *   iteration with a Rayleigh–Ritz step, so fits are deterministic.
 *
 * Deterministic: fixed summation order, no randomness.
 */
import { dot } from './matrix.js';

export type GaussianModel =
  | {
      readonly form: 'cholesky';
      readonly mean: Float64Array;
      readonly shrinkage: number;
      /** Lower-triangular L (Σ = L·Lᵀ) packed by rows: L00, L10, L11, L20, L21, L22, … */
      readonly factor: Float64Array;
    }
  | {
      readonly form: 'diagonal';
      readonly mean: Float64Array;
      readonly shrinkage: number;
      /** Shrunk per-feature variances (all > 0). */
      readonly variance: Float64Array;
    }
  | {
      readonly form: 'lowrank';
      readonly mean: Float64Array;
      readonly shrinkage: number;
      /** k orthonormal eigenvectors of the shrunk Σ, row by row (k × d), largest eigenvalue first. */
      readonly components: Float64Array;
      /** Their eigenvalues (all > 0). */
      readonly eigenvalues: Float64Array;
      /** The variance given to every direction outside the components (> 0). */
      readonly residualVariance: number;
    };

/** z = L⁻¹x by forward substitution on a packed lower-triangular factor (z: length ≥ x.length). */
export function forwardSubstitute(factor: ArrayLike<number>, x: ArrayLike<number>, z: Float64Array): void {
  for (let i = 0, row = 0; i < x.length; row += i + 1, i++) {
    let s = x[i];
    for (let k = 0; k < i; k++) s -= factor[row + k] * z[k];
    z[i] = s / factor[row + i];
  }
}

/**
 * Mahalanobis distance √((x − mean)ᵀ Σ⁻¹ (x − mean)) of the row at `offset` in `row`.
 * `scratch` (length ≥ d) is the caller's, reused across calls: no allocation per row.
 */
export function mahalanobis(model: GaussianModel, row: Float32Array | Float64Array, offset: number, scratch: Float64Array): number {
  const mean = model.mean;
  const d = mean.length;
  let q = 0;
  if (model.form === 'lowrank') {
    const { components: v, eigenvalues: lambda } = model;
    const z = scratch;
    let norm2 = 0;
    for (let j = 0; j < d; j++) {
      const c = row[offset + j] - mean[j];
      z[j] = c;
      norm2 += c * c;
    }
    let inside = 0;
    for (let i = 0; i < lambda.length; i++) {
      const p = dot(v, i * d, z, 0, d);
      inside += p * p;
      q += (p * p) / lambda[i];
    }
    // Rounding can leave the outside part a hair below zero.
    return Math.sqrt(q + Math.max(0, norm2 - inside) / model.residualVariance);
  }
  if (model.form === 'diagonal') {
    const v = model.variance;
    for (let j = 0; j < d; j++) {
      const c = row[offset + j] - mean[j];
      q += (c * c) / v[j];
    }
    return Math.sqrt(q);
  }
  const z = scratch;
  const l = model.factor;
  let rowStart = 0; // packed index of L[i][0]
  for (let i = 0; i < d; i++) {
    const zi = (row[offset + i] - mean[i] - dot(l, rowStart, z, 0, i)) / l[rowStart + i];
    z[i] = zi;
    q += zi * zi;
    rowStart += i + 1;
  }
  return Math.sqrt(q);
}
