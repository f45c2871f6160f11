/**
 * Proxy mode's cross-request batching (issue 16): concurrent streams' teacher-forced tokens are
 * scored as one-token steps in the engine's shared decode passes (proxy.ts scoringPlan), and each
 * stream's taps come out as when it is scored alone, in passes of its own.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scoringPlan, teacherForced, TokenFeed } from '../src/daemon/proxy.js';
import { Engine } from '../src/engine/engine.js';
import type { Step } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { CODE16M, TEST_CACHE, maxAbsDiff } from './helpers.js';

const ref = JSON.parse(readFileSync(join(CODE16M, 'reference.json'), 'utf8')) as {
  prompts: { input_ids: number[]; greedy_continuation: number[] }[];
};
const TAPS = [residPost(2), residPost(5)];
/** Batched matmuls may round differently in the last bits than a lone pass. */
const TOLERANCE = 1e-3;

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, maxBatch: 8 });
});
afterAll(() => engine?.close());

/**
 * Scores one stream teacher-forced: its continuation arrives `per` tokens at a time, the next
 * arrival once the last is scored (as a stream whose upstream keeps a little ahead of the scorer).
 */
async function score(prompt: number[], tokens: number[], per: number, streams: () => number, batchSteps = true): Promise<Step[]> {
  const feed = new TokenFeed();
  let at = 0;
  const next = () => {
    if (at >= tokens.length) return feed.end();
    const ids = tokens.slice(at, at + per);
    at += per;
    feed.push({ ids, text: '', onScored: next });
  };
  next();
  const steps: Step[] = [];
  const source = teacherForced(engine, feed, { onTruncated: () => undefined, streams, batchSteps });
  for await (const s of source({ promptIds: prompt, maxTokens: tokens.length, taps: TAPS })) steps.push(s);
  return steps;
}

describe('scoring plan', () => {
  it('shares a pass for one token, and for a few while enough streams score together; else a pass of their own', () => {
    expect(scoringPlan(1, true, 1, true)).toBe('shared');
    expect(scoringPlan(2, true, 1, true)).toBe('alone');
    expect(scoringPlan(2, true, 4, true)).toBe('shared');
    expect(scoringPlan(3, true, 4, true)).toBe('alone');
    expect(scoringPlan(4, true, 8, true)).toBe('shared');
    expect(scoringPlan(4, true, 8, false)).toBe('alone');
    // A sequence outside the pool decodes alone whatever it has.
    expect(scoringPlan(1, false, 8, true)).toBe('alone');
  });
});

describe('teacher-forced scoring of concurrent streams in shared passes', () => {
  it('four streams, two tokens per arrival: each token\'s taps equal the stream scored alone, in far fewer passes than steps', async () => {
    const streams = [0, 1, 2, 0].map((i) => ref.prompts[i]);
    const alone: Step[][] = [];
    for (const p of streams) alone.push(await score(p.input_ids, p.greedy_continuation, 2, () => 1));
    const before = { ...engine.batcher.stats };
    const together = await Promise.all(streams.map((p) => score(p.input_ids, p.greedy_continuation, 2, () => streams.length)));
    const passes = engine.batcher.stats.passes - before.passes;
    const rows = engine.batcher.stats.rows - before.rows;
    const tokens = streams.reduce((n, p) => n + p.greedy_continuation.length, 0);
    // Every token went through the shared batch, and the streams shared its passes.
    expect(rows).toBe(tokens);
    expect(passes).toBeLessThan(rows / 2);
    together.forEach((steps, i) => {
      expect(steps.map((s) => s.tokenId)).toEqual(alone[i].map((s) => s.tokenId));
      expect(steps.map((s) => s.position)).toEqual(alone[i].map((s) => s.position));
      steps.forEach((s, j) => {
        for (const t of TAPS) {
          const a = s.taps.get(t)!;
          const b = alone[i][j].taps.get(t)!;
          expect(a.positions).toBe(b.positions);
          expect(maxAbsDiff(a.data, b.data), `stream ${i} step ${j} ${t}`).toBeLessThan(TOLERANCE);
        }
      });
    });
  });

  it('with batch steps off, several tokens take a pass of their own (the shared batch sees only lone tokens)', async () => {
    const p = ref.prompts[1];
    const before = { ...engine.batcher.stats };
    const steps = await score(p.input_ids, p.greedy_continuation, 4, () => 8, false);
    expect(engine.batcher.stats.rows - before.rows).toBe(0);
    expect(steps.filter((s) => s.kind === 'token')).toHaveLength(p.greedy_continuation.length);
  });
});
