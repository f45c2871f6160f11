/**
 * The concept-match probe (`train-probe --kind concept-match`, issue 12): one linear probe per stored
 * concept, made from the concept vectors rather than learned per concept, so it detects concepts it
 * never saw a trial of.
 *
 * Why: a linear probe w·x trained on injections of some concepts moves under an injection of unit
 * direction u by s·(w·u), and held-out concept directions are nearly orthogonal to the training ones
 * (docs/trials.md), so no single w generalises. The direction a concept is injected along is known,
 * though: its stored vector. Per layer L the probe reads the update of block L (resid_post L −
 * resid_post L−1, resid_post 0 at L = 0), where an injection at L appears whole, whitens it with a
 * Gaussian fitted on clean training trials (z = L⁻¹(x − mean)) and scores the largest cosine of z
 * with the whitened concept vectors of that layer. A cosine is bounded and needs a direction: an
 * unusual but undirected update (junk, a new kind of text, a random direction) does not score.
 *
 * What the trials train: the whitening (fit-split clean trials), the window (the mean over the last W positions
 * before whitening, W chosen on the validation concepts: best TPR at the target FPR, then AUROC) and
 * the threshold (the target FPR on validation clean trials and on the training split's random-direction
 * controls alike: the alert says "a concept", not "some vector"). The concept vectors are every concept in the
 * dataset's store, held-out ones included: they come from the concept template, not from trials, as
 * a deployment's new concept words would (`trials --words`).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import { roundAll, roundedGaussian, roundThreshold, thresholdAtFpr } from '../probes/calibration.js';
import { ConceptStore } from '../probes/concept-store.js';
import { forwardSubstitute, type GaussianModel } from '../probes/gaussian.js';
import { validateProbeFile, type EnsembleMember, type ProbeFigures, type ProbeFile, type WindowSpec } from '../probes/probe-file.js';
import { createProbe } from '../probes/probe.js';
import type { Dataset } from './dataset.js';
import { evaluateProbe, figures, isCleanNegative, scoreSplit, TraceCache, trialRowScorer, type EvalReport, type Figures } from './eval.js';
import { fitGaussian } from './gaussian-fit.js';
import type { PositionSet } from './trial-config.js';
import { better, checkTracedLayers, fitValidationSplit, gatherRows, probeFigures, resolveOptions, type TrainOptions } from './train.js';

export interface ConceptMatchOptions extends Pick<TrainOptions, 'targetFpr' | 'positions' | 'protocols' | 'families' | 'validationFraction' | 'id' | 'label'> {
  /** Layers with a member (default: every traced layer from FIRST_DEFAULT_LAYER on). */
  layers?: readonly number[];
  /** Window sizes tried (1 = one position); the validation concepts choose. Default 1, 4, 8. */
  windows?: readonly number[];
  /**
   * The concept library (a `latentwatch concepts` directory of the same model): default the
   * dataset's concepts/; a bigger library adds concepts the probe knows without new trials.
   */
  concepts?: string;
}

export interface ConceptMatchResult {
  probe: ProbeFile;
  window: number;
  /** Validation figures per window tried. */
  candidates: { window: number; validation: Figures }[];
  evaluation: EvalReport;
  seconds: number;
}

const AGGREGATOR = { kind: 'max' } as const;

/**
 * Layers 0 and 1 are left out by default: there a concept vector is mostly its word's token (the
 * embedding plus one or two blocks), so any mention of the word matches it. Measured through the
 * daemon on qwen3-code-7m's held-out corpus: the largest clean cosine per request, median 0.85 with
 * layer 0, 0.35 without it, 0.34 without layers 0–1 (docs/trials.md).
 */
export const FIRST_DEFAULT_LAYER = 2;

const DIGITS = 7;

/** Fit, choose the window, set the threshold and evaluate on the held-out concepts. */
export function trainConceptMatch(ds: Dataset, o: ConceptMatchOptions = {}): ConceptMatchResult {
  const t0 = performance.now();
  // Every stored position by default: an injection into the model's last layer during the first turn
  // leaves the watch positions bit-identical to a clean trial's (qwen3-code-7m, docs/trials.md).
  const r = resolveOptions(ds, { ...o, positions: o.positions ?? 'all' });
  const s = r.selection;
  const traced = ds.manifest.traceLayers;
  const deep = traced.filter((l) => l >= FIRST_DEFAULT_LAYER);
  const layers = [...(o.layers ?? (deep.length > 0 ? deep : traced))].sort((a, b) => a - b);
  checkTracedLayers(traced, layers, true);
  if (layers.length === 0) throw lwError('LW_ERR_PROBE_FIT', 'no layers to train on');
  const windows = o.windows ?? [1, 4, 8];
  for (const w of windows) if (!Number.isInteger(w) || w < 1 || w > 4096) throw lwError('LW_ERR_PROBE_FIT', `window ${w} is not an integer in [1, 4096]`);
  const conceptsDir = o.concepts ?? join(ds.dir, 'concepts');
  if (o.concepts === undefined && !existsSync(join(conceptsDir, 'concepts.json'))) {
    throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', `${ds.dir} keeps no concepts/ (its trials read another directory's): name the concept vectors with --concepts DIR`);
  }
  const store = ConceptStore.open(conceptsDir, ds.manifest.modelFingerprint);
  const names = store.names('concept');
  if (names.length === 0) throw lwError('LW_ERR_PROBE_FIT', 'the dataset stores no concept vectors');
  const split = fitValidationSplit(ds, s, r.validationFraction);
  const fitClean = ds.records.filter((x) => split.fit.has(x.index) && isCleanNegative(x, s));
  if (fitClean.length < 2) throw lwError('LW_ERR_PROBE_FIT', `${fitClean.length} clean fit trials: too few to whiten`);
  const cache = new TraceCache(ds, 0);
  const d = ds.manifest.dModel;

  // Per layer: the clean Gaussian of the update and the concept vectors whitened by it.
  const bodies = layers.map((l) => {
    const { x, rows } = gatherRows(cache, fitClean, { layers: [l], input: 'update' }, s.positions, () => 0);
    // 7 significant digits keep the file half the size; cosines move < 1e-5.
    const g = roundedGaussian(fitGaussian({ rows, cols: d, data: x }), DIGITS);
    if (g.form !== 'cholesky') throw new Error('unreachable: full covariance is stored as a Cholesky factor');
    return { layer: l, gaussian: g, directions: roundAll(whitenedDirections(g, names.map((n) => store.vector(n, l))), DIGITS) };
  });

  // A cosine is on the same scale at every layer: members are combined as they are (calibrating
  // each to its own clean tail made quiet layers fire on random directions).
  const membersFor = (window: number): EnsembleMember[] => bodies.map((b) => ({ id: `match-L${b.layer}`, calibration: { center: 0, scale: 1 }, ...leafOf(b, names, window) }) as EnsembleMember);

  const validationSet = split.validation.size > 0 ? split.validation : split.fit;
  const candidates = windows.map((window) => {
    const file = ensembleFile(ds, membersFor(window), layers, r.targetFpr, s.positions, o);
    const probe = createProbe(file);
    const [sc] = scoreSplit(cache, 'train', hookLayersOf(layers), () => trialRowScorer(probe), [AGGREGATOR], s, (x) => validationSet.has(x.index) || x.condition === 'random');
    const pos = sc.positives.map((p) => p.score);
    const neg = sc.negatives.map((p) => p.score);
    const random = (sc.controls.get('random') ?? []).map((p) => p.score);
    return { window, file, validation: figures(pos, neg), neg, random };
  });
  // On a tie the longer window: averaging lowers the clean tail on real traffic more than an
  // injection's cosine (qwen3-code-7m through the daemon: traffic false alerts 1.5% at W 1, 0.6% at W 4).
  let best = candidates[0];
  for (const c of candidates.slice(1)) if (better(c.validation, best.validation) || (!better(best.validation, c.validation) && c.window > best.window)) best = c;
  if (best.neg.length === 0) throw lwError('LW_ERR_PROBE_FIT', 'no clean validation trials to set the threshold on');
  // Random-direction controls are negatives too: the probe names concepts, not any added vector.
  const threshold = roundThreshold(Math.max(thresholdAtFpr(best.neg, r.targetFpr), best.random.length > 0 ? thresholdAtFpr(best.random, r.targetFpr) : -Infinity));
  const draft = { ...best.file, threshold } as ProbeFile;
  const evaluation = evaluateProbe(createProbe(draft), ds, { protocols: [...s.protocols], families: [...s.families] });
  ds.close();
  const trainConcepts = [...new Set(ds.records.filter((x) => split.fit.has(x.index) && x.concept !== null).map((x) => x.concept!))].sort();
  const description =
    `Concept match: per layer ${layers.join(', ')}, the update (resid_post L − resid_post L−1) ${best.window > 1 ? `averaged over the last ${best.window} positions, ` : ''}whitened by a Gaussian fitted on ${fitClean.length} clean trials, scored by its largest cosine with the ${names.length} stored concept vectors of that layer (whitened alike); the largest over layers; ` +
    `window chosen and threshold set at ${r.targetFpr} FPR on validation clean trials and training random-direction controls (trial config "${ds.manifest.config.name}", ${s.positions} positions); evaluated on ${evaluation.heldOutConcepts.length} held-out concepts.`;
  const probe = validateProbeFile({
    ...draft,
    description,
    training: probeFigures(split.fit.size, trainConcepts, best.validation),
    evaluation: probeFigures(evaluation.positives + evaluation.negatives, evaluation.heldOutConcepts, evaluation, evaluation.fpr_on_controls),
  });
  return { probe, window: best.window, candidates: candidates.map((c) => ({ window: c.window, validation: c.validation })), evaluation: { ...evaluation, probe: probe.id }, seconds: (performance.now() - t0) / 1000 };
}

/** Unit rows L⁻¹c / ‖L⁻¹c‖ (forward substitution on the packed factor), concatenated. */
export function whitenedDirections(g: Extract<GaussianModel, { form: 'cholesky' }>, vectors: readonly Float32Array[]): number[] {
  const d = g.mean.length;
  const out: number[] = [];
  const z = new Float64Array(d);
  for (const c of vectors) {
    forwardSubstitute(g.factor, c, z);
    let norm2 = 0;
    for (let i = 0; i < d; i++) norm2 += z[i] * z[i];
    const inv = norm2 > 0 ? 1 / Math.sqrt(norm2) : 0;
    for (let i = 0; i < d; i++) out.push(z[i] * inv);
  }
  return out;
}

type Body = { layer: number; gaussian: Extract<GaussianModel, { form: 'cholesky' }>; directions: number[] };

function hookLayers(l: number): number[] {
  return l === 0 ? [0] : [l - 1, l];
}

function hookLayersOf(layers: readonly number[]): number[] {
  return [...new Set(layers.flatMap(hookLayers))].sort((a, b) => a - b);
}

function leafOf(b: Body, names: readonly string[], window: number) {
  const w: WindowSpec | undefined = window > 1 ? { size: window, positions: 'all' } : undefined;
  return {
    kind: 'concept-match' as const,
    hook: b.layer === 0 ? residPost(0) : [residPost(b.layer - 1), residPost(b.layer)],
    ...(b.layer === 0 ? {} : { input: 'difference' as const }),
    ...(w ? { window: w } : {}),
    gaussian: { form: 'cholesky' as const, shrinkage: b.gaussian.shrinkage, mean: Array.from(b.gaussian.mean), factor: Array.from(b.gaussian.factor) },
    concepts: { names: [...names], directions: b.directions },
  };
}

const NO_FIGURES: ProbeFigures = { trials: 0, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };

function header(ds: Dataset, id: string, hook: string | string[], threshold: number, targetFpr: number, label: string, positions: PositionSet) {
  return { formatVersion: 1, id, label, description: '', modelFingerprint: ds.manifest.modelFingerprint, hook, dModel: ds.manifest.dModel, threshold, targetFpr, aggregator: AGGREGATOR, positions, training: NO_FIGURES, evaluation: NO_FIGURES };
}

/** The ensemble of the members, threshold 0 until it is set. */
function ensembleFile(ds: Dataset, members: EnsembleMember[], layers: readonly number[], targetFpr: number, positions: PositionSet, o: ConceptMatchOptions): ProbeFile {
  return validateProbeFile({ ...header(ds, o.id ?? 'concept-match', hookLayersOf(layers).map(residPost), 0, targetFpr, o.label ?? 'concept injection', positions), kind: 'ensemble-max', members });
}
