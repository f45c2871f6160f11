/**
 * Builds the Qwen2/Qwen3 decoder as an ONNX graph for onnxruntime's CPU (and CUDA) providers, with
 * taps (graph outputs `blocks.L.hook_resid_post`) and injection ports (inputs
 * `inject.blocks.L.hook_resid_post`, added to the residual stream after layer L).
 *
 * Per layer: SkipSimplifiedLayerNormalization fuses each residual add with the next RMSNorm, and its
 * fourth output is the residual stream itself, so taps cost no extra compute. Attention is one
 * GroupQueryAttention node with rotary inside. The KV cache is an input only (`past_key.L`,
 * `past_value.L`, [batch, kv_heads, cache_len, head_dim]); the pass returns just its own positions'
 * keys and values (`new_key.L`, `new_value.L`, [batch, kv_heads, seq, head_dim]) for the engine to
 * write into its cache, because onnxruntime-node copies every fetched output.
 *
 * The 'hf' interface (for peers such as transformers.js, never for the engine) has the inputs and
 * outputs of a Hugging Face optimum / onnxruntime-genai decoder export instead: `input_ids`,
 * `attention_mask` [batch, total] (seqlens_k = ReduceSum(mask, 1) - 1 and total_sequence_length =
 * Shape(mask)[1] are derived inside the graph), `past_key_values.L.key/value` → `present.L.key/value`
 * (separate buffers; present = past + the new positions), `num_logits_to_keep` (int64 scalar:
 * 0 = every position, k = the last k; transformers.js feeds it to graphs that have it) and `logits`
 * [batch, seq or k, vocab]; no taps, no ports.
 *
 * The 'device-kv' interface (the engine on a GPU provider) is the engine's own, except that each pass
 * returns the whole cache instead of its new positions: `past_key.L` [batch, kv_heads, past, head_dim]
 * → `present_key.L` [batch, kv_heads, total, head_dim] (present = past + this pass's positions). The
 * engine keeps those outputs on the device (preferredOutputLocation 'gpu-buffer') and feeds them back
 * as the next pass's past, so the cache never crosses the bus; only logits and taps come back, packed
 * into one output (`host_outputs`), and the logits only where the pass asks (`logits_to_host`).
 *
 * Both engine interfaces also give the greedy choice (`greedy`: the first argmax and the max of each
 * logits row): a greedy request with no use for the logits reads 2 floats per step instead of the vocabulary.
 */
import { lwError } from '../errors.js';
import { injectPort, residPost } from '../hooks.js';
import type { Checkpoint } from './checkpoint.js';
import type { ModelConfig } from './config.js';
import { DT, OnnxGraphWriter } from './onnx-writer.js';
import { quantizeRows, toHalf, transpose } from './quantize.js';

export type Precision = 'fp32' | 'fp16' | 'int8' | 'int4';
export const PRECISIONS: readonly Precision[] = ['fp32', 'fp16', 'int8', 'int4'];
/** The type the graph computes in between the weights: fp16 on a GPU provider whose device has shader-f16. */
export type Activations = 'fp32' | 'fp16';
export const ACTIVATIONS: readonly Activations[] = ['fp32', 'fp16'];
/** The graph's input/output interface: the engine's own (host or device cache), or Hugging Face optimum's (peers only). */
export type GraphInterface = 'latentwatch' | 'device-kv' | 'hf';
export const GRAPH_INTERFACES: readonly GraphInterface[] = ['latentwatch', 'device-kv', 'hf'];

export interface BuildOptions {
  precision: Precision;
  /** Layers whose resid_post is a graph output. */
  taps: number[];
  /** Layers with an injection port. Empty: a plain serving build. */
  ports: number[];
  /** MatMulNBits block size (int4/int8). */
  blockSize: number;
  /** MatMulNBits accuracy_level: 4 computes with int8 activations (fast on AVX-512 VNNI). */
  accuracyLevel: number;
  /** Absent means 'latentwatch' (absent, not spelled out, so default builds keep their cache keys). */
  interface?: GraphInterface;
  /**
   * Absent means fp32. 'fp16' ('device-kv' builds only): the residual stream, the KV cache and every
   * product's input in fp16 (int4/int8 weights keep their fp16 scales; fp32 weights are stored fp16);
   * the norms accumulate in fp32; logits and taps come back as fp32; injection ports take fp32.
   */
  activations?: Activations;
}

export const GRAPH_NAMES = {
  inputIds: 'input_ids',
  seqlensK: 'seqlens_k',
  totalSeqLen: 'total_sequence_length',
  logitsIndex: 'logits_index',
  logits: 'logits',
  pastKey: (l: number) => `past_key.${l}`,
  pastValue: (l: number) => `past_value.${l}`,
  /** The keys (rotated) and values of this pass's positions, [batch, kv_heads, seq, head_dim]. */
  newKey: (l: number) => `new_key.${l}`,
  newValue: (l: number) => `new_value.${l}`,
  /** 'device-kv' builds: the whole cache after this pass, [batch, kv_heads, total, head_dim]. */
  presentKey: (l: number) => `present_key.${l}`,
  presentValue: (l: number) => `present_value.${l}`,
  /**
   * The greedy choice at each logits position, [batch, n_logits, 2]: the argmax token id (as a
   * float: exact below 2^24) and its logit (non-finite when the pass broke; the sampler refuses it).
   * Greedy decoding reads this instead of the logits row (600 KB for Qwen2.5).
   */
  greedy: 'greedy',
  /**
   * 'device-kv' builds, int64 scalar: 1 brings the logits back in `host_outputs`, 0 leaves them on
   * the device (greedy decoding, scoring without logits): only the greedy pairs and the taps come back.
   */
  logitsToHost: 'logits_to_host',
  /**
   * 'device-kv' builds: the greedy pairs [batch × n_logits × 2], the logits [batch × n_logits ×
   * vocab] where `logits_to_host` is 1, then each tapped layer's resid_post [batch × seq × d_model],
   * in layer order, flattened into one output (one copy back per pass).
   */
  hostOutputs: 'host_outputs',
} as const;

/** Input and output names of an 'hf' build (Hugging Face optimum's decoder interface). */
export const HF_GRAPH_NAMES = {
  inputIds: 'input_ids',
  attentionMask: 'attention_mask',
  numLogitsToKeep: 'num_logits_to_keep',
  logits: 'logits',
  pastKey: (l: number) => `past_key_values.${l}.key`,
  pastValue: (l: number) => `past_key_values.${l}.value`,
  presentKey: (l: number) => `present.${l}.key`,
  presentValue: (l: number) => `present.${l}.value`,
} as const;

export type BuildProgress = (done: number, total: number, what: string) => void;

export function validateBuildOptions(cfg: ModelConfig, o: BuildOptions): void {
  const bad = (why: string): never => {
    throw lwError('LW_ERR_MODEL_BUILD_OPTIONS', why);
  };
  if (!['fp32', 'fp16', 'int8', 'int4'].includes(o.precision)) bad(`precision ${o.precision} (fp32|fp16|int8|int4)`);
  for (const l of [...o.taps, ...o.ports]) {
    if (!Number.isInteger(l) || l < 0 || l >= cfg.numLayers) bad(`layer ${l} outside 0..${cfg.numLayers - 1}`);
  }
  if (![16, 32, 64, 128, 256].includes(o.blockSize)) bad(`block size ${o.blockSize} (16|32|64|128|256)`);
  if (![0, 1, 2, 3, 4].includes(o.accuracyLevel)) bad(`accuracy level ${o.accuracyLevel} (0..4)`);
  if (o.interface !== undefined && !GRAPH_INTERFACES.includes(o.interface)) bad(`interface ${String(o.interface)} (${GRAPH_INTERFACES.join('|')})`);
  if (o.interface === 'hf' && (o.taps.length || o.ports.length)) bad("the 'hf' interface has no taps and no ports");
  if (o.activations !== undefined && !ACTIVATIONS.includes(o.activations)) bad(`activations ${String(o.activations)} (${ACTIVATIONS.join('|')})`);
  // The CPU provider lacks fp16 kernels for most of the graph's ops on x86; the WebGPU provider has them.
  if (o.activations === 'fp16' && o.interface !== 'device-kv') bad("fp16 activations run on a GPU provider only (the 'device-kv' interface: --provider webgpu)");
}

/** Writes `modelPath` and `modelPath.data`. Reads one tensor at a time from the checkpoint. */
export function buildGraph(ckpt: Checkpoint, o: BuildOptions, modelPath: string, progress: BuildProgress = () => {}): { dataBytes: number } {
  const cfg = ckpt.config;
  validateBuildOptions(cfg, o);
  // The greedy output carries token ids as floats: exact up to 2^24.
  if (cfg.vocabSize > 2 ** 24) throw lwError('LW_ERR_MODEL_UNSUPPORTED', `a vocabulary of ${cfg.vocabSize} ids (at most 2^24)`);
  const g = new OnnxGraphWriter(modelPath);
  const D = cfg.hiddenSize;
  const hd = cfg.headDim;
  const H = cfg.numHeads;
  const KV = cfg.numKvHeads;
  const I = cfg.intermediateSize;
  const eps = { float: cfg.rmsEps };
  const taps = new Set(o.taps);
  const ports = new Set(o.ports);
  const totalSteps = cfg.numLayers + 2;
  let step = 0;
  const tick = (what: string) => progress(++step, totalSteps, what);

  const hf = o.interface === 'hf';
  const deviceKv = o.interface === 'device-kv';
  const half = o.activations === 'fp16';
  /** The activations' type: of the residual stream, the KV cache and every product's input. */
  const ACT = half ? DT.FLOAT16 : DT.FLOAT;
  /** A float initializer in the activations' type. */
  const floats = (name: string, dims: number[], data: Float32Array): string =>
    half ? g.initializer(name, DT.FLOAT16, dims, new Uint8Array(toHalf(data).buffer)) : g.f32(name, dims, data);
  /** To fp32 for the host (taps, logits): a no-op in an fp32 build. */
  const toFloat = (t: string): string => (half ? g.op('Cast', [t], { to: DT.FLOAT }) : t);
  // transformers.js sizes its first (empty) cache from these dimension names: 'batch_size' is one it knows.
  const B = hf ? 'batch_size' : 'batch';
  // Inputs. Batch and sequence are free; the cache length is the preallocated buffer's length.
  let ids: string, seqlensK: string, totalLen: string, logitsIndex: string, keep: string;
  if (!hf) {
    ids = g.input(GRAPH_NAMES.inputIds, DT.INT64, ['batch', 'seq']);
    seqlensK = g.input(GRAPH_NAMES.seqlensK, DT.INT32, ['batch']);
    totalLen = g.input(GRAPH_NAMES.totalSeqLen, DT.INT32, []);
    logitsIndex = g.input(GRAPH_NAMES.logitsIndex, DT.INT64, ['n_logits']);
    keep = '';
  } else {
    ids = g.input(HF_GRAPH_NAMES.inputIds, DT.INT64, [B, 'sequence_length']);
    const mask = g.input(HF_GRAPH_NAMES.attentionMask, DT.INT64, [B, 'total_sequence_length']);
    // Required: onnxruntime lists no input that has a default initializer, and transformers.js feeds
    // num_logits_to_keep only to sessions that list it.
    keep = g.input(HF_GRAPH_NAMES.numLogitsToKeep, DT.INT64, []);
    const scalar = (name: string, v: bigint) => g.initializer(name, DT.INT64, [], new Uint8Array(new BigInt64Array([v]).buffer));
    const sum = g.op('ReduceSum', [mask, g.i64('hf.axis1', [1])], { keepdims: 0 });
    seqlensK = g.op('Cast', [g.op('Sub', [sum, scalar('hf.one', 1n)])], { to: DT.INT32 });
    totalLen = g.op('Cast', [g.op('Gather', [g.op('Shape', [mask]), scalar('hf.index1', 1n)], { axis: 0 })], { to: DT.INT32 });
    logitsIndex = '';
  }

  const quantized = o.precision === 'int4' || o.precision === 'int8';
  /**
   * y = x · Wᵀ (+ bias) for HF [out, in] weights, several weights concatenated along out. A bias
   * goes into MatMulNBits itself (its optional input 5) where `inBias`, else an Add follows.
   */
  const linear = (x: string, names: string[], k: number, label: string, bias?: Float32Array, inBias = false): string => {
    const mats = names.map((n) => ckpt.read(n));
    const n = mats.reduce((a, m) => a + m.length / k, 0);
    const rows = concat(mats);
    const addBias = (y: string) => (bias ? g.op('Add', [y, floats(`${label}.bias`, [bias.length], bias)]) : y);
    if (quantized) {
      const bits = o.precision === 'int4' ? 4 : 8;
      const q = quantizeRows(rows, n, k, bits, o.blockSize);
      const b = g.initializer(`${label}.qweight`, DT.UINT8, [n, q.blocksPerRow, q.blobSize], q.packed);
      // MatMulNBits takes its scales (and bias) in its input's type.
      const s = floats(`${label}.scales`, [n * q.blocksPerRow], q.scales);
      const attrs = { K: k, N: n, bits, block_size: o.blockSize, accuracy_level: o.accuracyLevel };
      if (bias && inBias) return g.op('MatMulNBits', [x, b, s, '', '', floats(`${label}.bias`, [bias.length], bias)], attrs, 'com.microsoft');
      return addBias(g.op('MatMulNBits', [x, b, s], attrs, 'com.microsoft'));
    }
    const wt = transpose(rows, n, k);
    if (half) return addBias(g.op('MatMul', [x, floats(`${label}.weight_fp16`, [k, n], wt)]));
    if (o.precision === 'fp16') {
      // The CPU provider has no fp16 MatMul on x86: store fp16, widen once at session load.
      const h = toHalf(wt);
      const w16 = g.initializer(`${label}.weight_fp16`, DT.FLOAT16, [k, n], new Uint8Array(h.buffer));
      return addBias(g.op('MatMul', [x, g.op('Cast', [w16], { to: DT.FLOAT })]));
    }
    return addBias(g.op('MatMul', [x, g.f32(`${label}.weight`, [k, n], wt)]));
  };
  const vec = (name: string, label: string): string => floats(label, [ckpt.info(name).shape[0]], ckpt.read(name));

  // Embedding: a gather table (fp16 in compact builds: a gather reads one row, so it never limits decode).
  const embName = 'model.embed_tokens.weight';
  const emb = ckpt.read(embName);
  let h: string;
  if (half) {
    h = g.op('Gather', [g.initializer('embed.weight_fp16', DT.FLOAT16, [cfg.vocabSize, D], new Uint8Array(toHalf(emb).buffer)), ids]);
  } else if (o.precision === 'fp32') {
    h = g.op('Gather', [g.f32('embed.weight', [cfg.vocabSize, D], emb), ids]);
  } else {
    const e16 = toHalf(emb);
    h = g.op('Cast', [g.op('Gather', [g.initializer('embed.weight_fp16', DT.FLOAT16, [cfg.vocabSize, D], new Uint8Array(e16.buffer)), ids])], { to: DT.FLOAT });
  }
  tick('embedding');

  // Rotary tables for GroupQueryAttention (non-interleaved halves, as HF's rotate_half).
  const rot = hd / 2;
  const cos = new Float32Array(cfg.maxPositions * rot);
  const sin = new Float32Array(cfg.maxPositions * rot);
  for (let p = 0; p < cfg.maxPositions; p++) {
    for (let i = 0; i < rot; i++) {
      const invFreq = 1 / Math.pow(cfg.ropeTheta, (2 * i) / hd);
      cos[p * rot + i] = Math.cos(p * invFreq);
      sin[p * rot + i] = Math.sin(p * invFreq);
    }
  }
  // GroupQueryAttention takes its rotary tables in the activations' type.
  const cosCache = floats('rotary.cos', [cfg.maxPositions, rot], cos);
  const sinCache = floats('rotary.sin', [cfg.maxPositions, rot], sin);
  // Positions of this pass in each row's cache, [batch, kv_heads, seq, 1]: row b's seq new positions
  // end at seqlens_k[b]. The engine reads its new keys and values there out of the attention's
  // present cache (GatherND), so the cache itself never has to leave onnxruntime: onnxruntime-node
  // copies every fetched output into a fresh buffer, and fetching the whole cache each step cost
  // time in proportion to its length (docs/benchmarks.md, "Long context").
  let newIndex = '';
  if (!hf && !deviceKv) {
    const scalar = (name: string, v: bigint) => g.initializer(name, DT.INT64, [], new Uint8Array(new BigInt64Array([v]).buffer));
    const seq = g.op('Gather', [g.op('Shape', [ids]), scalar('new.index1', 1n)], { axis: 0 });
    const first = g.op('Sub', [g.op('Add', [g.op('Cast', [seqlensK], { to: DT.INT64 }), scalar('new.one', 1n)]), seq]);
    const offsets = g.op('Range', [scalar('new.zero', 0n), seq, scalar('new.step', 1n)]);
    const pos = g.op('Add', [g.op('Unsqueeze', [first, g.i64('new.axis1', [1])]), g.op('Unsqueeze', [offsets, g.i64('new.axis0', [0])])]);
    newIndex = g.op('Expand', [g.op('Unsqueeze', [pos, g.i64('new.axes13', [1, 3])]), g.i64('new.heads', [1, KV, 1, 1])]);
  }
  const qkShape = cfg.qkNorm ? g.i64('shape.heads', [0, 0, -1, hd]) : '';
  const flatShape = cfg.qkNorm ? g.i64('shape.flat', [0, 0, -1]) : '';

  let x = g.op('SimplifiedLayerNormalization', [h, vec('model.layers.0.input_layernorm.weight', 'layers.0.ln1')], { axis: -1, epsilon: eps, stash_type: 1 });
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const proj = (w: string) => `${p}self_attn.${w}_proj.weight`;
    const bias = cfg.qkvBias ? concat(['q', 'k', 'v'].map((w) => ckpt.read(`${p}self_attn.${w}_proj.bias`))) : undefined;
    // Attention: one fused q|k|v projection, except in a quantized device-kv build without biases:
    // there onnxruntime's WebGPU provider fuses the norm and three separate MatMulNBits into one
    // kernel (MatMulNBitsQkvFusion; it takes no bias), one dispatch where there were three.
    const qkvSeparate = deviceKv && quantized && !bias;
    const qkv = qkvSeparate ? '' : linear(x, [proj('q'), proj('k'), proj('v')], D, `layers.${l}.qkv`, bias, deviceKv);
    let gqaIn: string[];
    if (cfg.qkNorm) {
      // Qwen3: RMSNorm over each head of q and k before rotary (which GQA applies).
      const [q, k, v] = qkvSeparate
        ? (['q', 'k', 'v'] as const).map((w) => linear(x, [proj(w)], D, `layers.${l}.${w}`))
        : g.node('Split', [qkv, g.i64(`layers.${l}.split`, [H * hd, KV * hd, KV * hd])], 3, { axis: -1 });
      const headNorm = (t: string, w: string, label: string) =>
        g.op('Reshape', [g.op('SimplifiedLayerNormalization', [g.op('Reshape', [t, qkShape]), vec(w, label)], { axis: -1, epsilon: eps, stash_type: 1 }), flatShape]);
      gqaIn = [headNorm(q, `${p}self_attn.q_norm.weight`, `layers.${l}.q_norm`), headNorm(k, `${p}self_attn.k_norm.weight`, `layers.${l}.k_norm`), v];
    } else if (qkvSeparate) {
      gqaIn = (['q', 'k', 'v'] as const).map((w) => linear(x, [proj(w)], D, `layers.${l}.${w}`));
    } else {
      gqaIn = [qkv, '', ''];
    }
    const names = hf ? HF_GRAPH_NAMES : GRAPH_NAMES;
    const pastLen = hf ? 'past_sequence_length' : 'cache_len';
    const pastK = g.input(names.pastKey(l), ACT, [B, KV, pastLen, hd]);
    const pastV = g.input(names.pastValue(l), ACT, [B, KV, pastLen, hd]);
    const [presentK, presentV] = hf
      ? [HF_GRAPH_NAMES.presentKey(l), HF_GRAPH_NAMES.presentValue(l)]
      : deviceKv
        ? [GRAPH_NAMES.presentKey(l), GRAPH_NAMES.presentValue(l)]
        : [`layers.${l}.present_key`, `layers.${l}.present_value`];
    const [attn] = g.node(
      'GroupQueryAttention',
      [...gqaIn, pastK, pastV, seqlensK, totalLen, cosCache, sinCache],
      [`layers.${l}.attn`, presentK, presentV],
      { num_heads: H, kv_num_heads: KV, do_rotary: 1, rotary_interleaved: 0, scale: { float: 1 / Math.sqrt(hd) } },
      'com.microsoft',
    );
    if (hf || deviceKv) {
      g.output(presentK, ACT, [B, KV, 'total_sequence_length', hd]);
      g.output(presentV, ACT, [B, KV, 'total_sequence_length', hd]);
    } else {
      for (const [present, out] of [[presentK, GRAPH_NAMES.newKey(l)], [presentV, GRAPH_NAMES.newValue(l)]]) {
        g.node('GatherND', [present, newIndex], [out], { batch_dims: 2 });
        g.output(out, DT.FLOAT, [B, KV, 'seq', hd]);
      }
    }
    const o = linear(attn, [`${p}self_attn.o_proj.weight`], H * hd, `layers.${l}.o`);
    const [x2, , , hMid] = g.node('SkipSimplifiedLayerNormalization', [o, h, vec(`${p}post_attention_layernorm.weight`, `layers.${l}.ln2`)], 4, { epsilon: eps }, 'com.microsoft');

    // SwiGLU MLP with gate|up fused into one projection; in a quantized device-kv build two
    // projections instead, which onnxruntime's WebGPU provider fuses with the norm before them and
    // the activation after into one kernel (MatMulNBitsMlpFusion): one dispatch where there were six.
    let gate: string, up: string;
    if (deviceKv && quantized) {
      gate = linear(x2, [`${p}mlp.gate_proj.weight`], D, `layers.${l}.gate`);
      up = linear(x2, [`${p}mlp.up_proj.weight`], D, `layers.${l}.up`);
    } else {
      const gateUp = linear(x2, [`${p}mlp.gate_proj.weight`, `${p}mlp.up_proj.weight`], D, `layers.${l}.gate_up`);
      [gate, up] = g.node('Split', [gateUp, g.i64(`layers.${l}.mlp_split`, [I, I])], 2, { axis: -1 });
    }
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
    let mlp = linear(act, [`${p}mlp.down_proj.weight`], I, `layers.${l}.down`);
    const hook = residPost(l);
    if (ports.has(l)) {
      // Adding into the MLP output before the residual add puts the vector into resid_post itself.
      const port = g.input(injectPort(hook), DT.FLOAT, [`inject_${l}_batch`, `inject_${l}_seq`, D]);
      mlp = g.op('Add', [mlp, half ? g.op('Cast', [port], { to: DT.FLOAT16 }) : port]);
    }
    const last = l === cfg.numLayers - 1;
    const nextNorm = last ? vec('model.norm.weight', 'final_norm') : vec(`model.layers.${l + 1}.input_layernorm.weight`, `layers.${l + 1}.ln1`);
    const [xNext, , , hNext] = g.node('SkipSimplifiedLayerNormalization', [mlp, hMid, nextNorm], [`layers.${l}.next_normed`, '', '', hook], { epsilon: eps }, 'com.microsoft');
    if (taps.has(l) && !deviceKv) g.output(hook, DT.FLOAT, ['batch', 'seq', D]);
    x = xNext;
    h = hNext;
    tick(`layer ${l + 1}/${cfg.numLayers}`);
  }

  // Logits only at the requested positions: the vocabulary projection dominates prefill otherwise.
  // 'hf': the last num_logits_to_keep positions (Slice from -k; k = 0 starts at 0, so every position).
  const picked = hf
    ? g.op('Slice', [x, g.op('Sub', [g.i64('hf.zero', [0]), g.op('Unsqueeze', [keep, g.i64('hf.axis0', [0])])]), g.i64('hf.end', [Number.MAX_SAFE_INTEGER]), g.i64('hf.axis1s', [1])])
    : g.op('Gather', [x, logitsIndex], { axis: 1 });
  const headName = cfg.tieWordEmbeddings || !ckpt.has('lm_head.weight') ? embName : 'lm_head.weight';
  if (headName === embName && !cfg.tieWordEmbeddings) throw lwError('LW_ERR_MODEL_TENSOR_MISSING', 'lm_head.weight (tie_word_embeddings is false)');
  const logits = toFloat(linear(picked, [headName], D, 'lm_head'));
  // Greedy decoding's choice on the device: (argmax id, its logit) per logits position, the first of
  // equal maxima as the sampler's own argmax. Not ArgMax: its int64 output needs a Cast the WebGPU
  // provider runs on the CPU, a copy to the host and back in the middle of every pass; this is
  // float throughout: the smallest id whose logit equals the row's max (a NaN row gives a NaN logit,
  // which the sampler refuses).
  let greedy = '';
  if (!hf) {
    const max = g.op('ReduceMax', [logits], { axes: [-1], keepdims: 1 });
    const ids = g.f32('greedy.ids', [cfg.vocabSize], Float32Array.from({ length: cfg.vocabSize }, (_, i) => i));
    const none = g.f32('greedy.none', [1], Float32Array.of(cfg.vocabSize));
    const first = g.op('ReduceMin', [g.op('Where', [g.op('Equal', [logits, max]), ids, none])], { axes: [-1], keepdims: 1 });
    greedy = g.op('Concat', [first, max], { axis: -1 });
  }
  if (deviceKv) {
    // Everything the host reads, in one output: each output a pass brings back from the GPU is a
    // copy and a wait of its own (three taps beside the logits cost 48% of 0.5B decode on an H200).
    // The logits are sliced to nothing unless logits_to_host is 1 (Slice clamps the end to the length).
    const flat = g.i64('host.flat', [-1]);
    const toHost = g.input(GRAPH_NAMES.logitsToHost, DT.INT64, []);
    const end = g.op('Mul', [g.op('Unsqueeze', [toHost, g.i64('host.axis0', [0])]), g.i64('host.all', [Number.MAX_SAFE_INTEGER])]);
    const hostLogits = g.op('Slice', [g.op('Reshape', [logits, flat]), g.i64('host.start', [0]), end, g.i64('host.axis0s', [0])]);
    const parts = [g.op('Reshape', [greedy, flat]), hostLogits, ...[...taps].sort((a, b) => a - b).map((l) => g.op('Reshape', [toFloat(residPost(l)), flat]))];
    g.node('Concat', parts, [GRAPH_NAMES.hostOutputs], { axis: 0 });
    g.output(GRAPH_NAMES.hostOutputs, DT.FLOAT, ['host_floats']);
  } else {
    g.node('Identity', [logits], [GRAPH_NAMES.logits]);
    g.output(GRAPH_NAMES.logits, DT.FLOAT, [B, hf ? 'logits_length' : 'n_logits', cfg.vocabSize]);
    if (!hf) {
      g.node('Identity', [greedy], [GRAPH_NAMES.greedy]);
      g.output(GRAPH_NAMES.greedy, DT.FLOAT, [B, 'n_logits', 2]);
    }
  }
  tick('lm_head');

  return g.finish('qwen', {
    'latentwatch.fingerprint': ckpt.fingerprint,
    'latentwatch.options': JSON.stringify(o),
  });
}

/**
 * Concatenates float arrays; a single part comes back as itself, not copied. The project's one
 * copy: the graph builder (fused biases), the engine (prompt taps) and the lab (trial traces, fit rows).
 */
export function concat(parts: readonly Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
