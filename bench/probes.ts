/**
 * Probe pipeline benchmark on models/qwen2-code-16m: concept vectors, trials per minute, and probe
 * training time, printed as JSON.
 *
 *   npx tsx bench/probes.ts [--quick] [--config FILE] [--out DIR] [--data DIR] [--threads N] [--cache DIR]
 *   npx tsx bench/probes.ts --generic [--probe FILE]...
 *
 * Default: the whole configs/trials/base.json (≈2000 trials) into a temporary directory (or --out),
 * then `train-probe --layer best` on it (8 layers fitted, validated and evaluated). --quick runs a
 * scaled-down config (12 concepts, 60 clean trials per protocol). --data DIR only times training on
 * an existing dataset. Trials per minute counts trials run in this process (a resumed --out counts
 * only the new ones). The machine is shared: compare figures measured in one run.
 * --generic only times the daemon's scoring of the probes shipped in models/qwen2-code-16m/probes
 * (ProbeBank.score over a 512-position prompt pass and single-token passes): microseconds per
 * position per probe, e.g. the sixteen-member generic-injection detector, and the same without its
 * windowed members (what the windows cost); --probe adds other probe files of the built-in model
 * (a concept-match probe from train-probe). Writes docs/reports/bench/probes-generic.json.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../src/engine/engine.js';
import { DEFAULT_MODEL_DIR, PACKAGE_ROOT } from '../src/paths.js';
import { computeConceptVectors, writeConceptVectors } from '../src/lab/concepts.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { Dataset } from '../src/lab/dataset.js';
import { createProbe, isWindowed, loadProbe, ProbeBank, type Probe, type TapTensor } from '../src/probes/probe.js';
import { validateProbeFile } from '../src/probes/probe-file.js';
import { createRng } from '../src/rng.js';
import { trainProbe } from '../src/lab/train.js';
import { loadTrialConfig, resolveTrialConfig, type TrialConfig } from '../src/lab/trial-config.js';
import { runTrials } from '../src/lab/trials.js';
import { describeMachine } from './lib/machine.js';
import { round as r } from './lib/stats.js';

const { values: v } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    config: { type: 'string' },
    out: { type: 'string' },
    data: { type: 'string' },
    threads: { type: 'string' },
    cache: { type: 'string' },
    generic: { type: 'boolean' },
    probe: { type: 'string', multiple: true },
  },
});

/** Scoring cost of each shipped probe, per position, on synthetic taps of the model's shape. */
async function benchScoring(): Promise<void> {
  const dir = join(DEFAULT_MODEL_DIR, 'probes');
  const fp = (JSON.parse(readFileSync(join(dir, readdirSync(dir).find((f) => f.endsWith('.probe.json'))!), 'utf8')) as { modelFingerprint: string }).modelFingerprint;
  const files = readdirSync(dir).filter((f) => f.endsWith('.probe.json')).sort();
  const result: Record<string, unknown> = { bench: 'probes --generic', machine: describeMachine(), probes: {} };
  const rng = createRng(1);
  // Each shipped probe, and a windowed ensemble also without its windowed members: what the windows cost.
  const runs: { name: string; file: string; probe: Probe; loadMs: number }[] = [];
  // --probe FILE: also time probes made elsewhere for the built-in model (e.g. train-probe's concept-match).
  for (const f of [...files.map((x) => join(dir, x)), ...(v.probe ?? [])]) {
    const t0 = performance.now();
    const probe = await loadProbe(f, fp);
    // Two files of one probe id (a shipped file and a learned one) are told apart by file name.
    const name = runs.some((r) => r.name === probe.id) ? `${probe.id} (${basename(f)})` : probe.id;
    runs.push({ name, file: basename(f), probe, loadMs: performance.now() - t0 });
    const pf = probe.file;
    if (pf.kind === 'ensemble-max' && pf.members.some(isWindowed) && !pf.members.every(isWindowed)) {
      // An onset member reads windowed members: it goes with them.
      const perToken = createProbe(validateProbeFile({ ...pf, members: pf.members.filter((m) => !isWindowed(m) && m.kind !== 'onset') }));
      runs.push({ name: `${name} (per-token members only)`, file: basename(f), probe: perToken, loadMs: NaN });
    }
  }
  for (const { name, file: f, probe, loadMs } of runs) {
    const bank = new ProbeBank([probe]);
    const taps = (positions: number) => {
      const m = new Map<string, TapTensor>();
      for (const h of bank.hooks()) m.set(h, { positions, dModel: probe.dModel, data: Float32Array.from({ length: positions * probe.dModel }, () => 20 * rng.gaussian()) });
      return m;
    };
    const prompt = taps(512);
    const one = taps(1);
    // Token ids all distinct, so every position is novel: a windowed member's full cost per position.
    let nextId = 0;
    const ids = (n: number) => Array.from({ length: n }, () => nextId++ % 8000);
    bank.snapshot().score(prompt, ids(512)); // warm-up
    const t1 = performance.now();
    for (let k = 0; k < 3; k++) bank.snapshot().score(prompt, ids(512));
    const promptUs = ((performance.now() - t1) * 1000) / (3 * 512);
    const request = bank.snapshot();
    request.score(prompt, ids(512));
    const t2 = performance.now();
    for (let k = 0; k < 500; k++) request.score(one, ids(1));
    const tokenUs = ((performance.now() - t2) * 1000) / 500;
    (result.probes as Record<string, unknown>)[name] = { file: f, kind: probe.kind, members: probe.file.kind === 'ensemble-max' ? probe.file.members.length : 1, ordered: probe.ordered, hooks: probe.hooks.length, loadMs: Number.isNaN(loadMs) ? null : r(loadMs, 1), usPerPromptPosition: r(promptUs, 1), usPerGeneratedToken: r(tokenUs, 1) };
  }
  const text = `${JSON.stringify(result, null, 2)}\n`;
  process.stdout.write(text);
  writeFileSync(join(PACKAGE_ROOT, 'docs', 'reports', 'bench', 'probes-generic.json'), text);
}

const configPath = v.config ?? join(PACKAGE_ROOT, 'configs', 'trials', 'base.json');

function quickConfig(base: TrialConfig): TrialConfig {
  const raw = JSON.parse(JSON.stringify(base)) as Record<string, Record<string, unknown>>;
  raw.injection.families = [{ name: 'concept', kind: 'concept', items: 12 }];
  raw.vectors.words = { concepts: base.vectors.words.concepts.slice(0, 12), baseline: base.vectors.words.baseline };
  raw.split.evalConcepts = 4;
  raw.controls.none = { trialsPerProtocol: 60 };
  return resolveTrialConfig(raw, join(PACKAGE_ROOT, 'configs', 'trials'), 'quick bench config');
}

async function main(): Promise<void> {
  const machine = describeMachine();
  const out: Record<string, unknown> = { bench: 'probes', model: 'qwen2-code-16m', machine };
  let data = v.data;
  if (data === undefined) {
    const config = v.quick ? quickConfig(loadTrialConfig(configPath)) : loadTrialConfig(configPath);
    const dir = v.out ?? mkdtempSync(join(tmpdir(), 'lw-bench-probes-'));
    const t0 = performance.now();
    const engine = await Engine.load(DEFAULT_MODEL_DIR, { taps: 'all', ports: 'all', cacheDir: v.cache, threads: v.threads === undefined ? undefined : Number(v.threads) });
    const loadSeconds = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    const vectors = await computeConceptVectors(engine, { template: config.vectors.template, chat: config.chat, concepts: config.vectors.words.concepts, baseline: config.vectors.words.baseline, contrast: config.vectors.contrast });
    writeConceptVectors(join(dir, 'concepts'), vectors);
    const conceptPrompts = config.vectors.words.concepts.length + config.vectors.words.baseline.length + config.vectors.contrast.reduce((a, c) => a + 2 * c.pairs.length, 0);
    const conceptSeconds = (performance.now() - t1) / 1000;
    const s = await runTrials({ engine, config, store: ConceptStore.open(join(dir, 'concepts'), engine.fingerprint), outDir: dir });
    await engine.close();
    out.config = v.quick ? `${config.name} (quick)` : config.name;
    out.engineLoadSeconds = r(loadSeconds);
    out.concepts = { prompts: conceptPrompts, seconds: r(conceptSeconds), promptsPerSecond: r(conceptPrompts / conceptSeconds, 1) };
    out.trials = { planned: s.planned, ran: s.ran, skipped: s.skipped, seconds: r(s.seconds), trialsPerMinute: r(s.trialsPerMinute, 1) };
    data = dir;
    if (v.out === undefined) process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  const ds = Dataset.open(data);
  const t2 = performance.now();
  const tr = trainProbe(ds);
  const seconds = (performance.now() - t2) / 1000;
  out.training = {
    seconds: r(seconds),
    layers: tr.layers.length,
    secondsPerLayer: r(seconds / tr.layers.length),
    fitRowsPerLayer: tr.chosen.fitRows,
    chosenLayer: tr.chosen.layer,
    heldOut: { auroc: tr.chosen.evaluation.auroc, 'tpr_at_fpr_0.01': tr.chosen.evaluation['tpr_at_fpr_0.01'] },
  };
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
}

if (v.generic) await benchScoring();
else await main();
