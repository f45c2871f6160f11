/**
 * safetensors reading, tensor by tensor: only headers are parsed up front and each tensor is read
 * with a positioned read, so a checkpoint far larger than the JS heap can be converted.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { lwError } from '../errors.js';

export type StDtype = 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8';
const DTYPE_BYTES: Record<StDtype, number> = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1 };

export interface TensorInfo {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  byteLength: number;
  file: string;
}

export interface SafetensorsFile {
  path: string;
  size: number;
  /** The raw header JSON text, used for fingerprints. */
  headerText: string;
  tensors: Map<string, TensorInfo>;
}

const MAX_HEADER = 100 * 1024 * 1024;

function corrupt(path: string, why: string): never {
  throw lwError('LW_ERR_MODEL_SAFETENSORS_CORRUPT', `${path}: ${why}`, { file: path });
}

export function readSafetensorsHeader(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw lwError('LW_ERR_MODEL_SHARD_MISSING', path, { file: path }, e);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < 8) corrupt(path, `file is ${size} bytes, shorter than the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen <= 0 || headerLen > MAX_HEADER || 8 + headerLen > size) corrupt(path, `header length ${headerLen} does not fit a ${size}-byte file`);
    const hb = Buffer.alloc(headerLen);
    if (readSync(fd, hb, 0, headerLen, 8) !== headerLen) corrupt(path, 'short read of header');
    const headerText = hb.toString('utf8');
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(headerText) as Record<string, unknown>;
    } catch {
      corrupt(path, 'header is not valid JSON');
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) corrupt(path, 'header is not a JSON object');
    const dataStart = 8 + headerLen;
    const tensors = new Map<string, TensorInfo>();
    for (const [name, raw] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof t !== 'object' || t === null || typeof t.dtype !== 'string') corrupt(path, `entry ${name} is not a tensor description`);
      const dtype = t.dtype as StDtype;
      if (!(dtype in DTYPE_BYTES)) {
        throw lwError('LW_ERR_MODEL_UNSUPPORTED', `${path}: tensor ${name} has dtype ${JSON.stringify(t?.dtype)}`, { feature: 'dtype' });
      }
      const shape = t.shape;
      const offs = t.data_offsets;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) corrupt(path, `tensor ${name} has a bad shape`);
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isInteger(d) && d >= 0)) corrupt(path, `tensor ${name} has bad data_offsets`);
      const [begin, end] = offs as [number, number];
      const count = (shape as number[]).reduce((a, b) => a * b, 1);
      if (end - begin !== count * DTYPE_BYTES[dtype]) corrupt(path, `tensor ${name}: ${end - begin} bytes for shape [${shape}] ${dtype}`);
      if (dataStart + end > size) corrupt(path, `tensor ${name} runs past the end of the file (truncated?)`);
      tensors.set(name, { name, dtype, shape: shape as number[], offset: dataStart + begin, byteLength: end - begin, file: path });
    }
    return { path, size, headerText, tensors };
  } finally {
    closeSync(fd);
  }
}

function readBytes(info: TensorInfo): Buffer {
  const buf = Buffer.allocUnsafe(info.byteLength);
  const fd = openSync(info.file, 'r');
  try {
    let done = 0;
    while (done < info.byteLength) {
      const n = readSync(fd, buf, done, info.byteLength - done, info.offset + done);
      if (n === 0) corrupt(info.file, `unexpected end of file reading ${info.name}`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

/** fp16 bits to float (exact). */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Reads one tensor as float32 (bf16 and fp16 widened exactly). */
export function readTensorF32(info: TensorInfo): Float32Array {
  const buf = readBytes(info);
  const n = info.byteLength / DTYPE_BYTES[info.dtype];
  switch (info.dtype) {
    case 'F32': {
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(buf);
      return out;
    }
    case 'BF16': {
      // bf16 is the top half of an f32: shift into place.
      const src = new Uint16Array(buf.buffer, buf.byteOffset, n);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      return out;
    }
    case 'F16': {
      const src = new Uint16Array(buf.buffer, buf.byteOffset, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(src[i]);
      return out;
    }
    default:
      throw lwError('LW_ERR_MODEL_UNSUPPORTED', `tensor ${info.name} has dtype ${info.dtype}, expected a float type`, { feature: 'dtype' });
  }
}

/** Reads a safetensors tensor of any dtype into a typed array (tests and fixtures). */
export function readTensorRaw(info: TensorInfo): Float32Array | BigInt64Array | Int32Array | Uint8Array {
  // Copy out of Buffer's shared pool so the typed array starts at offset 0.
  if (info.dtype === 'I64') return new BigInt64Array(new Uint8Array(readBytes(info)).buffer);
  if (info.dtype === 'I32') return new Int32Array(new Uint8Array(readBytes(info)).buffer);
  if (info.dtype === 'U8') return new Uint8Array(readBytes(info));
  return readTensorF32(info);
}

/** Writes float32 tensors as a safetensors file (activations export). */
export function encodeSafetensors(tensors: Record<string, { shape: number[]; data: Float32Array }>, metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let headerText = JSON.stringify(header);
  headerText += ' '.repeat((8 - (headerText.length % 8)) % 8); // keep data 8-byte aligned
  const hb = Buffer.from(headerText, 'utf8');
  const out = Buffer.alloc(8 + hb.length + offset);
  out.writeBigUInt64LE(BigInt(hb.length), 0);
  hb.copy(out, 8);
  let p = 8 + hb.length;
  for (const t of Object.values(tensors)) {
    Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(out, p);
    p += t.data.byteLength;
  }
  return out;
}
