/**
 * Detection metrics on score lists: AUROC, the ROC curve, and the threshold / TPR / FPR figures
 * a probe file records.
 *
 * One decision rule everywhere: a detector FIRES when `score > threshold` (strictly greater).
 * So FPR(t) = #{negatives with score > t} / #negatives, TPR(t) likewise on positives, and a
 * threshold equal to the largest negative score gives FPR 0.
 *
 * Inputs are positive-class scores and negative-class scores (higher = more likely positive).
 * Empty inputs and NaN scores throw a RangeError rather than returning NaN silently.
 */

/**
 * Area under the ROC curve, the Mann–Whitney statistic: the probability that a random positive
 * scores higher than a random negative, ties counting one half (average ranks over tied scores).
 */
export function auroc(positives: ArrayLike<number>, negatives: ArrayLike<number>): number {
  const { nPos, nNeg, all, order } = pooled(positives, negatives);
  // Sum of 1-based ranks of the positives, each tie group getting its average rank.
  let rankSumPos = 0;
  let i = 0;
  while (i < order.length) {
    let j = i;
    while (j + 1 < order.length && all[order[j + 1]] === all[order[i]]) j++;
    const avgRank = (i + 1 + (j + 1)) / 2;
    for (let k = i; k <= j; k++) if (order[k] < nPos) rankSumPos += avgRank;
    i = j + 1;
  }
  return (rankSumPos - (nPos * (nPos + 1)) / 2) / (nPos * nNeg);
}

export interface RocPoint {
  /** Fires when score > threshold; the last point's threshold is -Infinity (everything fires). */
  readonly threshold: number;
  readonly fpr: number;
  readonly tpr: number;
}

/**
 * ROC curve with one point per distinct score, thresholds descending: it starts at the largest
 * score (nothing fires: FPR 0, TPR 0) and ends at -Infinity (FPR 1, TPR 1). Tied scores give a
 * diagonal segment, so the trapezoid area under the points equals `auroc`.
 */
export function rocCurve(positives: ArrayLike<number>, negatives: ArrayLike<number>): RocPoint[] {
  const { nPos, nNeg, all, order: ascending } = pooled(positives, negatives);
  const order = ascending.reverse();
  const points: RocPoint[] = [];
  let tp = 0;
  let fp = 0;
  let i = 0;
  while (i < order.length) {
    const t = all[order[i]];
    points.push({ threshold: t, fpr: fp / nNeg, tpr: tp / nPos });
    while (i < order.length && all[order[i]] === t) {
      if (order[i] < nPos) tp++;
      else fp++;
      i++;
    }
  }
  points.push({ threshold: -Infinity, fpr: 1, tpr: 1 });
  return points;
}

/** Trapezoid area under ROC points (for checking a curve against `auroc`). */
export function areaUnderCurve(points: readonly RocPoint[]): number {
  let area = 0;
  for (let i = 1; i < points.length; i++) {
    area += ((points[i].fpr - points[i - 1].fpr) * (points[i].tpr + points[i - 1].tpr)) / 2;
  }
  return area;
}

/** Fraction of negatives with score > threshold. */
export function fprAtThreshold(negatives: ArrayLike<number>, threshold: number): number {
  checkScores(negatives, 'negatives');
  return fractionAbove(negatives, threshold);
}

/** Fraction of positives with score > threshold. */
export function tprAtThreshold(positives: ArrayLike<number>, threshold: number): number {
  checkScores(positives, 'positives');
  return fractionAbove(positives, threshold);
}

// One rule with the daemon's learning (src/probes/calibration.ts).
import { thresholdAtFpr } from '../probes/calibration.js';
export { thresholdAtFpr };

/** TPR at the threshold `thresholdAtFpr(negatives, targetFpr)` picks: what deployment would achieve. */
export function tprAtFpr(positives: ArrayLike<number>, negatives: ArrayLike<number>, targetFpr: number): number {
  return tprAtThreshold(positives, thresholdAtFpr(negatives, targetFpr));
}

/** The figures a probe file records, computed together. */
export function detectionSummary(
  positives: ArrayLike<number>,
  negatives: ArrayLike<number>,
): { auroc: number; 'tpr_at_fpr_0.01': number; 'tpr_at_fpr_0.05': number } {
  return {
    auroc: auroc(positives, negatives),
    'tpr_at_fpr_0.01': tprAtFpr(positives, negatives, 0.01),
    'tpr_at_fpr_0.05': tprAtFpr(positives, negatives, 0.05),
  };
}

function fractionAbove(scores: ArrayLike<number>, threshold: number): number {
  if (Number.isNaN(threshold)) throw new RangeError('threshold is NaN');
  let c = 0;
  for (let i = 0; i < scores.length; i++) if (scores[i] > threshold) c++;
  return c / scores.length;
}

function checkScores(scores: ArrayLike<number>, what: string): void {
  if (scores.length === 0) throw new RangeError(`${what}: no scores`);
  for (let i = 0; i < scores.length; i++) if (Number.isNaN(scores[i])) throw new RangeError(`${what}[${i}] is NaN`);
}

/**
 * Positives then negatives in one array (checked: non-empty, no NaN), with the indices sorted by
 * ascending score; an index below nPos is a positive.
 */
function pooled(positives: ArrayLike<number>, negatives: ArrayLike<number>): { nPos: number; nNeg: number; all: Float64Array; order: number[] } {
  const nPos = positives.length;
  const nNeg = negatives.length;
  checkScores(positives, 'positives');
  checkScores(negatives, 'negatives');
  const all = new Float64Array(nPos + nNeg);
  for (let i = 0; i < nPos; i++) all[i] = positives[i];
  for (let i = 0; i < nNeg; i++) all[nPos + i] = negatives[i];
  return { nPos, nNeg, all, order: sortedOrder(all) };
}

/** Indices sorted by ascending value (stable, so equal values keep input order). */
function sortedOrder(values: Float64Array): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => values[a] - values[b] || a - b);
  return idx;
}
