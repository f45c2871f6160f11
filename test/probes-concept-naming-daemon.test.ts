/**
 * Issue 12: an alert names the closest stored concept when the match is clear. A real daemon on the
 * built-in model with its shipped probes: an admin-injected stored concept (0.5× and 1× the layer's
 * mean residual norm) fires generic-injection, whose verdict (`closest_concept`) and alert
 * (`concept`, in the polling output) name that concept; a clean request names nothing; an injected
 * random direction fires but names nothing (its top-1 cosine stays below the floor, as measured in
 * docs/reports/concept-naming/). The same on the second subject, models/qwen3-code-7m, whose concept
 * vectors ship in its concepts/ folder (`latentwatch concepts --config configs/trials/base.json`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../src/daemon/daemon.js';
import type { Alert } from '../src/daemon/alert-log.js';
import { createRng } from '../src/rng.js';
import { ADMIN_KEY, API_KEY, completeVerdict, startModelDaemon } from './daemon-fixture.js';
import { CODE16M } from './helpers.js';

const QWEN3_CODE7M = new URL('../models/qwen3-code-7m', import.meta.url).pathname;

type Concept = { name: string; layer: number; cosine: number; margin: number } | null;
type Verdict = { probes: { id: string; fired: boolean; alert_ids: number[]; closest_concept: Concept }[] };

let daemon: Daemon;

beforeAll(async () => {
  daemon = await startModelDaemon(CODE16M);
}, 120_000);
afterAll(async () => {
  await daemon?.close();
});

const PROMPT = 'def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n';

const complete = (prompt: string, extra: Record<string, unknown> = {}, key = API_KEY) => completeVerdict<Verdict>(daemon.url, prompt, extra, key);

async function alerts(ids: number[]): Promise<Alert[]> {
  const r = await fetch(`${daemon.url}/v1/alerts?after=${Math.min(...ids) - 1}&limit=1000`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  expect(r.status).toBe(200);
  const body = (await r.json()) as { data: Alert[] };
  return body.data.filter((a) => ids.includes(a.id));
}

describe('concept naming in alerts and verdicts', () => {
  for (const [concept, layer, scale] of [
    ['Dust', 4, 0.5],
    ['Oceans', 2, 1],
    ['Peace', 6, 0.5],
  ] as const) {
    it(`an injected concept (${concept}, layer ${layer}, ×${scale}) fires and is named`, async () => {
      const v = await complete(PROMPT, { latentwatch: { inject: { concept, layer, scale, window: 'all' } } }, ADMIN_KEY);
      const g = v.probes.find((p) => p.id === 'generic-injection')!;
      expect(g.fired).toBe(true);
      expect(g.closest_concept).not.toBeNull();
      expect(g.closest_concept!.name).toBe(concept);
      expect(g.closest_concept!.layer).toBe(layer);
      expect(g.closest_concept!.cosine).toBeGreaterThanOrEqual(0.5);
      expect(g.alert_ids.length).toBeGreaterThan(0);
      const raised = await alerts(g.alert_ids);
      expect(raised.length).toBe(g.alert_ids.length);
      expect(raised[0].concept).toEqual(g.closest_concept);
      // The persisted row reads back the same (SQLite log, JSON column).
      expect((await daemon.store.since(g.alert_ids[0] - 1, {}, 1)).alerts[0].concept).toEqual(g.closest_concept);
    });
  }

  it('a clean request fires nothing and names nothing', async () => {
    const v = await complete(PROMPT);
    for (const p of v.probes) {
      expect(p.fired).toBe(false);
      expect(p.closest_concept).toBeNull();
    }
  });

  it('an injected random direction fires generic-injection but names no concept (below the floor)', async () => {
    const rng = createRng(42);
    const vector = Array.from({ length: 384 }, () => rng.gaussian());
    const norm = Math.hypot(...vector);
    const v = await complete(PROMPT, { latentwatch: { inject: { vector: vector.map((x) => x / norm), layer: 4, scale: 18, window: 'all' } } }, ADMIN_KEY);
    const g = v.probes.find((p) => p.id === 'generic-injection')!;
    expect(g.fired).toBe(true);
    expect(g.closest_concept).toBeNull();
    const raised = await alerts(g.alert_ids);
    expect(raised.length).toBeGreaterThan(0);
    for (const a of raised) expect(a.concept).toBeNull();
  });
});

describe('concept naming on the second subject (qwen3-code-7m)', () => {
  let q3: Daemon;
  beforeAll(async () => {
    q3 = await startModelDaemon(QWEN3_CODE7M);
  }, 120_000);
  afterAll(async () => {
    await q3?.close();
  });
  const completeQ3 = (extra: Record<string, unknown>, key = API_KEY) => completeVerdict<Verdict>(q3.url, PROMPT, { model: 'qwen3-code-7m', ...extra }, key);

  for (const [concept, layer, scale] of [
    ['Dust', 3, 1],
    ['Oceans', 2, 1],
  ] as const) {
    it(`an injected concept (${concept}, layer ${layer}, ×${scale}) fires and is named`, async () => {
      const v = await completeQ3({ latentwatch: { inject: { concept, layer, scale, window: 'all' } } }, ADMIN_KEY);
      const g = v.probes.find((p) => p.id === 'generic-injection')!;
      expect(g.fired).toBe(true);
      expect(g.closest_concept).not.toBeNull();
      expect(g.closest_concept!.name).toBe(concept);
      expect(g.closest_concept!.layer).toBe(layer);
      expect(g.closest_concept!.cosine).toBeGreaterThanOrEqual(0.5);
    });
  }

  it('a clean request names nothing', async () => {
    const v = await completeQ3({});
    for (const p of v.probes) {
      expect(p.fired).toBe(false);
      expect(p.closest_concept).toBeNull();
    }
  });
});
