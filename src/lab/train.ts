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

/**
 * What a probe reads at a layer L: 'resid' is resid_post L; 'update' is what block L adds,
 * resid_post L − resid_post L−1 (resid_post 0 at L = 0). An injection at L shifts every later
 * residual but only the update of L, whose natural spread is far smaller (docs/generic-detectors.md).
 */
export type FeatureInput = 'resid' | 'update';

/** The features of one fit: `input` at each of `layers`, concatenated per position. */
export interface FeatureSet {
  layers: readonly number[];
  input: FeatureInput;
}

export interface TrainOptions {
  /** One layer, the best single layer on validation, or the concatenation of several layers. */
  layer?: number | 'best' | readonly number[];
  input?: FeatureInput;
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
  /** The deepest feature layer (the only one unless several were concatenated). */
  layer: number;
  features: FeatureSet;
  /** resid_post layers the probe reads, in file order; `model` is over their concatenated rows. */
  hooks: number[];
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
  input: FeatureInput;
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
    input: o.input ?? t.input ?? 'resid',
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

/** resid_post layers a feature set reads, sorted. */
export function featureHooks(f: FeatureSet): number[] {
  const hooks = new Set<number>();
  for (const l of f.layers) {
    hooks.add(l);
    if (f.input === 'update' && l > 0) hooks.add(l - 1);
  }
  return [...hooks].sort((a, b) => a - b);
}

/** A trial's feature rows, [positions, layers × dModel]. */
export function featureRows(cache: TraceCache, r: TrialRecord, f: FeatureSet): Float32Array {
  const blocks = f.layers.map((l) => {
    const cur = cache.rows(r, [l]);
    if (f.input === 'resid' || l === 0) return cur;
    const prev = cache.rows(r, [l - 1]);
    const out = new Float32Array(cur.length);
    for (let i = 0; i < cur.length; i++) out[i] = cur[i] - prev[i];
    return out;
  });
  if (blocks.length === 1) return blocks[0];
  const d = cache.ds.manifest.dModel;
  const n = blocks[0].length / d;
  const k = blocks.length;
  const out = new Float32Array(n * d * k);
  for (let p = 0; p < n; p++) blocks.forEach((b, j) => out.set(b.subarray(p * d, (p + 1) * d), (p * k + j) * d));
  return out;
}

/**
 * A model over feature rows as one over the hooks' concatenated rows (what the probe file stores
 * and the daemon scores): it is linear in the residuals, so standardisation folds into the weights
 * and an update's weights go +w on hook L and −w on hook L−1. A single resid layer is kept as fitted.
 */
export function foldFeatures(model: LinearModel, f: FeatureSet, d: number): { hooks: number[]; model: LinearModel } {
  const hooks = featureHooks(f);
  if (f.input === 'resid' && f.layers.length === 1) return { hooks, model };
  const { v, c } = foldStandardisation(model.weights, model.bias, model.mean, model.std);
  const w = new Float64Array(hooks.length * d);
  f.layers.forEach((l, j) => {
    const at = hooks.indexOf(l) * d;
    for (let i = 0; i < d; i++) w[at + i] += v[j * d + i];
    if (f.input === 'update' && l > 0) {
      const prev = hooks.indexOf(l - 1) * d;
      for (let i = 0; i < d; i++) w[prev + i] -= v[j * d + i];
    }
  });
  return { hooks, model: { mean: new Float64Array(w.length), std: new Float64Array(w.length).fill(1), weights: w, bias: c } };
}

/** Rows (selected positions) of the given trials for a feature set (or one resid layer), with labels. */
export function gatherRows(cache: TraceCache, records: readonly TrialRecord[], features: FeatureSet | number, positions: PositionSet, label: (r: TrialRecord) => 0 | 1): { x: Float32Array; y: Uint8Array; rows: number } {
  const f: FeatureSet = typeof features === 'number' ? { layers: [features], input: 'resid' } : features;
  const width = cache.ds.manifest.dModel * f.layers.length;
  const parts: Float32Array[] = [];
  const labels: number[] = [];
  for (const r of records) {
    const sel = selectPositions(r, positions);
    if (!sel) continue;
    const rows = featureRows(cache, r, f);
    parts.push(rows.subarray(sel[0] * width, sel[1] * width));
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
export function trainLayer(cache: TraceCache, layer: number | readonly number[], o: Resolved, split: { fit: Set<number>; validation: Set<number> }): LayerResult {
  const ds = cache.ds;
  const d = ds.manifest.dModel;
  const s = o.selection;
  const features: FeatureSet = { layers: typeof layer === 'number' ? [layer] : [...layer], input: o.input };
  const fitRecords = ds.records.filter((r) => split.fit.has(r.index));
  const { x, y, rows } = gatherRows(cache, fitRecords, features, s.positions, (r) => (isPositive(r, s) ? 1 : 0));
  const matrix = { rows, cols: d * features.layers.length, data: x };
  let fitted: LinearModel;
  let iterations: number | null = null;
  if (o.kind === 'logistic') {
    const f = fitLogistic(matrix, y, { l2: o.l2, classWeight: 'balanced' });
    fitted = f;
    iterations = f.iterations;
  } else {
    fitted = fitDiffMeans(matrix, y);
  }
  // Everything below scores the folded model on raw hook rows, exactly as eval-probe and the daemon will.
  const { hooks: layers, model } = foldFeatures(fitted, features, d);
  const scorer = scorerOf(model, o.kind, d * layers.length);
  const trainScored = scoreSplit(cache, 'train', layers, () => scorer, o.aggregators, s, (r) => split.validation.has(r.index) || split.fit.has(r.index));
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
  const [evalScored] = scoreSplit(cache, 'eval', layers, () => scorer, [aggregator], s);
  const evaluation: EvalReport = {
    probe: '',
    kind: o.kind === 'logistic' ? 'linear' : 'direction',
    hook: hookField(layers),
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
  return { layer: Math.max(...features.layers), features, hooks: layers, kind: o.kind, model, aggregator, threshold, candidates, fit: partFigures(best, split.fit).figs, validation: candidates[best].validation, evaluation, fitRows: rows, iterations };
}

/** A probe file's hook field: one name, or the list for several resid_post layers. */
function hookField(layers: readonly number[]): string | string[] {
  return layers.length === 1 ? residPost(layers[0]) : layers.map((l) => residPost(l));
}

function featureText(f: FeatureSet): string {
  if (f.input === 'resid' && f.layers.length === 1) return residPost(f.layers[0]); // as before features existed: same bytes
  const what = f.input === 'update' ? 'the update (resid_post L − resid_post L−1) of' : 'resid_post';
  return `${what} ${f.layers.length === 1 ? `layer ${f.layers[0]}` : `layers ${f.layers.join(', ')} (concatenated)`}`;
}

export function probeFigures(trials: number, concepts: string[], f: { auroc: number | null; 'tpr_at_fpr_0.01': number | null; 'tpr_at_fpr_0.05': number | null }, fprOnControls?: Record<string, number | null>): ProbeFigures {
  const out: ProbeFigures = { trials, concepts, auroc: f.auroc, 'tpr_at_fpr_0.01': f['tpr_at_fpr_0.01'], 'tpr_at_fpr_0.05': f['tpr_at_fpr_0.05'] };
  if (!fprOnControls) return out;
  const controls: Record<string, number> = {};
  for (const [k, v] of Object.entries(fprOnControls)) if (v !== null) controls[k] = v;
  return { ...out, fprOnControls: controls };
}

/** Every layer was traced, and with `update` the one before it too (LW_ERR_PROBE_FIT otherwise). */
export function checkTracedLayers(traced: readonly number[], layers: readonly number[], update: boolean): void {
  for (const l of layers) if (!traced.includes(l)) throw lwError('LW_ERR_PROBE_FIT', `layer ${l} was not traced (traced: ${traced.join(', ')})`);
  if (update) for (const l of layers) if (l > 0 && !traced.includes(l - 1)) throw lwError('LW_ERR_PROBE_FIT', `the update of layer ${l} needs layer ${l - 1}, which was not traced`);
}

/** Train per layer (all traced layers for 'best'), choose, and build the probe file. */
export function trainProbe(ds: Dataset, o: TrainOptions = {}): TrainResult {
  const t0 = performance.now();
  const r = resolveOptions(ds, o);
  const split = fitValidationSplit(ds, r.selection, r.validationFraction);
  const traced = ds.manifest.traceLayers;
  const want = o.layer ?? ds.manifest.config.training.layer ?? 'best';
  const wanted = want === 'best' ? [] : typeof want === 'number' ? [want] : want;
  checkTracedLayers(traced, want === 'best' ? traced : wanted, r.input === 'update');
  if (Array.isArray(want) && want.length === 0) throw lwError('LW_ERR_PROBE_FIT', 'no layers to train on');
  const candidates: (number | readonly number[])[] = want === 'best' ? traced : [want as number | readonly number[]];
  const cache = new TraceCache(ds, 0);
  const results = candidates.map((l) => trainLayer(cache, l, r, split));
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
    `${r.kind === 'logistic' ? 'L2 logistic regression (balanced classes)' : 'difference-of-means direction'} on ${featureText(chosen.features)}, trained on ${r.selection.protocols.join(' + ')} trials of ${r.selection.families.join(', ')} vectors (trial config "${cfg.name}", ${r.selection.positions} positions); threshold at ${r.targetFpr} FPR on validation clean trials; evaluated on ${chosen.evaluation.heldOutConcepts.length} held-out concepts.`;
  const ev = chosen.evaluation;
  const probe = {
    formatVersion: 1,
    id,
    label: o.label ?? 'concept injection',
    description,
    modelFingerprint: ds.manifest.modelFingerprint,
    hook: hookField(chosen.hooks),
    dModel: ds.manifest.dModel,
    threshold: chosen.threshold,
    targetFpr: r.targetFpr,
    aggregator: chosen.aggregator,
    positions: r.selection.positions,
    training: probeFigures(fitTrials, trainConcepts, chosen.fit),
    evaluation: probeFigures(ev.positives + ev.negatives, ev.heldOutConcepts, ev, ev.fpr_on_controls),
    ...linearBody(chosen.model, kind),
  } as ProbeFile; // validateProbeFile (on write) puts the keys in the canonical order
  return { probe, chosen, layers: results, seconds: (performance.now() - t0) / 1000 };
}
