/**
 * Tensors as they cross between threads (session-thread.ts, session-worker.ts), and memory a pass on
 * the session's own thread may borrow.
 *
 * onnxruntime-node refuses tensors over a SharedArrayBuffer ("Invalid argument": N-API reads only
 * plain ArrayBuffers), so the KV cache cannot be shared with the session's thread; copied, it would
 * cost a memcpy of the whole cache per pass (25 MB at 1,024 positions of the 0.5B shape). Instead a
 * pass borrows it: the buffers move to the session's thread for the pass and move back with its
 * outputs (transfers, no copy), and their owner gets them back through the `home` it registered.
 */
import * as ort from 'onnxruntime-node';

export type Tensor = ort.Tensor;

export interface WireTensor {
  type: ort.Tensor.Type;
  data: ort.Tensor.DataType;
  dims: readonly number[];
}

export function toWire(t: ort.Tensor): WireTensor {
  return { type: t.type, data: t.data, dims: t.dims };
}

export function fromWire(w: WireTensor): ort.Tensor {
  return new ort.Tensor(w.type, w.data as Float32Array, w.dims);
}

/** The buffers of `tensors` that can move to another thread. */
export function transferable(tensors: Iterable<WireTensor>): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>();
  for (const t of tensors) if (ArrayBuffer.isView(t.data) && t.data.buffer instanceof ArrayBuffer) buffers.add(t.data.buffer);
  return [...buffers];
}

/** Where each lendable buffer goes back to after a pass. */
const homes = new WeakMap<ArrayBuffer, (moved: Float32Array) => void>();

/**
 * `n` floats a pass may borrow. The caller keeps them through `home`, which receives the array anew
 * after every pass that borrowed it (the old one is then detached: empty).
 */
export function lendableFloats(n: number, home: (moved: Float32Array) => void): Float32Array {
  const a = new Float32Array(n);
  homes.set(a.buffer, home);
  return a;
}

/** The lendable buffers among `tensors` (each once). */
export function lendable(tensors: Iterable<WireTensor>): ArrayBuffer[] {
  return transferable(tensors).filter((b) => homes.has(b));
}

/** Hands buffers back to their owners: `moved[i]` is `lent[i]` after its trip to another thread. */
export function returnLent(lent: readonly ArrayBuffer[], moved: readonly ArrayBuffer[]): void {
  lent.forEach((old, i) => {
    const home = homes.get(old);
    if (!home) return;
    homes.delete(old);
    homes.set(moved[i], home);
    home(new Float32Array(moved[i]));
  });
}
