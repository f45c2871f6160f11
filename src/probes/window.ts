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
 */
import { lwError } from '../errors.js';

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

/** The mean of the last `size` rows pushed; slots not yet filled count as `fill`. */
export class WindowMean {
  private readonly ring: Float32Array;
  private readonly sum: Float64Array;
  private count = 0;
  private next = 0;

  constructor(
    readonly size: number,
    readonly dim: number,
    private readonly fill: Float32Array | Float64Array,
  ) {
    this.ring = new Float32Array(size * dim);
    this.sum = new Float64Array(dim);
  }

  /** Push a row (`dim` floats of `row` from `offset`), dropping the oldest when full. */
  push(row: Float32Array, offset: number): void {
    const d = this.dim;
    const o = this.next * d;
    const full = this.count === this.size;
    for (let j = 0; j < d; j++) {
      const x = row[offset + j];
      if (full) this.sum[j] -= this.ring[o + j];
      this.ring[o + j] = x;
      this.sum[j] += x;
    }
    this.next = (this.next + 1) % this.size;
    if (!full) this.count++;
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
 * (fit-anomaly) and by learn mode alike. `visit` gets a buffer reused for the next window.
 */
export function forEachFullWindowMean(x: Float32Array, prev: Float32Array | null, counted: (p: number) => boolean, from: number, to: number, d: number, size: number, visit: (mean: Float32Array) => void): void {
  const window = new WindowMean(size, d, new Float32Array(d));
  const row = new Float32Array(d);
  const mean = new Float32Array(d);
  for (let p = from; p < to; p++) {
    if (!counted(p)) continue;
    for (let j = 0; j < d; j++) row[j] = x[p * d + j] - (prev ? prev[p * d + j] : 0);
    window.push(row, 0);
    if (window.filled < size) continue;
    window.mean(mean);
    visit(mean);
  }
}
