/**
 * ns per multiply-add of probe-style matrix × vector products: scalar JS (matrix.dot per row, what
 * probe scoring uses) vs SimdMatVec's wasm SIMD kernel (and its scalar fallback), at rows 32 × cols
 * 384 and rows 1 × cols 896. Medians of several repetitions; the input starts at a non-zero offset
 * as in a [positions, d] activation tensor. "wasm SIMD" is matvec (input copied in per call);
 * "matvecInput" is the copy-free path (input already written into input()).
 *
 *   npx tsx bench/simd.ts [--out FILE] [--reps N]
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { dot } from '../src/probes/matrix.js';
import { createRng } from '../src/rng.js';
import { SimdMatVec } from '../src/probes/simd.js';
import { median } from './lib/stats.js';

const { values: v } = parseArgs({ options: { out: { type: 'string' }, reps: { type: 'string' } } });
const reps = Number(v.reps ?? 9);
const TARGET_MACS = 2e8; // per repetition: ~20-100 ms, long enough for a stable timer reading

type Kernel = (out: Float32Array) => void;

function time(kernel: Kernel, rows: number, cols: number): { nsPerMac: number[]; median: number } {
  const out = new Float32Array(rows);
  const iters = Math.max(1, Math.round(TARGET_MACS / (rows * cols)));
  for (let i = 0; i < Math.min(iters, 20000); i++) kernel(out); // warm up (tier up to TurboFan)
  const nsPerMac: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) kernel(out);
    const ns = Number(process.hrtime.bigint() - t0);
    nsPerMac.push(ns / (iters * rows * cols));
  }
  return { nsPerMac, median: median(nsPerMac) };
}

const results = [];
for (const [rows, cols] of [
  [32, 384],
  [1, 896],
] as const) {
  const rng = createRng(rows * 7919 + cols);
  const w = Float32Array.from({ length: rows * cols }, () => rng.gaussian());
  const xOffset = 3 * cols; // fourth position of a [positions, d] tensor
  const x = Float32Array.from({ length: 8 * cols }, () => rng.gaussian());
  const wasm = new SimdMatVec();
  const fallback = new SimdMatVec({ forceScalar: true });
  const hw = wasm.addMatrix(rows, cols, w);
  const hf = fallback.addMatrix(rows, cols, w);
  const scalar = time((out) => {
    for (let i = 0; i < rows; i++) out[i] = dot(w, i * cols, x, xOffset, cols);
  }, rows, cols);
  const simd = time((out) => wasm.matvec(hw, x, xOffset, out), rows, cols);
  const input = wasm.input(hw);
  input.set(x.subarray(xOffset, xOffset + cols));
  const simdInput = time((out) => wasm.matvecInput(hw, out), rows, cols);
  const fb = time((out) => fallback.matvec(hf, x, xOffset, out), rows, cols);
  const row = {
    rows,
    cols,
    scalarJsNsPerMac: scalar.median,
    wasmSimdNsPerMac: simd.median,
    wasmSimdInputNsPerMac: simdInput.median,
    fallbackNsPerMac: fb.median,
    speedup: scalar.median / simd.median,
    samples: { scalarJs: scalar.nsPerMac, wasmSimd: simd.nsPerMac, wasmSimdInput: simdInput.nsPerMac, fallback: fb.nsPerMac },
  };
  results.push(row);
  console.log(
    `${rows} × ${cols}: scalar JS ${scalar.median.toFixed(3)} ns/MAC, wasm SIMD ${simd.median.toFixed(3)} ns/MAC ` +
      `(input()+matvecInput, no copy: ${simdInput.median.toFixed(3)}), fallback ${fb.median.toFixed(3)}; ${row.speedup.toFixed(1)}× faster`,
  );
}

const report = {
  method: `median of ${reps} repetitions of ~${TARGET_MACS / 1e6}M multiply-adds each, one thread, after warm-up; ns per multiply-add per call, matvec including its input/output copies`,
  node: process.version,
  simd: new SimdMatVec().simd,
  results,
};
if (v.out) writeFileSync(v.out, JSON.stringify(report, null, 2) + '\n');
