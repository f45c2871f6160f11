/**
 * The calibration rules of an ensemble detector, shared by the offline lab (lab/generic.ts fits
 * the shipped generic detector with them) and the daemon (which learns the same detector from its
 * own traffic): one implementation, so a learned file and a lab file mean the same thing.
 *
 * - member calibration: center = median and scale = (99th percentile − median) of the member's
 *   per-token scores on clean calibration tokens;
 * - a request's score: the maximum over its positions of the running aggregate;
 * - the threshold: the smallest clean request score with at most the target share above it;
 * - numbers rounded (7 significant digits for fits and calibration, 9 for the threshold) so files
 *   stay small and deterministic.
 */
import { lwError } from '../errors.js';
import { parseResidPost } from '../hooks.js';
import { aggregateSequence, skipFrom, type AggregatorSpec } from './aggregators.js';
import type { GaussianModel } from './gaussian.js';
import { hookList, validateProbeFile, type EnsembleMember, type LeafBody, type ProbeFigures, type ProbeFile } from './probe-file.js';

/** x to `digits` significant digits (0 and non-finite values unchanged). */
export function round(x: number, digits: number): number {
  return x === 0 || !Number.isFinite(x) ? x : Number(x.toPrecision(digits));
}

export function roundAll(xs: ArrayLike<number>, digits: number): number[] {
  return Array.from(xs, (x) => round(x, digits));
}

/**
 * A threshold to 9 significant digits, never below x: the threshold is one of the clean scores and
 * fires strictly above it, so rounding it down would let that clean request fire.
 */
export function roundThreshold(x: number): number {
  const r = round(x, 9);
  if (!(r < x)) return r;
  const ulp9 = 10 ** (Math.floor(Math.log10(Math.abs(x))) - 8);
  return round(r + ulp9, 9);
}

/** A Gaussian rounded to `digits` significant digits (so files stay small; scores move < 1e-5 relative). */
export function roundedGaussian(g: GaussianModel, digits: number): GaussianModel {
  const r = (a: Float64Array) => Float64Array.from(roundAll(a, digits));
  const common = { shrinkage: round(g.shrinkage, digits), mean: r(g.mean) };
  if (g.form === 'cholesky') return { form: 'cholesky', ...common, factor: r(g.factor) };
  if (g.form === 'diagonal') return { form: 'diagonal', ...common, variance: r(g.variance) };
  return { form: 'lowrank', ...common, components: r(g.components), eigenvalues: r(g.eigenvalues), residualVariance: round(g.residualVariance, digits) };
}

/** Calibration of per-token scores on clean tokens: median and (q99 − median). */
export function calibrate(scores: ArrayLike<number>): { center: number; scale: number } {
  const xs = Float64Array.from(scores).sort();
  if (xs.length === 0) throw lwError('LW_ERR_PROBE_FIT', 'no clean calibration tokens');
  const q = (p: number) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))];
  const center = q(0.5);
  const spread = q(0.99) - center;
  return { center: round(center, 7), scale: round(spread > 0 ? spread : 1, 7) };
}

/**
 * A request's score: the maximum, over positions ≥ `from` (absolute), of the running aggregate of
 * per-position scores (aggregated from the sequence's first stored position, the aggregator's
 * `skip` counted in absolute positions). −Infinity when no position qualifies.
 */
export function requestScore(scores: ArrayLike<number>, aggregator: AggregatorSpec, start = 0, from = start): number {
  const agg = aggregateSequence(skipFrom(aggregator, start), scores);
  let m = -Infinity;
  for (let p = Math.max(0, from - start); p < agg.length; p++) if (agg[p] > m) m = agg[p];
  return m;
}

/**
 * The deployed threshold for a target false-positive rate: the SMALLEST threshold t among the
 * negative scores such that the share of negatives with score > t is ≤ targetFpr (with `score > t`
 * firing). Because the rule is strict, t is always one of the negative scores, and at least
 * the largest one qualifies, so the result is finite. targetFpr must be in [0, 1).
 *
 * Example: negatives [1, 2, 3, 4], target 0.25 → 3 (only 4 > 3: FPR 0.25); target 0.2 → 4 (FPR 0).
 * With few negatives the achieved FPR can sit well below the target (100 negatives and target
 * 0.001 → the largest negative, FPR 0): report the achieved figure beside the target.
 */
export function thresholdAtFpr(negatives: ArrayLike<number>, targetFpr: number): number {
  if (negatives.length === 0) throw new RangeError('negatives: no scores');
  for (let i = 0; i < negatives.length; i++) if (Number.isNaN(negatives[i])) throw new RangeError(`negatives[${i}] is NaN`);
  if (!(targetFpr >= 0 && targetFpr < 1)) throw new RangeError(`targetFpr must be in [0, 1), got ${targetFpr}`);
  const m = negatives.length;
  const sorted = Float64Array.from(negatives).sort();
  // Walk distinct values upward; above(i) = count of negatives strictly greater than sorted[i].
  let i = 0;
  while (i < m) {
    let j = i;
    while (j + 1 < m && sorted[j + 1] === sorted[i]) j++;
    const above = m - 1 - j;
    if (above / m <= targetFpr) return sorted[i];
    i = j + 1;
  }
  return sorted[m - 1]; // unreachable: the largest value has 0 above it
}

/** A fitted member before calibration: its hooks and leaf body. */
export interface MemberFit {
  id: string;
  hook: string | string[];
  body: LeafBody;
}

export interface DetectorMeta {
  id: string;
  label: string;
  description: string;
  modelFingerprint: string;
  dModel: number;
  targetFpr: number;
  aggregator: AggregatorSpec;
  training: ProbeFigures;
  evaluation: ProbeFigures;
}

export const NO_FIGURES: ProbeFigures = { trials: 0, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };

/**
 * Weigh an ensemble's kinds of member (per-token and windowed, probes/window.ts) each by its own
 * tail: every kind alone gets its threshold at the target rate (`thresholdOf` a subset of the
 * members) and its members' scales are multiplied by it, so a kind's calibrated score crosses 1
 * where that kind alone would fire; the caller then sets the ensemble's threshold as usual (≈ 1).
 * Without it the kind with the heavier tail sets one threshold for all: the windowed members'
 * tail on real code lifted it so far that ×0.5 injections the per-token members catch went unseen.
 * A kind whose threshold is not positive is left as it is (its scale cannot carry the sign).
 */
export function balanceKinds<M extends { readonly calibration: { center: number; scale: number } }>(members: readonly M[], kindOf: (m: M) => string, thresholdOf: (subset: readonly M[]) => number): M[] {
  const kinds = [...new Set(members.map(kindOf))];
  if (kinds.length < 2) return [...members];
  const factor = new Map(kinds.map((k) => [k, thresholdOf(members.filter((m) => kindOf(m) === k))]));
  return members.map((m) => {
    const t = factor.get(kindOf(m))!;
    return t > 0 ? { ...m, calibration: { center: m.calibration.center, scale: round(m.calibration.scale * t, 9) } } : m;
  });
}

/** Per-token or windowed: the kinds balanceKinds weighs (a member's body says which). */
export function memberKind(m: { readonly body: LeafBody }): 'token' | 'window' {
  return m.body.kind === 'mahalanobis' && m.body.window !== undefined ? 'window' : 'token';
}

/** A leaf probe file of one member (scored alone, e.g. to calibrate it). */
export function memberFile(m: MemberFit, meta: Pick<DetectorMeta, 'modelFingerprint' | 'dModel'>): ProbeFile {
  const file = { formatVersion: 1, id: m.id, label: m.id, description: '', modelFingerprint: meta.modelFingerprint, hook: m.hook, dModel: meta.dModel, threshold: 0, targetFpr: 0, aggregator: { kind: 'last' }, training: NO_FIGURES, evaluation: NO_FIGURES, ...m.body };
  return validateProbeFile(file);
}

/** Ensemble-max file of calibrated members (hooks: the union, in layer order). */
export function ensembleFile(members: readonly (MemberFit & { calibration: { center: number; scale: number } })[], meta: DetectorMeta, threshold: number): ProbeFile {
  const hooks = [...new Set(members.flatMap((m) => hookList(m.hook)))].sort((a, b) => parseResidPost(a) - parseResidPost(b));
  const file = {
    formatVersion: 1,
    id: meta.id,
    kind: 'ensemble-max',
    label: meta.label,
    description: meta.description,
    modelFingerprint: meta.modelFingerprint,
    hook: hooks,
    dModel: meta.dModel,
    threshold,
    targetFpr: meta.targetFpr,
    aggregator: meta.aggregator,
    training: meta.training,
    evaluation: meta.evaluation,
    members: members.map((m) => ({ id: m.id, hook: m.hook, calibration: m.calibration, ...m.body }) as EnsembleMember),
  };
  return validateProbeFile(file);
}
