/**
 * Scoring trials with a probe, and the evaluation figures of `latentwatch eval-probe`.
 *
 * A trial's score is what the daemon would see: the probe scores every selected position
 * (positions.ts semantics below), the probe's aggregator runs over those scores in order, and the
 * trial scores the MAXIMUM of the running aggregate (an alert fires as soon as the aggregate
 * crosses the threshold). Positions, relative to a trial's sequence:
 *   watch   from the question on: what a monitor sees after the first turn (default)
 *   after   after the injection window (the latent trace; empty when the window runs through generation)
 *   inside  inside the window (only the stored tail of a first-turn window)
 *   all     every stored position: with trace.contextPositions ≥ the context length, the whole
 *           sequence from position 0, prompt included: what the daemon scores
 * Clean trials use their protocol's nominal window, so both classes read the same positions.
 *
 * Evaluation is on the dataset's eval split only: positives are injections of held-out concepts
 * (plus any eval-split items of other families asked for); negatives are clean trials.
 * `tpr_at_fpr_*` pick their threshold on those negatives (the metric); the probe's own deployed
 * threshold gives `fpr` and `fpr_on_controls` (the fraction of each control's trials it flags).
 */
import { lwError } from '../errors.js';
import { parseResidPost } from '../hooks.js';
import { aggregateSequence, type AggregatorSpec } from '../probes/aggregators.js';
import { CONTROL_CONDITIONS, type Condition, type Dataset, type TrialRecord } from './dataset.js';
import { auroc, fprAtThreshold, tprAtFpr, tprAtThreshold } from './metrics.js';
import { createProbe, type Probe } from '../probes/probe.js';
import { readProbeFile } from '../probes/probe-file.js';
import type { PositionSet, Protocol } from './trial-config.js';

/** [from, to) indices into a trial's trace rows for a position set; null when empty. */
export function selectPositions(r: TrialRecord, set: PositionSet): [number, number] | null {
  const { start, end } = r.trace;
  let a: number;
  let b: number;
  if (set === 'all') {
    a = start;
    b = end;
  } else if (set === 'watch') {
    a = r.segments.question[0];
    b = end;
  } else if (set === 'after') {
    if (r.window.end === null) return null;
    a = r.window.end;
    b = end;
  } else {
    a = r.window.start;
    b = r.window.end ?? end;
  }
  a = Math.max(a, start);
  b = Math.min(b, end);
  return a < b ? [a - start, b - start] : null;
}

/** Per-position scorer over rows of width `inputDim` (a probe's scoreRow). */
export type RowScorer = (rows: Float32Array, offset: number) => number;

/** Loads a trial's rows at one or more layers (concatenated per position, in `layers` order). */
export class TraceCache {
  private readonly cache = new Map<string, Float32Array>();

  constructor(
    readonly ds: Dataset,
    /** Keep at most this many trial-layer blocks in memory (0 = no caching). */
    private readonly capacity = 0,
  ) {}

  rows(r: TrialRecord, layers: readonly number[]): Float32Array {
    if (layers.length === 1) return this.one(r, layers[0]);
    const d = this.ds.manifest.dModel;
    const n = r.trace.end - r.trace.start;
    const blocks = layers.map((l) => this.one(r, l));
    const out = new Float32Array(n * d * layers.length);
    for (let p = 0; p < n; p++) blocks.forEach((b, k) => out.set(b.subarray(p * d, (p + 1) * d), (p * layers.length + k) * d));
    return out;
  }

  private one(r: TrialRecord, layer: number): Float32Array {
    const key = `${r.index}|${layer}`;
    const hit = this.cache.get(key);
    if (hit) return hit;
    const rows = this.ds.traceRows(r, layer);
    if (this.capacity > 0) {
      if (this.cache.size >= this.capacity) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(key, rows);
    }
    return rows;
  }
}

/** Per-position scores of one trial (null when its position set is empty). */
export function tokenScores(cache: TraceCache, r: TrialRecord, layers: readonly number[], positions: PositionSet, scorer: RowScorer): Float64Array | null {
  const sel = selectPositions(r, positions);
  if (!sel) return null;
  const rows = cache.rows(r, layers);
  const width = cache.ds.manifest.dModel * layers.length;
  const out = new Float64Array(sel[1] - sel[0]);
  for (let p = sel[0]; p < sel[1]; p++) out[p - sel[0]] = scorer(rows, p * width);
  return out;
}

/** max over positions of the running aggregate. */
export function trialScore(scores: ArrayLike<number>, aggregator: AggregatorSpec): number {
  const agg = aggregateSequence(aggregator, scores);
  let m = -Infinity;
  for (const v of agg) if (v > m) m = v;
  return m;
}

export interface Figures {
  positives: number;
  negatives: number;
  auroc: number | null;
  'tpr_at_fpr_0.01': number | null;
  'tpr_at_fpr_0.05': number | null;
}

export function figures(pos: readonly number[], neg: readonly number[]): Figures {
  const ok = pos.length > 0 && neg.length > 0;
  return {
    positives: pos.length,
    negatives: neg.length,
    auroc: ok ? auroc(pos, neg) : null,
    'tpr_at_fpr_0.01': ok ? tprAtFpr(pos, neg, 0.01) : null,
    'tpr_at_fpr_0.05': ok ? tprAtFpr(pos, neg, 0.05) : null,
  };
}

/** Which trials count as positives and clean negatives. */
export interface Selection {
  protocols: readonly Protocol[];
  /** Families whose 'inject' trials are positives. */
  families: readonly string[];
  positions: PositionSet;
}

export function isPositive(r: TrialRecord, s: Selection): boolean {
  return r.condition === 'inject' && s.protocols.includes(r.protocol) && r.family !== null && s.families.includes(r.family);
}

export function isCleanNegative(r: TrialRecord, s: Selection): boolean {
  return r.condition === 'none' && s.protocols.includes(r.protocol);
}

export interface ControlFigures {
  trials: number;
  /** Fraction flagged at the deployed threshold (a false-positive rate for 'none'). */
  fpr: number | null;
  /** AUROC of this control against clean trials (how separable it is, threshold-free). */
  aurocVsNone: number | null;
}

export interface CellFigures extends Figures {
  protocol: Protocol;
  layer: number;
  strength: number;
  tprAtThreshold: number | null;
}

export interface EvalReport {
  probe: string;
  kind: string;
  hook: string | readonly string[];
  threshold: number;
  targetFpr: number;
  aggregator: AggregatorSpec;
  positions: PositionSet;
  protocols: Protocol[];
  families: string[];
  heldOutConcepts: string[];
  /** Held-out concepts the probe's training figures list (should be empty). */
  overlapWithTraining: string[];
  positives: number;
  negatives: number;
  auroc: number | null;
  'tpr_at_fpr_0.01': number | null;
  'tpr_at_fpr_0.05': number | null;
  /** At the probe's threshold. */
  tpr: number | null;
  fpr: number | null;
  fpr_on_controls: Record<string, number | null>;
  controls: Record<string, ControlFigures>;
  byProtocol: Record<string, Figures>;
  /** Held-out positives of one (protocol, injection layer, strength) against that protocol's clean trials. */
  cells: CellFigures[];
  /** The same pooled over injection layers: one entry per (protocol, strength). */
  byStrength: (Figures & { protocol: Protocol; strength: number; tprAtThreshold: number | null })[];
  /** The same pooled over protocols too: one entry per strength, against every eval clean trial. */
  pooledByStrength: (Figures & { strength: number; tprAtThreshold: number | null })[];
  skippedEmpty: number;
}

/** Scores of eval-split trials, grouped, for a scorer + aggregator. */
export interface ScoredSplit {
  positives: { r: TrialRecord; score: number }[];
  negatives: { r: TrialRecord; score: number }[];
  controls: Map<Condition, { r: TrialRecord; score: number }[]>;
  skipped: number;
}

/** `scorerFor` gives each trial a fresh row scorer (an ordered probe keeps per-request state in it). */
export function scoreSplit(cache: TraceCache, split: 'train' | 'eval', layers: readonly number[], scorerFor: () => RowScorer, aggregators: readonly AggregatorSpec[], s: Selection, filter: (r: TrialRecord) => boolean = () => true): ScoredSplit[] {
  const out: ScoredSplit[] = aggregators.map(() => ({ positives: [], negatives: [], controls: new Map(), skipped: 0 }));
  for (const r of cache.ds.records) {
    if (r.split !== split || !filter(r)) continue;
    const pos = isPositive(r, s);
    const neg = isCleanNegative(r, s);
    const ctl = r.condition !== 'inject' && r.condition !== 'none' && s.protocols.includes(r.protocol) ? r.condition : null;
    if (!pos && !neg && ctl === null) continue;
    const ts = tokenScores(cache, r, layers, s.positions, scorerFor());
    aggregators.forEach((agg, k) => {
      if (ts === null) {
        out[k].skipped++;
        return;
      }
      const score = trialScore(ts, agg);
      if (pos) out[k].positives.push({ r, score });
      else if (neg) out[k].negatives.push({ r, score });
      else {
        const list = out[k].controls.get(ctl!) ?? [];
        list.push({ r, score });
        out[k].controls.set(ctl!, list);
      }
    });
  }
  return out;
}

const scoresOf = (xs: { score: number }[]) => xs.map((x) => x.score);

/** Evaluation figures of a scored eval split at a deployed threshold. */
export function summarise(sc: ScoredSplit, threshold: number): Pick<EvalReport, 'positives' | 'negatives' | 'auroc' | 'tpr_at_fpr_0.01' | 'tpr_at_fpr_0.05' | 'tpr' | 'fpr' | 'fpr_on_controls' | 'controls' | 'byProtocol' | 'cells' | 'byStrength' | 'pooledByStrength' | 'skippedEmpty'> {
  const pos = scoresOf(sc.positives);
  const neg = scoresOf(sc.negatives);
  const all = figures(pos, neg);
  const controls: Record<string, ControlFigures> = {};
  const fprOn: Record<string, number | null> = {};
  for (const c of CONTROL_CONDITIONS) {
    const xs = c === 'none' ? neg : scoresOf(sc.controls.get(c) ?? []);
    const f = xs.length > 0 ? fprAtThreshold(xs, threshold) : null;
    controls[c] = { trials: xs.length, fpr: f, aurocVsNone: c !== 'none' && xs.length > 0 && neg.length > 0 ? auroc(xs, neg) : null };
    fprOn[c] = f;
  }
  const byProtocol: Record<string, Figures> = {};
  const protocols = [...new Set(sc.positives.map((x) => x.r.protocol))];
  for (const p of protocols) {
    byProtocol[p] = figures(
      scoresOf(sc.positives.filter((x) => x.r.protocol === p)),
      scoresOf(sc.negatives.filter((x) => x.r.protocol === p)).length > 0 ? scoresOf(sc.negatives.filter((x) => x.r.protocol === p)) : neg,
    );
  }
  const negOf = (protocol: string) => {
    const xs = scoresOf(sc.negatives.filter((x) => x.r.protocol === protocol));
    return xs.length > 0 ? xs : neg;
  };
  const cells: CellFigures[] = [];
  const keys = [...new Set(sc.positives.map((x) => `${x.r.protocol}|${x.r.layer}|${x.r.strength}`))];
  for (const key of keys) {
    const [protocol, layer, strength] = key.split('|');
    const xs = scoresOf(sc.positives.filter((x) => `${x.r.protocol}|${x.r.layer}|${x.r.strength}` === key));
    cells.push({ protocol: protocol as Protocol, layer: Number(layer), strength: Number(strength), ...figures(xs, negOf(protocol)), tprAtThreshold: tprAtThreshold(xs, threshold) });
  }
  const byStrength: EvalReport['byStrength'] = [];
  for (const key of [...new Set(sc.positives.map((x) => `${x.r.protocol}|${x.r.strength}`))]) {
    const [protocol, strength] = key.split('|');
    const xs = scoresOf(sc.positives.filter((x) => `${x.r.protocol}|${x.r.strength}` === key));
    byStrength.push({ protocol: protocol as Protocol, strength: Number(strength), ...figures(xs, negOf(protocol)), tprAtThreshold: tprAtThreshold(xs, threshold) });
  }
  const pooledByStrength: EvalReport['pooledByStrength'] = [];
  for (const strength of [...new Set(sc.positives.flatMap((x) => (x.r.strength === null ? [] : [x.r.strength])))].sort((a, b) => a - b)) {
    const xs = scoresOf(sc.positives.filter((x) => x.r.strength === strength));
    pooledByStrength.push({ strength, ...figures(xs, neg), tprAtThreshold: tprAtThreshold(xs, threshold) });
  }
  return {
    positives: all.positives,
    negatives: all.negatives,
    auroc: all.auroc,
    'tpr_at_fpr_0.01': all['tpr_at_fpr_0.01'],
    'tpr_at_fpr_0.05': all['tpr_at_fpr_0.05'],
    tpr: pos.length > 0 ? tprAtThreshold(pos, threshold) : null,
    fpr: neg.length > 0 ? fprAtThreshold(neg, threshold) : null,
    fpr_on_controls: fprOn,
    controls,
    byProtocol,
    cells,
    byStrength,
    pooledByStrength,
    skippedEmpty: sc.skipped,
  };
}

/**
 * A row scorer for one trial: the probe's shared one, or for an ordered probe (windowed members) a
 * fresh request scorer in which every position counts as novel (trial traces carry no token ids).
 */
export function trialRowScorer(probe: Probe): RowScorer {
  if (!probe.ordered) return (rows, off) => probe.scoreRow(rows, off);
  const scorer = probe.createScorer();
  return (rows, off) => scorer(rows, off, true);
}

/** Layers a probe reads (its hooks must be resid_post hooks the dataset traced). */
export function probeLayers(probe: Probe, ds: Dataset): number[] {
  const layers = probe.hooks.map((h) => parseResidPost(h));
  for (const l of layers) {
    if (!ds.manifest.traceLayers.includes(l)) throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${probe.id} reads layer ${l}, which the dataset did not trace (${ds.manifest.traceLayers.join(', ')})`);
  }
  if (probe.dModel !== ds.manifest.dModel) throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${probe.id} has d_model ${probe.dModel}, the dataset ${ds.manifest.dModel}`);
  return layers;
}

export interface EvalOptions {
  protocols?: Protocol[];
  families?: string[];
  positions?: PositionSet;
}

/** Evaluate a loaded probe on a dataset's eval split. */
export function evaluateProbe(probe: Probe, ds: Dataset, o: EvalOptions = {}): EvalReport {
  const cfg = ds.manifest.config;
  const s: Selection = {
    protocols: o.protocols ?? cfg.injection.protocols,
    families: o.families ?? cfg.training.families,
    positions: o.positions ?? probe.file.positions ?? cfg.training.positions,
  };
  const layers = probeLayers(probe, ds);
  const trained = new Set(probe.file.training.concepts);
  const cache = new TraceCache(ds);
  const [sc] = scoreSplit(cache, 'eval', layers, () => trialRowScorer(probe), [probe.aggregator], s, (r) => r.concept === null || !trained.has(r.concept));
  const heldOut = [...new Set(sc.positives.map((x) => x.r.concept).filter((c): c is string => c !== null))].sort();
  return {
    probe: probe.id,
    kind: probe.kind,
    hook: probe.file.hook,
    threshold: probe.threshold,
    targetFpr: probe.targetFpr,
    aggregator: probe.aggregator,
    positions: s.positions,
    protocols: [...s.protocols],
    families: [...s.families],
    heldOutConcepts: heldOut,
    overlapWithTraining: ds.manifest.split.evalConcepts.filter((c) => trained.has(c)).sort(),
    ...summarise(sc, probe.threshold),
  };
}

/** `eval-probe`: read the probe for the dataset's model (refusing another model's) and evaluate. */
export async function evaluateProbeFile(probePath: string, ds: Dataset, o: EvalOptions = {}): Promise<EvalReport> {
  const file = await readProbeFile(probePath, ds.manifest.modelFingerprint);
  return evaluateProbe(createProbe(file), ds, o);
}
