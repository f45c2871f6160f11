/**
 * transformers.js (@huggingface/transformers 4.x, on the same onnxruntime-node as ours) running one
 * of our builds made with the 'hf' interface: a local model directory laid out the way it loads one
 * (config.json, generation_config.json, tokenizer files, onnx/model<suffix>.onnx and the external
 * data file beside it under the name the graph records), and greedy generation with a timestamp per
 * token.
 *
 * External data: in Node transformers.js hands onnxruntime the model's path, and onnxruntime opens
 * the data file the graph names (`model.onnx.data`) from the model's directory. So no
 * `use_external_data_format` is set: that option makes transformers.js look for `<file>.onnx_data`
 * chunks itself, which our builds do not write.
 */
import { copyFileSync, existsSync, linkSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { basename, join } from 'node:path';

/** transformers.js' dtype and the file-name suffix it selects (DEFAULT_DTYPE_SUFFIX_MAPPING). */
export const TFJS_DTYPE_SUFFIX = { fp32: '', q4: '_q4', q8: '_quantized' } as const;
export type TfjsDtype = keyof typeof TFJS_DTYPE_SUFFIX;

/** Hard link (same file system), else symbolic link, else copy. */
function place(src: string, dst: string): void {
  rmSync(dst, { force: true });
  try {
    linkSync(src, dst);
  } catch {
    try {
      symlinkSync(src, dst);
    } catch {
      copyFileSync(src, dst);
    }
  }
}

/**
 * Lays out `root/name/` for transformers.js from a checkpoint directory (its config and tokenizer
 * files) and an 'hf' build's model.onnx. Returns the model directory.
 */
export function layoutTransformersJsModel(o: { checkpointDir: string; modelPath: string; root: string; name: string; dtype: TfjsDtype }): string {
  const dir = join(o.root, o.name);
  mkdirSync(join(dir, 'onnx'), { recursive: true });
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']) {
    if (existsSync(join(o.checkpointDir, f))) place(join(o.checkpointDir, f), join(dir, f));
  }
  place(o.modelPath, join(dir, 'onnx', `model${TFJS_DTYPE_SUFFIX[o.dtype]}.onnx`));
  const data = `${o.modelPath}.data`;
  if (existsSync(data)) place(data, join(dir, 'onnx', basename(data)));
  return dir;
}

type Tfjs = typeof import('@huggingface/transformers');
type TfjsModel = Awaited<ReturnType<Tfjs['AutoModelForCausalLM']['from_pretrained']>>;

export interface TfjsRunner {
  tfjs: Tfjs;
  model: TfjsModel;
  /** Greedy generation of `newTokens` tokens; `t[k]` is when token k + 1 was known. */
  greedy(promptIds: number[], newTokens: number): Promise<{ start: number; t: number[]; ids: number[] }>;
  dispose(): Promise<void>;
}

/**
 * Loads `root/name` with remote models off, onnxruntime session options as the engine sets its own
 * (CPU provider, all graph optimizations, `threads` intra-op threads, one inter-op thread).
 */
export async function loadTransformersJs(o: { root: string; name: string; dtype: TfjsDtype; threads: number }): Promise<TfjsRunner> {
  const tfjs = await import('@huggingface/transformers');
  tfjs.env.allowRemoteModels = false;
  tfjs.env.allowLocalModels = true;
  tfjs.env.localModelPath = o.root.endsWith('/') ? o.root : `${o.root}/`;
  tfjs.env.useFSCache = false;
  const model = await tfjs.AutoModelForCausalLM.from_pretrained(o.name, {
    dtype: o.dtype,
    device: 'cpu',
    local_files_only: true,
    session_options: { executionProviders: ['cpu'], graphOptimizationLevel: 'all', intraOpNumThreads: o.threads, interOpNumThreads: 1, logSeverityLevel: 3 },
  });
  const greedy = async (promptIds: number[], newTokens: number) => {
    const n = promptIds.length;
    const input_ids = new tfjs.Tensor('int64', BigInt64Array.from(promptIds.map(BigInt)), [1, n]);
    const attention_mask = new tfjs.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]);
    const t: number[] = [];
    let puts = 0;
    // generate() calls put() once with the prompt, then once after each sampled token.
    const streamer = {
      put: () => {
        if (puts++ > 0) t.push(performance.now());
      },
      end: () => {},
    };
    const start = performance.now();
    const out = (await model.generate({
      input_ids,
      attention_mask,
      max_new_tokens: newTokens,
      do_sample: false,
      // No stop token: every run generates exactly newTokens (our engine runs with ignoreEos).
      eos_token_id: null,
      streamer,
    } as unknown as Parameters<TfjsModel['generate']>[0])) as InstanceType<Tfjs['Tensor']>;
    const all = (out.tolist() as bigint[][])[0];
    return { start, t, ids: all.slice(n).map(Number) };
  };
  return {
    tfjs,
    model,
    greedy,
    dispose: async () => {
      await model.dispose();
    },
  };
}
