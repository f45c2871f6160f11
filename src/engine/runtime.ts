/**
 * The runtime: the one place that imports onnxruntime-node (DESIGN.md: one file owns the runtime),
 * with its helpers for a session on a thread of its own (session-thread.ts, session-worker.ts,
 * wire-tensor.ts). Everything else asks it for sessions and tensors.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { lwError } from '../errors.js';
import { HostKvMemory, isResident, type Feed, type KvMemory } from './kv-memory.js';
import { applyKvWrites, type KvWrite } from './kv-write.js';
import { SessionThread } from './session-thread.js';

/**
 * 'webgpu': onnxruntime-node's WebGPU provider (Dawn on Vulkan), inside the npm package; it needs a
 * Vulkan loader and driver on the host (docs/gpu.md). 'cuda': libraries from outside npm (README).
 */
export const PROVIDERS = ['cpu', 'cuda', 'webgpu'] as const;
export type Provider = (typeof PROVIDERS)[number];
export type Tensor = ort.Tensor;

/** What a host needs for a WebGPU adapter: named in the error when Dawn finds none. */
export const WEBGPU_NEEDS =
  'a Vulkan loader and driver: on an NVIDIA GPU host the Debian/Ubuntu packages libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2 ' +
  '(in a container also NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics); without a GPU, Mesa >= 25 lavapipe (Debian: apt-get install -t bookworm-backports mesa-vulkan-drivers); ' +
  'and XDG_RUNTIME_DIR set (docs/gpu.md)';

export interface SessionOptions {
  provider?: Provider;
  /** Intra-op threads; default: all cores. */
  threads?: number;
  /**
   * Whether idle pool threads spin between operators (onnxruntime's default, true). Spinning wins
   * ~8% of int4 decode on an idle 2-core machine but loses ~45% when another process holds a core
   * (bench/engine.ts investigation): turn it off where the cores are shared.
   */
  spinning?: boolean;
  /**
   * Outputs that stay in device memory (a GPU provider's 'gpu-buffer' tensors): the KV cache fed
   * back as the next pass's input. Never read them on the host (tensorData refuses them).
   */
  deviceOutputs?: readonly string[];
  /**
   * Where onnxruntime writes the graph it runs after its provider's fusions (e.g. the WebGPU
   * provider's MatMulNBitsMlp/MatMulNBitsQkv): to check what a build becomes on a provider.
   */
  optimizedModelPath?: string;
  /**
   * The WebGPU provider's validation ('basic', onnxruntime's default; 'disabled' also skips Dawn's
   * own checks of every dispatch, which cost host time per dispatch, but a WebGPU error then takes
   * the process down instead of failing the pass). Dawn's device is shared by every session of a
   * process: the first session's mode holds for all.
   */
  webgpuValidation?: WebGpuValidation;
  /** onnxruntime's profiler on: every pass's node timings go to `<profilePrefix>_<date>.json` (endProfiling writes it). */
  profilePrefix?: string;
  /** onnxruntime logs fatal errors only (a probe whose failure is an answer, not an error). */
  quiet?: boolean;
  /**
   * Whether a 'cpu' session runs its passes on a thread of its own (session-worker.ts says why; the
   * daemon's default, engineThread). Off by default: it pays only where something else waits for the
   * event loop, and its two hand-offs per pass cost single-stream decode 5–9% (0.5B int4) to 12–16%
   * (the built-in model) on the 2-core machine (docs/benchmarks.md). GPU providers always run on the
   * calling thread: their device tensors cannot cross threads.
   */
  ownThread?: boolean;
}

export const WEBGPU_VALIDATION = ['disabled', 'wgpuOnly', 'basic'] as const;
export type WebGpuValidation = (typeof WEBGPU_VALIDATION)[number];

/**
 * What onnxruntime's WebGPU provider says when a program needs fp16 and the device lacks WebGPU's
 * `shader-f16` feature (Dawn exposes it where the Vulkan device has shaderFloat16 and 16-bit storage).
 */
const MISSING_F16 = /requires f16 but the device does not support it/i;

function missingShaderF16(message: string): Error {
  return lwError(
    'LW_ERR_ENGINE_DEVICE_FEATURE_MISSING',
    `webgpu: the device lacks shader-f16 (fp16 in shaders and buffers), which the graph's fp16 tensors need: fp16 activations, and the fp16 embedding table of int4/int8/fp16 builds; on this device use --activations fp32 --precision fp32 (${message.trim()})`,
  );
}

let shaderF16: Promise<boolean> | undefined;

/**
 * Whether the WebGPU device has `shader-f16`: a one-node fp16 graph (a Cast to fp16 and back) runs
 * on the provider, or fails with onnxruntime's "requires f16". onnxruntime-node exposes no adapter
 * features, and the provider accepts fp16 graphs on any device: without the feature they fail at
 * their first pass. Once per process (Dawn's one device serves every session).
 */
export function webgpuShaderF16(webgpuValidation?: WebGpuValidation): Promise<boolean> {
  shaderF16 ??= (async () => {
    const { onnx } = onnxProto;
    const io = (name: string) => ({ name, type: { tensorType: { elemType: onnx.TensorProto.DataType.FLOAT, shape: { dim: [{ dimValue: 1 }] } } } });
    const bytes = onnx.ModelProto.encode({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      graph: {
        name: 'f16-probe',
        node: [
          { opType: 'Cast', input: ['x'], output: ['h'], attribute: [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: onnx.TensorProto.DataType.FLOAT16 }] },
          { opType: 'Cast', input: ['h'], output: ['y'], attribute: [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: onnx.TensorProto.DataType.FLOAT }] },
        ],
        input: [io('x')],
        output: [io('y')],
      },
    }).finish();
    // The validation mode of a process's first WebGPU session holds for all: pass the engine's on.
    const session = await RuntimeSession.load(bytes, { provider: 'webgpu', webgpuValidation, quiet: true });
    try {
      const y = await session.run({ x: f32Tensor(Float32Array.of(1.5), [1]) }, ['y']);
      return tensorData(y.y)[0] === 1.5;
    } catch (e) {
      if ((e as { code?: string }).code === 'LW_ERR_ENGINE_DEVICE_FEATURE_MISSING') return false;
      throw e;
    } finally {
      await session.release();
    }
  })();
  return shaderF16;
}

/** Refuses a graph with fp16 tensors on a WebGPU device without shader-f16, with a coded error naming the feature. */
export async function requireShaderF16(webgpuValidation?: WebGpuValidation): Promise<void> {
  if (!(await webgpuShaderF16(webgpuValidation))) throw missingShaderF16('a one-node fp16 graph failed on the device');
}

/** Whether the CUDA provider library is installed beside onnxruntime-node's binding. */
export function cudaAvailable(): boolean {
  const pkg = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  return existsSync(join(pkg, 'bin', 'napi-v6', process.platform, process.arch, 'libonnxruntime_providers_cuda.so'));
}

/** What RuntimeSession drives: an onnxruntime session on this thread, or one on its own. */
interface SessionBackend {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** `writes` are applied before the promise resolves; their outputs need not come back. */
  run(feeds: Record<string, Feed>, outputs: readonly string[] | null, writes: readonly KvWrite[]): Promise<Record<string, Tensor>>;
  /** Memory for a KV pool, where this backend's passes read it. */
  kvMemory(floats: number): KvMemory;
  endProfiling(): void;
  release(): Promise<void>;
}

function localBackend(session: ort.InferenceSession): SessionBackend {
  return {
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    run: async (feeds, outputs, writes) => {
      const tensors = hostFeeds(feeds);
      const r = (outputs ? await session.run(tensors, [...outputs, ...writes.map((w) => w.output)]) : await session.run(tensors)) as Record<string, Tensor>;
      applyKvWrites(writes, (name) => tensorData(tensors[name]), (name) => tensorData(r[name]));
      return r;
    },
    kvMemory: (floats) => new HostKvMemory(floats),
    endProfiling: () => session.endProfiling(),
    release: () => session.release(),
  };
}

/** Feeds of a session on this thread: every one a tensor (only a session thread makes resident memory). */
function hostFeeds(feeds: Record<string, Feed>): Record<string, Tensor> {
  for (const [name, f] of Object.entries(feeds)) if (isResident(f)) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `feed ${name} is resident on a session thread this session does not run on`);
  return feeds as Record<string, Tensor>;
}

export class RuntimeSession {
  private constructor(private readonly session: SessionBackend) {}

  /** Loads a graph file (or its bytes). */
  static async load(modelPath: string | Uint8Array, o: SessionOptions = {}): Promise<RuntimeSession> {
    const provider = o.provider ?? 'cpu';
    if (provider === 'cuda' && !cudaAvailable()) {
      throw lwError('LW_ERR_ENGINE_PROVIDER_UNAVAILABLE', 'cuda: the CUDA provider is not installed (see README, "GPU")');
    }
    try {
      const options: ort.InferenceSession.SessionOptions = {
        executionProviders: [provider === 'webgpu' && o.webgpuValidation ? { name: 'webgpu', validationMode: o.webgpuValidation } : provider],
        graphOptimizationLevel: 'all',
        intraOpNumThreads: o.threads ?? 0,
        interOpNumThreads: 1,
        logSeverityLevel: o.quiet ? 4 : 3,
        ...(o.optimizedModelPath ? { optimizedModelFilePath: o.optimizedModelPath } : {}),
        ...(o.profilePrefix ? { enableProfiling: true, profileFilePrefix: o.profilePrefix } : {}),
        ...(o.deviceOutputs?.length ? { preferredOutputLocation: Object.fromEntries(o.deviceOutputs.map((n) => [n, 'gpu-buffer' as const])) } : {}),
        ...(o.spinning === false ? { extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } } } : {}),
      };
      if (provider === 'cpu' && o.ownThread === true) return new RuntimeSession(await SessionThread.start({ model: modelPath, options }));
      const session = typeof modelPath === 'string' ? await ort.InferenceSession.create(modelPath, options) : await ort.InferenceSession.create(modelPath, options);
      return new RuntimeSession(localBackend(session));
    } catch (e) {
      const message = (e as Error).message;
      // Dawn found no Vulkan device (no loader, no driver, or a driver it refuses).
      if (provider === 'webgpu' && /webgpu adapter|supported adapters|vulkan|dawn/i.test(message)) {
        throw lwError('LW_ERR_ENGINE_PROVIDER_UNAVAILABLE', `webgpu: no WebGPU adapter (${message.trim()}); the provider needs ${WEBGPU_NEEDS}`, undefined, e);
      }
      throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `loading ${typeof modelPath === 'string' ? modelPath : 'a graph'}: ${message}`, undefined, e);
    }
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  /**
   * Runs the graph; only the outputs named come back (onnxruntime-node copies every fetched output).
   * `writes`: the pass's new keys and values go into the host cache it read, before this resolves.
   */
  async run(feeds: Record<string, Feed>, outputs: readonly string[], writes: readonly KvWrite[] = []): Promise<Record<string, Tensor>> {
    try {
      return await this.session.run(feeds, outputs, writes);
    } catch (e) {
      throw runError(e);
    }
  }

  /** Runs the graph and returns every output (each where preferredOutputLocation puts it). */
  async runAll(feeds: Record<string, Tensor>): Promise<Record<string, Tensor>> {
    try {
      return await this.session.run(feeds, null, []);
    } catch (e) {
      throw runError(e);
    }
  }

  /** Memory for a KV pool of `floats` floats, where this session's passes read it (kv-memory.ts). */
  kvMemory(floats: number): KvMemory {
    return this.session.kvMemory(floats);
  }

  /** Writes the profile of a session loaded with `profilePrefix`. */
  endProfiling(): void {
    this.session.endProfiling();
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** A failed pass as a coded error: a device without shader-f16 named as such. */
function runError(e: unknown): Error {
  const message = (e as Error).message;
  return MISSING_F16.test(message) ? missingShaderF16(message) : lwError('LW_ERR_ENGINE_SESSION_FAILED', message, undefined, e);
}

export function f32Tensor(data: Float32Array, dims: readonly number[]): Tensor {
  return new ort.Tensor('float32', data, dims);
}

/** A tensor with no elements (a first pass's empty past), in fp32 or fp16. */
export function emptyTensor(type: 'float32' | 'float16', dims: readonly number[]): Tensor {
  return type === 'float16' ? new ort.Tensor('float16', new Uint16Array(0), dims) : new ort.Tensor('float32', new Float32Array(0), dims);
}

export function i64Tensor(values: ArrayLike<number>, dims: readonly number[]): Tensor {
  const a = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) a[i] = BigInt(values[i]);
  return new ort.Tensor('int64', a, dims);
}

export function i32Tensor(values: ArrayLike<number>, dims: readonly number[]): Tensor {
  return new ort.Tensor('int32', Int32Array.from(values), dims);
}

/** A host tensor's values. A device tensor is refused: reading one through onnxruntime-node aborts the process. */
export function tensorData(t: Tensor): Float32Array {
  if (t.location !== 'cpu') throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `a ${t.location} tensor cannot be read on the host`);
  return t.data as Float32Array;
}

/** Frees a device tensor's memory now (the cache of a pass that has been superseded). */
export function disposeTensor(t: Tensor): void {
  if (t.location !== 'cpu') t.dispose();
}
