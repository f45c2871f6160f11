/**
 * The second built-in subject in the daemon (issue 12): `serve --model models/qwen3-code-7m` (Qwen3,
 * 6 layers, d_model 256) loads the generic-injection detector shipped beside it, keeps ordinary
 * requests quiet and flags an admin-injected random direction. Figures:
 * docs/reports/qwen3-code-7m-generic.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledProbes, type Daemon } from '../src/daemon/daemon.js';
import { createRng } from '../src/rng.js';
import { ADMIN_KEY, API_KEY, completeVerdict, startModelDaemon } from './daemon-fixture.js';

const QWEN3_CODE7M = new URL('../models/qwen3-code-7m', import.meta.url).pathname;

type Verdict = { probes: { id: string; label?: string; fired: boolean; max_score: number | null; threshold: number }[] };

let daemon: Daemon;

beforeAll(async () => {
  daemon = await startModelDaemon(QWEN3_CODE7M);
}, 120_000);
afterAll(async () => {
  await daemon?.close();
});

// The served model's name is its folder's name.
const complete = (prompt: string, extra: Record<string, unknown> = {}, key = API_KEY) => completeVerdict<Verdict>(daemon.url, prompt, { model: 'qwen3-code-7m', ...extra }, key);

describe('qwen3-code-7m: its bundled generic-injection detector', () => {
  it('loads, with its label', () => {
    expect(bundledProbes(QWEN3_CODE7M).map((p) => p.split('/').at(-1))).toEqual(['generic-injection.probe.json']);
    expect(daemon.probes.map((p) => [p.id, p.label])).toEqual([['generic-injection', 'generic injection (any direction)']]);
  });

  it('ordinary requests of several styles raise nothing', async () => {
    for (const prompt of [
      'def parse(text):\n    return [line.strip() for line in text.splitlines()]\n',
      'The committee reviewed twelve proposals and selected three for funding.',
      'User: How do I reverse a list in Python?\nAssistant:',
      'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: latentwatch\n',
    ]) {
      const v = await complete(prompt);
      expect(v.probes.map((p) => p.id)).toEqual(['generic-injection']);
      expect(v.probes[0].fired, prompt).toBe(false);
    }
  });

  it('an injected random direction (no concept) fires it', async () => {
    const rng = createRng(42);
    const vector = Array.from({ length: 256 }, () => rng.gaussian());
    const norm = Math.hypot(...vector);
    // 0.5 x the mean residual norm of layer 3 (35.3, the trials' dataset.json): a unit vector scaled by 17.7.
    const v = await complete('def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n', { latentwatch: { inject: { vector: vector.map((x) => x / norm), layer: 3, scale: 17.7, window: 'all' } } }, ADMIN_KEY);
    const g = v.probes[0];
    expect(g.fired).toBe(true);
    expect(g.max_score!).toBeGreaterThan(g.threshold);
  });
});
