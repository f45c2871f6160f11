/**
 * Where a KV pool's floats live (kv-pool.ts): on this thread (a Float32Array), or resident on the
 * session's own thread (session-thread.ts), which alone reads and writes them.
 *
 * Why resident: onnxruntime-node refuses tensors over a SharedArrayBuffer (N-API reads only plain
 * ArrayBuffers), so memory both threads see is not possible; copying the cache per pass costs a
 * memcpy of all of it (25 MB at 1,024 positions of the 0.5B shape), and moving it (a transfer there
 * and back) made V8 count it as new external memory twice a pass: a full GC every few passes, and
 * 0.5B int4 decode fell from ~60 to 6–15 tok/s on the 2-core machine. So the session's thread owns
 * the cache: a pass names regions of it (ResidentFeed), writes its new keys and values into it there
 * (kv-write.ts), and growth copies there too.
 */
import { f32Tensor, type Tensor } from './runtime.js';

/** A feed over a region of memory resident on the session's thread. */
export interface ResidentFeed {
  resident: number;
  /** Floats. */
  offset: number;
  length: number;
  dims: readonly number[];
}

export type Feed = Tensor | ResidentFeed;

export function isResident(f: Feed): f is ResidentFeed {
  return 'resident' in f;
}

export interface KvMemory {
  /** Reallocates to `floats` (zeros), moving runs of the old contents: [from, to, length] in floats. */
  resize(floats: number, moves: Float64Array): void;
  /** A feed over floats [offset, offset + length), shaped `dims`. */
  feed(offset: number, length: number, dims: readonly number[]): Feed;
  free(): void;
}

/** Floats on this thread. */
export class HostKvMemory implements KvMemory {
  private data: Float32Array;

  constructor(floats: number) {
    this.data = new Float32Array(floats);
  }

  resize(floats: number, moves: Float64Array): void {
    const next = new Float32Array(floats);
    moveRuns(this.data, next, moves);
    this.data = next;
  }

  feed(offset: number, length: number, dims: readonly number[]): Feed {
    return f32Tensor(this.data.subarray(offset, offset + length), dims);
  }

  free(): void {
    this.data = new Float32Array(0);
  }
}

/** Copies each [from, to, length] run of `src` into `dst`. */
export function moveRuns(src: Float32Array, dst: Float32Array, moves: Float64Array): void {
  for (let k = 0; k < moves.length; k += 3) dst.set(src.subarray(moves[k], moves[k] + moves[k + 2]), moves[k + 1]);
}
