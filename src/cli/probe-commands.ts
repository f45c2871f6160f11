/** `latentwatch concepts | trials | train-probe | eval-probe | report`: the offline probe pipeline. */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Engine } from '../engine/engine.js';
import { lwError } from '../errors.js';
import { PRECISIONS, type Precision } from '../model/graph.js';
import { computeConceptVectors, writeConceptVectors } from '../lab/concepts.js';
import { ConceptStore } from '../probes/concept-store.js';
import { Dataset } from '../lab/dataset.js';
import { evaluateProbeFile, type EvalReport } from '../lab/eval.js';
import { corpusRequests, loadCorpora, loadCorpus, runCorpus, type Corpus } from '../lab/corpus.js';
import { corpusSeq, DEFAULT_GENERIC_WINDOW, detectorTokenScores, fitAnomalyDetector, GENERIC_ID, GENERIC_LABEL, GENERIC_SKIP, MemberScoreCache, recalibrateProbe, requestScore, splitClean, trialSeq, withMeta, type Seq } from '../lab/generic.js';
import { writeGenericReport } from '../lab/generic-report.js';
import { loadProbe } from '../probes/probe.js';
import { readProbeFile, writeProbeFile } from '../probes/probe-file.js';
import { fprAtThreshold } from '../lab/metrics.js';
import { writeReport } from '../lab/report.js';
import { trainConceptMatch } from '../lab/concept-match.js';
import { trainProbe, type FeatureInput, type FitterKind } from '../lab/train.js';
import { loadTrialConfig, PROTOCOLS, readWordList, withHeldOutWords, type PositionSet, type Protocol, type TrialConfig } from '../lab/trial-config.js';
import { runTrials, TrialTokens } from '../lab/trials.js';
import { DEFAULT_CORPUS } from '../paths.js';
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

async function loadEngine(v: { model?: string; precision?: string; 'cache-dir'?: string; threads?: string }, extra: { maxBatch?: number } = {}): Promise<Engine> {
  return Engine.load(required(v.model, 'model'), {
    precision: precision(v.precision),
    taps: 'all',
    ports: 'all',
    cacheDir: v['cache-dir'],
    threads: num(v.threads, 'threads'),
    progress: progressBar('build'),
    ...extra,
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
  if (v !== 'watch' && v !== 'after' && v !== 'inside' && v !== 'all') throw lwError('LW_ERR_CLI_USAGE', `--positions must be watch, after, inside or all (got ${v})`);
  return v;
}

const out = (x: unknown) => process.stdout.write(`${JSON.stringify(x, null, 2)}\n`);

export const conceptsCommand: Command = {
  name: 'concepts',
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
  usage: `
latentwatch trials --model DIR --config FILE --out DIR [--concepts DIR] [--limit N] [--words FILE]
                   [--precision P] [--cache-dir DIR] [--threads N]
  Runs every trial the config plans (protocols × vector families × layers × strengths, and the
  controls) and streams them to DIR: dataset.json, index.jsonl, shards/*.bin, concepts/.
  Re-running with the same config and model skips finished trials; a different config or model
  in DIR is refused (LW_ERR_TRIALS_DATASET_CONFLICT). --concepts uses existing concept vectors
  instead of computing them into DIR/concepts. --limit stops after N new trials.
  --words FILE (one word per line, or a JSON list; relative to the current directory) tests new
  concept words without editing the config: they are added to the concept words and are exactly
  the held-out concepts (used only for evaluation; every configured concept trains).
  Prints {"planned", "skipped", "ran", "seconds", "trialsPerMinute"}.`,
  async run(argv) {
    const v = parse(argv, { ...engineOptions, concepts: { type: 'string' }, limit: { type: 'string' }, words: { type: 'string' } }, this.usage);
    const loaded = loadTrialConfig(required(v.config, 'config'));
    const config = v.words !== undefined ? withHeldOutWords(loaded, readWordList(v.words)) : loaded;
    const outDir = required(v.out, 'out');
    const limit = num(v.limit, 'limit');
    if (limit !== undefined && (!Number.isInteger(limit) || limit < 0)) throw lwError('LW_ERR_CLI_USAGE', '--limit must be a non-negative integer');
    const engine = await loadEngine(v);
    try {
      const store = v.concepts !== undefined ? ConceptStore.open(v.concepts, engine.fingerprint) : await conceptVectors(engine, config, join(outDir, 'concepts'));
      const have = new Set(store.names('concept').map((n) => n.toLowerCase()));
      const missing = config.vectors.words.concepts.filter((w) => !have.has(w.toLowerCase()));
      if (missing.length > 0) throw lwError('LW_ERR_CLI_USAGE', `--concepts ${v.concepts} has no vectors for ${missing.join(', ')} (leave --concepts out to compute them)`);
      const summary = await runTrials({ engine, config, store, outDir, limit, progress: progressBar('trials') });
      out(summary);
    } finally {
      await engine.close();
    }
  },
};

export const trainProbeCommand: Command = {
  name: 'train-probe',
  usage: `
latentwatch train-probe --data DIR --out FILE.probe.json [--kind concept-match|logistic|diff-means] [--target-fpr F]
                        [--layer L|best|L,L,...|all] [--positions watch|after|inside|all]
                        [--protocols inject-then-ask,continuous] [--families concept]
                        [--windows W,W,...] [--concepts DIR] [--input resid|update] [--l2 X] [--id ID] [--label TEXT]
  Trains on the training concepts' trials, chooses on the validation concepts (a seeded share of
  the training ones), sets the threshold at the target FPR on validation clean trials, and
  evaluates on the held-out concepts, whose trials it never reads. Defaults come from the
  dataset's config (training section). Prints the figures; the probe file records its positions,
  which eval-probe then reads.
  --kind concept-match (the default): no weights are learned per concept, so concepts never seen
  in a trial are detected. Per layer, the update (resid_post L − resid_post L−1) is whitened by
  the clean trials' Gaussian and scored by its largest cosine with the stored concept vectors of
  that layer (--concepts DIR, default the dataset's concepts/). --layer L,L,... or all picks the
  layers (default: from layer 2 on; earlier concept vectors are their word's token, matched by
  any mention of it), --windows the window sizes the validation concepts choose from (default
  1,4,8). Reads every stored position by default (--positions all); the threshold also holds the
  training split's random-direction controls to the target rate.
  --kind logistic|diff-means: one linear probe per layer (L2 logistic regression on standardised
  inputs, or the difference-of-means direction); --layer best (the default) keeps the layer with
  the best validation TPR at 1% FPR, then AUROC; L,L,... or all fits one probe on the
  concatenation of those layers' features; --input update reads what each layer adds, resid (the
  default) resid_post L; positions default to the config's (watch). Held-out concepts are caught
  only partly: their directions are nearly orthogonal to the trained ones.
  docs/trials.md.`,
  async run(argv) {
    const v = parse(
      argv,
      {
        data: { type: 'string' },
        out: { type: 'string' },
        layer: { type: 'string' },
        'target-fpr': { type: 'string' },
        input: { type: 'string' },
        l2: { type: 'string' },
        kind: { type: 'string' },
        positions: { type: 'string' },
        protocols: { type: 'string' },
        families: { type: 'string' },
        windows: { type: 'string' },
        concepts: { type: 'string' },
        id: { type: 'string' },
        label: { type: 'string' },
      },
      this.usage,
    );
    const data = required(v.data, 'data');
    const file = required(v.out, 'out');
    const ds = Dataset.open(data);
    const layer = layerOpt(v.layer, ds.manifest.traceLayers);
    if (v.input !== undefined && v.input !== 'resid' && v.input !== 'update') throw lwError('LW_ERR_CLI_USAGE', `--input must be resid or update (got ${v.input})`);
    const common = {
      targetFpr: num(v['target-fpr'], 'target-fpr'),
      positions: positionsOpt(v.positions),
      protocols: list<Protocol>(v.protocols, 'protocols', PROTOCOLS),
      families: list(v.families, 'families'),
      id: v.id,
      label: v.label,
    };
    if ((v.kind ?? 'concept-match') === 'concept-match') {
      if (v.input !== undefined || v.l2 !== undefined || layer === 'best') throw lwError('LW_ERR_CLI_USAGE', '--input, --l2 and --layer best apply to --kind logistic|diff-means (concept-match, the default, reads updates and fits no weights)');
      const windows = v.windows === undefined ? undefined : v.windows.split(',').map((x) => Number(x.trim()));
      if (windows?.some((w) => !Number.isInteger(w) || w < 1)) throw lwError('LW_ERR_CLI_USAGE', `--windows must be positive integers, e.g. 1,4,8 (got ${v.windows})`);
      const r = trainConceptMatch(ds, { ...common, layers: layer === undefined ? undefined : typeof layer === 'number' ? [layer] : layer, windows, concepts: v.concepts });
      await writeProbeFile(file, r.probe);
      out({ out: file, id: r.probe.id, hook: r.probe.hook, kind: r.probe.kind, window: r.window, threshold: r.probe.threshold, targetFpr: r.probe.targetFpr, candidates: r.candidates, evaluation: r.probe.evaluation, pooledByStrength: r.evaluation.pooledByStrength, seconds: r.seconds });
      return;
    }
    if (v.windows !== undefined || v.concepts !== undefined) throw lwError('LW_ERR_CLI_USAGE', '--windows and --concepts apply to --kind concept-match only');
    const kind = v.kind as FitterKind;
    if (kind !== 'logistic' && kind !== 'diff-means') throw lwError('LW_ERR_CLI_USAGE', `--kind must be concept-match, logistic or diff-means (got ${v.kind})`);
    const r = trainProbe(ds, {
      layer,
      input: v.input as FeatureInput | undefined,
      l2: l2Opt(v.l2),
      kind,
      ...common,
    });
    await writeProbeFile(file, r.probe);
    out({
      out: file,
      id: r.probe.id,
      hook: r.probe.hook,
      layer: r.chosen.layer,
      features: r.chosen.features,
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

function l2Opt(v: string | undefined): number | undefined {
  const x = num(v, 'l2');
  if (x !== undefined && !(x > 0)) throw lwError('LW_ERR_CLI_USAGE', `--l2 must be positive (got ${v})`);
  return x;
}

/** --layer: an index, best, a comma list (concatenated) or all (every traced layer, concatenated); absent: the config's. */
function layerOpt(v: string | undefined, traced: readonly number[]): number | 'best' | number[] | undefined {
  if (v === undefined || v === 'best') return v;
  if (v === 'all') return [...traced];
  const xs = v.split(',').map((x) => Number(x.trim()));
  if (xs.some((x) => !Number.isInteger(x) || x < 0)) throw lwError('LW_ERR_CLI_USAGE', `--layer must be a layer index, best, L,L,... or all (got ${v})`);
  return xs.length === 1 ? xs[0] : xs;
}

function evalTable(e: EvalReport): string {
  const f = (x: number | null | undefined) => (x === null || x === undefined ? '–' : x.toFixed(3));
  const lines = [
    `probe ${e.probe} (${e.kind}, ${JSON.stringify(e.hook)}), threshold ${e.threshold} at target FPR ${e.targetFpr}, aggregator ${JSON.stringify(e.aggregator)}, ${e.positions} positions`,
    `held-out concepts (${e.heldOutConcepts.length}): ${e.positives} positive and ${e.negatives} clean trials`,
    `  AUROC ${f(e.auroc)}   TPR@1%FPR ${f(e['tpr_at_fpr_0.01'])}   TPR@5%FPR ${f(e['tpr_at_fpr_0.05'])}   at threshold: TPR ${f(e.tpr)} FPR ${f(e.fpr)}`,
    'controls (fraction flagged at the threshold; AUROC against clean):',
    ...Object.entries(e.controls).map(([k, c]) => `  ${k.padEnd(20)} ${f(c.fpr)}  (n=${c.trials}${c.aurocVsNone === null ? '' : `, AUROC ${f(c.aurocVsNone)}`})`),
    'per strength, pooled over protocols and injection layers: AUROC / TPR@1%FPR / TPR at threshold',
    ...e.pooledByStrength.map((b) => `  ×${b.strength}`.padEnd(32) + ` ${f(b.auroc)} / ${f(b['tpr_at_fpr_0.01'])} / ${f(b.tprAtThreshold)}  (n=${b.positives})`),
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
  usage: `
latentwatch eval-probe --probe FILE --data DIR [--json] [--positions watch|after|inside|all]
                       [--protocols inject-then-ask,continuous] [--families concept]
  Scores the dataset's eval split (concepts never used in training, clean trials, controls). A probe
  made for another model is refused (LW_ERR_PROBE_MODEL_MISMATCH). --json prints auroc,
  tpr_at_fpr_0.01, tpr_at_fpr_0.05, fpr and fpr_on_controls (none, random, unrelated-question,
  generation-only), per-protocol and per-cell figures, per (protocol, strength) (byStrength) and
  per strength pooled over protocols (pooledByStrength).`,
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

/**
 * Engine for the generic-detector commands, which run one request at a time: batched decode off
 * (maxBatch 0), so each sequence gets its own cache sized to it.
 */
/** --prompts (repeatable; default the shipped corpus) and --max-tokens, loaded and merged. */
function promptsOpt(v: { prompts?: string[]; 'max-tokens'?: string }): Corpus {
  const maxTokens = num(v['max-tokens'], 'max-tokens');
  if (maxTokens !== undefined && (!Number.isInteger(maxTokens) || maxTokens < 0 || maxTokens > 4096)) throw lwError('LW_ERR_CLI_USAGE', `--max-tokens must be an integer in 0..4096 (got ${v['max-tokens']})`);
  return loadCorpora(v.prompts !== undefined && v.prompts.length > 0 ? v.prompts : [DEFAULT_CORPUS], { maxTokens });
}

function loadSoloEngine(v: { model?: string; precision?: string; 'cache-dir'?: string; threads?: string }): Promise<Engine> {
  return loadEngine(v, { maxBatch: 0 });
}

function layersOpt(v: string | undefined, numLayers: number): number[] {
  if (v === undefined || v === 'all') return Array.from({ length: numLayers }, (_, l) => l);
  const xs = v.split(',').map((x) => Number(x.trim()));
  if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x < 0 || x >= numLayers)) throw lwError('LW_ERR_CLI_USAGE', `--layers must be 'all' or layer indices in 0..${numLayers - 1} (got ${v})`);
  return [...new Set(xs)].sort((a, b) => a - b);
}

/** --calibrate-on styles|requests (fit-anomaly, generic-report): default styles. */
function calibrateOnOpt(value: string | undefined): 'styles' | 'requests' {
  const v = value ?? 'styles';
  if (v !== 'styles' && v !== 'requests') throw lwError('LW_ERR_CLI_USAGE', `--calibrate-on must be styles or requests (got ${value})`);
  return v;
}

export const fitAnomalyCommand: Command = {
  name: 'fit-anomaly',
  usage: `
latentwatch fit-anomaly --model DIR --out FILE.probe.json [--layers all|L,L,...]
                        [--prompts FILE]... [--max-tokens N] [--data DIR] [--target-fpr F] [--input update|resid]
                        [--covariance full|lowrank|diagonal] [--rank K] [--window W] [--window-spread on|off]
                        [--calibration-fraction F] [--calibrate-on styles|requests] [--id ID] [--label TEXT]
                        [--precision P] [--cache-dir DIR] [--threads N]
  Runs clean requests through the model as the daemon does (every position from 0, then
  generated tokens), fits per layer a Gaussian (mean + Ledoit-Wolf shrunk covariance; scored in
  O(d²/2) per token and layer; --covariance lowrank keeps only its top --rank eigenvectors, 32,
  the rest isotropic: O(rank·d), for very wide models, and weaker, see docs/generic-detectors.md) to the
  update the layer adds to the residual stream (resid_post L - resid_post L-1; resid_post 0 at
  layer 0; --input resid: the residual itself), and writes an ensemble-max probe of Mahalanobis
  members whose threshold sits at --target-fpr (default 0.01) per request on clean requests kept
  out of the fit (--calibration-fraction, default 0.4). It flags an added vector of any direction.
  --calibrate-on styles (default): each calibration request is scored by members fitted without
  its style, so the threshold carries the tail of kinds of text the fit never saw (a deployment's
  traffic differs from any corpus); requests: by the detector's own members.
  --window W (default 16; 0: none) adds per layer a windowed member: the Gaussian of the mean
  update over the request's last W novel positions (token pairs not seen before in the request),
  a persistent shift: it catches injections 4x weaker than one position shows, and counts
  repeated text once (docs/generic-detectors.md, "Windowed members"). --window-spread on (default)
  divides a window's distance by sqrt(max(1, spread / clean spread)) of its rows: a kind of text
  the fit never held spreads them, an added vector does not; off: the plain window mean.
  --prompts: a corpus config (.json, default configs/corpus/clean.json: code, prose, chat, long
  context) or live traffic (.jsonl, one prompt per line: a JSON string or {"prompt", "style",
  "max_tokens"}); of either a hashed share (split.testFraction; 0.3 for traffic) is held out and
  measures the false-positive rate. Give --prompts more than once to merge files (e.g. the shipped
  corpus and your traffic): styles stay distinct (a repeated name gets -2), each request keeps the
  split it has alone, and the first file's generation settings are the default of traffic files.
  --max-tokens: tokens generated for traffic lines without their own max_tokens (default: the
  first file's generation.maxTokens, 8). --data adds the clean train-split trials of a trial
  dataset. Prints the probe's figures, including the FPR per held-out style.`,
  async run(argv) {
    const v = parse(
      argv,
      {
        ...engineOptions,
        layers: { type: 'string' },
        prompts: { type: 'string', multiple: true },
        'max-tokens': { type: 'string' },
        data: { type: 'string' },
        'target-fpr': { type: 'string' },
        input: { type: 'string' },
        covariance: { type: 'string' },
        rank: { type: 'string' },
        window: { type: 'string' },
        'window-spread': { type: 'string' },
        'calibration-fraction': { type: 'string' },
        'calibrate-on': { type: 'string' },
        id: { type: 'string' },
        label: { type: 'string' },
      },
      this.usage,
    );
    const file = required(v.out, 'out');
    const calibrateOn = calibrateOnOpt(v['calibrate-on']);
    const input = (v.input ?? 'update') as 'update' | 'resid';
    if (input !== 'update' && input !== 'resid') throw lwError('LW_ERR_CLI_USAGE', `--input must be update or resid (got ${v.input})`);
    const covariance = (v.covariance ?? 'full') as 'lowrank' | 'full' | 'diagonal';
    if (!['lowrank', 'full', 'diagonal'].includes(covariance)) throw lwError('LW_ERR_CLI_USAGE', `--covariance must be lowrank, full or diagonal (got ${v.covariance})`);
    const rank = num(v.rank, 'rank') ?? 32;
    if (!Number.isInteger(rank) || rank < 1) throw lwError('LW_ERR_CLI_USAGE', `--rank must be a positive integer (got ${v.rank})`);
    const window = num(v.window, 'window') ?? DEFAULT_GENERIC_WINDOW;
    if (!Number.isInteger(window) || window < 0 || window === 1 || window > 4096) throw lwError('LW_ERR_CLI_USAGE', `--window must be 0 (no windowed members) or an integer in 2..4096 (got ${v.window})`);
    const spreadOpt = v['window-spread'] ?? 'on';
    if (spreadOpt !== 'on' && spreadOpt !== 'off') throw lwError('LW_ERR_CLI_USAGE', `--window-spread must be on or off (got ${spreadOpt})`);
    const targetFpr = num(v['target-fpr'], 'target-fpr') ?? 0.01;
    const calFrac = num(v['calibration-fraction'], 'calibration-fraction') ?? 0.4;
    if (!(calFrac > 0 && calFrac < 1)) throw lwError('LW_ERR_CLI_USAGE', '--calibration-fraction must be in (0, 1)');
    const corpus = promptsOpt(v);
    const ds = v.data !== undefined ? Dataset.open(v.data) : undefined;
    const t0 = performance.now();
    const engine = await loadSoloEngine(v);
    try {
      if (ds && ds.manifest.modelFingerprint !== engine.fingerprint) throw lwError('LW_ERR_TRIALS_MODEL_MISMATCH', `${v.data} holds trials of model ${ds.manifest.modelFingerprint}, the loaded model is ${engine.fingerprint}`);
      const L = engine.config.numLayers;
      const layers = layersOpt(v.layers, L);
      const needed = [...new Set(layers.flatMap((l) => (input === 'update' && l > 0 ? [l - 1, l] : [l])))].sort((a, b) => a - b);
      const acts = await runCorpus(engine, corpus, needed, progressBar('corpus'));
      const seqs = acts.requests.map((r) => corpusSeq(acts, r));
      const pool: Seq[] = [...seqs.filter((s) => s.run!.split === 'fit')];
      if (ds) {
        for (const l of needed) if (!ds.manifest.traceLayers.includes(l)) throw lwError('LW_ERR_CLI_USAGE', `--data: layer ${l} was not traced`);
        const tokens = new TrialTokens(engine.tokenizer!, ds.manifest);
        pool.push(...ds.records.filter((r) => r.condition === 'none' && r.split === 'train').map((r) => trialSeq(ds, r, tokens)));
      }
      const { fit, calibration } = splitClean(pool, calFrac, String(corpus.seed));
      if (calibration.length === 0 || fit.length === 0) throw lwError('LW_ERR_CORPUS_INVALID', `${pool.length} clean requests cannot give both a fit and a calibration share`);
      const cache = new MemberScoreCache({ modelFingerprint: engine.fingerprint, dModel: engine.config.hiddenSize });
      let det = fitAnomalyDetector(fit, calibration, { layers, numLayers: L, modelFingerprint: engine.fingerprint, dModel: engine.config.hiddenSize, targetFpr, input, covariance, rank, window, windowSpread: spreadOpt === 'on', calibrateOn, id: v.id ?? GENERIC_ID, label: v.label ?? GENERIC_LABEL }, cache);
      // False-positive rate on the corpus's held-out requests, per style.
      const test = seqs.filter((s) => s.run!.split === 'test');
      const fprOnControls: Record<string, number> = {};
      const styles = [...new Set(corpusRequests(corpus).map((r) => r.style))];
      for (const st of [...styles, null]) {
        const xs = test.filter((s) => st === null || s.run!.style === st).map((s) => requestScore(detectorTokenScores(det, cache, s), det.aggregator, s.start));
        if (xs.length > 0) fprOnControls[st === null ? 'corpus: all test requests' : `corpus: ${st}`] = fprAtThreshold(xs, det.threshold);
      }
      det = withMeta(det, {
        training: { trials: fit.length, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null },
        evaluation: { trials: test.length, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null, fprOnControls },
      });
      await writeProbeFile(file, det.file);
      out({ out: file, id: det.file.id, label: det.file.label, members: det.members.map((m) => m.id), threshold: det.threshold, targetFpr, aggregator: det.aggregator, fitRequests: fit.length, calibrationRequests: calibration.length, testRequests: test.length, skippedTooLong: acts.skippedTooLong, fprOnHeldOut: fprOnControls, seconds: (performance.now() - t0) / 1000 });
    } finally {
      ds?.close();
      await engine.close();
    }
  },
};

export const genericReportCommand: Command = {
  name: 'generic-report',
  usage: `
latentwatch generic-report --model DIR --data DIR --out DIR [--corpus FILE] [--write-probe FILE]
                           [--compare FILE.probe.json]... [--families a,b] [--target-fpr F]
                           [--ship NAME] [--unsupervised-only] [--calibrate-on styles|requests]
                           [--precision P] [--cache-dir DIR] [--threads N]
  DIR (--data) is a trial dataset of several vector families traced from position 0 (e.g.
  configs/trials/generic.json). Fits the anomaly detectors (update and residual Mahalanobis, on
  clean corpus prompts and clean train-split trials), the supervised linear detectors (per layer,
  concatenated, mean-pooled; trained on --families, default the dataset's training.families) and
  their combination; evaluates every one on families never trained on, held-out concepts and
  clean prompts of every corpus style as the daemon scores (every position from 0); writes
  report.md, report.json and SVG charts to --out, and the shipped detector (--ship, default
  anomaly-update) to --write-probe. --compare adds existing probes to the comparison.
  --calibrate-on as fit-anomaly's (requests: faster, one fit per detector instead of one per style).`,
  async run(argv) {
    const v = parse(
      argv,
      {
        ...engineOptions,
        data: { type: 'string' },
        corpus: { type: 'string' },
        'write-probe': { type: 'string' },
        compare: { type: 'string', multiple: true },
        families: { type: 'string' },
        'target-fpr': { type: 'string' },
        ship: { type: 'string' },
        'unsupervised-only': { type: 'boolean' },
        'calibrate-on': { type: 'string' },
      },
      this.usage,
    );
    const data = required(v.data, 'data');
    const outDir = required(v.out, 'out');
    const corpus = loadCorpus(v.corpus ?? DEFAULT_CORPUS);
    const ds = Dataset.open(data);
    const t0 = performance.now();
    const engine = await loadSoloEngine(v);
    try {
      if (ds.manifest.modelFingerprint !== engine.fingerprint) throw lwError('LW_ERR_TRIALS_MODEL_MISMATCH', `${data} holds trials of model ${ds.manifest.modelFingerprint}, the loaded model is ${engine.fingerprint}`);
      const compare = await Promise.all((v.compare ?? []).map(async (f) => ({ name: basename(f).replace(/\.probe\.json$/, ''), probe: await loadProbe(f, engine.fingerprint) })));
      const acts = await runCorpus(engine, corpus, ds.manifest.traceLayers, progressBar('corpus'));
      const { data: r, shipped } = writeGenericReport(ds, acts, outDir, {
        families: list(v.families, 'families'),
        targetFpr: num(v['target-fpr'], 'target-fpr'),
        compare,
        ship: v.ship,
        unsupervisedOnly: v['unsupervised-only'],
        calibrateOn: calibrateOnOpt(v['calibrate-on']),
        progress: progressBar('generic'),
        tokens: new TrialTokens(engine.tokenizer!, ds.manifest),
      });
      if (v['write-probe'] !== undefined) await writeProbeFile(v['write-probe'], shipped.file);
      const s = r.detectors.find((x) => x.name === r.shipped)!;
      const at = (f: string, st: number) => s.byFamilyStrength.all.find((c) => c.family === f && c.strength === st);
      out({
        out: outDir,
        shipped: { name: r.shipped, id: shipped.file.id, file: v['write-probe'] ?? null, threshold: shipped.threshold },
        at05: Object.fromEntries(r.dataset.families.map((f) => [f.name, { auroc: at(f.name, 0.5)?.auroc ?? null, 'tpr_at_fpr_0.01': at(f.name, 0.5)?.['tpr_at_fpr_0.01'] ?? null }])),
        cleanFpr: Object.fromEntries(s.cleanFpr.map((c) => [c.set, c.fpr])),
        seconds: (performance.now() - t0) / 1000,
      });
    } finally {
      ds.close();
      await engine.close();
    }
  },
};

export const calibrateProbeCommand: Command = {
  name: 'calibrate-probe',
  usage: `
latentwatch calibrate-probe --probe FILE --model DIR --out FILE.probe.json [--prompts FILE]... [--max-tokens N]
                            [--data DIR] [--skip N] [--target-fpr F] [--logit] [--precision P] [--cache-dir DIR] [--threads N]
  The daemon scores every position of a request from position 0. A probe whose threshold was set on
  a narrower view (issue 3's probes: from the question on) fires far more often on whole prompts.
  This keeps the probe's weights, leaves the first --skip positions unscored (default ${GENERIC_SKIP}: the
  attention sink and the first tokens), and sets the threshold at --target-fpr (default: the
  probe's own) per request on clean requests: the corpus's fit prompts (--prompts, default
  configs/corpus/clean.json) and, with --data, the dataset's train-split clean trials. --logit
  scores a logistic ('linear') probe as its logit ('direction'): its probabilities saturate at 1
  on whole prompts, so no probability threshold separates. Prints the false-positive rate at the
  new threshold on the corpus's held-out prompts, per style. --prompts and --max-tokens as for
  fit-anomaly (repeatable; .jsonl traffic holds out a hashed 0.3).`,
  async run(argv) {
    const v = parse(argv, { ...engineOptions, probe: { type: 'string' }, prompts: { type: 'string', multiple: true }, 'max-tokens': { type: 'string' }, data: { type: 'string' }, skip: { type: 'string' }, 'target-fpr': { type: 'string' }, logit: { type: 'boolean' } }, this.usage);
    const fileOut = required(v.out, 'out');
    const skip = num(v.skip, 'skip') ?? GENERIC_SKIP;
    if (!Number.isInteger(skip) || skip < 0) throw lwError('LW_ERR_CLI_USAGE', '--skip must be a non-negative integer');
    const corpus = promptsOpt(v);
    const ds = v.data !== undefined ? Dataset.open(v.data) : undefined;
    const engine = await loadSoloEngine(v);
    try {
      const file = await readProbeFile(required(v.probe, 'probe'), engine.fingerprint);
      if (ds && ds.manifest.modelFingerprint !== engine.fingerprint) throw lwError('LW_ERR_TRIALS_MODEL_MISMATCH', `${v.data} holds trials of model ${ds.manifest.modelFingerprint}, the loaded model is ${engine.fingerprint}`);
      const acts = await runCorpus(engine, corpus, Array.from({ length: engine.config.numLayers }, (_, l) => l), progressBar('corpus'));
      const seqs = acts.requests.map((r) => corpusSeq(acts, r));
      const clean: Seq[] = seqs.filter((s) => s.run!.split === 'fit');
      const tokens = ds ? new TrialTokens(engine.tokenizer!, ds.manifest) : undefined;
      if (ds) clean.push(...ds.records.filter((r) => r.condition === 'none' && r.split === 'train').map((r) => trialSeq(ds, r, tokens)));
      const fprOn: Record<string, Seq[]> = {};
      for (const s of seqs.filter((x) => x.run!.split === 'test')) (fprOn[`clean: ${s.run!.style}`] ??= []).push(s);
      if (ds) fprOn['clean: eval trials'] = ds.records.filter((r) => r.condition === 'none' && r.split === 'eval').map((r) => trialSeq(ds, r, tokens));
      const r = recalibrateProbe(file, clean, { skip, targetFpr: num(v['target-fpr'], 'target-fpr'), logit: v.logit, fprOn });
      await writeProbeFile(fileOut, r.file);
      out({ out: fileOut, id: r.file.id, previousThreshold: file.threshold, threshold: r.threshold, aggregator: r.file.aggregator, calibrationRequests: clean.length, fprOnHeldOut: r.fpr });
    } finally {
      ds?.close();
      await engine.close();
    }
  },
};

