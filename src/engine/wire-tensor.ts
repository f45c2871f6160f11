/**
 * What crosses between the caller and the session's own thread for one pass (session-thread.ts,
 * session-worker.ts).
 *
 * Structured clone costs per object, and a decode step of the 0.5B shape has ~60 feeds, 48 cache
 * writes and their shapes: sent as objects they cost ~2.4 ms a step on the 2-core machine (a step
 * is ~17 ms). So tensors cross as numbers: names as indexes into the session's input and output
 * names, types as codes, shapes and offsets in one Float64Array, small values packed into one
 * buffer, and the KV cache, which stays on the session's thread (kv-memory.ts), as regions of it.
 */
import * as ort from 'onnxruntime-node';
import { isResident, type Feed } from './kv-memory.js';

export type Tensor = ort.Tensor;

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

/**
 * Tensors as numbers: per tensor [name index, type code, rank, ...dims, source, offset, length];
 * source -1: bytes [offset, ...) of `values`; else the resident memory of that id, from float `offset`.
 */
export interface PackedTensors {
  meta: Float64Array;
  /** The values of the tensors that are not resident regions, one after another (8-byte aligned). */
  values: ArrayBuffer;
}

const SOURCE_VALUES = -1;

/** Packs `tensors` (name → tensor or resident region) by the index of each name in `names`. */
export function packTensors(tensors: Record<string, Feed>, names: ReadonlyMap<string, number>): PackedTensors {
  const meta: number[] = [];
  const copied: { at: number; data: TypedArray }[] = [];
  let bytes = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const index = names.get(name);
    if (isResident(t)) {
      if (index === undefined) throw new Error(`cannot send feed '${name}' to the session thread`);
      meta.push(index, TYPE_CODE.get('float32')!, t.dims.length, ...t.dims, t.resident, t.offset, t.length);
      continue;
    }
    const code = TYPE_CODE.get(t.type);
    if (index === undefined || code === undefined) throw new Error(`cannot send tensor '${name}' (${t.type}) to the session thread`);
    const data = t.data as TypedArray;
    meta.push(index, code, t.dims.length, ...t.dims, SOURCE_VALUES, bytes, data.length);
    copied.push({ at: bytes, data });
    bytes += Math.ceil(data.byteLength / 8) * 8;
  }
  const values = new ArrayBuffer(bytes);
  const out = new Uint8Array(values);
  for (const c of copied) out.set(new Uint8Array(c.data.buffer, c.data.byteOffset, c.data.byteLength), c.at);
  return { meta: Float64Array.from(meta), values };
}

/** The tensors of `packTensors`, named by `names`; views of `values` and of the resident memories (no copy). */
export function unpackTensors(p: PackedTensors, names: readonly string[], resident: (id: number) => Float32Array = noResident): Record<string, Tensor> {
  const r: Record<string, Tensor> = {};
  const m = p.meta;
  for (let k = 0; k < m.length; ) {
    const name = names[m[k]];
    const [type, Ctor] = TYPES[m[k + 1]];
    const rank = m[k + 2];
    const dims = Array.from(m.subarray(k + 3, k + 3 + rank));
    const [source, offset, length] = [m[k + 3 + rank], m[k + 4 + rank], m[k + 5 + rank]];
    k += 6 + rank;
    const data = source === SOURCE_VALUES ? new Ctor(p.values, offset, length) : resident(source).subarray(offset, offset + length);
    r[name] = new ort.Tensor(type, data as Float32Array, dims);
  }
  return r;
}

function noResident(id: number): Float32Array {
  throw new Error(`no resident memory ${id} here`);
}
