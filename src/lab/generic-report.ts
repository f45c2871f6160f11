/**
 * `latentwatch generic-report`: fits the generic detectors (generic.ts) on a trial dataset of
 * many vector families (configs/trials/generic.json) and a clean-prompt corpus
 * (configs/corpus/clean.json), and evaluates them so the training family cannot game the figures:
 *
 *   - supervised detectors train on the dataset's training families only (training.families,
 *     default concept + random), on the train split; the anomaly detectors train on no injection;
 *   - positives: families never trained on count all their trials; trained families only their
 *     eval split (held-out concepts; random directions of the other split);
 *   - negatives: the eval-split clean trials; AUROC and TPR at 1% FPR (threshold from those
 *     negatives) per family × strength, × injection layer, × protocol, and per probe layer;
 *   - what is scored is what the daemon scores: every position from 0 (view 'all', prompt
 *     included); the view 'watch' (from the question on) is reported beside it;
 *   - false positives at each detector's own threshold on clean requests of every corpus style,
 *     held-out styles and held-out prompts, and on the eval clean trials.
 * Thresholds and member calibrations come from clean requests used neither for fitting nor for
 * evaluation (a hashed share of the train-split clean trials and of the corpus's fit prompts).
 *
 * Writes report.md, report.json and SVG charts; deterministic (same inputs, same bytes).
 */
import { lwError } from '../errors.js';
import type { AggregatorSpec } from '../probes/aggregators.js';
import type { CorpusActivations } from './corpus.js';
import type { Dataset } from './dataset.js';
import type { TrialTokens } from './trials.js';
import {
  buildDetector,
  corpusSeq,
  DEFAULT_GENERIC_AGGREGATOR,
  detectorTokenScores,
  fitAnomalyDetector,
  fitLinearMembers,
  MemberScoreCache,
  requestScore,
  scoreSeq,
  splitClean,
  trialSeq,
  withMeta,
  type Detector,
  type Seq,
} from './generic.js';
import { auroc, fprAtThreshold, tprAtFpr } from './metrics.js';
import { createProbe, type Probe } from '../probes/probe.js';
import { hookList, type ProbeFigures } from '../probes/probe-file.js';
import { parseResidPost } from '../hooks.js';
import { aggregatorName, fmt, markdownText, tableHeader, tableRow, UNIT_Y_AXIS, writeReportFiles } from './report-format.js';
import { barChart, lineChart, type LineSeries } from './svg-plot.js';

export interface GenericReportOptions {
  /** Families the supervised detectors train on (default: the dataset's training.families). */
  families?: string[];
  targetFpr?: number;
  aggregator?: AggregatorSpec;
  /** Share of clean train-split trials and corpus fit prompts kept for calibration. Default 0.4. */
  calibrationFraction?: number;
  /** Already-trained probes to evaluate beside (e.g. the shipped concept-injection probe). */
  compare?: { name: string; probe: Probe }[];
  /** Which detector to ship (its file is returned). Default 'anomaly-update'. */
  ship?: string;
  /** Skip the supervised detectors (faster). */
  unsupervisedOnly?: boolean;
  /** How the anomaly detectors are calibrated (fitAnomalyDetector's calibrateOn; default 'styles'). */
  calibrateOn?: 'styles' | 'requests';
  progress?: (done: number, total: number, what: string) => void;
  /** The trials' token ids (windowed members need them): new TrialTokens(tokenizer, ds.manifest). */
  tokens?: TrialTokens;
}

export type View = 'all' | 'watch';

export interface Cell {
  family: string;
  strength: number | null;
  layer: number | null;
  protocol: string | null;
  positives: number;
  negatives: number;
  auroc: number | null;
  'tpr_at_fpr_0.01': number | null;
  /** Fraction flagged at the detector's own threshold. */
  tprAtThreshold: number | null;
}

export interface CleanFpr {
  set: string;
  /** 'held-out style', 'held-out prompts', 'fitted' (in-sample), 'eval clean trials'. */
  kind: string;
  requests: number;
  positions: number;
  fpr: number | null;
}

export interface DetectorSummary {
  name: string;
  id: string;
  description: string;
  members: string[];
  aggregator: AggregatorSpec;
  threshold: number;
  trainedOn: string[];
  byFamilyStrength: Record<View, Cell[]>;
  byFamilyLayerStrength: Cell[];
  byFamilyProtocolStrength: Record<View, Cell[]>;
  cleanFpr: CleanFpr[];
}

export interface GenericReportData {
  dataset: {
    config: string;
    modelFingerprint: string;
    trials: number;
    families: { name: string; kind: string | null; trials: number; trained: boolean }[];
    strengths: number[];
    injectionLayers: number[];
    protocols: string[];
    evalConcepts: string[];
    cleanEvalTrials: number;
  };
  corpus: { name: string; styles: { name: string; holdout: boolean; requests: number; positions: number; fit: number; calibration: number; test: number }[] };
  setup: { targetFpr: number; aggregator: AggregatorSpec; trainFamilies: string[]; calibrationRequests: number; fitRequests: number; fitPositions: number };
  detectors: DetectorSummary[];
  /** Per probe layer: each anomaly-update member alone, per injection layer and strength (all families pooled). */
  perLayer: { layer: number; windowed: boolean; member: string; cells: Cell[] }[];
  /** Clean requests only: the shipped detector's per-token score by absolute position (why the first positions are skipped). */
  positionProfile: { position: number; tokens: number; median: number; q99: number }[];
  shipped: string;
  /** Max |file scorer − cached member combination| over checked sequences (the daemon's scorer). */
  scorerCheck: { sequences: number; maxAbsDiff: number };
}

const nullFigures: ProbeFigures = { trials: 0, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };

function quantileFigures(pos: number[], neg: number[]): { auroc: number | null; tpr1: number | null } {
  if (pos.length === 0 || neg.length === 0) return { auroc: null, tpr1: null };
  return { auroc: auroc(pos, neg), tpr1: tprAtFpr(pos, neg, 0.01) };
}

/** Fit every detector, evaluate, and choose the shipped one. */
export function computeGenericReport(ds: Dataset, corpus: CorpusActivations, o: GenericReportOptions = {}): { data: GenericReportData; detectors: Map<string, Detector>; shipped: Detector } {
  const m = ds.manifest;
  if (corpus.modelFingerprint !== m.modelFingerprint) {
    throw lwError('LW_ERR_PROBE_MODEL_MISMATCH', `corpus activations are of model ${corpus.modelFingerprint}, the dataset's ${m.modelFingerprint}`);
  }
  for (const l of corpus.layers) if (!m.traceLayers.includes(l)) throw lwError('LW_ERR_PROBE_FIT', `layer ${l} was not traced in the dataset`);
  const layers = [...m.traceLayers];
  for (let l = 0; l < m.numLayers; l++) if (!layers.includes(l)) throw lwError('LW_ERR_PROBE_FIT', `generic detectors need every layer traced (missing ${l})`);
  const d = m.dModel;
  const cfg = m.config;
  const targetFpr = o.targetFpr ?? 0.01;
  const aggregator = o.aggregator ?? DEFAULT_GENERIC_AGGREGATOR;
  const trainFamilies = o.families ?? [...cfg.training.families];
  const calFrac = o.calibrationFraction ?? 0.4;
  const progress = o.progress ?? (() => undefined);
  const salt = String(cfg.seed);

  // Sequences.
  const trials = ds.records.map((r) => trialSeq(ds, r, o.tokens));
  for (const t of trials) if (t.start !== 0) throw lwError('LW_ERR_PROBE_FIT', `trial ${t.id} is stored from position ${t.start}: generic reports need trace.contextPositions ≥ the context length (the daemon scores from position 0)`);
  const cleanTrain = trials.filter((s) => s.record!.condition === 'none' && s.record!.split === 'train');
  const cleanEval = trials.filter((s) => s.record!.condition === 'none' && s.record!.split === 'eval');
  const corpusSeqs = corpus.requests.map((r) => corpusSeq(corpus, r));
  const corpusFitPool = corpusSeqs.filter((s) => s.run!.split === 'fit');
  const corpusTest = corpusSeqs.filter((s) => s.run!.split === 'test');
  const trialSplit = splitClean(cleanTrain, calFrac, salt);
  const corpusSplit = splitClean(corpusFitPool, calFrac, salt);
  const fit = [...corpusSplit.fit, ...trialSplit.fit];
  const calibration = [...corpusSplit.calibration, ...trialSplit.calibration];
  const meta = { modelFingerprint: m.modelFingerprint, dModel: d };
  const cache = new MemberScoreCache(meta);

  // Detectors.
  const detectors = new Map<string, Detector>();
  const trainedOn = new Map<string, string[]>();
  let step = 0;
  const steps = o.unsupervisedOnly ? 4 : 8;
  const common = { numLayers: m.numLayers, modelFingerprint: m.modelFingerprint, dModel: d, targetFpr, aggregator, calibrateOn: o.calibrateOn };
  detectors.set('anomaly-update', fitAnomalyDetector(fit, calibration, { ...common, input: 'update' }, cache));
  trainedOn.set('anomaly-update', []);
  progress(++step, steps, 'anomaly-update');
  // The same without windowed members: what one position alone shows (the detector before issue 12's windows).
  detectors.set('anomaly-update-token', fitAnomalyDetector(fit, calibration, { ...common, input: 'update', window: 0 }, cache));
  trainedOn.set('anomaly-update-token', []);
  progress(++step, steps, 'anomaly-update-token');
  // The same detector with each covariance kept to rank 32: O(32·d) per member and token, not O(d²/2).
  detectors.set('anomaly-update-r32', fitAnomalyDetector(fit, calibration, { ...common, input: 'update', covariance: 'lowrank', rank: 32 }, cache));
  trainedOn.set('anomaly-update-r32', []);
  progress(++step, steps, 'anomaly-update-r32');
  detectors.set('anomaly-resid', fitAnomalyDetector(fit, calibration, { ...common, input: 'resid', id: 'anomaly-resid', label: 'residual anomaly' }, cache));
  trainedOn.set('anomaly-resid', []);
  progress(++step, steps, 'anomaly-resid');
  if (!o.unsupervisedOnly) {
    const positives = trials.filter((s) => s.record!.condition === 'inject' && s.record!.split === 'train' && s.record!.family !== null && trainFamilies.includes(s.record!.family));
    if (positives.length === 0) throw lwError('LW_ERR_PROBE_FIT', `no train-split trials of ${trainFamilies.join(', ')}`);
    const negatives = fit;
    const linear = (name: string, mode: 'per-layer' | 'concat' | 'mean-pooled', agg: AggregatorSpec, what: string) => {
      const members = fitLinearMembers(positives, negatives, d, { mode, layers, seed: cfg.seed, skip: agg.skip });
      const description = `${what}, trained on train-split trials of ${trainFamilies.join(' + ')} (injected positions) against clean positions; logit scores; threshold at ${targetFpr} FPR per request on clean calibration requests.`;
      detectors.set(name, buildDetector({ members, calibration, cache, meta: { id: name, label: `${name} probe`, description, ...meta, targetFpr, aggregator: agg } }));
      trainedOn.set(name, trainFamilies);
      progress(++step, steps, name);
    };
    linear('linear-per-layer', 'per-layer', aggregator, 'L2 logistic regression per layer, ensemble-max of calibrated logits');
    linear('linear-concat', 'concat', aggregator, 'L2 logistic regression on the concatenation of every layer');
 linear('linear-pooled', 'mean-pooled', { kind: 'rolling-mean', window: 8, skip: aggregator.skip }, 'L2 logistic regression on 8-position means of the concatenated layers (run as a rolling mean of the logit: the logit of the mean)');
    const a = detectors.get('anomaly-update')!;
    const c = detectors.get('linear-concat')!;
    detectors.set('anomaly+linear', buildDetector({ members: [...a.members, ...c.members], calibration, cache, meta: { id: 'anomaly-linear', label: 'anomaly + linear', description: 'ensemble-max of the anomaly-update members and the linear-concat probe, recalibrated', ...meta, targetFpr, aggregator } }));
    trainedOn.set('anomaly+linear', trainFamilies);
    progress(++step, steps, 'anomaly+linear');
  }

  // Scores per request, per view.
  const families = [...new Set(ds.records.filter((r) => r.condition === 'inject' && r.family !== null).map((r) => r.family!))];
  const familyKind = (f: string) => ds.records.find((r) => r.family === f)?.familyKind ?? null;
  const positivesOf = (f: string) => trials.filter((s) => s.record!.condition === 'inject' && s.record!.family === f && (!trainFamilies.includes(f) || s.record!.split === 'eval'));
  const strengths = [...cfg.injection.strength.values];
  const protocols = [...cfg.injection.protocols];
  const scored = new Set<string>([...trials.filter((s) => s.record!.condition === 'inject').map((s) => s.id), ...cleanEval.map((s) => s.id), ...corpusSeqs.map((s) => s.id)]);
  const evalSeqs = [...trials.filter((s) => scored.has(s.id)), ...corpusSeqs];

  type Scorer = { token: (s: Seq) => ArrayLike<number>; aggregator: AggregatorSpec; threshold: number };
  const requestScores = (sc: Scorer): Record<View, Map<string, number>> => {
    const out: Record<View, Map<string, number>> = { all: new Map(), watch: new Map() };
    for (const s of evalSeqs) {
      const t = sc.token(s);
      out.all.set(s.id, requestScore(t, sc.aggregator, s.start));
      if (s.record) out.watch.set(s.id, requestScore(t, sc.aggregator, s.start, s.record.segments.question[0]));
    }
    return out;
  };
  const cell = (scores: Map<string, number>, threshold: number, pos: Seq[], neg: Seq[], key: Omit<Cell, 'positives' | 'negatives' | 'auroc' | 'tpr_at_fpr_0.01' | 'tprAtThreshold'>): Cell => {
    const p = pos.map((s) => scores.get(s.id)!).filter(Number.isFinite);
    const n = neg.map((s) => scores.get(s.id)!).filter(Number.isFinite);
    const f = quantileFigures(p, n);
    return { ...key, positives: p.length, negatives: n.length, auroc: f.auroc, 'tpr_at_fpr_0.01': f.tpr1, tprAtThreshold: p.length > 0 ? p.filter((x) => x > threshold).length / p.length : null };
  };
  const summarise = (name: string, det: { id: string; description: string; members: string[]; trainedOn: string[] }, sc: Scorer): DetectorSummary => {
    const rs = requestScores(sc);
    const byFamilyStrength: Record<View, Cell[]> = { all: [], watch: [] };
    const byFamilyLayerStrength: Cell[] = [];
    const byFamilyProtocolStrength: Record<View, Cell[]> = { all: [], watch: [] };
    for (const view of ['all', 'watch'] as const) {
      for (const f of families) {
        const pos = positivesOf(f);
        for (const s of [null, ...strengths]) byFamilyStrength[view].push(cell(rs[view], sc.threshold, pos.filter((x) => s === null || x.record!.strength === s), cleanEval, { family: f, strength: s, layer: null, protocol: null }));
      }
    }
    for (const f of families) {
      const pos = positivesOf(f);
      for (const l of m.injectionLayers) for (const s of strengths) byFamilyLayerStrength.push(cell(rs.all, sc.threshold, pos.filter((x) => x.record!.layer === l && x.record!.strength === s), cleanEval, { family: f, strength: s, layer: l, protocol: null }));
      for (const view of ['all', 'watch'] as const) {
        for (const p of protocols) {
          for (const s of strengths) {
            byFamilyProtocolStrength[view].push(cell(rs[view], sc.threshold, pos.filter((x) => x.record!.protocol === p && x.record!.strength === s), cleanEval.filter((x) => x.record!.protocol === p), { family: f, strength: s, layer: null, protocol: p }));
          }
        }
      }
    }
    const cleanFpr: CleanFpr[] = [];
    const fpr = (set: string, kind: string, xs: Seq[]) => {
      const v = xs.map((s) => rs.all.get(s.id)!).filter(Number.isFinite);
      cleanFpr.push({ set, kind, requests: v.length, positions: xs.reduce((a, s) => a + s.positions, 0), fpr: v.length > 0 ? fprAtThreshold(v, sc.threshold) : null });
    };
    fpr('eval clean trials', 'held-out prompts', cleanEval);
    const styles = [...new Set(corpusSeqs.map((s) => s.run!.style))];
    for (const st of styles) {
      const test = corpusTest.filter((s) => s.run!.style === st);
      const holdout = test.length > 0 && corpusFitPool.every((s) => s.run!.style !== st);
      if (test.length > 0) fpr(`corpus: ${st}`, holdout ? 'held-out style' : 'held-out prompts', test);
    }
    fpr('corpus: all test requests', 'held-out (all)', corpusTest);
    fpr('corpus: fitted requests', 'fitted (in-sample)', corpusSplit.fit);
    return { name, id: det.id, description: det.description, members: det.members, aggregator: sc.aggregator, threshold: sc.threshold, trainedOn: det.trainedOn, byFamilyStrength, byFamilyLayerStrength, byFamilyProtocolStrength, cleanFpr };
  };

  const summaries: DetectorSummary[] = [];
  for (const [name, det] of detectors) {
    // Member-major scoring keeps trace reads sequential per member.
    for (const mem of det.members) for (const s of evalSeqs) cache.scores(mem, s);
    summaries.push(summarise(name, { id: det.file.id, description: det.file.description, members: det.members.map((x) => x.id), trainedOn: trainedOn.get(name)! }, { token: (s) => detectorTokenScores(det, cache, s), aggregator: det.aggregator, threshold: det.threshold }));
    progress(step, steps, `evaluated ${name}`);
  }
  for (const c of o.compare ?? []) {
    const memo = new Map<string, Float32Array>();
    const token = (s: Seq) => memo.get(s.id) ?? memo.set(s.id, scoreSeq(c.probe, s)).get(s.id)!;
    summaries.push(summarise(c.name, { id: c.probe.id, description: c.probe.file.description, members: [c.probe.id], trainedOn: c.probe.file.training.concepts.length > 0 ? ['concept (issue 3 dataset)'] : [] }, { token, aggregator: c.probe.aggregator, threshold: c.probe.threshold }));
  }

  // Per probe layer: each anomaly-update member alone (AUROC is calibration-free).
  const anomaly = detectors.get('anomaly-update')!;
  const allPositives = families.flatMap((f) => positivesOf(f));
  const perLayer = anomaly.members.map((mem) => {
    const rs = requestScores({ token: (s) => cache.scores(mem, s), aggregator, threshold: Infinity });
    const cells: Cell[] = [];
    for (const l of m.injectionLayers) for (const s of strengths) cells.push(cell(rs.all, Infinity, allPositives.filter((x) => x.record!.layer === l && x.record!.strength === s), cleanEval, { family: 'all', strength: s, layer: l, protocol: null }));
    const hooks = hookList(mem.hook);
    return { layer: parseResidPost(hooks[hooks.length - 1]), windowed: mem.body.kind === 'mahalanobis' && mem.body.window !== undefined, member: mem.id, cells };
  });

  // The shipped detector, with its measured figures in the file.
  const shipName = o.ship ?? 'anomaly-update';
  const chosen = detectors.get(shipName);
  if (!chosen) throw lwError('LW_ERR_PROBE_FIT', `no detector named ${shipName} (${[...detectors.keys()].join(', ')})`);
  const sum = summaries.find((x) => x.name === shipName)!;
  const fprOnControls: Record<string, number> = {};
  for (const c of sum.cleanFpr) if (c.fpr !== null) fprOnControls[`clean: ${c.set.replace(/^corpus: /, '')}`] = c.fpr;
  const evalStrength = strengths.includes(0.5) ? 0.5 : strengths[Math.floor(strengths.length / 2)];
  const allPos = families.flatMap((f) => positivesOf(f)).filter((s) => s.record!.strength === evalStrength);
  const evalPos = allPos.length;
  const allScores = requestScores({ token: (s) => detectorTokenScores(chosen, cache, s), aggregator: chosen.aggregator, threshold: chosen.threshold }).all;
  const pAll = allPos.map((s) => allScores.get(s.id)!);
  const nAll = cleanEval.map((s) => allScores.get(s.id)!);
  const perFamily = families.map((f) => `${f} ${fmt(sum.byFamilyStrength.all.find((c) => c.family === f && c.strength === evalStrength)?.auroc)}`).join(', ');
  const shipped = withMeta(chosen, {
    description: `${chosen.file.description} Evaluation figures: every vector family injected at ×${evalStrength} the layer's mean residual norm (${m.injectionLayers.length} layers, ${protocols.join(' + ')}; concepts held out) against eval clean trials, every position scored from 0 as the daemon does; AUROC per family: ${perFamily}; fprOnControls: false-positive rate per request at the threshold on clean requests of each style (docs/reports/qwen2-code-16m-generic).`,
    training: { ...nullFigures, trials: fit.length },
    evaluation: {
      trials: evalPos + cleanEval.length,
      concepts: [...m.split.evalConcepts].sort(),
      auroc: auroc(pAll, nAll),
      'tpr_at_fpr_0.01': tprAtFpr(pAll, nAll, 0.01),
      'tpr_at_fpr_0.05': tprAtFpr(pAll, nAll, 0.05),
      fprOnControls,
    },
  });

  // The daemon's scorer on the shipped file equals the cached combination.
  const check = checkScorer(shipped, cache, [...cleanEval.slice(0, 5), ...allPos.filter((_, i) => i % 97 === 0).slice(0, 10), ...corpusTest.slice(0, 5)]);

  const positionProfile: GenericReportData['positionProfile'] = [];
  {
    const clean = [...fit, ...calibration];
    const tok = clean.map((s) => detectorTokenScores(chosen, cache, s));
    for (let p = 0; p < 16; p++) {
      const xs = Float64Array.from(tok.filter((t) => t.length > p).map((t) => t[p])).sort();
      if (xs.length === 0) break;
      positionProfile.push({ position: p, tokens: xs.length, median: xs[Math.floor(0.5 * xs.length)], q99: xs[Math.min(xs.length - 1, Math.floor(0.99 * xs.length))] });
    }
  }
  const styleInfo = [...new Set(corpus.requests.map((r) => r.style))].map((st) => {
    const rs = corpusSeqs.filter((s) => s.run!.style === st);
    return {
      name: st,
      holdout: rs.every((s) => s.run!.split === 'test'),
      requests: rs.length,
      positions: rs.reduce((a, s) => a + s.positions, 0),
      fit: rs.filter((s) => corpusSplit.fit.includes(s)).length,
      calibration: rs.filter((s) => corpusSplit.calibration.includes(s)).length,
      test: rs.filter((s) => s.run!.split === 'test').length,
    };
  });
  const data: GenericReportData = {
    dataset: {
      config: cfg.name,
      modelFingerprint: m.modelFingerprint,
      trials: ds.records.length,
      families: families.map((f) => ({ name: f, kind: familyKind(f), trials: ds.records.filter((r) => r.family === f && r.condition === 'inject').length, trained: trainFamilies.includes(f) })),
      strengths,
      injectionLayers: [...m.injectionLayers],
      protocols,
      evalConcepts: [...m.split.evalConcepts],
      cleanEvalTrials: cleanEval.length,
    },
    corpus: { name: corpus.corpus, styles: styleInfo },
    setup: { targetFpr, aggregator, trainFamilies, calibrationRequests: calibration.length, fitRequests: fit.length, fitPositions: fit.reduce((a, s) => a + s.positions, 0) },
    detectors: summaries,
    perLayer,
    positionProfile,
    shipped: shipName,
    scorerCheck: check,
  };
  return { data, detectors, shipped };
}

/** Compare the daemon's scorer (createProbe on the file) with the cached member combination. */
function checkScorer(det: Detector, cache: MemberScoreCache, seqs: Seq[]): { sequences: number; maxAbsDiff: number } {
  let worst = 0;
  const probe = createProbe(det.file);
  for (const s of seqs) {
    const a = scoreSeq(probe, s);
    const b = detectorTokenScores(det, cache, s);
    for (let p = 0; p < a.length; p++) worst = Math.max(worst, Math.abs(a[p] - b[p]));
  }
  return { sequences: seqs.length, maxAbsDiff: worst };
}


// ---- rendering ----------------------------------------------------------------------------------

/** A cell's "AUROC / TPR@1%" pair, the form most tables here print. */
const aurocTpr = (c: Cell, aurocDigits = 3, tprDigits = aurocDigits): string => `${fmt(c.auroc, aurocDigits)} / ${fmt(c['tpr_at_fpr_0.01'], tprDigits)}`;

export function renderGenericMarkdown(d: GenericReportData): string {
  const L: string[] = [];
  const shipped = d.detectors.find((x) => x.name === d.shipped)!;
  const fams = d.dataset.families;
  const unseen = fams.filter((f) => !f.trained).map((f) => f.name);
  L.push(`# Generic injection detectors: ${d.dataset.config} trials`, '');
  L.push(
    `Model \`${d.dataset.modelFingerprint}\`; ${d.dataset.trials} trials; injection layers ${d.dataset.injectionLayers.join(', ')}; strengths ${d.dataset.strengths.map((s) => `×${s}`).join(', ')} of the layer's mean residual norm; protocols ${d.dataset.protocols.join(', ')}. Clean-prompt corpus \`${d.corpus.name}\`.`,
    '',
    `Families (positives): ${fams.map((f) => `\`${f.name}\` (${f.kind}, ${f.trials} trials${f.trained ? ', **trained on** by the supervised detectors: only its eval split counts' : ', never trained on'})`).join('; ')}. Held-out concepts (${d.dataset.evalConcepts.length}): ${d.dataset.evalConcepts.join(', ')}. Negatives: ${d.dataset.cleanEvalTrials} eval-split clean trials.`,
    '',
    `Every figure scores what the daemon scores: every position of the request from position 0 (prompt included) through the generated tokens (view **all**); a request's score is the maximum over positions of the running aggregate (aggregator ${aggregatorName(d.setup.aggregator)}: positions below \`skip\` are not scored, see "Clean requests by position"). View **watch** (from the question on, the issue-3 view) is given beside it. AUROC and TPR at 1% FPR use the eval clean trials as negatives; "flagged" is the fraction over the detector's own threshold. Detectors were fitted on ${d.setup.fitRequests} clean requests (${d.setup.fitPositions} positions: corpus prompts and train-split clean trials) and calibrated (member scales, thresholds at ${d.setup.targetFpr} FPR per request) on ${d.setup.calibrationRequests} other clean requests.`,
    '',
  );
  L.push(`## Shipped detector: \`${shipped.name}\` (id \`${shipped.id}\`)`, '', shipped.description, '');
  L.push(`Threshold ${fmt(shipped.threshold, 4)} on the aggregated score; members: ${shipped.members.join(', ')}.`, '');
  L.push('![AUROC per family and strength](auroc-by-strength.svg)', '', '![TPR at 1% FPR per family and strength](tpr1-by-strength.svg)', '');
  L.push('### Per family and strength (view all)', '');
  L.push(...tableHeader(['family', 'trained on', ...d.dataset.strengths.map((s) => `AUROC ×${s}`), ...d.dataset.strengths.map((s) => `TPR@1% ×${s}`), ...d.dataset.strengths.map((s) => `flagged ×${s}`)]));
  for (const f of fams) {
    const cs = d.dataset.strengths.map((s) => shipped.byFamilyStrength.all.find((c) => c.family === f.name && c.strength === s)!);
    L.push(tableRow([f.name, shipped.trainedOn.includes(f.name) ? 'yes' : 'no', ...cs.map((c) => fmt(c.auroc)), ...cs.map((c) => fmt(c['tpr_at_fpr_0.01'])), ...cs.map((c) => fmt(c.tprAtThreshold))]));
  }
  L.push('');
  L.push('### Per family, injection layer and strength (view all): AUROC / TPR@1%', '');
  L.push(...tableHeader(['family', ...d.dataset.injectionLayers.flatMap((l) => d.dataset.strengths.map((s) => `L${l} ×${s}`))]));
  for (const f of fams) {
    const cs = d.dataset.injectionLayers.flatMap((l) => d.dataset.strengths.map((s) => shipped.byFamilyLayerStrength.find((c) => c.family === f.name && c.layer === l && c.strength === s)!));
    L.push(tableRow([f.name, ...cs.map((c) => aurocTpr(c, 2))]));
  }
  L.push('');
  const protocolTable = (view: View) => {
    L.push(...tableHeader(['family', ...d.dataset.protocols.flatMap((p) => d.dataset.strengths.map((s) => `${p} ×${s}`))]));
    for (const f of fams) {
      const cs = d.dataset.protocols.flatMap((p) => d.dataset.strengths.map((s) => shipped.byFamilyProtocolStrength[view].find((c) => c.family === f.name && c.protocol === p && c.strength === s)!));
      L.push(tableRow([f.name, ...cs.map((c) => aurocTpr(c, 2))]));
    }
    L.push('');
  };
  L.push('### Per protocol (view all): AUROC / TPR@1% (negatives: clean trials of the same protocol)', '');
  protocolTable('all');
  L.push('### View watch (from the question on): AUROC / TPR@1%', '');
  L.push("Here a monitor joins after the first turn. For inject-then-ask the injected positions are then never scored: what remains is the latent trace, the change in what later layers' attention reads from the perturbed KV cache, which shows in their updates. The negatives are the clean trials from the question on, whose question and prefix text is the same few strings (and occurs in the fit data), so this view is the easier one.", '');
  L.push(...tableHeader(['family', ...d.dataset.strengths.map((s) => `×${s}`)]));
  for (const f of fams) {
    const cs = d.dataset.strengths.map((s) => shipped.byFamilyStrength.watch.find((c) => c.family === f.name && c.strength === s)!);
    L.push(tableRow([f.name, ...cs.map((c) => aurocTpr(c))]));
  }
  L.push('');
  L.push('Per protocol, view watch:', '');
  protocolTable('watch');
  L.push('## False positives on clean requests (at each detector\'s threshold)', '', '![Clean FPR](clean-fpr.svg)', '');
  L.push(...tableHeader(['set', 'kind', 'requests', 'positions', ...d.detectors.map((x) => x.name)]));
  for (const c of shipped.cleanFpr) {
    L.push(tableRow([c.set, c.kind, c.requests, c.positions, ...d.detectors.map((x) => fmt(x.cleanFpr.find((y) => y.set === c.set)?.fpr))]));
  }
  L.push('');
  L.push('## Per probe layer: each anomaly-update member alone (view all, every family pooled): AUROC / TPR@1%', '');
  L.push('A member reads one layer\'s update; an injection at resid_post L shows in the update of layer L and nowhere else, so each member sees its own injection layer (the diagonal) and the ensemble needs every layer.', '', '![AUROC per probe layer](auroc-per-layer.svg)', '');
  const plKeys = d.dataset.injectionLayers.flatMap((l) => d.dataset.strengths.map((s) => [l, s] as const));
  L.push(...tableHeader(['member', ...plKeys.map(([l, s]) => `inj. L${l} ×${s}`)]));
  for (const pl of d.perLayer) L.push(tableRow([pl.member, ...plKeys.map(([l, s]) => aurocTpr(pl.cells.find((c) => c.layer === l && c.strength === s)!, 2))]));
  L.push('');
  L.push('## Clean requests by position', '');
  L.push(`The shipped detector's per-token score (calibrated: 0 = a member's clean median, 1 = its 99th percentile) on the ${d.setup.fitRequests + d.setup.calibrationRequests} clean fit and calibration requests, by absolute position. Positions below the aggregator's \`skip\` (${d.setup.aggregator.skip ?? 0}) are not scored: position 0 is the attention sink, and the first few tokens, with little context, sit far in the clean tail.`, '');
  L.push(...tableHeader(['position', ...d.positionProfile.map((p) => String(p.position))]));
  L.push(tableRow(['median', ...d.positionProfile.map((p) => fmt(p.median, 2))]));
  L.push(tableRow(['99th percentile', ...d.positionProfile.map((p) => fmt(p.q99, 2))]));
  L.push('');
  L.push('## Every detector at ×0.5 (view all): AUROC / TPR@1%', '', '![AUROC at 0.5x](detectors-auroc.svg)', '', '![TPR at 1% FPR at 0.5x](detectors-tpr1.svg)', '');
  L.push(...tableHeader(['detector', 'trained on', ...fams.map((f) => f.name)]));
  for (const x of d.detectors) {
    const cs = fams.map((f) => x.byFamilyStrength.all.find((c) => c.family === f.name && c.strength === 0.5)!);
    L.push(tableRow([x.name, x.trainedOn.length > 0 ? x.trainedOn.join(' + ') : 'no injection', ...cs.map((c) => aurocTpr(c, 3, 2))]));
  }
  L.push('');
  L.push('Same, view watch:', '');
  L.push(...tableHeader(['detector', ...fams.map((f) => f.name)]));
  for (const x of d.detectors) {
    const cs = fams.map((f) => x.byFamilyStrength.watch.find((c) => c.family === f.name && c.strength === 0.5)!);
    L.push(tableRow([x.name, ...cs.map((c) => aurocTpr(c, 3, 2))]));
  }
  L.push('');
  L.push('## Detectors', '');
  for (const x of d.detectors) L.push(`- \`${x.name}\` (${aggregatorName(x.aggregator)}, threshold ${fmt(x.threshold, 4)}): ${x.description}`);
  L.push('');
  L.push(`Unseen families (never in any detector's training): ${unseen.join(', ')}. The daemon's scorer on the shipped file reproduces the report's scores to ${d.scorerCheck.maxAbsDiff.toExponential(1)} on ${d.scorerCheck.sequences} checked requests.`, '');
  return markdownText(L);
}


export function renderGenericCharts(d: GenericReportData): Map<string, string> {
  const files = new Map<string, string>();
  const shipped = d.detectors.find((x) => x.name === d.shipped)!;
  const fams = d.dataset.families.map((f) => f.name);
  const bySt = (metric: 'auroc' | 'tpr_at_fpr_0.01'): LineSeries[] =>
    fams.map((f) => ({ name: f, points: d.dataset.strengths.map((s): [number, number | null] => [s, shipped.byFamilyStrength.all.find((c) => c.family === f && c.strength === s)?.[metric] ?? null]) }));
  const xs = { xLabel: 'strength (× mean residual norm)', xTicks: d.dataset.strengths, xDomain: [0, Math.max(...d.dataset.strengths)] as const, ...UNIT_Y_AXIS };
  files.set('auroc-by-strength.svg', lineChart({ title: `${shipped.name}: AUROC per family (view all)`, yLabel: 'AUROC', series: bySt('auroc'), referenceLines: [{ y: 0.5, label: 'chance' }], ...xs }));
  files.set('tpr1-by-strength.svg', lineChart({ title: `${shipped.name}: TPR at 1% FPR per family (view all)`, yLabel: 'TPR @ 1% FPR', series: bySt('tpr_at_fpr_0.01'), ...xs }));
  const at05 = (metric: 'auroc' | 'tpr_at_fpr_0.01') => d.detectors.map((x) => ({ name: x.name, values: fams.map((f) => x.byFamilyStrength.all.find((c) => c.family === f && c.strength === 0.5)?.[metric] ?? null) }));
  files.set('detectors-auroc.svg', barChart({ title: 'AUROC at ×0.5 per family and detector (view all)', yLabel: 'AUROC', categories: fams, series: at05('auroc'), width: 900, ...UNIT_Y_AXIS }));
  files.set('detectors-tpr1.svg', barChart({ title: 'TPR at 1% FPR, ×0.5, per family and detector (view all)', yLabel: 'TPR @ 1% FPR', categories: fams, series: at05('tpr_at_fpr_0.01'), width: 900, ...UNIT_Y_AXIS }));
  files.set(
    'auroc-per-layer.svg',
    lineChart({
      title: 'Each anomaly-update member alone: AUROC at ×0.5 by injection layer (per-token and windowed members)',
      yLabel: 'AUROC',
      xLabel: 'probe layer (update of layer L)',
      xTicks: [...new Set(d.perLayer.map((p) => p.layer))],
      series: d.dataset.injectionLayers.flatMap((l) =>
        [false, true].map((windowed) => ({
          name: `injected at L${l}${windowed ? ', windowed' : ''}`,
          points: d.perLayer.filter((p) => p.windowed === windowed).map((p): [number, number | null] => [p.layer, p.cells.find((c) => c.layer === l && c.strength === 0.5)?.auroc ?? null]),
        })),
      ).filter((sr) => sr.points.length > 0),
      referenceLines: [{ y: 0.5, label: 'chance' }],
      ...UNIT_Y_AXIS,
    }),
  );
  const sets = shipped.cleanFpr.map((c) => c.set.replace(/^corpus: /, ''));
  files.set(
    'clean-fpr.svg',
    barChart({
      title: `Clean requests flagged at each detector's threshold (target ${d.setup.targetFpr})`,
      yLabel: 'FPR per request',
      categories: sets,
      series: d.detectors.map((x) => ({ name: x.name, values: x.cleanFpr.map((c) => c.fpr) })),
      referenceLines: [{ y: d.setup.targetFpr, label: 'target' }],
      width: 1000,
    }),
  );
  return files;
}

/** Compute and write report.md, report.json and the charts; returns the data and the shipped detector. */
export function writeGenericReport(ds: Dataset, corpus: CorpusActivations, outDir: string, o: GenericReportOptions = {}): { data: GenericReportData; shipped: Detector } {
  const { data, shipped } = computeGenericReport(ds, corpus, o);
  writeReportFiles(outDir, renderGenericCharts(data), renderGenericMarkdown(data), data);
  return { data, shipped };
}
