/**
 * Cached graph builds: one directory per (checkpoint fingerprint, build options, builder version),
 * written to a temporary directory and renamed into place so a crash never leaves half a build.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint, type Checkpoint } from './checkpoint.js';
import { buildGraph, validateBuildOptions, type Activations, type BuildOptions, type BuildProgress, type GraphInterface, type Precision } from './graph.js';

/**
 * Bump when the graph layout changes, so old cached builds are not reused (3: device-kv builds with
 * host_outputs and WebGPU-fusable projections; 4: the greedy output and device-kv's logits_to_host;
 * 5: the greedy output without ArgMax, so no int64 Cast on the host in a WebGPU pass).
 */
export const BUILDER_VERSION = 5;

export interface BuildRequest {
  precision?: Precision;
  /** 'all' or layer indices. */
  taps?: 'all' | number[];
  /** 'all', 'none' or layer indices. */
  ports?: 'all' | 'none' | number[];
  blockSize?: number;
  accuracyLevel?: number;
  /** 'hf': Hugging Face optimum's decoder interface for peers (no taps, no ports; not for the engine). */
  interface?: GraphInterface;
  /**
   * 'fp16': compute in fp16 between the weights ('device-kv' builds: the WebGPU provider; graph.ts).
   * Default: defaultActivations (fp16 for a device-kv build of int4/int8/fp16 weights, else fp32).
   */
  activations?: Activations;
}

/**
 * What a build computes in between its weights unless asked: fp16 for a 'device-kv' (WebGPU) build of
 * quantized or fp16 weights — on an H200 it decodes the Qwen2.5-7B and 0.5B shapes 1.28x and 1.37x
 * as fast as fp32 at accuracy level 4 (docs/gpu.md); those builds need shader-f16 anyway (their embedding table
 * is fp16) — and fp32 otherwise: the CPU provider has no fp16 path, and `--precision fp32` keeps
 * fp32 throughout (the one build a device without shader-f16 runs).
 */
export function defaultActivations(graphInterface: GraphInterface | undefined, precision: Precision): Activations {
  return graphInterface === 'device-kv' && precision !== 'fp32' ? 'fp16' : 'fp32';
}

export interface BuildInfo {
  dir: string;
  modelPath: string;
  fingerprint: string;
  options: BuildOptions;
  builderVersion: number;
  buildSeconds: number;
  dataBytes: number;
  cached: boolean;
}

export function defaultCacheDir(): string {
  return join(homedir(), '.cache', 'latentwatch', 'builds');
}

export function resolveBuildOptions(ckpt: Checkpoint, r: BuildRequest = {}): BuildOptions {
  const all = Array.from({ length: ckpt.config.numLayers }, (_, i) => i);
  const sorted = (xs: number[]) => [...new Set(xs)].sort((a, b) => a - b);
  // An 'hf' build has neither taps nor ports unless asked (and validation refuses them).
  const dflt = r.interface === 'hf' ? [] : all;
  const precision = r.precision ?? 'fp32';
  const activations = r.activations ?? defaultActivations(r.interface, precision);
  const o: BuildOptions = {
    precision,
    taps: r.taps === undefined ? dflt : r.taps === 'all' ? all : sorted(r.taps),
    ports: r.ports === undefined ? dflt : r.ports === 'all' ? all : r.ports === 'none' ? [] : sorted(r.ports),
    blockSize: r.blockSize ?? 32,
    accuracyLevel: r.accuracyLevel ?? 4,
    // Only a non-default interface enters the options (and so the cache key): default keys are unchanged.
    ...(r.interface && r.interface !== 'latentwatch' ? { interface: r.interface } : {}),
    ...(activations !== 'fp32' ? { activations } : {}),
  };
  validateBuildOptions(ckpt.config, o);
  return o;
}

export function buildKey(fingerprint: string, o: BuildOptions): string {
  const h = createHash('sha256').update(JSON.stringify({ v: BUILDER_VERSION, fingerprint, o })).digest('hex').slice(0, 16);
  return `${o.precision}-${h}`;
}

/** Returns a build of `modelDir` with the given options, building it (with progress) if not cached. */
export function ensureBuild(modelDir: string | Checkpoint, request: BuildRequest = {}, opts: { cacheDir?: string; progress?: BuildProgress; force?: boolean } = {}): BuildInfo {
  const ckpt = typeof modelDir === 'string' ? openCheckpoint(modelDir) : modelDir;
  const options = resolveBuildOptions(ckpt, request);
  const root = join(opts.cacheDir ?? defaultCacheDir(), ckpt.fingerprint);
  const dir = join(root, buildKey(ckpt.fingerprint, options));
  const metaPath = join(dir, 'build.json');
  if (!opts.force && existsSync(metaPath)) {
    const meta = JSON.parse(readFileSync(metaPath, 'utf8')) as Omit<BuildInfo, 'dir' | 'modelPath' | 'cached'>;
    return { ...meta, dir, modelPath: join(dir, 'model.onnx'), cached: true };
  }
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  try {
    const t0 = performance.now();
    const { dataBytes } = buildGraph(ckpt, options, join(tmp, 'model.onnx'), opts.progress);
    const meta = { fingerprint: ckpt.fingerprint, options, builderVersion: BUILDER_VERSION, buildSeconds: (performance.now() - t0) / 1000, dataBytes };
    writeFileSync(join(tmp, 'build.json'), JSON.stringify(meta, null, 2));
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
    return { ...meta, dir, modelPath: join(dir, 'model.onnx'), cached: false };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
