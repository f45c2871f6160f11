/**
 * Memory bandwidth: a sequential read of a large float32 array, summed with WebAssembly SIMD
 * (16-byte loads, 4 independent accumulators, 128 bytes per iteration) on 1..N worker threads,
 * each thread reading its own contiguous slice of one shared memory. No native code, so any
 * machine with node can take the measurement beside its own engine figures.
 *
 * What it measures: bytes of the array ÷ wall time from the first thread's start to the last
 * thread's end, for `passes` passes over the array (the array is written once first, so page
 * faults are outside the timing). That is the read bandwidth that bounds decode: decode reads
 * every weight once per token.
 */
import { Worker } from 'node:worker_threads';
import { name, section, uleb } from '../../src/probes/simd.js';
import { median } from './stats.js';

export interface BandwidthOptions {
  /** Array size in bytes (multiple of 64 KiB pages); default 1 GiB. */
  bytes?: number;
  threads?: number;
  /** Passes over the array per repetition. */
  passes?: number;
  repetitions?: number;
}

export interface BandwidthResult {
  method: string;
  bytes: number;
  threads: number;
  passes: number;
  /** GB/s (1e9 bytes) of each repetition. */
  gbPerSec: number[];
  medianGbPerSec: number;
  maxGbPerSec: number;
}

/** (module (import "env" "mem" (memory pages pages shared)) (func (export "sum") (param i32 i32) (result f32) ...)) */
export function sumModuleBytes(pages: number): Uint8Array {
  const I32 = 0x7f;
  const F32 = 0x7d;
  const V128 = 0x7b;
  const simd = (op: number, ...imm: number[]) => [0xfd, ...uleb(op), ...imm];
  const load = (offset: number) => simd(0x00, ...uleb(4), ...uleb(offset)); // v128.load align=16
  const F32X4_ADD = 0xe4;
  const body: number[] = [];
  // locals: 4 × v128 accumulators (indices 2..5)
  body.push(1, 4, V128);
  body.push(0x02, 0x40, 0x03, 0x40); // block, loop
  body.push(0x20, 0, 0x20, 1, 0x4f, 0x0d, 1); // if start >= end: br 1
  for (let i = 0; i < 8; i++) {
    const acc = 2 + (i % 4);
    body.push(0x20, acc, 0x20, 0, ...load(i * 16), ...simd(F32X4_ADD), 0x21, acc);
  }
  body.push(0x20, 0, 0x41, ...uleb(128), 0x6a, 0x21, 0); // start += 128 (i32.const 128 is signed LEB: 0x80 0x01)
  body.push(0x0c, 0, 0x0b, 0x0b); // br 0, end loop, end block
  body.push(0x20, 2, 0x20, 3, ...simd(F32X4_ADD), 0x20, 4, ...simd(F32X4_ADD), 0x20, 5, ...simd(F32X4_ADD));
  // horizontal sum of the 4 lanes: keep the vector in local 2
  body.push(0x21, 2);
  for (let lane = 0; lane < 4; lane++) {
    body.push(0x20, 2, ...simd(0x1f, lane));
    if (lane > 0) body.push(0x92); // f32.add
  }
  body.push(0x0b);
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 2, I32, I32, 1, F32]),
    ...section(2, [1, ...name('env'), ...name('mem'), 0x02, 0x03, ...uleb(pages), ...uleb(pages)]),
    ...section(3, [1, 0]),
    ...section(7, [1, ...name('sum'), 0x00, 0]),
    ...section(10, [1, ...uleb(body.length), ...body]),
  ];
  return Uint8Array.from(bytes);
}

// i32.const takes a signed LEB128: 128 encodes as 0x80 0x01, the same bytes as unsigned.

/** The slice of the WebAssembly JS API used here (the project's lib settings carry no DOM types). */
interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => { buffer: ArrayBufferLike };
  compile(bytes: Uint8Array): Promise<unknown>;
  validate(bytes: Uint8Array): boolean;
}
export const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { module, memory, start, end, passes } = workerData;
const inst = new WebAssembly.Instance(module, { env: { mem: memory } });
const sum = inst.exports.sum;
// Warm up until V8 has tiered the function up from Liftoff to TurboFan (a few full passes).
for (let i = 0; i < 3; i++) sum(start, end);
parentPort.on('message', () => {
  const t0 = performance.timeOrigin + performance.now();
  let s = 0;
  for (let p = 0; p < passes; p++) s += sum(start, end);
  const t1 = performance.timeOrigin + performance.now();
  parentPort.postMessage({ t0, t1, s });
});
parentPort.postMessage('ready');
`;

export async function measureBandwidth(o: BandwidthOptions = {}): Promise<BandwidthResult> {
  const PAGE = 65536;
  const bytes = Math.ceil((o.bytes ?? 2 ** 30) / PAGE) * PAGE;
  const threads = o.threads ?? 2;
  const passes = o.passes ?? 4;
  const reps = o.repetitions ?? 5;
  const pages = bytes / PAGE;
  const memory = new wasm.Memory({ initial: pages, maximum: pages, shared: true });
  new Float32Array(memory.buffer).fill(1); // touch every page before timing
  const module = await wasm.compile(sumModuleBytes(pages));
  const slice = Math.floor(bytes / threads / 128) * 128;
  const workers: Worker[] = [];
  try {
    await Promise.all(
      Array.from({ length: threads }, (_, i) => {
        const w = new Worker(WORKER, { eval: true, workerData: { module, memory, start: i * slice, end: (i + 1) * slice, passes } });
        workers.push(w);
        return new Promise<void>((resolve, reject) => {
          w.once('message', () => resolve());
          w.once('error', reject);
        });
      }),
    );
    const gbPerSec: number[] = [];
    for (let r = 0; r < reps; r++) {
      const done = workers.map((w) => new Promise<{ t0: number; t1: number }>((resolve) => w.once('message', resolve)));
      for (const w of workers) w.postMessage('go');
      const times = await Promise.all(done);
      const wall = (Math.max(...times.map((t) => t.t1)) - Math.min(...times.map((t) => t.t0))) / 1000;
      gbPerSec.push((slice * threads * passes) / wall / 1e9);
    }
    return {
      method: `WebAssembly SIMD f32x4 sum, ${threads} worker thread(s), sequential read of a ${(bytes / 2 ** 30).toFixed(2)} GiB float32 array, ${passes} passes per repetition`,
      bytes,
      threads,
      passes,
      gbPerSec,
      medianGbPerSec: median(gbPerSec),
      maxGbPerSec: Math.max(...gbPerSec),
    };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
