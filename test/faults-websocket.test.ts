/**
 * 1000 WebSocket subscribers and one stalled one, against a daemon in a child process.
 *
 * The stalled subscriber is a raw TCP socket that performs the WebSocket upgrade and then never
 * reads. To fill its buffers in seconds rather than after thousands of alerts, the daemon loads a
 * second probe whose alert label is 60 kB: every injected request raises one ordinary alert (probe
 * test-injection, to which the 1000 subscribe) and one 60 kB alert (to which only the stalled
 * socket listens, having no filter), and the daemon's per-client buffer limit is 256 KiB.
 *
 * What is asserted is delivery, not speed: while the stalled socket is connected, each alert reaches
 * all 1000 others before the next request is sent; nobody else is closed. Latencies (the daemon's
 * `forwardAtUs`, when the token's forward pass returned, to receipt here) are printed for reading;
 * alert latency with 1 and 100 subscribers is measured by bench/daemon.ts.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { trainBenchProbes } from '../bench/lib/bench-probes.js';
import { scrape, stalledSubscriber, subscribe, type Subscriber } from '../bench/lib/clients.js';
import { spawnDaemonProcess, type DaemonProcess } from '../bench/lib/daemon-process.js';
import { quantile } from '../bench/lib/stats.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { CODE16M, TEST_CACHE, tempDir, waitUntil } from './helpers.js';

const MODEL = 'qwen2-code-16m';
const SUBSCRIBERS = 1000;
let probe: TestProbe;
let d: DaemonProcess;
const subs: Subscriber[] = [];

beforeAll(async () => {
  probe = await trainTestProbe();
  const dir = tempDir('lw-ws1000-');
  const big = await trainBenchProbes(CODE16M, { dir, injectLayer: INJECT_LAYER, layers: [6], prefix: 'bulky', label: `bulky ${'x'.repeat(60_000)}`, cacheDir: TEST_CACHE });
  const cfg = join(dir, 'config.json');
  writeFileSync(cfg, JSON.stringify({ websocket: { bufferLimitBytes: 262_144 } }));
  d = await spawnDaemonProcess({
    argv: ['--model', CODE16M, '--probe', probe.path, '--probe', big.probes[0].path, '--port', '0', '--log-level', 'warn', '--alert-log', join(dir, 'alerts.db')],
    env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1', LATENTWATCH_CONFIG: cfg },
  });
});
afterAll(async () => {
  for (const s of subs) s.ws.terminate();
  await d?.stop();
});

async function inject(i: number): Promise<number> {
  const r = await fetch(`${d.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
    body: JSON.stringify({ model: MODEL, prompt: `def f${i}(x):\n`, max_tokens: 2, temperature: 0, latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window: 'generation' } } }),
  });
  expect(r.status).toBe(200);
  const v = ((await r.json()) as { latentwatch: { probes: { id: string; alert_ids: number[] }[] } }).latentwatch;
  const ids = v.probes.find((p) => p.id === 'test-injection')!.alert_ids;
  expect(ids).toHaveLength(1);
  return ids[0];
}

/** Waits until every subscriber holds each of the given alert ids exactly once. */
async function deliveredToAll(ids: number[], what: string): Promise<void> {
  const want = new Set(ids);
  const missing = () => subs.filter((s) => s.alerts.filter((a) => want.has(a.id)).length !== ids.length).length;
  await waitUntil(() => missing() === 0, { timeoutMs: 20_000, what: `all ${SUBSCRIBERS} subscribers to receive ${what}`, detail: () => `${missing()} subscribers lack some` });
}

/** Latencies (ms) of the given alert ids over every subscriber; waits until all have them. */
async function latencies(ids: number[], what: string): Promise<number[]> {
  await deliveredToAll(ids, what);
  const want = new Set(ids);
  return subs.flatMap((s) => s.alerts.filter((a) => want.has(a.id)).map((a) => (a.receivedAtUs - a.forwardAtUs!) / 1000));
}

const fmt = (xs: number[]) => `p50 ${quantile(xs, 0.5).toFixed(1)} ms, p99 ${quantile(xs, 0.99).toFixed(1)} ms, max ${xs.reduce((m, x) => Math.max(m, x), -Infinity).toFixed(1)} ms (${xs.length} receipts)`;

describe('1000 subscribers, one stalled', () => {
  it('the others get every alert while one is stalled, and after; the stalled one is closed with 4008', async () => {
    // The injected requests are the admin's tenant: only the admin key sees their alerts.
    for (let i = 0; i < SUBSCRIBERS; i += 100) {
      const batch = Array.from({ length: 100 }, () => subscribe(d.url, { key: ADMIN_KEY, query: '?probe=test-injection' }));
      await Promise.all(batch.map((s) => s.opened));
      subs.push(...batch);
    }
    expect(await scrape(d.url, 'latentwatch_websocket_subscribers')).toBe(SUBSCRIBERS);

    // Baseline: no stalled client.
    const base: number[] = [];
    for (let i = 0; i < 15; i++) base.push(await inject(i));
    const baseLat = await latencies(base, 'the baseline alerts');

    // A stalled subscriber joins; alerts keep coming until the daemon drops it.
    const stalled = stalledSubscriber(d.url, { key: ADMIN_KEY });
    await stalled.upgraded;
    const during: number[] = [];
    let dropped = false;
    let deliveredWhileStalled = 0;
    for (let i = 0; i < 200 && !dropped; i++) {
      const id = await inject(1000 + i);
      during.push(id);
      // The stalled peer does not hold the others up: they all have this alert before the next one.
      await deliveredToAll([id], `alert ${id} while a peer is stalled`);
      dropped = (await scrape(d.url, 'latentwatch_websocket_slow_consumer_disconnects_total')) >= 1;
      if (!dropped) deliveredWhileStalled++;
    }
    expect(dropped).toBe(true);
    expect(deliveredWhileStalled).toBeGreaterThan(0);
    // Reading again (before the daemon's 5 s close grace ends), the socket finds the alerts it was
    // sent, then a close frame with 4008.
    const drained = await stalled.drain(4000);
    expect(drained.closeCode).toBe(4008);
    expect(drained.textFrames).toBeGreaterThan(0);
    const duringLat = await latencies(during, 'the alerts raised while one was stalled');

    // After the drop, everyone else carries on.
    const after: number[] = [];
    for (let i = 0; i < 10; i++) after.push(await inject(5000 + i));
    const afterLat = await latencies(after, 'the alerts raised after the drop');

    console.log(`${SUBSCRIBERS} subscribers: baseline ${fmt(baseLat)}; while one stalled (${during.length} alerts until it was dropped) ${fmt(duringLat)}; after ${fmt(afterLat)}`);
    expect(subs.every((s) => s.closeCode === null)).toBe(true);
    expect(await scrape(d.url, 'latentwatch_websocket_subscribers')).toBe(SUBSCRIBERS);
    expect(await scrape(d.url, 'latentwatch_websocket_slow_consumer_disconnects_total')).toBe(1);
    // Every receipt carries the daemon's forward-pass time, and it is not after the receipt (the two
    // processes read the same clock; 1 ms of rounding allowed).
    expect(baseLat.length + duringLat.length + afterLat.length).toBe(SUBSCRIBERS * (base.length + during.length + after.length));
    expect([baseLat, duringLat, afterLat].flat().reduce((m, x) => Math.min(m, x), Infinity)).toBeGreaterThan(-1);
  });
});
