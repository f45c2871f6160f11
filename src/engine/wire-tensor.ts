/**
 * What crosses between the caller and the session's own thread (session-thread.ts, session-worker.ts)
 * for one pass, and the memory a pass may borrow.
 *
 * Borrowing: onnxruntime-node refuses tensors over a SharedArrayBuffer ("Invalid argument": N-API
 * reads only plain ArrayBuffers), so the KV cache cannot be shared with the thread, and copied it
 * would cost a memcpy of the whole cache per pass (25 MB at 1,024 positions of the 0.5B shape). A
 * pass borrows it: the buffer moves to the thread for the pass and back (transfers, no copy), and
 * its owner gets it back through the `home` it registered.
 *
 * Encoding: structured clone costs per object, and a decode step of the 0.5B shape has ~60 feeds,
 * 48 cache writes and their dims: sent as objects they cost ~2.4 ms a step on the 2-core machine
 * (a step is ~17 ms). So tensors cross as numbers: names as indexes into the session's input and
 * output names, types as codes, shapes and offsets in one Float64Array, small values packed into
 * one buffer, and views of lent buffers as offsets.
 */
import * as ort from 'onnxruntime-node';

export type Tensor = ort.Tensor;

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

type TypedArray = Float32Array | Float64Array | Int32Array | Uint32Array | Int16Array | Uint16Array | Int8Array | Uint8Array | BigInt64Array | BigUint64Array;
type ArrayCtor = { new (buffer: ArrayBuffer, byteOffset: number, length: number): TypedArray; BYTES_PER_ELEMENT: number };

/** Tensor types by code, with the array onnxruntime-node holds each in. */
const TYPES: readonly [ort.Tensor.Type, ArrayCtor][] = [
  ['float32', Float32Array],
  ['int64', BigInt64Array],
  ['int32', Int32Array],
  ['float16', Uint16Array],
  ['uint8', Uint8Array],
  ['int8', Int8Array],
  ['bool', Uint8Array],
  ['uint16', Uint16Array],
  ['int16', Int16Array],
  ['uint32', Uint32Array],
  ['float64', Float64Array],
  ['uint64', BigUint64Array],
];
const TYPE_CODE = new Map(TYPES.map(([t], i) => [t, i]));

/** Tensors as numbers: per tensor [name index, type code, rank, ...dims, source, byte offset, length]. */
export interface PackedTensors {
  meta: Float64Array;
  /** The values of the tensors not lent, one after another (8-byte aligned). */
  values: ArrayBuffer;
}

const SOURCE_VALUES = -1;

/**
 * Packs `tensors` (name → tensor) by the index of each name in `names`. With `lent`, a Float32
 * view of a lendable buffer goes as an offset into that buffer, which is added to `lent` once.
 */
export function packTensors(tensors: Record<string, Tensor>, names: ReadonlyMap<string, number>, lent?: ArrayBuffer[]): PackedTensors {
  const meta: number[] = [];
  const copied: { at: number; data: TypedArray }[] = [];
  let bytes = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const index = names.get(name);
    const code = TYPE_CODE.get(t.type);
    if (index === undefined || code === undefined) throw new Error(`cannot send tensor '${name}' (${t.type}) to the session thread`);
    const data = t.data as TypedArray;
    meta.push(index, code, t.dims.length, ...t.dims);
    if (lent && data instanceof Float32Array && homes.has(data.buffer as ArrayBuffer)) {
      let i = lent.indexOf(data.buffer as ArrayBuffer);
      if (i < 0) i = lent.push(data.buffer as ArrayBuffer) - 1;
      meta.push(i, data.byteOffset, data.length);
    } else {
      meta.push(SOURCE_VALUES, bytes, data.length);
      copied.push({ at: bytes, data });
      bytes += Math.ceil(data.byteLength / 8) * 8;
    }
  }
  const values = new ArrayBuffer(bytes);
  const out = new Uint8Array(values);
  for (const c of copied) out.set(new Uint8Array(c.data.buffer, c.data.byteOffset, c.data.byteLength), c.at);
  return { meta: Float64Array.from(meta), values };
}

/** The tensors of `packTensors`, named by `names`; views of `values` and of the lent buffers (no copy). */
export function unpackTensors(p: PackedTensors, names: readonly string[], lent: readonly ArrayBuffer[] = []): Record<string, Tensor> {
  const r: Record<string, Tensor> = {};
  const m = p.meta;
  for (let k = 0; k < m.length; ) {
    const name = names[m[k]];
    const [type, Ctor] = TYPES[m[k + 1]];
    const rank = m[k + 2];
    const dims = Array.from(m.subarray(k + 3, k + 3 + rank));
    const [source, offset, length] = [m[k + 3 + rank], m[k + 4 + rank], m[k + 5 + rank]];
    k += 6 + rank;
    const data = new Ctor(source === SOURCE_VALUES ? p.values : lent[source], offset, length);
    r[name] = new ort.Tensor(type, data as Float32Array, dims);
  }
  return r;
}
