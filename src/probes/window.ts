/**
 * Persistent-shift scoring (issue 12): a windowed member scores the MEAN of a layer's update over
 * the last `size` counted positions of a request, not one position.
 *
 * Why: an injected vector is added at every position of its window, so it is a persistent shift.
 * One position's update hides a weak shift (×0.25 the residual norm) in the token-to-token noise;
 * the mean over 16 positions averages that noise down by √16 and keeps the shift. Natural text has
 * persistent shifts too, and the strongest come from repetition (one character, word or line again
 * and again; a generation loop): there the positions repeat the same computation, so their mean
 * averages nothing away. Counting only positions whose token pair (previous id, id) is new in the
 * request ('novel-bigram') counts repeated text once; an injection shifts novel positions as much
 * as any other. Measured in bench/persistent-shift.ts (docs/reports/persistent-shift/).
 *
 * The member's Gaussian is fitted on clean window means (lab/generic.ts, probes/learn.ts), which
 * knows the natural autocorrelation; before `size` positions are counted the missing ones are taken
 * at the Gaussian's mean, so a short window is never inflated.
 *
 * Counted positions needed (`window.minCount`, half the window in fits since issue 12): repeated
 * junk (one character, word or line again and again) has a handful of novel positions, and the
 * first of them can carry a massive update (the model treats a run of one token like the attention
 * sink); averaged with the fill they made the largest window distances of any clean text at the
 * middle layers (measured: up to 140 where natural text reached 38), which set the threshold and
 * hid ×0.25 injections. The per-token members still score such positions.
 *
 * Spread discount (`window.spread`): a kind of text the fit never held shifts a window mean as far
 * as a weak injection does, but it also spreads the window's rows more than clean text does (its
 * tokens are unusual one by one); an added vector moves every row by the same amount and leaves
 * their spread as it was. So the distance is divided by √max(1, s / reference), s the mean squared
 * (scaled) distance of the window's counted rows from their own mean. Never a boost: a window that
 * spreads less than clean text keeps its distance. Measured on the qwen3 model's unseen-traffic
 * styles (issue 12): the plain windowed members fired on 6% of them at the corpus threshold, the
 * discounted ones on none, and still flagged ×0.25 injections at its middle layers.
 */
import { lwError } from '../errors.js';
import { round, roundAll } from './calibration.js';
import type { WindowSpec } from './probe-file.js';

/** Token ids below this fit the bigram key exactly (2^22 > every Qwen vocabulary, ~152k). */
const ID_LIMIT = 1 << 22;

/** Which positions of a request start a token pair not seen before in it. */
export class NoveltyTracker {
  private readonly seen = new Set<number>();
  private prev = -1;

  /** Whether (previous id, `id`) is new in this request; remembers it either way. */
  next(id: number): boolean {
    if (!Number.isInteger(id) || id < 0 || id >= ID_LIMIT) throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `token id ${id} outside 0..${ID_LIMIT - 1}`);
    const key = (this.prev + 1) * ID_LIMIT + id;
    this.prev = id;
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    return true;
  }
}

/** Novelty of every position of `ids` (a whole request, from position 0). */
export function novelPositions(ids: readonly number[]): Uint8Array {
  const t = new NoveltyTracker();
  return Uint8Array.from(ids, (id) => (t.next(id) ? 1 : 0));
}

/**
 * The mean of the last `size` rows pushed; slots not yet filled count as `fill`. With `scale`, also
 * the rows' spread (spread()): O(dim) per row, from each row's scaled squared norm kept beside it.
 */
export class WindowMean {
  private readonly ring: Float32Array;
  private readonly sum: Float64Array;
  private readonly squares: Float64Array | null;
  private squareSum = 0;
  private count = 0;
  private next = 0;

  constructor(
    readonly size: number,
    readonly dim: number,
    private readonly fill: Float32Array | Float64Array,
    private readonly scale: Float32Array | Float64Array | null = null,
  ) {
    this.ring = new Float32Array(size * dim);
    this.sum = new Float64Array(dim);
    this.squares = scale ? new Float64Array(size) : null;
  }

  /** Push a row (`dim` floats of `row` from `offset`), dropping the oldest when full. */
  push(row: Float32Array, offset: number): void {
    const d = this.dim;
    const o = this.next * d;
    const full = this.count === this.size;
    const scale = this.scale;
    let q = 0;
    for (let j = 0; j < d; j++) {
      const x = row[offset + j];
      if (full) this.sum[j] -= this.ring[o + j];
      this.ring[o + j] = x;
      this.sum[j] += x;
      if (scale) {
        const y = x * scale[j];
        q += y * y;
      }
    }
    if (this.squares) {
      if (full) this.squareSum -= this.squares[this.next];
      this.squares[this.next] = q;
      this.squareSum += q;
    }
    this.next = (this.next + 1) % this.size;
    if (!full) this.count++;
  }

  /**
   * Mean squared distance of the rows pushed (at most `size`) from their own mean, each dimension
   * times `scale`: Σ‖s∘x‖²/n − ‖s∘x̄‖². NaN with fewer than two rows or without a scale.
   */
  spread(): number {
    const n = this.count;
    if (!this.scale || n < 2) return NaN;
    let m = 0;
    for (let j = 0; j < this.dim; j++) {
      const y = (this.sum[j] / n) * this.scale[j];
      m += y * y;
    }
    return Math.max(0, this.squareSum / n - m);
  }

  /** Per-dimension variance of the rows pushed about their own mean into `out` (unscaled; n ≥ 1). */
  variance(out: Float64Array): void {
    const n = this.count;
    const d = this.dim;
    out.fill(0);
    for (let k = 0; k < n; k++) {
      const o = k * d;
      for (let j = 0; j < d; j++) {
        const c = this.ring[o + j] - this.sum[j] / n;
        out[j] += c * c;
      }
    }
    for (let j = 0; j < d; j++) out[j] /= n;
  }

  /** Rows pushed so far, at most `size`. */
  get filled(): number {
    return this.count;
  }

  /** The window mean into `out` (dim floats). */
  mean(out: Float32Array): void {
    const missing = this.size - this.count;
    const inv = 1 / this.size;
    for (let j = 0; j < this.dim; j++) out[j] = (this.sum[j] + missing * this.fill[j]) * inv;
  }
}

/**
 * Every full window's mean of a member's input over the counted positions in [from, to): the row at
 * p is x[p] − prev[p] (a layer's update) or x[p]. What a windowed member is fitted on, by the lab
 * (fit-anomaly) and by learn mode alike. `visit` gets buffers reused for the next window; with
 * `withVariance`, the second is the window's per-dimension variance about its own mean (for the
 * spread discount's reference: the mean over clean windows of Σ_j scale_j² · variance_j).
 */
export function forEachFullWindowMean(
  x: Float32Array,
  prev: Float32Array | null,
  counted: (p: number) => boolean,
  from: number,
  to: number,
  d: number,
  size: number,
  visit: (mean: Float32Array, variance: Float64Array | null) => void,
  withVariance = false,
): void {
  const window = new WindowMean(size, d, new Float32Array(d));
  const row = new Float32Array(d);
  const mean = new Float32Array(d);
  const variance = withVariance ? new Float64Array(d) : null;
  for (let p = from; p < to; p++) {
    if (!counted(p)) continue;
    for (let j = 0; j < d; j++) row[j] = x[p * d + j] - (prev ? prev[p * d + j] : 0);
    window.push(row, 0);
    if (window.filled < size) continue;
    window.mean(mean);
    if (variance) window.variance(variance);
    visit(mean, variance);
  }
}

/**
 * Sums of a member's per-token rows and of clean full windows' per-dimension variance, from which
 * the spread discount is fitted (the lab from rows, learn mode pass by pass: one implementation).
 */
export class SpreadMoments {
  private readonly sum: Float64Array;
  private readonly squares: Float64Array;
  private readonly windowVariance: Float64Array;
  private rows = 0;
  private windows = 0;

  constructor(readonly dim: number) {
    this.sum = new Float64Array(dim);
    this.squares = new Float64Array(dim);
    this.windowVariance = new Float64Array(dim);
  }

  addRow(row: ArrayLike<number>, offset: number): void {
    for (let j = 0; j < this.dim; j++) {
      const x = row[offset + j];
      this.sum[j] += x;
      this.squares[j] += x * x;
    }
    this.rows++;
  }

  /**
   * The sums of both (every field is a sum), `other`'s counted `weight` times: the lab's
   * leave-one-style-out fits add per-style ones, learn mode its weighted junk baseline.
   */
  plus(other: SpreadMoments, weight = 1): SpreadMoments {
    const a = this.toArray();
    const b = other.toArray();
    if (a.length !== b.length) throw lwError('LW_ERR_PROBE_FIT', `spread sums of width ${other.dim} do not add to width ${this.dim}`);
    return SpreadMoments.fromArray(this.dim, a.map((v, i) => v + weight * b[i]));
  }

  /** Float64 values in a fixed layout (3·dim + 2), for learn mode's persisted state. */
  static length(dim: number): number {
    return 3 * dim + 2;
  }

  toArray(): Float64Array {
    const d = this.dim;
    const a = new Float64Array(SpreadMoments.length(d));
    a.set(this.sum, 0);
    a.set(this.squares, d);
    a.set(this.windowVariance, 2 * d);
    a[3 * d] = this.rows;
    a[3 * d + 1] = this.windows;
    return a;
  }

  static fromArray(dim: number, a: Float64Array): SpreadMoments {
    const m = new SpreadMoments(dim);
    m.sum.set(a.subarray(0, dim));
    m.squares.set(a.subarray(dim, 2 * dim));
    m.windowVariance.set(a.subarray(2 * dim, 3 * dim));
    m.rows = a[3 * dim];
    m.windows = a[3 * dim + 1];
    return m;
  }

  /** Every position's row in [from, to): x[p] − prev[p] in float32 (a layer's update), or x[p]. */
  addRows(x: Float32Array, prev: Float32Array | null, from: number, to: number): void {
    const d = this.dim;
    const row = new Float32Array(d);
    for (let p = from; p < to; p++) {
      for (let j = 0; j < d; j++) row[j] = x[p * d + j] - (prev ? prev[p * d + j] : 0);
      this.addRow(row, 0);
    }
  }

  addWindow(variance: ArrayLike<number>): void {
    for (let j = 0; j < this.dim; j++) this.windowVariance[j] += variance[j];
    this.windows++;
  }

  /**
   * scale = 1/σ per dimension of the rows (σ² floored at 1e-6 of the mean variance, so a constant
   * dimension cannot dominate), reference = the mean over windows of Σ_j scale_j² · variance_j.
   * Null without two rows and one window.
   */
  fit(): { scale: Float64Array; reference: number } | null {
    const n = this.rows;
    if (n < 2 || this.windows < 1) return null;
    const vars = Array.from(this.sum, (s, j) => Math.max(0, this.squares[j] / n - (s / n) ** 2));
    const floor = Math.max(1e-30, (vars.reduce((a, b) => a + b, 0) / this.dim) * 1e-6);
    const scale = Float64Array.from(vars, (v) => 1 / Math.sqrt(Math.max(v, floor)));
    let reference = 0;
    for (let j = 0; j < this.dim; j++) reference += scale[j] * scale[j] * (this.windowVariance[j] / this.windows);
    return reference > 0 ? { scale, reference } : null;
  }
}

/** A windowed member's spec over novel positions, with the spread discount fitted from `moments` when given and fittable. */
export function windowSpec(size: number, moments: SpreadMoments | null, digits = 7, positions: WindowSpec['positions'] = 'novel-bigram', minCount: number | undefined = Math.ceil(size / 2)): WindowSpec {
  const fitted = moments?.fit();
  const base = { size, positions, ...(minCount === undefined ? {} : { minCount }) };
  return fitted ? { ...base, spread: { scale: roundAll(fitted.scale, digits), reference: round(fitted.reference, digits) } } : base;
}

/** The discount a window's distance is divided by: √max(1, spread / reference); 1 when the spread is undefined. */
export function spreadDiscount(spread: number, reference: number): number {
  return Number.isFinite(spread) && spread > reference ? Math.sqrt(spread / reference) : 1;
}
