/**
 * The 'hf' build interface (Hugging Face optimum's decoder inputs and outputs, for peers such as
 * transformers.js): logits against transformers' reference through a plain onnxruntime session fed
 * the optimum way (whole prompt; then prefix + one token at a time through past_key_values), the same
 * build generating through transformers.js itself (bench/lib/transformersjs.ts, as bench/peers.ts
 * runs it), and the default build's options and cache key unchanged by the option's existence.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layoutTransformersJsModel, loadTransformersJs } from '../bench/lib/transformersjs.js';
import { RuntimeSession, f32Tensor, i64Tensor, type Tensor } from '../src/engine/runtime.js';
import { buildKey, ensureBuild, resolveBuildOptions } from '../src/model/build.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { GRAPH_NAMES, HF_GRAPH_NAMES } from '../src/model/graph.js';
import { QWEN2_TINY, TEST_CACHE, argmaxRows, maxAbsDiff, referenceTensors, tempDir } from './helpers.js';

const ref = JSON.parse(readFileSync(join(QWEN2_TINY, 'reference.json'), 'utf8')) as { input_ids: number[]; greedy_continuation: number[] };
const ckpt = openCheckpoint(QWEN2_TINY);
const cfg = ckpt.config;
const V = cfg.vocabSize;

type Feeds = Record<string, Tensor>;

/**
 * The optimum way: input_ids, attention_mask over past + new, past_key_values.L.* (empty at first),
 * and num_logits_to_keep as transformers.js feeds it (0: every position; 1: the last).
 */
function feeds(ids: number[], past: Feeds | null, keep = 0): Feeds {
  const pastLen = past ? (past[HF_GRAPH_NAMES.pastKey(0)].dims[2] as number) : 0;
  const f: Feeds = {
    [HF_GRAPH_NAMES.inputIds]: i64Tensor(ids, [1, ids.length]),
    [HF_GRAPH_NAMES.attentionMask]: i64Tensor(new Array<number>(pastLen + ids.length).fill(1), [1, pastLen + ids.length]),
    [HF_GRAPH_NAMES.numLogitsToKeep]: i64Tensor([keep], []),
  };
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const name of [HF_GRAPH_NAMES.pastKey(l), HF_GRAPH_NAMES.pastValue(l)]) {
      f[name] = past?.[name] ?? f32Tensor(new Float32Array(0), [1, cfg.numKvHeads, 0, cfg.headDim]);
    }
  }
  return f;
}

/** present.L.* of one run as the next run's past_key_values.L.*. */
function nextPast(out: Feeds): Feeds {
  const p: Feeds = {};
  for (let l = 0; l < cfg.numLayers; l++) {
    p[HF_GRAPH_NAMES.pastKey(l)] = out[HF_GRAPH_NAMES.presentKey(l)];
    p[HF_GRAPH_NAMES.pastValue(l)] = out[HF_GRAPH_NAMES.presentValue(l)];
  }
  return p;
}

describe("'hf' build interface (qwen2-tiny, fp32)", () => {
  let session: RuntimeSession;
  /** Runs with every output allocated by onnxruntime. */
  const run = (f: Feeds) => session.run(f, session.outputNames);
  const logits = referenceTensors(QWEN2_TINY)('logits');
  const row = (t: number) => logits.subarray(t * V, (t + 1) * V);
  beforeAll(async () => {
    const b = ensureBuild(ckpt, { interface: 'hf' }, { cacheDir: TEST_CACHE });
    session = await RuntimeSession.load(b.modelPath, { threads: 1 });
  });
  afterAll(() => session.release());

  it('has the optimum names and nothing of ours', () => {
    const layers = Array.from({ length: cfg.numLayers }, (_, l) => l);
    expect([...session.inputNames].sort()).toEqual(
      ['input_ids', 'attention_mask', 'num_logits_to_keep', ...layers.flatMap((l) => [`past_key_values.${l}.key`, `past_key_values.${l}.value`])].sort(),
    );
    expect([...session.outputNames].sort()).toEqual(['logits', ...layers.flatMap((l) => [`present.${l}.key`, `present.${l}.value`])].sort());
  });

  it('whole-prompt logits within 1e-4 of transformers (num_logits_to_keep 0, 1 and 3)', async () => {
    const all = await run(feeds(ref.input_ids, null, 0));
    expect(all.logits.dims).toEqual([1, ref.input_ids.length, V]);
    expect(maxAbsDiff(all.logits.data as Float32Array, logits)).toBeLessThan(1e-4);
    const three = await run(feeds(ref.input_ids, null, 3));
    expect(three.logits.dims).toEqual([1, 3, V]);
    expect(maxAbsDiff(three.logits.data as Float32Array, logits.subarray((ref.input_ids.length - 3) * V))).toBeLessThan(1e-4);
    const last = await run(feeds(ref.input_ids, null, 1));
    expect(last.logits.dims).toEqual([1, 1, V]);
    expect(maxAbsDiff(last.logits.data as Float32Array, row(ref.input_ids.length - 1))).toBeLessThan(1e-4);
    expect(all[HF_GRAPH_NAMES.presentKey(0)].dims).toEqual([1, cfg.numKvHeads, ref.input_ids.length, cfg.headDim]);
  });

  it('prefix then one token at a time through past_key_values: each position within 1e-4', async () => {
    const split = 4;
    let out = await run(feeds(ref.input_ids.slice(0, split), null, 1));
    expect(maxAbsDiff(out.logits.data as Float32Array, row(split - 1))).toBeLessThan(1e-4);
    for (let t = split; t < ref.input_ids.length; t++) {
      out = await run(feeds([ref.input_ids[t]], nextPast(out), 1));
      expect(out[HF_GRAPH_NAMES.presentKey(0)].dims[2]).toBe(t + 1);
      expect(maxAbsDiff(out.logits.data as Float32Array, row(t)), `position ${t}`).toBeLessThan(1e-4);
    }
  });

  it('greedy continuation through the cache equals transformers', async () => {
    let out = await run(feeds(ref.input_ids, null, 1));
    const got: number[] = [];
    for (let i = 0; i < ref.greedy_continuation.length; i++) {
      const next = argmaxRows(out.logits.data as Float32Array, V)[0];
      got.push(next);
      out = await run(feeds([next], nextPast(out), 1));
    }
    expect(got).toEqual(ref.greedy_continuation);
  });

  it('transformers.js loads the build from a local directory and generates the reference continuation', async () => {
    const b = ensureBuild(ckpt, { interface: 'hf' }, { cacheDir: TEST_CACHE });
    const root = tempDir('lw-tfjs-');
    layoutTransformersJsModel({ checkpointDir: QWEN2_TINY, modelPath: b.modelPath, root, name: 'qwen2-tiny', dtype: 'fp32' });
    const tf = await loadTransformersJs({ root, name: 'qwen2-tiny', dtype: 'fp32', threads: 1 });
    try {
      const out = await tf.greedy(ref.input_ids, ref.greedy_continuation.length);
      expect(out.ids).toEqual(ref.greedy_continuation);
      expect(out.t).toHaveLength(ref.greedy_continuation.length);
    } finally {
      await tf.dispose();
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('refuses taps or ports', () => {
    expect(() => resolveBuildOptions(ckpt, { interface: 'hf', taps: [0] })).toThrow(/no taps/);
    expect(() => resolveBuildOptions(ckpt, { interface: 'hf', ports: 'all' })).toThrow(/no taps/);
  });
});

describe('the default build is unchanged by the interface option', () => {
  it('default options carry no interface, so their cache key is what it was', () => {
    const o = resolveBuildOptions(ckpt, {});
    expect('interface' in o).toBe(false);
    expect(resolveBuildOptions(ckpt, { interface: 'latentwatch' })).toEqual(o);
    expect(buildKey(ckpt.fingerprint, resolveBuildOptions(ckpt, { interface: 'latentwatch' }))).toBe(buildKey(ckpt.fingerprint, o));
    const hf = resolveBuildOptions(ckpt, { interface: 'hf' });
    expect(hf).toMatchObject({ interface: 'hf', taps: [], ports: [] });
    expect(buildKey(ckpt.fingerprint, hf)).not.toBe(buildKey(ckpt.fingerprint, o));
  });

  it('a default build keeps the engine names', async () => {
    const b = ensureBuild(ckpt, {}, { cacheDir: TEST_CACHE });
    const s = await RuntimeSession.load(b.modelPath, { threads: 1 });
    try {
      for (const n of [GRAPH_NAMES.inputIds, GRAPH_NAMES.seqlensK, GRAPH_NAMES.totalSeqLen, GRAPH_NAMES.logitsIndex, GRAPH_NAMES.pastKey(0)]) expect(s.inputNames).toContain(n);
      expect(s.inputNames).not.toContain(HF_GRAPH_NAMES.attentionMask);
      expect(s.outputNames).toContain(GRAPH_NAMES.newKey(0));
      expect(s.outputNames).not.toContain(HF_GRAPH_NAMES.presentKey(0));
    } finally {
      await s.release();
    }
  });
});
