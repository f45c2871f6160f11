/**
 * Peer comparisons (issue 6, section 1 (b) and (c)) at the Qwen2.5-0.5B shape (the random checkpoint
 * of bench/random-checkpoint.ts with the real Qwen2.5 tokenizer), the same weights everywhere:
 *
 * (b) transformers.js (@huggingface/transformers 4.x, on the same onnxruntime-node 1.30) generating
 *     with our int4 graph built with the 'hf' interface (src/model/graph.ts), against our Engine on
 *     the same int4 weights with the engine's interface: model.generate() and Engine.generate(),
 *     same 128-token prompt, 128 greedy decode steps, same onnxruntime session options (CPU, all
 *     optimizations, N intra-op threads, 1 inter-op thread). The engine runs twice: a bare build (no
 *     taps, no ports: the graph transformers.js runs but for the interface) and its serving default
 *     (every layer tapped, every port). Their greedy tokens are compared, and transformers.js'
 *     tokenizer on the prompt.
 * (c) llama.cpp through node-llama-cpp (its prebuilt CPU binaries from npm; never built, never
 *     downloaded from outside the registry; not a devDependency: bench/lib/llamacpp.ts finds it or,
 *     unless --no-install, installs it under /tmp/lw-bench/node-llama-cpp) on GGUF files written
 *     from the same checkpoint by bench/lib/gguf.ts (Q4_0, Q8_0; F32 outside --quick), measured as
 *     ANCHORS.md did: 2 threads, context 512, flash attention, 128-token prompt, 128 greedy decode
 *     steps. First a check that the GGUF writer is
 *     right: the trained models/qwen2-code-16m as an F32 GGUF must reproduce transformers' greedy
 *     continuations (its reference.json) and tokenize its prompts the same.
 *
 * All runtimes are loaded in one child process and run in turn, run by run (A B C … A B C …): the
 * machine is shared, and a burst of load from another process then falls on all of them alike, so
 * their ratios hold. Timing as bench/engine.ts: 129 tokens per run, so prefill = prompt ÷ (first
 * token − start) and decode = 128 ÷ (token 129 − token 1), each span exactly the passes it names.
 * Medians over runs; the 1-minute load average and the CPU other processes used are recorded per
 * run, and the medians are over the runs no other process disturbed (when there are any).
 *
 *   npx tsx bench/peers.ts [--quick] [--out FILE.json] [--md FILE.md] [--runs N] [--rounds N]
 *       [--threads N] [--gguf Q4_0,Q8_0,F32] [--skip-transformersjs] [--skip-llamacpp]
 *       [--ckpt DIR] [--cache DIR] [--gguf-dir DIR] [--budget SECONDS] [--quiet-wait SECONDS] [--no-install]
 *
 * --budget bounds the wall time of the timed runs (default 150 s with --quick, 900 s without): no new
 * cycle starts past it once every runtime has one run, so a busy machine shortens the series rather
 * than the bench overrunning. The runs made are in the JSON (rows[].runs, cleanRuns). Before each
 * cycle it waits up to --quiet-wait seconds (10 with --quick, 30 without) for other processes to
 * use under 0.3 cores, and it records per run the CPU other processes used (bench/lib/cpu-share.ts).
 *
 * Big files go under /tmp/lw-bench (builds, GGUFs, the transformers.js model layout).
 */
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { emitChildResult, runChild, runChildStep } from './lib/child.js';
import { GGUF_WEIGHT_TYPES, type GgufWeightType } from './lib/gguf.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { markdownTable, parseArgs, runIfMain, usageOf, writeBenchResult } from './lib/report.js';
import { median, round, summarize, type Summary } from './lib/stats.js';
import { installedVersion } from './lib/versions.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const CODE16M = join(REPO, 'models', 'qwen2-code-16m');
const DEFAULT_CKPT = '/tmp/lw-bench/qwen2.5-0.5b-random';
const DEFAULT_CACHE = '/tmp/lw-bench/builds';
const DEFAULT_GGUF_DIR = '/tmp/lw-bench/gguf';
const TFJS_ROOT = '/tmp/lw-bench/transformersjs';
const TFJS_NAME = 'qwen2.5-0.5b-random';

const PROMPT_TEXT =
  'A language model served on a small machine spends most of each decoded token reading its weights from memory, ' +
  'so the fastest runtime is the one that reads the fewest bytes and wastes the least time between kernels. ' +
  'function add(a, b) {\n  return a + b;\n}\n';

// ---------------------------------------------------------------------------------------------
// Shared shapes

interface RunSeries {
  loadSeconds: number;
  prefillTokS: number[];
  decodeTokS: number[];
  /** Median ms per decode step, per run. */
  decodeStepMs: number[];
  loadAvg: number[];
  /** Cores' worth of CPU other processes used during each run (bench/lib/cpu-share.ts; null where unknown). */
  othersCores: (number | null)[];
  ids: number[];
}

export interface PeerRow {
  id: string;
  label: string;
  runtime: 'latentwatch' | 'transformers.js' | 'llama.cpp';
  weights: string;
  fileBytes: number | null;
  loadSeconds: number[];
  prefillTokS: Summary;
  decodeTokS: Summary;
  decodeStepMs: Summary;
  loadAvg: number;
  /** Median over the runs used of the CPU other processes used during the run, in cores (0 = machine to ourselves). */
  othersCores: number | null;
  /** Timed runs made, and how many were clean (other processes under CLEAN_OTHERS_CORES). */
  runs: number;
  cleanRuns: number;
  /** 'clean': the summaries are over clean runs only; 'all': no run was clean, so over all of them. */
  runsUsed: 'clean' | 'all';
  /** Resident memory the runtime added to the shared process (RSS after load and warm-up minus before). */
  rssDeltaBytes: number;
  /** The first generated ids of the first run. */
  firstIds: number[];
}

interface TimedRun {
  start: number;
  t: number[];
  ids: number[];
}

function seriesPush(s: RunSeries, r: TimedRun, promptTokens: number, decodeSteps: number, load: number, others: number | null): void {
  if (r.t.length < decodeSteps + 1) throw new Error(`run produced ${r.t.length} tokens, wanted ${decodeSteps + 1}`);
  const step = r.t.slice(1, decodeSteps + 1).map((y, i) => y - r.t[i]);
  s.prefillTokS.push(promptTokens / ((r.t[0] - r.start) / 1000));
  s.decodeTokS.push(decodeSteps / ((r.t[decodeSteps] - r.t[0]) / 1000));
  s.decodeStepMs.push(median(step));
  s.loadAvg.push(load);
  s.othersCores.push(others);
  if (s.ids.length === 0) s.ids = r.ids;
}

/** A run during which other processes used less CPU than this (cores) counts as clean. */
const CLEAN_OTHERS_CORES = 0.3;

const newSeries = (loadSeconds: number): RunSeries => ({ loadSeconds, prefillTokS: [], decodeTokS: [], decodeStepMs: [], loadAvg: [], othersCores: [], ids: [] });

async function promptIds(ckptDir: string, n: number): Promise<number[]> {
  const { Tokenizer } = await import('../src/engine/tokenizer.js');
  const tok = await Tokenizer.fromDir(ckptDir);
  let ids: number[] = [];
  while (ids.length < n) ids = ids.concat(tok.encode(PROMPT_TEXT, { addSpecialTokens: false }));
  return ids.slice(0, n);
}

function prefixMatch(a: readonly number[], b: readonly number[]): number {
  let k = 0;
  while (k < a.length && k < b.length && a[k] === b[k]) k++;
  return k;
}

// ---------------------------------------------------------------------------------------------
// Children

interface PrepareSpec {
  ckpt: string;
  cacheDir: string;
  ggufDir: string;
  ggufTypes: GgufWeightType[];
  transformersjs: boolean;
}

interface PrepareResult {
  builds: { id: string; modelPath: string; seconds: number; cached: boolean; dataBytes: number }[];
  ggufs: { type: GgufWeightType; path: string; bytes: number; seconds: number; reused: boolean }[];
  ggufErrors: Partial<Record<GgufWeightType, string>>;
  tfjsModelDir: string | null;
}

const ENGINE_BARE = { precision: 'int4' as const, taps: [] as number[], ports: 'none' as const };
const ENGINE_SERVING = { precision: 'int4' as const };
const HF_BUILD = { precision: 'int4' as const, interface: 'hf' as const };

async function childPrepare(spec: PrepareSpec): Promise<void> {
  const { ensureBuild } = await import('../src/model/build.js');
  const { openCheckpoint } = await import('../src/model/checkpoint.js');
  const { writeGguf } = await import('./lib/gguf.js');
  const { layoutTransformersJsModel } = await import('./lib/transformersjs.js');
  const ckpt = openCheckpoint(spec.ckpt);
  const res: PrepareResult = { builds: [], ggufs: [], ggufErrors: {}, tfjsModelDir: null };
  if (spec.transformersjs) {
    for (const [id, req] of [
      ['hf-int4', HF_BUILD],
      ['engine-int4-bare', ENGINE_BARE],
      ['engine-int4-serving', ENGINE_SERVING],
    ] as const) {
      const t0 = performance.now();
      const b = ensureBuild(ckpt, req, { cacheDir: spec.cacheDir });
      res.builds.push({ id, modelPath: b.modelPath, seconds: b.cached ? b.buildSeconds : (performance.now() - t0) / 1000, cached: b.cached, dataBytes: b.dataBytes });
      console.error(`  build ${id}: ${b.cached ? 'cached' : `${((performance.now() - t0) / 1000).toFixed(1)} s`}`);
      if (id === 'hf-int4') res.tfjsModelDir = layoutTransformersJsModel({ checkpointDir: spec.ckpt, modelPath: b.modelPath, root: TFJS_ROOT, name: TFJS_NAME, dtype: 'q4' });
    }
  }
  for (const type of spec.ggufTypes) {
    try {
      const g = writeGguf(ckpt, type, join(spec.ggufDir, `${ckpt.fingerprint}-${type}.gguf`), { name: 'Qwen2.5-0.5B-shaped random (latentwatch bench)', log: (l) => console.error(`  ${l}`) });
      res.ggufs.push({ type, path: g.path, bytes: g.bytes, seconds: g.seconds, reused: g.reused });
      console.error(`  gguf ${type}: ${g.reused ? 'reused' : `${g.seconds.toFixed(1)} s`}, ${(g.bytes / 1e6).toFixed(0)} MB`);
    } catch (e) {
      // One failing file must not cost the transformers.js comparison or the other files.
      res.ggufErrors[type] = String((e as Error).stack ?? e);
      console.error(`  gguf ${type} failed: ${String(e)}`);
    }
  }
  emitChildResult(res);
}

interface CompareSpec {
  ckpt: string;
  cacheDir: string;
  threads: number;
  promptTokens: number;
  decodeSteps: number;
  runs: number;
  warmup: number;
  transformersjs: boolean;
  serving: boolean;
  ggufs: { type: GgufWeightType; path: string }[];
  llamaContext: number;
  /** node-llama-cpp's entry file (bench/lib/llamacpp.ts ensureNodeLlamaCpp). */
  nlcEntry: string | null;
  /** Wall-clock budget of the timed runs: no new cycle starts past it once every variant has one run. */
  budgetSeconds: number;
  /** Before each cycle, wait at most this long for other processes to leave the CPUs nearly idle. */
  quietWaitSeconds: number;
}

interface CompareChildResult {
  series: Record<string, RunSeries>;
  /** Resident memory the variant added: RSS after its load and warm-up minus before (mapped files count once touched). */
  rssDeltaBytes: Record<string, number>;
  errors: Record<string, string>;
  tfjsTokenizerMatch: boolean | null;
  llamaTokenizerMatch: boolean | null;
  llamaInfo: { buildType: string; systemInfo: string; version: string | null } | null;
  /** Seconds spent waiting for a quiet machine before the cycles. */
  quietWaitedSeconds: number;
}

/**
 * Every runtime in one process, run by run in turn (A B C … A B C …), so a burst of load from
 * another process on the shared machine falls on all of them alike and their ratios hold. Each
 * library's threads sleep while another runs (onnxruntime and llama.cpp both park idle workers).
 */
async function childCompare(spec: CompareSpec): Promise<void> {
  const { Engine } = await import('../src/engine/engine.js');
  const ids = await promptIds(spec.ckpt, spec.promptTokens);
  const newTokens = spec.decodeSteps + 1;
  /** run(n): greedy generation of n tokens after the prompt. */
  type Variant = { id: string; run: (n: number) => Promise<TimedRun>; close: () => Promise<void>; s: RunSeries };
  const variants: Variant[] = [];
  // Warm-up: the prompt and a few decode steps (first-run allocations, mapped pages), not a whole run.
  const warmupTokens = 9;
  const res: CompareChildResult = { series: {}, rssDeltaBytes: {}, errors: {}, tfjsTokenizerMatch: null, llamaTokenizerMatch: null, llamaInfo: null, quietWaitedSeconds: 0 };
  const { markCpu, othersCores, waitForQuiet } = await import('./lib/cpu-share.js');
  const tokensOf = (encode: (t: string) => number[]) => {
    let out: number[] = [];
    while (out.length < spec.promptTokens) out = out.concat(encode(PROMPT_TEXT));
    return JSON.stringify(out.slice(0, spec.promptTokens)) === JSON.stringify(ids);
  };
  /** Loads one variant and warms it up; a failure is recorded and the others go on. */
  const add = async (id: string, load: () => Promise<{ run: (n: number) => Promise<TimedRun>; close: () => Promise<void> }>) => {
    const rss0 = process.memoryUsage().rss;
    const t0 = performance.now();
    try {
      const v = await load();
      const s = newSeries((performance.now() - t0) / 1000);
      for (let w = 0; w < spec.warmup; w++) await v.run(warmupTokens);
      res.rssDeltaBytes[id] = process.memoryUsage().rss - rss0;
      variants.push({ id, ...v, s });
      console.error(`  ${id}: loaded in ${s.loadSeconds.toFixed(2)} s`);
    } catch (e) {
      res.errors[id] = String((e as Error).stack ?? e);
      console.error(`  ${id}: failed to load: ${String(e)}`);
    }
  };
  const engineLoad = (knobs: typeof ENGINE_BARE | typeof ENGINE_SERVING) => async () => {
    const engine = await Engine.load(spec.ckpt, { ...knobs, threads: spec.threads, cacheDir: spec.cacheDir });
    const run = async (n: number): Promise<TimedRun> => {
      const t: number[] = [];
      const out: number[] = [];
      const start = performance.now();
      // As bench/engine.ts: t[0] is the prompt step (prefill done, token 1 about to be sampled) and
      // token k's step follows the pass that reads token k, so t[128] - t[0] spans 128 decode passes,
      // as transformers.js' and llama.cpp's token 1 → token 129 do.
      for await (const step of engine.generate({ promptIds: ids, maxTokens: n, ignoreEos: true, sampling: { temperature: 0 } })) {
        t.push(performance.now());
        if (step.kind === 'token') out.push(step.tokenId);
      }
      return { start, t, ids: out };
    };
    return { run, close: () => engine.close() };
  };
  await add('latentwatch-int4-bare', engineLoad(ENGINE_BARE));
  if (spec.serving) await add('latentwatch-int4-serving', engineLoad(ENGINE_SERVING));
  if (spec.transformersjs) {
    await add('transformersjs-int4', async () => {
      const { loadTransformersJs } = await import('./lib/transformersjs.js');
      const tf = await loadTransformersJs({ root: TFJS_ROOT, name: TFJS_NAME, dtype: 'q4', threads: spec.threads });
      // transformers.js' own tokenizer on the laid-out tokenizer files.
      const tok = await tf.tfjs.AutoTokenizer.from_pretrained(TFJS_NAME);
      res.tfjsTokenizerMatch = tokensOf((t) => tok.encode(t, { add_special_tokens: false }));
      return { run: (n: number) => tf.greedy(ids, n), close: () => tf.dispose() };
    });
  }
  for (const g of spec.ggufs) {
    await add(`llamacpp-${GGUF_KEY[g.type]}`, async () => {
      const { loadLlamaCpp } = await import('./lib/llamacpp.js');
      const l = await loadLlamaCpp({ modelPath: g.path, threads: spec.threads, contextSize: spec.llamaContext, flashAttention: true, entry: spec.nlcEntry });
      res.llamaTokenizerMatch = tokensOf((t) => l.tokenize(t));
      res.llamaInfo = l.info;
      return { run: (n: number) => l.greedy(ids, n), close: () => l.dispose() };
    });
  }

  const timed0 = performance.now();
  for (let r = 0; r < spec.runs; r++) {
    if (r > 0 && (performance.now() - timed0) / 1000 > spec.budgetSeconds) {
      console.error(`  time budget of ${spec.budgetSeconds} s spent after ${r} run(s) of each`);
      break;
    }
    if (spec.quietWaitSeconds > 0) {
      const q = await waitForQuiet(spec.quietWaitSeconds);
      res.quietWaitedSeconds += q.waitedSeconds;
      if (q.waitedSeconds > 1.5) console.error(`  waited ${q.waitedSeconds.toFixed(0)} s for a quiet machine (others use ${q.othersCores?.toFixed(2) ?? '?'} cores)`);
    }
    // The order rotates each cycle, so no runtime always runs first after the quiet wait.
    const order = variants.map((_, i) => variants[(i + r) % variants.length]);
    for (const v of order) {
      // A run during which another process took CPU is kept, and (within the budget) run once more.
      for (let attempt = 0; attempt < 2; attempt++) {
        if (res.errors[v.id]) break;
        const load = loadavg()[0];
        let others: number | null = null;
        try {
          const m = markCpu();
          const out = await v.run(newTokens);
          others = othersCores(m);
          seriesPush(v.s, out, ids.length, spec.decodeSteps, load, others);
          console.error(
            `  ${v.id}: prefill ${v.s.prefillTokS.at(-1)!.toFixed(0)} tok/s, decode ${v.s.decodeTokS.at(-1)!.toFixed(1)} tok/s (load ${load.toFixed(2)}, others ${others?.toFixed(2) ?? '?'} cores)`,
          );
        } catch (e) {
          res.errors[v.id] = String((e as Error).stack ?? e);
        }
        if (others === null || others < CLEAN_OTHERS_CORES || (performance.now() - timed0) / 1000 > spec.budgetSeconds) break;
      }
    }
  }
  for (const v of variants) {
    res.series[v.id] = v.s;
    await v.close().catch(() => undefined);
  }
  emitChildResult(res);
}

interface GgufCheckResult {
  prompts: number;
  greedyMatches: number;
  tokenizerMatches: number;
  prefixMatch: number[];
  fileBytes: number;
}

/** The GGUF writer against transformers: qwen2-code-16m (trained) as F32, greedy 24 tokens per prompt. */
async function childGgufCheck(spec: { ggufDir: string; nlcEntry: string | null }): Promise<void> {
  const { openCheckpoint } = await import('../src/model/checkpoint.js');
  const { writeGguf } = await import('./lib/gguf.js');
  const { loadLlamaCpp } = await import('./lib/llamacpp.js');
  const ckpt = openCheckpoint(CODE16M);
  const g = writeGguf(ckpt, 'F32', join(spec.ggufDir, `${ckpt.fingerprint}-F32.gguf`), { name: 'qwen2-code-16m' });
  const ref = JSON.parse(readFileSync(join(CODE16M, 'reference.json'), 'utf8')) as { prompts: { text: string; input_ids: number[]; greedy_continuation: number[] }[] };
  const l = await loadLlamaCpp({ modelPath: g.path, threads: 2, contextSize: 512, flashAttention: true, entry: spec.nlcEntry });
  const res: GgufCheckResult = { prompts: ref.prompts.length, greedyMatches: 0, tokenizerMatches: 0, prefixMatch: [], fileBytes: g.bytes };
  for (const p of ref.prompts) {
    const out = await l.greedy(p.input_ids, p.greedy_continuation.length);
    const k = prefixMatch(out.ids, p.greedy_continuation);
    res.prefixMatch.push(k);
    if (k === p.greedy_continuation.length) res.greedyMatches++;
    if (JSON.stringify(l.tokenize(p.text)) === JSON.stringify(p.input_ids)) res.tokenizerMatches++;
  }
  await l.dispose();
  emitChildResult(res);
}

// ---------------------------------------------------------------------------------------------
// Orchestration

export interface PeersBenchOptions {
  quick?: boolean;
  runs?: number;
  rounds?: number;
  threads?: number;
  ggufTypes?: GgufWeightType[];
  transformersjs?: boolean;
  llamacpp?: boolean;
  checkpoint?: string;
  cacheDir?: string;
  ggufDir?: string;
  /** Wall-clock budget of all timed runs (seconds); each runtime still gets at least one. */
  budgetSeconds?: number;
  /** Before each cycle of runs, wait at most this long for other processes to go quiet (default 10 s quick, 30 s full). */
  quietWaitSeconds?: number;
  /** Install node-llama-cpp into a private prefix under /tmp when it is not installed (default true). */
  installLlamaCpp?: boolean;
  log?: (line: string) => void;
}

export interface PeersBenchResult {
  kind: 'latentwatch.bench.peers';
  version: 1;
  quick: boolean;
  machine: MachineDescription;
  settings: {
    promptTokens: number;
    decodeSteps: number;
    runs: number;
    rounds: number;
    warmup: number;
    threads: number;
    llamaContext: number;
    checkpoint: string;
    ggufTypes: GgufWeightType[];
    budgetSeconds: number;
    quietWaitSeconds: number;
    versions: Record<string, string | null>;
  };
  rows: PeerRow[];
  transformersjs: { tokenizerMatch: boolean; greedyPrefixMatch: number; greedyTokens: number; servingPrefixMatch: number | null } | { error: string } | null;
  llamacpp: { info: CompareChildResult['llamaInfo']; tokenizerMatch: boolean | null } | null;
  /** Per variant id: why it has no numbers. */
  errors: Record<string, string>;
  ggufCheck: GgufCheckResult | { error: string } | null;
  prepare: PrepareResult | null;
  summary: Record<string, number | string | null>;
  seconds: number;
}

const GGUF_KEY: Record<GgufWeightType, string> = { Q4_0: 'q4_0', Q8_0: 'q8_0', F32: 'f32' };

const VARIANT_LABELS: Record<string, string> = {
  'latentwatch-int4-bare': 'latentwatch Engine, int4 graph without taps or ports',
  'latentwatch-int4-serving': 'latentwatch Engine, int4 serving graph (every layer tapped, every port)',
  'transformersjs-int4': "transformers.js model.generate(), the same int4 graph with the 'hf' interface",
  'llamacpp-q4_0': 'llama.cpp (node-llama-cpp), Q4_0 GGUF',
  'llamacpp-q8_0': 'llama.cpp (node-llama-cpp), Q8_0 GGUF',
  'llamacpp-f32': 'llama.cpp (node-llama-cpp), F32 GGUF',
};

export async function runPeersBench(o: PeersBenchOptions = {}): Promise<PeersBenchResult> {
  const t0 = performance.now();
  const quick = o.quick ?? false;
  const log = o.log ?? ((l: string) => console.error(l));
  const threads = o.threads ?? 2;
  const runs = o.runs ?? (quick ? 3 : 8);
  const rounds = o.rounds ?? (quick ? 1 : 2);
  // On a busy shared machine llama.cpp can fall to a few tokens/s; bound the timed runs' wall time.
  const budgetSeconds = o.budgetSeconds ?? (quick ? 150 : 900);
  const quietWaitSeconds = o.quietWaitSeconds ?? (quick ? 10 : 30);
  const warmup = 1;
  const promptTokens = 128;
  const decodeSteps = 128;
  const llamaContext = 512;
  const ckpt = resolve(o.checkpoint ?? DEFAULT_CKPT);
  const cacheDir = resolve(o.cacheDir ?? DEFAULT_CACHE);
  const ggufDir = resolve(o.ggufDir ?? DEFAULT_GGUF_DIR);
  const doTfjs = o.transformersjs ?? true;
  const doLlama = o.llamacpp ?? true;
  const ggufTypes: GgufWeightType[] = doLlama ? (o.ggufTypes ?? (quick ? ['Q4_0', 'Q8_0'] : ['Q4_0', 'Q8_0', 'F32'])) : [];
  // node-llama-cpp is no devDependency (see bench/lib/llamacpp.ts): find it, or install it under /tmp.
  const { ensureNodeLlamaCpp } = await import('./lib/llamacpp.js');
  const nlc = doLlama ? ensureNodeLlamaCpp({ install: o.installLlamaCpp ?? true, log }) : null;
  if (nlc && !nlc.entry) log(`peers: llama.cpp not measured: ${nlc.reason}`);
  else if (nlc) log(`peers: node-llama-cpp ${nlc.version} (${nlc.from === 'project' ? "the project's node_modules" : 'private prefix under /tmp'})`);
  const llamaReady = nlc?.entry ? true : false;
  const machine = describeMachine();
  const summary: Record<string, number | string | null> = {};
  const errors: Record<string, string> = {};
  const onLog = (l: string) => log(l);
  const firstLine = (e: unknown) => String((e as Error).message ?? e).split('\n')[0];

  const { writeRandomCheckpoint } = await import('./random-checkpoint.js');
  log(`random checkpoint at ${ckpt}…`);
  const info = writeRandomCheckpoint(ckpt, undefined, { log });
  log(info.reused ? '  reused' : `  written in ${info.seconds.toFixed(1)} s`);

  let prepare: PrepareResult | null = null;
  let prepareError: string | null = null;
  log('peers: builds and GGUF files…');
  try {
    const spec: PrepareSpec = { ckpt, cacheDir, ggufDir, ggufTypes: llamaReady ? ggufTypes : [], transformersjs: doTfjs };
    prepare = (await runChild<PrepareResult>(SELF, ['--child', 'prepare', '--spec', JSON.stringify(spec)], { cwd: REPO, timeoutMs: 30 * 60_000, onLog })).result;
    for (const [type, e] of Object.entries(prepare.ggufErrors)) errors[`llamacpp-${GGUF_KEY[type as GgufWeightType]}`] = `writing the GGUF failed: ${e}`;
  } catch (e) {
    prepareError = firstLine(e);
    log(`peers: prepare failed: ${prepareError}`);
  }

  // The GGUF writer against transformers (qwen2-code-16m, trained) before trusting llama.cpp's numbers.
  let ggufCheck: PeersBenchResult['ggufCheck'] = null;
  if (doLlama && !llamaReady) ggufCheck = { error: nlc?.reason ?? 'node-llama-cpp not found' };
  if (doLlama && llamaReady) {
    log('peers: GGUF check (qwen2-code-16m F32 through llama.cpp vs transformers)…');
    try {
      ggufCheck = (await runChild<GgufCheckResult>(SELF, ['--child', 'gguf-check', '--spec', JSON.stringify({ ggufDir, nlcEntry: nlc?.entry ?? null })], { cwd: REPO, timeoutMs: 5 * 60_000, onLog })).result;
      log(`  greedy continuations identical: ${ggufCheck.greedyMatches}/${ggufCheck.prompts}, tokenizer ${ggufCheck.tokenizerMatches}/${ggufCheck.prompts}`);
    } catch (e) {
      ggufCheck = { error: String((e as Error).message ?? e) };
      log(`  failed: ${firstLine(e)}`);
    }
  }

  // Every runtime in one process per round, run by run in turn.
  const series = new Map<string, RunSeries[]>();
  const rss: { peak: number[]; delta: Map<string, number[]> } = { peak: [], delta: new Map() };
  let last: CompareChildResult | null = null;
  if (prepare) {
    for (let round = 0; round < rounds; round++) {
      log(`peers: latentwatch${doTfjs ? ', transformers.js' : ''}${prepare.ggufs.length ? `, llama.cpp ${prepare.ggufs.map((g) => g.type).join('/')}` : ''} in one process (round ${round + 1}/${rounds})…`);
      const spec: CompareSpec = {
        ckpt,
        cacheDir,
        threads,
        promptTokens,
        decodeSteps,
        runs,
        warmup,
        transformersjs: doTfjs,
        serving: true,
        ggufs: prepare.ggufs.map((g) => ({ type: g.type, path: g.path })),
        llamaContext,
        budgetSeconds: budgetSeconds / rounds,
        quietWaitSeconds,
        nlcEntry: nlc?.entry ?? null,
      };
      try {
        const c = await runChild<CompareChildResult>(SELF, ['--child', 'compare', '--spec', JSON.stringify(spec)], { cwd: REPO, timeoutMs: 30 * 60_000, onLog });
        last = c.result;
        rss.peak.push(c.maxRssBytes);
        for (const [id, s] of Object.entries(c.result.series)) series.set(id, [...(series.get(id) ?? []), s]);
        for (const [id, d] of Object.entries(c.result.rssDeltaBytes)) rss.delta.set(id, [...(rss.delta.get(id) ?? []), d]);
        for (const [id, e] of Object.entries(c.result.errors)) errors[id] ??= e;
      } catch (e) {
        errors.compare = String((e as Error).message ?? e);
        log(`  failed: ${firstLine(e)}`);
        break;
      }
    }
  }

  // Rows
  const buildBytes = (id: string) => prepare?.builds.find((b) => b.id === id)?.dataBytes ?? null;
  const fileBytes: Record<string, number | null> = {
    'latentwatch-int4-bare': buildBytes('engine-int4-bare'),
    'latentwatch-int4-serving': buildBytes('engine-int4-serving'),
    'transformersjs-int4': buildBytes('hf-int4'),
  };
  for (const g of prepare?.ggufs ?? []) fileBytes[`llamacpp-${GGUF_KEY[g.type]}`] = g.bytes;
  const rows: PeerRow[] = [];
  for (const [id, ss] of series) {
    if (ss.every((x) => x.decodeTokS.length === 0)) continue;
    // Summaries over the clean runs (other processes under CLEAN_OTHERS_CORES) when there are any.
    const all = ss.flatMap((x) => x.decodeTokS.map((_, i) => ({ x, i })));
    const clean = all.filter(({ x, i }) => x.othersCores[i] !== null && x.othersCores[i]! < CLEAN_OTHERS_CORES);
    const used = clean.length ? clean : all;
    const pick = (f: (x: RunSeries) => (number | null)[]) => used.map(({ x, i }) => f(x)[i]).filter((v): v is number => v !== null && Number.isFinite(v));
    rows.push({
      id,
      label: VARIANT_LABELS[id] ?? id,
      runtime: id.startsWith('latentwatch') ? 'latentwatch' : id.startsWith('transformersjs') ? 'transformers.js' : 'llama.cpp',
      weights: id.startsWith('llamacpp') ? id.slice('llamacpp-'.length).toUpperCase() : 'int4 MatMulNBits bs32 acc4',
      fileBytes: fileBytes[id] ?? null,
      loadSeconds: ss.map((x) => round(x.loadSeconds, 3)),
      prefillTokS: summarize(pick((x) => x.prefillTokS)),
      decodeTokS: summarize(pick((x) => x.decodeTokS)),
      decodeStepMs: summarize(pick((x) => x.decodeStepMs)),
      loadAvg: median(pick((x) => x.loadAvg)),
      othersCores: pick((x) => x.othersCores).length ? round(median(pick((x) => x.othersCores)), 3) : null,
      runs: all.length,
      cleanRuns: clean.length,
      runsUsed: clean.length ? 'clean' : 'all',
      rssDeltaBytes: median(rss.delta.get(id) ?? []),
      firstIds: ss[0]?.ids.slice(0, 8) ?? [],
    });
  }
  const get = (id: string) => rows.find((r) => r.id === id);

  // Agreement
  let transformersjs: PeersBenchResult['transformersjs'] = null;
  const ours = series.get('latentwatch-int4-bare')?.[0]?.ids;
  const theirs = series.get('transformersjs-int4')?.[0]?.ids;
  const serving = series.get('latentwatch-int4-serving')?.[0]?.ids;
  if (doTfjs && ours?.length && theirs?.length) {
    transformersjs = { tokenizerMatch: last?.tfjsTokenizerMatch ?? false, greedyPrefixMatch: prefixMatch(ours, theirs), greedyTokens: ours.length, servingPrefixMatch: serving?.length ? prefixMatch(ours, serving) : null };
  } else if (doTfjs) {
    transformersjs = { error: errors['transformersjs-int4'] ?? errors.compare ?? (prepareError ? `prepare failed: ${prepareError}` : 'not measured') };
  }
  const llamacpp: PeersBenchResult['llamacpp'] = doLlama ? { info: last?.llamaInfo ?? null, tokenizerMatch: last?.llamaTokenizerMatch ?? null } : null;

  // Summary keys (null with a reason when not measured)
  const reasonFor = (id: string, skipped: string | null) =>
    skipped ?? (errors[id] ? firstLine(errors[id]) : errors.compare ? firstLine(errors.compare) : prepareError ? `prepare failed: ${prepareError}` : 'not measured');
  const put = (key: string, v: number | null | undefined, reason: string) => {
    summary[key] = v === undefined || v === null || !Number.isFinite(v) ? null : round(v, 3);
    if (summary[key] === null) summary[`${key}_reason`] = reason;
  };
  const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? a / b : null);
  const lw = get('latentwatch-int4-bare');
  const tf = get('transformersjs-int4');
  const tfReason = reasonFor('transformersjs-int4', doTfjs ? null : 'transformers.js skipped (--skip-transformersjs)');
  const lwReason = reasonFor('latentwatch-int4-bare', null);
  put('decode_tok_s_transformersjs_int4', tf?.decodeTokS.median, tfReason);
  put('prefill_tok_s_transformersjs_int4', tf?.prefillTokS.median, tfReason);
  put('decode_tok_s_latentwatch_int4_same_run', lw?.decodeTokS.median, lwReason);
  put('prefill_tok_s_latentwatch_int4_same_run', lw?.prefillTokS.median, lwReason);
  put('decode_tok_s_latentwatch_int4_serving_same_run', get('latentwatch-int4-serving')?.decodeTokS.median, reasonFor('latentwatch-int4-serving', null));
  put('latentwatch_vs_transformersjs_decode_ratio', ratio(lw?.decodeTokS.median, tf?.decodeTokS.median), tf ? lwReason : tfReason);
  // The fastest clean run: on this shared machine onnxruntime's decode is bimodal even when no other
  // process takes CPU (memory bandwidth is shared too), so the best run says what each can do.
  put('decode_tok_s_transformersjs_int4_best', tf?.decodeTokS.max, tfReason);
  put('decode_tok_s_latentwatch_int4_same_run_best', lw?.decodeTokS.max, lwReason);
  put('latentwatch_vs_transformersjs_decode_ratio_best', ratio(lw?.decodeTokS.max, tf?.decodeTokS.max), tf ? lwReason : tfReason);
  put('latentwatch_vs_transformersjs_prefill_ratio', ratio(lw?.prefillTokS.median, tf?.prefillTokS.median), tf ? lwReason : tfReason);
  if (transformersjs && !('error' in transformersjs)) {
    summary.transformersjs_greedy_tokens_identical = transformersjs.greedyPrefixMatch === transformersjs.greedyTokens ? 1 : 0;
    summary.transformersjs_greedy_prefix_match = transformersjs.greedyPrefixMatch;
    summary.transformersjs_tokenizer_identical = transformersjs.tokenizerMatch ? 1 : 0;
  }
  for (const type of GGUF_WEIGHT_TYPES) {
    const k = GGUF_KEY[type];
    const id = `llamacpp-${k}`;
    const r = get(id);
    const skipped = !doLlama
      ? 'llama.cpp skipped (--skip-llamacpp)'
      : !llamaReady
        ? (nlc?.reason ?? 'node-llama-cpp not found')
        : !ggufTypes.includes(type) ? `${type} not in this run's GGUF types (${quick ? '--quick runs Q4_0 and Q8_0' : 'see --gguf'})` : null;
    const reason = reasonFor(id, skipped);
    put(`decode_tok_s_llamacpp_${k}`, r?.decodeTokS.median, reason);
    put(`prefill_tok_s_llamacpp_${k}`, r?.prefillTokS.median, reason);
    if (r) summary[`llamacpp_${k}_file_mb`] = round((r.fileBytes ?? NaN) / 1e6, 1);
    if (r) put(`decode_tok_s_llamacpp_${k}_best`, r.decodeTokS.max, reason);
    if (r) put(`latentwatch_int4_vs_llamacpp_${k}_decode_ratio`, ratio(lw?.decodeTokS.median, r.decodeTokS.median), lwReason);
    if (r) put(`latentwatch_int4_vs_llamacpp_${k}_decode_ratio_best`, ratio(lw?.decodeTokS.max, r.decodeTokS.max), lwReason);
    if (r) put(`latentwatch_int4_vs_llamacpp_${k}_prefill_ratio`, ratio(lw?.prefillTokS.median, r.prefillTokS.median), lwReason);
  }
  if (llamacpp?.tokenizerMatch !== null && llamacpp?.tokenizerMatch !== undefined) summary.llamacpp_tokenizer_identical = llamacpp.tokenizerMatch ? 1 : 0;
  if (ggufCheck && !('error' in ggufCheck)) summary.llamacpp_gguf_check_greedy_identical = `${ggufCheck.greedyMatches}/${ggufCheck.prompts}`;
  summary.peers_load_avg_median = rows.length ? round(median(rows.flatMap((r) => [r.loadAvg])), 2) : null;
  const others = rows.flatMap((r) => (r.othersCores === null ? [] : [r.othersCores]));
  summary.peers_other_processes_cores_median = others.length ? round(median(others), 2) : null;
  summary.peers_process_peak_rss_mb = rss.peak.length ? round(Math.max(...rss.peak) / 1e6, 0) : null;

  return {
    kind: 'latentwatch.bench.peers',
    version: 1,
    quick,
    machine,
    settings: {
      promptTokens,
      decodeSteps,
      runs,
      rounds,
      warmup,
      threads,
      llamaContext,
      checkpoint: ckpt,
      ggufTypes,
      budgetSeconds,
      quietWaitSeconds,
      versions: {
        'onnxruntime-node': installedVersion('onnxruntime-node'),
        '@huggingface/transformers': installedVersion('@huggingface/transformers'),
        'node-llama-cpp': nlc?.version ?? null,
      },
    },
    rows,
    transformersjs,
    llamacpp,
    errors,
    ggufCheck,
    prepare,
    summary,
    seconds: (performance.now() - t0) / 1000,
  };
}

// ---------------------------------------------------------------------------------------------
// Report

export function peersBenchMarkdown(r: PeersBenchResult): string {
  const s = r.settings;
  const MB = (b: number | null) => (b === null || !Number.isFinite(b) ? null : b / 1e6);
  const lw = r.rows.find((x) => x.id === 'latentwatch-int4-bare');
  const parts = [
    `# Peer benchmark${r.quick ? ' (quick)' : ''}`,
    '',
    machineMarkdown(r.machine),
    '',
    `Qwen2.5-0.5B shape, random weights (${s.checkpoint}), real Qwen2.5 tokenizer, the same weights in every runtime. ${s.promptTokens}-token prompt, ` +
      `${s.decodeSteps} greedy decode steps, ${s.threads} threads. All runtimes in one process, run by run in turn; medians of up to ${s.runs} run(s) × ${s.rounds} ` +
      `process(es) after ${s.warmup} short warm-up each (prompt + 8 steps; timed runs bounded to ${s.budgetSeconds} s). llama.cpp: context ${s.llamaContext}, flash attention, CPU backend. ` +
      `Versions: ${Object.entries(s.versions)
        .map(([k, v]) => `${k} ${v ?? '?'}`)
        .join(', ')}.`,
    '',
    markdownTable(
      ['runtime / weights', 'file MB', 'load s', 'prefill tok/s', 'decode tok/s', 'decode best', 'decode p10–p90 (runs)', 'decode ÷ latentwatch int4', 'RSS added MB', 'load avg', "others' CPU (cores)"],
      r.rows.map((x) => [
        x.label,
        MB(x.fileBytes),
        median(x.loadSeconds),
        x.prefillTokS.median,
        x.decodeTokS.median,
        x.decodeTokS.max,
        `${x.decodeTokS.p10.toFixed(1)}–${x.decodeTokS.p90.toFixed(1)} (${x.runsUsed === 'clean' ? `${x.cleanRuns} clean of ${x.runs}` : `all ${x.runs}, none clean`})`,
        lw ? x.decodeTokS.median / lw.decodeTokS.median : null,
        MB(x.rssDeltaBytes),
        x.loadAvg,
        x.othersCores,
      ]),
    ),
    '',
    "Load avg: the 1-minute load average at the start of each run (median; it counts our own 2 threads). Others' CPU: the CPU other processes " +
      `used during each run, in cores (median; 0 = the machine to ourselves). Medians are over clean runs (others under ${CLEAN_OTHERS_CORES} cores) where there are any; ` +
      'a run that was not clean is run once more while the time budget lasts. Decode best: the fastest of those runs. A busy machine costs llama.cpp (spinning thread barriers) ' +
      "far more than onnxruntime; onnxruntime's decode is bimodal here even when no other process takes CPU, so compare best as well as median.",
    '',
  ];
  const t = r.transformersjs;
  if (t && 'error' in t) parts.push(`transformers.js: not measured: ${t.error.split('\n')[0]}`, '');
  else if (t) {
    parts.push(
      `Greedy tokens, latentwatch vs transformers.js on the same int4 weights: ${t.greedyPrefixMatch === t.greedyTokens ? `all ${t.greedyTokens} identical` : `first ${t.greedyPrefixMatch} of ${t.greedyTokens} identical`}` +
        `${t.servingPrefixMatch === null ? '' : `; serving graph vs bare: ${t.servingPrefixMatch === t.greedyTokens ? 'identical' : `first ${t.servingPrefixMatch} identical`}`}. ` +
        `transformers.js' tokenizer on the prompt: ${t.tokenizerMatch ? 'identical ids' : 'different ids'}.`,
      '',
    );
  }
  const l = r.llamacpp;
  if (l?.info) parts.push(`llama.cpp: node-llama-cpp ${l.info.version ?? '?'}, ${l.info.buildType} binaries; ${l.info.systemInfo.trim()}. The GGUF's tokenizer on the prompt: ${l.tokenizerMatch ? 'identical ids' : 'different ids'}.`, '');
  for (const [k, v] of Object.entries(r.errors)) parts.push(`${k}: not measured: ${v.split('\n')[0]}`, '');
  const g = r.ggufCheck;
  if (g && 'error' in g) parts.push(`GGUF check failed: ${g.error.split('\n')[0]}`, '');
  else if (g)
    parts.push(
      `GGUF writer check: models/qwen2-code-16m (trained) written as an F32 GGUF and run by llama.cpp reproduces transformers' greedy continuations for ${g.greedyMatches}/${g.prompts} reference prompts ` +
        `(identical prefix lengths ${g.prefixMatch.join(', ')}), and its tokenizer gives transformers' ids for ${g.tokenizerMatches}/${g.prompts}.`,
      '',
    );
  parts.push(`Total ${r.seconds.toFixed(0)} s.`);
  return parts.join('\n');
}

// ---------------------------------------------------------------------------------------------
// CLI

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['out', 'md', 'runs', 'rounds', 'threads', 'gguf', 'ckpt', 'cache', 'gguf-dir', 'budget', 'quiet-wait', 'child', 'spec']);
  if (await runChildStep(a.get('child'), a.get('spec'), { prepare: childPrepare, compare: childCompare, 'gguf-check': childGgufCheck })) return;
  if (a.has('help')) {
    console.log(usageOf(SELF));
    return;
  }
  const quick = a.has('quick');
  const gguf = a.get('gguf')?.split(',') as GgufWeightType[] | undefined;
  for (const t of gguf ?? []) if (!GGUF_WEIGHT_TYPES.includes(t)) throw new Error(`--gguf ${t} (${GGUF_WEIGHT_TYPES.join('|')})`);
  const res = await runPeersBench({
    quick,
    runs: a.has('runs') ? a.num('runs', 3) : undefined,
    rounds: a.has('rounds') ? a.num('rounds', 1) : undefined,
    threads: a.has('threads') ? a.num('threads', 2) : undefined,
    ggufTypes: gguf,
    transformersjs: !a.has('skip-transformersjs'),
    llamacpp: !a.has('skip-llamacpp'),
    checkpoint: a.get('ckpt'),
    cacheDir: a.get('cache'),
    ggufDir: a.get('gguf-dir'),
    budgetSeconds: a.has('budget') ? a.num('budget', 150) : undefined,
    quietWaitSeconds: a.has('quiet-wait') ? a.num('quiet-wait', 10) : undefined,
    installLlamaCpp: !a.has('no-install'),
  });
  writeBenchResult(a, `peers${quick ? '-quick' : ''}`, res, peersBenchMarkdown(res));
}

runIfMain(import.meta.url, main);
