/** Small statistics helpers for benches: medians and spreads of repeated timings. */

export interface Summary {
  n: number;
  median: number;
  min: number;
  max: number;
  p10: number;
  p90: number;
  mean: number;
}

/** Linear-interpolated quantile of unsorted values (q in [0, 1]); NaN for no values. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * Math.min(1, Math.max(0, q));
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

/** Largest of `values` (-Infinity for none); a loop, not Math.max(...values), whose spread overflows the call stack past ~100k values (a 3-replica, 100-subscriber run). */
export function maxOf(values: readonly number[]): number {
  let m = -Infinity;
  for (const v of values) if (v > m) m = v;
  return m;
}

/** Smallest of `values` (Infinity for none); see maxOf. */
export function minOf(values: readonly number[]): number {
  let m = Infinity;
  for (const v of values) if (v < m) m = v;
  return m;
}

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

export function summarize(values: readonly number[]): Summary {
  return {
    n: values.length,
    median: median(values),
    min: values.length ? minOf(values) : NaN,
    max: values.length ? maxOf(values) : NaN,
    p10: quantile(values, 0.1),
    p90: quantile(values, 0.9),
    mean: values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN,
  };
}

/** Rounds for reports: `digits` significant decimals, keeping integers readable. */
export function round(x: number, digits = 3): number {
  if (!Number.isFinite(x)) return x;
  const m = 10 ** digits;
  return Math.round(x * m) / m;
}
