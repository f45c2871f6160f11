/**
 * Greedy decoding through the graph's argmax (graph.ts GRAPH_NAMES.greedy) on the CPU provider: a
 * greedy request that reads no logits takes each token from the pass's (argmax, logit) pair instead
 * of the logits row. The tokens must be exactly those of the logits path (the same logits, the same
 * first-of-equal-maxima rule), for the tiny reference checkpoints and the built-in model, pooled
 * (continuous batching) or not. test/engine-webgpu-greedy.test.ts checks the same on WebGPU.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { argmax } from '../src/engine/sampler.js';
import type { GenerateRequest, Step } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { CODE16M, QWEN2_TINY, QWEN3_TINY, TEST_CACHE, readReference, type SubjectReference, type TinyReference } from './helpers.js';

async function tokens(engine: Engine, req: GenerateRequest): Promise<{ ids: number[]; steps: Step[] }> {
  const steps: Step[] = [];
  for await (const s of engine.generate(req)) steps.push(s);
  return { ids: steps.filter((s) => s.kind === 'token').map((s) => s.tokenId), steps };
}

/** Prompts per checkpoint: the references' own (their greedy continuations are known). */
/** A greedy pass brings back no logits row, and the argmax (and its logit) of the full pass's row. */
function expectGreedyOf(g: { logits: ArrayLike<number>; greedy?: unknown }, full: { logits: Float32Array; greedy?: unknown }): void {
  expect(g.logits.length).toBe(0);
  expect(g.greedy).toEqual({ tokenId: argmax(full.logits), logit: full.logits[argmax(full.logits)] });
  expect(full.greedy).toBeUndefined();
}

function prompts(dir: string): { ids: number[]; expected?: number[] }[] {
  if (dir === CODE16M) return readReference<SubjectReference>(dir).prompts.map((p) => ({ ids: p.input_ids, expected: p.greedy_continuation }));
  const ref = readReference<TinyReference>(dir);
  return [{ ids: ref.input_ids, expected: ref.greedy_continuation }, { ids: [...ref.input_ids].reverse() }];
}

for (const [name, dir] of [
  ['qwen2-tiny', QWEN2_TINY],
  ['qwen3-tiny', QWEN3_TINY],
  ['qwen2-code-16m', CODE16M],
] as const) {
  describe(`${name}: greedy decoding through the graph's argmax (CPU provider)`, () => {
    let pooled: Engine;
    let alone: Engine;
    beforeAll(async () => {
      pooled = await Engine.load(dir, { cacheDir: TEST_CACHE, threads: 2 });
      // No pool: every step is the sequence's own pass (Sequence.forward), not the batcher's.
      alone = await Engine.load(dir, { cacheDir: TEST_CACHE, threads: 2, maxBatch: 0 });
    });
    afterAll(async () => {
      await pooled.close();
      await alone.close();
    });

    it('a pass asked for the greedy choice gives the argmax of its last logits row and that logit, and no row', async () => {
      const ids = prompts(dir)[0].ids;
      const a = alone.newSequence(ids.length);
      const b = alone.newSequence(ids.length);
      try {
        const g = await a.forward(ids, { logits: 'greedy' });
        const full = await b.forward(ids, { logits: 'last' });
        expectGreedyOf(g, full);
      } finally {
        a.release();
        b.release();
      }
    });

    it('a batched decode step asked for the greedy choice gives it for its row, beside rows that read logits', async () => {
      const ids = prompts(dir)[0].ids;
      const [a, b] = [pooled.newSequence(ids.length + 1), pooled.newSequence(ids.length + 1)];
      try {
        expect(a.storage.slot).toBeGreaterThanOrEqual(0);
        await a.forward(ids);
        await b.forward(ids);
        const before = pooled.batcher.stats.passes;
        const [g, full] = await Promise.all([pooled.batcher.step(a, 7, { logits: 'greedy' }), pooled.batcher.step(b, 7, { logits: 'last' })]);
        expect(pooled.batcher.stats.passes).toBe(before + 1); // one pass, two rows
        expectGreedyOf(g, full);
      } finally {
        a.release();
        b.release();
      }
    });

    it('greedy continuations are the logits path’s, token for token, pooled or not, with taps and several streams at once', async () => {
      const maxTokens = dir === CODE16M ? 24 : 12;
      for (const engine of [alone, pooled]) {
        for (const p of prompts(dir)) {
          const viaArgmax = await tokens(engine, { promptIds: p.ids, maxTokens, ignoreEos: true });
          // returnLogits makes the engine take each token from the logits row (the sampler's argmax).
          const viaLogits = await tokens(engine, { promptIds: p.ids, maxTokens, ignoreEos: true, returnLogits: true });
          expect(viaArgmax.ids).toEqual(viaLogits.ids);
          expect(viaArgmax.steps.every((s) => s.logits === undefined)).toBe(true);
          if (p.expected) expect(viaArgmax.ids).toEqual(p.expected.slice(0, maxTokens));
        }
        const taps = [residPost(0), residPost(engine.config.numLayers - 1)];
        const together = await Promise.all(prompts(dir).map((p) => tokens(engine, { promptIds: p.ids, maxTokens: 8, ignoreEos: true, taps })));
        for (const [i, p] of prompts(dir).entries()) {
          const ref = await tokens(engine, { promptIds: p.ids, maxTokens: 8, ignoreEos: true, taps, returnLogits: true });
          expect(together[i].ids).toEqual(ref.ids);
          for (const [j, s] of together[i].steps.entries()) for (const t of taps) expect(s.taps.get(t)!.data).toEqual(ref.steps[j].taps.get(t)!.data);
        }
      }
    });

    it('logit bias still applies at temperature 0 (the graph’s argmax does not know it: the logits path is taken)', async () => {
      const p = prompts(dir)[0];
      const plain = await tokens(pooled, { promptIds: p.ids, maxTokens: 6, ignoreEos: true });
      const target = (plain.ids[0] + 1) % pooled.config.vocabSize;
      const biased = await tokens(pooled, { promptIds: p.ids, maxTokens: 6, ignoreEos: true, sampling: { temperature: 0, logitBias: new Map([[target, 100]]) } });
      expect(biased.ids).toEqual(new Array(6).fill(target));
    });

    it('a broken pass (an injection overflowing to infinity) fails the greedy request with a code, as on the logits path', async () => {
      const p = prompts(dir)[0];
      const hook = residPost(0);
      const injections = [{ hook, vector: new Float32Array(pooled.config.hiddenSize).fill(3e38), scale: 10, window: { kind: 'all' as const } }];
      for (const engine of [alone, pooled]) {
        const e = await tokens(engine, { promptIds: p.ids, maxTokens: 3, injections }).then(
          () => null,
          (err: { code?: string }) => err,
        );
        expect(e?.code).toBe('LW_ERR_ENGINE_SESSION_FAILED');
        expect(String(e)).toMatch(/non-finite logits/);
      }
    });
  });
}
