/**
 * KV-cache storage. Batched decode needs the caches of a batch's rows side by side in one tensor, so
 * pooled sequences live in slots of one large array per layer ([slots, kv_heads, slot_len, head_dim]);
 * a batch feeds the view over a contiguous run of slots. Sequences that do not fit a slot get their
 * own arrays and decode alone. Arrays are zero-allocated, so untouched slots cost no resident memory.
 */
import type { ModelConfig } from '../model/config.js';

export interface KvStorage {
  /** Positions the cache holds. */
  readonly length: number;
  /** Per layer: key and value arrays of [1, kv_heads, length, head_dim]. */
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  /** Slot index in the pool, or -1 for private storage. */
  readonly slot: number;
  free(): void;
}

export class KvPool {
  readonly slotLength: number;
  readonly slotFloats: number;
  private readonly keys: Float32Array[] = [];
  private readonly values: Float32Array[] = [];
  private readonly used: boolean[];

  constructor(
    private readonly config: ModelConfig,
    readonly slots: number,
    slotLength: number,
  ) {
    this.slotLength = slotLength;
    this.slotFloats = config.numKvHeads * slotLength * config.headDim;
    this.used = new Array<boolean>(slots).fill(false);
    if (slots > 0) {
      for (let l = 0; l < config.numLayers; l++) {
        this.keys.push(new Float32Array(slots * this.slotFloats));
        this.values.push(new Float32Array(slots * this.slotFloats));
      }
    }
  }

  /** Lowest free slot (keeping batches compact), or null when full. */
  allocate(): KvStorage | null {
    const slot = this.used.indexOf(false);
    if (slot < 0) return null;
    this.used[slot] = true;
    const view = (a: Float32Array) => a.subarray(slot * this.slotFloats, (slot + 1) * this.slotFloats);
    return {
      length: this.slotLength,
      keys: this.keys.map(view),
      values: this.values.map(view),
      slot,
      free: () => {
        this.used[slot] = false;
      },
    };
  }

  /** Views over slots lo..hi (inclusive) for one layer: [hi-lo+1, kv_heads, slot_len, head_dim]. */
  range(layer: number, lo: number, hi: number): { keys: Float32Array; values: Float32Array } {
    return {
      keys: this.keys[layer].subarray(lo * this.slotFloats, (hi + 1) * this.slotFloats),
      values: this.values[layer].subarray(lo * this.slotFloats, (hi + 1) * this.slotFloats),
    };
  }
}

export function privateStorage(config: ModelConfig, length: number): KvStorage {
  const n = config.numKvHeads * length * config.headDim;
  return {
    length,
    keys: Array.from({ length: config.numLayers }, () => new Float32Array(n)),
    values: Array.from({ length: config.numLayers }, () => new Float32Array(n)),
    slot: -1,
    free: () => {},
  };
}
