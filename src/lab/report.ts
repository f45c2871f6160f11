/**
 * `latentwatch report`: report.md, report.json and SVG charts for a trial dataset.
 *
 * It trains a logistic and a difference-of-means probe at every traced layer (train.ts, the same
 * split and options as train-probe), then reports on the eval split (held-out concepts):
 *   - AUROC and TPR at 1% / 5% FPR per probe layer, per protocol and strength;
 *   - the deployed (best-validation) probe per injection layer × strength;
 *   - each control: the fraction flagged at the probe's threshold, and AUROC against clean trials;
 *   - the yes/no logit shift per layer through the logit lens (injected minus clean), the
 *     "present in the middle, suppressed at the end" picture;
 *   - verbal detection (text), the yes-readout, and probe detection side by side.
 * Every number in report.md is also in report.json. Deterministic: same dataset, same bytes.
 */
import type { Dataset, TrialRecord } from './dataset.js';
import { selectPositions, TraceCache, trialScore, type EvalReport, type Figures } from './eval.js';
import { aggregatorName, fmt, markdownText, tableHeader, tableRow, UNIT_Y_AXIS, writeReportFiles } from './report-format.js';
import { barChart, lineChart, type LineSeries } from './svg-plot.js';
import { better, fitValidationSplit, resolveOptions, scorerOf, trainLayer, type FitterKind, type LayerResult, type TrainOptions } from './train.js';
import type { Protocol } from './trial-config.js';

export interface ReportOptions extends Pick<TrainOptions, 'targetFpr' | 'positions' | 'protocols' | 'families' | 'l2' | 'validationFraction' | 'aggregators'> {
  /** Also fit difference-of-means probes (default true). */
  diffMeans?: boolean;
  progress?: (done: number, total: number, what: string) => void;
}

export interface LayerSummary {
  layer: number;
  kind: FitterKind;
  aggregator: LayerResult['aggregator'];
  threshold: number;
  validation: Figures;
  evaluation: EvalReport;
}

export interface ShiftRow {
  protocol: Protocol;
  injectionLayer: number;
  strength: number;
  trials: number;
  /** Differences taken per trial against the same prompt read clean (else against the clean trials' mean). */
  paired: boolean;
  /** Per lens layer: mean (logitYes − logitNo) of injected trials minus that of clean trials. */
  lensShift: number[];
  /** Direct readout: mean P(yes) − P(no) shift and mean logit-difference shift. */
  directShift: number;
  probabilityShift: number;
}

export interface DetectionRow {
  condition: string;
  protocol: Protocol | 'all';
  strength: number | null;
  trials: number;
  verbal: number;
  saidYes: number;
  probe: number;
}

export interface ReportData {
  dataset: {
    config: string;
    modelFingerprint: string;
    trials: number;
    planned: number;
    injectionLayers: number[];
    traceLayers: number[];
    strengthMode: string;
    strengths: number[];
    protocols: Protocol[];
    trainConcepts: string[];
    evalConcepts: string[];
    answer: { yes: string[]; no: string[] };
  };
  training: { targetFpr: number; positions: string; protocols: Protocol[]; families: string[]; fitTrials: number; validationTrials: number };
  layers: LayerSummary[];
  best: { layer: number; kind: FitterKind };
  logitShift: ShiftRow[];
  detection: DetectionRow[];
}

const mean = (xs: readonly number[]): number => (xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length);

/** The control conditions, in the order every table and chart shows them. */
const CONTROLS = ['none', 'random', 'unrelated-question', 'generation-only'] as const;

/** Compute everything the report shows. */
export function computeReport(ds: Dataset, o: ReportOptions = {}): ReportData {
  const m = ds.manifest;
  const cfg = m.config;
  const resolved = resolveOptions(ds, o);
  const split = fitValidationSplit(ds, resolved.selection, resolved.validationFraction);
  const kinds: FitterKind[] = o.diffMeans === false ? ['logistic'] : ['logistic', 'diff-means'];
  const cache = new TraceCache(ds, 0);
  const layers: LayerSummary[] = [];
  let step = 0;
  const total = kinds.length * m.traceLayers.length;
  let bestResult: LayerResult | null = null;
  for (const kind of kinds) {
    for (const layer of m.traceLayers) {
      const r = trainLayer(cache, layer, { ...resolved, kind }, split);
      layers.push({ layer, kind, aggregator: r.aggregator, threshold: r.threshold, validation: r.validation, evaluation: r.evaluation });
      if (kind === 'logistic' && (bestResult === null || better(r.validation, bestResult.validation))) bestResult = r;
      o.progress?.(++step, total, `${kind} layer ${layer}`);
    }
  }
  const best = bestResult!;

  // Probe detection per trial (eval split) at the best probe's threshold, for the detection table.
  const probeFired = new Map<number, boolean>();
  {
    // The scorer training set the threshold with (a hand-written dot product here summed in another order).
    // The model is over the concatenated rows of its hooks (two for update features).
    const d = m.dModel * best.hooks.length;
    const score = scorerOf(best.model, 'logistic', d);
    for (const r of ds.records) {
      if (r.split !== 'eval') continue;
      const sel = selectPositions(r, resolved.selection.positions);
      if (!sel) continue;
      const rows = cache.rows(r, best.hooks);
      const scores: number[] = [];
      for (let p = sel[0]; p < sel[1]; p++) scores.push(score(rows, p * d));
      probeFired.set(r.index, trialScore(scores, best.aggregator) > best.threshold);
    }
  }
  ds.close();

  return {
    dataset: {
      config: cfg.name,
      modelFingerprint: m.modelFingerprint,
      trials: ds.records.length,
      planned: m.plannedTrials,
      injectionLayers: m.injectionLayers,
      traceLayers: m.traceLayers,
      strengthMode: cfg.injection.strength.mode,
      strengths: cfg.injection.strength.values,
      protocols: cfg.injection.protocols,
      trainConcepts: m.split.trainConcepts,
      evalConcepts: m.split.evalConcepts,
      answer: cfg.answer,
    },
    training: { targetFpr: resolved.targetFpr, positions: resolved.selection.positions, protocols: [...resolved.selection.protocols], families: [...resolved.selection.families], fitTrials: split.fit.size, validationTrials: split.validation.size },
    layers,
    best: { layer: best.layer, kind: 'logistic' },
    logitShift: logitShift(ds.records, m.injectionLayers, cfg.injection.strength.values, cfg.injection.protocols, m.numLayers),
    detection: detectionRates(ds.records, cfg.injection.protocols, cfg.injection.strength.values, probeFired),
  };
}

function logitShift(records: readonly TrialRecord[], injLayers: number[], strengths: number[], protocols: Protocol[], numLayers: number): ShiftRow[] {
  const rows: ShiftRow[] = [];
  for (const protocol of protocols) {
    const clean = records.filter((r) => r.condition === 'none' && r.protocol === protocol);
    if (clean.length === 0) continue;
    const cleanLens = Array.from({ length: numLayers }, (_, l) => mean(clean.map((r) => r.lens.logitYes[l] - r.lens.logitNo[l])));
    const cleanDirect = mean(clean.map((r) => r.readout.logitYes - r.readout.logitNo));
    const cleanProb = mean(clean.map((r) => r.readout.pYes - r.readout.pNo));
    for (const layer of injLayers) {
      for (const strength of strengths) {
        const xs = records.filter((r) => r.condition === 'inject' && r.familyKind === 'concept' && r.protocol === protocol && r.layer === layer && r.strength === strength);
        if (xs.length === 0) continue;
        // Paired (each trial minus its own prompt read clean) when the dataset has it, else against the clean trials' mean.
        const paired = xs.every((r) => r.clean !== null && r.clean !== undefined);
        const diff = (r: TrialRecord, l: number) => r.lens.logitYes[l] - r.lens.logitNo[l] - (paired ? r.clean!.lens.logitYes[l] - r.clean!.lens.logitNo[l] : cleanLens[l]);
        rows.push({
          protocol,
          injectionLayer: layer,
          strength,
          trials: xs.length,
          paired,
          lensShift: Array.from({ length: numLayers }, (_, l) => mean(xs.map((r) => diff(r, l)))),
          directShift: mean(xs.map((r) => r.readout.logitYes - r.readout.logitNo - (paired ? r.clean!.readout.logitYes - r.clean!.readout.logitNo : cleanDirect))),
          probabilityShift: mean(xs.map((r) => r.readout.pYes - r.readout.pNo - (paired ? r.clean!.readout.pYes - r.clean!.readout.pNo : cleanProb))),
        });
      }
    }
  }
  return rows;
}

function detectionRates(records: readonly TrialRecord[], protocols: Protocol[], strengths: number[], fired: Map<number, boolean>): DetectionRow[] {
  const out: DetectionRow[] = [];
  const row = (condition: string, protocol: Protocol | 'all', strength: number | null, xs: TrialRecord[]) => {
    const ev = xs.filter((r) => fired.has(r.index));
    if (ev.length === 0) return;
    out.push({
      condition,
      protocol,
      strength,
      trials: ev.length,
      verbal: mean(ev.map((r) => (r.verbalized ? 1 : 0))),
      saidYes: mean(ev.map((r) => (r.saidYes ? 1 : 0))),
      probe: mean(ev.map((r) => (fired.get(r.index) ? 1 : 0))),
    });
  };
  for (const protocol of protocols) {
    for (const s of strengths) row('inject (held-out concepts)', protocol, s, records.filter((r) => r.condition === 'inject' && r.familyKind === 'concept' && r.protocol === protocol && r.strength === s));
  }
  for (const c of CONTROLS) row(c, 'all', null, records.filter((r) => r.condition === c));
  return out;
}

// ---- rendering --------------------------------------------------------------------------------

/** Short bar labels for the controls (the axis has room for about ten characters a bar group). */
const SHORT: Record<string, string> = { 'unrelated-question': 'unrel. q.', 'generation-only': 'gen. only' };

/** The SVG files of a report: name → text. */
export function renderCharts(d: ReportData): Map<string, string> {
  const files = new Map<string, string>();
  const logistic = d.layers.filter((l) => l.kind === 'logistic');
  const xTicks = d.dataset.traceLayers;
  const perStrength = (metric: 'auroc' | 'tpr_at_fpr_0.01' | 'tpr_at_fpr_0.05'): LineSeries[] =>
    d.dataset.protocols.flatMap((p) =>
      d.dataset.strengths.map((s) => ({
        name: `${p} ×${s}`,
        points: logistic.map((l): [number, number | null] => [l.layer, l.evaluation.byStrength.find((b) => b.protocol === p && b.strength === s)?.[metric] ?? null]),
      })),
    );
  const common = { xLabel: 'probe layer (resid_post)', xTicks, ...UNIT_Y_AXIS };
  files.set('auroc-per-layer.svg', lineChart({ title: 'Held-out concepts: AUROC per probe layer and strength', yLabel: 'AUROC', series: perStrength('auroc'), referenceLines: [{ y: 0.5, label: 'chance' }], ...common }));
  files.set('tpr1-per-layer.svg', lineChart({ title: 'Held-out concepts: TPR at 1% FPR per probe layer and strength', yLabel: 'TPR @ 1% FPR', series: perStrength('tpr_at_fpr_0.01'), ...common }));
  files.set('tpr5-per-layer.svg', lineChart({ title: 'Held-out concepts: TPR at 5% FPR per probe layer and strength', yLabel: 'TPR @ 5% FPR', series: perStrength('tpr_at_fpr_0.05'), ...common }));
  files.set(
    'controls-per-layer.svg',
    lineChart({
      title: `Controls: fraction flagged at the probe threshold (target FPR ${d.training.targetFpr})`,
      yLabel: 'flagged',
      series: CONTROLS.map((c) => ({ name: c, points: logistic.map((l): [number, number | null] => [l.layer, l.evaluation.controls[c]?.fpr ?? null]) })),
      referenceLines: [{ y: d.training.targetFpr, label: 'target' }],
      ...common,
    }),
  );
  files.set(
    'controls-auroc-per-layer.svg',
    lineChart({
      title: 'Controls: AUROC against clean trials',
      yLabel: 'AUROC vs none',
      series: CONTROLS.filter((c) => c !== 'none').map((c) => ({ name: c, points: logistic.map((l): [number, number | null] => [l.layer, l.evaluation.controls[c]?.aurocVsNone ?? null]) })),
      referenceLines: [{ y: 0.5, label: 'chance' }],
      ...common,
    }),
  );
  const lensLayers = Array.from({ length: d.dataset.traceLayers.length > 0 ? Math.max(...d.dataset.traceLayers) + 1 : 0 }, (_, i) => i);
  const topStrength = Math.max(...d.dataset.strengths);
  for (const p of d.dataset.protocols) {
    const series = d.logitShift
      .filter((r) => r.protocol === p && r.strength === topStrength)
      .map((r) => ({ name: `inject L${r.injectionLayer}`, points: r.lensShift.map((v, l): [number, number | null] => [l, v]) }));
    files.set(
      `logit-shift-${p}.svg`,
      lineChart({ title: `Logit lens: yes − no shift, ${p} ×${topStrength}`, xLabel: 'lens layer', yLabel: 'Δ(logit yes − logit no)', xTicks: lensLayers, series, referenceLines: [{ y: 0 }] }),
    );
  }
  const det = d.detection;
  files.set(
    'verbal-vs-probe.svg',
    barChart({
      title: 'Detection rate: verbal, yes-readout, probe (eval split; ITA = inject-then-ask)',
      categories: det.map((r) => (r.strength === null ? (SHORT[r.condition] ?? r.condition) : `${r.protocol === 'inject-then-ask' ? 'ITA' : 'cont.'} ×${r.strength}`)),
      series: [
        { name: 'verbalised', values: det.map((r) => r.verbal) },
        { name: 'P(yes) > P(no)', values: det.map((r) => r.saidYes) },
        { name: 'probe fired', values: det.map((r) => r.probe) },
      ],
      width: 900,
      ...UNIT_Y_AXIS,
    }),
  );
  return files;
}

export function renderMarkdown(d: ReportData): string {
  const L: string[] = [];
  const ds = d.dataset;
  const logistic = d.layers.filter((l) => l.kind === 'logistic');
  const diff = d.layers.filter((l) => l.kind === 'diff-means');
  const best = logistic.find((l) => l.layer === d.best.layer)!;
  L.push(`# Concept-injection probes: ${ds.config} trials`, '');
  L.push(
    `Model \`${ds.modelFingerprint}\`; ${ds.trials} of ${ds.planned} planned trials; injection layers ${ds.injectionLayers.join(', ')}; strengths ${ds.strengths.map((s) => `×${s}`).join(', ')} (${ds.strengthMode}${ds.strengthMode === 'relative' ? ' to the mean residual norm of the layer' : ''}); protocols ${ds.protocols.join(', ')}; answer tokens yes ${JSON.stringify(ds.answer.yes)}, no ${JSON.stringify(ds.answer.no)}.`,
    '',
    `Probes are trained on ${d.training.protocols.join(' + ')} trials of ${d.training.families.join(', ')} vectors, ${d.training.positions} positions, per-position rows (${d.training.fitTrials} fit trials, ${d.training.validationTrials} validation trials for the layer, aggregator and threshold), and evaluated on ${ds.evalConcepts.length} held-out concepts never seen in training: ${ds.evalConcepts.join(', ')}. Thresholds are set at ${d.training.targetFpr} FPR on validation clean trials. A trial's score is the maximum over its positions of the running aggregate (what the daemon alerts on).`,
    '',
  );
  L.push('## Held-out concepts, per probe layer (logistic)', '');
  L.push('![AUROC per layer](auroc-per-layer.svg)', '', '![TPR at 1% FPR](tpr1-per-layer.svg)', '', '![TPR at 5% FPR](tpr5-per-layer.svg)', '');
  L.push(...tableHeader(['probe layer', 'aggregator', 'AUROC', 'TPR@1%', 'TPR@5%', 'TPR at threshold', 'FPR at threshold (clean)', ...ds.protocols.map((p) => `AUROC ${p}`)]));
  for (const l of logistic) {
    const e = l.evaluation;
    L.push(tableRow([`${l.layer}${l.layer === d.best.layer ? ' (chosen)' : ''}`, aggregatorName(l.aggregator), fmt(e.auroc), fmt(e['tpr_at_fpr_0.01']), fmt(e['tpr_at_fpr_0.05']), fmt(e.tpr), fmt(e.fpr), ...ds.protocols.map((p) => fmt(e.byProtocol[p]?.auroc))]));
  }
  L.push('');
  for (const metric of ['auroc', 'tpr_at_fpr_0.01'] as const) {
    L.push(`### ${metric === 'auroc' ? 'AUROC' : 'TPR at 1% FPR'} per probe layer and strength (pooled over injection layers)`, '');
    const cols = ds.protocols.flatMap((p) => ds.strengths.map((s) => ({ p, s })));
    L.push(...tableHeader(['probe layer', ...cols.map((c) => `${c.p} ×${c.s}`)]));
    for (const l of logistic) L.push(tableRow([l.layer, ...cols.map((c) => fmt(l.evaluation.byStrength.find((b) => b.protocol === c.p && b.strength === c.s)?.[metric]))]));
    L.push('');
  }
  L.push(`## The chosen probe (layer ${best.layer}) per injection layer and strength`, '');
  L.push(`Aggregator ${aggregatorName(best.aggregator)}, threshold ${fmt(best.threshold, 4)}.`, '');
  L.push(...tableHeader(['protocol', 'injection layer', 'strength', 'positives', 'AUROC', 'TPR@1%', 'TPR@5%', 'TPR at threshold']));
  const cells = [...best.evaluation.cells].sort((a, b) => a.protocol.localeCompare(b.protocol) || a.layer - b.layer || a.strength - b.strength);
  for (const c of cells) L.push(tableRow([c.protocol, c.layer, `×${c.strength}`, c.positives, fmt(c.auroc), fmt(c['tpr_at_fpr_0.01']), fmt(c['tpr_at_fpr_0.05']), fmt(c.tprAtThreshold)]));
  L.push('');
  L.push('## Controls', '');
  L.push('![Controls flagged](controls-per-layer.svg)', '', '![Controls AUROC](controls-auroc-per-layer.svg)', '');
  L.push(
    '`none`: clean trials (the flagged fraction is the false-positive rate). `random`: a Gaussian direction of the same norm injected the same way. `unrelated-question`: a concept injected, then an unrelated yes/no question. `generation-only`: a concept injected only into generated tokens (the question positions are clean). For the injected controls a flag is not necessarily wrong: the numbers say how concept-specific the probe is.',
    '',
  );
  L.push(...tableHeader(['probe layer', ...CONTROLS.map((c) => `${c} flagged (AUROC vs none)`)]));
  for (const l of logistic) {
    const c = l.evaluation.controls;
    L.push(tableRow([l.layer, ...CONTROLS.map((k) => `${fmt(c[k]?.fpr)} (${k === 'none' ? 'n=' + (c[k]?.trials ?? 0) : fmt(c[k]?.aurocVsNone)})`)]));
  }
  L.push('');
  L.push('## Difference-of-means baseline', '');
  L.push(...tableHeader(['probe layer', 'AUROC', 'TPR@1%', 'TPR@5%', 'FPR at threshold']));
  for (const l of diff) L.push(tableRow([l.layer, fmt(l.evaluation.auroc), fmt(l.evaluation['tpr_at_fpr_0.01']), fmt(l.evaluation['tpr_at_fpr_0.05']), fmt(l.evaluation.fpr)]));
  L.push('');
  L.push('## Yes/no logit shift per layer (logit lens)', '');
  L.push(
    `Mean over concept-injected trials of (logit yes − logit no) minus the same for the trial's own prompt read without injection (paired; ${d.logitShift.every((r) => r.paired) ? 'all rows' : 'rows without a paired clean read use the mean of the clean trials instead'}), at the last prefix position through each layer (final RMSNorm, then the answer rows of lm_head). In inject-then-ask the layers at or below the injection layer are exactly unchanged: the question positions get no port input, and only layers above the injection read the perturbed cache.`,
    '',
  );
  for (const p of ds.protocols) L.push(`![Logit shift ${p}](logit-shift-${p}.svg)`, '');
  const lensLayers = d.logitShift[0]?.lensShift.length ?? 0;
  L.push(...tableHeader(['protocol', 'injection layer', 'strength', ...Array.from({ length: lensLayers }, (_, l) => `L${l}`), 'direct Δlogit', 'ΔP(yes)−ΔP(no)']));
  for (const r of d.logitShift) L.push(tableRow([r.protocol, r.injectionLayer, `×${r.strength}`, ...r.lensShift.map((v) => fmt(v, 2)), fmt(r.directShift, 2), fmt(r.probabilityShift, 3)]));
  L.push('');
  L.push('## Verbal vs probe detection', '');
  L.push('![Verbal vs probe](verbal-vs-probe.svg)', '');
  L.push(`Eval split. verbalised: the generated text contains a configured phrase or the concept word; P(yes) > P(no): the readout after the answer prefix; probe: the chosen probe (layer ${best.layer}) fires.`, '');
  L.push(...tableHeader(['condition', 'protocol', 'strength', 'trials', 'verbalised', 'P(yes) > P(no)', 'probe fired']));
  for (const r of d.detection) L.push(tableRow([r.condition, r.protocol, r.strength === null ? '–' : `×${r.strength}`, r.trials, fmt(r.verbal), fmt(r.saidYes), fmt(r.probe)]));
  L.push('');
  return markdownText(L);
}

/** Compute and write report.md, report.json and the charts into `outDir`. */
export function writeReport(ds: Dataset, outDir: string, o: ReportOptions = {}): ReportData {
  const data = computeReport(ds, o);
  writeReportFiles(outDir, renderCharts(data), renderMarkdown(data), data);
  return data;
}
