/**
 * The one module that imports onnxruntime-node (DESIGN.md: one file owns the runtime).
 * Everything else asks it for sessions and tensors.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { lwError } from '../errors.js';

export type Provider = 'cpu' | 'cuda';
export type Tensor = ort.Tensor;

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
}

/** Whether the CUDA provider library is installed beside onnxruntime-node's binding. */
export function cudaAvailable(): boolean {
  const pkg = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  return existsSync(join(pkg, 'bin', 'napi-v6', process.platform, process.arch, 'libonnxruntime_providers_cuda.so'));
}

export class RuntimeSession {
  private constructor(private readonly session: ort.InferenceSession) {}

  static async load(modelPath: string, o: SessionOptions = {}): Promise<RuntimeSession> {
    const provider = o.provider ?? 'cpu';
    if (provider === 'cuda' && !cudaAvailable()) {
      throw lwError('LW_ERR_ENGINE_PROVIDER_UNAVAILABLE', 'cuda: the CUDA provider is not installed (see README, "GPU")');
    }
    try {
      const session = await ort.InferenceSession.create(modelPath, {
        executionProviders: [provider],
        graphOptimizationLevel: 'all',
        intraOpNumThreads: o.threads ?? 0,
        interOpNumThreads: 1,
        logSeverityLevel: 3,
        ...(o.spinning === false ? { extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } } } : {}),
      });
      return new RuntimeSession(session);
    } catch (e) {
      throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `loading ${modelPath}: ${(e as Error).message}`, undefined, e);
    }
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  /** Runs the graph. `outputs` maps each wanted output to a preallocated tensor or null (allocate). */
  async run(feeds: Record<string, Tensor>, outputs: Record<string, Tensor | null>): Promise<Record<string, Tensor>> {
    try {
      return (await this.session.run(feeds, outputs)) as Record<string, Tensor>;
    } catch (e) {
      throw lwError('LW_ERR_ENGINE_SESSION_FAILED', (e as Error).message, undefined, e);
    }
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

export function f32Tensor(data: Float32Array, dims: readonly number[]): Tensor {
  return new ort.Tensor('float32', data, dims);
}

export function i64Tensor(values: ArrayLike<number>, dims: readonly number[]): Tensor {
  const a = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) a[i] = BigInt(values[i]);
  return new ort.Tensor('int64', a, dims);
}

export function i32Tensor(values: ArrayLike<number>, dims: readonly number[]): Tensor {
  return new ort.Tensor('int32', Int32Array.from(values), dims);
}

export function tensorData(t: Tensor): Float32Array {
  return t.data as Float32Array;
}
