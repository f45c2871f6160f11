/**
 * Several replicas, one alert stream (issue 15): three `latentwatch serve --nats` processes and one
 * real nats-server (JetStream) on loopback, traffic injected through the admin injection API.
 * A subscriber on replica C gets every alert raised on A and B once, in id order; every replica
 * serves the whole stream (polling and resume); kill -9 of A in the middle of traffic loses no
 * acknowledged alert; NATS stopped and started again in the middle of traffic: B keeps serving,
 * queues in its outbox (latentwatch_alert_outbox_pending), publishes once NATS is back, and no
 * alert is stored twice; the replicas' alert counters add up to the stream.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scrape, subscribe, type Subscriber } from '../bench/lib/clients.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, spawnServe, trainTestProbe, type ServeProcess, type TestProbe } from './daemon-fixture.js';
import { startNats, type NatsServer } from './nats-fixture.js';
import { CODE16M, tempDir, waitUntil } from './helpers.js';

const MODEL = 'qwen2-code-16m';
const STREAM = 'LW_TEST_ALERTS';
// NATS requires a user and password (from the environment, as in deploy/k8s); no log line may carry the password.
const NATS_USER = 'latentwatch';
const NATS_PASSWORD = 'replica-test-nats-password-7';

interface StreamAlert {
  id: number;
  requestId: string;
  probeId: string;
  tokenIndex: number;
  replica?: string;
  tenant: string;
}
interface Verdict {
  request_id: string;
  probes: { alert_ids: number[]; alerts_queued?: number }[];
}

let probe: TestProbe;
let nats: NatsServer;
const replicas = new Map<string, ServeProcess>();
const dirs = new Map<string, string>();
let config: string;

async function startReplica(name: string): Promise<ServeProcess> {
  const dir = dirs.get(name) ?? tempDir(`lw-replica-${name}-`);
  dirs.set(name, dir);
  const p = await spawnServe(['--model', CODE16M, '--probe', probe.path, '--nats', nats.url, '--nats-stream', STREAM, '--replica', name, '--state-dir', dir], {
    LATENTWATCH_API_KEY: API_KEY,
    LATENTWATCH_ADMIN_KEY: ADMIN_KEY,
    LATENTWATCH_ALLOW_INJECTION: '1',
    LATENTWATCH_HOST: '127.0.0.1',
    LATENTWATCH_CONFIG: config,
    LATENTWATCH_NATS_USER: NATS_USER,
    LATENTWATCH_NATS_PASSWORD: NATS_PASSWORD,
  });
  replicas.set(name, p);
  return p;
}

const url = (name: string) => replicas.get(name)!.url;

/** One admin-injected request on a replica; its verdict (the probe fires on the injected tokens). */
async function injected(replica: string, i: number): Promise<Verdict> {
  const r = await fetch(`${url(replica)}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
    body: JSON.stringify({ model: MODEL, prompt: `def ${replica}${i}(x):\n`, max_tokens: 3, temperature: 0, latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window: 'generation' } } }),
  });
  expect(r.status).toBe(200);
  return ((await r.json()) as { latentwatch: Verdict }).latentwatch;
}

const ackedIds = (vs: readonly Verdict[]) => vs.flatMap((v) => v.probes.flatMap((p) => p.alert_ids));
const queuedCount = (vs: readonly Verdict[]) => vs.reduce((n, v) => n + v.probes.reduce((m, p) => m + (p.alerts_queued ?? 0), 0), 0);

/** The whole stream as one replica serves it (polling, page by page). */
async function poll(replica: string, since = 0): Promise<StreamAlert[]> {
  const out: StreamAlert[] = [];
  for (let after = since; ; ) {
    const r = await fetch(`${url(replica)}/v1/alerts?since=${after}&limit=1000`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    expect(r.status).toBe(200);
    const page = (await r.json()) as { data: StreamAlert[]; last_id: number; has_more: boolean };
    out.push(...page.data);
    after = page.last_id;
    if (!page.has_more) return out;
  }
}

const ids = (xs: readonly { id: number }[]) => xs.map((x) => x.id);
const increasing = (xs: readonly number[]) => xs.every((x, i) => i === 0 || x > xs[i - 1]);
/** An alert's identity independent of its id: a duplicate publish would repeat it. */
const identity = (a: StreamAlert) => `${a.requestId}/${a.probeId}/${a.tokenIndex}`;

beforeAll(async () => {
  probe = await trainTestProbe();
  nats = await startNats(['--user', NATS_USER, '--pass', NATS_PASSWORD]);
  config = join(tempDir('lw-replica-config-'), 'config.json');
  // A publish not acknowledged within 500 ms goes to the outbox (default 2 s).
  writeFileSync(config, JSON.stringify({ nats: { publishTimeoutMs: 500 } }));
  for (const name of ['A', 'B', 'C']) await startReplica(name);
}, 300_000);

afterAll(async () => {
  for (const p of replicas.values()) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await nats?.stop();
});

describe('three replicas on one JetStream stream', () => {
  let onC: Subscriber;
  const verdicts: Verdict[] = [];

  it('a subscriber on C gets every alert raised on A and B exactly once, in id order; every replica serves the same stream', async () => {
    onC = subscribe(url('C'), { key: ADMIN_KEY });
    await onC.opened;
    const results = await Promise.all(['A', 'B'].map(async (r) => {
      const vs: Verdict[] = [];
      for (let i = 0; i < 4; i++) vs.push(await injected(r, i));
      return vs;
    }));
    const [fromA, fromB] = results;
    verdicts.push(...fromA, ...fromB);
    const acked = ackedIds(verdicts).sort((a, b) => a - b);
    expect(acked.length).toBeGreaterThanOrEqual(8);
    expect(new Set(acked).size).toBe(acked.length);
    expect(queuedCount(verdicts)).toBe(0);
    await waitUntil(() => onC.alerts.length >= acked.length, { timeoutMs: 30_000, what: 'the subscriber on C to receive every alert', detail: () => JSON.stringify(ids(onC.alerts)) });
    expect(ids(onC.alerts)).toEqual(acked);

    // One id space: every replica answers the same stream, and each alert names its replica.
    const streams = await Promise.all(['A', 'B', 'C'].map((r) => poll(r)));
    for (const s of streams) expect(ids(s)).toEqual(acked);
    const replicaOf = new Map(streams[0].map((a) => [a.id, a.replica]));
    for (const id of ackedIds(fromA)) expect(replicaOf.get(id)).toBe('A');
    for (const id of ackedIds(fromB)) expect(replicaOf.get(id)).toBe('B');

    // Resume from any replica: after the 3rd alert, on B, WebSocket and polling alike.
    const resumed = subscribe(url('B'), { key: ADMIN_KEY, query: `?last_id=${acked[2]}` });
    await waitUntil(() => resumed.alerts.length >= acked.length - 3, { timeoutMs: 30_000, what: 'the resumed subscriber on B' });
    expect(ids(resumed.alerts)).toEqual(acked.slice(3));
    resumed.ws.close();
    expect(ids(await poll('A', acked[4]))).toEqual(acked.slice(5));
    // A cursor beyond the stream is refused as on one node.
    expect((await fetch(`${url('C')}/v1/alerts?since=${acked.at(-1)! + 1000}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).status).toBe(409);
    // Tenancy holds cluster-wide: a user key sees none of the admin's alerts.
    const r = await fetch(`${url('A')}/v1/alerts?since=0`, { headers: { authorization: `Bearer ${API_KEY}` } });
    expect(((await r.json()) as { data: unknown[] }).data).toEqual([]);

    // The replicas' counters add up to the stream (C raised none).
    const counts = await Promise.all(['A', 'B', 'C'].map((n) => scrape(url(n), 'latentwatch_alerts_total')));
    expect(counts[2]).toBe(0);
    expect(counts[0] + counts[1]).toBe(acked.length);
  }, 180_000);

  it('kill -9 of A in the middle of traffic loses no acknowledged alert; B and C keep serving', async () => {
    const a = replicas.get('A')!;
    const fromA: Verdict[] = [];
    const fromB: Verdict[] = [];
    let killed = false;
    const onA = (async () => {
      for (let i = 100; !killed; i++) {
        try {
          fromA.push(await injected('A', i));
        } catch {
          return; // the connection died with the process: that request was never acknowledged
        }
      }
    })();
    const onB = (async () => {
      for (let i = 100; i < 106; i++) fromB.push(await injected('B', i));
    })();
    await waitUntil(() => fromA.length >= 2, { timeoutMs: 60_000, what: 'A to acknowledge two requests' });
    a.child.kill('SIGKILL');
    killed = true;
    await Promise.all([onA, onB]);
    verdicts.push(...fromA, ...fromB);
    const acked = ackedIds(verdicts).sort((x, y) => x - y);
    const stream = await poll('B');
    // Every acknowledged alert is in the stream, once (A may have stored one more it never acknowledged).
    const storedIds = new Set(ids(stream));
    for (const id of acked) expect(storedIds.has(id)).toBe(true);
    expect(new Set(stream.map(identity)).size).toBe(stream.length);
    await waitUntil(() => onC.alerts.length >= stream.length, { timeoutMs: 30_000, what: 'C to receive the whole stream' });
    expect(ids(onC.alerts)).toEqual(ids(stream));
    // A comes back on the same state directory and serves the same stream.
    await startReplica('A');
    expect(ids(await poll('A'))).toEqual(ids(stream));
  }, 240_000);

  it('NATS stopped and started again in the middle of traffic: the replicas serve, queue in their outboxes, publish once back, nothing twice', async () => {
    const before = await poll('C');
    // Traffic on A and B, without pause, from before the stop until after the restart.
    const during: Verdict[] = [];
    let stop = false;
    const loops = ['A', 'B'].map(async (r) => {
      for (let i = 200; !stop; i++) during.push(await injected(r, i));
    });
    await waitUntil(() => during.length >= 2, { timeoutMs: 60_000, what: 'traffic before the stop' });
    await nats.stop();
    // Acknowledged by no stream: queued, counted, and shown, while the requests keep being served.
    await waitUntil(() => queuedCount(during) >= 2, { timeoutMs: 60_000, what: 'alerts queued while NATS is down' });
    const pending = await scrape(url('B'), 'latentwatch_alert_outbox_pending');
    const ready = (await (await fetch(`${url('B')}/readyz`)).json()) as { alert_stream: { connected: boolean; outbox_pending: number } };
    expect(ready.alert_stream.connected).toBe(false);
    expect(ready.alert_stream.outbox_pending).toBeGreaterThanOrEqual(pending);
    // Polling needs the stream: a coded 503, not a partial answer.
    const down = await fetch(`${url('C')}/v1/alerts?since=0`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    expect(down.status).toBe(503);
    expect(((await down.json()) as { error: { code: string } }).error.code).toBe('LW_ERR_ALERT_STREAM_UNAVAILABLE');

    await nats.start();
    const connected = async (n: string) => ((await (await fetch(`${url(n)}/readyz`)).json()) as { alert_stream: { connected: boolean } }).alert_stream.connected;
    for (const n of ['A', 'B', 'C']) await waitUntil(() => connected(n), { timeoutMs: 60_000, what: `${n} to reconnect to NATS` });
    // Traffic after every replica has reconnected is acknowledged again.
    const mark = during.length;
    await waitUntil(() => during.length >= mark + 4, { timeoutMs: 60_000, what: 'traffic after the restart' });
    stop = true;
    await Promise.all(loops);
    expect(queuedCount(during.slice(mark + 2))).toBe(0);
    for (const n of ['A', 'B']) await waitUntil(async () => (await scrape(url(n), 'latentwatch_alert_outbox_pending')) === 0, { timeoutMs: 60_000, what: `${n}'s outbox to drain` });

    const stream = await poll('A');
    expect(increasing(ids(stream))).toBe(true);
    expect(new Set(stream.map(identity)).size).toBe(stream.length); // nothing stored twice
    expect(ids(stream.slice(0, before.length))).toEqual(ids(before));
    // Every alert of the traffic is in the stream once: the acknowledged ones by id, the queued ones by request.
    const storedIds = new Set(ids(stream));
    for (const id of ackedIds(during)) expect(storedIds.has(id)).toBe(true);
    const requests = new Set(during.map((v) => v.request_id));
    expect(stream.filter((a) => requests.has(a.requestId)).length).toBe(ackedIds(during).length + queuedCount(during));
    // The subscriber on C, connected through the outage, got every alert once.
    await waitUntil(() => onC.alerts.length >= stream.length, { timeoutMs: 30_000, what: 'C to receive the drained outboxes', detail: () => `${onC.alerts.length} of ${stream.length}` });
    expect(ids(onC.alerts)).toEqual(ids(stream));
    onC.ws.close();
    // Through connects, the outage and the reconnects, the password reached no log line.
    for (const [name, p] of replicas) {
      expect(p.log(), name).toContain('connected to NATS');
      expect(p.log(), name).not.toContain(NATS_PASSWORD);
    }
  }, 240_000);
});
