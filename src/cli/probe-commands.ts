/** `latentwatch concepts | trials | train-probe | eval-probe | report`: the offline probe pipeline. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Engine } from '../engine/engine.js';
import { lwError } from '../errors.js';
import { PRECISIONS, type Precision } from '../model/graph.js';
import { computeConceptVectors, ConceptStore, writeConceptVectors } from '../probes/concepts.js';
import { Dataset } from '../probes/dataset.js';
import { evaluateProbeFile, type EvalReport } from '../probes/eval.js';
import { writeProbeFile } from '../probes/probe-file.js';
import { writeReport } from '../probes/report.js';
import { trainProbe, type FitterKind } from '../probes/train.js';
import { loadTrialConfig, PROTOCOLS, type PositionSet, type Protocol, type TrialConfig } from '../probes/trial-config.js';
import { runTrials } from '../probes/trials.js';
import { num, parse, progressBar, type Command } from './args.js';

const engineOptions = {
  model: { type: 'string' },
  config: { type: 'string' },
  out: { type: 'string' },
  precision: { type: 'string' },
  'cache-dir': { type: 'string' },
  threads: { type: 'string' },
} as const;

function precision(v: string | undefined): Precision {
  const p = (v ?? 'fp32') as Precision;
  if (!PRECISIONS.includes(p)) throw lwError('LW_ERR_CLI_USAGE', `--precision must be one of ${PRECISIONS.join('|')} (got ${v})`);
  return p;
}

function required<T>(v: T | undefined, name: string): T {
  if (v === undefined) throw lwError('LW_ERR_CLI_USAGE', `--${name} is required`);
  return v;
}

async function loadEngine(v: { model?: string; precision?: string; 'cache-dir'?: string; threads?: string }): Promise<Engine> {
  return Engine.load(required(v.model, 'model'), {
    precision: precision(v.precision),
    taps: 'all',
    ports: 'all',
    cacheDir: v['cache-dir'],
    threads: num(v.threads, 'threads'),
    progress: progressBar('build'),
  });
}

async function conceptVectors(engine: Engine, config: TrialConfig, outDir: string): Promise<ConceptStore> {
  const vectors = await computeConceptVectors(engine, {
    template: config.vectors.template,
    chat: config.chat,
    concepts: config.vectors.words.concepts,
    baseline: config.vectors.words.baseline,
    contrast: config.vectors.contrast,
    progress: progressBar('concepts'),
  });
  writeConceptVectors(outDir, vectors);
  return ConceptStore.open(outDir, engine.fingerprint);
}

function list<T extends string>(v: string | undefined, name: string, allowed?: readonly T[]): T[] | undefined {
  if (v === undefined) return undefined;
  const xs = v.split(',').map((s) => s.trim()).filter((s) => s !== '') as T[];
  if (xs.length === 0) throw lwError('LW_ERR_CLI_USAGE', `--${name} needs at least one value`);
  if (allowed) for (const x of xs) if (!allowed.includes(x)) throw lwError('LW_ERR_CLI_USAGE', `--${name}: ${x} is not one of ${allowed.join(', ')}`);
  return xs;
}

function positionsOpt(v: string | undefined): PositionSet | undefined {
  if (v === undefined) return undefined;
  if (v !== 'watch' && v !== 'after' && v !== 'inside') throw lwError('LW_ERR_CLI_USAGE', `--positions must be watch, after or inside (got ${v})`);
  return v;
}

const out = (x: unknown) => process.stdout.write(`${JSON.stringify(x, null, 2)}\n`);

export const conceptsCommand: Command = {
  name: 'concepts',
  summary: 'compute concept vectors and contrast-pair directions for a model',
  usage: `
latentwatch concepts --model DIR --config FILE --out DIR [--precision P] [--cache-dir DIR] [--threads N]
  Runs the concept prompts of the trial config (vectors.template over vectors.words, and the
  contrast pairs) and writes DIR/concepts.json + DIR/concepts.safetensors: per concept and layer
  the last-token residual minus the baseline mean, the contrast directions, and each layer's mean
  residual norm, bound to the model's fingerprint. The daemon resolves concept names from here.`,
  async run(argv) {
    const v = parse(argv, engineOptions, this.usage);
    const config = loadTrialConfig(required(v.config, 'config'));
    const outDir = required(v.out, 'out');
    const engine = await loadEngine(v);
    try {
      const t0 = performance.now();
      const store = await conceptVectors(engine, config, outDir);
      out({ out: outDir, modelFingerprint: store.modelFingerprint, concepts: store.names('concept').length, contrast: store.names('contrast'), layers: store.numLayers, meanResidNorm: store.manifest.meanResidNorm, seconds: (performance.now() - t0) / 1000 });
    } finally {
      await engine.close();
    }
  },
};

export const trialsCommand: Command = {
  name: 'trials',
  summary: 'run concept-injection trials and controls into a resumable dataset',
  usage: `
latentwatch trials --model DIR --config FILE --out DIR [--concepts DIR] [--limit N]
                   [--precision P] [--cache-dir DIR] [--threads N]
  Runs every trial the config plans (protocols × vector families × layers × strengths, and the
  controls) and streams them to DIR: dataset.json, index.jsonl, shards/*.bin, concepts/.
  Re-running with the same config and model skips finished trials; a different config or model
  in DIR is refused (LW_ERR_TRIALS_DATASET_CONFLICT). --concepts uses existing concept vectors
  instead of computing them into DIR/concepts. --limit stops after N new trials.
  Prints {"planned", "skipped", "ran", "seconds", "trialsPerMinute"}.`,
  async run(argv) {
    const v = parse(argv, { ...engineOptions, concepts: { type: 'string' }, limit: { type: 'string' } }, this.usage);
    const config = loadTrialConfig(required(v.config, 'config'));
    const outDir = required(v.out, 'out');
    const limit = num(v.limit, 'limit');
    if (limit !== undefined && (!Number.isInteger(limit) || limit < 0)) throw lwError('LW_ERR_CLI_USAGE', '--limit must be a non-negative integer');
    const engine = await loadEngine(v);
    try {
      const store = v.concepts !== undefined ? ConceptStore.open(v.concepts, engine.fingerprint) : await conceptVectors(engine, config, join(outDir, 'concepts'));
      const summary = await runTrials({ engine, config, store, outDir, limit, progress: progressBar('trials') });
      out(summary);
    } finally {
      await engine.close();
    }
  },
};

export const trainProbeCommand: Command = {
  name: 'train-probe',
  summary: 'train a linear probe on a trial dataset and write a *.probe.json',
  usage: `
latentwatch train-probe --data DIR --out FILE.probe.json [--layer L|best] [--target-fpr F]
                        [--kind logistic|diff-means] [--positions watch|after|inside]
                        [--protocols inject-then-ask,continuous] [--families concept]
                        [--id ID] [--label TEXT]
  Fits per layer on the training concepts, picks the layer (best: highest validation TPR at 1% FPR,
  then AUROC) and the aggregator on validation concepts, sets the threshold at the target FPR on
  validation clean trials, and evaluates on the held-out concepts. Defaults come from the
  dataset's config (training section). Prints the chosen layer and its figures.`,
  async run(argv) {
    const v = parse(
      argv,
      {
        data: { type: 'string' },
        out: { type: 'string' },
        layer: { type: 'string' },
        'target-fpr': { type: 'string' },
        kind: { type: 'string' },
        positions: { type: 'string' },
        protocols: { type: 'string' },
        families: { type: 'string' },
        id: { type: 'string' },
        label: { type: 'string' },
      },
      this.usage,
    );
    const data = required(v.data, 'data');
    const file = required(v.out, 'out');
    const layer = v.layer === undefined || v.layer === 'best' ? 'best' : num(v.layer, 'layer');
    if (layer !== 'best' && (layer === undefined || !Number.isInteger(layer) || layer < 0)) throw lwError('LW_ERR_CLI_USAGE', `--layer must be a layer index or best (got ${v.layer})`);
    const kind = (v.kind ?? 'logistic') as FitterKind;
    if (kind !== 'logistic' && kind !== 'diff-means') throw lwError('LW_ERR_CLI_USAGE', `--kind must be logistic or diff-means (got ${v.kind})`);
    const ds = Dataset.open(data);
    const r = trainProbe(ds, {
      layer: layer as number | 'best',
      kind,
      targetFpr: num(v['target-fpr'], 'target-fpr'),
      positions: positionsOpt(v.positions),
      protocols: list<Protocol>(v.protocols, 'protocols', PROTOCOLS),
      families: list(v.families, 'families'),
      id: v.id,
      label: v.label,
    });
    await writeProbeFile(file, r.probe);
    out({
      out: file,
      id: r.probe.id,
      hook: r.probe.hook,
      layer: r.chosen.layer,
      kind: r.probe.kind,
      aggregator: r.chosen.aggregator,
      threshold: r.chosen.threshold,
      targetFpr: r.probe.targetFpr,
      validation: r.chosen.validation,
      evaluation: r.probe.evaluation,
      layers: r.layers.map((l) => ({ layer: l.layer, aggregator: l.aggregator, validation: l.validation, heldOut: { auroc: l.evaluation.auroc, 'tpr_at_fpr_0.01': l.evaluation['tpr_at_fpr_0.01'] } })),
      seconds: r.seconds,
    });
  },
};

function evalTable(e: EvalReport): string {
  const f = (x: number | null | undefined) => (x === null || x === undefined ? '–' : x.toFixed(3));
  const lines = [
    `probe ${e.probe} (${e.kind}, ${JSON.stringify(e.hook)}), threshold ${e.threshold} at target FPR ${e.targetFpr}, aggregator ${JSON.stringify(e.aggregator)}, ${e.positions} positions`,
    `held-out concepts (${e.heldOutConcepts.length}): ${e.positives} positive and ${e.negatives} clean trials`,
    `  AUROC ${f(e.auroc)}   TPR@1%FPR ${f(e['tpr_at_fpr_0.01'])}   TPR@5%FPR ${f(e['tpr_at_fpr_0.05'])}   at threshold: TPR ${f(e.tpr)} FPR ${f(e.fpr)}`,
    'controls (fraction flagged at the threshold; AUROC against clean):',
    ...Object.entries(e.controls).map(([k, c]) => `  ${k.padEnd(20)} ${f(c.fpr)}  (n=${c.trials}${c.aurocVsNone === null ? '' : `, AUROC ${f(c.aurocVsNone)}`})`),
    'per protocol, injection layer and strength: AUROC / TPR@1%FPR / TPR at threshold',
    ...[...e.cells]
      .sort((a, b) => a.protocol.localeCompare(b.protocol) || a.layer - b.layer || a.strength - b.strength)
      .map((c) => `  ${c.protocol.padEnd(16)} L${c.layer} ×${c.strength}`.padEnd(32) + ` ${f(c.auroc)} / ${f(c['tpr_at_fpr_0.01'])} / ${f(c.tprAtThreshold)}  (n=${c.positives})`),
  ];
  if (e.overlapWithTraining.length > 0) lines.push(`WARNING: the probe was trained on held-out concepts ${e.overlapWithTraining.join(', ')}; they are excluded`);
  return `${lines.join('\n')}\n`;
}

export const evalProbeCommand: Command = {
  name: 'eval-probe',
  summary: 'evaluate a probe on the held-out concepts and controls of a trial dataset',
  usage: `
latentwatch eval-probe --probe FILE --data DIR [--json] [--positions watch|after|inside]
                       [--protocols inject-then-ask,continuous] [--families concept]
  Scores the dataset's eval split (concepts never used in training, clean trials, controls). A probe
  made for another model is refused (LW_ERR_PROBE_MODEL_MISMATCH). --json prints auroc,
  tpr_at_fpr_0.01, tpr_at_fpr_0.05, fpr and fpr_on_controls (none, random, unrelated-question,
  generation-only), per-protocol and per-cell figures.`,
  async run(argv) {
    const v = parse(argv, { probe: { type: 'string' }, data: { type: 'string' }, json: { type: 'boolean' }, positions: { type: 'string' }, protocols: { type: 'string' }, families: { type: 'string' } }, this.usage);
    const ds = Dataset.open(required(v.data, 'data'));
    try {
      const e = await evaluateProbeFile(required(v.probe, 'probe'), ds, { positions: positionsOpt(v.positions), protocols: list<Protocol>(v.protocols, 'protocols', PROTOCOLS), families: list(v.families, 'families') });
      if (v.json) out(e);
      else process.stdout.write(evalTable(e));
    } finally {
      ds.close();
    }
  },
};

export const reportCommand: Command = {
  name: 'report',
  summary: 'write report.md, report.json and SVG charts for a trial dataset',
  usage: `
latentwatch report --data DIR --out DIR [--no-diff-means]
  Trains logistic and difference-of-means probes at every traced layer (the dataset's training
  settings) and reports on held-out concepts: AUROC and TPR at 1%/5% FPR per layer and strength,
  the chosen probe per injection layer and strength, each control, the yes/no logit shift per
  layer (logit lens), and verbal vs probe detection.`,
  async run(argv) {
    const v = parse(argv, { data: { type: 'string' }, out: { type: 'string' }, 'no-diff-means': { type: 'boolean' } }, this.usage);
    const data = required(v.data, 'data');
    if (!existsSync(data)) throw lwError('LW_ERR_TRIALS_DATASET_NOT_FOUND', data);
    const outDir = required(v.out, 'out');
    const t0 = performance.now();
    const r = writeReport(Dataset.open(data), outDir, { diffMeans: !v['no-diff-means'], progress: progressBar('report') });
    const best = r.layers.find((l) => l.kind === 'logistic' && l.layer === r.best.layer)!;
    out({ out: outDir, files: ['report.md', 'report.json'], bestLayer: r.best.layer, heldOut: { auroc: best.evaluation.auroc, 'tpr_at_fpr_0.01': best.evaluation['tpr_at_fpr_0.01'] }, seconds: (performance.now() - t0) / 1000 });
  },
};

export const probeCommands: Command[] = [conceptsCommand, trialsCommand, trainProbeCommand, evalProbeCommand, reportCommand];
