/**
 * Continuous batching of decode steps. Decode is bound by reading the weights; one pass over B rows
 * reads them once, so concurrent streams share the cost. Steps that arrive while a pass runs wait
 * for the next one; each batch covers the contiguous run of pool slots its rows occupy, and slots
 * in that run that have no step this time ride along: their row of the pass is computed and
 * dropped (the attention reads the pool; only active rows' new keys and values are written back).
 */
import { GRAPH_NAMES } from '../model/graph.js';
import { injectPort } from '../hooks.js';
import type { KvPool } from './kv-pool.js';
import { f32Tensor, i32Tensor, i64Tensor, tensorData } from './runtime.js';
import type { Feed } from './kv-memory.js';
import type { KvWrite } from './kv-write.js';
import { greedyChoice, injectionRows, type ForwardOptions, type ForwardResult, type GraphContext, type Sequence } from './sequence.js';
import type { TapValues } from './types.js';

interface PendingStep {
  seq: Sequence;
  token: number;
  o: ForwardOptions;
  resolve(r: ForwardResult): void;
  reject(e: unknown): void;
}

export interface BatchStats {
  passes: number;
  rows: number;
}

/**
 * How long a batch waits for streams that are decoding but have not submitted their next step yet
 * (their consumer is still handling the last token). Waiting a little keeps batches whole instead of
 * splitting every step into two half batches, which costs a whole extra pass.
 */
const GATHER_WAIT_MS = 2;

export class DecodeBatcher {
  private pending: PendingStep[] = [];
  private scheduled = false;
  /** Sequences that have decoded at least once and are not released: the batch to wait for. */
  private readonly decoding = new Set<Sequence>();
  /** Live pooled sequences by slot, to give idle rows of a batch their own (valid) length. */
  private readonly bySlot = new Map<number, Sequence>();
  readonly stats: BatchStats = { passes: 0, rows: 0 };

  constructor(
    private readonly ctx: GraphContext,
    private readonly pool: KvPool,
  ) {}

  register(seq: Sequence): void {
    this.bySlot.set(seq.storage.slot, seq);
  }

  unregister(seq: Sequence): void {
    if (this.bySlot.get(seq.storage.slot) === seq) this.bySlot.delete(seq.storage.slot);
    this.decoding.delete(seq);
    // A stream leaving may complete the batch the others wait for.
    this.gather(false);
  }

  /** One decode step of a pooled sequence; resolves when the batch it joined has run. */
  step(seq: Sequence, token: number, o: ForwardOptions): Promise<ForwardResult> {
    seq.prepare(1, o);
    this.decoding.add(seq);
    return new Promise((resolve, reject) => {
      this.pending.push({ seq, token, o, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        // Fallback for streams that are slow to come back; no polling in between.
        this.timer = setTimeout(() => this.gather(true), GATHER_WAIT_MS);
      }
      this.gather(false);
    });
  }

  /**
   * Queue the pass once every decoding stream has submitted (checked whenever a step arrives or a
   * stream leaves), or when the GATHER_WAIT_MS timer fires (`force`).
   */
  private gather(force: boolean): void {
    if (!this.scheduled || this.queued) return;
    if (!force && [...this.decoding].some((s) => !s.isReleased && !this.pending.some((p) => p.seq === s))) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.queued = true;
    void this.ctx.exclusive(() => this.runBatch());
  }

  private queued = false;
  private timer: NodeJS.Timeout | undefined;

  private async runBatch(): Promise<void> {
    this.scheduled = false;
    this.queued = false;
    const batch = this.pending.filter((p) => !p.seq.isReleased);
    this.pending = [];
    if (batch.length === 0) return;
    try {
      const results = await this.run(batch);
      batch.forEach((p, i) => p.resolve(results[i]));
    } catch (e) {
      if (batch.length === 1) {
        batch[0].reject(e);
        return;
      }
      // One failing row must not fail its neighbours: rerun each alone (a failed pass advanced no
      // sequence, and whatever it wrote at their next positions is rewritten now).
      for (const p of batch) {
        try {
          p.resolve((await this.run([p]))[0]);
        } catch (err) {
          p.reject(err);
        }
      }
    }
  }

  private async run(batch: PendingStep[]): Promise<ForwardResult[]> {
    const c = this.ctx.config;
    const D = c.hiddenSize;
    const slots = batch.map((p) => p.seq.storage.slot);
    const lo = Math.min(...slots);
    const hi = Math.max(...slots);
    const B = hi - lo + 1;
    const ids = new Array<number>(B).fill(0);
    const seqlens = new Array<number>(B).fill(0);
    const rowOf = new Map<number, PendingStep>();
    for (const p of batch) rowOf.set(p.seq.storage.slot - lo, p);
    for (let r = 0; r < B; r++) {
      const p = rowOf.get(r);
      // An idle row computes a dummy step after its own positions; nothing of it is kept.
      const len = p ? p.seq.length : (this.bySlot.get(lo + r)?.length ?? 0);
      ids[r] = p ? p.token : 0;
      seqlens[r] = len;
    }
    // Room for every active row's new position.
    this.pool.ensure(Math.max(...batch.map((p) => p.seq.length)) + 1);
    const feeds: Record<string, Feed> = {
      [GRAPH_NAMES.inputIds]: i64Tensor(ids, [B, 1]),
      [GRAPH_NAMES.seqlensK]: i32Tensor(seqlens, [B]),
      [GRAPH_NAMES.totalSeqLen]: i32Tensor([Math.max(...seqlens) + 1], []),
      [GRAPH_NAMES.logitsIndex]: i64Tensor([0], [1]),
    };
    // Logits come back where a row reads them; greedy rows read only their argmax (graph.ts greedy).
    const wantsGreedy = (p: PendingStep) => p.o.logits === 'greedy';
    const wantsLogits = (p: PendingStep) => p.o.logits !== 'greedy' && p.o.logits !== 'none';
    const fetches = new Set<string>();
    if (batch.some(wantsLogits)) fetches.add(GRAPH_NAMES.logits);
    if (batch.some(wantsGreedy)) fetches.add(GRAPH_NAMES.greedy);
    const slotLen = this.pool.slotLength;
    // Each row's new key and value go into its slot at its next position, as part of the pass (idle rows: nowhere).
    const rows = batch.map((p) => ({ row: p.seq.storage.slot - lo, cacheOffset: (p.seq.storage.slot - lo) * c.numKvHeads * slotLen * c.headDim, start: p.seq.length }));
    const writes: KvWrite[] = [];
    const write = (output: string, feed: string): KvWrite => ({ output, feed, cacheLen: slotLen, kvHeads: c.numKvHeads, headDim: c.headDim, n: 1, rows });
    for (let l = 0; l < c.numLayers; l++) {
      const v = this.pool.range(l, lo, hi);
      feeds[GRAPH_NAMES.pastKey(l)] = v.keys;
      feeds[GRAPH_NAMES.pastValue(l)] = v.values;
      writes.push(write(GRAPH_NAMES.newKey(l), GRAPH_NAMES.pastKey(l)), write(GRAPH_NAMES.newValue(l), GRAPH_NAMES.pastValue(l)));
    }
    for (const port of this.ctx.ports) {
      const perRow = batch.map((p) => injectionRows(this.ctx, p.o.injections ?? [], port, p.seq.length, 1, p.o.promptLength ?? p.seq.length + 1).data);
      if (perRow.every((d) => d.every((x) => x === 0))) {
        feeds[injectPort(port)] = f32Tensor(new Float32Array(D), [1, 1, D]);
      } else {
        const data = new Float32Array(B * D);
        batch.forEach((p, i) => data.set(perRow[i], (p.seq.storage.slot - lo) * D));
        feeds[injectPort(port)] = f32Tensor(data, [B, 1, D]);
      }
    }
    const wanted = new Set(batch.flatMap((p) => p.o.taps ?? []));
    for (const t of wanted) fetches.add(t);

    const out = await this.ctx.session.run(feeds, [...fetches], writes);
    this.stats.passes++;
    this.stats.rows += batch.length;
    const logits = fetches.has(GRAPH_NAMES.logits) ? tensorData(out[GRAPH_NAMES.logits]) : new Float32Array(0);
    const greedy = fetches.has(GRAPH_NAMES.greedy) ? tensorData(out[GRAPH_NAMES.greedy]) : new Float32Array(0);
    const V = c.vocabSize;
    // Outputs are fresh buffers each pass: a lone row keeps them as they are, no copy.
    const row = (data: Float32Array, r: number, width: number) => (B === 1 ? data : data.slice(r * width, (r + 1) * width));
    return batch.map((p) => {
      const r = p.seq.storage.slot - lo;
      p.seq.advance(1);
      const taps = new Map<string, TapValues>();
      for (const t of p.o.taps ?? []) taps.set(t, { positions: 1, dModel: D, data: row(tensorData(out[t]), r, D) });
      const result: ForwardResult = { logits: wantsLogits(p) ? row(logits, r, V) : new Float32Array(0), taps };
      if (wantsGreedy(p)) result.greedy = greedyChoice(greedy, r);
      return result;
    });
  }
}
