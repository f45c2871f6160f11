import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsHeader, readTensorRaw } from '../src/model/safetensors.js';

export const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;
export const QWEN2_TINY = join(FIXTURES, 'qwen2-tiny');
export const QWEN3_TINY = join(FIXTURES, 'qwen3-tiny');
export const CODE16M = new URL('../models/qwen2-code-16m', import.meta.url).pathname;

/** Builds are cached per test run in one temp dir so files share them. */
export const TEST_CACHE = process.env.LW_TEST_CACHE ?? join(tmpdir(), 'latentwatch-test-builds');

export function tempDir(prefix = 'lw-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
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
