/**
 * A Gaussian (mean + Ledoit–Wolf shrunk full covariance) from sufficient statistics, so the daemon
 * can learn a detector from live traffic keeping numbers, never rows (docs/daemon.md, "Learning
 * from your traffic"). The lab's fitGaussian (lab/gaussian-fit.ts) calls the same Ledoit–Wolf and
 * shrink steps below: one implementation of the rule.
 *
 * Moments are taken around a fixed shift a (the first row): y = x − a. Activations of a layer
 * share a large common offset, and Σx xᵀ − n·m mᵀ in float64 would lose the small spread to
 * cancellation; around a row of the same distribution the sums stay the size of the spread.
 *
 * Kept per member: n, a, Σy, Σ y yᵀ (packed lower triangle), Σ‖y‖²·y and Σ‖y‖⁴. With m = mean(y),
 * c = y − m, r = ‖y‖², t = m·y, k = ‖m‖²:  ‖c‖⁴ = (r − 2t + k)², so
 *   Σ‖c‖⁴ = Σr² + 4·mᵀ(Σ y yᵀ)m + n·k² − 4·m·Σ(r·y) + 2k·Σr − 4k·m·Σy,
 * which is what Ledoit–Wolf's π̂ needs (the β term below).
 */
import { lwError } from '../errors.js';
import type { GaussianModel } from './gaussian.js';
import { choleskyInPlace, dot, packLower } from './matrix.js';

export class MomentAccumulator {
  n = 0;
  readonly shift: Float64Array;
  readonly sum: Float64Array;
  /** Σ y yᵀ, lower triangle packed by rows (d(d+1)/2). */
  readonly sumOuter: Float64Array;
  /** Σ ‖y‖² y. */
  readonly sumNorm2Row: Float64Array;
  sumNorm4 = 0;
  private readonly y: Float64Array;
  /** A shift given to the constructor: the first row added does not replace it. */
  private readonly fixedShift: boolean;

  /**
   * `shift`: the point the moments are taken around (default: the first row added). Accumulators
   * with one shift add up (`plus`): the lab folds per-style moments into leave-one-style-out fits.
   */
  constructor(
    readonly d: number,
    shift?: ArrayLike<number>,
  ) {
    this.shift = new Float64Array(d);
    if (shift) for (let j = 0; j < d; j++) this.shift[j] = shift[j];
    this.fixedShift = shift !== undefined;
    this.sum = new Float64Array(d);
    this.sumOuter = new Float64Array((d * (d + 1)) / 2);
    this.sumNorm2Row = new Float64Array(d);
    this.y = new Float64Array(d);
  }

  /**
   * The moments of both accumulators' rows together, `other`'s rows counted `weight` times (learn
   * mode weighs its junk baseline so; a weight need not be whole). Moments taken around another
   * shift are moved to this one first: with δ = other.shift − this.shift, y' = y + δ, t = δ·y and
   * e = ‖δ‖², every sum of y' follows from the stored sums of y:
   *   Σy' = Σy + nδ,   Σy'y'ᵀ = Σyyᵀ + Σy δᵀ + δ Σyᵀ + n δδᵀ,
   *   Σ‖y'‖²y' = Σ‖y‖²y + 2(Σyyᵀ)δ + e Σy + δ(Σ‖y‖² + 2δ·Σy + n e),
   *   Σ‖y'‖⁴ = Σ‖y‖⁴ + 4δᵀ(Σyyᵀ)δ + n e² + 4δ·Σ‖y‖²y + 2e Σ‖y‖² + 4e δ·Σy.
   */
  plus(other: MomentAccumulator, weight = 1): MomentAccumulator {
    if (other.d !== this.d) throw lwError('LW_ERR_PROBE_FIT', `moments of width ${other.d} do not add to width ${this.d}`);
    if (!(weight >= 0 && Number.isFinite(weight))) throw lwError('LW_ERR_PROBE_FIT', `moment weight must be finite and ≥ 0, got ${weight}`);
    const { d } = this;
    const o = other.shift.every((v, j) => v === this.shift[j]) ? other : other.shiftedTo(this.shift);
    const out = new MomentAccumulator(d, this.shift);
    out.n = this.n + weight * o.n;
    out.sumNorm4 = this.sumNorm4 + weight * o.sumNorm4;
    for (const [a, b, c] of [
      [out.sum, this.sum, o.sum],
      [out.sumOuter, this.sumOuter, o.sumOuter],
      [out.sumNorm2Row, this.sumNorm2Row, o.sumNorm2Row],
    ])
      for (let i = 0; i < a.length; i++) a[i] = b[i] + weight * c[i];
    return out;
  }

  /** The same rows' moments taken around `shift` (plus's identities). */
  shiftedTo(shift: ArrayLike<number>): MomentAccumulator {
    const { d, n } = this;
    const out = new MomentAccumulator(d, shift);
    const delta = Float64Array.from({ length: d }, (_, j) => this.shift[j] - shift[j]);
    const full = (a: number, b: number): number => (a >= b ? this.sumOuter[(a * (a + 1)) / 2 + b] : this.sumOuter[(b * (b + 1)) / 2 + a]);
    const sDelta = new Float64Array(d); // (Σyyᵀ)δ
    let trace = 0;
    for (let a = 0; a < d; a++) {
      let v = 0;
      for (let b = 0; b < d; b++) v += full(a, b) * delta[b];
      sDelta[a] = v;
      trace += full(a, a);
    }
    const e = dot(delta, 0, delta, 0, d);
    const dSum = dot(delta, 0, this.sum, 0, d);
    const dRow = dot(delta, 0, this.sumNorm2Row, 0, d);
    const dSd = dot(delta, 0, sDelta, 0, d);
    out.n = n;
    let k = 0;
    for (let a = 0; a < d; a++) {
      out.sum[a] = this.sum[a] + n * delta[a];
      out.sumNorm2Row[a] = this.sumNorm2Row[a] + 2 * sDelta[a] + e * this.sum[a] + delta[a] * (trace + 2 * dSum + n * e);
      for (let b = 0; b <= a; b++) out.sumOuter[k++] = full(a, b) + this.sum[a] * delta[b] + delta[a] * this.sum[b] + n * delta[a] * delta[b];
    }
    out.sumNorm4 = this.sumNorm4 + 4 * dSd + n * e * e + 4 * dRow + 2 * e * trace + 4 * e * dSum;
    return out;
  }

  /** Add the row of `d` numbers at `offset`. */
  add(row: ArrayLike<number>, offset: number): void {
    const { d, y, shift, sum, sumOuter, sumNorm2Row } = this;
    if (this.n === 0 && !this.fixedShift) for (let j = 0; j < d; j++) shift[j] = row[offset + j];
    let r = 0;
    for (let j = 0; j < d; j++) {
      const v = row[offset + j] - shift[j];
      if (!Number.isFinite(v)) throw lwError('LW_ERR_PROBE_FIT', `feature ${j} has a non-finite value`);
      y[j] = v;
      r += v * v;
    }
    let k = 0;
    for (let a = 0; a < d; a++) {
      const ya = y[a];
      sum[a] += ya;
      sumNorm2Row[a] += r * ya;
      for (let b = 0; b <= a; b++) sumOuter[k++] += ya * y[b];
    }
    this.sumNorm4 += r * r;
    this.n++;
  }

  /** All the numbers, in a fixed layout (persistence). */
  toArray(): Float64Array {
    const { d } = this;
    const out = new Float64Array(momentLength(d));
    out[0] = this.n;
    out[1] = this.sumNorm4;
    let o = 2;
    for (const a of [this.shift, this.sum, this.sumNorm2Row, this.sumOuter]) {
      out.set(a, o);
      o += a.length;
    }
    return out;
  }

  static fromArray(d: number, data: Float64Array): MomentAccumulator {
    if (data.length !== momentLength(d)) throw lwError('LW_ERR_PROBE_FIT', `moments of width ${d} need ${momentLength(d)} numbers, got ${data.length}`);
    const m = new MomentAccumulator(d);
    m.n = data[0];
    m.sumNorm4 = data[1];
    let o = 2;
    for (const a of [m.shift, m.sum, m.sumNorm2Row, m.sumOuter]) {
      a.set(data.subarray(o, o + a.length));
      o += a.length;
    }
    return m;
  }
}

/** Numbers a MomentAccumulator of width d holds. */
export function momentLength(d: number): number {
  return 2 + 3 * d + (d * (d + 1)) / 2;
}

/** Mean, population covariance S (full d×d, both triangles) and Σ‖xᵢ − mean‖⁴ from moments. */
export function centredMoments(acc: MomentAccumulator): { mean: Float64Array; cov: Float64Array; sumNorm4: number } {
  const { d, n } = acc;
  if (n < 2) throw lwError('LW_ERR_PROBE_FIT', `need at least 2 rows, got ${n}`);
  const m = Float64Array.from(acc.sum, (s) => s / n);
  const mean = Float64Array.from(m, (v, j) => v + acc.shift[j]);
  for (let j = 0; j < d; j++) if (!Number.isFinite(mean[j])) throw lwError('LW_ERR_PROBE_FIT', `feature ${j} has non-finite values`);
  const cov = new Float64Array(d * d);
  // mᵀ(Σ y yᵀ)m, Σr = tr(Σ y yᵀ), and S = Σ y yᵀ / n − m mᵀ.
  let quad = 0;
  let sumR = 0;
  let k = 0;
  for (let a = 0; a < d; a++) {
    for (let b = 0; b <= a; b++) {
      const s = acc.sumOuter[k++];
      quad += (a === b ? 1 : 2) * m[a] * m[b] * s;
      if (a === b) sumR += s;
      const v = s / n - m[a] * m[b];
      cov[a * d + b] = v;
      cov[b * d + a] = v;
    }
  }
  let kk = 0;
  let mDotRy = 0;
  let mDotSum = 0;
  for (let j = 0; j < d; j++) {
    kk += m[j] * m[j];
    mDotRy += m[j] * acc.sumNorm2Row[j];
    mDotSum += m[j] * acc.sum[j];
  }
  const sumNorm4 = acc.sumNorm4 + 4 * quad + n * kk * kk - 4 * mDotRy + 2 * kk * sumR - 4 * kk * mDotSum;
  return { mean, cov, sumNorm4: Math.max(0, sumNorm4) };
}

/**
 * Ledoit–Wolf shrinkage from the empirical covariance S (full d×d) of n rows and Σᵢ ‖cᵢ‖⁴ of the
 * centred rows (scikit-learn's `ledoit_wolf_shrinkage`):
 *   μ = tr(S)/d,  δ = ‖S − μI‖²_F / d,  β = (Σᵢ ‖cᵢ‖⁴ / n − ‖S‖²_F) / (d·n),  s = min(β, δ) / δ.
 */
export function ledoitWolfFromMoments(cov: Float64Array, d: number, n: number, sumNorm4: number): number {
  if (d === 1) return 0; // one feature: every shrinkage gives the same estimate
  let trace = 0;
  let frob2 = 0;
  for (let a = 0; a < d; a++) {
    trace += cov[a * d + a];
    frob2 += dot(cov, a * d, cov, a * d, d);
  }
  const mu = trace / d;
  const beta = (sumNorm4 / n - frob2) / (d * n);
  const delta = (frob2 - 2 * mu * trace + d * mu * mu) / d;
  if (!(delta > 0)) return 0; // S is already a multiple of I
  const b = Math.min(beta, delta);
  return b <= 0 ? 0 : b / delta;
}

/** Σ = (1 − s)·S + s·(tr(S)/d)·I, in place on the lower triangle of the full d×d `cov`. */
export function shrinkInPlace(cov: Float64Array, d: number, s: number): void {
  if (!(s >= 0 && s <= 1)) throw lwError('LW_ERR_PROBE_FIT', `shrinkage must be in [0, 1], got ${s}`);
  let trace = 0;
  for (let j = 0; j < d; j++) trace += cov[j * d + j];
  const mu = trace / d;
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) cov[i * d + j] *= 1 - s;
    cov[i * d + i] += s * mu;
  }
}

/** The Cholesky-form model of a shrunk covariance (lower triangle of `cov`, overwritten). */
export function choleskyModel(cov: Float64Array, d: number, n: number, mean: Float64Array, s: number): GaussianModel {
  if (!choleskyInPlace(cov, d)) {
    throw lwError('LW_ERR_PROBE_FIT', `shrunk covariance is not positive definite (n=${n}, d=${d}, shrinkage=${s}); use more rows or more shrinkage`);
  }
  return { form: 'cholesky', mean, shrinkage: s, factor: packLower(cov, d) };
}

/** fitGaussian's full form (Ledoit–Wolf shrinkage, Cholesky factor), from moments alone. */
export function fitGaussianFromMoments(acc: MomentAccumulator): GaussianModel {
  const { mean, cov, sumNorm4 } = centredMoments(acc);
  const s = ledoitWolfFromMoments(cov, acc.d, acc.n, sumNorm4);
  shrinkInPlace(cov, acc.d, s);
  return choleskyModel(cov, acc.d, acc.n, mean, s);
}
