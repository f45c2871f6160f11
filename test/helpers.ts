import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Engine } from '../src/engine/engine.js';
import { residPost } from '../src/hooks.js';
import { readSafetensorsHeader, readTensorRaw } from '../src/model/safetensors.js';
import { isLatentwatchError, type LatentwatchError } from '../src/errors.js';

export const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;
export const QWEN2_TINY = join(FIXTURES, 'qwen2-tiny');
export const QWEN3_TINY = join(FIXTURES, 'qwen3-tiny');
export const CODE16M = new URL('../models/qwen2-code-16m', import.meta.url).pathname;

/** Builds are cached per test run in one temp dir so files share them. */
export const TEST_CACHE = process.env.LW_TEST_CACHE ?? join(tmpdir(), 'latentwatch-test-builds');

/** A fresh directory under the run's temporary root (test/global-setup.ts removes it at the end). */
export function tempDir(prefix = 'lw-test-'): string {
  return mkdtempSync(join(process.env.LW_TEST_TMP ?? tmpdir(), prefix));
}

export function referenceTensors(dir: string): (name: string) => Float32Array {
  const f = readSafetensorsHeader(join(dir, 'reference.safetensors'));
  return (name) => {
    const t = f.tensors.get(name);
    if (!t) throw new Error(`reference tensor ${name} missing`);
    const raw = readTensorRaw(t);
    return raw instanceof Float32Array ? raw : Float32Array.from(raw as ArrayLike<number>, Number);
  };
}

/** reference.json of a tiny random checkpoint (../shared/reference/make_reference.py). */
export interface TinyReference {
  input_ids: number[];
  greedy_continuation: number[];
  injection: { layer: number; alpha: number };
}

/** reference.json of a trained subject (make_subject_reference.py, scripts/train-subject.py). */
export interface SubjectReference {
  prompts: { text: string; input_ids: number[]; greedy_continuation: number[]; greedy_text: string }[];
  injection: { layer: number; alpha: number };
}

export function readReference<R extends TinyReference | SubjectReference>(dir: string): R {
  return JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as R;
}

/** One forward pass over the prompt with logits at every position and every layer tapped. */
export async function fullPass(engine: Engine, ids: number[], inject?: { layer: number; alpha: number; vector: Float32Array }) {
  const seq = engine.newSequence(ids.length);
  const taps = Array.from({ length: engine.config.numLayers }, (_, l) => residPost(l));
  const injections = inject ? [{ hook: residPost(inject.layer), vector: inject.vector, scale: inject.alpha, window: { kind: 'all' as const } }] : [];
  const r = await seq.forward(ids, { taps, injections, logits: 'all' });
  seq.release();
  return r;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function argmaxRows(logits: Float32Array, vocab: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < logits.length / vocab; r++) {
    let best = 0;
    for (let i = 1; i < vocab; i++) if (logits[r * vocab + i] > logits[r * vocab + best]) best = i;
    out.push(best);
  }
  return out;
}

export interface WaitOptions {
  /** Give up after this long (ms). */
  timeoutMs: number;
  /** What is awaited, for the error message ("the subscriber to receive 3 alerts"). */
  what: string;
  /** Poll interval (ms); default 20. */
  stepMs?: number;
  /** Extra context appended to the timeout error (a child's log, the last value seen). */
  detail?: () => string;
}

/**
 * Polls `cond` until it holds; throws if it does not within `timeoutMs`, naming what was awaited.
 * A `cond` that throws counts as "not yet" (a server still starting); the last error is reported.
 */
export async function waitUntil(cond: () => boolean | Promise<boolean>, o: WaitOptions): Promise<void> {
  const start = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      if (await cond()) return;
      lastError = undefined;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() - start > o.timeoutMs) {
      const why = lastError === undefined ? '' : ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)})`;
      const detail = o.detail ? `\n${o.detail()}` : '';
      throw new Error(`timed out after ${o.timeoutMs} ms waiting for ${o.what}${why}${detail}`);
    }
    await new Promise((r) => setTimeout(r, o.stepMs ?? 20));
  }
}

/**
 * A TCP port on 127.0.0.1 that the OS reports free (listen on port 0, read the port, close). For
 * servers that cannot bind port 0 and report it themselves; call it right before starting them.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      if (typeof addr !== 'object' || addr === null) {
        s.close();
        reject(new Error(`no port from the OS: ${String(addr)}`));
        return;
      }
      s.close(() => resolve(addr.port));
    });
  });
}

/** The coded error `fn` throws (a test fails if it throws something else or nothing). */
export function thrown(fn: () => unknown): LatentwatchError {
  try {
    fn();
  } catch (e) {
    if (isLatentwatchError(e)) return e;
    throw e;
  }
  throw new Error('expected a LatentwatchError');
}

/** Log-softmax of one logits row in float64: the tests' own reference, independent of src/. */
export const logSoftmax = (row: Float32Array) => {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  return Array.from(row, (x) => x - max - Math.log(sum));
};
