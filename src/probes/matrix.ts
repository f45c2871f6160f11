/**
 * Dense row-major matrices and the few linear-algebra kernels the probes need (dot products,
 * Cholesky, triangular solves). Plain TypeScript on typed arrays: no dependency, no randomness,
 * and a fixed loop order, so the same input gives the same bits on every run.
 */

/** `rows × cols`, row-major: element (i, j) is `data[i * cols + j]`. Activations arrive as Float32. */
export interface Matrix {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float32Array | Float64Array;
}

/** Wrap row-major data as a Matrix, checking that the length fits. */
export function matrix(rows: number, cols: number, data: Float32Array | Float64Array): Matrix {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 0 || cols < 0) {
    throw new RangeError(`matrix: rows and cols must be non-negative integers, got ${rows}×${cols}`);
  }
  if (data.length < rows * cols) throw new RangeError(`matrix: ${rows}×${cols} needs ${rows * cols} values, got ${data.length}`);
  return { rows, cols, data };
}

/** Build a Matrix from nested arrays (tests, small tools). */
export function matrixFromRows(rows: readonly (readonly number[])[]): Matrix {
  const n = rows.length;
  const d = n === 0 ? 0 : rows[0].length;
  const data = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    if (rows[i].length !== d) throw new RangeError(`matrixFromRows: row ${i} has ${rows[i].length} values, expected ${d}`);
    data.set(rows[i], i * d);
  }
  return { rows: n, cols: d, data };
}

/**
 * Σ_j a[ao + j] · b[bo + j] for j < n, accumulated in float64. Unrolled by four: the hot loop of
 * every probe, and V8 runs the unrolled form noticeably faster on long rows.
 */
export function dot(
  a: Float32Array | Float64Array,
  ao: number,
  b: Float32Array | Float64Array,
  bo: number,
  n: number,
): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let j = 0;
  for (; j + 3 < n; j += 4) {
    s0 += a[ao + j] * b[bo + j];
    s1 += a[ao + j + 1] * b[bo + j + 1];
    s2 += a[ao + j + 2] * b[bo + j + 2];
    s3 += a[ao + j + 3] * b[bo + j + 3];
  }
  for (; j < n; j++) s0 += a[ao + j] * b[bo + j];
  return s0 + s1 + (s2 + s3);
}

/** y[yo + j] += a · x[xo + j] for j < n (unrolled like `dot`). */
export function axpy(a: number, x: Float32Array | Float64Array, xo: number, y: Float64Array, yo: number, n: number): void {
  let j = 0;
  for (; j + 3 < n; j += 4) {
    y[yo + j] += a * x[xo + j];
    y[yo + j + 1] += a * x[xo + j + 1];
    y[yo + j + 2] += a * x[xo + j + 2];
    y[yo + j + 3] += a * x[xo + j + 3];
  }
  for (; j < n; j++) y[yo + j] += a * x[xo + j];
}

/**
 * In-place Cholesky of a symmetric positive-definite n×n matrix (row-major, full storage; only
 * the lower triangle is read): afterwards the lower triangle holds L with A = L Lᵀ and the strict
 * upper triangle is zeroed. Returns false (matrix left partly overwritten) when A is not
 * numerically positive definite.
 */
export function choleskyInPlace(a: Float64Array, n: number): boolean {
  for (let j = 0; j < n; j++) {
    const rj = j * n;
    let diag = a[rj + j] - dot(a, rj, a, rj, j);
    if (!(diag > 0) || !Number.isFinite(diag)) return false;
    diag = Math.sqrt(diag);
    a[rj + j] = diag;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      a[ri + j] = (a[ri + j] - dot(a, ri, a, rj, j)) / diag;
    }
  }
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) a[i * n + j] = 0;
  return true;
}

/** Solve A x = b given the Cholesky factor L (full row-major storage) of A; returns a new x. */
export function choleskySolve(l: Float64Array, n: number, b: ArrayLike<number>): Float64Array {
  const x = new Float64Array(n);
  for (let i = 0; i < n; i++) x[i] = (b[i] - dot(l, i * n, x, 0, i)) / l[i * n + i];
  for (let i = n - 1; i >= 0; i--) {
    let s = x[i];
    for (let k = i + 1; k < n; k++) s -= l[k * n + i] * x[k];
    x[i] = s / l[i * n + i];
  }
  return x;
}

/** Pack the lower triangle of a full row-major n×n matrix row by row: L00, L10, L11, L20, L21, L22, … */
export function packLower(full: Float64Array, n: number): Float64Array {
  const out = new Float64Array((n * (n + 1)) / 2);
  let k = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) out[k++] = full[i * n + j];
  return out;
}
