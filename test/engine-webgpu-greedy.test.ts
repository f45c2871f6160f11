/**
 * Greedy decoding through the graph's argmax on the WebGPU provider (lavapipe in CI): a greedy
 * request that reads no logits brings back each pass's (argmax, logit) pair and its taps, and leaves
 * the logits row (600 KB for Qwen2.5) on the device. Tokens identical to the logits path and to the
 * references; what each pass brings back is read off the session's one host output.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import type { Tensor } from '../src/engine/runtime.js';
import { argmax } from '../src/engine/sampler.js';
import type { GenerateRequest, Step } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { GRAPH_NAMES } from '../src/model/graph.js';
import { CODE16M, QWEN2_TINY, QWEN3_TINY, TEST_CACHE, readReference, type SubjectReference, type TinyReference } from './helpers.js';

async function tokens(engine: Engine, req: GenerateRequest): Promise<{ ids: number[]; steps: Step[] }> {
  const steps: Step[] = [];
  for await (const s of engine.generate(req)) steps.push(s);
  return { ids: steps.filter((s) => s.kind === 'token').map((s) => s.tokenId), steps };
}

/** Records the length of every pass's host output (floats brought back from the device). */
function watchHostOutputs(engine: Engine): number[] {
  const sizes: number[] = [];
  const session = engine.session;
  const runAll = session.runAll.bind(session);
  session.runAll = async (feeds: Record<string, Tensor>) => {
    const r = await runAll(feeds);
    sizes.push(r[GRAPH_NAMES.hostOutputs].dims[0]);
    return r;
  };
  return sizes;
}

/** The built-in model on lavapipe (a CPU emulating a GPU) is slow: its first pass compiles every shader. */
const LAVAPIPE_SLOW_MS = 400_000;

for (const [name, dir] of [
  ['qwen2-tiny', QWEN2_TINY],
  ['qwen3-tiny', QWEN3_TINY],
  ['qwen2-code-16m', CODE16M],
] as const) {
  describe(`${name}: greedy decoding through the graph's argmax on the WebGPU provider`, () => {
    let engine: Engine;
    let sizes: number[];
    const cases = dir === CODE16M ? readReference<SubjectReference>(dir).prompts.map((p) => ({ ids: p.input_ids, expected: p.greedy_continuation })) : [{ ids: readReference<TinyReference>(dir).input_ids, expected: readReference<TinyReference>(dir).greedy_continuation }];
    const maxTokens = dir === CODE16M ? 24 : 12;
    beforeAll(async () => {
      engine = await Engine.load(dir, { cacheDir: TEST_CACHE, provider: 'webgpu', taps: [0], ports: [] });
      sizes = watchHostOutputs(engine);
    });
    afterAll(() => engine.close());

    it(
      'greedy continuations are the logits path’s and the reference’s; each greedy pass brings back 2 floats and its taps, never the logits row',
      async () => {
        const V = engine.config.vocabSize;
        const D = engine.config.hiddenSize;
        for (const p of cases) {
          const P = p.ids.length;
          // The build taps layer 0, and a device-kv pass brings back every tap of its build.
          const passes = (perPass: number) => [(P - 1) * D + perPass, ...new Array(maxTokens - 1).fill(perPass)];
          sizes.length = 0;
          const viaArgmax = await tokens(engine, { promptIds: p.ids, maxTokens, ignoreEos: true });
          expect(sizes).toEqual(passes(2 + D)); // the prompt pass and every decode pass but the last's
          sizes.length = 0;
          const viaLogits = await tokens(engine, { promptIds: p.ids, maxTokens, ignoreEos: true, returnLogits: true });
          expect(sizes).toEqual(passes(2 + V + D));
          expect(viaArgmax.ids).toEqual(viaLogits.ids);
          expect(viaArgmax.ids).toEqual(p.expected.slice(0, maxTokens));
          // Tapped: the taps come back beside the pair, identical to the logits path's.
          const tapped = await tokens(engine, { promptIds: p.ids, maxTokens: 4, ignoreEos: true, taps: [residPost(0)] });
          const tappedLogits = await tokens(engine, { promptIds: p.ids, maxTokens: 4, ignoreEos: true, taps: [residPost(0)], returnLogits: true });
          expect(tapped.ids).toEqual(tappedLogits.ids);
          for (const [j, s] of tapped.steps.entries()) expect(s.taps.get(residPost(0))!.data).toEqual(tappedLogits.steps[j].taps.get(residPost(0))!.data);
        }
      },
      LAVAPIPE_SLOW_MS,
    );

    it(
      'a pass asked for the greedy choice gives the argmax of the last logits row and its logit; one asked for none brings back no logits',
      async () => {
        const ids = cases[0].ids;
        const [a, b, c] = [engine.newSequence(ids.length), engine.newSequence(ids.length), engine.newSequence(ids.length)];
        try {
          const g = await a.forward(ids, { logits: 'greedy' });
          const full = await b.forward(ids, { logits: 'last' });
          expect(g.logits.length).toBe(0);
          expect(g.greedy).toEqual({ tokenId: argmax(full.logits), logit: full.logits[argmax(full.logits)] });
          sizes.length = 0;
          const none = await c.forward(ids, { logits: 'none', taps: [residPost(0)] });
          expect(none.logits.length).toBe(0);
          expect(sizes).toEqual([2 + ids.length * engine.config.hiddenSize]);
        } finally {
          for (const s of [a, b, c]) s.release();
        }
      },
      LAVAPIPE_SLOW_MS,
    );
  });
}
