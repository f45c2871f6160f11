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
 * keys and values in as part of the pass (kv-write.ts). A pass on the session's own thread borrows
 * the pool's one buffer for its duration (wire-tensor.ts lendableFloats): views taken before a pass
 * are not valid after it, so every use asks for its view anew.
 */
import type { ModelConfig } from '../model/config.js';
import { lendableFloats } from './wire-tensor.js';

const INITIAL_SLOT_LENGTH = 256;

export interface KvStorage {
  /** Slot index in the shared pool, or -1 for a private one. */
  readonly slot: number;
  /** Positions the buffers hold now (they grow up to the pool's maximum). */
  readonly length: number;
  /** Layer l's key and value buffers, [1, kv_heads, length, head_dim]; replaced when they grow. */
  keys(layer: number): Float32Array;
  values(layer: number): Float32Array;
  /** Makes room for `positions` positions. */
  ensure(positions: number): void;
  free(): void;
}

export class KvPool {
  private slotLen: number;
  private keys: Float32Array[] = [];
  private values: Float32Array[] = [];
  private readonly used: boolean[];
  private readonly rowFloats: number;

  constructor(
    private readonly config: ModelConfig,
    readonly slots: number,
    /** The most positions a slot may grow to. */
    readonly maxSlotLength: number,
  ) {
    this.used = new Array<boolean>(slots).fill(false);
    this.rowFloats = config.headDim;
    this.slotLen = Math.min(INITIAL_SLOT_LENGTH, maxSlotLength);
    this.allocateArrays();
  }

  get slotLength(): number {
    return this.slotLen;
  }

  private get slotFloats(): number {
    return this.config.numKvHeads * this.slotLen * this.rowFloats;
  }

  /** One buffer for every layer's keys and values (a pass lends it as one), viewed per layer. */
  private allocateArrays(): void {
    this.keys = [];
    this.values = [];
    if (this.slots === 0) return;
    const layerFloats = this.slots * this.slotFloats;
    this.viewLayers(lendableFloats(2 * this.config.numLayers * layerFloats, (moved) => this.viewLayers(moved)));
  }

  private viewLayers(all: Float32Array): void {
    const layerFloats = this.slots * this.slotFloats;
    const view = (i: number) => all.subarray(i * layerFloats, (i + 1) * layerFloats);
    this.keys = Array.from({ length: this.config.numLayers }, (_, l) => view(2 * l));
    this.values = Array.from({ length: this.config.numLayers }, (_, l) => view(2 * l + 1));
  }

  /** Grows every slot to hold at least `positions` (never beyond maxSlotLength). */
  ensure(positions: number): void {
    if (positions <= this.slotLen) return;
    const oldLen = this.slotLen;
    const oldKeys = this.keys;
    const oldValues = this.values;
    this.slotLen = Math.min(this.maxSlotLength, Math.max(positions, oldLen * 2));
    this.allocateArrays();
    // Each (slot, kv head) row of positions moves to its new stride.
    const rows = this.slots * this.config.numKvHeads;
    const oldRow = oldLen * this.rowFloats;
    const newRow = this.slotLen * this.rowFloats;
    for (let l = 0; l < this.config.numLayers; l++) {
      for (let r = 0; r < rows; r++) {
        this.keys[l].set(oldKeys[l].subarray(r * oldRow, (r + 1) * oldRow), r * newRow);
        this.values[l].set(oldValues[l].subarray(r * oldRow, (r + 1) * oldRow), r * newRow);
      }
    }
  }

  /** Lowest free slot (keeping batches compact), or null when full. */
  allocate(): KvStorage | null {
    const slot = this.used.indexOf(false);
    if (slot < 0) return null;
    this.used[slot] = true;
    const view = (a: Float32Array) => a.subarray(slot * this.slotFloats, (slot + 1) * this.slotFloats);
    const length = () => this.slotLen;
    return {
      slot,
      get length() {
        return length();
      },
      keys: (l) => view(this.keys[l]),
      values: (l) => view(this.values[l]),
      ensure: (n) => this.ensure(n),
      free: () => {
        this.used[slot] = false;
      },
    };
  }

  /** Views over slots lo..hi (inclusive) for one layer: [hi-lo+1, kv_heads, slot_len, head_dim]. */
  range(layer: number, lo: number, hi: number): { keys: Float32Array; values: Float32Array } {
    const f = this.slotFloats;
    return { keys: this.keys[layer].subarray(lo * f, (hi + 1) * f), values: this.values[layer].subarray(lo * f, (hi + 1) * f) };
  }
}

/** A sequence's own growable cache, for when the shared pool is full or too short. */
export function privateStorage(config: ModelConfig, maxLength: number): KvStorage {
  const s = new KvPool(config, 1, maxLength).allocate()!;
  return {
    slot: -1,
    get length() {
      return s.length;
    },
    keys: (l) => s.keys(l),
    values: (l) => s.values(l),
    ensure: (n) => s.ensure(n),
    free: () => s.free(),
  };
}
