/**
 * KV-cache storage. Batched decode needs the caches of a batch's rows side by side in one tensor, so
 * sequences live in slots of one array per layer: [slots, kv_heads, slot_len, head_dim]; a batch
 * feeds the view over a contiguous run of slots. A sequence that finds no free slot gets a private
 * one-slot pool and decodes alone.
 *
 * Slots grow: onnxruntime's attention costs (and allocates scratch) in proportion to the buffer's
 * length, not the positions in use, so buffers start small and double as sequences need room,
 * copying what they hold. The cost is amortised: a sequence of n tokens is copied O(log n) times.
 * Passes only read these buffers (the cache is a graph input); the engine writes each pass's new
 * keys and values in as part of the pass (kv-write.ts). The floats live in a KvMemory (kv-memory.ts):
 * on this thread, or resident on the session's own thread; the pool only keeps their layout.
 */
import type { ModelConfig } from '../model/config.js';
import type { Feed, KvMemory } from './kv-memory.js';

const INITIAL_SLOT_LENGTH = 256;

/** Makes a pool's memory of `floats` floats (kv-memory.ts: on this thread or the session's own). */
export type KvMemoryFactory = (floats: number) => KvMemory;

export interface KvStorage {
  /** Slot index in the shared pool, or -1 for a private one. */
  readonly slot: number;
  /** Positions the buffers hold now (they grow up to the pool's maximum). */
  readonly length: number;
  /** Layer l's key and value buffers as feeds, [1, kv_heads, length, head_dim]. */
  key(layer: number): Feed;
  value(layer: number): Feed;
  /** Makes room for `positions` positions. */
  ensure(positions: number): void;
  free(): void;
}

export class KvPool {
  private slotLen: number;
  private readonly memory: KvMemory | null;
  private readonly used: boolean[];
  private readonly rowFloats: number;

  constructor(
    private readonly config: ModelConfig,
    readonly slots: number,
    /** The most positions a slot may grow to. */
    readonly maxSlotLength: number,
    memory: KvMemoryFactory,
  ) {
    this.used = new Array<boolean>(slots).fill(false);
    this.rowFloats = config.headDim;
    this.slotLen = Math.min(INITIAL_SLOT_LENGTH, maxSlotLength);
    this.memory = slots === 0 ? null : memory(this.totalFloats);
  }

  get slotLength(): number {
    return this.slotLen;
  }

  private get slotFloats(): number {
    return this.config.numKvHeads * this.slotLen * this.rowFloats;
  }

  /** Every layer's keys, then values, one after another: [2 * layers][slots, kv_heads, slot_len, head_dim]. */
  private get totalFloats(): number {
    return 2 * this.config.numLayers * this.slots * this.slotFloats;
  }

  /** Where layer l's keys (`which` 0) or values (1) of slot `slot` start. */
  private offset(layer: number, which: 0 | 1, slot: number): number {
    return ((2 * layer + which) * this.slots + slot) * this.slotFloats;
  }

  /** Grows every slot to hold at least `positions` (never beyond maxSlotLength). */
  ensure(positions: number): void {
    if (positions <= this.slotLen || !this.memory) return;
    const oldLen = this.slotLen;
    this.slotLen = Math.min(this.maxSlotLength, Math.max(positions, oldLen * 2));
    // Each (layer, keys|values, slot, kv head) row of positions moves to its new stride.
    const rows = 2 * this.config.numLayers * this.slots * this.config.numKvHeads;
    const oldRow = oldLen * this.rowFloats;
    const newRow = this.slotLen * this.rowFloats;
    const moves = new Float64Array(3 * rows);
    for (let r = 0; r < rows; r++) moves.set([r * oldRow, r * newRow, oldRow], 3 * r);
    this.memory.resize(this.totalFloats, moves);
  }

  /** Lowest free slot (keeping batches compact), or null when full. */
  allocate(): KvStorage | null {
    const slot = this.used.indexOf(false);
    if (slot < 0) return null;
    this.used[slot] = true;
    const feed = (layer: number, which: 0 | 1) => this.memory!.feed(this.offset(layer, which, slot), this.slotFloats, [1, this.config.numKvHeads, this.slotLen, this.rowFloats]);
    const length = () => this.slotLen;
    return {
      slot,
      get length() {
        return length();
      },
      key: (l) => feed(l, 0),
      value: (l) => feed(l, 1),
      ensure: (n) => this.ensure(n),
      free: () => {
        this.used[slot] = false;
      },
    };
  }

  /** Feeds over slots lo..hi (inclusive) for one layer: [hi-lo+1, kv_heads, slot_len, head_dim]. */
  range(layer: number, lo: number, hi: number): { keys: Feed; values: Feed } {
    const dims = [hi - lo + 1, this.config.numKvHeads, this.slotLen, this.rowFloats];
    const length = (hi - lo + 1) * this.slotFloats;
    return { keys: this.memory!.feed(this.offset(layer, 0, lo), length, dims), values: this.memory!.feed(this.offset(layer, 1, lo), length, dims) };
  }

  /** Frees the memory (a private pool when its sequence ends; resident memory is not collected). */
  release(): void {
    this.memory?.free();
  }
}

/** A sequence's own growable cache, for when the shared pool is full or too short. */
export function privateStorage(config: ModelConfig, maxLength: number, memory: KvMemoryFactory): KvStorage {
  const pool = new KvPool(config, 1, maxLength, memory);
  const s = pool.allocate()!;
  return {
    slot: -1,
    get length() {
      return s.length;
    },
    key: (l) => s.key(l),
    value: (l) => s.value(l),
    ensure: (n) => s.ensure(n),
    free: () => {
      s.free();
      pool.release();
    },
  };
}
