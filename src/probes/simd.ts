/**
 * Float32 matrix × vector products with a hand-assembled WebAssembly SIMD kernel, so probe scoring
 * is fast in plain Node (no native code, no .wasm file, no dependency).
 *
 * Matrices are registered once (load time) into one wasm memory, each row padded with zeros to a
 * multiple of 16 floats so the kernel needs no tail loop. A matvec copies the input into the
 * matrix's own input region of that memory (its padding stays zero), makes one wasm call that loops
 * over every row (4 independent f32x4 accumulators, 16 floats per iteration), and copies the results
 * out. matvec allocates nothing except one subarray view when x is a slice wider than 32 floats
 * (see matvec); input() + matvecInput() never allocate or copy the input.
 *
 * Where WebAssembly SIMD is unavailable (or `forceScalar` is set) the same API runs plain JS loops.
 */
import { dot } from './matrix.js';

export interface MatrixHandle {
  readonly id: number;
  readonly rows: number;
  readonly cols: number;
}

export interface SimdMatVecOptions {
  /** Use the JS path even where wasm SIMD works (tests, comparisons). */
  forceScalar?: boolean;
}

/** The slice of the WebAssembly JS API used here (the project's lib settings carry no DOM types). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  Memory: new (d: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
  validate(bytes: Uint8Array): boolean;
}
const wasmApi = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

type Kernel = (w: number, x: number, out: number, rows: number, colBytes: number) => void;

export interface TriangularOptions {
  /**
   * Store the matrix as int16 (per-row scales) and quantise each input to int16 (one scale): half
   * the memory and about twice the multiply-adds per instruction, at a relative error of about
   * 1e-4 per element (the scale bound keeps int32 sums from overflowing). Default false.
   */
  int16?: boolean;
}

const PAGE = 65536;
const LANES = 16; // floats per kernel iteration; row padding unit

/** Unsigned LEB128 (wasm binary encoding; bench/lib/bandwidth.ts assembles with these too). */
export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 for i32.const (64 needs two bytes: bit 6 is the sign bit). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

export const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
/** A wasm name (ASCII). */
export const name = (s: string): number[] => [...uleb(s.length), ...Array.from(s, (c) => c.charCodeAt(0))];

/**
 * (module (import "env" "mem" (memory 0))
 *   (func (export "matvec") (param $w i32) (param $x i32) (param $out i32) (param $rows i32) (param $colBytes i32) ...))
 * Byte addresses; $colBytes is the padded row length in bytes (a positive multiple of 64).
 */
export function matvecModuleBytes(): Uint8Array {
  const I32 = 0x7f;
  const V128 = 0x7b;
  const get = (i: number) => [0x20, i];
  const set = (i: number) => [0x21, i];
  const tee = (i: number) => [0x22, i];
  const i32c = (n: number) => [0x41, ...sleb(n)];
  const simd = (op: number, ...imm: number[]) => [0xfd, ...uleb(op), ...imm];
  const load = (offset: number) => simd(0x00, 4, ...uleb(offset)); // v128.load align=16
  const ADD = simd(0xe4); // f32x4.add
  const MUL = simd(0xe6); // f32x4.mul
  const lane = (l: number) => simd(0x1f, l); // f32x4.extract_lane
  const [W, X, OUT, ROWS, COLB, XP, END, A0] = [0, 1, 2, 3, 4, 5, 6, 7];

  /**
   * One kernel body: for each row, 4 accumulators over the row (64 bytes per iteration: `product`
   * of the row's and the input's v128s, then `accumulate`), converted by `toF32` and summed into
   * out[r] as f32. f32: mul / add. int16 (matvec_i16): i32x4.dot_i16x8_s sums pairs of products,
   * i32x4.add, and each accumulator converted to f32 before the horizontal sum, so the int32 lanes
   * only need to hold one row's share (the caller bounds the quantisation for that).
   */
  const kernel = (product: number[], accumulate: number[], toF32: number[]): number[] => {
    const b: number[] = [2, 2, I32, 4, V128]; // locals: $xp $end (i32), 4 accumulators (v128)
    b.push(...get(ROWS), 0x45, 0x0d, 0); // rows == 0: return
    b.push(0x03, 0x40); // loop $row
    b.push(...simd(0x0c, ...new Array<number>(16).fill(0)), ...tee(A0), ...tee(A0 + 1), ...tee(A0 + 2), ...set(A0 + 3));
    b.push(...get(X), ...set(XP));
    b.push(...get(W), ...get(COLB), 0x6a, ...set(END));
    b.push(0x03, 0x40); // loop $col (do-while: a padded row has at least one iteration's worth)
    for (let k = 0; k < 4; k++) {
      b.push(...get(A0 + k), ...get(W), ...load(16 * k), ...get(XP), ...load(16 * k), ...product, ...accumulate, ...set(A0 + k));
    }
    b.push(...get(W), ...i32c(64), 0x6a, ...tee(W));
    b.push(...get(XP), ...i32c(64), 0x6a, ...set(XP));
    b.push(...get(END), 0x49, 0x0d, 0); // w < end (i32.lt_u): br_if $col
    b.push(0x0b);
    // out[r] = horizontal sum of (a0 + a1) + (a2 + a3)
    b.push(...get(OUT));
    b.push(...get(A0), ...toF32, ...get(A0 + 1), ...toF32, ...ADD, ...get(A0 + 2), ...toF32, ...get(A0 + 3), ...toF32, ...ADD, ...ADD, ...tee(A0));
    b.push(...lane(0), ...get(A0), ...lane(1), 0x92, ...get(A0), ...lane(2), ...get(A0), ...lane(3), 0x92, 0x92);
    b.push(0x38, 2, 0); // f32.store align=4 offset=0
    b.push(...get(OUT), ...i32c(4), 0x6a, ...set(OUT));
    b.push(...get(ROWS), ...i32c(1), 0x6b, ...tee(ROWS), 0x0d, 0); // --rows != 0: br_if $row
    b.push(0x0b, 0x0b); // end loop, end func
    return b;
  };
  const b = kernel(MUL, ADD, []);
  const q = kernel(simd(0xba), simd(0xae), simd(0xfa)); // i32x4.dot_i16x8_s, i32x4.add, f32x4.convert_i32x4_s

  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 5, I32, I32, I32, I32, I32, 0]),
    ...section(2, [1, ...name('env'), ...name('mem'), 0x02, 0x00, 0]),
    ...section(3, [2, 0, 0]),
    ...section(7, [2, ...name('matvec'), 0x00, 0, ...name('matvec_i16'), 0x00, 1]),
    ...section(10, [2, ...uleb(b.length), ...b, ...uleb(q.length), ...q]),
  ]);
}

// Compiled once per process; undefined where wasm or its SIMD proposal is missing.
let cachedModule: object | null | undefined = null;
function simdModule(): object | undefined {
  if (cachedModule === null) {
    const bytes = matvecModuleBytes();
    cachedModule = wasmApi && wasmApi.validate(bytes) ? new wasmApi.Module(bytes) : undefined;
  }
  return cachedModule;
}

/** Whether this process can run the wasm SIMD kernel. */
export function simdAvailable(): boolean {
  return simdModule() !== undefined;
}

interface Entry {
  handle: MatrixHandle;
  /** wasm path: byte address of row 0, then of this matrix's own input region (padding stays zero). */
  addr: number;
  xAddr: number;
  /** Padded row length in floats (wasm path). */
  stride: number;
  /** Scalar path: the rows, unpadded. */
  data: Float32Array | null;
  /** The view `input()` returns; dropped when memory grows (growing detaches it). */
  view: Float32Array | null;
  /**
   * Lower-triangular matrices (addLowerTriangular): row blocks of 16, block b holding rows
   * 16b..16b+15 over the first 16(b+1) columns, one kernel call each, all reading one input.
   */
  blocks: { addr: number; rows: number; colBytes: number }[] | null;
  /** int16 storage: per-row scales, the input bound, and a float staging input (input()). */
  quant: { rowScale: Float32Array; q: number; staging: Float32Array; input: Int16Array | null } | null;
}

/** Below this width a JS copy loop beats allocating a subarray for `set`. */
const LOOP_COPY_MAX = 32;

export class SimdMatVec {
  readonly simd: boolean;
  private readonly entries: Entry[] = [];
  private readonly memory: WasmMemory | null = null;
  private readonly kernel: Kernel | null = null;
  private readonly kernelI16: Kernel | null = null;
  private f32 = new Float32Array(0);
  /** End of the matrices and their input regions (bytes); the shared out region follows. */
  private end = 0;
  private maxRows = 0;
  private outAddr = 0;

  constructor(options: SimdMatVecOptions = {}) {
    const module = options.forceScalar ? undefined : simdModule();
    this.simd = module !== undefined && wasmApi !== undefined;
    if (module !== undefined && wasmApi !== undefined) {
      this.memory = new wasmApi.Memory({ initial: 1 });
      const instance = new wasmApi.Instance(module, { env: { mem: this.memory } });
      this.kernel = instance.exports.matvec as Kernel;
      this.kernelI16 = instance.exports.matvec_i16 as Kernel;
      this.f32 = new Float32Array(this.memory.buffer);
    }
  }

  /** Registers a row-major rows × cols matrix (copied, as float32). */
  addMatrix(rows: number, cols: number, data: Float32Array | Float64Array): MatrixHandle {
    if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) {
      throw new RangeError(`addMatrix: rows and cols must be positive integers, got ${rows} × ${cols}`);
    }
    if (data.length !== rows * cols) throw new RangeError(`addMatrix: data has ${data.length} values, expected ${rows * cols}`);
    const handle: MatrixHandle = Object.freeze({ id: this.entries.length, rows, cols });
    if (!this.memory) {
      this.entries.push({ handle, addr: 0, xAddr: 0, stride: cols, data: Float32Array.from(data), view: new Float32Array(cols), blocks: null, quant: null });
      return handle;
    }
    const stride = Math.ceil(cols / LANES) * LANES;
    const addr = this.end;
    const xAddr = addr + rows * stride * 4;
    this.reserve(xAddr + stride * 4, rows);
    const f = this.f32;
    const base = addr >> 2;
    for (let r = 0; r < rows; r++) {
      const to = base + r * stride;
      const from = r * cols;
      for (let j = 0; j < cols; j++) f[to + j] = data[from + j];
      f.fill(0, to + cols, to + stride); // may be the old out region: padding must be zero
    }
    f.fill(0, xAddr >> 2, (xAddr >> 2) + stride); // input padding is never written again
    this.entries.push({ handle, addr, xAddr, stride, data: null, view: null, blocks: null, quant: null });
    return handle;
  }

  /**
   * Registers the lower triangle of a row-major n × n matrix (entries above the diagonal are not
   * read): a matvec then costs n²/2 multiply-adds, not n². For whitening by an inverse Cholesky
   * factor (Mahalanobis distances).
   */
  addLowerTriangular(n: number, data: Float32Array | Float64Array, options: TriangularOptions = {}): MatrixHandle {
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`addLowerTriangular: n must be a positive integer, got ${n}`);
    if (data.length !== n * n) throw new RangeError(`addLowerTriangular: data has ${data.length} values, expected ${n * n}`);
    const handle: MatrixHandle = Object.freeze({ id: this.entries.length, rows: n, cols: n });
    if (!this.memory) {
      const lower = new Float32Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) lower[i * n + j] = data[i * n + j];
      this.entries.push({ handle, addr: 0, xAddr: 0, stride: n, data: lower, view: new Float32Array(n), blocks: [], quant: null });
      return handle;
    }
    if (!options.int16) {
      return this.addLowerBlocks(handle, n, LANES, 4, null, (i, width) => {
        const row = new Float32Array(width);
        for (let j = 0; j <= i; j++) row[j] = data[i * n + j];
        return row;
      });
    }
    // int16: blocks of 32 rows (the int16 kernel takes 32 per step), each row scaled to ±q.
    const nb = Math.ceil(n / (2 * LANES));
    // Each int32 lane adds one pair of products per step, nb steps at most: 2·q²·nb < 2³¹.
    const q = Math.min(16383, Math.floor(Math.sqrt(2 ** 30 / nb)));
    const rowScale = new Float32Array(n);
    return this.addLowerBlocks(handle, n, 2 * LANES, 2, { rowScale, q, staging: new Float32Array(n), input: null }, (i, width) => {
      let max = 0;
      for (let j = 0; j <= i; j++) max = Math.max(max, Math.abs(data[i * n + j]));
      const inv = max > 0 ? q / max : 0;
      rowScale[i] = max > 0 ? max / q : 0;
      const row = new Int16Array(width);
      for (let j = 0; j <= i; j++) row[j] = Math.round(data[i * n + j] * inv);
      return row;
    });
  }

  /**
   * Lays out a lower-triangular matrix in row blocks: block b holds rows blockRows·b.. over the
   * first blockRows·(b+1) columns (zero beyond the diagonal), `elemBytes` per element (4: float32,
   * 2: int16), then its input region. `row(i, width)` gives row i's stored values.
   */
  private addLowerBlocks(handle: MatrixHandle, n: number, blockRows: number, elemBytes: 2 | 4, quant: Entry['quant'], row: (i: number, width: number) => Float32Array | Int16Array): MatrixHandle {
    const nb = Math.ceil(n / blockRows);
    let bytes = 0;
    for (let b = 0; b < nb; b++) bytes += Math.min(blockRows, n - b * blockRows) * (b + 1) * blockRows * elemBytes;
    const addr = this.end;
    const xAddr = addr + bytes;
    const stride = nb * blockRows;
    this.reserve(xAddr + stride * elemBytes, stride); // multiples of 64 bytes: later regions stay aligned
    const view = elemBytes === 4 ? this.f32 : new Int16Array(this.f32.buffer);
    const blocks: { addr: number; rows: number; colBytes: number }[] = [];
    let at = addr / elemBytes;
    for (let b = 0; b < nb; b++) {
      const rows = Math.min(blockRows, n - b * blockRows);
      const width = (b + 1) * blockRows;
      blocks.push({ addr: at * elemBytes, rows, colBytes: width * elemBytes });
      for (let r = 0; r < rows; r++, at += width) view.set(row(b * blockRows + r, width), at);
    }
    view.fill(0, xAddr / elemBytes, xAddr / elemBytes + stride); // input padding is never written again
    this.entries.push({ handle, addr, xAddr, stride, data: null, view: null, blocks, quant });
    return handle;
  }

  /** int16 entries: quantise x[xOffset..] into the input region, run the blocks, rescale out. */
  private runInt16(e: Entry, x: Float32Array, xOffset: number, out: Float32Array): void {
    const { rowScale, q } = e.quant!;
    const n = e.handle.cols;
    if (out.length < n) throw new RangeError(`matvec: out has ${out.length} slots, needs ${n}`);
    let max = 0;
    let sum = 0; // non-finite if any input is NaN or infinite
    for (let j = 0; j < n; j++) {
      const v = Math.abs(x[xOffset + j]);
      sum += v;
      if (v > max) max = v;
    }
    if (!Number.isFinite(sum) || max === 0) {
      // All zero: W·0 = 0. A non-finite input: the result is not a number.
      out.fill(max === 0 && Number.isFinite(sum) ? 0 : Number.NaN, 0, n);
      return;
    }
    const i16 = (e.quant!.input ??= new Int16Array(this.f32.buffer, e.xAddr, n)); // dropped when memory grows
    const s = q / max;
    for (let j = 0; j < n; j++) i16[j] = Math.round(x[xOffset + j] * s);
    const kernel = this.kernelI16 as Kernel;
    const blocks = e.blocks!;
    for (let b = 0, o = this.outAddr; b < blocks.length; o += 2 * LANES * 4, b++) kernel(blocks[b].addr, e.xAddr, o, blocks[b].rows, blocks[b].colBytes);
    const f = this.f32;
    const ob = this.outAddr >> 2;
    const inv = 1 / s;
    for (let i = 0; i < n; i++) out[i] = f[ob + i] * rowScale[i] * inv;
  }

  /** Makes room for matrices up to byte `end` and an out region of `rows` floats after them. */
  private reserve(end: number, rows: number): void {
    const memory = this.memory as WasmMemory;
    this.end = end;
    this.maxRows = Math.max(this.maxRows, rows);
    this.outAddr = this.end;
    const need = this.outAddr + this.maxRows * 4;
    if (need > memory.buffer.byteLength) {
      memory.grow(Math.ceil((need - memory.buffer.byteLength) / PAGE));
      this.f32 = new Float32Array(memory.buffer); // growing detaches the old views
      for (const e of this.entries) {
        e.view = null;
        if (e.quant) e.quant.input = null;
      }
    }
  }

  /** out[i] = Σ_j W[i][j] · x[xOffset + j] for every row i of the matrix. */
  matvec(handle: MatrixHandle, x: Float32Array, xOffset: number, out: Float32Array): void {
    const e = this.entry(handle);
    const cols = handle.cols;
    if (xOffset < 0 || xOffset + cols > x.length) throw new RangeError(`matvec: x[${xOffset}..${xOffset + cols}) is outside x (length ${x.length})`);
    if (this.kernel === null) {
      if (out.length < handle.rows) throw new RangeError(`matvec: out has ${out.length} slots, needs ${handle.rows}`);
      const w = e.data as Float32Array;
      for (let i = 0; i < handle.rows; i++) out[i] = dot(w, i * cols, x, xOffset, cols);
      return;
    }
    if (e.quant) return this.runInt16(e, x, xOffset, out);
    const f = this.f32;
    const xb = e.xAddr >> 2;
    // A JS float copy loop runs ~1 ns per float here; TypedArray.set is a memcpy, ~20× faster, but
    // for a slice needs a subarray view (one small object). Callers that must not allocate write
    // into input() and call matvecInput().
    if (xOffset === 0 && x.length === cols) f.set(x, xb);
    else if (cols <= LOOP_COPY_MAX) for (let j = 0; j < cols; j++) f[xb + j] = x[xOffset + j];
    else f.set(x.subarray(xOffset, xOffset + cols), xb);
    this.run(e, out);
  }

  /**
   * The matrix's input vector (length cols), inside wasm memory on the SIMD path: fill it, then
   * matvecInput() computes with no copy in and no allocation. Re-fetch after addMatrix (growing
   * memory detaches earlier views).
   */
  input(handle: MatrixHandle): Float32Array {
    const e = this.entry(handle);
    if (e.quant) return e.quant.staging; // quantised on the way in by matvecInput
    if (e.view === null) e.view = new Float32Array(this.f32.buffer, e.xAddr, handle.cols);
    return e.view;
  }

  /** out[i] = Σ_j W[i][j] · input(handle)[j]. */
  matvecInput(handle: MatrixHandle, out: Float32Array): void {
    const e = this.entry(handle);
    if (this.kernel === null) {
      if (out.length < handle.rows) throw new RangeError(`matvecInput: out has ${out.length} slots, needs ${handle.rows}`);
      const w = e.data as Float32Array;
      const x = e.view as Float32Array;
      for (let i = 0; i < handle.rows; i++) out[i] = dot(w, i * handle.cols, x, 0, handle.cols);
      return;
    }
    if (e.quant) return this.runInt16(e, e.quant.staging, 0, out);
    this.run(e, out);
  }

  /** Bytes of wasm memory held (0 on the scalar path). */
  get memoryBytes(): number {
    return this.memory ? this.memory.buffer.byteLength : 0;
  }

  private entry(handle: MatrixHandle): Entry {
    const e = this.entries[handle.id];
    if (e === undefined || e.handle !== handle) throw new Error('handle does not belong to this SimdMatVec');
    return e;
  }

  private run(e: Entry, out: Float32Array): void {
    const rows = e.handle.rows;
    if (out.length < rows) throw new RangeError(`matvec: out has ${out.length} slots, needs ${rows}`);
    const kernel = this.kernel as Kernel;
    if (e.blocks === null) kernel(e.addr, e.xAddr, this.outAddr, rows, e.stride * 4);
    else for (let b = 0, o = this.outAddr; b < e.blocks.length; o += LANES * 4, b++) kernel(e.blocks[b].addr, e.xAddr, o, e.blocks[b].rows, e.blocks[b].colBytes);
    const f = this.f32;
    const ob = this.outAddr >> 2;
    for (let i = 0; i < rows; i++) out[i] = f[ob + i];
  }
}
