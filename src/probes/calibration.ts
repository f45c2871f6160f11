/**
 * The calibration rules of an ensemble detector, shared by the offline lab (lab/generic.ts fits
 * the shipped generic detector with them) and the daemon (which learns the same detector from its
 * own traffic): one implementation, so a learned file and a lab file mean the same thing.
 *
 * - member calibration: center = median and scale = (99th percentile − median) of the member's
 *   per-token scores on clean calibration tokens;
 * - a request's score: the maximum over its positions of the running aggregate, less a length
 *   allowance (aggregators.ts) whose slope is the clean tail's scale (`fitLengthAllowance`);
 * - the threshold: the smallest clean request score with at most the target share above it;
 * - numbers rounded (7 significant digits for fits and calibration, 9 for the threshold) so files
 *   stay small and deterministic.
 */
import { lwError } from '../errors.js';
import { parseResidPost } from '../hooks.js';
import { aggregateSequence, skipFrom, type AggregatorSpec, type LengthAllowanceSpec } from './aggregators.js';
import type { GaussianModel } from './gaussian.js';
import { hookList, onsetScore, validateProbeFile, type EnsembleMember, type LeafBody, type OnsetBody, type ProbeFigures, type ProbeFile } from './probe-file.js';

/** x to `digits` significant digits (0 and non-finite values unchanged). */
export function round(x: number, digits: number): number {
  return x === 0 || !Number.isFinite(x) ? x : Number(x.toPrecision(digits));
}

export function roundAll(xs: ArrayLike<number>, digits: number): number[] {
  return Array.from(xs, (x) => round(x, digits));
}

/** How far above the clean score it is set at a threshold sits, relative (roundThreshold). */
export const THRESHOLD_MARGIN = 1e-6;

/**
 * A threshold to 9 significant digits, a millionth (relative) above x: the threshold is one of the
 * clean scores and fires strictly above it, and the daemon's float32 scorer recomputes a score
 * within about 1e-7 relative of the fit's (learned on qwen3-code-7m, three C headers whose greedy
 * continuations scored 1.00000009 fired against a threshold of 1.00000001 set at a calibration
 * request's 1.0: the same score but for rounding).
 */
export function roundThreshold(score: number): number {
  return roundUp(score + Math.abs(score) * THRESHOLD_MARGIN);
}

/** x to 9 significant digits, never below it. */
export function roundUp(x: number): number {
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
  const agg = aggregateSequence(skipFrom(aggregator, start), scores, Math.max(0, start - (aggregator.skip ?? 0)));
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
  return smallestScoreWith(negatives, targetFpr, (above, n) => above / n);
}

/**
 * The smallest of `scores` whose `rate(above, n)` is ≤ targetFpr, `above` counting the scores
 * strictly greater (ties walked together); the largest when none qualifies.
 */
function smallestScoreWith(scores: ArrayLike<number>, targetFpr: number, rate: (above: number, n: number) => number): number {
  if (scores.length === 0) throw new RangeError('scores: none');
  for (let i = 0; i < scores.length; i++) if (Number.isNaN(scores[i])) throw new RangeError(`scores[${i}] is NaN`);
  if (!(targetFpr >= 0 && targetFpr < 1)) throw new RangeError(`targetFpr must be in [0, 1), got ${targetFpr}`);
  const n = scores.length;
  const sorted = Float64Array.from(scores).sort();
  for (let i = 0; i < n; ) {
    let j = i;
    while (j + 1 < n && sorted[j + 1] === sorted[i]) j++;
    if (rate(n - 1 - j, n) <= targetFpr) return sorted[i];
    i = j + 1;
  }
  return sorted[n - 1];
}

/**
 * The threshold for a target rate on NEW requests like the calibration ones (split-conformal):
 * the smallest calibration score t with (above(t) + 1) / (n + 1) ≤ targetFpr, `above` counting the
 * scores strictly greater. A new request exchangeable with n calibration requests exceeds the
 * score with k above it with probability (k + 1) / (n + 1); thresholdAtFpr's above / n is the rate
 * on the calibration requests themselves, an under-estimate by about one request in n + 1 (132
 * requests at 1%: the second largest, 1.5% expected on new ones, where the largest gives 0.75%).
 * When even the largest falls short ((n + 1) · targetFpr < 1) it returns the largest: callers that
 * can extrapolate the tail raise it (learn.ts smallShareThreshold).
 */
export function conformalThreshold(scores: ArrayLike<number>, targetFpr: number): number {
  return smallestScoreWith(scores, targetFpr, (above, n) => (above + 1) / (n + 1));
}

/** Scored positions before the length allowance starts: requests this short keep their plain maximum. */
export const LENGTH_ALLOWANCE_FROM = 16;

/**
 * The length allowance's slope: the scale of the clean per-position aggregate's upper tail, as the
 * mean excess over its 99th percentile (the maximum-likelihood scale of an exponential tail there).
 * The maximum of n such scores grows by that scale per unit of ln n (also for dependent positions:
 * dependence moves the constant, not the slope), so subtracting perLog · ln(n / from) keeps a
 * request's false-alert rate from growing with its length. Fitted on positions, not requests:
 * thousands of them pin the tail where a few hundred requests could not. Null when there are too
 * few positions (< 1,000) to say.
 */
export function fitLengthAllowance(aggregates: Iterable<ArrayLike<number>>, from = LENGTH_ALLOWANCE_FROM): LengthAllowanceSpec | null {
  const xs: number[] = [];
  for (const a of aggregates) for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i])) xs.push(a[i]);
  if (xs.length < 1000) return null;
  xs.sort((a, b) => a - b);
  const u = xs[Math.floor(0.99 * xs.length)];
  let sum = 0;
  let n = 0;
  for (let i = xs.length - 1; i >= 0 && xs[i] > u; i--) {
    sum += xs[i] - u;
    n++;
  }
  return n === 0 ? null : { perLog: round(sum / n, 7), from };
}

/**
 * The aggregator with its length allowance fitted on clean sequences (`aggregatesOf` gives each
 * one's per-position aggregate under the plain aggregator); the aggregator unchanged when the fit
 * says nothing.
 */
export function withLengthAllowance(aggregator: AggregatorSpec, aggregates: Iterable<ArrayLike<number>>): AggregatorSpec {
  const { lengthAllowance: _old, ...plain } = aggregator;
  const la = fitLengthAllowance(aggregates);
  return (la ? { ...plain, lengthAllowance: la } : plain) as AggregatorSpec;
}

/** A fitted member before calibration: its hooks and leaf body. */
export interface MemberFit {
  id: string;
  hook: string | string[];
  /** Per-token members scored at novel token pairs only (probe-file.ts). */
  positions?: 'novel-bigram';
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

/** A clean calibration request as the threshold rules see it. */
export interface CleanRequestScores {
  /** Per-position ensemble score (max over the members' calibrated scores) from the sequence's first position. */
  scores: Float64Array;
  /** Absolute position of scores[0]. */
  start: number;
  /** Its population (e.g. corpus requests, trials): the target rate holds for each on its own. */
  population: string;
}

/**
 * The threshold rules of an ensemble detector, for the lab and learn mode alike: members weighed
 * by kind (balanceKinds), the length allowance fitted on the balanced ensemble's clean per-position
 * aggregates, then the threshold at the target rate per new request (conformalThreshold) for each
 * population on its own, the higher. `requestsOf(subset)` scores the clean calibration requests
 * with a subset of members.
 */
export function setEnsembleThreshold<M extends { readonly calibration: { center: number; scale: number }; readonly body: LeafBody | OnsetBody }>(
  members: readonly M[],
  requestsOf: (subset: readonly M[]) => CleanRequestScores[],
  aggregator: AggregatorSpec,
  targetFpr: number,
): { members: M[]; aggregator: AggregatorSpec; threshold: number; requestScores: number[] } {
  const { lengthAllowance: _none, ...plainSpec } = aggregator;
  const plain = plainSpec as AggregatorSpec;
  const scoresUnder = (reqs: readonly CleanRequestScores[], agg: AggregatorSpec): Map<string, number[]> => {
    const byPopulation = new Map<string, number[]>();
    for (const r of reqs) {
      const v = requestScore(r.scores, agg, r.start);
      if (Number.isFinite(v)) (byPopulation.get(r.population) ?? byPopulation.set(r.population, []).get(r.population)!).push(v);
    }
    if (byPopulation.size === 0) throw lwError('LW_ERR_PROBE_FIT', 'no clean calibration requests to set the threshold on');
    return byPopulation;
  };
  const thresholdOf = (byPopulation: Map<string, number[]>): number => Math.max(...[...byPopulation.values()].map((req) => conformalThreshold(req, targetFpr)));
  const balanced = balanceKinds(members, memberKind, (subset) => thresholdOf(scoresUnder(requestsOf(subset), plain)));
  const reqs = requestsOf(balanced);
  const withAllowance = withLengthAllowance(
    plain,
    reqs.map((r) => aggregateSequence(skipFrom(plain, r.start), r.scores, Math.max(0, r.start - (plain.skip ?? 0)))),
  );
  const byPopulation = scoresUnder(reqs, withAllowance);
  return { members: balanced, aggregator: withAllowance, threshold: roundThreshold(thresholdOf(byPopulation)), requestScores: [...byPopulation.values()].flat() };
}

/** Per-token, windowed or onset: the kinds balanceKinds weighs (a member's body says which). */
export function memberKind(m: { readonly body: LeafBody | OnsetBody }): 'token' | 'window' | 'onset' {
  if (m.body.kind === 'onset') return 'onset';
  return m.body.kind === 'mahalanobis' && m.body.window !== undefined ? 'window' : 'token';
}

/** An onset member before its own calibration (probe-file.ts, ONSET_BODY). */
export interface OnsetFit {
  id: string;
  hook: string[];
  body: OnsetBody;
}

/**
 * The onset member of calibrated members: for each window size, the deepest windowed Mahalanobis
 * member with a windowed member of that size at the layer below, reading the two with their
 * calibrations. Why the onset: unusual text moves every layer's window, an added vector only its
 * own layer's and those above. Why the deepest layer only: a vector added below it also moves the
 * layers above, which the other members see (×0.25 at every layer but the last: AUROC 1.000 on both
 * models), while one added at the deepest shows only in that layer's update, where unusual text
 * hid it: learned through the daemon (issue 12, docs/generic-detectors.md "Onset members"), ×0.25
 * injections into qwen3-code-7m's last layer fired 80 of 80 with it, 7 of 80 without. Onset members
 * at every windowed layer caught no more and added false alerts (the built-in model: 3 more of 466
 * clean requests, each through a middle layer's onset).
 */
export function onsetFits(members: readonly (MemberFit & { calibration: { center: number; scale: number } })[]): OnsetFit[] {
  const layerOf = (m: MemberFit): number => parseResidPost(hookList(m.hook).at(-1)!);
  const windowOf = (m: MemberFit): number | undefined => (m.body.kind === 'mahalanobis' ? m.body.window?.size : undefined);
  const sizes = [...new Set(members.map(windowOf))].filter((w): w is number => w !== undefined);
  return sizes.flatMap((size): OnsetFit[] => {
    const windowed = members.filter((m) => windowOf(m) === size);
    const upper = windowed.reduce((a, b) => (layerOf(b) > layerOf(a) ? b : a));
    const lower = windowed.find((m) => layerOf(m) === layerOf(upper) - 1);
    if (!lower) return [];
    return [
      {
        id: `onset-L${layerOf(upper)}-w${size}`,
        hook: [...new Set([...hookList(lower.hook), ...hookList(upper.hook)])].sort((a, b) => parseResidPost(a) - parseResidPost(b)),
        body: { kind: 'onset', upper: { member: upper.id, ...upper.calibration }, lower: { member: lower.id, ...lower.calibration } },
      },
    ];
  });
}

/** An onset member's per-position scores from its two members' raw per-position scores (probe-file.ts onsetScore, as the daemon scores it). */
export function onsetScores(body: OnsetBody, upper: ArrayLike<number>, lower: ArrayLike<number>): Float64Array {
  return Float64Array.from({ length: upper.length }, (_, p) => onsetScore(body, upper[p], lower[p]));
}

/** A leaf probe file of one member (scored alone, e.g. to calibrate it). */
export function memberFile(m: MemberFit, meta: Pick<DetectorMeta, 'modelFingerprint' | 'dModel'>): ProbeFile {
  const file = { formatVersion: 1, id: m.id, label: m.id, description: '', modelFingerprint: meta.modelFingerprint, hook: m.hook, dModel: meta.dModel, threshold: 0, targetFpr: 0, aggregator: { kind: 'last' }, training: NO_FIGURES, evaluation: NO_FIGURES, ...m.body };
  return validateProbeFile(file);
}

/** Ensemble-max file of calibrated members (hooks: the union, in layer order). */
export function ensembleFile(members: readonly ((MemberFit | OnsetFit) & { calibration: { center: number; scale: number } })[], meta: DetectorMeta, threshold: number): ProbeFile {
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
    members: members.map((m) => ({ id: m.id, hook: m.hook, calibration: m.calibration, ...('positions' in m && m.positions ? { positions: m.positions } : {}), ...m.body }) as EnsembleMember),
  };
  return validateProbeFile(file);
}
