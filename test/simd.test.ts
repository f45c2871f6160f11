import { describe, expect, it } from 'vitest';
import { createRng, type Rng } from '../src/rng.js';
import { matvecModuleBytes, simdAvailable, SimdMatVec, type MatrixHandle } from '../src/probes/simd.js';

// Float32 sums of up to 1000 terms in 16 partial sums: error well under 1e-5 of Σ|w·x|.
const REL_TOL = 1e-5;

const gaussians = (rng: Rng, n: number, f64 = false) => {
  const a = f64 ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.gaussian();
  return a;
};

/** Float64 reference on the float32-rounded inputs the kernel sees; also Σ|w·x| per row. */
function reference(rows: number, cols: number, w: ArrayLike<number>, x: Float32Array, xOffset: number) {
  const dot: number[] = [];
  const abs: number[] = [];
  for (let i = 0; i < rows; i++) {
    let s = 0;
    let a = 0;
    for (let j = 0; j < cols; j++) {
      const p = Math.fround(w[i * cols + j]) * x[xOffset + j];
      s += p;
      a += Math.abs(p);
    }
    dot.push(s);
    abs.push(a);
  }
  return { dot, abs };
}

const SHAPES: [number, number][] = [];
for (const rows of [1, 3, 32]) for (const cols of [1, 5, 16, 17, 384, 896, 1000]) SHAPES.push([rows, cols]);

function checkAll(m: SimdMatVec, seed: number): void {
  const rng = createRng(seed);
  // Several matrices in one instance, registered before any matvec; alternate float32/float64 data.
  const mats = SHAPES.map(([rows, cols], k) => {
    const w = gaussians(rng, rows * cols, k % 2 === 1);
    return { rows, cols, w, h: m.addMatrix(rows, cols, w) };
  });
  // Interleave matrices of different widths, so stale scratch from a wider input is exercised.
  for (const order of [mats, [...mats].reverse()]) {
    for (const { rows, cols, w, h } of order) {
      for (const xOffset of [0, 7]) {
        const x = gaussians(rng, xOffset + cols + 3) as Float32Array;
        const out = new Float32Array(rows + 2).fill(NaN);
        m.matvec(h, x, xOffset, out);
        const ref = reference(rows, cols, w, x, xOffset);
        for (let i = 0; i < rows; i++) {
          const err = Math.abs(out[i] - ref.dot[i]);
          if (!(err <= REL_TOL * ref.abs[i] + 1e-30)) {
            throw new Error(`${rows}×${cols} offset ${xOffset} row ${i}: got ${out[i]}, want ${ref.dot[i]} (Σ|w·x| ${ref.abs[i]})`);
          }
        }
        expect(Number.isNaN(out[rows]) && Number.isNaN(out[rows + 1])).toBe(true); // untouched past rows
        // The copy-free path gives the same numbers.
        m.input(h).set(x.subarray(xOffset, xOffset + cols));
        const out2 = new Float32Array(rows);
        m.matvecInput(h, out2);
        expect(out2).toEqual(out.subarray(0, rows));
      }
    }
  }
}

describe('SimdMatVec', () => {
  it('the hand-assembled module validates where wasm SIMD exists (Node 20 has it)', () => {
    expect(simdAvailable()).toBe(true);
    expect(new SimdMatVec().simd).toBe(true);
    expect(matvecModuleBytes().slice(0, 4)).toEqual(Uint8Array.from([0, 0x61, 0x73, 0x6d]));
  });

  it('wasm path matches a float64 reference on all shapes, many matrices, x offsets', () => {
    const m = new SimdMatVec();
    checkAll(m, 1);
    expect(m.memoryBytes).toBeGreaterThan(0);
  });

  it('scalar fallback (forceScalar) matches the same reference', () => {
    const m = new SimdMatVec({ forceScalar: true });
    expect(m.simd).toBe(false);
    expect(m.memoryBytes).toBe(0);
    checkAll(m, 2);
  });

  it('matrices added after a matvec (memory growth) keep earlier results right', () => {
    const m = new SimdMatVec();
    const rng = createRng(3);
    const w1 = gaussians(rng, 32 * 384);
    const h1 = m.addMatrix(32, 384, w1);
    const x = gaussians(rng, 1000) as Float32Array;
    const before = new Float32Array(32);
    m.matvec(h1, x, 0, new Float32Array(32));
    m.matvec(h1, x, 5, before);
    const handles: MatrixHandle[] = [];
    for (let k = 0; k < 20; k++) handles.push(m.addMatrix(64, 1000, gaussians(rng, 64 * 1000))); // > 5 MB: several grows
    const after = new Float32Array(32);
    m.matvec(h1, x, 5, after);
    expect(after).toEqual(before);
    const view = m.input(h1);
    m.addMatrix(64, 1000, gaussians(rng, 64 * 1000));
    expect(view.length).toBe(0); // detached by growth: input() hands out a fresh one
    m.input(h1).set(x.subarray(5, 5 + 384));
    m.matvecInput(h1, after);
    expect(after).toEqual(before);
    const out = new Float32Array(64);
    m.matvec(handles[19], x, 0, out);
    expect(out.every(Number.isFinite)).toBe(true);
  });

  it('rejects bad shapes, foreign handles and short buffers', () => {
    const a = new SimdMatVec();
    const b = new SimdMatVec();
    expect(() => a.addMatrix(2, 3, new Float32Array(5))).toThrow(RangeError);
    expect(() => a.addMatrix(0, 3, new Float32Array(0))).toThrow(RangeError);
    const h = a.addMatrix(2, 3, new Float32Array(6));
    b.addMatrix(2, 3, new Float32Array(6));
    expect(() => b.matvec(h, new Float32Array(3), 0, new Float32Array(2))).toThrow(/does not belong/);
    expect(() => a.matvec(h, new Float32Array(3), 1, new Float32Array(2))).toThrow(RangeError);
    expect(() => a.matvec(h, new Float32Array(3), 0, new Float32Array(1))).toThrow(RangeError);
  });
});

describe('SimdMatVec.addLowerTriangular', () => {
  for (const forceScalar of [false, true]) {
    it(`lower triangle only, any n, beside ordinary matrices (${forceScalar ? 'scalar' : 'wasm'} path)`, () => {
      const m = new SimdMatVec({ forceScalar });
      const rng = createRng(11);
      const plain = gaussians(rng, 3 * 20);
      const hPlain = m.addMatrix(3, 20, plain);
      const cases = [1, 5, 16, 17, 33, 384].map((n) => {
        const w = gaussians(rng, n * n, n % 2 === 1);
        return { n, w, h: m.addLowerTriangular(n, w) };
      });
      for (const { n, w, h } of [...cases, ...cases.reverse()]) {
        const lower = Float64Array.from(w, (v, k) => (k % n <= Math.floor(k / n) ? v : 0));
        for (const xOffset of [0, 3]) {
          const x = gaussians(rng, xOffset + n) as Float32Array;
          const out = new Float32Array(n);
          m.matvec(h, x, xOffset, out);
          const ref = reference(n, n, lower, x, xOffset);
          for (let i = 0; i < n; i++) expect(Math.abs(out[i] - ref.dot[i])).toBeLessThanOrEqual(REL_TOL * ref.abs[i] + 1e-30);
          m.input(h).set(x.subarray(xOffset, xOffset + n));
          const out2 = new Float32Array(n);
          m.matvecInput(h, out2);
          expect(Array.from(out2)).toEqual(Array.from(out));
        }
      }
      // The ordinary matrix registered first is unaffected.
      const x = gaussians(rng, 20) as Float32Array;
      const out = new Float32Array(3);
      m.matvec(hPlain, x, 0, out);
      const ref = reference(3, 20, plain, x, 0);
      for (let i = 0; i < 3; i++) expect(Math.abs(out[i] - ref.dot[i])).toBeLessThanOrEqual(REL_TOL * ref.abs[i] + 1e-30);
    });
  }
});

describe('SimdMatVec.addLowerTriangular int16', () => {
  it('int16 storage and input: within the rounding bound, zero and non-finite inputs handled', () => {
    const m = new SimdMatVec();
    const rng = createRng(5);
    const f32 = m.addMatrix(2, 7, gaussians(rng, 14)); // a float matrix in the same memory
    for (const n of [1, 17, 33, 64, 384, 896]) {
      const w = gaussians(rng, n * n, true);
      const h = m.addLowerTriangular(n, w, { int16: true });
      const lower = Float64Array.from(w, (v, k) => (k % n <= Math.floor(k / n) ? v : 0));
      for (const xOffset of [0, 5]) {
        const x = gaussians(rng, xOffset + n) as Float32Array;
        const out = new Float32Array(n);
        m.matvec(h, x, xOffset, out);
        const ref = reference(n, n, lower, x, xOffset);
        // Rounding to int16 moves each w by ≤ max|w_row|/2q and each x by ≤ max|x|/2q, q ≥ 1000
        // for these n: |error| ≤ (Σ|w|·max|x| + Σ|x|·max|w|) / 2000 per row.
        let maxX = 0;
        for (let j = 0; j < n; j++) maxX = Math.max(maxX, Math.abs(x[xOffset + j]));
        for (let i = 0; i < n; i++) {
          let sw = 0;
          let sx = 0;
          let mw = 0;
          for (let j = 0; j <= i; j++) {
            sw += Math.abs(lower[i * n + j]);
            sx += Math.abs(x[xOffset + j]);
            mw = Math.max(mw, Math.abs(lower[i * n + j]));
          }
          expect(Math.abs(out[i] - ref.dot[i])).toBeLessThanOrEqual((sw * maxX + sx * mw) / 2000 + 1e-9);
        }
        m.input(h).set(x.subarray(xOffset, xOffset + n));
        const out2 = new Float32Array(n);
        m.matvecInput(h, out2);
        expect(Array.from(out2)).toEqual(Array.from(out));
      }
      const zero = new Float32Array(n);
      m.matvec(h, new Float32Array(n), 0, zero);
      expect(zero.every((v) => v === 0)).toBe(true);
      const bad = new Float32Array(n).fill(1);
      bad[0] = Number.NaN;
      const nan = new Float32Array(n);
      m.matvec(h, bad, 0, nan);
      expect(nan.every((v) => Number.isNaN(v))).toBe(true);
    }
    const out = new Float32Array(2);
    const x = gaussians(rng, 7) as Float32Array;
    m.matvec(f32, x, 0, out);
    expect(Number.isFinite(out[0])).toBe(true);
  });
});
