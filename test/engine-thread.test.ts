/**
 * Forward passes on the session's own thread (runtime.ts ownThread, session-worker.ts): the event
 * loop runs while a pass does, the results are those of a session on the calling thread, and the
 * KV cache lent to each pass comes back (decode after prefill, batched rows, growth past 256).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyKvWrites, packKvWrites, unpackKvWrites, type KvWrite } from '../src/engine/kv-write.js';
import { f32Tensor, i32Tensor, i64Tensor } from '../src/engine/runtime.js';
import { moveRuns } from '../src/engine/kv-memory.js';
import { packTensors, unpackTensors } from '../src/engine/wire-tensor.js';
import { Engine } from '../src/engine/engine.js';
import type { GenerateRequest, Step } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { CODE16M, TEST_CACHE, maxAbsDiff } from './helpers.js';

async function collect(engine: Engine, req: GenerateRequest): Promise<Step[]> {
  const steps: Step[] = [];
  for await (const s of engine.generate(req)) steps.push(s);
  return steps;
}
const tokens = (steps: Step[]) => steps.filter((s) => s.kind === 'token').map((s) => s.tokenId);

/** Ticks of a 1 ms interval while `pass` runs, and how long it ran. */
async function ticksDuring(pass: () => Promise<unknown>): Promise<{ ticks: number; ms: number }> {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  // Let the interval arm before the pass starts.
  await new Promise((r) => setTimeout(r, 5));
  ticks = 0;
  const t0 = performance.now();
  await pass();
  const ms = performance.now() - t0;
  clearInterval(timer);
  return { ticks, ms };
}

describe('forward passes on the session thread (qwen2-code-16m, cpu)', () => {
  let threaded: Engine;
  let onLoop: Engine;
  const tap = residPost(3);
  beforeAll(async () => {
    // One onnxruntime thread each, so a core is left for the event loop on a 2-core machine.
    threaded = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, threads: 1, taps: [3], ownThread: true });
    onLoop = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, threads: 1, taps: [3], ownThread: false });
  });
  afterAll(async () => {
    await threaded.close();
    await onLoop.close();
  });
  const prompt = Array.from({ length: 400 }, (_, i) => 100 + ((i * 37) % 3000));

  it('timers fire while a pass runs on the thread, not while one runs on the event loop', async () => {
    // Warm both (first passes allocate).
    await threaded.newSequence(prompt.length).forward(prompt, { logits: 'last' });
    await onLoop.newSequence(prompt.length).forward(prompt, { logits: 'last' });
    const t = await ticksDuring(() => threaded.newSequence(prompt.length).forward(prompt, { logits: 'last' }));
    const l = await ticksDuring(() => onLoop.newSequence(prompt.length).forward(prompt, { logits: 'last' }));
    // A 400-token prefill takes tens of ms here; on the thread the 1 ms timer keeps ticking.
    expect(t.ms).toBeGreaterThan(15);
    expect(t.ticks).toBeGreaterThanOrEqual(Math.floor(t.ms / 10));
    // On the event loop the pass holds every timer: at most the tick due before it started.
    expect(l.ticks).toBeLessThanOrEqual(1);
  });

  it('gives the same logits and taps as the session on the event loop', async () => {
    const a = await threaded.newSequence(prompt.length).forward(prompt, { logits: 'all', taps: [tap] });
    const b = await onLoop.newSequence(prompt.length).forward(prompt, { logits: 'all', taps: [tap] });
    expect(a.logits.length).toBe(prompt.length * threaded.config.vocabSize);
    expect(maxAbsDiff(a.logits, b.logits)).toBe(0);
    expect(maxAbsDiff(a.taps.get(tap)!.data, b.taps.get(tap)!.data)).toBe(0);
  });

  it('concurrent streams decode past the first KV buffer with the same tokens on both (the lent cache comes back)', async () => {
    const reqs = [0, 1, 2].map((k) => ({ promptIds: prompt.slice(k * 50, k * 50 + 200), maxTokens: 80, ignoreEos: true }));
    const a = await Promise.all(reqs.map((r) => collect(threaded, r)));
    const b = await Promise.all(reqs.map((r) => collect(onLoop, r)));
    for (let k = 0; k < reqs.length; k++) {
      expect(tokens(a[k])).toHaveLength(80);
      expect(tokens(a[k])).toEqual(tokens(b[k]));
    }
  });

  it('a failed pass is a coded error and the engine keeps working', async () => {
    // No feeds at all: onnxruntime itself refuses the pass, on the thread.
    await expect(threaded.session.run({}, ['logits'])).rejects.toMatchObject({ code: 'LW_ERR_ENGINE_SESSION_FAILED' });
    const again = await collect(threaded, { promptIds: prompt.slice(0, 20), maxTokens: 5, ignoreEos: true });
    const ref = await collect(onLoop, { promptIds: prompt.slice(0, 20), maxTokens: 5, ignoreEos: true });
    expect(tokens(again)).toEqual(tokens(ref));
  });
});

describe('a released session thread', () => {
  it('fails later passes with a coded error naming the release, and a second release does nothing', async () => {
    const e = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, threads: 1, ownThread: true });
    await e.session.release();
    await expect(e.newSequence(4).forward([1, 2, 3], { logits: 'last' })).rejects.toMatchObject({ code: 'LW_ERR_ENGINE_SESSION_FAILED', message: expect.stringMatching(/released/) });
    await e.session.release();
  });
});

describe('what crosses to the session thread (wire-tensor.ts, kv-write.ts)', () => {
  it('tensors round-trip as numbers: types, shapes and values; resident regions by offset, not copied', () => {
    const cache = Float32Array.from({ length: 64 }, (_, i) => i);
    const tensors = {
      ids: i64Tensor([3, -7], [1, 2]),
      lens: i32Tensor([5], [1]),
      vec: f32Tensor(Float32Array.of(0.5, -1.25, 3), [1, 1, 3]),
      past: { resident: 7, offset: 16, length: 32, dims: [1, 2, 4, 4] },
    };
    const names = ['ids', 'lens', 'vec', 'past'];
    const packed = packTensors(tensors, new Map(names.map((n, i) => [n, i])));
    // Only the tensors' values are copied (8-byte aligned each): 16 + 8 + 16 bytes; the region is an offset.
    expect(packed.values.byteLength).toBe(40);
    const back = unpackTensors(packed, names, (id) => {
      expect(id).toBe(7);
      return cache;
    });
    for (const n of ['ids', 'lens', 'vec'] as const) {
      expect(back[n].type).toBe(tensors[n].type);
      expect(back[n].dims).toEqual(tensors[n].dims);
      expect(Array.from(back[n].data as ArrayLike<number | bigint>)).toEqual(Array.from(tensors[n].data as ArrayLike<number | bigint>));
    }
    expect(back.past.dims).toEqual([1, 2, 4, 4]);
    expect(Array.from(back.past.data as Float32Array)).toEqual(Array.from(cache.subarray(16, 48)));
    // The region is a view: a write through it lands in the resident memory.
    (back.past.data as Float32Array)[0] = -1;
    expect(cache[16]).toBe(-1);
  });

  it('growth moves every row to its new stride (host and resident memory alike)', () => {
    // Host memory and resident memory take the same moves; checked through the engine in the tests above,
    // here the runs themselves: rows of 2 floats moved to a stride of 4.
    const src = Float32Array.of(1, 2, 3, 4, 5, 6);
    const dst = new Float32Array(12);
    moveRuns(src, dst, Float64Array.of(0, 0, 2, 2, 4, 2, 4, 8, 2));
    expect(Array.from(dst)).toEqual([1, 2, 0, 0, 3, 4, 0, 0, 5, 6, 0, 0]);
  });

  it('cache writes round-trip and put each kept row at its position, row by row', () => {
    const inputs = ['past_key_0'];
    const outputs = ['logits', 'new_key_0'];
    // Two rows of [kvHeads 2, cacheLen 3, headDim 2] in the feed; a pass of n = 1 over 2 rows.
    const writes: KvWrite[] = [{ output: 'new_key_0', feed: 'past_key_0', cacheLen: 3, kvHeads: 2, headDim: 2, n: 1, rows: [{ row: 1, cacheOffset: 12, start: 2 }] }];
    const packed = packKvWrites(writes, new Map(inputs.map((n, i) => [n, i])), new Map(outputs.map((n, i) => [n, i])));
    const back = unpackKvWrites(packed, inputs, outputs);
    expect(back).toEqual(writes);
    const cache = new Float32Array(24);
    const fresh = Float32Array.from({ length: 8 }, (_, i) => i + 1); // [rows 2, heads 2, n 1, headDim 2]
    applyKvWrites(back, () => cache, () => fresh);
    // Row 1's head 0 (5, 6) at position 2 of row 1's cache, head 1 (7, 8) likewise; row 0 untouched.
    const expected = new Float32Array(24);
    expected.set([5, 6], 12 + (0 * 3 + 2) * 2);
    expected.set([7, 8], 12 + (1 * 3 + 2) * 2);
    expect(Array.from(cache)).toEqual(Array.from(expected));
  });
});
