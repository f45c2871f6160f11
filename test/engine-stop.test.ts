/**
 * How generation ends, on the real engine (qwen2-code-16m): text held back as a possible stop-string
 * prefix is owed to the client when generation ends for any other reason (issue 13, point 8); and
 * the per-token logprobs the engine attaches, against a log-softmax of its own logits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import type { GenerateRequest, Step } from '../src/engine/types.js';
import { CODE16M, TEST_CACHE, logSoftmax } from './helpers.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE });
});
afterAll(() => engine.close());

async function run(req: GenerateRequest): Promise<{ text: string; steps: Step[] }> {
  const steps: Step[] = [];
  for await (const s of engine.generate(req)) steps.push(s);
  return { text: steps.map((s) => (s.kind === 'token' ? s.text : '')).join(''), steps: steps.filter((s) => s.kind === 'token') };
}

// With temperature 1 and seed 0 the model writes "()\n" and then EOS: ")\n" is a prefix of the stop
// string ")\nZZ" and is held back when EOS arrives.
const PROMPT = 'def test():\n    assert True\n\n\nif __name__ == "__main__":\n    test';
const SAMPLING = { temperature: 1, seed: 0 };

describe('held-back stop-string prefixes at the end of generation', () => {
  it('EOS: the held-back text is returned, as without the stop string', async () => {
    const promptIds = engine.tokenizer!.encode(PROMPT);
    const plain = await run({ promptIds, maxTokens: 64, sampling: SAMPLING });
    // The premise: generation ends on EOS, and its text ends with a prefix of the stop string.
    expect(engine.eosTokenIds).toContain(plain.steps.at(-1)!.tokenId);
    expect(plain.text.endsWith(')\n')).toBe(true);
    const stopped = await run({ promptIds, maxTokens: 64, sampling: SAMPLING, stopStrings: [')\nZZ'] });
    expect(stopped.steps.map((s) => s.tokenId)).toEqual(plain.steps.map((s) => s.tokenId));
    expect(stopped.text).toBe(plain.text);
    expect(stopped.steps.at(-1)!.finishReason).toBe('stop');
  });

  it('a stop token id and the length limit also flush it; a real match still cuts', async () => {
    const promptIds = engine.tokenizer!.encode(PROMPT);
    const plain = await run({ promptIds, maxTokens: 64, sampling: SAMPLING });
    const ids = plain.steps.map((s) => s.tokenId);
    expect(ids.length).toBeGreaterThanOrEqual(3);
    const lastText = plain.steps.at(-2)!.text;
    // Stop at the last text token's id: everything before it is owed, including a held-back tail.
    const before = plain.steps.slice(0, -2).map((s) => s.text).join('');
    const stopId = await run({ promptIds, maxTokens: 64, sampling: SAMPLING, stopTokenIds: [ids.at(-2)!], stopStrings: [before.slice(-1) + 'ZZ'] });
    expect(stopId.text).toBe(before);
    // The length limit one token before EOS, with the whole tail held back.
    const byLength = await run({ promptIds, maxTokens: ids.length - 1, sampling: SAMPLING, stopStrings: [lastText + 'ZZ'] });
    expect(byLength.text).toBe(plain.text);
    expect(byLength.steps.at(-1)!.finishReason).toBe('length');
    // A match is still a match: the stop string and what follows are dropped.
    const cut = await run({ promptIds, maxTokens: 64, sampling: SAMPLING, stopStrings: [')\n'] });
    expect(cut.text).toBe(plain.text.slice(0, plain.text.indexOf(')\n')));
    expect(cut.steps.at(-1)!.finishReason).toBe('stop');
  });
});

describe('logprobs on engine steps', () => {
  it('each generated token: log-softmax of the logits it was sampled from, top-k sorted; the prompt: teacher-forced', async () => {
    const promptIds = engine.tokenizer!.encode('def load(path):\n');
    const { steps } = await run({ promptIds, maxTokens: 8, ignoreEos: true, returnLogits: true, logprobs: 5 });
    for (const s of steps) {
      const ref = logSoftmax(s.logits!);
      // float32 logits, float64 arithmetic on both sides: agreement to rounding.
      expect(Math.abs(s.logprob!.logprob - ref[s.tokenId])).toBeLessThan(1e-9);
      expect(s.logprob!.top).toHaveLength(5);
      const sorted = ref.map((l, i) => [l, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      expect(s.logprob!.top.map((t) => t.tokenId)).toEqual(sorted.slice(0, 5).map((x) => x[1]));
      // Greedy: the chosen token is the most probable one.
      expect(s.logprob!.top[0].tokenId).toBe(s.tokenId);
      expect(s.logprob!.token).toBe(engine.tokenizer!.decode([s.tokenId]));
    }
    // Prompt logprobs: row i of a full forward pass predicts token i + 1.
    const all = await engine.newSequence(promptIds.length).forward(promptIds, { logits: 'all' });
    const V = engine.config.vocabSize;
    const prompt: Step[] = [];
    for await (const s of engine.generate({ promptIds, maxTokens: 0, promptLogprobs: 2, promptText: true })) prompt.push(s);
    const lp = prompt[0].promptLogprobs!;
    expect(prompt[0].text).toBe('def load(path):\n');
    expect(lp).toHaveLength(promptIds.length);
    expect(lp[0]).toMatchObject({ tokenId: promptIds[0], token: 'def', logprob: null, top: [] });
    for (let i = 1; i < promptIds.length; i++) {
      const ref = logSoftmax(all.logits.subarray((i - 1) * V, i * V));
      // Separate passes over the same positions: float32 noise only.
      expect(Math.abs(lp[i].logprob! - ref[promptIds[i]])).toBeLessThan(1e-4);
      expect(lp[i].top).toHaveLength(2);
      expect(lp[i].tokenId).toBe(promptIds[i]);
    }
  });

  it('bytes of a token that holds part of a UTF-8 character', async () => {
    // An emoji is several byte-level tokens; their bytes concatenate to its UTF-8.
    const ids = engine.tokenizer!.encode('🦜');
    const bytes = ids.flatMap((id) => engine.tokenizer!.tokenBytes(id));
    expect(Buffer.from(bytes).toString('utf8')).toBe('🦜');
  });
});
