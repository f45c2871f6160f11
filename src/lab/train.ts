/**
 * Training probes on a trial dataset (`latentwatch train-probe`).
 *
 * Splits, all by concept so no evaluation concept is ever seen in training:
 *   eval        the dataset's held-out concepts (dataset.json split) and eval-split clean trials:
 *               never read here except to report the final figures
 *   validation  a seeded share (training.validationFraction) of the TRAINING concepts and clean
 *               trials: picks the layer (--layer best) and the aggregator, and sets the threshold
 *   fit         the rest: the rows the weights are fitted on
 * Rows are single positions (every selected position of every fit trial). Two fitters per layer:
 * L2 logistic regression on standardised inputs with balanced class weights (logistic.ts), and
 * the difference-of-means direction. The threshold is the smallest validation clean-trial score
 * giving FPR ≤ target (metrics.ts thresholdAtFpr) on trial scores (eval.ts: max of the running
 * aggregate). Deterministic: same dataset and options → same probe bytes.
 */
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import { concat } from '../model/graph.js';
import type { AggregatorSpec } from '../probes/aggregators.js';
import type { Dataset, TrialRecord } from './dataset.js';
import { figures, isCleanNegative, isPositive, scoreSplit, selectPositions, summarise, TraceCache, type EvalReport, type Figures, type RowScorer, type Selection } from './eval.js';
import { fitDiffMeans, fitLogistic } from './logistic.js';
import { foldStandardisation, sigmoid, type LinearModel } from '../probes/linear.js';
import { dot } from '../probes/matrix.js';
import { thresholdAtFpr } from './metrics.js';
import { linearBody, type ProbeFigures, type ProbeFile } from '../probes/probe-file.js';
import { createRng, hash32, hashUnit, shuffled } from '../rng.js';
import type { PositionSet, Protocol } from './trial-config.js';

export type FitterKind = 'logistic' | 'diff-means';

export interface TrainOptions {
  layer?: number | 'best';
  kind?: FitterKind;
  targetFpr?: number;
  positions?: PositionSet;
  protocols?: Protocol[];
  families?: string[];
  l2?: number;
  validationFraction?: number;
  /** Candidates; the one with the best validation TPR at the target FPR (then AUROC) is kept. */
  aggregators?: AggregatorSpec[];
  id?: string;
  label?: string;
  description?: string;
}

export interface LayerResult {
  layer: number;
  kind: FitterKind;
  model: LinearModel;
  aggregator: AggregatorSpec;
  threshold: number;
  /** Per aggregator candidate, validation figures. */
  candidates: { aggregator: AggregatorSpec; validation: Figures }[];
  fit: Figures;
  validation: Figures;
  evaluation: EvalReport;
  fitRows: number;
  iterations: number | null;
}

export interface TrainResult {
  probe: ProbeFile;
  chosen: LayerResult;
  layers: LayerResult[];
  seconds: number;
}

/** Training options with the dataset's config defaults filled in. */
export interface Resolved {
  kind: FitterKind;
  targetFpr: number;
  selection: Selection;
  l2: number;
  validationFraction: number;
  aggregators: AggregatorSpec[];
}

/** Fill in the dataset's config defaults and check the result (train-probe and report resolve alike). */
export function resolveOptions(ds: Dataset, o: TrainOptions): Resolved {
  const t = ds.manifest.config.training;
  const r: Resolved = {
    kind: o.kind ?? 'logistic',
    targetFpr: o.targetFpr ?? t.targetFpr,
    selection: { protocols: o.protocols ?? t.protocols, families: o.families ?? t.families, positions: o.positions ?? t.positions },
    l2: o.l2 ?? t.l2,
    validationFraction: o.validationFraction ?? t.validationFraction,
    aggregators: o.aggregators ?? t.aggregators,
  };
  if (!(r.targetFpr >= 0 && r.targetFpr < 1)) throw lwError('LW_ERR_PROBE_FIT', `target FPR ${r.targetFpr} is not in [0, 1)`);
  for (const p of r.selection.protocols) if (!ds.manifest.config.injection.protocols.includes(p)) throw lwError('LW_ERR_PROBE_FIT', `the dataset has no ${p} trials`);
  return r;
}

/** Training trials split into fit and validation, by concept (positives) and by id hash (clean). */
export function fitValidationSplit(ds: Dataset, s: Selection, fraction: number): { fit: Set<number>; validation: Set<number> } {
  const seed = ds.manifest.config.seed;
  const train = ds.records.filter((r) => r.split === 'train' && (isPositive(r, s) || isCleanNegative(r, s)));
  const groups = [...new Set(train.filter((r) => isPositive(r, s)).map(groupOf))].sort();
  const nVal = fraction > 0 ? Math.max(1, Math.round(fraction * groups.length)) : 0;
  if (nVal >= groups.length && nVal > 0) throw lwError('LW_ERR_PROBE_FIT', `${groups.length} training concepts cannot give a validation share of ${fraction}`);
  const valGroups = new Set(shuffled(groups, createRng(hash32(`${seed}|validation`))).slice(0, nVal));
  const fit = new Set<number>();
  const validation = new Set<number>();
  for (const r of train) {
    const isVal = isPositive(r, s) ? valGroups.has(groupOf(r)) : fraction > 0 && hashUnit(`${seed}|validation|${r.id}`) < fraction;
    (isVal ? validation : fit).add(r.index);
  }
  return { fit, validation };
}

function groupOf(r: TrialRecord): string {
  return r.concept ?? r.item ?? r.id;
}

/** Rows (selected positions) of the given trials at one layer, with labels. */
export function gatherRows(cache: TraceCache, records: readonly TrialRecord[], layer: number, positions: PositionSet, label: (r: TrialRecord) => 0 | 1): { x: Float32Array; y: Uint8Array; rows: number } {
  const d = cache.ds.manifest.dModel;
  const parts: Float32Array[] = [];
  const labels: number[] = [];
  for (const r of records) {
    const sel = selectPositions(r, positions);
    if (!sel) continue;
    const rows = cache.rows(r, [layer]);
    parts.push(rows.subarray(sel[0] * d, sel[1] * d));
    for (let p = sel[0]; p < sel[1]; p++) labels.push(label(r));
  }
  // The fitters only read x, so a lone part may stay a view of the trace cache.
  return { x: concat(parts), y: Uint8Array.from(labels), rows: labels.length };
}

/** The row scorer of a fitted model: what training sets the threshold with, so reports must score with it too. */
export function scorerOf(model: LinearModel, kind: FitterKind, d: number): RowScorer {
  const { v, c } = foldStandardisation(model.weights, model.bias, model.mean, model.std);
  return kind === 'logistic' ? (rows, off) => sigmoid(c + dot(rows, off, v, 0, d)) : (rows, off) => c + dot(rows, off, v, 0, d);
}

/** Whether validation figures `a` beat `b`: higher TPR at 1% FPR, then higher AUROC. */
export function better(a: Figures, b: Figures): boolean {
  const ta = a['tpr_at_fpr_0.01'] ?? -1;
  const tb = b['tpr_at_fpr_0.01'] ?? -1;
  if (ta !== tb) return ta > tb;
  return (a.auroc ?? -1) > (b.auroc ?? -1);
}

/** Fit, pick the aggregator and threshold, and evaluate one layer. */
export function trainLayer(cache: TraceCache, layer: number, o: Resolved, split: { fit: Set<number>; validation: Set<number> }): LayerResult {
  const ds = cache.ds;
  const d = ds.manifest.dModel;
  const s = o.selection;
  const fitRecords = ds.records.filter((r) => split.fit.has(r.index));
  const { x, y, rows } = gatherRows(cache, fitRecords, layer, s.positions, (r) => (isPositive(r, s) ? 1 : 0));
  const matrix = { rows, cols: d, data: x };
  let model: LinearModel;
  let iterations: number | null = null;
  if (o.kind === 'logistic') {
    const f = fitLogistic(matrix, y, { l2: o.l2, classWeight: 'balanced' });
    model = f;
    iterations = f.iterations;
  } else {
    model = fitDiffMeans(matrix, y);
  }
  const scorer = scorerOf(model, o.kind, d);
  const layers = [layer];
  const trainScored = scoreSplit(cache, 'train', layers, scorer, o.aggregators, s, (r) => split.validation.has(r.index) || split.fit.has(r.index));
  const partFigures = (k: number, which: Set<number>): { figs: Figures; neg: number[] } => {
    const pos = trainScored[k].positives.filter((p) => which.has(p.r.index)).map((p) => p.score);
    const neg = trainScored[k].negatives.filter((p) => which.has(p.r.index)).map((p) => p.score);
    return { figs: figures(pos, neg), neg };
  };
  const validationSet = split.validation.size > 0 ? split.validation : split.fit;
  const candidates = o.aggregators.map((aggregator, k) => ({ aggregator, validation: partFigures(k, validationSet).figs }));
  let best = 0;
  for (let k = 1; k < candidates.length; k++) if (better(candidates[k].validation, candidates[best].validation)) best = k;
  const aggregator = o.aggregators[best];
  const valNeg = partFigures(best, validationSet).neg;
  if (valNeg.length === 0) throw lwError('LW_ERR_PROBE_FIT', 'no clean validation trials to set the threshold on');
  const threshold = thresholdAtFpr(valNeg, o.targetFpr);
  const [evalScored] = scoreSplit(cache, 'eval', layers, scorer, [aggregator], s);
  const evaluation: EvalReport = {
    probe: '',
    kind: o.kind === 'logistic' ? 'linear' : 'direction',
    hook: residPost(layer),
    threshold,
    targetFpr: o.targetFpr,
    aggregator,
    positions: s.positions,
    protocols: [...s.protocols],
    families: [...s.families],
    heldOutConcepts: [...new Set(evalScored.positives.map((p) => p.r.concept).filter((c): c is string => c !== null))].sort(),
    overlapWithTraining: [],
    ...summarise(evalScored, threshold),
  };
  return { layer, kind: o.kind, model, aggregator, threshold, candidates, fit: partFigures(best, split.fit).figs, validation: candidates[best].validation, evaluation, fitRows: rows, iterations };
}

function probeFigures(trials: number, concepts: string[], f: { auroc: number | null; 'tpr_at_fpr_0.01': number | null; 'tpr_at_fpr_0.05': number | null }, fprOnControls?: Record<string, number | null>): ProbeFigures {
  const out: ProbeFigures = { trials, concepts, auroc: f.auroc, 'tpr_at_fpr_0.01': f['tpr_at_fpr_0.01'], 'tpr_at_fpr_0.05': f['tpr_at_fpr_0.05'] };
  if (!fprOnControls) return out;
  const controls: Record<string, number> = {};
  for (const [k, v] of Object.entries(fprOnControls)) if (v !== null) controls[k] = v;
  return { ...out, fprOnControls: controls };
}

/** Train per layer (all traced layers for 'best'), choose, and build the probe file. */
export function trainProbe(ds: Dataset, o: TrainOptions = {}): TrainResult {
  const t0 = performance.now();
  const r = resolveOptions(ds, o);
  const split = fitValidationSplit(ds, r.selection, r.validationFraction);
  const traced = ds.manifest.traceLayers;
  const want = o.layer ?? 'best';
  if (want !== 'best' && !traced.includes(want)) throw lwError('LW_ERR_PROBE_FIT', `layer ${want} was not traced (traced: ${traced.join(', ')})`);
  const layers = want === 'best' ? traced : [want];
  const cache = new TraceCache(ds, 0);
  const results = layers.map((l) => trainLayer(cache, l, r, split));
  let chosen = results[0];
  for (const x of results.slice(1)) if (better(x.validation, chosen.validation)) chosen = x;
  ds.close();

  const cfg = ds.manifest.config;
  const trainConcepts = [...new Set(ds.records.filter((x) => split.fit.has(x.index) && x.concept !== null).map((x) => x.concept!))].sort();
  const fitTrials = split.fit.size;
  const id = o.id ?? 'concept-injection';
  const kind = r.kind === 'logistic' ? 'linear' : 'direction';
  const description =
    o.description ??
    `${r.kind === 'logistic' ? 'L2 logistic regression (balanced classes)' : 'difference-of-means direction'} on ${residPost(chosen.layer)}, trained on ${r.selection.protocols.join(' + ')} trials of ${r.selection.families.join(', ')} vectors (trial config "${cfg.name}", ${r.selection.positions} positions); threshold at ${r.targetFpr} FPR on validation clean trials; evaluated on ${chosen.evaluation.heldOutConcepts.length} held-out concepts.`;
  const ev = chosen.evaluation;
  const probe = {
    formatVersion: 1,
    id,
    label: o.label ?? 'concept injection',
    description,
    modelFingerprint: ds.manifest.modelFingerprint,
    hook: residPost(chosen.layer),
    dModel: ds.manifest.dModel,
    threshold: chosen.threshold,
    targetFpr: r.targetFpr,
    aggregator: chosen.aggregator,
    training: probeFigures(fitTrials, trainConcepts, chosen.fit),
    evaluation: probeFigures(ev.positives + ev.negatives, ev.heldOutConcepts, ev, ev.fpr_on_controls),
    ...linearBody(chosen.model, kind),
  } as ProbeFile; // validateProbeFile (on write) puts the keys in the canonical order
  return { probe, chosen, layers: results, seconds: (performance.now() - t0) / 1000 };
}
