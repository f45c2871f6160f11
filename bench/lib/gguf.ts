/**
 * A small GGUF (version 3) writer, so llama.cpp can run the very weights our engine serves: the
 * header and metadata (the qwen2 architecture's hyperparameters and a GPT-2-style BPE tokenizer taken
 * from tokenizer.json), then the tensors under llama.cpp's names in F32, Q8_0 or Q4_0, streamed one
 * tensor at a time from the checkpoint (never the whole model in memory).
 *
 * Written from the published format (magic "GGUF", little-endian, u64 counts and string lengths,
 * tensor data aligned to `general.alignment`, dimensions listed innermost first) and ggml's block
 * layouts: Q8_0 = 32 weights as an fp16 scale d = max|x| / 127 and 32 int8; Q4_0 = 32 weights as an
 * fp16 scale d = (the signed value of largest magnitude) / -8 and 16 bytes of 4-bit codes
 * q = min(15, trunc(x / d + 8.5)), element j in the low nibble of byte j and element j + 16 in its
 * high nibble, decoded as (q - 8) · d. 1-D tensors (norms, biases) stay F32 as llama.cpp's own
 * quantizer leaves them; every 2-D tensor, the embedding included, takes the file's type.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Checkpoint } from '../../src/model/checkpoint.js';
import { floatToHalf } from '../../src/model/quantize.js';

export type GgufWeightType = 'F32' | 'Q8_0' | 'Q4_0';
export const GGUF_WEIGHT_TYPES: readonly GgufWeightType[] = ['F32', 'Q8_0', 'Q4_0'];

/** ggml_type ids. */
const GGML_TYPE: Record<GgufWeightType, number> = { F32: 0, Q4_0: 2, Q8_0: 8 };
/** general.file_type (llama_ftype): ALL_F32, MOSTLY_Q4_0, MOSTLY_Q8_0. */
const FILE_TYPE: Record<GgufWeightType, number> = { F32: 0, Q4_0: 2, Q8_0: 7 };
const BLOCK = 32;
/** Bytes per block of 32 weights. */
const BLOCK_BYTES: Record<GgufWeightType, number> = { F32: 4 * BLOCK, Q8_0: 2 + BLOCK, Q4_0: 2 + BLOCK / 2 };
const ALIGNMENT = 32;
/** Bump when the file layout changes, so cached files are rewritten. */
export const GGUF_WRITER_VERSION = 1;

/** GGUF metadata value types (the ones written here). */
const ValueType = { Uint32: 4, Int32: 5, Float32: 6, Bool: 7, String: 8, Array: 9 } as const;

export type MetaValue =
  | { t: 'u32'; v: number }
  | { t: 'i32'; v: number }
  | { t: 'f32'; v: number }
  | { t: 'bool'; v: boolean }
  | { t: 'str'; v: string }
  | { t: 'str[]'; v: readonly string[] }
  | { t: 'i32[]'; v: ArrayLike<number> };

/** A growable little-endian byte buffer for the header. */
class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u32(v: number): void {
    this.room(4);
    this.length = this.buf.writeUInt32LE(v, this.length);
  }

  i32(v: number): void {
    this.room(4);
    this.length = this.buf.writeInt32LE(v, this.length);
  }

  u64(v: number | bigint): void {
    this.room(8);
    this.length = this.buf.writeBigUInt64LE(BigInt(v), this.length);
  }

  f32(v: number): void {
    this.room(4);
    this.length = this.buf.writeFloatLE(v, this.length);
  }

  u8(v: number): void {
    this.room(1);
    this.length = this.buf.writeUInt8(v, this.length);
  }

  str(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.u64(n);
    this.room(n);
    this.length += this.buf.write(s, this.length, 'utf8');
  }

  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.room(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }

  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeValue(w: ByteWriter, m: MetaValue): void {
  switch (m.t) {
    case 'u32':
      w.u32(ValueType.Uint32);
      w.u32(m.v);
      return;
    case 'i32':
      w.u32(ValueType.Int32);
      w.i32(m.v);
      return;
    case 'f32':
      w.u32(ValueType.Float32);
      w.f32(m.v);
      return;
    case 'bool':
      w.u32(ValueType.Bool);
      w.u8(m.v ? 1 : 0);
      return;
    case 'str':
      w.u32(ValueType.String);
      w.str(m.v);
      return;
    case 'str[]':
      w.u32(ValueType.Array);
      w.u32(ValueType.String);
      w.u64(m.v.length);
      for (const s of m.v) w.str(s);
      return;
    case 'i32[]':
      w.u32(ValueType.Array);
      w.u32(ValueType.Int32);
      w.u64(m.v.length);
      for (let i = 0; i < m.v.length; i++) w.i32(m.v[i]);
      return;
  }
}

// ---------------------------------------------------------------------------------------------
// Quantization (ggml's reference block formats)

/** Q8_0 blocks of a row-major array whose length is a multiple of 32. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  const nb = x.length / BLOCK;
  if (!Number.isInteger(nb)) throw new Error(`Q8_0: ${x.length} values is not a multiple of ${BLOCK}`);
  const out = new Uint8Array(nb * BLOCK_BYTES.Q8_0);
  const view = new DataView(out.buffer);
  for (let b = 0; b < nb; b++) {
    const o = b * BLOCK;
    let amax = 0;
    for (let j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(x[o + j]));
    const d = amax / 127;
    const id = d ? 1 / d : 0;
    const ob = b * BLOCK_BYTES.Q8_0;
    view.setUint16(ob, floatToHalf(d), true);
    for (let j = 0; j < BLOCK; j++) {
      const v = x[o + j] * id;
      // C's roundf: halves away from zero.
      view.setInt8(ob + 2 + j, Math.sign(v) * Math.round(Math.abs(v)));
    }
  }
  return out;
}

/** Q4_0 blocks of a row-major array whose length is a multiple of 32. */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  const nb = x.length / BLOCK;
  if (!Number.isInteger(nb)) throw new Error(`Q4_0: ${x.length} values is not a multiple of ${BLOCK}`);
  const out = new Uint8Array(nb * BLOCK_BYTES.Q4_0);
  const view = new DataView(out.buffer);
  const half = BLOCK / 2;
  for (let b = 0; b < nb; b++) {
    const o = b * BLOCK;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < BLOCK; j++) {
      const v = x[o + j];
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = max / -8;
    const id = d ? 1 / d : 0;
    const ob = b * BLOCK_BYTES.Q4_0;
    view.setUint16(ob, floatToHalf(d), true);
    for (let j = 0; j < half; j++) {
      const lo = Math.min(15, Math.trunc(x[o + j] * id + 8.5));
      const hi = Math.min(15, Math.trunc(x[o + half + j] * id + 8.5));
      out[ob + 2 + j] = lo | (hi << 4);
    }
  }
  return out;
}

function encode(x: Float32Array, type: GgufWeightType): Uint8Array {
  if (type === 'Q8_0') return quantizeQ8_0(x);
  if (type === 'Q4_0') return quantizeQ4_0(x);
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}

// ---------------------------------------------------------------------------------------------
// The tokenizer (tokenizer.json of a byte-level BPE, as Qwen2 ships it)

export interface GgufTokenizer {
  tokens: string[];
  tokenTypes: Int32Array;
  merges: string[];
  pre: string;
  bosId: number | null;
  eosId: number | null;
  padId: number | null;
  addBos: boolean;
}

interface TokenizerJson {
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
  added_tokens?: { id: number; content: string; special?: boolean }[];
  pre_tokenizer?: { type: string; use_regex?: boolean; pretokenizers?: { type: string; pattern?: { Regex?: string } }[] };
}

/** The pre-tokenizer name llama.cpp knows this tokenizer's splitting rule by. */
function preTokenizerName(t: TokenizerJson): string {
  const p = t.pre_tokenizer;
  if (p?.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2';
  const split = p?.pretokenizers?.find((x) => x.type === 'Split')?.pattern?.Regex ?? '';
  // Qwen2's rule: single digits (\p{N} alone) and up to one non-letter before a letter run.
  if (split.includes('[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|')) return 'qwen2';
  return 'default';
}

const TOKEN_TYPE = { normal: 1, control: 3, userDefined: 4, unused: 5 } as const;

/**
 * Tokens by id, padded to the embedding's rows with unused `[PADi]` entries; added tokens marked
 * control (special) or user-defined; merges as "a b" strings.
 */
export function readTokenizer(dir: string, vocabSize: number): GgufTokenizer {
  const t = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  if (t.model.type !== 'BPE') throw new Error(`tokenizer.json: model type ${t.model.type} (only byte-level BPE is written)`);
  const tokens: (string | undefined)[] = new Array<string | undefined>(vocabSize);
  const types = new Int32Array(vocabSize).fill(TOKEN_TYPE.normal);
  for (const [tok, id] of Object.entries(t.model.vocab)) if (id < vocabSize) tokens[id] = tok;
  for (const a of t.added_tokens ?? []) {
    if (a.id >= vocabSize) continue;
    tokens[a.id] = a.content;
    types[a.id] = a.special ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined;
  }
  for (let i = 0; i < vocabSize; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = TOKEN_TYPE.unused;
    }
  }
  const merges = t.model.merges.map((m) => (typeof m === 'string' ? m : `${m[0]} ${m[1]}`));
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { bos_token_id?: number | null; eos_token_id?: number | number[] | null };
  const tc = existsSync(join(dir, 'tokenizer_config.json'))
    ? (JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as { pad_token?: string | null; add_bos_token?: boolean })
    : {};
  const byContent = new Map((t.added_tokens ?? []).map((a) => [a.content, a.id]));
  const eos = Array.isArray(cfg.eos_token_id) ? cfg.eos_token_id[0] : cfg.eos_token_id;
  return {
    tokens: tokens as string[],
    tokenTypes: types,
    merges,
    pre: preTokenizerName(t),
    bosId: cfg.bos_token_id ?? eos ?? null,
    eosId: eos ?? null,
    padId: tc.pad_token ? (byContent.get(tc.pad_token) ?? null) : null,
    addBos: tc.add_bos_token ?? false,
  };
}

// ---------------------------------------------------------------------------------------------
// The file

interface TensorPlan {
  name: string;
  /** Dimensions innermost first (ggml's ne): an HF [out, in] weight is [in, out]. */
  dims: number[];
  type: GgufWeightType;
  bytes: number;
  /** The checkpoint tensor(s) it is read from. */
  source: string;
}

/** The llama.cpp tensor list for a Qwen2 checkpoint. */
function planTensors(ckpt: Checkpoint, type: GgufWeightType): TensorPlan[] {
  const cfg = ckpt.config;
  const plans: TensorPlan[] = [];
  const add = (name: string, source: string) => {
    const shape = ckpt.info(source).shape;
    const dims = [...shape].reverse();
    const n = shape.reduce((a, b) => a * b, 1);
    const t: GgufWeightType = shape.length === 1 ? 'F32' : type;
    if (t !== 'F32' && dims[0] % BLOCK !== 0) throw new Error(`${source}: inner dimension ${dims[0]} is not a multiple of ${BLOCK}`);
    plans.push({ name, dims, type: t, bytes: t === 'F32' ? n * 4 : (n / BLOCK) * BLOCK_BYTES[t], source });
  };
  add('token_embd.weight', 'model.embed_tokens.weight');
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    add(`blk.${l}.attn_norm.weight`, `${p}input_layernorm.weight`);
    for (const [g, h] of [
      ['q', 'q_proj'],
      ['k', 'k_proj'],
      ['v', 'v_proj'],
    ]) {
      add(`blk.${l}.attn_${g}.weight`, `${p}self_attn.${h}.weight`);
      add(`blk.${l}.attn_${g}.bias`, `${p}self_attn.${h}.bias`);
    }
    add(`blk.${l}.attn_output.weight`, `${p}self_attn.o_proj.weight`);
    add(`blk.${l}.ffn_norm.weight`, `${p}post_attention_layernorm.weight`);
    add(`blk.${l}.ffn_gate.weight`, `${p}mlp.gate_proj.weight`);
    add(`blk.${l}.ffn_up.weight`, `${p}mlp.up_proj.weight`);
    add(`blk.${l}.ffn_down.weight`, `${p}mlp.down_proj.weight`);
  }
  add('output_norm.weight', 'model.norm.weight');
  // Tied embeddings: llama.cpp's qwen2 reuses token_embd when output.weight is absent.
  if (!cfg.tieWordEmbeddings && ckpt.has('lm_head.weight')) add('output.weight', 'lm_head.weight');
  return plans;
}

export interface GgufWriteResult {
  path: string;
  bytes: number;
  tensors: number;
  seconds: number;
  reused: boolean;
}

/**
 * Writes `path` (through a temporary file renamed into place) from a Qwen2 checkpoint. A stamp in
 * `path.json` (writer version, checkpoint fingerprint, type) lets an identical file be reused.
 */
export function writeGguf(ckpt: Checkpoint, type: GgufWeightType, path: string, o: { name?: string; log?: (l: string) => void; force?: boolean } = {}): GgufWriteResult {
  const cfg = ckpt.config;
  if (cfg.modelType !== 'qwen2' || cfg.qkNorm || !cfg.qkvBias) throw new Error(`GGUF writer: only the qwen2 architecture (got ${cfg.modelType})`);
  const stampPath = `${path}.json`;
  const stamp = JSON.stringify({ version: GGUF_WRITER_VERSION, fingerprint: ckpt.fingerprint, type });
  if (!o.force && existsSync(path) && existsSync(stampPath) && readFileSync(stampPath, 'utf8') === stamp) {
    return { path, bytes: statSync(path).size, tensors: planTensors(ckpt, type).length, seconds: 0, reused: true };
  }
  const t0 = performance.now();
  const tok = readTokenizer(ckpt.dir, cfg.vocabSize);
  const meta: [string, MetaValue][] = [
    ['general.architecture', { t: 'str', v: 'qwen2' }],
    ['general.name', { t: 'str', v: o.name ?? 'latentwatch export' }],
    ['general.file_type', { t: 'u32', v: FILE_TYPE[type] }],
    ['general.alignment', { t: 'u32', v: ALIGNMENT }],
    ['qwen2.context_length', { t: 'u32', v: cfg.maxPositions }],
    ['qwen2.embedding_length', { t: 'u32', v: cfg.hiddenSize }],
    ['qwen2.block_count', { t: 'u32', v: cfg.numLayers }],
    ['qwen2.feed_forward_length', { t: 'u32', v: cfg.intermediateSize }],
    ['qwen2.attention.head_count', { t: 'u32', v: cfg.numHeads }],
    ['qwen2.attention.head_count_kv', { t: 'u32', v: cfg.numKvHeads }],
    ['qwen2.rope.freq_base', { t: 'f32', v: cfg.ropeTheta }],
    ['qwen2.attention.layer_norm_rms_epsilon', { t: 'f32', v: cfg.rmsEps }],
    ['tokenizer.ggml.model', { t: 'str', v: 'gpt2' }],
    ['tokenizer.ggml.pre', { t: 'str', v: tok.pre }],
    ['tokenizer.ggml.tokens', { t: 'str[]', v: tok.tokens }],
    ['tokenizer.ggml.token_type', { t: 'i32[]', v: tok.tokenTypes }],
    ['tokenizer.ggml.merges', { t: 'str[]', v: tok.merges }],
    ['tokenizer.ggml.add_bos_token', { t: 'bool', v: tok.addBos }],
  ];
  if (tok.bosId !== null) meta.push(['tokenizer.ggml.bos_token_id', { t: 'u32', v: tok.bosId }]);
  if (tok.eosId !== null) meta.push(['tokenizer.ggml.eos_token_id', { t: 'u32', v: tok.eosId }]);
  if (tok.padId !== null) meta.push(['tokenizer.ggml.padding_token_id', { t: 'u32', v: tok.padId }]);

  const tensors = planTensors(ckpt, type);
  const h = new ByteWriter();
  h.u32(0x46554747); // "GGUF" read as a little-endian u32
  h.u32(3);
  h.u64(tensors.length);
  h.u64(meta.length);
  for (const [k, v] of meta) {
    h.str(k);
    writeValue(h, v);
  }
  let offset = 0;
  for (const t of tensors) {
    h.str(t.name);
    h.u32(t.dims.length);
    for (const d of t.dims) h.u64(d);
    h.u32(GGML_TYPE[t.type]);
    h.u64(offset);
    offset += t.bytes;
    offset += (ALIGNMENT - (offset % ALIGNMENT)) % ALIGNMENT;
  }
  h.pad(ALIGNMENT);

  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  let written = 0;
  try {
    writeSync(fd, h.bytes());
    written += h.length;
    const zeros = new Uint8Array(ALIGNMENT);
    let lastLog = performance.now();
    for (const [i, t] of tensors.entries()) {
      const data = encode(ckpt.read(t.source), t.type);
      if (data.byteLength !== t.bytes) throw new Error(`${t.name}: ${data.byteLength} bytes, planned ${t.bytes}`);
      writeSync(fd, data);
      written += data.byteLength;
      const pad = (ALIGNMENT - ((written - h.length) % ALIGNMENT)) % ALIGNMENT;
      if (pad) {
        writeSync(fd, zeros, 0, pad);
        written += pad;
      }
      if (o.log && performance.now() - lastLog > 3000) {
        lastLog = performance.now();
        o.log(`gguf ${type}: ${i + 1}/${tensors.length} tensors`);
      }
    }
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  rmSync(stampPath, { force: true });
  renameSync(tmp, path);
  writeFileSync(stampPath, stamp);
  return { path, bytes: written, tensors: tensors.length, seconds: (performance.now() - t0) / 1000, reused: false };
}
