/**
 * One sequence's state on a loaded graph: its KV cache (preallocated to the sequence's capacity and
 * fed as both past and present, so onnxruntime updates it in place) and forward passes over new
 * positions with taps and injections.
 */
import { lwError } from '../errors.js';
import { GRAPH_NAMES } from '../model/graph.js';
import type { ModelConfig } from '../model/config.js';
import { injectPort } from '../hooks.js';
import { f32Tensor, i32Tensor, i64Tensor, tensorData, type RuntimeSession, type Tensor } from './runtime.js';
import type { Injection, TapValues } from './types.js';

export interface ForwardOptions {
  taps?: readonly string[];
  injections?: readonly Injection[];
  /** Which positions of this pass get logits: the last (default), all, or none. */
  logits?: 'last' | 'all' | 'none';
  /** Length of the prompt, to resolve 'prompt'/'generation' windows. */
  promptLength?: number;
}

export interface ForwardResult {
  /** [positions with logits, vocab] row-major. */
  logits: Float32Array;
  taps: Map<string, TapValues>;
}

/** What a sequence needs from its engine: the graph, its shape and its ports. */
export interface GraphContext {
  session: RuntimeSession;
  config: ModelConfig;
  ports: ReadonlySet<string>;
  taps: ReadonlySet<string>;
  /** Serialises forward passes: one pass owns all cores at a time. */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

export class Sequence {
  private keys: Tensor[] = [];
  private values: Tensor[] = [];
  private len = 0;
  private released = false;
  private readonly zeroPort: Tensor;

  constructor(
    private readonly ctx: GraphContext,
    readonly capacity: number,
  ) {
    const c = ctx.config;
    const dims = [1, c.numKvHeads, capacity, c.headDim];
    const n = c.numKvHeads * capacity * c.headDim;
    for (let l = 0; l < c.numLayers; l++) {
      this.keys.push(f32Tensor(new Float32Array(n), dims));
      this.values.push(f32Tensor(new Float32Array(n), dims));
    }
    this.zeroPort = f32Tensor(new Float32Array(c.hiddenSize), [1, 1, c.hiddenSize]);
  }

  get length(): number {
    return this.len;
  }

  /** Drops the cache; later calls fail. */
  release(): void {
    this.released = true;
    this.keys = [];
    this.values = [];
  }

  /** Runs the graph over `ids` at positions length..length+ids.length-1 and extends the cache. */
  async forward(ids: readonly number[], o: ForwardOptions = {}): Promise<ForwardResult> {
    if (this.released) throw lwError('LW_ERR_ENGINE_ABORTED', 'sequence released');
    const n = ids.length;
    if (n === 0) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', 'forward over no tokens');
    if (this.len + n > this.capacity) {
      throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `${this.len + n} positions > capacity ${this.capacity}`);
    }
    const c = this.ctx.config;
    for (const t of o.taps ?? []) if (!this.ctx.taps.has(t)) throw lwError('LW_ERR_ENGINE_HOOK_UNKNOWN', `${t} is not a tap of this build`);
    const start = this.len;
    const total = start + n;
    const logitRows = o.logits === 'all' ? Array.from({ length: n }, (_, i) => i) : [n - 1];
    const feeds: Record<string, Tensor> = {
      [GRAPH_NAMES.inputIds]: i64Tensor(ids, [1, n]),
      [GRAPH_NAMES.seqlensK]: i32Tensor([total - 1], [1]),
      [GRAPH_NAMES.totalSeqLen]: i32Tensor([total], []),
      [GRAPH_NAMES.logitsIndex]: i64Tensor(logitRows, [logitRows.length]),
    };
    const fetches: Record<string, Tensor | null> = { [GRAPH_NAMES.logits]: null };
    for (let l = 0; l < c.numLayers; l++) {
      feeds[GRAPH_NAMES.pastKey(l)] = this.keys[l];
      feeds[GRAPH_NAMES.pastValue(l)] = this.values[l];
      fetches[GRAPH_NAMES.presentKey(l)] = this.keys[l];
      fetches[GRAPH_NAMES.presentValue(l)] = this.values[l];
    }
    for (const port of this.ctx.ports) feeds[injectPort(port)] = this.zeroPort;
    for (const [hook, t] of this.injectionFeeds(start, n, o)) feeds[injectPort(hook)] = t;
    for (const t of o.taps ?? []) fetches[t] = null;

    const out = await this.ctx.exclusive(() => this.ctx.session.run(feeds, fetches));
    this.len = total;
    const taps = new Map<string, TapValues>();
    for (const t of o.taps ?? []) taps.set(t, { positions: n, dModel: c.hiddenSize, data: tensorData(out[t]) });
    return { logits: tensorData(out[GRAPH_NAMES.logits]), taps };
  }

  /** Port feeds for positions start..start+n-1: [1,1,D] when one vector covers the pass, else per row. */
  private injectionFeeds(start: number, n: number, o: ForwardOptions): Map<string, Tensor> {
    const feeds = new Map<string, Tensor>();
    const D = this.ctx.config.hiddenSize;
    const byHook = new Map<string, Injection[]>();
    for (const inj of o.injections ?? []) {
      if (!this.ctx.ports.has(inj.hook)) throw lwError('LW_ERR_ENGINE_HOOK_UNKNOWN', `${inj.hook} has no injection port in this build`);
      if (inj.vector.length !== D) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', `injection vector has ${inj.vector.length} values, d_model is ${D}`);
      byHook.set(inj.hook, [...(byHook.get(inj.hook) ?? []), inj]);
    }
    for (const [hook, injs] of byHook) {
      const spans = injs.map((inj) => {
        const [a, b] = resolveWindow(inj, o.promptLength ?? start + n);
        return { inj, from: Math.max(a, start), to: Math.min(b, start + n) };
      });
      const active = spans.filter((s) => s.from < s.to);
      if (active.length === 0) continue;
      const covers = active.every((s) => s.from === start && s.to === start + n);
      const rows = covers ? 1 : n;
      const data = new Float32Array(rows * D);
      for (const s of active) {
        const r0 = covers ? 0 : s.from - start;
        const r1 = covers ? 1 : s.to - start;
        for (let r = r0; r < r1; r++) for (let i = 0; i < D; i++) data[r * D + i] += s.inj.scale * s.inj.vector[i];
      }
      feeds.set(hook, f32Tensor(data, [1, rows, D]));
    }
    return feeds;
  }
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
