/**
 * Engine benchmark: build, load, prefill and decode of the engine's own graphs, against this
 * machine's memory-bandwidth limit.
 *
 *   npx tsx bench/engine.ts [--quick] [--out FILE.json] [--md FILE.md] [--investigate]
 *       [--runs N] [--rounds N] [--only ID,ID] [--ckpt DIR] [--cache DIR] [--reuse-builds] [--quiet-wait S]
 *   npm run bench:engine -- --quick --out bench/out/engine.json
 *
 * Models: a Qwen2.5-0.5B-shaped checkpoint with random weights (bench/random-checkpoint.ts, the
 * real Qwen2.5 tokenizer; fp32, int8, int4 builds) and models/qwen2-code-16m (fp32, int4).
 * For each: the build in a child process (`node` running ensureBuild, its peak RSS read with
 * process.resourceUsage() at the end), then a serving child: Engine.load (session load; the build
 * is cached by then), one warm-up run and `runs` timed runs of generate() over a 128-token prompt
 * with 128 greedy decode steps (ignore EOS), and the child's peak RSS. Medians over the runs of
 * every round; `rounds` repeats the serving child per configuration, interleaved, so a burst of
 * load from another process on a shared machine lands on one round of every configuration. Before
 * each timed run (and each bandwidth measurement) the bench waits, bounded by --quiet-wait seconds,
 * until other processes leave the CPUs nearly idle (bench/lib/cpu-share.ts), and records how busy they were.
 *
 * The bandwidth limit: memory bandwidth (bench/lib/bandwidth.ts: a WebAssembly SIMD sequential
 * read of a 1 GiB float32 array on as many threads as the engine uses, measured before and after
 * the engine runs) ÷ the bytes a decode step reads (every initializer of the graph but the
 * embedding gather table and the rotary tables: matmul weights, their scales, lm_head, norms,
 * biases; bench/lib/graph-bytes.ts). KV-cache reads (a few MB at these lengths) are not counted.
 *
 * --investigate adds the int4 decode investigation: block size, accuracy level, threads, taps and
 * ports, and KV-cache storage, each a serving child of its own.
 */
import { availableParallelism, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { measureBandwidth, type BandwidthResult } from './lib/bandwidth.js';
import { emitChildResult, runChild, runChildStep } from './lib/child.js';
import { graphBytes, type GraphBytes } from './lib/graph-bytes.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { markdownTable, parseArgs, runIfMain, usageOf, writeBenchResult } from './lib/report.js';
import { waitForQuiet } from './lib/cpu-share.js';
import { median, quantile, round, summarize, type Summary } from './lib/stats.js';

/** Waits (bounded) for other processes to leave the CPUs nearly idle; busy = their share of all CPUs. */
async function quietMachine(maxWaitMs: number): Promise<{ busy: number | null; waitedMs: number }> {
  const q = await waitForQuiet(maxWaitMs / 1000, 0.2);
  return { busy: q.othersCores === null ? null : q.othersCores / availableParallelism(), waitedMs: q.waitedSeconds * 1000 };
}

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const CODE16M = join(REPO, 'models', 'qwen2-code-16m');
export const DEFAULT_CKPT = '/tmp/lw-bench/qwen2.5-0.5b-random';
const DEFAULT_CACHE = '/tmp/lw-bench/builds';

type Precision = 'fp32' | 'fp16' | 'int8' | 'int4';

/** Engine.load options a configuration sets (a JSON-able subset of EngineOptions). */
export interface EngineKnobs {
  precision: Precision;
  blockSize?: number;
  accuracyLevel?: number;
  taps?: 'all' | number[];
  ports?: 'all' | 'none' | number[];
  threads?: number;
  maxBatch?: number;
  batchContext?: number;
  /** Passes on the session's own thread (runtime.ts ownThread; the daemon's default, engineThread). */
  ownThread?: boolean;
  spinning?: boolean;
}

export interface BenchConfig {
  id: string;
  /** '0.5b' (the random checkpoint), '16m' (models/qwen2-code-16m) or a checkpoint directory. */
  model: string;
  label: string;
  knobs: EngineKnobs;
  /** Measure a fresh build in a child (else only make sure one is cached). */
  measureBuild: boolean;
  driver?: 'generate' | 'forward';
  /** Prompt length for this configuration (default: the bench's, 128). */
  promptTokens?: number;
}

interface BuildChildResult {
  buildSeconds: number;
  cached: boolean;
  modelPath: string;
  dataBytes: number;
}

interface ServeChildResult {
  loadSeconds: number;
  promptTokens: number;
  decodeSteps: number;
  prefillTokS: number[];
  decodeTokS: number[];
  /** Median ms per decode step within each run. */
  decodeStepMs: number[];
  /** 10th percentile of the step times within each run: the steps no other process slowed. */
  decodeStepP10Ms: number[];
  firstIds: number[];
  /** 1-minute load average at the start of each timed run (other processes on a shared machine). */
  loadAvg: number[];
  /** Share of all CPUs other processes kept busy just before each timed run (see lib/cpu-share.ts). */
  busyBefore: (number | null)[];
  /** Milliseconds waited for a quiet machine before each timed run. */
  waitedMs: number[];
}

export interface ConfigResult {
  id: string;
  label: string;
  model: string;
  knobs: EngineKnobs;
  build: { seconds: number; peakRssBytes: number; cached: boolean; dataBytes: number } | null;
  graph: GraphBytes;
  loadSeconds: number[];
  prefillTokS: Summary;
  decodeTokS: Summary;
  decodeStepMs: Summary;
  /**
   * Decode tok/s of the uncontended steps: 1000 / (median over runs of the 10th-percentile step
   * time). On a shared machine other processes take the cores for some steps; this estimates the
   * speed without them (compare it with the quiet bandwidth, the fastest repetition).
   */
  decodeTokSQuiet: number;
  bandwidthLimitTokSQuiet: number;
  decodePctOfLimitQuiet: number;
  /** Peak RSS of the serving child; null when several configurations shared one child. */
  servePeakRssBytes: number | null;
  /** Median 1-minute load average over the timed runs (2 = both cores busy before we started). */
  loadAvg: number;
  /** Median share of the CPUs other processes kept busy just before the timed runs. */
  busyBefore: number;
  bandwidthLimitTokS: number;
  decodePctOfLimit: number;
  firstIds: number[];
}

export interface EngineBenchResult {
  kind: 'latentwatch.bench.engine';
  version: 1;
  quick: boolean;
  machine: MachineDescription;
  bandwidth: {
    before: BandwidthResult[];
    /** Multi-thread measurements taken before each serving child. */
    between: BandwidthResult[];
    after: BandwidthResult[];
    usedGbPerSec: number;
    quietGbPerSec: number;
    threads: number;
    method: string;
    /** Busy share of the CPUs (other processes) before each measurement. */
    busyBefore: (number | null)[];
  };
  childBaselineRssBytes: number;
  settings: { promptTokens: number; decodeSteps: number; runs: number; rounds: number; warmup: number; threads: number; quietWaitMs: number; checkpoint: string; cacheDir: string };
  configs: ConfigResult[];
  investigation: ConfigResult[];
  /** Flat keys for the top-level bench (issue 6). */
  summary: Record<string, number | null>;
  seconds: number;
}

// ---------------------------------------------------------------------------------------------
// Children

const PROMPT_TEXT =
  'The memory bandwidth of a machine bounds how fast a language model can decode: every weight is read once for each ' +
  'generated token. A service that watches the residual stream of a model must keep that cost in mind, because the ' +
  'probes run on every token, the alerts are sent as soon as a probe fires, and the operators read dashboards built ' +
  'from those numbers. def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n';

async function childBuild(spec: { modelDir: string; cacheDir: string; knobs: EngineKnobs; force: boolean }): Promise<void> {
  const { ensureBuild } = await import('../src/model/build.js');
  const t0 = performance.now();
  const { precision, blockSize, accuracyLevel, taps, ports } = spec.knobs;
  const b = ensureBuild(spec.modelDir, { precision, blockSize, accuracyLevel, taps, ports }, { cacheDir: spec.cacheDir, force: spec.force });
  const r: BuildChildResult = { buildSeconds: b.cached ? b.buildSeconds : (performance.now() - t0) / 1000, cached: b.cached, modelPath: b.modelPath, dataBytes: b.dataBytes };
  emitChildResult(r);
}

interface ServeVariant {
  id: string;
  knobs: EngineKnobs;
  /** 'generate': Engine.generate() as serving runs it; 'forward': Sequence.forward() and argmax only. */
  driver: 'generate' | 'forward';
  promptTokens?: number;
}

interface ServeSpec {
  modelDir: string;
  cacheDir: string;
  variants: ServeVariant[];
  promptTokens: number;
  decodeSteps: number;
  /** Timed runs of each variant per round; rounds alternate the variants (A B C A B C ...). */
  runs: number;
  rounds: number;
  warmup: number;
  /** Longest wait for a quiet machine before each timed run (0: only measure how busy it is). */
  quietWaitMs: number;
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

async function childServe(spec: ServeSpec): Promise<void> {
  const { Engine } = await import('../src/engine/engine.js');
  type Loaded = { v: ServeVariant; engine: Awaited<ReturnType<typeof Engine.load>>; r: ServeChildResult };
  const loaded: Loaded[] = [];
  const promptFor = (engine: Loaded['engine'], n: number): number[] => {
    let ids: number[] = [];
    if (engine.tokenizer) {
      while (ids.length < n) ids = ids.concat(engine.tokenizer.encode(PROMPT_TEXT, { addSpecialTokens: false }));
    } else {
      ids = Array.from({ length: n }, (_, i) => (i * 7919 + 13) % engine.config.vocabSize);
    }
    return ids.slice(0, n);
  };
  const prompts = new Map<string, number[]>();
  for (const v of spec.variants) {
    const t0 = performance.now();
    const engine = await Engine.load(spec.modelDir, { ...v.knobs, cacheDir: spec.cacheDir });
    const loadSeconds = (performance.now() - t0) / 1000;
    const promptIds = promptFor(engine, v.promptTokens ?? spec.promptTokens);
    prompts.set(v.id, promptIds);
    loaded.push({ v, engine, r: { loadSeconds, promptTokens: promptIds.length, decodeSteps: spec.decodeSteps, prefillTokS: [], decodeTokS: [], decodeStepMs: [], decodeStepP10Ms: [], firstIds: [], loadAvg: [], busyBefore: [], waitedMs: [] } });
  }

  /** One run: the time of the prompt pass's end and of each decode pass's end, and the ids. */
  const once = async (x: Loaded): Promise<{ start: number; t: number[]; ids: number[] }> => {
    const promptIds = prompts.get(x.v.id) as number[];
    const start = performance.now();
    const t: number[] = [];
    const ids: number[] = [];
    if (x.v.driver === 'forward') {
      const seq = x.engine.newSequence(promptIds.length + spec.decodeSteps);
      try {
        let r = await seq.forward(promptIds);
        t.push(performance.now());
        for (let i = 0; i < spec.decodeSteps; i++) {
          const token = argmax(r.logits);
          ids.push(token);
          r = await seq.forward([token]);
          t.push(performance.now());
        }
      } finally {
        seq.release();
      }
      return { start, t, ids };
    }
    // With maxTokens = decodeSteps + 1, token step k (1-based) is yielded after the forward pass
    // that reads token k, for k <= decodeSteps; the last token step runs no pass. So t[last] - t[0]
    // spans exactly decodeSteps passes, plus the sampling and detokenisation serving pays too.
    for await (const step of x.engine.generate({ promptIds, maxTokens: spec.decodeSteps + 1, ignoreEos: true, sampling: { temperature: 0 } })) {
      t.push(performance.now());
      if (step.kind === 'token') ids.push(step.tokenId);
    }
    return { start, t, ids };
  };

  for (const x of loaded) for (let w = 0; w < spec.warmup; w++) await once(x);
  for (let round = 0; round < spec.rounds; round++) {
    for (const x of loaded) {
      for (let run = 0; run < spec.runs; run++) {
        const q = await quietMachine(spec.quietWaitMs);
        x.r.busyBefore.push(q.busy);
        x.r.waitedMs.push(q.waitedMs);
        x.r.loadAvg.push(loadavg()[0]);
        const { start, t, ids } = await once(x);
        const stepMs = t.slice(1, spec.decodeSteps + 1).map((y, i) => y - t[i]);
        x.r.prefillTokS.push(x.r.promptTokens / ((t[0] - start) / 1000));
        x.r.decodeTokS.push(spec.decodeSteps / ((t[spec.decodeSteps] - t[0]) / 1000));
        x.r.decodeStepMs.push(median(stepMs));
        x.r.decodeStepP10Ms.push(quantile(stepMs, 0.1));
        if (spec.variants.length > 1) {
          const busy = q.busy === null ? '?' : `${(100 * q.busy).toFixed(0)}%`;
          console.error(`  [${round + 1}/${spec.rounds}] ${x.v.id}: decode ${x.r.decodeTokS[x.r.decodeTokS.length - 1].toFixed(1)} tok/s (others busy ${busy} after ${(q.waitedMs / 1000).toFixed(0)} s)`);
        }
        if (x.r.firstIds.length === 0) x.r.firstIds = ids.slice(0, 8);
      }
    }
  }
  for (const x of loaded) await x.engine.close();
  emitChildResult(Object.fromEntries(loaded.map((x) => [x.v.id, x.r])));
}

async function childNoop(): Promise<void> {
  await import('../src/model/build.js');
  emitChildResult({});
}

// ---------------------------------------------------------------------------------------------
// Configurations

export function mainConfigs(): BenchConfig[] {
  const c = (id: string, model: string, label: string, knobs: EngineKnobs): BenchConfig => ({ id, model, label, knobs, measureBuild: true });
  return [
    c('0.5b-fp32', '0.5b', 'Qwen2.5-0.5B shape, fp32', { precision: 'fp32' }),
    c('0.5b-int8', '0.5b', 'Qwen2.5-0.5B shape, int8 (bs32, acc4)', { precision: 'int8' }),
    c('0.5b-int4', '0.5b', 'Qwen2.5-0.5B shape, int4 (bs32, acc4)', { precision: 'int4' }),
    // Block 128 (as GPTQ/AWQ checkpoints use): 15% fewer bytes per token and a faster kernel, some accuracy lost.
    c('0.5b-int4_b128', '0.5b', 'Qwen2.5-0.5B shape, int4 (bs128, acc4)', { precision: 'int4', blockSize: 128 }),
    c('16m-fp32', '16m', 'qwen2-code-16m, fp32', { precision: 'fp32' }),
    c('16m-int4', '16m', 'qwen2-code-16m, int4 (bs32, acc4)', { precision: 'int4' }),
  ];
}

/**
 * The int4 decode investigation: one knob at a time against the engine defaults. All of them are
 * loaded in one serving child and run round-robin, so load from other processes falls on each alike.
 */
export function investigationConfigs(quick: boolean): BenchConfig[] {
  // KV storage sized to the request: with no pool (maxBatch 0) each sequence gets private storage of
  // exactly prompt + max tokens positions instead of a 4097-position pool slot.
  const kv = { maxBatch: 0 };
  const bare = { taps: [] as number[], ports: 'none' as const };
  const c = (id: string, label: string, knobs: Omit<EngineKnobs, 'precision'>, driver: 'generate' | 'forward' = 'generate'): BenchConfig => ({
    id,
    model: '0.5b',
    label,
    knobs: { precision: 'int4', ...knobs },
    measureBuild: false,
    driver,
  });
  const list = [
    c('int4-default', 'engine defaults (bs32, acc4, taps+ports all, pooled growable KV, batcher)', {}),
    c('int4-thread', 'passes on the session thread (ownThread)', { ownThread: true }),
    c('int4-nospin', 'pool threads do not spin (the daemon default)', { spinning: false }),
    c('int4-nospin-thread', 'no spinning + passes on the session thread (the daemon as shipped)', { spinning: false, ownThread: true }),
    c('int4-kv', 'private KV storage (maxBatch 0: no pool, no batcher)', { ...kv }),
    c('int4-kv-fwd', 'private KV, Sequence.forward + argmax loop (no generate())', { ...kv }, 'forward'),
    c('int4-kv-bs64', 'private KV + block 64', { ...kv, blockSize: 64 }),
    c('int4-kv-bs128', 'private KV + block 128', { ...kv, blockSize: 128 }),
    c('int4-kv-acc0', 'private KV + accuracy_level 0 (fp32 compute)', { ...kv, accuracyLevel: 0 }),
    c('int4-kv-t1', 'private KV + 1 intra-op thread', { ...kv, threads: 1 }),
    c('int4-kv-bare', 'private KV + no taps, no ports', { ...kv, ...bare }),
    c('int4-kv-bs128-bare', 'private KV + block 128 + no taps, no ports', { ...kv, ...bare, blockSize: 128 }),
    // Decode deep into the context: the KV buffers (and what onnxruntime-node copies back per step) grow.
    { ...c('int4-kv-ctx1k', 'private KV, decode after a 900-token prompt (buffer 1024)', { ...kv }), promptTokens: 900 },
    { ...c('int4-kv-ctx4k', 'private KV, decode after a 3900-token prompt (buffer 4096)', { ...kv }), promptTokens: 3900 },
  ];
  if (!quick) {
    list.push(
      c('int4-kv-acc1', 'KV sized + accuracy_level 1', { ...kv, accuracyLevel: 1 }),
      c('int4-kv-acc3', 'KV sized + accuracy_level 3 (bf16)', { ...kv, accuracyLevel: 3 }),
      c('int4-kv-bs128-acc0', 'KV sized + block 128 + accuracy_level 0', { ...kv, blockSize: 128, accuracyLevel: 0 }),
      c('int4-kv-bs256', 'KV sized + block 256', { ...kv, blockSize: 256 }),
    );
  }
  return list;
}

// ---------------------------------------------------------------------------------------------
// Orchestration

export interface EngineBenchOptions {
  quick?: boolean;
  investigate?: boolean;
  runs?: number;
  rounds?: number;
  only?: string[];
  checkpoint?: string;
  cacheDir?: string;
  /** Reuse cached builds (their recorded build time; no build RSS). */
  reuseBuilds?: boolean;
  threads?: number;
  /** Longest wait for a quiet machine before each timed run and bandwidth measurement (ms). */
  quietWaitMs?: number;
  log?: (line: string) => void;
}

function modelDirOf(model: string, ckpt: string): string {
  if (model === '0.5b') return ckpt;
  if (model === '16m') return CODE16M;
  return resolve(model);
}

export async function runEngineBench(o: EngineBenchOptions = {}): Promise<EngineBenchResult> {
  const t0 = performance.now();
  const quick = o.quick ?? false;
  const log = o.log ?? ((l: string) => console.error(l));
  const threads = o.threads ?? availableParallelism();
  const runs = o.runs ?? (quick ? 2 : 5);
  const rounds = o.rounds ?? (quick ? 1 : 3);
  const warmup = 1;
  const quietWaitMs = o.quietWaitMs ?? (quick ? 5_000 : 20_000);
  const promptTokens = 128;
  const decodeSteps = 128;
  const ckpt = resolve(o.checkpoint ?? DEFAULT_CKPT);
  const cacheDir = resolve(o.cacheDir ?? DEFAULT_CACHE);
  const machine = describeMachine();

  log('bandwidth (before)…');
  const bwBusy: (number | null)[] = [];
  const bw = async () => {
    const out: BandwidthResult[] = [];
    for (const t of [1, threads]) {
      bwBusy.push((await quietMachine(quietWaitMs)).busy);
      out.push(await measureBandwidth({ threads: t, repetitions: quick ? 3 : 5 }));
    }
    return out;
  };
  const before = await bw();

  const wanted = (c: BenchConfig) => !o.only || o.only.includes(c.id);
  const configs = mainConfigs().filter(wanted);
  const investigation = o.investigate ? investigationConfigs(quick).filter(wanted) : [];
  if ([...configs, ...investigation].some((c) => c.model === '0.5b')) {
    const { writeRandomCheckpoint } = await import('./random-checkpoint.js');
    log(`random checkpoint at ${ckpt}…`);
    const info = writeRandomCheckpoint(ckpt, undefined, { log });
    log(info.reused ? '  reused' : `  written in ${info.seconds.toFixed(1)} s`);
  }

  const baseline = await runChild<Record<string, never>>(SELF, ['--child', 'noop'], { cwd: REPO });

  // Builds, one child each (also for investigation configs, so no serving child pays for a build).
  const builds = new Map<string, { r: BuildChildResult; rss: number } | null>();
  const graphs = new Map<string, GraphBytes>();
  for (const c of [...configs, ...investigation]) {
    const force = c.measureBuild && !o.reuseBuilds;
    log(`build ${c.id}${force ? ' (measured)' : ''}…`);
    const spec = { modelDir: modelDirOf(c.model, ckpt), cacheDir, knobs: c.knobs, force };
    const b = await runChild<BuildChildResult>(SELF, ['--child', 'build', '--spec', JSON.stringify(spec)], { cwd: REPO, timeoutMs: 20 * 60_000 });
    builds.set(c.id, c.measureBuild ? { r: b.result, rss: b.result.cached ? NaN : b.maxRssBytes } : null);
    graphs.set(c.id, graphBytes(b.result.modelPath));
    log(`  ${b.result.cached ? 'cached' : `${b.result.buildSeconds.toFixed(1)} s, peak RSS ${(b.maxRssBytes / 2 ** 20).toFixed(0)} MiB`}`);
  }

  // Serving: one child per main configuration per round (its own peak RSS), rounds interleaved.
  const serve = new Map<string, { r: ServeChildResult; rss: number | null }[]>();
  const between: BandwidthResult[] = [];
  const base = { cacheDir, promptTokens, decodeSteps, warmup, quietWaitMs };
  const show = (id: string, r: ServeChildResult) =>
    log(`  ${id}: load ${r.loadSeconds.toFixed(2)} s, prefill ${r.prefillTokS.map((x) => x.toFixed(0)).join('/')} tok/s, decode ${r.decodeTokS.map((x) => x.toFixed(1)).join('/')} tok/s`);
  for (let round = 0; round < rounds; round++) {
    for (const c of configs) {
      // The bandwidth moves with whatever else shares the host's memory: sample it between configurations too.
      bwBusy.push((await quietMachine(quietWaitMs)).busy);
      between.push(await measureBandwidth({ threads, repetitions: 3 }));
      log(`serve ${c.id} (round ${round + 1}/${rounds})…`);
      const spec: ServeSpec = { ...base, modelDir: modelDirOf(c.model, ckpt), variants: [{ id: c.id, knobs: { threads, ...c.knobs }, driver: c.driver ?? 'generate' }], runs, rounds: 1 };
      const s = await runChild<Record<string, ServeChildResult>>(SELF, ['--child', 'serve', '--spec', JSON.stringify(spec)], { cwd: REPO, timeoutMs: 20 * 60_000 });
      serve.set(c.id, [...(serve.get(c.id) ?? []), { r: s.result[c.id], rss: s.maxRssBytes }]);
      show(c.id, s.result[c.id]);
    }
  }
  // Investigation: one child, every variant loaded, round-robin.
  if (investigation.length) {
    const invRounds = o.rounds ?? (quick ? 3 : 6);
    log(`investigation: ${investigation.length} variants × ${invRounds} rounds in one child…`);
    const spec: ServeSpec = {
      ...base,
      modelDir: ckpt,
      variants: investigation.map((c) => ({ id: c.id, knobs: { threads, ...c.knobs }, driver: c.driver ?? 'generate', promptTokens: c.promptTokens })),
      runs: 1,
      rounds: invRounds,
    };
    const s = await runChild<Record<string, ServeChildResult>>(SELF, ['--child', 'serve', '--spec', JSON.stringify(spec)], { cwd: REPO, timeoutMs: 60 * 60_000 });
    for (const c of investigation) {
      serve.set(c.id, [{ r: s.result[c.id], rss: null }]);
      show(c.id, s.result[c.id]);
    }
  }

  log('bandwidth (after)…');
  const after = await bw();
  const multi = [...before, ...between, ...after].filter((b) => b.threads === threads);
  const usedGbPerSec = median(multi.flatMap((b) => b.gbPerSec));
  const quietGbPerSec = Math.max(...multi.flatMap((b) => b.gbPerSec));

  const result = (c: BenchConfig): ConfigResult => {
    const s = serve.get(c.id) ?? [];
    const g = graphs.get(c.id) as GraphBytes;
    const b = builds.get(c.id);
    const decode = summarize(s.flatMap((x) => x.r.decodeTokS));
    const limit = (usedGbPerSec * 1e9) / g.perTokenBytes;
    const quiet = 1000 / median(s.flatMap((x) => x.r.decodeStepP10Ms));
    const limitQuiet = (quietGbPerSec * 1e9) / g.perTokenBytes;
    return {
      id: c.id,
      label: c.label,
      model: c.model,
      knobs: c.knobs,
      build: b ? { seconds: b.r.buildSeconds, peakRssBytes: b.rss, cached: b.r.cached, dataBytes: b.r.dataBytes } : null,
      graph: g,
      loadSeconds: s.map((x) => x.r.loadSeconds),
      prefillTokS: summarize(s.flatMap((x) => x.r.prefillTokS)),
      decodeTokS: decode,
      decodeStepMs: summarize(s.flatMap((x) => x.r.decodeStepMs)),
      decodeTokSQuiet: quiet,
      bandwidthLimitTokSQuiet: limitQuiet,
      decodePctOfLimitQuiet: (100 * quiet) / limitQuiet,
      servePeakRssBytes: s.some((x) => x.rss === null) ? null : Math.max(...s.map((x) => x.rss as number)),
      loadAvg: median(s.flatMap((x) => x.r.loadAvg)),
      busyBefore: median(s.flatMap((x) => x.r.busyBefore.filter((b): b is number => b !== null))),
      bandwidthLimitTokS: limit,
      decodePctOfLimit: (100 * decode.median) / limit,
      firstIds: s[0]?.r.firstIds ?? [],
    };
  };
  const configResults = configs.map(result);
  const investigationResults = investigation.map(result);
  const find = (id: string) => configResults.find((r) => r.id === id) ?? investigationResults.find((r) => r.id === id);
  const key = (id: string, f: (r: ConfigResult) => number) => {
    const r = find(id);
    return r ? round(f(r), 3) : null;
  };
  const summary: Record<string, number | null> = {
    memory_bandwidth_gb_s: round(usedGbPerSec, 2),
    memory_bandwidth_quiet_gb_s: round(quietGbPerSec, 2),
    memory_bandwidth_1t_gb_s: round(median([...before, ...after].filter((b) => b.threads === 1).flatMap((b) => b.gbPerSec)), 2),
  };
  for (const p of ['fp32', 'int8', 'int4', 'int4_b128']) {
    summary[`decode_tok_s_${p}`] = key(`0.5b-${p}`, (r) => r.decodeTokS.median);
    summary[`prefill_tok_s_${p}`] = key(`0.5b-${p}`, (r) => r.prefillTokS.median);
    summary[`bandwidth_limit_tok_s_${p}`] = key(`0.5b-${p}`, (r) => r.bandwidthLimitTokS);
    summary[`decode_pct_of_limit_${p}`] = key(`0.5b-${p}`, (r) => r.decodePctOfLimit);
    summary[`decode_tok_s_quiet_${p}`] = key(`0.5b-${p}`, (r) => r.decodeTokSQuiet);
    summary[`decode_pct_of_limit_quiet_${p}`] = key(`0.5b-${p}`, (r) => r.decodePctOfLimitQuiet);
    summary[`build_peak_rss_mb_${p}`] = key(`0.5b-${p}`, (r) => (r.build?.peakRssBytes ?? NaN) / 1e6);
    summary[`serve_peak_rss_mb_${p}`] = key(`0.5b-${p}`, (r) => (r.servePeakRssBytes ?? NaN) / 1e6);
    summary[`load_s_${p}`] = key(`0.5b-${p}`, (r) => median(r.loadSeconds));
  }
  const best = investigationResults.reduce<ConfigResult | null>((a, r) => (!a || r.decodeTokS.median > a.decodeTokS.median ? r : a), null);
  if (best) {
    summary.decode_tok_s_int4_best = round(best.decodeTokS.median, 3);
    summary.decode_pct_of_limit_int4_best = round(best.decodePctOfLimit, 3);
  }
  return {
    kind: 'latentwatch.bench.engine',
    version: 1,
    quick,
    machine,
    bandwidth: { before, between, after, usedGbPerSec, quietGbPerSec, threads, method: before[1].method, busyBefore: bwBusy },
    childBaselineRssBytes: baseline.maxRssBytes,
    settings: { promptTokens, decodeSteps, runs, rounds, warmup, threads, quietWaitMs, checkpoint: ckpt, cacheDir },
    configs: configResults,
    investigation: investigationResults,
    summary,
    seconds: (performance.now() - t0) / 1000,
  };
}

// ---------------------------------------------------------------------------------------------
// Report

const MB = (b: number) => (Number.isFinite(b) ? b / 1e6 : NaN);

function tableOf(rows: ConfigResult[], withBuild: boolean): string {
  const headers = [
    'config',
    ...(withBuild ? ['build s', 'build peak RSS MB'] : []),
    'load s',
    'prefill tok/s',
    'decode tok/s',
    'decode p10–p90',
    'decode quiet est.',
    'serve peak RSS MB',
    'others busy',
    'weights MB/token',
    'limit tok/s (median / quiet)',
    '% of limit (median / quiet)',
  ];
  return markdownTable(
    headers,
    rows.map((r) => [
      r.label,
      ...(withBuild ? [r.build ? `${r.build.seconds.toFixed(1)}${r.build.cached ? ' (cached)' : ''}` : null, MB(r.build?.peakRssBytes ?? NaN)] : []),
      median(r.loadSeconds),
      r.prefillTokS.median,
      r.decodeTokS.median,
      `${r.decodeTokS.p10.toFixed(1)}–${r.decodeTokS.p90.toFixed(1)}`,
      r.decodeTokSQuiet,
      MB(r.servePeakRssBytes ?? NaN),
      `${(100 * r.busyBefore).toFixed(0)}%`,
      MB(r.graph.perTokenBytes),
      `${r.bandwidthLimitTokS.toFixed(0)} / ${r.bandwidthLimitTokSQuiet.toFixed(0)}`,
      `${r.decodePctOfLimit.toFixed(0)}% / ${r.decodePctOfLimitQuiet.toFixed(0)}%`,
    ]),
  );
}

export function engineBenchMarkdown(r: EngineBenchResult): string {
  const bw = (list: BandwidthResult[], t: number) => list.find((b) => b.threads === t);
  const line = (t: number) =>
    `${t} thread${t > 1 ? 's' : ''}: before ${bw(r.bandwidth.before, t)?.medianGbPerSec.toFixed(1)} GB/s, after ${bw(r.bandwidth.after, t)?.medianGbPerSec.toFixed(1)} GB/s`;
  const s = r.settings;
  const parts = [
    `# Engine benchmark${r.quick ? ' (quick)' : ''}`,
    '',
    machineMarkdown(r.machine),
    '',
    `Memory bandwidth (${r.bandwidth.method}): ${line(1)}; ${line(r.bandwidth.threads)}. ` +
      `${r.bandwidth.threads} threads between configurations: ${r.bandwidth.between.map((b) => b.medianGbPerSec.toFixed(0)).join(', ') || '–'} GB/s. ` +
      `Limits use ${r.bandwidth.usedGbPerSec.toFixed(1)} GB/s (median of every ${r.bandwidth.threads}-thread repetition) and, ` +
      `for the quiet estimate, ${r.bandwidth.quietGbPerSec.toFixed(1)} GB/s (the fastest repetition). "decode quiet est." is 1000 / the ` +
      '10th-percentile decode step time (median over runs): the speed of the steps no other process slowed, on a machine shared with others.',
    '',
    `${s.promptTokens}-token prompt, ${s.decodeSteps} greedy decode steps through Engine.generate(), ${s.threads} intra-op threads; ` +
      `medians of ${s.runs} run(s) × ${s.rounds} round(s) after ${s.warmup} warm-up run. Before each timed run the bench waits up to ` +
      `${(s.quietWaitMs / 1000).toFixed(0)} s for the other processes to leave the CPUs ≤ 10% busy; "others busy" is their median share just before the runs. ` +
      'Build and serving each in a child process ' +
      `(peak RSS = its maxRSS; a child that only imports the builder peaks at ${MB(r.childBaselineRssBytes).toFixed(0)} MB). ` +
      'Weights MB/token: every initializer but the embedding gather table and rotary tables. qwen2-code-16m\'s weights ' +
      '(10–63 MB) largely fit in the CPU caches, so its "limit" bounds nothing; its decode is per-step overhead.',
    '',
    tableOf(r.configs, true),
  ];
  if (r.investigation.length) parts.push('', '## int4 decode investigation (Qwen2.5-0.5B shape)', '', tableOf(r.investigation, false));
  parts.push('', `Total ${r.seconds.toFixed(0)} s.`);
  return parts.join('\n');
}

// ---------------------------------------------------------------------------------------------
// CLI

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['out', 'md', 'runs', 'rounds', 'only', 'ckpt', 'cache', 'child', 'spec', 'threads', 'quiet-wait']);
  if (await runChildStep(a.get('child'), a.get('spec'), { build: childBuild, serve: childServe, noop: childNoop })) return;
  if (a.has('help')) {
    console.log(usageOf(SELF));
    return;
  }
  const quick = a.has('quick');
  const res = await runEngineBench({
    quick,
    investigate: a.has('investigate'),
    runs: a.has('runs') ? a.num('runs', 2) : undefined,
    rounds: a.has('rounds') ? a.num('rounds', 1) : undefined,
    only: a.get('only')?.split(','),
    checkpoint: a.get('ckpt'),
    cacheDir: a.get('cache'),
    reuseBuilds: a.has('reuse-builds'),
    threads: a.has('threads') ? a.num('threads', availableParallelism()) : undefined,
    quietWaitMs: a.has('quiet-wait') ? a.num('quiet-wait', 0) * 1000 : undefined,
  });
  writeBenchResult(a, `engine${quick ? '-quick' : ''}`, res, engineBenchMarkdown(res));
}

runIfMain(import.meta.url, main);
