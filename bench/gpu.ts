/**
 * GPU serving benchmark (issue 14): the engine on onnxruntime's WebGPU provider (Dawn on Vulkan,
 * KV cache on the device) against Hugging Face transformers (eager, bf16) on the same GPU and the
 * same random-weight checkpoints, with the card's bandwidth limit for each.
 *
 *   npx tsx bench/gpu.ts [--work /tmp/lw-gpu] [--shapes 0.5b,7b] [--python python3] [--prompt 128]
 *       [--decode 64] [--runs 3] [--out docs/reports/bench/gpu-YYYY-MM-DD.json] [--bandwidth-gb-s N]
 *       [--merge EARLIER.json] [--build-only] [--webgpu-validation disabled|wgpuOnly|basic]
 *       [--accuracy-levels 4/0,4,0] [--activations fp32,fp16] [--greedy-path argmax|logits|both] [--profile]
 *       [--chunk-check 16] [--prompts 128,512,2048] [--weights int4,fp16] [--prefill-chunks 2048]
 *       [--profile-prompt 512]
 *
 * 1. bench/gpu_hf.py (where `python3 -c "import torch"` works): makes Qwen2.5-0.5B- and 7B-shaped
 *    checkpoints with random weights (Qwen2ForCausalLM(config).save_pretrained, bf16) and times
 *    transformers' eager bf16 generate on them; also the card's copy bandwidth. Without torch the
 *    checkpoints come from bench/random-checkpoint.ts and the transformers figures are null.
 * 2. For each shape: the engine's own int4 build (MatMulNBits, block 32) on provider webgpu: prefill
 *    of a `prompt`-token prompt and `decode` greedy tokens (ignore EOS), medians over `runs` after a
 *    warm-up. 0.5B also: the same with three layers tapped every step (the monitor's cost: a build
 *    with taps against the plain serving build), and the CPU provider's int4 greedy tokens (how many
 *    leading tokens agree; random weights give near-ties, so they part somewhere).
 * 3. The bandwidth limit: the card's bandwidth (measured copy, read + written; or --bandwidth-gb-s)
 *    ÷ the weight bytes one decode step reads (bench/lib/graph-bytes.ts for the engine's graph;
 *    the parameters but the embedding table for transformers).
 *
 * The JSON is rewritten after every stage (summary.complete false until the end). A run split over
 * several sessions: work/hf.json is reused when it covers the shapes; --merge starts from an earlier
 * report's summary and details (e.g. 0.5b first, then --shapes 7b --merge that); --build-only makes
 * the engine's webgpu int4 builds of the shapes and exits (to build one while another is measured).
 * --profile: per shape and engine of one build, one more generate and prompt pass under
 * onnxruntime's profiler: the host time each op type's kernels take per decode step and in the prompt
 * pass (on WebGPU a kernel's time is the host's encoding and dispatch of its programs, what decode is
 * bound by) against the pass's wall time, and each GPU program's time (timestamp queries).
 * --webgpu-validation sets the WebGPU provider's validation mode for the whole process (runtime.ts):
 * 'disabled' skips Dawn's per-dispatch checks, the host cost decode is bound by.
 * --activations: the webgpu engines' activations, side by side with the accuracy levels (fp16: the
 * residual stream, KV cache and products' inputs in fp16, graph.ts; the route to faster prefill
 * kernels); keys of fp16 engines end _fp16act. The engine refuses fp16 on a device without
 * shader-f16 (LW_ERR_ENGINE_DEVICE_FEATURE_MISSING).
 * --greedy-path: how the greedy tokens come back: 'argmax' (default, what serving does for greedy
 * requests without logprobs: the graph's argmax, 2 floats per step), 'logits' (the logits row, 600 KB
 * for Qwen2.5, argmax on the host), 'both' (side by side, the logits path at the first accuracy
 * level only; keys of the logits path end _logitspath).
 * --prompts: after the generate rounds, prefill alone (a prompt pass, no token) at each of these
 * prompt lengths, every engine in turn per round (warm-up first), medians; keys end _p<length>
 * (prefill_tok_s_webgpu_int4_qwen2_5_7b_p512), transformers' from gpu_hf.py --prompts. The plain
 * keys stay the generate rounds' (--prompt). Prompts longer than the engine's prefill chunk (512
 * tokens) run in several passes: --prefill-chunks N adds each engine again with passes of up to N
 * (keys ending _chunk<N>), the graph shape onnxruntime's kernels see (M = the pass's tokens).
 * --weights int4,fp16: engines of fp16 weights too (plain MatMul, at fp16 activations only; keys
 * webgpu_fp16…): a build for prompt passes if its kernels beat the int4 ones. --profile-prompt: the
 * profiled prompt pass's length (default --prompt).
 * Greedy agreement with the CPU provider: its int4 build at each accuracy level the webgpu engines
 * run, against each of them (keys greedy_prefix_webgpu_vs_cpu_int4<suffix>), with the CPU's top-2
 * logit margin where the two part (a near-tie or not).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine, interfaceFor, type EngineOptions } from '../src/engine/engine.js';
import { WEBGPU_VALIDATION, type WebGpuValidation } from '../src/engine/runtime.js';
import { ensureBuild } from '../src/model/build.js';
import { ACTIVATIONS, type Activations, type Precision } from '../src/model/graph.js';
import { residPost } from '../src/hooks.js';
import { graphBytes } from './lib/graph-bytes.js';
import { describeMachine } from './lib/machine.js';
import { parseArgs, runIfMain, writeJson } from './lib/report.js';
import { median, round } from './lib/stats.js';
import type { RandomCheckpointShape } from './random-checkpoint.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The shapes of Qwen2.5-0.5B and Qwen2.5-7B (the Python script uses the same). */
const SHAPES: Record<string, RandomCheckpointShape> = {
  '0.5b': { hiddenSize: 896, numLayers: 24, numHeads: 14, numKvHeads: 2, intermediateSize: 4864, vocabSize: 151936, maxPositions: 32768, ropeTheta: 1_000_000, tieWordEmbeddings: true },
  '7b': { hiddenSize: 3584, numLayers: 28, numHeads: 28, numKvHeads: 4, intermediateSize: 18944, vocabSize: 152064, maxPositions: 32768, ropeTheta: 1_000_000, tieWordEmbeddings: false },
  /** Not a Qwen shape: a smoke test of this script where there is no GPU (lavapipe; no transformers). */
  smoke: { hiddenSize: 128, numLayers: 4, numHeads: 4, numKvHeads: 2, intermediateSize: 256, vocabSize: 4096, maxPositions: 1024, ropeTheta: 1_000_000, tieWordEmbeddings: true },
};
/** Prompt ids of the measured requests. */
const promptOf = (length: number, vocab: number) => Array.from({ length }, (_, i) => (i * 7919 + 13) % Math.min(150_000, vocab));
/** Shapes measured with taps (the monitor's cost) and against the CPU provider. */
const SMALL = new Set(['0.5b', 'smoke']);
/** Summary-key spelling of a shape: decode_tok_s_webgpu_int4_qwen2_5_7b. */
const keyOf = (shape: string) => `qwen2_5_${shape.replace('.', '_')}`;

interface HfResult {
  gpu: string;
  torch: string;
  transformers: string;
  copy_bandwidth_gb_s: number;
  shapes: Record<string, { prefill_tok_s: number; prefill_tok_s_by_prompt?: Record<string, number>; decode_tok_s: number; weight_bytes_per_token: number; checkpoint: string }>;
}

interface RunFigures {
  prefill_tok_s: number;
  /** Prefill alone at each --prompts length (tok/s, medians) and each round's figures. */
  prefill_tok_s_by_prompt?: Record<string, number>;
  prefill_tok_s_by_prompt_runs?: Record<string, number[]>;
  decode_tok_s: number;
  decode_tok_s_runs: number[];
  ids: number[];
  load_s: number;
  build_s: number;
  weight_bytes_per_token: number;
}

function log(line: string): void {
  process.stderr.write(`gpu-bench: ${line}\n`);
}

function hasTorch(python: string): boolean {
  return spawnSync(python, ['-c', 'import torch, transformers; assert torch.cuda.is_available()'], { stdio: 'ignore' }).status === 0;
}

function gpuName(): string | null {
  const r = spawnSync('nvidia-smi', ['--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n')[0] : null;
}

interface Config {
  options: EngineOptions;
  /** Layers tapped (returned) at every step. */
  taps: number[];
  /** Greedy tokens from the logits row (true) or from the graph's argmax (false: what serving does). */
  returnLogits: boolean;
  /** Each step's top-2 logit margin (with returnLogits; host time, so only for references, not timed variants). */
  margins?: boolean;
}

/**
 * Prefill and decode rates of greedy generate() over fixed random prompt ids, for several
 * configurations of one checkpoint loaded side by side: a warm-up each, then `runs` rounds that run
 * each configuration once in turn (a slow phase of the machine lands on every configuration alike);
 * medians. Also each configuration's first-token logits.
 */
async function measure(modelDir: string, configs: readonly Config[], a: { prompt: number; decode: number; runs: number; prompts?: readonly number[] }): Promise<(RunFigures & { firstLogits: Float32Array; margins: number[] })[]> {
  const loaded: { engine: Engine; loadS: number; taps: string[]; margins: boolean }[] = [];
  try {
    for (const c of configs) {
      const t0 = performance.now();
      const engine = await Engine.load(modelDir, { ...c.options, progress: (d, t, what) => d === t && log(`built ${modelDir} ${c.options.provider} ${c.options.precision} (${what})`) });
      loaded.push({ engine, loadS: (performance.now() - t0) / 1000, taps: c.taps.map(residPost), margins: c.margins === true });
    }
    const promptIds = promptOf(a.prompt, loaded[0].engine.config.vocabSize);
    const once = async (l: (typeof loaded)[number], maxTokens: number, returnLogits: boolean) => {
      const ids: number[] = [];
      // Per step, where the logits come back: the top-2 margin (how near a tie the greedy choice was).
      const margins: number[] = [];
      let firstLogits: Float32Array = new Float32Array(0);
      const start = performance.now();
      let prefillEnd = start;
      for await (const s of l.engine.generate({ promptIds, maxTokens, ignoreEos: true, taps: l.taps, returnLogits })) {
        if (s.kind === 'prompt') prefillEnd = performance.now();
        else {
          if (ids.length === 0) firstLogits = s.logits!;
          if (s.logits && l.margins) margins.push(top2Margin(s.logits));
          ids.push(s.tokenId);
        }
      }
      const end = performance.now();
      // A token step follows the pass that read it; the last token needs no pass unless it is tapped.
      const passes = l.taps.length > 0 ? maxTokens : maxTokens - 1;
      return { prefill: a.prompt / ((prefillEnd - start) / 1000), decode: passes / ((end - prefillEnd) / 1000), ids, firstLogits, margins };
    };
    // The warm-up brings the logits back: the first-token logits compared across providers.
    const warm: Awaited<ReturnType<typeof once>>[] = [];
    for (const l of loaded) warm.push(await once(l, 4, true));
    const runs = loaded.map(() => [] as Awaited<ReturnType<typeof once>>[]);
    for (let r = 0; r < a.runs; r++) for (const [i, l] of loaded.entries()) runs[i].push(await once(l, a.decode, configs[i].returnLogits));
    // Prefill alone at each length: one prompt pass (or several, prefill chunks), no token.
    const byPrompt = loaded.map(() => ({}) as Record<string, number[]>);
    for (const n of a.prompts ?? []) {
      const ids = promptOf(n, loaded[0].engine.config.vocabSize);
      const prefillOnce = async (l: (typeof loaded)[number]) => {
        const t0 = performance.now();
        for await (const s of l.engine.generate({ promptIds: ids, maxTokens: 0, ignoreEos: true, taps: l.taps })) void s;
        return n / ((performance.now() - t0) / 1000);
      };
      for (const l of loaded) await prefillOnce(l); // warm-up: the shaders of this pass shape
      for (let r = 0; r < a.runs; r++) for (const [i, l] of loaded.entries()) (byPrompt[i][n] ??= []).push(await prefillOnce(l));
      log(`prefill at ${n} tokens: ${byPrompt.map((b) => round(median(b[n]), 0)).join(', ')} tok/s`);
    }
    return loaded.map((l, i) => ({
      prefill_tok_s: round(median(runs[i].map((r) => r.prefill)), 1),
      ...(a.prompts?.length
        ? {
            prefill_tok_s_by_prompt: Object.fromEntries(Object.entries(byPrompt[i]).map(([n, xs]) => [n, round(median(xs), 1)])),
            prefill_tok_s_by_prompt_runs: Object.fromEntries(Object.entries(byPrompt[i]).map(([n, xs]) => [n, xs.map((x) => round(x, 1))])),
          }
        : {}),
      decode_tok_s: round(median(runs[i].map((r) => r.decode)), 2),
      decode_tok_s_runs: runs[i].map((r) => round(r.decode, 2)),
      ids: runs[i][0].ids,
      firstLogits: warm[i].firstLogits,
      margins: runs[i][0].margins,
      load_s: round(l.loadS, 1),
      build_s: round(l.engine.build.buildSeconds, 1),
      weight_bytes_per_token: graphBytes(l.engine.build.modelPath).perTokenBytes,
    }));
  } finally {
    for (const l of loaded) await l.engine.close();
  }
}

/** Figures as the report keeps them (without the logits). */
function kept(r: RunFigures & { firstLogits?: Float32Array; margins?: number[] }): RunFigures {
  const { firstLogits: _, margins: __, ...rest } = r;
  return rest;
}

/** Largest logit minus the second largest. */
function top2Margin(logits: Float32Array): number {
  let first = -Infinity;
  let second = -Infinity;
  for (const x of logits) {
    if (x > first) {
      second = first;
      first = x;
    } else if (x > second) second = x;
  }
  return first - second;
}

/** Largest |a - b| and the spread (standard deviation) of a, to read the first against the second. */
function logitsGap(a: Float32Array, b: Float32Array): { maxAbsDiff: number; std: number } {
  let m = 0;
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]));
    sum += a[i];
    sq += a[i] * a[i];
  }
  const mean = sum / a.length;
  return { maxAbsDiff: m, std: Math.sqrt(sq / a.length - mean * mean) };
}

interface ProfileEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string; provider?: string };
}

/** Time per op type (or GPU program) over some passes, per pass, largest first. */
function perPass(events: readonly ProfileEvent[], passes: number, keyOf: (e: ProfileEvent) => string) {
  const by = new Map<string, { us: number; count: number }>();
  for (const e of events) {
    const t = by.get(keyOf(e)) ?? { us: 0, count: 0 };
    t.us += e.dur;
    t.count++;
    by.set(keyOf(e), t);
  }
  const n = Math.max(1, passes);
  return [...by.entries()].map(([op, t]) => ({ op, per_step: round(t.count / n, 1), us_per_step: round(t.us / n, 0) })).sort((x, y) => y.us_per_step - x.us_per_step);
}

/**
 * From an onnxruntime profile of one generate (a cold prompt pass, then decode passes) and one more
 * prompt pass (warm): per decode step (after two warm-up steps: shader compilation) and for the
 * warm prompt pass, each op type's kernel time on the host and count, against the pass's own time;
 * and, where the device has timestamp queries (onnxruntime's WebGPU profiler adds 'Api' events,
 * `kernel&op type&program`, with GPU durations), each GPU program's time.
 */
function summarizeProfile(file: string, wallUsPerStep: number, prefillWallUs: number) {
  const events = JSON.parse(readFileSync(file, 'utf8')) as ProfileEvent[];
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((x, y) => x.ts - y.ts);
  // Each event belongs to the last pass that started before it (GPU events land after their pass's dispatch).
  const passOf = (e: ProfileEvent) => {
    let i = -1;
    for (const [j, r] of runs.entries()) if (r.ts <= e.ts) i = j;
    return i;
  };
  const decodeRuns = new Set(runs.map((_, j) => j).slice(3, -1));
  const prefillRun = runs.length - 1;
  const nodes = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'));
  const gpu = events.filter((e) => e.cat === 'Api');
  const opOf = (e: ProfileEvent) => `${e.args?.op_name ?? '?'} (${e.args?.provider ?? '?'})`;
  // 'kernel&op type&program': the op type and program, without the node's own name.
  const programOf = (e: ProfileEvent) => e.name.split('&').slice(1).join('&') || e.name;
  const sum = (xs: readonly { us_per_step: number }[]) => xs.reduce((acc, o) => acc + o.us_per_step, 0);
  const n = decodeRuns.size;
  const decodeOps = perPass(nodes.filter((e) => decodeRuns.has(passOf(e))), n, opOf);
  const decodeGpu = perPass(gpu.filter((e) => decodeRuns.has(passOf(e))), n, programOf);
  const prefillOps = perPass(nodes.filter((e) => passOf(e) === prefillRun), 1, opOf);
  const prefillGpu = perPass(gpu.filter((e) => passOf(e) === prefillRun), 1, programOf);
  return {
    file,
    gpu_timestamps: gpu.length > 0,
    decode: {
      decode_passes: n,
      wall_us_per_step: round(wallUsPerStep, 0),
      pass_us_per_step: round([...decodeRuns].reduce((acc, j) => acc + runs[j].dur, 0) / Math.max(1, n), 0),
      kernel_us_per_step: sum(decodeOps),
      nodes_per_step: round(decodeOps.reduce((acc, o) => acc + o.per_step, 0), 0),
      gpu_us_per_step: gpu.length ? sum(decodeGpu) : null,
      gpu_programs_per_step: gpu.length ? round(decodeGpu.reduce((acc, o) => acc + o.per_step, 0), 0) : null,
      ops: decodeOps,
      gpu_programs: decodeGpu,
    },
    prefill: {
      wall_us: round(prefillWallUs, 0),
      pass_us: runs.length ? runs[prefillRun].dur : null,
      kernel_us: sum(prefillOps),
      gpu_us: gpu.length ? sum(prefillGpu) : null,
      ops: prefillOps,
      gpu_programs: prefillGpu,
    },
  };
}

/** One generate and one more prompt pass under onnxruntime's profiler; the summary of its profile (summarizeProfile). */
async function profileRun(dir: string, options: EngineOptions, prefix: string, prompt: number) {
  const engine = await Engine.load(dir, { ...options, profilePrefix: prefix });
  let wallUsPerStep = 0;
  let prefillWallUs = 0;
  try {
    const promptIds = promptOf(prompt, engine.config.vocabSize);
    const stamps: number[] = [];
    for await (const s of engine.generate({ promptIds, maxTokens: 24, ignoreEos: true })) if (s.kind === 'token') stamps.push(performance.now());
    // Steps after the two warm-up ones, as the profile summary counts them.
    wallUsPerStep = ((stamps[stamps.length - 1] - stamps[2]) * 1000) / (stamps.length - 3);
    const t0 = performance.now();
    for await (const s of engine.generate({ promptIds, maxTokens: 1, ignoreEos: true })) if (s.kind === 'prompt') prefillWallUs = (performance.now() - t0) * 1000;
    engine.session.endProfiling();
  } finally {
    await engine.close();
  }
  const dirOf = dirname(prefix);
  // onnxruntime names it <prefix>_<date>_<time>.json (another engine's prefix may start with this one's).
  const base = prefix.slice(dirOf.length + 1);
  const files = readdirSync(dirOf).filter((f) => f.startsWith(`${base}_`) && /^_\d{4}-\d{2}-\d{2}_[\d_-]+\.json$/.test(f.slice(base.length))).sort();
  if (!files.length) throw new Error(`no profile ${prefix}_*.json`);
  return summarizeProfile(join(dirOf, files[files.length - 1]), wallUsPerStep, prefillWallUs);
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['work', 'shapes', 'python', 'prompt', 'decode', 'runs', 'out', 'bandwidth-gb-s', 'merge', 'webgpu-validation', 'accuracy-levels', 'activations', 'greedy-path', 'chunk-check', 'prompts', 'weights', 'prefill-chunks', 'profile-prompt']);
  const work = a.get('work', '/tmp/lw-gpu')!;
  const shapes = a.get('shapes', '0.5b,7b')!.split(',');
  for (const s of shapes) if (!SHAPES[s]) throw new Error(`--shapes: ${s} is not one of ${Object.keys(SHAPES).join(',')}`);
  const python = a.get('python', 'python3')!;
  const prompt = a.num('prompt', 128)!;
  const decode = a.num('decode', 64)!;
  const runs = a.num('runs', 3)!;
  const lengths = (a.get('prompts', '') ?? '').split(',').filter(Boolean).map(Number);
  for (const n of lengths) if (!Number.isInteger(n) || n < 1) throw new Error(`--prompts: ${n} is not a prompt length`);
  const profilePrompt = a.num('profile-prompt', prompt)!;
  const weightsList = a.get('weights', 'int4')!.split(',') as Precision[];
  for (const w of weightsList) if (w !== 'int4' && w !== 'fp16') throw new Error(`--weights: ${w} is not one of int4,fp16`);
  const prefillChunks = (a.get('prefill-chunks', '') ?? '').split(',').filter(Boolean).map(Number);
  const out = a.get('out', join(REPO, 'docs', 'reports', 'bench', `gpu-${new Date().toISOString().slice(0, 10)}.json`))!;
  const cache = join(work, 'builds');
  const earlier = a.has('merge')
    ? (JSON.parse(readFileSync(a.get('merge')!, 'utf8')) as { machine: unknown; args: unknown; summary: Record<string, unknown>; details: Record<string, unknown> })
    : null;
  const summary: Record<string, unknown> = { ...earlier?.summary, complete: false, gpu: gpuName() ?? earlier?.summary.gpu ?? null };
  const details: Record<string, unknown> = { ...earlier?.details };
  // The figures of shapes this run does not measure come from the earlier run, on its machine.
  if (earlier) details.merged_from = { machine: earlier.machine, args: earlier.args };
  const validation = a.get('webgpu-validation', '') as WebGpuValidation | '';
  if (validation && !WEBGPU_VALIDATION.includes(validation)) throw new Error(`--webgpu-validation: ${validation} is not one of ${WEBGPU_VALIDATION.join(',')}`);
  // MatMulNBits accuracy levels of the webgpu engines, measured side by side: 'P/D' prefill passes
  // at level P and one-token passes at D (two builds on one device cache, engine.ts
  // decodeAccuracyLevel), 'L' one build for both (the engine's default: 4). The first gives the summary's plain keys, the others keys ending
  // _acc<P>[_<D>]. On WebGPU level 4 computes with int8 activations (DP4A), level 0 in fp32.
  const levels = a.get('accuracy-levels', '4')!.split(',').map((spec) => {
    const [prefill, decode = prefill] = spec.split('/').map(Number);
    for (const l of [prefill, decode]) if (![0, 1, 2, 3, 4].includes(l)) throw new Error(`--accuracy-levels: ${spec} (levels 0..4, 'P/D' or 'L')`);
    return { spec, prefill, decode };
  });
  const activations = a.get('activations', 'fp32')!.split(',') as Activations[];
  for (const act of activations) if (!ACTIVATIONS.includes(act)) throw new Error(`--activations: ${act} is not one of ${ACTIVATIONS.join(',')}`);
  const greedyPath = a.get('greedy-path', 'argmax')!;
  if (!['argmax', 'logits', 'both'].includes(greedyPath)) throw new Error(`--greedy-path: ${greedyPath} is not one of argmax,logits,both`);
  const paths = greedyPath === 'both' ? [false, true] : [greedyPath === 'logits'];
  const webgpuInt4: EngineOptions = { provider: 'webgpu', precision: 'int4', taps: [], ports: 'none', cacheDir: cache, accuracyLevel: levels[0].prefill, decodeAccuracyLevel: levels[0].decode, activations: activations[0], ...(validation ? { webgpuValidation: validation } : {}) };
  // The engines measured side by side, the first giving the summary's plain keys (with --activations
  // fp16 alone, keys ending _fp16act), the others keys with a suffix per way they differ.
  // The logits path only at the first level (what it costs is the row's copy and host scan, the same
  // at every level): fewer engines loaded side by side.
  // fp16 weights (--weights fp16): plain MatMul, at fp16 activations only (fp32 ones would widen
  // the weights to fp32 at load), the first accuracy level (which MatMul ignores), the serving path.
  const mainVariants: { weights: Precision; level: (typeof levels)[number]; act: Activations; returnLogits: boolean; suffix: string; label: string; chunk?: number }[] = [
    ...(weightsList.includes('int4')
      ? levels.flatMap((level, li) =>
          activations.flatMap((act) =>
            (li === 0 ? paths : paths.slice(0, 1)).map((returnLogits) => ({
              weights: 'int4' as Precision,
              level,
              act,
              returnLogits,
              suffix: `${li === 0 ? '' : `_acc${level.spec.replace('/', '_')}`}${act === 'fp16' ? '_fp16act' : ''}${returnLogits ? '_logitspath' : ''}`,
              label: `int4, accuracy level ${level.spec}, ${act} activations, greedy from the ${returnLogits ? 'logits row' : "graph's argmax"}`,
            })),
          ),
        )
      : []),
    ...(weightsList.includes('fp16') && activations.includes('fp16')
      ? [{ weights: 'fp16' as Precision, level: levels[0], act: 'fp16' as Activations, returnLogits: paths[0], suffix: '_fp16act', label: `fp16 weights, fp16 activations, greedy from the ${paths[0] ? 'logits row' : "graph's argmax"}` }]
      : []),
  ];
  // --chunk-check N: each one-build fp32 engine again with prompts fed N tokens a pass (engine
  // prefillChunk), keys ending _chunk<N>. onnxruntime's WebGPU GroupQueryAttention takes another
  // kernel (FlashAttention) for passes of 32 new tokens or more; chunks under 32 keep the kernel
  // that decode steps use. Their first logits are compared (…_vs_one_pass).
  const chunkCheck = a.has('chunk-check') ? a.num('chunk-check', 16) : null;
  const variants = [
    ...mainVariants,
    ...(chunkCheck === null
      ? []
      : mainVariants
          .filter((v) => v.level.prefill === v.level.decode && v.act === 'fp32' && v.returnLogits === paths[0])
          .map((v) => ({ ...v, chunk: chunkCheck, suffix: `${v.suffix}_chunk${chunkCheck}`, label: `${v.label}, prompt in passes of ${chunkCheck} tokens` }))),
    // --prefill-chunks N: each engine on the serving path again with prompt passes of up to N tokens.
    ...prefillChunks.flatMap((n) =>
      mainVariants
        .filter((v) => v.returnLogits === paths[0])
        .map((v) => ({ ...v, chunk: n, suffix: `${v.suffix}_chunk${n}`, label: `${v.label}, prompt in passes of up to ${n} tokens` })),
    ),
  ];
  if (a.has('build-only')) {
    for (const shape of shapes) {
      const t = performance.now();
      for (const v of mainVariants.filter((w) => w.returnLogits === paths[0])) {
        for (const accuracyLevel of new Set([v.level.prefill, v.level.decode])) {
          ensureBuild(join(work, `qwen2.5-${shape}-random`), { ...webgpuInt4, precision: v.weights, accuracyLevel, activations: v.act, interface: interfaceFor('webgpu') }, { cacheDir: cache });
          log(`built ${shape} webgpu ${v.weights} (accuracy level ${accuracyLevel}, ${v.act} activations) in ${((performance.now() - t) / 1000).toFixed(0)} s`);
        }
      }
    }
    return;
  }
  const report = {
    kind: 'gpu',
    version: 1,
    machine: describeMachine(),
    args: { shapes, prompt, decode, runs, webgpu_validation: validation || 'basic (default)', accuracy_levels: levels.map((l) => l.spec), activations, greedy_path: greedyPath, prompts: lengths, weights: weightsList, prefill_chunks: prefillChunks, profile_prompt: profilePrompt },
    summary,
    details,
  };
  const save = () => writeJson(out, report);

  // 1. Checkpoints and transformers' figures.
  let hf: HfResult | null = null;
  const hfJson = join(work, 'hf.json');
  const hfEarlier = existsSync(hfJson) ? (JSON.parse(readFileSync(hfJson, 'utf8')) as HfResult) : null;
  if (hfEarlier && shapes.every((s) => hfEarlier.shapes[s])) {
    hf = hfEarlier;
    log(`transformers figures and checkpoints from ${hfJson}`);
  } else if (hasTorch(python)) {
    const r = spawnSync(python, [join(REPO, 'bench', 'gpu_hf.py'), '--work', work, '--shapes', shapes.join(','), '--prompt', String(prompt), ...(lengths.length ? ['--prompts', lengths.join(',')] : []), '--decode', String(decode), '--runs', String(runs), '--json', hfJson], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, PYTHONUNBUFFERED: '1' },
    });
    if (r.status !== 0) throw new Error(`bench/gpu_hf.py exited ${r.status}`);
    hf = JSON.parse(readFileSync(hfJson, 'utf8')) as HfResult;
    summary.gpu ??= hf.gpu;
  } else {
    log(`${python} has no torch with a GPU: checkpoints from bench/random-checkpoint.ts, no transformers figures`);
  }
  // A merged report keeps the shapes measured earlier.
  if (hf) details.transformers = { ...hf, shapes: { ...(details.transformers as HfResult | undefined)?.shapes, ...hf.shapes } };
  const bandwidthGbS = a.has('bandwidth-gb-s') ? a.num('bandwidth-gb-s', 0)! : hf?.copy_bandwidth_gb_s ?? null;
  summary.bandwidth_gb_s = bandwidthGbS === null ? null : round(bandwidthGbS, 0);
  summary.bandwidth_source = a.has('bandwidth-gb-s') ? 'given' : hf ? 'measured device-to-device copy (read + written)' : null;
  const limit = (bytes: number) => (bandwidthGbS === null ? null : round((bandwidthGbS * 1e9) / bytes, 1));
  save();

  for (const shape of shapes) {
    const k = keyOf(shape);
    const dir = hf?.shapes[shape]?.checkpoint ?? join(work, `qwen2.5-${shape}-random`);
    if (!hf) {
      // Imported only here: a bundle of this script (for a GPU host without node_modules) leaves it out.
      const { writeRandomCheckpoint } = await import('./random-checkpoint.js');
      writeRandomCheckpoint(dir, SHAPES[shape], { dtype: 'bf16', tokenizer: false, log });
    }
    if (!existsSync(join(dir, 'config.json'))) throw new Error(`no checkpoint at ${dir}`);
    // 0.5B: the plain serving build and one with three layers tapped every step (the monitor's
    // cost; a probe's scoring is host arithmetic on top), measured in alternation.
    const L = SHAPES[shape].numLayers;
    const tapLayers = SMALL.has(shape) ? [Math.floor(L / 4), Math.floor(L / 2), Math.floor((3 * L) / 4)] : null;
    // The monitor's cost is measured on the path serving takes (the first of --greedy-path).
    const configs: Config[] = variants.flatMap((v) => {
      const options = { ...webgpuInt4, precision: v.weights, accuracyLevel: v.level.prefill, decodeAccuracyLevel: v.level.decode, activations: v.act, ...(v.chunk ? { prefillChunk: v.chunk } : {}) };
      const tapped = tapLayers && v.weights === 'int4' && v.returnLogits === paths[0] && !v.chunk;
      return [{ options, taps: [], returnLogits: v.returnLogits }, ...(tapped ? [{ options: { ...options, taps: tapLayers }, taps: tapLayers, returnLogits: v.returnLogits }] : [])];
    });
    const measured = await measure(dir, configs, { prompt, decode, runs, prompts: lengths });
    const h = hf?.shapes[shape];
    for (const n of lengths) summary[`prefill_tok_s_hf_eager_bf16_${k}_p${n}`] = h?.prefill_tok_s_by_prompt?.[n] ? round(h.prefill_tok_s_by_prompt[n], 1) : null;
    summary[`decode_tok_s_hf_eager_bf16_${k}`] = h ? round(h.decode_tok_s, 2) : null;
    summary[`prefill_tok_s_hf_eager_bf16_${k}`] = h ? round(h.prefill_tok_s, 1) : null;
    summary[`bandwidth_limit_tok_s_hf_eager_bf16_${k}`] = h ? limit(h.weight_bytes_per_token) : null;
    let at = 0;
    const byVariant = new Map<string, (typeof measured)[number]>();
    for (const v of variants) {
      const gpu = measured[at++];
      byVariant.set(`${v.weights}${v.suffix}`, gpu);
      const tapped = tapLayers && v.weights === 'int4' && v.returnLogits === paths[0] && !v.chunk ? measured[at++] : undefined;
      const x = v.suffix;
      // webgpu_int4… (the issue's keys) or webgpu_fp16… (fp16 weights).
      const w = v.weights;
      log(`${shape} webgpu ${v.label}: prefill ${gpu.prefill_tok_s} tok/s, decode ${gpu.decode_tok_s} tok/s (runs ${gpu.decode_tok_s_runs.join(', ')}; build ${gpu.build_s} s, load ${gpu.load_s} s)`);
      summary[`decode_tok_s_webgpu_${w}${x}_${k}`] = gpu.decode_tok_s;
      summary[`prefill_tok_s_webgpu_${w}${x}_${k}`] = gpu.prefill_tok_s;
      const lim = limit(gpu.weight_bytes_per_token);
      summary[`bandwidth_limit_tok_s_webgpu_${w}${x}_${k}`] = lim;
      summary[`decode_pct_of_limit_webgpu_${w}${x}_${k}`] = lim === null ? null : round((100 * gpu.decode_tok_s) / lim, 1);
      summary[`decode_speedup_webgpu_${w}${x}_vs_hf_eager_bf16_${k}`] = h ? round(gpu.decode_tok_s / h.decode_tok_s, 2) : null;
      summary[`prefill_speedup_webgpu_${w}${x}_vs_hf_eager_bf16_${k}`] = h ? round(gpu.prefill_tok_s / h.prefill_tok_s, 2) : null;
      details[`webgpu_${w}${x}_${k}`] = kept(gpu);
      for (const n of lengths) {
        const mine = gpu.prefill_tok_s_by_prompt?.[n] ?? null;
        const theirs = h?.prefill_tok_s_by_prompt?.[n];
        summary[`prefill_tok_s_webgpu_${w}${x}_${k}_p${n}`] = mine;
        summary[`prefill_speedup_webgpu_${w}${x}_vs_hf_eager_bf16_${k}_p${n}`] = mine !== null && theirs ? round(mine / theirs, 2) : null;
      }
      if (lengths.length) log(`${shape} webgpu ${v.label}: prefill by prompt length ${lengths.map((n) => `${n}: ${gpu.prefill_tok_s_by_prompt?.[n]}`).join(', ')} tok/s`);
      const onePass = v.chunk ? byVariant.get(`${w}${x.replace(`_chunk${v.chunk}`, '')}`) : undefined;
      if (onePass) {
        const n = Math.min(32, gpu.ids.length, onePass.ids.length);
        const gap = logitsGap(gpu.firstLogits, onePass.firstLogits);
        summary[`first_logits_max_abs_diff_webgpu_${w}${x}_vs_one_pass_${k}`] = round(gap.maxAbsDiff, 6);
        summary[`greedy_prefix_webgpu_${w}${x}_vs_one_pass_${k}`] = commonPrefix(gpu.ids.slice(0, n), onePass.ids.slice(0, n));
        log(`${shape} ${v.label} vs one prompt pass: first logits max |diff| ${gap.maxAbsDiff.toExponential(2)}, ${summary[`greedy_prefix_webgpu_${w}${x}_vs_one_pass_${k}`]} of ${n} leading tokens agree`);
      }
      if (tapped && tapLayers) {
        log(`${shape} webgpu int4 ${v.label} with taps ${tapLayers.join(',')}: decode ${tapped.decode_tok_s} tok/s (runs ${tapped.decode_tok_s_runs.join(', ')})`);
        summary[`monitor_overhead_pct_webgpu${x}`] = round(100 * (gpu.decode_tok_s / tapped.decode_tok_s - 1), 1);
        // The same per round (the two ran back to back: a slow phase of the host lands on both), its median.
        summary[`monitor_overhead_pct_paired_median_webgpu${x}`] = round(median(gpu.decode_tok_s_runs.map((r, i) => 100 * (r / tapped.decode_tok_s_runs[i] - 1))), 1);
        summary.monitor_taps = tapLayers.map(residPost);
        details[`webgpu_int4_taps${x}_${k}`] = kept(tapped);
      }
    }
    if (a.has('profile')) {
      // Each engine of one build (level P/D splits have two sessions) on the serving path, under the profiler.
      for (const v of variants.filter((w) => w.level.prefill === w.level.decode && w.returnLogits === paths[0] && !w.chunk)) {
        const options = { ...webgpuInt4, precision: v.weights, accuracyLevel: v.level.prefill, decodeAccuracyLevel: v.level.decode, activations: v.act, prefillChunk: Math.max(512, profilePrompt) };
        const p = await profileRun(dir, options, join(work, `profile-${shape}-${v.weights}${v.suffix || '_default'}`), profilePrompt);
        const top = (ops: { op: string; us_per_step: number }[]) => ops.slice(0, 6).map((o) => `${o.op} ${o.us_per_step}`).join(', ');
        log(`${shape} profile (${v.label}): decode ${p.decode.wall_us_per_step} us per step, ${p.decode.pass_us_per_step} in onnxruntime's pass, ${p.decode.kernel_us_per_step} in ${p.decode.nodes_per_step} kernels: ${top(p.decode.ops)}`);
        log(`${shape} profile (${v.label}): prompt pass ${p.prefill.pass_us} us, kernels (host) ${p.prefill.kernel_us}: ${top(p.prefill.ops)}; GPU programs ${p.prefill.gpu_us ?? 'n/a'} us: ${top(p.prefill.gpu_programs)}`);
        details[`profile_webgpu_${v.weights}${v.suffix}_${k}`] = p;
        save();
      }
    }
    save();

    if (SMALL.has(shape)) {
      // Like with like: the CPU provider's int4 build at each accuracy level a webgpu engine runs
      // (one build for prompt and decode), against the webgpu engines at that level on the serving
      // path. At level 4 both providers quantize activations to int8, each its own way; at level 0
      // both dequantize the weights and multiply in fp32 (the webgpu fp16 engines in fp16).
      const compared = variants.filter((v) => v.weights === 'int4' && v.level.prefill === v.level.decode && v.returnLogits === paths[0]);
      const cpuLevels = [...new Set(compared.map((v) => v.level.prefill))];
      const threads = availableParallelism();
      // The logits row every step: each step's top-2 margin (how near a tie the reference's choice was).
      const cpuRuns = await measure(
        dir,
        cpuLevels.map((level) => ({ options: { ...webgpuInt4, provider: 'cpu' as const, accuracyLevel: level, decodeAccuracyLevel: undefined, activations: 'fp32' as const, threads }, taps: [], returnLogits: true, margins: true })),
        { prompt, decode: Math.min(decode, 32), runs: 1 },
      );
      for (const [li, level] of cpuLevels.entries()) {
        const cpu = cpuRuns[li];
        log(`${shape} cpu int4 accuracy level ${level} (${threads} threads, logits path): decode ${cpu.decode_tok_s} tok/s`);
        summary[`decode_tok_s_cpu_int4_acc${level}_${k}`] = cpu.decode_tok_s;
        summary[`first_logits_top2_margin_cpu_int4_acc${level}`] = round(cpu.margins[0], 4);
        details[`cpu_int4_acc${level}_${k}`] = { ...kept(cpu), top2_margins: cpu.margins.map((m) => round(m, 4)) };
        for (const v of compared.filter((w) => w.level.prefill === level)) {
          const gpu = byVariant.get(`int4${v.suffix}`)!;
          const x = v.suffix;
          const n = Math.min(32, gpu.ids.length, cpu.ids.length);
          const prefix = commonPrefix(gpu.ids.slice(0, n), cpu.ids.slice(0, n));
          summary[`greedy_prefix_webgpu_vs_cpu_int4${x}`] = prefix;
          summary[`greedy_same_token_positions_webgpu_vs_cpu_int4${x}`] = gpu.ids.slice(0, n).filter((id, i) => id === cpu.ids[i]).length;
          // Where they part: the reference's top-2 margin there, against the providers' logits gap.
          summary[`greedy_part_margin_cpu_int4${x}`] = prefix < n ? round(cpu.margins[prefix], 4) : null;
          summary.greedy_tokens_compared = n;
          // Random weights give a nearly flat distribution (near-ties): how far apart the first logits are, against their spread.
          const gap = logitsGap(gpu.firstLogits, cpu.firstLogits);
          summary[`first_logits_max_abs_diff_webgpu_vs_cpu_int4${x}`] = round(gap.maxAbsDiff, 4);
          summary[`first_logits_std_webgpu_int4${x}`] = round(gap.std, 4);
          log(`${shape} greedy ${v.label} vs cpu level ${level}: ${prefix} of ${n} leading tokens agree; first logits max |diff| ${gap.maxAbsDiff.toFixed(4)} (std ${gap.std.toFixed(3)}, cpu top-2 margin ${cpu.margins[0].toFixed(4)})`);
        }
      }
      save();
    }
  }
  summary.complete = true;
  save();
  console.log(JSON.stringify(summary, null, 2));
  log(`wrote ${out}`);
}

runIfMain(import.meta.url, main);
