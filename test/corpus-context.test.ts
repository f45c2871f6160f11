/**
 * A corpus request longer than the model's context is skipped and counted, as the daemon would
 * refuse it, instead of aborting the whole fit (issue 12's rough edge). Real engine, built-in model.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadCorpora, resolveCorpus, runCorpus } from '../src/lab/corpus.js';
import { CODE16M, TEST_CACHE, tempDir } from './helpers.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, maxBatch: 0 });
}, 120_000);
afterAll(async () => {
  await engine?.close();
});

describe('runCorpus and the context length', () => {
  it('skips and counts requests that do not fit; runs the others', async () => {
    const long = 'def f(x):\n    return x * 2\n'.repeat(200);
    const corpus = resolveCorpus({ formatVersion: 1, name: 'ctx', generation: { maxTokens: 2, temperature: 0 }, split: { testFraction: 0 }, styles: [{ name: 'code', prompts: ['def add(a, b):\n', long, 'x = 1\n'] }] });
    const tokens = engine.tokenizer!.encode(long).length;
    expect(tokens + 2).toBeGreaterThan(engine.contextLength);
    const acts = await runCorpus(engine, corpus, [2]);
    expect(acts.skippedTooLong).toEqual([{ id: 'code/1', tokens }]);
    expect(acts.requests.map((r) => r.id)).toEqual(['code/0', 'code/2']);
  });

  it("runs each request with its own generation length (a traffic line's max_tokens; merged files)", async () => {
    const dir = tempDir('lw-corpus-len-');
    const traffic = join(dir, 't.jsonl');
    writeFileSync(traffic, '{"prompt": "def add(a, b):\\n", "max_tokens": 0}\n{"prompt": "def add(a, b):\\n", "max_tokens": 3}\n"x = 1\\n"\n');
    const config = join(dir, 'c.json');
    writeFileSync(config, JSON.stringify({ formatVersion: 1, name: 'c', generation: { maxTokens: 1 }, split: { testFraction: 0 }, styles: [{ name: 'code', prompts: ['x = 1\n'] }] }));
    const acts = await runCorpus(engine, loadCorpora([config, traffic], { maxTokens: 2 }), [2]);
    const d = engine.config.hiddenSize;
    const generated = acts.requests.map((r) => [r.id, r.maxTokens, r.ids.length - r.promptTokens, r.rows[0].length / d - r.promptTokens]);
    // Every generated token is a scored position (none stop early on these prompts): prompt + maxTokens.
    expect(generated).toEqual([
      ['code/0', 1, 1, 1],
      ['traffic/0', 0, 0, 0],
      ['traffic/1', 3, 3, 3],
      ['traffic/2', 2, 2, 2],
    ]);
  });

  it('a corpus of which nothing fits is LW_ERR_CORPUS_INVALID', async () => {
    const corpus = resolveCorpus({ formatVersion: 1, name: 'ctx', generation: { maxTokens: 2, temperature: 0 }, styles: [{ name: 'code', prompts: ['x = 1\n'.repeat(600)] }] });
    await expect(runCorpus(engine, corpus, [2])).rejects.toMatchObject({ code: 'LW_ERR_CORPUS_INVALID' });
  });
});
