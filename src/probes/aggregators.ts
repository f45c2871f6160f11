/**
 * Token-sequence aggregators: turn one probe score per token into a running score the alert
 * rule compares with the probe's threshold. Per-token scores are noisy, and on long contexts a
 * single token rarely carries the signal (Apollo, GDM probe papers), so a probe file stores the
 * aggregator it was calibrated with.
 *
 * Each aggregator is a small stateful object (one per request and probe), allocation-free after
 * construction, and described by a JSON-serialisable spec that `createAggregator` turns back
 * into an object. Before the first push `value` is NaN and `count` is 0.
 *
 * - last: the latest score (no aggregation)
 * - ema(alpha): v₁ = x₁, vₜ = alpha·xₜ + (1 − alpha)·vₜ₋₁ (seeded with the first score, not 0)
 * - rolling-mean(window): mean of the last min(count, window) scores
 * - rolling-max(window): max of the last min(count, window) scores
 * - max / mean: over every score since the last reset
 *
 * Any spec may add `skip: k` (k ≥ 1): the first k scores of a request are not aggregated and the
 * aggregate is NaN there (never above a threshold; the daemon's monitor and metrics ignore NaN).
 * Anomaly detectors use it for position 0, the attention sink, whose residual norm at middle
 * layers is several times any other position's (docs/trials.md, "Concept vectors"), so every
 * request would otherwise look anomalous at its first token. The daemon feeds a request's scores
 * from position 0, so `skip` counts absolute positions there.
 *
 * Any spec may also add `lengthAllowance: {perLog, from}`: the n-th aggregated score of a request
 * (n counted after `skip`) is lowered by perLog · ln(n / from) once n > from. Why: a request's
 * score is the maximum over its positions, and the maximum of n clean scores grows like the tail's
 * scale times ln n, so with one fixed threshold a long request raises false alerts more often than
 * a short one. With perLog the clean tail's scale (calibration.ts fits it), the false-alert rate per
 * request stays about the same at every length, and short requests are not held to the threshold
 * long ones need (issue 12).
 */
import { lwError } from '../errors.js';

export type AggregatorSpec = (
  | { readonly kind: 'last' }
  | { readonly kind: 'ema'; readonly alpha: number }
  | { readonly kind: 'rolling-mean'; readonly window: number }
  | { readonly kind: 'rolling-max'; readonly window: number }
  | { readonly kind: 'max' }
  | { readonly kind: 'mean' }
) & {
  /** Leading scores (positions of a request) not aggregated: NaN there. Absent = 0. */
  readonly skip?: number;
  /** The n-th aggregated score lowered by perLog · ln(n / from) once n > from (n counted after skip). */
  readonly lengthAllowance?: LengthAllowanceSpec;
};

export interface LengthAllowanceSpec {
  readonly perLog: number;
  readonly from: number;
}

export type AggregatorKind = AggregatorSpec['kind'];

export const AGGREGATOR_KINDS: readonly AggregatorKind[] = ['last', 'ema', 'rolling-mean', 'rolling-max', 'max', 'mean'];

export interface Aggregator {
  readonly spec: AggregatorSpec;
  /** Aggregated score after the last push; NaN before any. */
  readonly value: number;
  /** Scores pushed since construction or the last reset. */
  readonly count: number;
  /** Add one token's score; returns the new aggregated value. */
  push(score: number): number;
  reset(): void;
}

/** Longest rolling window accepted: bounds the per-request memory an untrusted file can ask for. */
export const MAX_AGGREGATOR_WINDOW = 65536;

/**
 * Check an unknown value (e.g. parsed from a probe file) is a valid spec; returns a fresh spec
 * with only the known keys. Throws LW_ERR_PROBE_INVALID naming `where`.
 */
export function validateAggregatorSpec(value: unknown, where = 'aggregator'): AggregatorSpec {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(where, 'expected an object');
  const v = value as Record<string, unknown>;
  const allowed = (keys: string[]): void => {
    for (const k of Object.keys(v)) if (!keys.includes(k) && k !== 'skip' && k !== 'lengthAllowance') throw invalid(`${where}.${k}`, 'unknown key');
  };
  let allowance: LengthAllowanceSpec | undefined;
  if (v.lengthAllowance !== undefined) {
    const la = v.lengthAllowance as Record<string, unknown> | null;
    if (typeof la !== 'object' || la === null || Array.isArray(la)) throw invalid(`${where}.lengthAllowance`, 'expected an object {perLog, from}');
    for (const k of Object.keys(la)) if (k !== 'perLog' && k !== 'from') throw invalid(`${where}.lengthAllowance.${k}`, 'unknown key');
    if (typeof la.perLog !== 'number' || !Number.isFinite(la.perLog) || la.perLog < 0) throw invalid(`${where}.lengthAllowance.perLog`, 'expected a finite number ≥ 0');
    if (typeof la.from !== 'number' || !Number.isInteger(la.from) || la.from < 1 || la.from > MAX_AGGREGATOR_WINDOW) throw invalid(`${where}.lengthAllowance.from`, `expected an integer in [1, ${MAX_AGGREGATOR_WINDOW}]`);
    allowance = { perLog: la.perLog, from: la.from };
  }
  let skip = 0;
  if (v.skip !== undefined) {
    const k = v.skip;
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k > MAX_AGGREGATOR_WINDOW) throw invalid(`${where}.skip`, `expected an integer in [0, ${MAX_AGGREGATOR_WINDOW}]`);
    skip = k;
  }
  // skip: 0 is the default and is dropped, so equal specs serialise to equal bytes.
  const withSkip = <T extends AggregatorSpec>(spec: T): T => {
    const out = skip > 0 ? { ...spec, skip } : spec;
    return allowance ? { ...out, lengthAllowance: allowance } : out;
  };
  switch (v.kind) {
    case 'last':
    case 'max':
    case 'mean':
      allowed(['kind']);
      return withSkip({ kind: v.kind });
    case 'ema': {
      allowed(['kind', 'alpha']);
      const a = v.alpha;
      if (typeof a !== 'number' || !(a > 0 && a <= 1)) throw invalid(`${where}.alpha`, 'expected a number in (0, 1]');
      return withSkip({ kind: 'ema', alpha: a });
    }
    case 'rolling-mean':
    case 'rolling-max': {
      allowed(['kind', 'window']);
      const w = v.window;
      if (typeof w !== 'number' || !Number.isInteger(w) || w < 1 || w > MAX_AGGREGATOR_WINDOW) {
        throw invalid(`${where}.window`, `expected an integer in [1, ${MAX_AGGREGATOR_WINDOW}]`);
      }
      return withSkip({ kind: v.kind, window: w });
    }
    default:
      throw invalid(`${where}.kind`, `expected one of ${AGGREGATOR_KINDS.join(', ')}`);
  }
}

/** The same spec with `skip` lowered by `start` (for a sequence that begins at position `start`). */
export function skipFrom(spec: AggregatorSpec, start: number): AggregatorSpec {
  const skip = Math.max(0, (spec.skip ?? 0) - start);
  const { skip: _old, ...rest } = spec;
  return (skip > 0 ? { ...rest, skip } : rest) as AggregatorSpec;
}

/**
 * Build the stateful aggregator a spec describes (the spec is validated first). `alreadyScored`:
 * aggregated positions that came before the first push (a sequence read from the middle of a
 * request), so the length allowance counts them.
 */
export function createAggregator(spec: AggregatorSpec, alreadyScored = 0): Aggregator {
  const s = validateAggregatorSpec(spec);
  const { skip: _skip, lengthAllowance, ...leafSpec } = s;
  let agg = leafAggregator(leafSpec as AggregatorSpec);
  if (lengthAllowance !== undefined) agg = new LengthAllowance(s, agg, lengthAllowance, alreadyScored);
  return s.skip !== undefined ? new Skipping(s, agg) : agg;
}

function leafAggregator(s: AggregatorSpec): Aggregator {
  switch (s.kind) {
    case 'last':
      return new Last(s);
    case 'ema':
      return new Ema(s);
    case 'rolling-mean':
      return new RollingMean(s);
    case 'rolling-max':
      return new RollingMax(s);
    case 'max':
      return new CumulativeMax(s);
    case 'mean':
      return new CumulativeMean(s);
  }
}

/** Aggregated value after each score of a whole sequence (offline evaluation). */
export function aggregateSequence(spec: AggregatorSpec, scores: ArrayLike<number>, alreadyScored = 0): Float64Array {
  const agg = createAggregator(spec, alreadyScored);
  const out = new Float64Array(scores.length);
  for (let i = 0; i < scores.length; i++) out[i] = agg.push(scores[i]);
  return out;
}

function invalid(where: string, what: string): Error {
  return lwError('LW_ERR_PROBE_INVALID', `${where}: ${what}`);
}

abstract class Base implements Aggregator {
  value = NaN;
  count = 0;
  constructor(readonly spec: AggregatorSpec) {}
  abstract push(score: number): number;
  reset(): void {
    this.value = NaN;
    this.count = 0;
  }
}

/** `skip`: NaN for the first k pushes, then the inner aggregator over the rest. */
class Skipping implements Aggregator {
  private pushed = 0;
  private readonly skip: number;
  constructor(
    readonly spec: AggregatorSpec,
    private readonly inner: Aggregator,
  ) {
    this.skip = spec.skip ?? 0;
  }
  get value(): number {
    return this.inner.value;
  }
  get count(): number {
    return this.pushed;
  }
  push(score: number): number {
    this.pushed++;
    return this.pushed <= this.skip ? NaN : this.inner.push(score);
  }
  reset(): void {
    this.pushed = 0;
    this.inner.reset();
  }
}

/** `lengthAllowance`: the inner aggregate lowered by perLog · ln(n / from) once n > from. */
class LengthAllowance implements Aggregator {
  private pushed = 0;
  constructor(
    readonly spec: AggregatorSpec,
    private readonly inner: Aggregator,
    private readonly allowance: LengthAllowanceSpec,
    private readonly alreadyScored: number,
  ) {}
  value = NaN;
  get count(): number {
    return this.pushed;
  }
  push(score: number): number {
    this.pushed++;
    const n = this.pushed + this.alreadyScored;
    const v = this.inner.push(score);
    return (this.value = n > this.allowance.from ? v - this.allowance.perLog * Math.log(n / this.allowance.from) : v);
  }
  reset(): void {
    this.pushed = 0;
    this.value = NaN;
    this.inner.reset();
  }
}

class Last extends Base {
  push(score: number): number {
    this.count++;
    return (this.value = score);
  }
}

class Ema extends Base {
  private readonly alpha: number;
  constructor(spec: { kind: 'ema'; alpha: number }) {
    super(spec);
    this.alpha = spec.alpha;
  }
  push(score: number): number {
    this.value = this.count === 0 ? score : this.alpha * score + (1 - this.alpha) * this.value;
    this.count++;
    return this.value;
  }
}

class CumulativeMax extends Base {
  push(score: number): number {
    this.value = this.count === 0 || score > this.value ? score : this.value;
    this.count++;
    return this.value;
  }
}

class CumulativeMean extends Base {
  private sum = 0;
  push(score: number): number {
    this.sum += score;
    this.count++;
    return (this.value = this.sum / this.count);
  }
  override reset(): void {
    super.reset();
    this.sum = 0;
  }
}

/** Ring buffer of the last `window` scores; rolling aggregates rescan it (windows are short). */
abstract class Windowed extends Base {
  protected readonly ring: Float64Array;
  protected head = 0; // slot the next score goes into
  constructor(spec: { kind: 'rolling-mean' | 'rolling-max'; window: number }) {
    super(spec);
    this.ring = new Float64Array(spec.window);
  }
  protected add(score: number): number {
    this.ring[this.head] = score;
    this.head = (this.head + 1) % this.ring.length;
    this.count++;
    return Math.min(this.count, this.ring.length);
  }
  override reset(): void {
    super.reset();
    this.head = 0;
  }
}

class RollingMean extends Windowed {
  // Rescanning (rather than a running sum) keeps the result exact with no drift over long runs.
  push(score: number): number {
    const filled = this.add(score);
    let s = 0;
    for (let k = 0; k < filled; k++) s += this.ring[k];
    return (this.value = s / filled);
  }
}

class RollingMax extends Windowed {
  push(score: number): number {
    const filled = this.add(score);
    let m = this.ring[0];
    for (let k = 1; k < filled; k++) if (this.ring[k] > m) m = this.ring[k];
    return (this.value = m);
  }
}
