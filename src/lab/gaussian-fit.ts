/**
 * Fit a Gaussian (mean and shrunk covariance) to clean activations, in the forms probes/gaussian.ts
 * scores: see that file for the forms and the shrinkage rule. Deterministic: fixed summation order;
 * the low-rank form's subspace iteration starts from a fixed seed.
 */
import { lwError } from '../errors.js';
import { mahalanobis, type GaussianModel } from '../probes/gaussian.js';
import { choleskyModel, ledoitWolfFromMoments, shrinkInPlace } from '../probes/moments.js';
import { axpy, dot, type Matrix } from '../probes/matrix.js';
import { createRng } from '../rng.js';

export interface GaussianOptions {
  /** Default 'full' (stored as a Cholesky factor). */
  covariance?: 'full' | 'diagonal' | 'lowrank';
  /** Eigenvectors kept by 'lowrank' (default 32, at most d − 1). */
  rank?: number;
  /** Shrinkage s in [0, 1], or 'ledoit-wolf' (full only). Default 'ledoit-wolf' for full, 0.01 for diagonal. */
  shrinkage?: 'ledoit-wolf' | number;
}

/** Fit mean and shrunk covariance to the rows of x. */
export function fitGaussian(x: Matrix, options: GaussianOptions = {}): GaussianModel {
  const form = options.covariance ?? 'full';
  const { rows: n, cols: d } = x;
  if (n < 2) throw lwError('LW_ERR_PROBE_FIT', `need at least 2 rows, got ${n}`);
  if (d < 1) throw lwError('LW_ERR_PROBE_FIT', 'no features');
  const mean = columnMeans(x);
  if (form === 'diagonal') {
    const s = options.shrinkage ?? 0.01;
    if (typeof s !== 'number' || !(s >= 0 && s <= 1)) {
      throw lwError('LW_ERR_PROBE_FIT', `diagonal covariance needs a numeric shrinkage in [0, 1], got ${String(s)}`);
    }
    const variance = new Float64Array(d);
    for (let i = 0; i < n; i++) {
      const o = i * d;
      for (let j = 0; j < d; j++) {
        const c = x.data[o + j] - mean[j];
        variance[j] += c * c;
      }
    }
    let mu = 0;
    for (let j = 0; j < d; j++) {
      variance[j] /= n;
      mu += variance[j];
    }
    mu /= d;
    for (let j = 0; j < d; j++) {
      variance[j] = (1 - s) * variance[j] + s * mu;
      if (!(variance[j] > 0) || !Number.isFinite(variance[j])) {
        throw lwError('LW_ERR_PROBE_FIT', `feature ${j} has zero or non-finite variance; use shrinkage > 0`);
      }
    }
    return { form: 'diagonal', mean, shrinkage: s, variance };
  }

  const cov = empiricalCovariance(x, mean);
  const s = options.shrinkage === undefined || options.shrinkage === 'ledoit-wolf' ? ledoitWolfFromCovariance(x, mean, cov) : options.shrinkage;
  // The shrink and factor steps are the daemon's too (probes/moments.ts: learning from traffic).
  shrinkInPlace(cov, d, s);
  if (form === 'lowrank') return lowRankModel(cov, d, mean, s, options.rank ?? 32);
  return choleskyModel(cov, d, n, mean, s);
}

/** The Ledoit–Wolf shrinkage for the rows of x (scikit-learn's `ledoit_wolf_shrinkage`, data centred). */
export function ledoitWolfShrinkage(x: Matrix): number {
  const mean = columnMeans(x);
  return ledoitWolfFromCovariance(x, mean, empiricalCovariance(x, mean));
}

/** Mahalanobis distance of every row of x. */
export function mahalanobisRows(model: GaussianModel, x: Matrix): Float64Array {
  const d = model.mean.length;
  if (x.cols !== d) throw new RangeError(`mahalanobisRows: model has ${d} features, matrix ${x.cols}`);
  const scratch = new Float64Array(d);
  const out = new Float64Array(x.rows);
  for (let i = 0; i < x.rows; i++) out[i] = mahalanobis(model, x.data, i * d, scratch);
  return out;
}

function columnMeans(x: Matrix): Float64Array {
  const { rows: n, cols: d, data } = x;
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) axpy(1, data, i * d, mean, 0, d);
  for (let j = 0; j < d; j++) {
    mean[j] /= n;
    if (!Number.isFinite(mean[j])) throw lwError('LW_ERR_PROBE_FIT', `feature ${j} has non-finite values`);
  }
  return mean;
}

/** S = (1/n)·Σᵢ (xᵢ − mean)(xᵢ − mean)ᵀ, full d×d storage with both triangles filled. */
function empiricalCovariance(x: Matrix, mean: Float64Array): Float64Array {
  const { rows: n, cols: d, data } = x;
  const cov = new Float64Array(d * d);
  const c = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    const o = i * d;
    for (let j = 0; j < d; j++) c[j] = data[o + j] - mean[j];
    // Lower triangle only: row a gets c_a · c[0..a].
    for (let a = 0; a < d; a++) if (c[a] !== 0) axpy(c[a], c, 0, cov, a * d, a + 1);
  }
  for (let a = 0; a < d; a++) {
    for (let b = 0; b <= a; b++) {
      const v = cov[a * d + b] / n;
      cov[a * d + b] = v;
      cov[b * d + a] = v;
    }
  }
  return cov;
}

/**
 * Ledoit–Wolf shrinkage of the rows of x: Σᵢ ‖cᵢ‖⁴ of the centred rows (the entry sum of
 * (X∘X)ᵀ(X∘X) that scikit-learn forms blockwise), then the formula in probes/moments.ts, which the
 * daemon applies to moments of live traffic.
 */
function ledoitWolfFromCovariance(x: Matrix, mean: Float64Array, cov: Float64Array): number {
  const { rows: n, cols: d, data } = x;
  if (d === 1) return 0;
  let sumNorm4 = 0;
  for (let i = 0; i < n; i++) {
    const o = i * d;
    let r2 = 0;
    for (let j = 0; j < d; j++) {
      const c = data[o + j] - mean[j];
      r2 += c * c;
    }
    sumNorm4 += r2 * r2;
  }
  return ledoitWolfFromMoments(cov, d, n, sumNorm4);
}

/**
 * The low-rank model of the shrunk covariance (lower triangle of `cov` holds it): top-k eigenpairs
 * by subspace iteration (k + 8 vectors, a seeded start), then Rayleigh–Ritz on the subspace.
 */
function lowRankModel(cov: Float64Array, d: number, mean: Float64Array, shrinkage: number, rank: number): GaussianModel {
  if (!Number.isInteger(rank) || rank < 1 || rank >= d) throw lwError('LW_ERR_PROBE_FIT', `rank must be an integer in [1, ${d - 1}], got ${rank}`);
  for (let i = 0; i < d; i++) for (let j = 0; j < i; j++) cov[j * d + i] = cov[i * d + j];
  let trace = 0;
  for (let j = 0; j < d; j++) trace += cov[j * d + j];
  const p = Math.min(d, rank + 8);
  const rng = createRng(0x5eed);
  const q = new Float64Array(p * d); // p vectors of length d, row by row
  for (let i = 0; i < q.length; i++) q[i] = rng.gaussian();
  orthonormalise(q, p, d);
  const next = new Float64Array(p * d);
  for (let iter = 0; iter < 40; iter++) {
    for (let i = 0; i < p; i++) for (let a = 0; a < d; a++) next[i * d + a] = dot(cov, a * d, q, i * d, d);
    q.set(next);
    orthonormalise(q, p, d);
  }
  // Rayleigh–Ritz: T = Qᵀ Σ Q (p × p), T = U Λ Uᵀ, eigenvectors Q U.
  const sq = new Float64Array(p * d);
  for (let i = 0; i < p; i++) for (let a = 0; a < d; a++) sq[i * d + a] = dot(cov, a * d, q, i * d, d);
  const t = new Float64Array(p * p);
  for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) t[i * p + j] = dot(q, i * d, sq, j * d, d);
  const { values, vectors } = symmetricEigen(t, p);
  const order = Array.from({ length: p }, (_, i) => i).sort((a, b) => values[b] - values[a]);
  const components = new Float64Array(rank * d);
  const eigenvalues = new Float64Array(rank);
  for (let r = 0; r < rank; r++) {
    const e = order[r];
    eigenvalues[r] = values[e];
    for (let i = 0; i < p; i++) axpy(vectors[i * p + e], q, i * d, components, r * d, d);
  }
  let kept = 0;
  for (const v of eigenvalues) kept += v;
  const residualVariance = (trace - kept) / (d - rank);
  if (!(eigenvalues[rank - 1] > 0) || !(residualVariance > 0) || !Number.isFinite(residualVariance)) {
    throw lwError('LW_ERR_PROBE_FIT', `low-rank covariance is degenerate (d=${d}, rank=${rank}, shrinkage=${shrinkage}); use more shrinkage or a lower rank`);
  }
  return { form: 'lowrank', mean, shrinkage, components, eigenvalues, residualVariance };
}

/** Modified Gram–Schmidt on the n rows (length d) of m, in place. */
function orthonormalise(m: Float64Array, n: number, d: number): void {
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) axpy(-dot(m, i * d, m, j * d, d), m, j * d, m, i * d, d);
    const norm = Math.sqrt(dot(m, i * d, m, i * d, d));
    if (!(norm > 0)) throw lwError('LW_ERR_PROBE_FIT', 'subspace iteration lost rank; use more shrinkage');
    for (let a = 0; a < d; a++) m[i * d + a] /= norm;
  }
}

/** Cyclic Jacobi eigen-decomposition of a small symmetric n × n matrix: values, and vectors as columns. */
export function symmetricEigen(a: Float64Array, n: number): { values: Float64Array; vectors: Float64Array } {
  const m = Float64Array.from(a);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) off += m[i * n + j] * m[i * n + j];
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let r = p + 1; r < n; r++) {
        const apr = m[p * n + r];
        if (Math.abs(apr) < 1e-300) continue;
        const theta = (m[r * n + r] - m[p * n + p]) / (2 * apr);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const mkp = m[k * n + p];
          const mkr = m[k * n + r];
          m[k * n + p] = c * mkp - s * mkr;
          m[k * n + r] = s * mkp + c * mkr;
        }
        for (let k = 0; k < n; k++) {
          const mpk = m[p * n + k];
          const mrk = m[r * n + k];
          m[p * n + k] = c * mpk - s * mrk;
          m[r * n + k] = s * mpk + c * mrk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkr = v[k * n + r];
          v[k * n + p] = c * vkp - s * vkr;
          v[k * n + r] = s * vkp + c * vkr;
        }
      }
    }
  }
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = m[i * n + i];
  return { values, vectors: v };
}
