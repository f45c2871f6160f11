/**
 * A pass's new keys and values written into the KV cache it read, as part of the pass
 * (RuntimeSession.run `writes`): on the session's own thread the write happens there, in the cache
 * resident there (kv-memory.ts), so the per-layer new keys and values never cross threads.
 */

/** Output `output` ([rows, kv_heads, n, head_dim]) into feed `feed`'s buffer, one entry per row kept. */
export interface KvWrite {
  output: string;
  feed: string;
  /** Positions per row in the cache ([kv_heads, cacheLen, head_dim] per row). */
  cacheLen: number;
  kvHeads: number;
  headDim: number;
  /** New positions per row in the pass. */
  n: number;
  /** Each row kept: its row in the output, where its cache starts in the feed (floats), its first new position. */
  rows: readonly { row: number; cacheOffset: number; start: number }[];
}

/**
 * Writes row `row` of a pass's new keys or values ([rows, kv_heads, n, head_dim]) into a cache laid
 * out [kv_heads, cacheLen, head_dim], at positions start..start+n-1: one copy per kv head.
 */
export function storeNew(cache: Float32Array, cacheLen: number, fresh: Float32Array, row: number, kvHeads: number, n: number, start: number, headDim: number): void {
  for (let h = 0; h < kvHeads; h++) {
    const from = (row * kvHeads + h) * n * headDim;
    cache.set(fresh.subarray(from, from + n * headDim), (h * cacheLen + start) * headDim);
  }
}

/** Applies `writes` given each feed's and output's values. */
export function applyKvWrites(writes: readonly KvWrite[], feed: (name: string) => Float32Array, output: (name: string) => Float32Array): void {
  for (const w of writes) {
    const cache = feed(w.feed);
    const fresh = output(w.output);
    const rowFloats = w.kvHeads * w.cacheLen * w.headDim;
    for (const r of w.rows) storeNew(cache.subarray(r.cacheOffset, r.cacheOffset + rowFloats), w.cacheLen, fresh, r.row, w.kvHeads, w.n, r.start, w.headDim);
  }
}

/** `writes` as numbers for another thread (wire-tensor.ts says why): names by index. */
export function packKvWrites(writes: readonly KvWrite[], inputs: ReadonlyMap<string, number>, outputs: ReadonlyMap<string, number>): Float64Array {
  const f: number[] = [];
  for (const w of writes) {
    f.push(outputs.get(w.output) ?? -1, inputs.get(w.feed) ?? -1, w.cacheLen, w.kvHeads, w.headDim, w.n, w.rows.length);
    for (const r of w.rows) f.push(r.row, r.cacheOffset, r.start);
  }
  return Float64Array.from(f);
}

export function unpackKvWrites(f: Float64Array, inputNames: readonly string[], outputNames: readonly string[]): KvWrite[] {
  const writes: KvWrite[] = [];
  for (let k = 0; k < f.length; ) {
    const [output, feed, cacheLen, kvHeads, headDim, n, count] = f.subarray(k, k + 7);
    k += 7;
    const rows = Array.from({ length: count }, (_, i) => ({ row: f[k + 3 * i], cacheOffset: f[k + 3 * i + 1], start: f[k + 3 * i + 2] }));
    k += 3 * count;
    writes.push({ output: outputNames[output], feed: inputNames[feed], cacheLen, kvHeads, headDim, n, rows });
  }
  return writes;
}
