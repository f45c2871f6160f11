/**
 * llama.cpp through node-llama-cpp, with its prebuilt binaries only (the npm packages
 * @node-llama-cpp/<platform>): `build: 'never'` and `skipDownload` so it never compiles llama.cpp
 * or fetches anything, and the CPU backend (`gpu: false`). package.json sets
 * `config.nodeLlamaCppPostinstall = "skip"`, so installing it runs no build either.
 *
 * It is not a devDependency: its lock file lists platform packages (win, mac, riscv64) that this
 * registry does not have, which makes `npm ci` fail. Install it for the peer bench with
 *   npm i --no-save --ignore-scripts node-llama-cpp@3.22.1
 * Its types are therefore not needed to compile: the few used here are typed loosely.
 */
import { installedVersion } from './versions.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- node-llama-cpp is optional (see above) */
type Llama = any;
type LlamaModel = any;
type LlamaContext = any;
type LlamaContextSequence = any;
type Token = any;
/* eslint-enable @typescript-eslint/no-explicit-any */
const MODULE = 'node-llama-cpp';

export interface LlamaCppRunner {
  llama: Llama;
  model: LlamaModel;
  context: LlamaContext;
  sequence: LlamaContextSequence;
  /** llama.cpp's build and CPU description. */
  info: { buildType: string; systemInfo: string; version: string | null };
  /** Greedy generation of `newTokens` tokens from a fresh history; `t[k]` is when token k + 1 was known. */
  greedy(promptIds: number[], newTokens: number): Promise<{ start: number; t: number[]; ids: number[] }>;
  tokenize(text: string): number[];
  dispose(): Promise<void>;
}

export async function loadLlamaCpp(o: { modelPath: string; threads: number; contextSize: number; flashAttention: boolean }): Promise<LlamaCppRunner> {
  let mod;
  try {
    mod = await import(MODULE);
  } catch (e) {
    throw new Error(`node-llama-cpp is not installed (npm i --no-save --ignore-scripts node-llama-cpp@3.22.1): ${(e as Error).message}`);
  }
  const { getLlama, LlamaLogLevel } = mod;
  const llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, usePrebuiltBinaries: true, logLevel: LlamaLogLevel.error, progressLogs: false });
  const model = await llama.loadModel({ modelPath: o.modelPath, gpuLayers: 0, useMmap: true });
  const context = await model.createContext({ contextSize: o.contextSize, threads: o.threads, flashAttention: o.flashAttention, sequences: 1, batchSize: o.contextSize });
  const sequence = context.getSequence();
  const greedy = async (promptIds: number[], newTokens: number) => {
    await sequence.clearHistory();
    const t: number[] = [];
    const ids: number[] = [];
    const start = performance.now();
    // Each yield follows one evaluation: the prompt's for the first token, one decode step after.
    for await (const token of sequence.evaluate(promptIds as Token[], { temperature: 0, yieldEogToken: true })) {
      t.push(performance.now());
      ids.push(Number(token));
      if (ids.length >= newTokens) break;
    }
    return { start, t, ids };
  };
  return {
    llama,
    model,
    context,
    sequence,
    info: { buildType: llama.buildType, systemInfo: llama.systemInfo, version: installedVersion('node-llama-cpp') },
    greedy,
    tokenize: (text) => (model.tokenize(text, false) as unknown[]).map(Number),
    dispose: async () => {
      await context.dispose();
      await model.dispose();
      await llama.dispose();
    },
  };
}
