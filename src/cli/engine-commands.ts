/** `latentwatch build | generate | activations`: the engine from the command line. */
import { readFileSync, writeFileSync } from 'node:fs';
import { lwError } from '../errors.js';
import { Engine, interfaceFor } from '../engine/engine.js';
import { parseResidPost } from '../hooks.js';
import { ensureBuild } from '../model/build.js';
import { ACTIVATIONS, PRECISIONS, type Activations, type Precision } from '../model/graph.js';
import { encodeSafetensors, readSafetensorsHeader, readTensorF32 } from '../model/safetensors.js';
import { DEFAULT_MODEL_DIR } from '../paths.js';
import { PROVIDERS, type Provider } from '../engine/runtime.js';
import { layerList, num, parse, progressBar, type Command } from './args.js';

function precision(v: string | undefined): Precision {
  const p = (v ?? 'fp32') as Precision;
  if (!PRECISIONS.includes(p)) throw lwError('LW_ERR_CLI_USAGE', `--precision must be one of ${PRECISIONS.join('|')} (got ${v})`);
  return p;
}

function activations(v: string | undefined): Activations | undefined {
  if (v === undefined || (ACTIVATIONS as readonly string[]).includes(v)) return v as Activations | undefined;
  throw lwError('LW_ERR_CLI_USAGE', `--activations must be one of ${ACTIVATIONS.join('|')} (got ${v})`);
}

const common = {
  model: { type: 'string' },
  precision: { type: 'string' },
  activations: { type: 'string' },
  'cache-dir': { type: 'string' },
  threads: { type: 'string' },
  provider: { type: 'string' },
} as const;

function provider(v: string | undefined): Provider {
  if (v === undefined) return 'cpu';
  if ((PROVIDERS as readonly string[]).includes(v)) return v as Provider;
  throw lwError('LW_ERR_CLI_USAGE', `--provider must be one of ${PROVIDERS.join('|')} (got ${v})`);
}

export const buildCommand: Command = {
  name: 'build',
  usage: `
latentwatch build [--model DIR] [--precision fp32|fp16|int8|int4] [--taps all|L,L] [--ports all|none|L,L]
                  [--block-size N] [--provider cpu|cuda|webgpu] [--activations fp32|fp16] [--cache-dir DIR] [--force]
  Builds (or finds in the cache) the graph for a Hugging Face Qwen2/Qwen3 checkpoint and prints
  where it is. Default model: the built-in ${DEFAULT_MODEL_DIR}. --provider webgpu builds the
  graph the engine runs there (its KV cache stays on the GPU: docs/gpu.md); --activations fp16
  (webgpu only) computes in fp16 between the weights, the default there for int4/int8/fp16 weights
  (--activations fp32 to keep fp32).`,
  async run(argv) {
    const v = parse(argv, { ...common, taps: { type: 'string' }, ports: { type: 'string' }, 'block-size': { type: 'string' }, force: { type: 'boolean' } }, this.usage);
    const ports = layerList(v.ports, 'ports');
    const info = ensureBuild(
      v.model ?? DEFAULT_MODEL_DIR,
      {
        precision: precision(v.precision),
        taps: layerList(v.taps, 'taps'),
        ports: v.ports === 'none' ? 'none' : ports,
        blockSize: num(v['block-size'], 'block-size'),
        interface: interfaceFor(provider(v.provider)),
        activations: activations(v.activations),
      },
      { cacheDir: v['cache-dir'], progress: progressBar('build'), force: v.force },
    );
    process.stdout.write(JSON.stringify({ modelPath: info.modelPath, cached: info.cached, fingerprint: info.fingerprint, buildSeconds: info.buildSeconds, dataBytes: info.dataBytes, options: info.options }, null, 2) + '\n');
  },
};

export const generateCommand: Command = {
  name: 'generate',
  usage: `
latentwatch generate [--model DIR] (--prompt TEXT | --chat TEXT) [--max-tokens N] [--temperature T]
                     [--top-p P] [--top-k K] [--seed S] [--ignore-eos] [--precision P] [--json]
                     [--provider cpu|cuda|webgpu] [--activations fp32|fp16] [--threads N] [--cache-dir DIR]
  --chat wraps TEXT as a user message in the model's chat template (plain format for base models).
  --json prints {"prompt_ids": [...], "ids": [...], "text": "..."} (ids: generated ids only).`,
  async run(argv) {
    const v = parse(
      argv,
      {
        ...common,
        prompt: { type: 'string' },
        chat: { type: 'string' },
        'max-tokens': { type: 'string' },
        temperature: { type: 'string' },
        'top-p': { type: 'string' },
        'top-k': { type: 'string' },
        seed: { type: 'string' },
        'ignore-eos': { type: 'boolean' },
        json: { type: 'boolean' },
      },
      this.usage,
    );
    if ((v.prompt === undefined) === (v.chat === undefined)) throw lwError('LW_ERR_CLI_USAGE', 'give exactly one of --prompt or --chat');
    const engine = await Engine.load(v.model ?? DEFAULT_MODEL_DIR, {
      precision: precision(v.precision),
      ports: 'none',
      taps: [],
      cacheDir: v['cache-dir'],
      threads: num(v.threads, 'threads'),
      provider: provider(v.provider),
      activations: activations(v.activations),
      progress: progressBar('build'),
    });
    const tok = engine.tokenizer;
    if (!tok) throw lwError('LW_ERR_TOKENIZER_NOT_FOUND', `${engine.checkpoint.dir} has no tokenizer.json`);
    const promptIds = v.chat !== undefined ? tok.encodeChat([{ role: 'user', content: v.chat }], { addGenerationPrompt: true }) : tok.encode(v.prompt ?? '');
    const ids: number[] = [];
    let text = '';
    for await (const step of engine.generate({
      promptIds,
      maxTokens: num(v['max-tokens'], 'max-tokens', 64)!,
      ignoreEos: v['ignore-eos'],
      sampling: { temperature: num(v.temperature, 'temperature', 0), topP: num(v['top-p'], 'top-p'), topK: num(v['top-k'], 'top-k'), seed: num(v.seed, 'seed') },
    })) {
      if (step.kind !== 'token') continue;
      ids.push(step.tokenId);
      text += step.text;
      if (!v.json) process.stdout.write(step.text);
    }
    if (v.json) process.stdout.write(JSON.stringify({ prompt_ids: promptIds, ids, text }) + '\n');
    else process.stdout.write('\n');
    await engine.close();
  },
};

export const activationsCommand: Command = {
  name: 'activations',
  usage: `
latentwatch activations [--model DIR] --prompt TEXT --hook blocks.L.hook_resid_post --out FILE.safetensors
                        [--inject-hook H --inject-vector FILE --inject-scale A] [--precision P]
                        [--provider cpu|cuda|webgpu] [--activations fp32|fp16]
  FILE.safetensors gets tensor "activations" [tokens, d_model] fp32. --inject-vector is a safetensors
  file whose first tensor (or one named "vector") holds d_model floats, added (times --inject-scale,
  default 1) at every prompt position of --inject-hook.`,
  async run(argv) {
    const v = parse(
      argv,
      { ...common, prompt: { type: 'string' }, hook: { type: 'string' }, out: { type: 'string' }, 'inject-hook': { type: 'string' }, 'inject-vector': { type: 'string' }, 'inject-scale': { type: 'string' } },
      this.usage,
    );
    if (v.prompt === undefined || v.hook === undefined || v.out === undefined) throw lwError('LW_ERR_CLI_USAGE', '--prompt, --hook and --out are required');
    const tapLayer = parseResidPost(v.hook);
    const injectLayer = v['inject-hook'] === undefined ? undefined : parseResidPost(v['inject-hook']);
    if ((injectLayer === undefined) !== (v['inject-vector'] === undefined)) throw lwError('LW_ERR_CLI_USAGE', '--inject-hook and --inject-vector go together');
    const engine = await Engine.load(v.model ?? DEFAULT_MODEL_DIR, {
      precision: precision(v.precision),
      taps: [tapLayer],
      ports: injectLayer === undefined ? 'none' : [injectLayer],
      cacheDir: v['cache-dir'],
      threads: num(v.threads, 'threads'),
      provider: provider(v.provider),
      activations: activations(v.activations),
      progress: progressBar('build'),
    });
    const tok = engine.tokenizer;
    if (!tok) throw lwError('LW_ERR_TOKENIZER_NOT_FOUND', `${engine.checkpoint.dir} has no tokenizer.json`);
    const promptIds = tok.encode(v.prompt);
    const injections = [];
    if (injectLayer !== undefined && v['inject-vector'] !== undefined) {
      injections.push({ hook: v['inject-hook']!, vector: readVector(v['inject-vector']), scale: num(v['inject-scale'], 'inject-scale', 1)!, window: { kind: 'prompt' as const } });
    }
    let data = new Float32Array(0);
    for await (const step of engine.generate({ promptIds, maxTokens: 0, taps: [v.hook], injections })) {
      if (step.kind === 'prompt') data = step.taps.get(v.hook)!.data as Float32Array<ArrayBuffer>;
    }
    writeFileSync(v.out, encodeSafetensors({ activations: { shape: [promptIds.length, engine.config.hiddenSize], data } }, { hook: v.hook, fingerprint: engine.fingerprint, prompt_ids: JSON.stringify(promptIds) }));
    process.stdout.write(JSON.stringify({ out: v.out, tokens: promptIds.length, dModel: engine.config.hiddenSize }) + '\n');
    await engine.close();
  },
};

/** A vector from a safetensors file (tensor "vector", else the first) or a JSON array. */
export function readVector(path: string): Float32Array {
  if (path.endsWith('.json')) return Float32Array.from(JSON.parse(readFileSync(path, 'utf8')) as number[]);
  const f = readSafetensorsHeader(path);
  const info = f.tensors.get('vector') ?? [...f.tensors.values()][0];
  if (!info) throw lwError('LW_ERR_CLI_USAGE', `${path} holds no tensor`);
  return readTensorF32(info);
}
