/**
 * One sequence's state on a loaded graph: its KV cache (a graph input; each pass's new keys and
 * values come back as small outputs and are written in here) and forward passes over new
 * positions with taps and injections.
 * Single-token decode steps of pooled sequences go through the engine's DecodeBatcher instead.
 * On a GPU provider the cache is a DeviceKvCache instead: it stays on the device (device-kv.ts).
 */
import { lwError } from '../errors.js';
import { GRAPH_NAMES } from '../model/graph.js';
import type { ModelConfig } from '../model/config.js';
import { injectPort } from '../hooks.js';
import { DeviceKvCache } from './device-kv.js';
import type { KvStorage } from './kv-pool.js';
import type { Feed } from './kv-memory.js';
import type { KvWrite } from './kv-write.js';
import { f32Tensor, i32Tensor, i64Tensor, tensorData, type RuntimeSession, type Tensor } from './runtime.js';
import type { GreedyChoice } from './sampler.js';
import type { Injection, TapValues } from './types.js';

export interface ForwardOptions {
  taps?: readonly string[];
  injections?: readonly Injection[];
  /**
   * Which positions of this pass get logits: the last (default), all, or none; 'greedy': none, but
   * the last position's argmax and its logit (the graph's greedy output: on a GPU provider the
   * logits row then stays on the device).
   */
  logits?: 'last' | 'all' | 'none' | 'greedy';
  /** Length of the prompt, to resolve 'prompt'/'generation' windows. */
  promptLength?: number;
}

export interface ForwardResult {
  /** [positions with logits, vocab] row-major; empty for logits 'none' and 'greedy'. */
  logits: Float32Array;
  /** logits 'greedy': the last position's argmax and its logit. */
  greedy?: GreedyChoice;
  taps: Map<string, TapValues>;
}

/** What a sequence needs from its engine: the graph, its shape and its ports. */
export interface GraphContext {
  session: RuntimeSession;
  /** Device-cache sequences: the session of one-token passes where it is another build (engine.ts decodeAccuracyLevel). */
  readonly decodeSession?: RuntimeSession;
  config: ModelConfig;
  ports: ReadonlySet<string>;
  taps: ReadonlySet<string>;
  /** Serialises forward passes: one pass owns all cores at a time. */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

export class Sequence {
  private len = 0;
  private released = false;

  constructor(
    private readonly ctx: GraphContext,
    /** Positions this sequence may hold. */
    readonly capacity: number,
    readonly storage: KvStorage | DeviceKvCache,
  ) {}

  /** The host cache (pooled or private); a device-cache sequence has none. */
  get hostStorage(): KvStorage {
    if (this.storage instanceof DeviceKvCache) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', 'this sequence keeps its cache on the device');
    return this.storage;
  }

  get length(): number {
    return this.len;
  }

  get isReleased(): boolean {
    return this.released;
  }

  /** Frees the cache (its pool slot, if any); later calls fail. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.storage.free();
  }

  /** Checks a pass over n more positions may run, and resolves its taps and injections. */
  prepare(n: number, o: ForwardOptions): void {
    if (this.released) throw lwError('LW_ERR_ENGINE_ABORTED', 'sequence released');
    if (n === 0) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', 'forward over no tokens');
    if (this.len + n > this.capacity) throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `${this.len + n} positions > capacity ${this.capacity}`);
    checkHooks(this.ctx, o);
  }

  /** Marks n positions as written by a pass that ran elsewhere (the batcher). */
  advance(n: number): void {
    this.len += n;
  }

  /** Runs the graph over `ids` at positions length..length+ids.length-1 and extends the cache. */
  async forward(ids: readonly number[], o: ForwardOptions = {}): Promise<ForwardResult> {
    const n = ids.length;
    this.prepare(n, o);
    const c = this.ctx.config;
    const start = this.len;
    const total = start + n;
    const logitRows = o.logits === 'all' ? Array.from({ length: n }, (_, i) => i) : [n - 1];
    const feeds: Record<string, Tensor> = {
      [GRAPH_NAMES.inputIds]: i64Tensor(ids, [1, n]),
      [GRAPH_NAMES.seqlensK]: i32Tensor([total - 1], [1]),
      [GRAPH_NAMES.totalSeqLen]: i32Tensor([total], []),
      [GRAPH_NAMES.logitsIndex]: i64Tensor(logitRows, [logitRows.length]),
    };
    for (const port of this.ctx.ports) {
      const rows = injectionRows(this.ctx, o.injections ?? [], port, start, n, o.promptLength ?? total);
      feeds[injectPort(port)] = f32Tensor(rows.data, [1, rows.rows, c.hiddenSize]);
    }
    const mode = o.logits ?? 'last';
    const hostLogits = mode === 'last' || mode === 'all';
    let out: Record<string, Float32Array>;
    if (this.storage instanceof DeviceKvCache) {
      feeds[GRAPH_NAMES.logitsToHost] = i64Tensor([hostLogits ? 1 : 0], []);
      out = unpackHostOutputs(this.ctx, await this.runDevice(this.storage, feeds, total, n), logitRows.length, hostLogits, n);
    } else {
      out = await this.runHost(this.hostStorage, feeds, o, n, start);
    }
    this.len = total;
    const taps = new Map<string, TapValues>();
    for (const t of o.taps ?? []) taps.set(t, { positions: n, dModel: c.hiddenSize, data: out[t] });
    const r: ForwardResult = { logits: hostLogits ? out[GRAPH_NAMES.logits] : new Float32Array(0), taps };
    if (mode === 'greedy') r.greedy = greedyChoice(out[GRAPH_NAMES.greedy], logitRows.length - 1);
    return r;
  }

  /** A pass on a device cache: the past goes in as the last pass's present, which stays on the device. */
  private runDevice(cache: DeviceKvCache, feeds: Record<string, Tensor>, total: number, n: number): Promise<Record<string, Tensor>> {
    return this.ctx.exclusive(async () => {
      cache.addPast(feeds);
      // One-token passes may run another build on the same device cache (its own accuracy level).
      const session = n === 1 && this.ctx.decodeSession ? this.ctx.decodeSession : this.ctx.session;
      // Every output, taps not asked for included: onnxruntime-node matches preferredOutputLocation
      // to outputs by position, and fetching a subset puts device tensors where host ones belong.
      const r = await session.runAll(feeds);
      cache.replace(r, total);
      // Released while the pass ran (an abort): nothing else will free what it left on the device.
      if (this.released) cache.free();
      return r;
    });
  }

  /** A pass on a host cache; returns the logits and the taps asked for. */
  private async runHost(storage: KvStorage, passFeeds: Record<string, Tensor>, o: ForwardOptions, n: number, start: number): Promise<Record<string, Float32Array>> {
    const c = this.ctx.config;
    const total = start + n;
    // Only what the caller reads comes back (onnxruntime-node copies every fetched output).
    const mode = o.logits ?? 'last';
    const wanted = [...(mode === 'greedy' ? [GRAPH_NAMES.greedy] : mode === 'none' ? [] : [GRAPH_NAMES.logits]), ...(o.taps ?? [])];
    const r = await this.ctx.exclusive(async () => {
      // Inside the exclusive section: the pool may grow (and move buffers) only between passes.
      storage.ensure(total);
      const feeds: Record<string, Feed> = { ...passFeeds };
      // The cache is an input: the pass's new keys and values are written into it as part of the pass.
      const writes: KvWrite[] = [];
      const write = (output: string, feed: string): KvWrite => ({ output, feed, cacheLen: storage.length, kvHeads: c.numKvHeads, headDim: c.headDim, n, rows: [{ row: 0, cacheOffset: 0, start }] });
      for (let l = 0; l < c.numLayers; l++) {
        feeds[GRAPH_NAMES.pastKey(l)] = storage.key(l);
        feeds[GRAPH_NAMES.pastValue(l)] = storage.value(l);
        writes.push(write(GRAPH_NAMES.newKey(l), GRAPH_NAMES.pastKey(l)), write(GRAPH_NAMES.newValue(l), GRAPH_NAMES.pastValue(l)));
      }
      return this.ctx.session.run(feeds, wanted, writes);
    });
    return Object.fromEntries(wanted.map((name) => [name, tensorData(r[name])]));
  }
}

/** Row `row` of a greedy output ([rows, 2]: argmax id as a float, its logit). */
export function greedyChoice(pairs: Float32Array, row: number): GreedyChoice {
  return { tokenId: pairs[row * 2], logit: pairs[row * 2 + 1] };
}

/**
 * Splits a device-kv pass's one host output (graph.ts GRAPH_NAMES.hostOutputs): the greedy pairs of
 * `logitRows` rows, their logits where the pass brought them back (`withLogits`), then each tap of
 * the build in layer order over the pass's `n` positions (views, no copy).
 */
export function unpackHostOutputs(ctx: GraphContext, out: Record<string, Tensor>, logitRows: number, withLogits: boolean, n: number): Record<string, Float32Array> {
  const packed = tensorData(out[GRAPH_NAMES.hostOutputs]);
  const V = ctx.config.vocabSize;
  const D = ctx.config.hiddenSize;
  const logitsEnd = 2 * logitRows + (withLogits ? logitRows * V : 0);
  const r: Record<string, Float32Array> = { [GRAPH_NAMES.greedy]: packed.subarray(0, 2 * logitRows), [GRAPH_NAMES.logits]: packed.subarray(2 * logitRows, logitsEnd) };
  let off = logitsEnd;
  for (const t of ctx.taps) {
    r[t] = packed.subarray(off, off + n * D);
    off += n * D;
  }
  if (off !== packed.length) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', `host outputs hold ${packed.length} floats, expected ${off}`);
  return r;
}

export function checkHooks(ctx: GraphContext, o: ForwardOptions): void {
  for (const t of o.taps ?? []) if (!ctx.taps.has(t)) throw lwError('LW_ERR_ENGINE_HOOK_UNKNOWN', `${t} is not a tap of this build`);
  const D = ctx.config.hiddenSize;
  for (const inj of o.injections ?? []) {
    if (!ctx.ports.has(inj.hook)) throw lwError('LW_ERR_ENGINE_HOOK_UNKNOWN', `${inj.hook} has no injection port in this build`);
    if (inj.vector.length !== D) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', `injection vector has ${inj.vector.length} values, d_model is ${D}`);
  }
}

/**
 * What one port adds at positions start..start+n-1: one row when every position gets the same
 * vector (zero included, so an idle port costs a [1,1,D] broadcast add), else a row per position.
 */
export function injectionRows(ctx: GraphContext, injections: readonly Injection[], hook: string, start: number, n: number, promptLength: number): { rows: number; data: Float32Array } {
  const D = ctx.config.hiddenSize;
  const active = [];
  for (const inj of injections) {
    if (inj.hook !== hook) continue;
    const [a, b] = resolveWindow(inj, promptLength);
    const from = Math.max(a, start);
    const to = Math.min(b, start + n);
    if (from < to) active.push({ inj, from, to });
  }
  const uniform = active.every((s) => s.from === start && s.to === start + n);
  const rows = uniform ? 1 : n;
  const data = new Float32Array(rows * D);
  for (const s of active) {
    for (let r = uniform ? 0 : s.from - start; r < (uniform ? 1 : s.to - start); r++) {
      for (let i = 0; i < D; i++) data[r * D + i] += s.inj.scale * s.inj.vector[i];
    }
  }
  return { rows, data };
}

/** Absolute [start, end) positions of an injection window. */
export function resolveWindow(inj: Injection, promptLength: number): [number, number] {
  const w = inj.window;
  switch (w.kind) {
    case 'prompt':
      return [0, promptLength];
    case 'generation':
      return [promptLength, Infinity];
    case 'all':
      return [0, Infinity];
    case 'range':
      return [w.start, w.end ?? Infinity];
  }
}
