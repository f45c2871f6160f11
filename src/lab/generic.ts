/**
 * Generic injection detectors (issue 7): detectors meant to flag an added vector of ANY direction,
 * not only concept vectors, all written in the `*.probe.json` format the daemon loads.
 *
 *   anomaly          unsupervised, needs no injection trials: per layer a Gaussian (mean + Ledoit–Wolf
 *                    shrunk covariance, or diagonal) fitted on clean activations, scored by
 *                    Mahalanobis distance; members calibrated on clean tokens and combined by
 *                    ensemble-max; threshold at a target FPR per request on clean requests. Two
 *                    inputs per layer L:
 *                      'update'    resid_post L − resid_post L−1 (the block's output; `input:
 *                                  'difference'`). An injection at resid_post L adds its vector
 *                                  to exactly this update, whose natural spread is much smaller
 *                                  than the residual's, so it stands out at any direction.
 *                      'resid'     resid_post L itself (the only choice at L = 0).
 *   linear           supervised on trials of the training families: L2 logistic regression (scored
 *                    as its logit, kind 'direction') per layer (ensemble-max), or on the
 *                    concatenation of layers, per token; or mean-pooled over a window of
 *                    positions (fitted on window means, run with a rolling mean of the logit,
 *                    which equals the logit of the mean).
 *   combination      ensemble-max of the members of several detectors, recalibrated.
 *
 * Calibration of a member: center = median and scale = (99th percentile − median) of its per-token
 * scores on clean calibration tokens, so every member reads "how far into its own clean tail".
 * Every detector's aggregator skips the first GENERIC_SKIP = 4 positions (`skip: 4`), which are
 * left out of every fit too: position 0 is the attention sink, whose residual is an outlier on
 * every request, and positions 1–3 (little context yet) carry most of the clean tail (the report's
 * position profile shows it, from clean requests alone). Injections confined to those positions are
 * a blind spot; anything later is scored. A request's score is the maximum over its positions of the
 * running aggregate, as the daemon alerts.
 *
 * Activations come as `Seq`s (a trial of a dataset, or a corpus request): rows per layer from
 * absolute position `start` (0 when the whole sequence is stored, as the daemon scores it).
 * Deterministic: fixed orders, hashed subsampling, no randomness.
 */
import { lwError } from '../errors.js';
import { parseResidPost, residPost } from '../hooks.js';
import { concat } from '../model/graph.js';
import { type AggregatorSpec } from '../probes/aggregators.js';
// The calibration rules live in src/probes: the daemon learns the same detector from traffic.
import { calibrate, ensembleFile, memberFile, requestScore, round, roundAll, roundedGaussian, roundThreshold, setEnsembleThreshold, thresholdAtFpr, type DetectorMeta, type MemberFit } from '../probes/calibration.js';
import type { CorpusActivations, CorpusRun } from './corpus.js';
import type { Dataset, TrialRecord } from './dataset.js';
import { fitGaussian } from './gaussian-fit.js';
import { fitLogistic } from './logistic.js';
import { createProbe, type Probe } from '../probes/probe.js';
import { hookList, linearBody, mahalanobisBody, validateProbeFile, type LeafBody, type ProbeFigures, type ProbeFile, type WindowSpec } from '../probes/probe-file.js';
import type { GaussianModel } from '../probes/gaussian.js';
import { hashUnit } from '../rng.js';
import { fitGaussianFromMoments, MomentAccumulator } from '../probes/moments.js';
import { forEachFullWindowMean, novelPositions, SpreadMoments, windowSpec } from '../probes/window.js';
import type { TrialTokens } from './trials.js';

export { calibrate, ensembleFile, requestScore, type DetectorMeta, type MemberFit };

/** Leading positions of a request that generic detectors neither fit on nor score. */
export const GENERIC_SKIP = 4;

// ---- sequences ------------------------------------------------------------------------------------

/** One request's activations: rows per layer, [positions, dModel], from absolute position `start`. */
export interface Seq {
  readonly id: string;
  readonly source: 'trial' | 'corpus';
  readonly record?: TrialRecord;
  readonly run?: CorpusRun;
  readonly start: number;
  readonly positions: number;
  /** Token ids from position 0 (at least start + positions of them): windowed members need them. */
  readonly ids?: readonly number[];
  rows(layer: number): Float32Array;
}

/** A recorded trial; `tokens` gives its ids (needed to score windowed members). */
export function trialSeq(ds: Dataset, r: TrialRecord, tokens?: TrialTokens): Seq {
  return { id: r.id, source: 'trial', record: r, start: r.trace.start, positions: r.trace.end - r.trace.start, ids: tokens?.ids(r), rows: (l) => ds.traceRows(r, l) };
}

export function corpusSeq(a: CorpusActivations, run: CorpusRun): Seq {
  const d = a.dModel;
  return {
    id: `corpus/${run.id}`,
    source: 'corpus',
    run,
    ids: run.ids,
    start: 0,
    positions: run.rows[0].length / d,
    rows: (l) => {
      const k = a.layers.indexOf(l);
      if (k < 0) throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `corpus activations lack layer ${l} (have ${a.layers.join(', ')})`);
      return run.rows[k];
    },
  };
}

/** Rows of `layers` concatenated per position: [positions, layers × d]. */
export function concatRows(seq: Seq, layers: readonly number[], d: number): Float32Array {
  if (layers.length === 1) return seq.rows(layers[0]);
  const blocks = layers.map((l) => seq.rows(l));
  const n = seq.positions;
  const out = new Float32Array(n * d * layers.length);
  for (let p = 0; p < n; p++) blocks.forEach((b, k) => out.set(b.subarray(p * d, (p + 1) * d), (p * layers.length + k) * d));
  return out;
}

/** Per-position scores of a probe on a sequence (the daemon's scorer: the probe's hooks concatenated). */
export function scoreSeq(probe: Probe, seq: Seq): Float32Array {
  const layers = probe.hooks.map(parseResidPost);
  const rows = concatRows(seq, layers, probe.dModel);
  const out = new Float32Array(seq.positions);
  const novel = probe.ordered ? seqNovelty(seq) : null;
  const score = probe.createScorer();
  for (let p = 0; p < seq.positions; p++) out[p] = score(rows, p * probe.inputDim, novel === null || novel[p] === 1);
  return out;
}

/** Which of the sequence's positions are novel (probes/window.ts), from its token ids. */
export function seqNovelty(seq: Seq): Uint8Array {
  if (seq.ids === undefined || seq.ids.length < seq.start + seq.positions) {
    throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `${seq.id}: windowed members need the token ids of its ${seq.start + seq.positions} positions, have ${seq.ids?.length ?? 'none'}`);
  }
  return novelPositions(seq.ids.slice(0, seq.start + seq.positions)).subarray(seq.start);
}

// ---- members ------------------------------------------------------------------------------------

export type AnomalyInput = 'update' | 'resid';

/** Rows of a member's input (update or resid) at positions ≥ skip of the given sequences. */
function anomalyRows(seqs: readonly Seq[], layer: number, input: AnomalyInput, d: number, skip: number): Float32Array {
  const parts: Float32Array[] = [];
  for (const s of seqs) {
    const from = Math.max(0, skip - s.start);
    if (from >= s.positions) continue;
    const x = s.rows(layer).subarray(from * d);
    if (input === 'resid') parts.push(x);
    else {
      const prev = s.rows(layer - 1).subarray(from * d);
      parts.push(Float32Array.from(x, (v, i) => v - prev[i]));
    }
  }
  return concat(parts);
}

export interface AnomalyMemberOptions {
  /** Layers with a member (default every layer). */
  layers: readonly number[];
  /** 'update' (default): resid_post L − resid_post L−1 for L ≥ 1, resid_post 0 at L = 0. 'resid': resid_post L. */
  input?: AnomalyInput;
  covariance?: 'full' | 'diagonal' | 'lowrank';
  /** Eigenvectors kept by 'lowrank' (default 32). */
  rank?: number;
  shrinkage?: 'ledoit-wolf' | number;
  /** Leading positions of a request left out of the fit. Default GENERIC_SKIP. */
  skip?: number;
  digits?: number;
  /**
   * Also one windowed member per layer (probes/window.ts): the Gaussian of the mean input over the
   * last `window` novel positions (0: none). Default DEFAULT_GENERIC_WINDOW.
   */
  window?: number;
  /** Windowed members discount windows whose rows spread more than clean ones (probes/window.ts). Default true. */
  windowSpread?: boolean;
  /** Windowed members only at layers ≥ this (default 0; fitAnomalyDetector: windowFromLayer). */
  windowFrom?: number;
}

/**
 * The first layer with a windowed member: max(2, ⌊layers/4⌋). The first layers' windows see what the
 * text is (their window mean is close to the mean embedding of its tokens), so a kind of text the fit
 * never held moves them most, and an injection at a middle layer never reaches them: measured on the
 * built-in model, dropping the windows of layers 0 and 1 took its false alerts on unseen kinds of text
 * from 9 of 132 to 1.
 */
export function windowFromLayer(numLayers: number): number {
  return Math.max(2, Math.floor(numLayers / 4));
}

/** Positions a windowed member averages by default (bench/persistent-shift.ts: 16 beat 8 and 32). */
export const DEFAULT_GENERIC_WINDOW = 16;

/**
 * Window means of a member's input at every novel position whose window is full, positions ≥ skip;
 * with `spread`, those windows' variances and the per-token rows go into it too.
 */
function windowRows(seqs: readonly Seq[], layer: number, input: AnomalyInput, d: number, skip: number, size: number, spread: SpreadMoments | null): Float32Array {
  const parts: Float32Array[] = [];
  for (const s of seqs) {
    const from = Math.max(0, skip - s.start);
    if (from >= s.positions) continue;
    const novel = seqNovelty(s);
    const x = s.rows(layer);
    const prev = input === 'update' ? s.rows(layer - 1) : null;
    forEachFullWindowMean(x, prev, (p) => novel[p] === 1, from, s.positions, d, size, (m, v) => {
      parts.push(m.slice());
      if (spread) spread.addWindow(v!);
    }, spread !== null);
    spread?.addRows(x, prev, from, s.positions);
  }
  return concat(parts);
}

/** What a member at `layer` reads: the layer's update (input 'update', the default, from layer 1), else resid_post. */
function memberInput(input: AnomalyInput | undefined, layer: number): AnomalyInput {
  return (input ?? 'update') === 'update' && layer > 0 ? 'update' : 'resid';
}

/**
 * A Mahalanobis member of `layer`: its id names the input, the layer, the Gaussian's form (so score
 * caches never mix a low-rank member with a full one) and `suffix` (a windowed member's), its hooks
 * the input's.
 */
function anomalyMember(layer: number, kind: AnomalyInput, g: GaussianModel, suffix = '', window?: WindowSpec): MemberFit {
  const tag = `${g.form === 'lowrank' ? `-r${g.eigenvalues.length}` : g.form === 'diagonal' ? '-diag' : ''}${suffix}`;
  return kind === 'update'
    ? { id: `update-L${layer}${tag}`, hook: [residPost(layer - 1), residPost(layer)], body: mahalanobisBody(g, 'difference', window) }
    : { id: `resid-L${layer}${tag}`, hook: residPost(layer), body: mahalanobisBody(g, undefined, window) };
}

/** Fit one Mahalanobis member per layer on clean sequences (and a windowed one per layer, unless window is 0). */
export function fitAnomalyMembers(fit: readonly Seq[], d: number, o: AnomalyMemberOptions): MemberFit[] {
  const skip = o.skip ?? GENERIC_SKIP;
  const digits = o.digits ?? 7;
  const size = o.window ?? DEFAULT_GENERIC_WINDOW;
  // Requests shorter than skip + size novel positions give no full window: with none (short
  // traffic), a layer gets no windowed member rather than failing the fit (the output lists members).
  const spread = o.windowSpread ?? true;
  const windowed =
    size > 0
      ? o.layers.filter((layer) => layer >= (o.windowFrom ?? 0)).flatMap((layer): MemberFit[] => {
          const kind = memberInput(o.input, layer);
          const moments = spread ? new SpreadMoments(d) : null;
          const data = windowRows(fit, layer, kind, d, skip, size, moments);
          const rows = data.length / d;
          if (rows < 2) return [];
          const g = roundedGaussian(fitGaussian({ rows, cols: d, data }, { covariance: o.covariance, rank: o.rank, shrinkage: o.shrinkage }), digits);
          return [anomalyMember(layer, kind, g, windowSuffix(size, spread), windowSpec(size, moments, digits))];
        })
      : [];
  const perToken = o.layers.map((layer): MemberFit => {
    const kind = memberInput(o.input, layer);
    const data = anomalyRows(fit, layer, kind, d, skip);
    const rows = data.length / d;
    if (rows < 2) throw lwError('LW_ERR_PROBE_FIT', `layer ${layer}: ${rows} clean rows to fit on`);
    const g = roundedGaussian(fitGaussian({ rows, cols: d, data }, { covariance: o.covariance, rank: o.rank, shrinkage: o.shrinkage }), digits);
    return anomalyMember(layer, kind, g);
  });
  return [...perToken, ...windowed];
}

/** A windowed member's id suffix: its size, and `-plain` without the spread discount. */
function windowSuffix(size: number, spread: boolean): string {
  return `-w${size}${spread ? '' : '-plain'}`;
}

// ---- linear members -----------------------------------------------------------------------------

/** Positions of a trial where its vector was added (window ∩ stored, from `skip` on). */
export function injectedRange(r: TrialRecord, skip: number): [number, number] | null {
  const a = Math.max(r.window.start, r.trace.start, skip);
  const b = Math.min(r.window.end ?? r.trace.end, r.trace.end);
  return a < b ? [a - r.trace.start, b - r.trace.start] : null;
}

export interface LinearMemberOptions {
  mode: 'per-layer' | 'concat' | 'mean-pooled';
  layers: readonly number[];
  l2?: number;
  /** Most rows per class (hash-subsampled). Default 6000. */
  maxRows?: number;
  /** mean-pooled: positions per window. Default 8. */
  window?: number;
  skip?: number;
  digits?: number;
  /** Salt of the row subsampling hash. */
  seed?: number;
}

interface RowSet {
  parts: Float32Array[];
  labels: number[];
}

/**
 * Supervised linear members: positives are the injected positions of `positives` (trials of the
 * training families), negatives the positions ≥ skip of `negatives` (clean trials and corpus
 * requests). Per layer L a trial counts as positive only if it injected at a layer ≤ L; layers
 * below every training injection get no member.
 */
export function fitLinearMembers(positives: readonly Seq[], negatives: readonly Seq[], d: number, o: LinearMemberOptions): MemberFit[] {
  const skip = o.skip ?? GENERIC_SKIP;
  const maxRows = o.maxRows ?? 6000;
  const digits = o.digits ?? 7;
  const seed = o.seed ?? 0;
  const w = o.window ?? 8;
  const groups = o.mode === 'per-layer' ? o.layers.map((l) => [l]) : [[...o.layers]];
  return groups.map((layers): MemberFit | null => {
    const width = layers.length * d;
    const top = Math.max(...layers);
    const lo = Math.min(...layers);
    const pos: { seq: Seq; range: [number, number] }[] = [];
    for (const s of positives) {
      const r = s.record!;
      if (r.layer === null || (o.mode === 'per-layer' && r.layer > top) || (o.mode !== 'per-layer' && r.layer > Math.max(...o.layers))) continue;
      const range = injectedRange(r, skip);
      if (range) pos.push({ seq: s, range });
    }
    const neg = negatives.map((s) => ({ seq: s, range: [Math.max(0, skip - s.start), s.positions] as [number, number] })).filter((x) => x.range[0] < x.range[1]);
    const count = (xs: typeof pos) => xs.reduce((a, x) => a + (o.mode === 'mean-pooled' ? Math.max(0, x.range[1] - x.range[0] - w + 1) : x.range[1] - x.range[0]), 0);
    const set: RowSet = { parts: [], labels: [] };
    const take = (xs: typeof pos, label: 0 | 1) => {
      const rate = Math.min(1, maxRows / Math.max(1, count(xs)));
      for (const { seq, range } of xs) {
        const rows = concatRows(seq, layers, d);
        if (o.mode === 'mean-pooled') {
          for (let p = range[0]; p + w <= range[1]; p++) {
            if (hashUnit(`${seed}|${label}|${seq.id}|${p}|${lo}`) >= rate) continue;
            const m = new Float32Array(width);
            for (let k = 0; k < w; k++) for (let j = 0; j < width; j++) m[j] += rows[(p + k) * width + j] / w;
            set.parts.push(m);
            set.labels.push(label);
          }
        } else {
          for (let p = range[0]; p < range[1]; p++) {
            if (hashUnit(`${seed}|${label}|${seq.id}|${p}|${lo}`) >= rate) continue;
            set.parts.push(rows.subarray(p * width, (p + 1) * width));
            set.labels.push(label);
          }
        }
      }
    };
    take(pos, 1);
    take(neg, 0);
    const n = set.labels.length;
    if (o.mode === 'per-layer' && !set.labels.includes(1)) return null; // no training injection reaches this layer
    if (!set.labels.includes(1) || !set.labels.includes(0)) throw lwError('LW_ERR_PROBE_FIT', `layers ${layers.join(',')}: need positive and negative rows (got ${n})`);
    const data = new Float32Array(n * width);
    set.parts.forEach((p, i) => data.set(p, i * width));
    const fit = fitLogistic({ rows: n, cols: width, data }, Uint8Array.from(set.labels), { l2: o.l2 ?? 1e-3, classWeight: 'balanced', maxIterations: 300 });
    const body = linearBody(fit, 'direction');
    const rounded: LeafBody = { kind: 'direction', bias: round(body.bias, digits), normalisation: { mean: roundAll(body.normalisation.mean, digits), std: roundAll(body.normalisation.std, digits) }, weights: roundAll(body.weights, digits) };
    const id = o.mode === 'per-layer' ? `linear-L${layers[0]}` : `${o.mode === 'concat' ? 'linear' : 'pooled'}-L${layers.join('-')}`;
    return { id, hook: layers.length === 1 ? residPost(layers[0]) : layers.map(residPost), body: rounded };
  }).filter((x): x is MemberFit => x !== null);
}

// ---- assembling probe files ---------------------------------------------------------------------

/** A leaf probe of one member (scored alone, e.g. to calibrate it). */
export function memberProbe(m: MemberFit, meta: Pick<DetectorMeta, 'modelFingerprint' | 'dModel'>): Probe {
  return createProbe(memberFile(m, meta));
}

/**
 * Per-token member scores on sequences, cached by member id (scoring the big Gaussians is the
 * expensive part; every detector made of the same members reuses them).
 */
export class MemberScoreCache {
  private readonly cache = new Map<string, Map<string, Float32Array>>();
  constructor(private readonly meta: Pick<DetectorMeta, 'modelFingerprint' | 'dModel'>) {}

  /**
   * The cache for members fitted without one style (`calibrateOn: 'styles'`): member ids there name
   * other fits, so they get a cache of their own, shared by every detector fitted with this one.
   */
  withoutStyle(style: string): MemberScoreCache {
    return this.heldOut.get(style) ?? this.heldOut.set(style, new MemberScoreCache(this.meta)).get(style)!;
  }
  private readonly heldOut = new Map<string, MemberScoreCache>();

  scores(m: MemberFit, seq: Seq): Float32Array {
    let bySeq = this.cache.get(m.id);
    if (!bySeq) this.cache.set(m.id, (bySeq = new Map()));
    let s = bySeq.get(seq.id);
    if (!s) {
      const probe = (this.probes.get(m.id) ?? this.probes.set(m.id, memberProbe(m, this.meta)).get(m.id))!;
      s = scoreSeq(probe, seq);
      bySeq.set(seq.id, s);
    }
    return s;
  }

  private readonly probes = new Map<string, Probe>();
}

export interface Detector {
  /** The probe file (threshold set). */
  file: ProbeFile;
  members: (MemberFit & { calibration: { center: number; scale: number } })[];
  aggregator: AggregatorSpec;
  threshold: number;
}

/** Per-position ensemble scores of a detector on a sequence, from cached member scores. */
export function detectorTokenScores(det: { readonly members: readonly Detector['members'][number][] }, cache: MemberScores, seq: Seq): Float64Array {
  const out = new Float64Array(seq.positions).fill(-Infinity);
  for (const m of det.members) {
    const s = cache.scores(m, seq);
    const inv = 1 / m.calibration.scale;
    for (let p = 0; p < s.length; p++) {
      const v = (s[p] - m.calibration.center) * inv;
      if (v > out[p] || Number.isNaN(v)) out[p] = v;
    }
  }
  return out;
}

/** Member scores on a sequence (a MemberScoreCache, or one that scores each style by another fit). */
export interface MemberScores {
  scores(m: MemberFit, seq: Seq): Float32Array;
}

export interface BuildDetectorOptions {
  members: MemberFit[];
  /** Clean sequences (not fitted on) for member calibration and the threshold. */
  calibration: readonly Seq[];
  meta: Omit<DetectorMeta, 'training' | 'evaluation'> & Partial<Pick<DetectorMeta, 'training' | 'evaluation'>>;
  cache: MemberScores;
  skip?: number;
}

/** Calibrate members on clean tokens, set the threshold at the target FPR per request, write the file. */
export function buildDetector(o: BuildDetectorOptions): Detector {
  const skip = o.skip ?? o.meta.aggregator.skip ?? GENERIC_SKIP;
  const members = o.members.map((m) => {
    const toks: number[] = [];
    for (const s of o.calibration) {
      const x = o.cache.scores(m, s);
      for (let p = Math.max(0, skip - s.start); p < x.length; p++) toks.push(x[p]);
    }
    return { ...m, calibration: calibrate(toks) };
  });
  // The target rate holds for each clean population (corpus requests, trials) on its own: trials
  // are many and alike, and a pooled quantile would sit where only they are, while the tail that
  // matters is real text's (windowed members see code files' persistent states that no trial has).
  const set = setEnsembleThreshold(
    members,
    (subset) => o.calibration.map((s) => ({ scores: detectorTokenScores({ members: subset }, o.cache, s), start: s.start, population: s.source })),
    o.meta.aggregator,
    o.meta.targetFpr,
  );
  const balanced = set.members;
  const threshold = set.threshold;
  const none: ProbeFigures = { trials: 0, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };
  const meta: DetectorMeta = { training: none, evaluation: none, ...o.meta, aggregator: set.aggregator };
  return { file: ensembleFile(balanced, meta, threshold), members: balanced, aggregator: meta.aggregator, threshold };
}

/** Replace a detector's file metadata (figures, description) keeping members and threshold. */
export function withMeta(det: Detector, meta: Partial<DetectorMeta>): Detector {
  const f = det.file;
  const m: DetectorMeta = {
    id: f.id,
    label: f.label,
    description: f.description,
    modelFingerprint: f.modelFingerprint,
    dModel: f.dModel,
    targetFpr: f.targetFpr,
    aggregator: f.aggregator,
    training: f.training,
    evaluation: f.evaluation,
    ...meta,
  };
  return { ...det, file: ensembleFile(det.members, m, det.threshold) };
}

/** Deterministic split of clean sequences into fit and calibration shares (by id hash). */
export function splitClean<T extends { id: string }>(xs: readonly T[], calibrationFraction: number, salt: string): { fit: T[]; calibration: T[] } {
  const fit: T[] = [];
  const calibration: T[] = [];
  for (const x of xs) (hashUnit(`${salt}|calibration|${x.id}`) < calibrationFraction ? calibration : fit).push(x);
  return { fit, calibration };
}

// ---- the anomaly detector, end to end -----------------------------------------------------------

export interface AnomalyDetectorOptions extends Omit<AnomalyMemberOptions, 'layers'> {
  layers?: readonly number[];
  numLayers: number;
  modelFingerprint: string;
  dModel: number;
  targetFpr?: number;
  aggregator?: AggregatorSpec;
  id?: string;
  label?: string;
  description?: string;
  /**
   * What the calibration scores are held out from. 'styles' (default): each corpus request is
   * scored by members fitted without its style (leave one style out), so member scales and the
   * threshold carry the tail of text of a kind the fit never saw, which is what a deployment
   * sends; 'requests': by the detector's own members (held-out requests of fitted styles only).
   * Trials are scored by the detector's own members either way.
   */
  calibrateOn?: 'styles' | 'requests';
}

/** A corpus request's style (its leave-out group); null for trials and styles never left out (alwaysFitted). */
function styleOf(s: Seq): string | null {
  return s.source === 'corpus' && s.run && !s.run.alwaysFitted ? s.run.style : null;
}

/**
 * fitAnomalyMembers(fit without style g) for each g of `styles`, from per-style moments: each row
 * is folded once into its style's accumulator (one shift per member, so they add up), and a
 * leave-one-out fit is a sum of the other styles' moments, Ledoit–Wolf and a Cholesky factor
 * (fitGaussianFromMoments, equal to fitGaussian on the rows within 1e-9: test/daemon-learn.test.ts).
 * Refitting from the rows per style cost one full pass over the fit set per style (31.5 min for the
 * built-in model with 19 styles). Full covariance with Ledoit–Wolf only (null otherwise).
 */
export function leaveOneStyleOutMembers(fit: readonly Seq[], d: number, o: AnomalyMemberOptions, styles: readonly string[]): Map<string, MemberFit[]> | null {
  if ((o.covariance ?? 'full') !== 'full' || (o.shrinkage ?? 'ledoit-wolf') !== 'ledoit-wolf') return null;
  const skip = o.skip ?? GENERIC_SKIP;
  const digits = o.digits ?? 7;
  const size = o.window ?? DEFAULT_GENERIC_WINDOW;
  const spread = o.windowSpread ?? true;
  const groups = new Map<string, Seq[]>();
  for (const s of fit) {
    const g = styleOf(s) ?? '';
    (groups.get(g) ?? groups.set(g, []).get(g)!).push(s);
  }
  /** Per style: the moments of `rowsOf(group)`, around the first row of the whole fit set. */
  const momentsByStyle = (rowsOf: (group: readonly Seq[], spreadSums: SpreadMoments | null) => Float32Array, withSpread: boolean) => {
    const rows = [...groups].map(([g, group]) => {
      const sums = withSpread ? new SpreadMoments(d) : null;
      return { g, rows: rowsOf(group, sums), sums };
    });
    const shift = rows.find((r) => r.rows.length > 0)?.rows.subarray(0, d) ?? new Float32Array(d);
    const out = new Map<string, { moments: MomentAccumulator; spread: SpreadMoments | null }>();
    for (const { g, rows: x, sums } of rows) {
      const moments = new MomentAccumulator(d, shift);
      for (let i = 0; i < x.length; i += d) moments.add(x, i);
      out.set(g, { moments, spread: sums });
    }
    return out;
  };
  const without = (parts: Map<string, { moments: MomentAccumulator; spread: SpreadMoments | null }>, left: string) => {
    let moments: MomentAccumulator | null = null;
    let sums: SpreadMoments | null = null;
    for (const [g, p] of parts) {
      if (g === left) continue;
      moments = moments ? moments.plus(p.moments) : p.moments;
      if (p.spread) sums = sums ? sums.plus(p.spread) : p.spread;
    }
    return { moments: moments!, spread: sums };
  };
  const out = new Map<string, MemberFit[]>(styles.map((g) => [g, []]));
  for (const layer of o.layers) {
    const kind = memberInput(o.input, layer);
    const parts = momentsByStyle((group) => anomalyRows(group, layer, kind, d, skip), false);
    for (const g of styles) {
      const { moments } = without(parts, g);
      if (moments.n < 2) throw lwError('LW_ERR_PROBE_FIT', `layer ${layer}: ${moments.n} clean rows to fit on without style ${g}`);
      out.get(g)!.push(anomalyMember(layer, kind, roundedGaussian(fitGaussianFromMoments(moments), digits)));
    }
  }
  if (size > 0)
    for (const layer of o.layers.filter((l) => l >= (o.windowFrom ?? 0))) {
      const kind = memberInput(o.input, layer);
      const parts = momentsByStyle((group, sums) => windowRows(group, layer, kind, d, skip, size, sums), spread);
      for (const g of styles) {
        const { moments, spread: sums } = without(parts, g);
        if (moments.n < 2) continue; // as fitAnomalyMembers: no full window, no windowed member
        out.get(g)!.push(anomalyMember(layer, kind, roundedGaussian(fitGaussianFromMoments(moments), digits), windowSuffix(size, spread), windowSpec(size, sums, digits)));
      }
    }
  return out;
}

/**
 * Member scores for calibration with each corpus style held out: a request of style g is scored by
 * members fitted on the fit sequences without g (a style the fit never held is scored by the
 * detector's own members, which never saw it either).
 */
function heldOutStyleScores(fit: readonly Seq[], calibration: readonly Seq[], members: readonly MemberFit[], o: AnomalyMemberOptions, d: number, cache: MemberScoreCache): MemberScores {
  const byStyle = new Map<string, { members: Map<string, MemberFit>; cache: MemberScoreCache }>();
  const styles = [...new Set(calibration.map(styleOf))].filter((g): g is string => {
    if (g === null) return false;
    const rest = fit.filter((s) => styleOf(s) !== g).length;
    return rest !== fit.length && rest !== 0;
  });
  const leftOut = leaveOneStyleOutMembers(fit, d, o, styles);
  for (const g of styles) {
    const fitted = leftOut?.get(g) ?? fitAnomalyMembers(fit.filter((s) => styleOf(s) !== g), d, o);
    byStyle.set(g, { members: new Map(fitted.map((m) => [m.id, m])), cache: cache.withoutStyle(`${g}|${members.map((m) => m.id).join(',')}`) });
  }
  return {
    scores: (m, s) => {
      const g = styleOf(s);
      const held = g === null ? undefined : byStyle.get(g);
      const own = held?.members.get(m.id);
      return held && own ? held.cache.scores(own, s) : cache.scores(m, s);
    },
  };
}

export const DEFAULT_GENERIC_AGGREGATOR: AggregatorSpec = { kind: 'rolling-mean', window: 8, skip: GENERIC_SKIP };
export const GENERIC_ID = 'generic-injection';
export const GENERIC_LABEL = 'generic injection (any direction)';

/** Fit the unsupervised anomaly detector on clean sequences and calibrate it on others. */
function covarianceWords(o: Pick<AnomalyMemberOptions, 'covariance' | 'rank'>): string {
  if (o.covariance === 'diagonal') return 'diagonal covariance';
  if (o.covariance === 'lowrank') return `Ledoit–Wolf shrunk covariance kept to its top ${o.rank ?? 32} eigenvectors, the rest isotropic (probabilistic PCA)`;
  return 'Ledoit–Wolf shrunk full covariance';
}

export function fitAnomalyDetector(fit: readonly Seq[], calibration: readonly Seq[], o: AnomalyDetectorOptions, cache?: MemberScoreCache): Detector {
  const layers = o.layers ?? Array.from({ length: o.numLayers }, (_, l) => l);
  const input = o.input ?? 'update';
  const targetFpr = o.targetFpr ?? 0.01;
  const aggregator = o.aggregator ?? DEFAULT_GENERIC_AGGREGATOR;
  const memberOptions: AnomalyMemberOptions = { ...o, layers, input, skip: o.skip ?? aggregator.skip ?? GENERIC_SKIP, windowFrom: o.windowFrom ?? windowFromLayer(o.numLayers) };
  const members = fitAnomalyMembers(fit, o.dModel, memberOptions);
  const own = cache ?? new MemberScoreCache({ modelFingerprint: o.modelFingerprint, dModel: o.dModel });
  const byStyle = (o.calibrateOn ?? 'styles') === 'styles';
  const windowedLayers = members.filter((m) => m.body.kind === 'mahalanobis' && m.body.window !== undefined).map((m) => parseResidPost(hookList(m.hook).at(-1)!));
  const windows = members.flatMap((m) => (m.body.kind === 'mahalanobis' && m.body.window !== undefined ? [m.body.window] : []));
  const windowRules = [
    ...(windows.some((w) => w.spread) ? ["its distance divided by √max(1, s / the clean s), s the spread of the window's rows about their own mean (a new kind of text spreads them, an added vector does not)"] : []),
    ...(windows[0]?.minCount !== undefined ? [`scored from ${windows[0].minCount} counted positions on`] : []),
  ];
  const what = input === 'update' ? 'the update of each layer (resid_post L − resid_post L−1; resid_post 0 at layer 0)' : 'resid_post of each layer';
  const description =
    o.description ??
    `Unsupervised anomaly detector: Mahalanobis distance of ${what} from a Gaussian (${covarianceWords(o)}) fitted on ${fit.length} clean requests (${fit.reduce((a, s) => a + s.positions, 0)} positions), layers ${layers.join(', ')}${windowedLayers.length > 0 ? `, and windowed members (layers ${windowedLayers.join(', ')}): the same for the mean input over the request's last ${o.window ?? DEFAULT_GENERIC_WINDOW} novel positions (token pairs new in the request)${windowRules.map((r) => `; ${r}`).join('')}` : ''}; members calibrated to their clean median and 99th percentile and combined by max; a request's score is the maximum over positions of the running aggregate less a length allowance (aggregator.lengthAllowance: the clean tail's scale per unit of ln n), so long requests fire no more often than short ones; threshold at ${targetFpr} FPR per request on ${calibration.length} other clean requests (on the corpus's and the trials' on their own, the higher${byStyle ? '; each corpus request scored by members fitted without its style, so the threshold carries the tail of kinds of text the fit never saw' : ''}); positions 0–${(aggregator.skip ?? 1) - 1} (attention sink, little context) not scored. Trained on no injection.`;
  return buildDetector({
    members,
    calibration,
    cache: byStyle ? heldOutStyleScores(fit, calibration, members, memberOptions, o.dModel, own) : own,
    meta: { id: o.id ?? GENERIC_ID, label: o.label ?? GENERIC_LABEL, description, modelFingerprint: o.modelFingerprint, dModel: o.dModel, targetFpr, aggregator },
    skip: o.skip ?? aggregator.skip,
  });
}

// ---- recalibrating an existing probe to the daemon's view ------------------------------------------

/**
 * The same probe with `skip` leading positions left unscored and its threshold at `targetFpr` per
 * request on clean sequences scored as the daemon scores (every position from 0). For probes
 * calibrated on a narrower view (issue 3's probes: positions from the question on), whose tail on
 * whole prompts is heavier. Figures other than the clean false-positive rates are kept.
 */
export function recalibrateProbe(file: ProbeFile, clean: readonly Seq[], o: { skip?: number; targetFpr?: number; logit?: boolean; fprOn?: Record<string, readonly Seq[]> } = {}): { file: ProbeFile; threshold: number; fpr: Record<string, number> } {
  const skip = o.skip ?? GENERIC_SKIP;
  // logit: a logistic probe scored as its logit ('direction'), so an aggregate of saturated
  // probabilities (σ = 1 in float64 beyond a logit of ~37) cannot pin the threshold at 1.
  if (o.logit && file.kind === 'linear') file = validateProbeFile({ ...file, kind: 'direction' });
  const targetFpr = o.targetFpr ?? file.targetFpr;
  const { skip: _drop, ...base } = file.aggregator;
  const aggregator = (skip > 0 ? { ...base, skip } : base) as AggregatorSpec;
  const probe = createProbe(file);
  const score = (s: Seq) => requestScore(scoreSeq(probe, s), aggregator, s.start);
  const cal = clean.map(score).filter(Number.isFinite);
  if (cal.length === 0) throw lwError('LW_ERR_PROBE_FIT', 'no clean requests to set the threshold on');
  const threshold = roundThreshold(thresholdAtFpr(cal, targetFpr));
  const fpr: Record<string, number> = {};
  for (const [k, xs] of Object.entries(o.fprOn ?? {})) {
    const v = xs.map(score).filter(Number.isFinite);
    if (v.length > 0) fpr[k] = v.filter((x) => x > threshold).length / v.length;
  }
  const note = ` Recalibrated for the daemon's view: ${o.logit ? 'scored as its logit (kind direction), ' : ''}positions 0–${skip - 1} unscored, threshold at ${targetFpr} FPR per request on ${cal.length} clean requests scored from position 0 (was ${file.threshold}).`;
  const description = file.description.replace(/ Recalibrated for the daemon's view:.*$/, '') + note;
  const out = validateProbeFile({ ...file, description, aggregator, threshold, targetFpr, evaluation: { ...file.evaluation, fprOnControls: { ...fpr } } });
  return { file: out, threshold, fpr };
}
