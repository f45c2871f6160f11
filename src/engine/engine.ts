/**
 * The engine: a cached graph build, an onnxruntime session and the tokenizer, and `generate()`, an
 * async iterable of steps carrying each token's text and its activations at the requested hooks.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { lwError } from '../errors.js';
import { injectPort, residPost } from '../hooks.js';
import { openCheckpoint, type Checkpoint } from '../model/checkpoint.js';
import type { ModelConfig } from '../model/config.js';
import { ensureBuild, resolveBuildOptions, type BuildInfo, type BuildRequest } from '../model/build.js';
import { concat, GRAPH_NAMES, type BuildProgress, type GraphInterface } from '../model/graph.js';
import { StreamingDetokenizer } from './detokenizer.js';
import { requireShaderF16, RuntimeSession, type Provider, type WebGpuValidation } from './runtime.js';
import { DeviceKvCache, deviceKvOutputs } from './device-kv.js';
import { logprobsOf, Sampler, StopStringMatcher, type GreedyChoice } from './sampler.js';
import { DecodeBatcher } from './decode-batcher.js';
import { KvPool, privateStorage, type KvStorage } from './kv-pool.js';
import { Sequence, type ForwardOptions, type ForwardResult, type GraphContext } from './sequence.js';
import { Tokenizer } from './tokenizer.js';
import type { GenerateRequest, PromptTokenLogprob, Step, TokenAlternative, TokenLogprob } from './types.js';

export interface EngineOptions extends BuildRequest {
  /** 'webgpu' keeps the KV cache on the device ('device-kv' builds; no continuous batching). */
  provider?: Provider;
  threads?: number;
  /** Whether idle onnxruntime pool threads spin between passes (default true; see runtime.ts). */
  spinning?: boolean;
  /** Whether cpu passes run on a thread of their own (default false; runtime.ts SessionOptions.ownThread). */
  ownThread?: boolean;
  /** The WebGPU provider's validation mode (runtime.ts; default onnxruntime's 'basic'). */
  webgpuValidation?: WebGpuValidation;
  /**
   * Quantized device-kv builds (webgpu): the MatMulNBits accuracy level of a second build that runs
   * the one-token (decode) passes on the same device cache, while longer passes (prefill) keep
   * `accuracyLevel`. Default: `accuracyLevel` (one build). On WebGPU level 4 computes with int8
   * activations (DP4A: the faster prefill, and the faster decode of the 7B shape on an H200), level 0
   * in fp32 with the provider's one-kernel MLP: 0.5B-shape decode 34-39% faster there (docs/gpu.md).
   * Ignored by the other interfaces.
   */
  decodeAccuracyLevel?: number;
  /** onnxruntime's profiler on the engine's session(s) (runtime.ts profilePrefix; bench/gpu.ts --profile). */
  profilePrefix?: string;
  cacheDir?: string;
  progress?: BuildProgress;
  /** Upper bound on prompt + generated tokens; default the model's max_position_embeddings. */
  contextLength?: number;
  /**
   * Prompt tokens per forward pass during prefill (default 512; 2048 on webgpu, where one 2048-token
   * pass made the 7B shape's prompt 1.37x and the 0.5B's 2.4x faster than passes of 512, with the
   * same first logits and greedy tokens: docs/gpu.md, run F).
   */
  prefillChunk?: number;
  /** Most sequences decoded in one batched pass (0 disables batching). */
  maxBatch?: number;
  /** Positions of a batchable sequence's cache slot; longer sequences decode alone. */
  batchContext?: number;
}

/**
 * The graph interface the engine runs on a provider: the WebGPU provider keeps the KV cache on the
 * device ('device-kv' builds return the whole cache each pass); others use the default build.
 */
export function interfaceFor(provider: Provider): GraphInterface | undefined {
  return provider === 'webgpu' ? 'device-kv' : undefined;
}

export class Engine implements GraphContext {
  readonly ports: ReadonlySet<string>;
  readonly taps: ReadonlySet<string>;
  readonly contextLength: number;
  private readonly prefillChunk: number;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly pool: KvPool;
  private readonly maxPrivateLength: number;
  readonly batcher: DecodeBatcher;
  /** Whether sequences keep their cache on the device (GPU providers). */
  readonly deviceKv: boolean;

  private constructor(
    readonly checkpoint: Checkpoint,
    readonly build: BuildInfo,
    readonly session: RuntimeSession,
    /** Absent for checkpoints shipped without tokenizer.json (test fixtures): steps then carry no text. */
    readonly tokenizer: Tokenizer | undefined,
    o: EngineOptions,
    /** The one-token passes' build and session, where they differ from the main one (decodeAccuracyLevel). */
    readonly decodeGraph?: { build: BuildInfo; session: RuntimeSession },
  ) {
    const cfg = checkpoint.config;
    this.taps = new Set(build.options.taps.map(residPost));
    this.ports = new Set(build.options.ports.map(residPost));
    this.contextLength = Math.min(o.contextLength ?? cfg.maxPositions, cfg.maxPositions);
    this.prefillChunk = o.prefillChunk ?? (o.provider === 'webgpu' ? 2048 : 512);
    // Slots hold up to batchContext positions (+1: a sequence of exactly batchContext is pooled).
    // A device-cache build decodes each sequence alone: its pool has no slots.
    this.deviceKv = build.options.interface === 'device-kv';
    this.pool = new KvPool(cfg, this.deviceKv ? 0 : (o.maxBatch ?? 8), Math.min(o.batchContext ?? 4096, this.contextLength) + 1, (floats) => session.kvMemory(floats));
    this.maxPrivateLength = this.contextLength;
    this.batcher = new DecodeBatcher(this, this.pool);
    this.checkNames(session);
    if (decodeGraph) this.checkNames(decodeGraph.session);
  }

  /** The session of one-token passes on a device cache (GraphContext), where it is a build of its own. */
  get decodeSession(): RuntimeSession | undefined {
    return this.decodeGraph?.session;
  }

  static async load(modelDir: string, o: EngineOptions = {}): Promise<Engine> {
    if ((o as { interface?: string }).interface === 'hf') {
      throw lwError('LW_ERR_MODEL_BUILD_OPTIONS', "interface 'hf' builds are for peer runtimes (transformers.js); the engine needs the latentwatch interface");
    }
    const graphInterface = interfaceFor(o.provider ?? 'cpu');
    if (o.interface !== undefined && o.interface !== (graphInterface ?? 'latentwatch')) {
      throw lwError('LW_ERR_MODEL_BUILD_OPTIONS', `interface '${o.interface}' does not fit provider ${o.provider ?? 'cpu'} (the engine picks it from the provider)`);
    }
    const deviceKv = graphInterface === 'device-kv';
    const checkpoint = openCheckpoint(modelDir);
    // Refused before a build that may take minutes: options first, then the device's fp16 support,
    // which fp16 activations need and so does every build but fp32's (its embedding table is fp16).
    const options = resolveBuildOptions(checkpoint, { ...o, interface: graphInterface });
    if (o.provider === 'webgpu' && (options.activations === 'fp16' || options.precision !== 'fp32')) await requireShaderF16(o.webgpuValidation);
    const build = ensureBuild(checkpoint, { ...o, interface: graphInterface }, { cacheDir: o.cacheDir, progress: o.progress });
    const quantized = build.options.precision === 'int4' || build.options.precision === 'int8';
    const decodeLevel = o.decodeAccuracyLevel ?? build.options.accuracyLevel;
    const decodeBuild =
      deviceKv && quantized && decodeLevel !== build.options.accuracyLevel
        ? ensureBuild(checkpoint, { ...o, interface: graphInterface, accuracyLevel: decodeLevel }, { cacheDir: o.cacheDir, progress: o.progress })
        : undefined;
    const load = (b: BuildInfo) =>
      RuntimeSession.load(b.modelPath, {
        provider: o.provider,
        threads: o.threads ?? availableParallelism(),
        spinning: o.spinning,
        ownThread: o.ownThread,
        webgpuValidation: o.webgpuValidation,
        profilePrefix: o.profilePrefix,
        deviceOutputs: deviceKv ? deviceKvOutputs(checkpoint.config) : undefined,
      });
    const [session, decodeSession, tokenizer] = await Promise.all([
      load(build),
      decodeBuild ? load(decodeBuild) : Promise.resolve(undefined),
      existsSync(join(modelDir, 'tokenizer.json')) ? Tokenizer.fromDir(modelDir) : Promise.resolve(undefined),
    ]);
    return new Engine(checkpoint, build, session, tokenizer, o, decodeBuild && decodeSession ? { build: decodeBuild, session: decodeSession } : undefined);
  }

  get config(): ModelConfig {
    return this.checkpoint.config;
  }

  get fingerprint(): string {
    return this.checkpoint.fingerprint;
  }

  /** Stop ids: the checkpoint's EOS ids (generation_config and tokenizer config). */
  get eosTokenIds(): number[] {
    return [...new Set([...this.config.eosTokenIds, ...(this.tokenizer?.eosTokenIds ?? [])])];
  }

  /** The hook-name table checked against the session: every tap and port of the build must exist. */
  private checkNames(session: RuntimeSession): void {
    const outs = new Set(session.outputNames);
    const ins = new Set(session.inputNames);
    // A device-kv build packs logits and taps into one output (graph.ts), in the build's tap order.
    const hostOutputs = this.deviceKv ? [GRAPH_NAMES.hostOutputs] : [GRAPH_NAMES.logits, GRAPH_NAMES.greedy, ...this.taps];
    for (const o of hostOutputs) if (!outs.has(o)) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `build lacks output ${o}`);
    for (const p of this.ports) if (!ins.has(injectPort(p))) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `build lacks port input ${injectPort(p)}`);
    const [key, value] = this.deviceKv ? [GRAPH_NAMES.presentKey, GRAPH_NAMES.presentValue] : [GRAPH_NAMES.newKey, GRAPH_NAMES.newValue];
    for (let l = 0; l < this.config.numLayers; l++) {
      if (!outs.has(key(l)) || !outs.has(value(l))) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `build lacks the key/value outputs of layer ${l}`);
    }
  }

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * A fresh sequence with room for `capacity` positions (trials drive these directly). It takes a
   * pool slot when one is free and large enough, so its decode steps can be batched; release() it.
   */
  newSequence(capacity: number): Sequence {
    if (capacity > this.contextLength) throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `${capacity} positions > context length ${this.contextLength}`);
    if (this.deviceKv) return new Sequence(this, capacity, new DeviceKvCache(this.config, this.build.options.activations));
    const slot = capacity < this.pool.maxSlotLength ? this.pool.allocate() : null;
    if (!slot) return new Sequence(this, capacity, privateStorage(this.config, Math.min(capacity, this.maxPrivateLength), (floats) => this.session.kvMemory(floats)));
    // Delegate rather than spread: `length` is a getter that follows the pool as it grows.
    const storage: KvStorage = {
      slot: slot.slot,
      get length() {
        return slot.length;
      },
      key: (l) => slot.key(l),
      value: (l) => slot.value(l),
      ensure: (n) => slot.ensure(n),
      free: () => {
        this.batcher.unregister(seq);
        slot.free();
      },
    };
    const seq = new Sequence(this, capacity, storage);
    this.batcher.register(seq);
    return seq;
  }

  /** One decode step: batched with other streams when the sequence is pooled. */
  private decode(seq: Sequence, token: number, o: ForwardOptions): Promise<ForwardResult> {
    return seq.storage.slot >= 0 ? this.batcher.step(seq, token, o) : seq.forward([token], o);
  }

  async *generate(req: GenerateRequest): AsyncGenerator<Step> {
    const promptLength = req.promptIds.length;
    if (promptLength === 0) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', 'empty prompt');
    if (!Number.isInteger(req.maxTokens) || req.maxTokens < 0) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', 'max tokens must be a non-negative integer');
    for (const id of req.promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', `token id ${id} outside the vocabulary`);
    }
    if (promptLength + req.maxTokens > this.contextLength) {
      throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `${promptLength} prompt + ${req.maxTokens} max tokens > ${this.contextLength}`, {
        promptTokens: promptLength,
        contextLength: this.contextLength,
      });
    }
    for (const [name, k] of [['logprobs', req.logprobs], ['prompt logprobs', req.promptLogprobs]] as const) {
      if (k !== undefined && !(Number.isInteger(k) && k >= 0 && k <= 20)) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', `${name} must be an integer in [0, 20]`);
    }
    for (const id of req.sampling?.logitBias?.keys() ?? []) {
      if (!(Number.isInteger(id) && id >= 0 && id < this.config.vocabSize)) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', `logit_bias names token id ${id}, outside the vocabulary`, { param: 'logit_bias' });
    }
    const sampler = new Sampler(req.sampling);
    const stops = new Set([...(req.ignoreEos ? [] : this.eosTokenIds), ...(req.stopTokenIds ?? [])]);
    const stopText = new StopStringMatcher(req.stopStrings ?? []);
    const detok = new StreamingDetokenizer(this.tokenizer ?? (() => ''), { skipSpecialTokens: true });
    const taps = req.taps ?? [];
    // A greedy request that reads no logits takes the graph's argmax instead of the logits row
    // (on a GPU provider the row then never leaves the device).
    const greedyOnly = sampler.greedy && !req.returnLogits && req.logprobs === undefined;
    const fwd: ForwardOptions = { taps, injections: req.injections, promptLength, logits: greedyOnly ? 'greedy' : 'last' };
    const seq = this.newSequence(promptLength + req.maxTokens);
    const aborted = () => {
      if (req.signal?.aborted) throw lwError('LW_ERR_ENGINE_ABORTED');
    };
    try {
      // Prefill in chunks; the prompt step carries every prompt position's taps.
      let logits: Float32Array = new Float32Array(0);
      let greedy: GreedyChoice | undefined;
      const promptTaps = new Map<string, Float32Array[]>();
      const V = this.config.vocabSize;
      // Prompt logprobs need logits at every prompt position: chunks then stay under ~32 MB of logits.
      const wantPrompt = req.promptLogprobs !== undefined;
      const chunk = wantPrompt ? Math.max(1, Math.min(this.prefillChunk, Math.floor(2 ** 23 / V))) : this.prefillChunk;
      const promptLogprobs: PromptTokenLogprob[] = wantPrompt ? [{ ...this.alternative(req.promptIds[0], 0), logprob: null, top: [] }] : [];
      for (let i = 0; i < promptLength; i += chunk) {
        aborted();
        const ids = req.promptIds.slice(i, i + chunk);
        const r = await seq.forward(ids, wantPrompt ? { ...fwd, logits: 'all' } : fwd);
        logits = wantPrompt ? r.logits.subarray((ids.length - 1) * V) : r.logits;
        greedy = r.greedy;
        for (const [k, v] of r.taps) promptTaps.set(k, [...(promptTaps.get(k) ?? []), v.data]);
        // Row j predicts prompt token i + j + 1.
        for (let j = 0; wantPrompt && j < ids.length && i + j + 1 < promptLength; j++) {
          promptLogprobs.push(this.logprobOf(r.logits.subarray(j * V, (j + 1) * V), req.promptIds[i + j + 1], req.promptLogprobs!));
        }
      }
      const promptStep: Step = {
        kind: 'prompt',
        tokenId: -1,
        text: req.promptText ? (this.tokenizer?.decode(req.promptIds) ?? '') : '',
        position: promptLength - 1,
        taps: new Map([...promptTaps].map(([k, parts]) => [k, { positions: promptLength, dModel: this.config.hiddenSize, data: concat(parts) }])),
      };
      if (wantPrompt) promptStep.promptLogprobs = promptLogprobs;
      yield promptStep;
      if (req.maxTokens === 0) return;

      // Each token step is emitted after the pass that reads that token, so it carries its own
      // activations: a monitor scores a token before its text reaches the client.
      // The graph's greedy choice where the pass gave one (a batched step may bring the logits instead).
      const next = () => (greedy ? sampler.sampleGreedy(greedy) : sampler.sample(logits));
      let token = next();
      for (let n = 1; ; n++) {
        aborted();
        const isStop = stops.has(token);
        let last = isStop || n >= req.maxTokens;
        const tokenLogits = logits;
        const position = promptLength + n - 1;
        let stepTaps = new Map();
        if (!last || taps.length > 0) {
          const r = await this.decode(seq, token, fwd);
          logits = r.logits;
          greedy = r.greedy;
          stepTaps = r.taps;
        }
        let text = '';
        let matched = false;
        if (!isStop) {
          const s = stopText.push(detok.push(token));
          text = s.text;
          matched = s.stopped;
        }
        if (last && !matched) {
          // Ending for any reason but a stop-string match (EOS, a stop id, the length limit): the
          // text the detokenizer and the stop-string matcher hold back belongs to the output. It
          // may still complete a stop string.
          const s = stopText.push(detok.flush());
          text += s.text;
          matched = s.stopped;
          if (!matched) text += stopText.flush();
        }
        if (matched) last = true;
        const step: Step = { kind: 'token', tokenId: token, text, position, taps: stepTaps };
        if (req.returnLogits) step.logits = tokenLogits;
        // The distribution the token was drawn from, as the model gave it (the sampler adjusts a copy).
        if (req.logprobs !== undefined && !isStop) step.logprob = this.logprobOf(tokenLogits, token, req.logprobs);
        if (last) step.finishReason = isStop || matched || n < req.maxTokens ? 'stop' : 'length';
        yield step;
        if (last) return;
        token = next();
      }
    } finally {
      seq.release();
    }
  }

  /** A token's log-probability and its position's `k` most probable alternatives, with their text and bytes. */
  private logprobOf(logits: Float32Array, tokenId: number, k: number): TokenLogprob {
    const r = logprobsOf(logits, tokenId, k);
    return { ...this.alternative(tokenId, r.logprob), top: r.top.map((t) => this.alternative(t.tokenId, t.logprob)) };
  }

  private alternative(tokenId: number, logprob: number): TokenAlternative {
    const bytes = this.tokenizer?.tokenBytes(tokenId) ?? [];
    return { tokenId, token: new TextDecoder().decode(Uint8Array.from(bytes)), bytes, logprob };
  }

  async close(): Promise<void> {
    await this.session.release();
    await this.decodeGraph?.session.release();
  }
}
