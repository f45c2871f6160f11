/**
 * The trained linear (concept-injection) probe on held-out concepts (issue 12): trains candidate
 * settings of `train-probe` on one trial dataset in process (the same trainProbe and
 * trainConceptMatch the CLI runs) and
 * reports their held-out figures per strength pooled over protocols and injection layers (what
 * `eval-probe` prints first), the controls flagged at each probe's own threshold, and, per layer,
 * how the held-out concepts' directions relate to the training concepts' (lab/concepts.ts
 * heldOutAlignment): a linear score can only catch what those directions share.
 *
 *   npx tsx bench/linear-probe.ts --data DIR --out-dir docs/reports/linear-probe/MODEL
 *                                 [--candidates logistic,update-all,all-positions,update-all-positions,concept-match,concept-match-watch]
 *
 * DIR is a `latentwatch trials` dataset (configs/trials/base.json); its concepts/ folder holds the
 * vectors the trials injected. Writes report.md, report.json and SVG charts into --out-dir.
 */
import { join } from 'node:path';
import { Dataset } from '../src/lab/dataset.js';
import { heldOutAlignment, type HeldOutAlignment } from '../src/lab/concepts.js';
import { trainConceptMatch, type ConceptMatchOptions } from '../src/lab/concept-match.js';
import { trainProbe, type TrainOptions } from '../src/lab/train.js';
import { parseResidPost } from '../src/hooks.js';
import { hookList } from '../src/probes/probe-file.js';
import type { EvalReport } from '../src/lab/eval.js';
import { barChart, lineChart } from '../src/lab/svg-plot.js';
import { fmt, UNIT_Y_AXIS, writeReportFiles } from '../src/lab/report-format.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { markdownTable, parseArgs, runIfMain } from './lib/report.js';

interface Candidate {
  name: string;
  /** The train-probe options that give it. */
  cli: string;
  train: (ds: Dataset, traced: number[]) => Trained;
}

interface Trained {
  features: string;
  seconds: number;
  evaluation: EvalReport;
}

/** A linear probe (train.ts) with these options. */
function linear(options: (traced: number[]) => TrainOptions): Candidate['train'] {
  return (ds, traced) => {
    const r = trainProbe(ds, options(traced));
    const f = r.chosen.features;
    return { features: `${f.input} ${span(f.layers)}`, seconds: r.seconds, evaluation: r.chosen.evaluation };
  };
}

/** The concept-match probe (concept-match.ts): one linear probe per stored concept, made from its vector. */
function conceptMatch(options: ConceptMatchOptions): Candidate['train'] {
  return (ds) => {
    const r = trainConceptMatch(ds, options);
    const layers = r.probe.kind === 'ensemble-max' ? r.probe.members.map((x) => parseResidPost(hookList(x.hook).at(-1)!)) : [];
    return { features: `update ${span(layers)}, window ${r.window}`, seconds: r.seconds, evaluation: r.evaluation };
  };
}

const span = (layers: readonly number[]) => (layers.length === 1 ? `L${layers[0]}` : `L${layers[0]}–${layers[layers.length - 1]}`);

const CANDIDATES: Candidate[] = [
  { name: 'logistic', cli: '--kind logistic', train: linear(() => ({})) },
  { name: 'update-all', cli: '--kind logistic --input update --layer all', train: linear((traced) => ({ input: 'update', layer: traced })) },
  { name: 'all-positions', cli: '--kind logistic --positions all', train: linear(() => ({ positions: 'all' })) },
  { name: 'update-all-positions', cli: '--kind logistic --input update --layer all --positions all', train: linear((traced) => ({ input: 'update', layer: traced, positions: 'all' })) },
  { name: 'concept-match', cli: '', train: conceptMatch({}) },
  { name: 'concept-match-watch', cli: '--positions watch', train: conceptMatch({ positions: 'watch' }) },
];

interface CandidateResult {
  name: string;
  cli: string;
  features: string;
  seconds: number;
  evaluation: Pick<EvalReport, 'auroc' | 'tpr_at_fpr_0.01' | 'fpr_on_controls' | 'pooledByStrength' | 'byProtocol' | 'positions' | 'threshold' | 'aggregator'>;
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['data', 'out-dir', 'candidates']);
  const dataDir = a.get('data');
  const outDir = a.get('out-dir');
  if (!dataDir || !outDir) throw new Error('usage: bench/linear-probe.ts --data DIR --out-dir DIR [--candidates a,b]');
  const wanted = (a.get('candidates') ?? CANDIDATES.map((c) => c.name).join(',')).split(',');
  const candidates = wanted.map((n) => {
    const c = CANDIDATES.find((x) => x.name === n);
    if (!c) throw new Error(`unknown candidate ${n} (known: ${CANDIDATES.map((x) => x.name).join(', ')})`);
    return c;
  });

  const ds0 = Dataset.open(dataDir);
  const m = ds0.manifest;
  const store = ConceptStore.open(join(dataDir, 'concepts'), m.modelFingerprint);
  const alignment: HeldOutAlignment[] = [];
  for (let l = 0; l < m.numLayers; l++) {
    alignment.push(heldOutAlignment(l, m.split.trainConcepts.map((w) => store.vector(w, l, 'concept')), m.split.evalConcepts.map((w) => store.vector(w, l, 'concept'))));
  }
  ds0.close();

  const results: CandidateResult[] = [];
  for (const c of candidates) {
    const ds = Dataset.open(dataDir); // training closes it
    const r = c.train(ds, m.traceLayers);
    const e = r.evaluation;
    results.push({
      name: c.name,
      cli: c.cli,
      features: r.features,
      seconds: r.seconds,
      evaluation: { auroc: e.auroc, 'tpr_at_fpr_0.01': e['tpr_at_fpr_0.01'], fpr_on_controls: e.fpr_on_controls, pooledByStrength: e.pooledByStrength, byProtocol: e.byProtocol, positions: e.positions, threshold: e.threshold, aggregator: e.aggregator },
    });
    console.error(`${c.name}: ${results.at(-1)!.features}, ${r.seconds.toFixed(0)} s`);
  }

  const strengths = [...new Set(results.flatMap((r) => r.evaluation.pooledByStrength.map((b) => b.strength)))].sort((x, y) => x - y);
  const at = (r: CandidateResult, s: number) => r.evaluation.pooledByStrength.find((b) => b.strength === s);
  const controls = ['none', 'random', 'unrelated-question', 'generation-only'];
  const charts = new Map<string, string>();
  charts.set(
    'alignment.svg',
    lineChart({
      title: `Held-out concept directions vs the ${m.split.trainConcepts.length} training concepts`,
      xLabel: 'layer',
      yLabel: 'cosine / share of norm',
      ...UNIT_Y_AXIS,
      xTicks: alignment.map((x) => x.layer),
      series: [
        { name: 'cos with train mean', points: alignment.map((x) => [x.layer, x.cosWithTrainMean.mean] as const) },
        { name: 'cos, mean + 2 sd', points: alignment.map((x) => [x.layer, x.cosWithTrainMean.mean + 2 * x.cosWithTrainMean.std] as const) },
        { name: 'random: 2/√d', points: alignment.map((x) => [x.layer, 2 * x.randomCosSpread] as const) },
        { name: 'in training span', points: alignment.map((x) => [x.layer, x.inTrainSpan] as const) },
        { name: 'random in span', points: alignment.map((x) => [x.layer, x.randomInSpan] as const) },
      ],
    }),
  );
  for (const [file, key, label] of [
    ['auroc-by-strength.svg', 'auroc', 'AUROC'],
    ['tpr1-by-strength.svg', 'tpr_at_fpr_0.01', 'TPR at 1% FPR'],
  ] as const) {
    charts.set(
      file,
      barChart({
        title: `${label} on held-out concepts, pooled over protocols and layers`,
        yLabel: label,
        ...UNIT_Y_AXIS,
        categories: strengths.map((s) => `×${s}`),
        series: results.map((r) => ({ name: r.name, values: strengths.map((s) => at(r, s)?.[key] ?? null) })),
        referenceLines: key === 'auroc' ? [{ y: 0.99, label: 'goal 0.99' }] : [{ y: 0.9, label: 'goal 0.90' }],
      }),
    );
  }
  charts.set(
    'controls.svg',
    barChart({
      title: "Controls flagged at each probe's own threshold",
      yLabel: 'fraction flagged',
      ...UNIT_Y_AXIS,
      categories: controls,
      series: results.map((r) => ({ name: r.name, values: controls.map((c) => r.evaluation.fpr_on_controls[c] ?? null) })),
      referenceLines: [{ y: 0.05, label: 'goal 5%' }],
    }),
  );

  const md = [
    `# Linear probe on held-out concepts: ${dataDir}`,
    '',
    `Model fingerprint ${m.modelFingerprint} (${m.numLayers} layers, d ${m.dModel}); trial config "${m.config.name}"; ${m.split.evalConcepts.length} held-out concepts, ${m.split.trainConcepts.length} training concepts.`,
    `Reproduce: \`npx tsx bench/linear-probe.ts --data ${dataDir} --out-dir ${outDir}\` (each row is also \`latentwatch train-probe --data ${dataDir} --out P.probe.json OPTIONS\` then \`latentwatch eval-probe --probe P.probe.json --data ${dataDir}\`).`,
    '',
    '## Held-out figures per strength (pooled over protocols and injection layers, against every eval clean trial)',
    '',
    markdownTable(
      ['candidate', 'train-probe options', 'chosen features', 'positions', ...strengths.map((s) => `×${s} AUROC / TPR@1%`), ...controls.map((c) => `${c} flagged`), 'seconds'],
      results.map((r) => [
        r.name,
        r.cli === '' ? '(none)' : `\`${r.cli}\``,
        r.features,
        r.evaluation.positions,
        ...strengths.map((s) => `${fmt(at(r, s)?.auroc)} / ${fmt(at(r, s)?.['tpr_at_fpr_0.01'])}`),
        ...controls.map((c) => fmt(r.evaluation.fpr_on_controls[c])),
        r.seconds.toFixed(0),
      ]),
    ),
    '',
    '![AUROC](auroc-by-strength.svg) ![TPR](tpr1-by-strength.svg) ![controls](controls.svg)',
    '',
    '## Why: held-out concept directions per layer',
    '',
    'A linear probe w scores an injection of unit direction u at strength s by s·(w·u), whatever it was trained on; a held-out concept is only caught through what its direction shares with the training concepts.',
    '',
    markdownTable(
      ['layer', 'cos with train mean: mean ± sd', 'min … max', 'random: sd 1/√d', 'mean |cos| between training concepts', 'norm share in training span', 'random in span'],
      alignment.map((x) => [
        x.layer,
        `${fmt(x.cosWithTrainMean.mean)} ± ${fmt(x.cosWithTrainMean.std)}`,
        `${fmt(x.cosWithTrainMean.min)} … ${fmt(x.cosWithTrainMean.max)}`,
        fmt(x.randomCosSpread),
        fmt(x.meanAbsPairCos),
        fmt(x.inTrainSpan),
        fmt(x.randomInSpan),
      ]),
    ),
    '',
    '![alignment](alignment.svg)',
    '',
  ].join('\n');
  writeReportFiles(outDir, charts, md, { data: dataDir, modelFingerprint: m.modelFingerprint, alignment, candidates: results });
  console.log(md);
}

runIfMain(import.meta.url, main);
