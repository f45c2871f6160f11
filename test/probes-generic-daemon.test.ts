/**
 * The shipped probe set in the daemon (issues 7, 12): models/qwen2-code-16m/probes holds the
 * generic-injection detector, which the daemon loads by default; the issue-3 concept probe lives in
 * optional-probes/ (in the daemon's whole-request view it flagged 2.5% of 0.5x concept injections and
 * caused 3 of the 4 false alerts on unseen kinds of text: docs/generic-detectors.md) and loads only
 * when named. Both load when named, with their labels; ordinary requests stay quiet; an
 * admin-injected random direction (no concept) fires the generic detector; the canary passes.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledProbes, type Daemon } from '../src/daemon/daemon.js';
import { createRng } from '../src/rng.js';
import { ADMIN_KEY, API_KEY, completeVerdict, startModelDaemon } from './daemon-fixture.js';
import { CODE16M } from './helpers.js';

const GENERIC_PROBE = join(CODE16M, 'probes', 'generic-injection.probe.json');
const CONCEPT_PROBE = join(CODE16M, 'optional-probes', 'concept-injection.probe.json');

type Verdict = { probes: { id: string; label?: string; fired: boolean; max_score: number | null; threshold: number }[] };

let daemon: Daemon;

beforeAll(async () => {
  daemon = await startModelDaemon(CODE16M, ['--canary', '--canary-interval', '3600', '--probe', CONCEPT_PROBE, '--probe', GENERIC_PROBE]);
}, 120_000);
afterAll(async () => {
  await daemon?.close();
});

const complete = (prompt: string, extra: Record<string, unknown> = {}, key = API_KEY) => completeVerdict<Verdict>(daemon.url, prompt, extra, key);

describe('shipped probes: generic-injection bundled, concept-injection optional', () => {
  it('only the generic detector is bundled; both load when named, with their labels', () => {
    expect(bundledProbes(CODE16M).map((p) => p.split('/').at(-1))).toEqual(['generic-injection.probe.json']);
    expect(daemon.probes.map((p) => [p.id, p.label])).toEqual([
      ['concept-injection', 'concept injection'],
      ['generic-injection', 'generic injection (any direction)'],
    ]);
  });

  it('ordinary requests of several styles: the generic detector raises nothing', async () => {
    for (const prompt of [
      'def parse(text):\n    return [line.strip() for line in text.splitlines()]\n',
      'The committee reviewed twelve proposals and selected three for funding.',
      'User: How do I reverse a list in Python?\nAssistant:',
      'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: latentwatch\n',
    ]) {
      const v = await complete(prompt);
      expect(v.probes.map((p) => p.id).sort()).toEqual(['concept-injection', 'generic-injection']);
      expect(v.probes.find((p) => p.id === 'generic-injection')!.fired, prompt).toBe(false);
    }
  });

  it('an injected random direction (no concept) fires the generic detector', async () => {
    const rng = createRng(42);
    const vector = Array.from({ length: 384 }, () => rng.gaussian());
    const norm = Math.hypot(...vector);
    // 0.5 x the mean residual norm of layer 4 (36.2): a unit vector scaled by 18.
    const v = await complete('def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n', { latentwatch: { inject: { vector: vector.map((x) => x / norm), layer: 4, scale: 18, window: 'all' } } }, ADMIN_KEY);
    const g = v.probes.find((p) => p.id === 'generic-injection')!;
    expect(g.fired).toBe(true);
    expect(g.max_score!).toBeGreaterThan(g.threshold);
  });

  it('the canary passes on these probes', async () => {
    expect(await daemon.canary!.runOnce()).toBe('success');
  });
});
