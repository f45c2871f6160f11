/**
 * The JetStream alert store on its own (src/daemon/nats-alert-store.ts) against a real nats-server
 * that requires a user and password: credentials never reach its events; the outbox file keeps
 * alerts across a restart of the replica while NATS is down; a republished alert whose first
 * publish did reach the stream (a lost acknowledgement) is dropped by the duplicate window; reads
 * filter and page like the SQLite log; the hub on it keeps the slow-consumer rule (4008) while a fast
 * subscriber gets the whole stream.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import Fastify from 'fastify';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertHub, CLOSE_SLOW_CONSUMER } from '../src/daemon/alert-hub.js';
import { loadConfig } from '../src/daemon/config.js';
import { alertRoutes } from '../src/daemon/alert-routes.js';
import { Authenticator } from '../src/daemon/auth.js';
import { installErrorHandlers } from '../src/daemon/http-errors.js';
import type { AlertDraft } from '../src/daemon/alert-log.js';
import { JetStreamAlertStore, type JetStreamStoreOptions } from '../src/daemon/nats-alert-store.js';
import { startSubscriberFleet } from '../bench/lib/subscriber-fleet.js';
import { startNats, type NatsServer } from './nats-fixture.js';
import { freePort, tempDir, waitUntil } from './helpers.js';

const USER = 'latentwatch';
const PASSWORD = 'nats-secret-password-42';
let nats: NatsServer;
const events: string[] = [];
const stores: JetStreamAlertStore[] = [];

beforeAll(async () => {
  nats = await startNats(['--user', USER, '--pass', PASSWORD]);
});
afterAll(async () => {
  for (const s of stores) await s.close();
  await nats?.stop();
});

let n = 0;
function draft(extra: Partial<AlertDraft> = {}): AlertDraft {
  n++;
  return { requestId: `req-${n}`, model: 'm', probeId: 'probe.a', probeLabel: 'a', severity: 'warning', score: 1, threshold: 0.5, tokenIndex: n, silent: true, verbalized: false, kind: 'detection', tenant: 'team-a', ...extra };
}

async function open(o: Partial<JetStreamStoreOptions> = {}): Promise<JetStreamAlertStore> {
  const s = await JetStreamAlertStore.open({
    servers: [nats.url],
    stream: 'STORE_TEST',
    subject: 'store.alerts',
    replicas: 1,
    replica: 'r1',
    user: USER,
    password: PASSWORD,
    outboxPath: join(tempDir('lw-outbox-'), 'outbox.db'),
    publishTimeoutMs: 500,
    duplicateWindowSeconds: 120,
    connectWaitMs: 10_000,
    onEvent: (level, fields, msg) => events.push(JSON.stringify({ level, fields, msg })),
    ...o,
  });
  stores.push(s);
  return s;
}

async function closeStore(s: JetStreamAlertStore): Promise<void> {
  await s.close();
  stores.splice(stores.indexOf(s), 1);
}

describe('serve --nats configuration', () => {
  it('servers from --nats or LATENTWATCH_NATS_URL (comma-separated), credentials from the environment only, bad URLs refused with a code', () => {
    const { config } = loadConfig({ env: { LATENTWATCH_NATS_URL: 'nats://a:4222, nats://b:4222', LATENTWATCH_NATS_PASSWORD: 'pw', LATENTWATCH_NATS_USER: 'u' }, argv: ['--replica', 'pod-1', '--nats-stream', 'MY_ALERTS'] });
    expect(config.nats).toMatchObject({ servers: ['nats://a:4222', 'nats://b:4222'], user: 'u', password: 'pw', replica: 'pod-1', stream: 'MY_ALERTS', replicas: 1 });
    expect(loadConfig({ argv: ['--nats', 'nats://x:4222'] }).config.nats.servers).toEqual(['nats://x:4222']);
    expect(loadConfig({}).config.nats.servers).toEqual([]); // without it: the SQLite log
    expect(() => loadConfig({ argv: ['--nats', 'http://x:4222'] })).toThrow(expect.objectContaining({ code: 'LW_ERR_CONFIG_INVALID' }));
    expect(() => loadConfig({ argv: ['--nats-stream', 'has.dots'] })).toThrow(expect.objectContaining({ code: 'LW_ERR_CONFIG_INVALID' }));
    // A password on the command line would show in `ps`: there is no such flag.
    expect(() => loadConfig({ argv: ['--nats-password', 'pw'] })).toThrow(expect.objectContaining({ code: 'LW_ERR_CONFIG_FLAG_UNKNOWN' }));
  });
});

describe('JetStream alert store', () => {
  it('publishes with credentials and reads back with filters, tenancy and paging; credentials never reach its events', async () => {
    const s = await open();
    expect(s.isConnected).toBe(true);
    const results = await s.append([draft(), draft({ probeId: 'probe.b', severity: 'critical' }), draft({ tenant: 'team-b' })]);
    expect(results.every((r) => r.durable && !r.queued && r.alert.id > 0 && r.alert.replica === 'r1')).toBe(true);
    const [a, b, c] = results.map((r) => r.alert);
    expect([b.id - a.id, c.id - b.id]).toEqual([1, 1]);
    expect((await s.since(a.id - 1, {}, 10)).alerts).toEqual([a, b, c]);
    expect((await s.since(a.id - 1, { probe: 'probe.b' }, 10)).alerts).toEqual([b]);
    expect((await s.since(a.id - 1, { minSeverity: 'critical' }, 10)).alerts).toEqual([b]);
    expect((await s.since(a.id - 1, { tenant: 'team-b' }, 10)).alerts).toEqual([c]);
    const page = await s.since(a.id - 1, {}, 2);
    expect(page.alerts).toEqual([a, b]);
    expect(page.scannedThrough).toBe(b.id);
    expect(await s.since(c.id, {}, 10)).toEqual({ alerts: [], scannedThrough: c.id });
    expect(await s.lastId()).toBe(c.id);
    await waitUntil(() => s.liveThrough === c.id, { timeoutMs: 10_000, what: 'the live feed to deliver the three alerts' });

    // A wrong password: the store still opens (the replica serves), queues, and says why without the secret.
    const wrong = await open({ password: 'not-the-password', connectWaitMs: 1000 });
    expect(wrong.isConnected).toBe(false);
    const queued = await wrong.append([draft()]);
    expect(queued[0]).toMatchObject({ queued: true, durable: true, alert: { id: 0 } });
    expect(wrong.outboxPending).toBe(1);
    await closeStore(wrong);
    expect(events.length).toBeGreaterThan(0);
    for (const e of events) {
      expect(e).not.toContain(PASSWORD);
      expect(e).not.toContain('not-the-password');
    }
  }, 60_000);

  it("the live feed hands one token's alerts to the listener in one call with their forwardAtUs, on every replica, in id order", async () => {
    const a = await open({ stream: 'FEED_TEST', subject: 'feed.alerts', replica: 'a' });
    const b = await open({ stream: 'FEED_TEST', subject: 'feed.alerts', replica: 'b' });
    const calls: { on: string; ids: number[]; at: number | undefined }[] = [];
    a.onLive((alerts, timing) => calls.push({ on: 'a', ids: alerts.map((x) => x.id), at: timing?.forwardAtUs }));
    b.onLive((alerts, timing) => calls.push({ on: 'b', ids: alerts.map((x) => x.id), at: timing?.forwardAtUs }));
    const first = await a.append([draft(), draft(), draft()], { forwardAtUs: 111 });
    const second = await b.append([draft(), draft()], { forwardAtUs: 222 });
    const ids1 = first.map((r) => r.alert.id);
    const ids2 = second.map((r) => r.alert.id);
    await waitUntil(() => calls.filter((c) => c.on === 'a').flatMap((c) => c.ids).length >= 5 && calls.filter((c) => c.on === 'b').flatMap((c) => c.ids).length >= 5, { timeoutMs: 10_000, what: 'both feeds to deliver five alerts' });
    for (const on of ['a', 'b']) {
      const mine = calls.filter((c) => c.on === on);
      // One call per token (the two appends' alerts never share a call: their forwardAtUs differ).
      expect(mine.map((c) => [c.ids, c.at])).toEqual([
        [ids1, 111],
        [ids2, 222],
      ]);
    }
    expect(a.liveThrough).toBe(ids2[1]);
  });

  it('keeps queued alerts across a restart of the replica while NATS is down, and a republish whose first publish landed is stored once', async () => {
    const dir = tempDir('lw-outbox-restart-');
    const outboxPath = join(dir, 'outbox.db');
    const first = await open({ outboxPath });
    const before = (await first.append([draft()]))[0].alert;
    await nats.stop();
    const queued = await first.append([draft({ requestId: 'during-1' }), draft({ requestId: 'during-2' })]);
    expect(queued.map((r) => r.queued)).toEqual([true, true]);
    await closeStore(first); // the replica stops with its outbox full

    // The first queued alert's publish "reached the stream but its acknowledgement was lost": publish
    // it by hand with the id it keeps in the outbox, as the client would have on reconnect.
    const db = new Database(outboxPath, { readonly: true });
    const rows = db.prepare('SELECT msg_id AS msgId, payload FROM outbox ORDER BY seq').all() as { msgId: string; payload: string }[];
    db.close();
    expect(rows.length).toBe(2);
    await nats.start();
    const nc = await connect({ servers: [nats.url], user: USER, pass: PASSWORD });
    await waitUntil(
      async () => {
        await jetstream(nc).publish('store.alerts', rows[0].payload, { msgID: rows[0].msgId, timeout: 1000 });
        return true;
      },
      { timeoutMs: 30_000, what: 'JetStream to accept the hand-made publish after the restart' },
    );
    await nc.close();

    const second = await open({ outboxPath });
    await waitUntil(() => second.outboxPending === 0, { timeoutMs: 30_000, what: 'the outbox to drain' });
    const stored = (await second.since(before.id, {}, 100)).alerts;
    expect(stored.map((a) => a.requestId)).toEqual(['during-1', 'during-2']);
    expect(stored.every((a) => a.replica === 'r1' && a.tenant === 'team-a')).toBe(true);
  }, 90_000);

  it('the hub on the stream closes a subscriber that stops reading with 4008 while a fast one gets every alert in id order', async () => {
    const store = await open({ stream: 'SLOW_TEST', subject: 'slow.alerts' });
    // The live feed hands the hub up to one read batch (500 alerts, ~1 MB here) in one fan-out: the
    // bound is above that, so only a reader that stopped is over it, never one that reads.
    const hub = new AlertHub({ store, auth: new Authenticator({ apiKeys: [], adminKey: null }), bufferLimitBytes: 4 * 1024 * 1024, maxQueuedMessages: 100_000, heartbeatIntervalMs: 60_000, closeGraceMs: 30_000 });
    // Under a loaded CI machine registering the routes (websocket plugin, first imports) can pass fastify's 10 s default.
    const app = Fastify({ pluginTimeout: 60_000 });
    installErrorHandlers(app);
    await app.register(alertRoutes, { hub, store, auth: new Authenticator({ apiKeys: [], adminKey: null }) });
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const addr = app.server.address();
      if (addr === null || typeof addr === 'string') throw new Error('no address');
      const connect = async () => {
        const ws = new WebSocket(`ws://127.0.0.1:${addr.port}/v1/alerts`);
        const got: number[] = [];
        ws.on('message', (m) => {
          const msg = JSON.parse(String(m)) as { type: string; alert?: { id: number } };
          if (msg.type === 'alert' && msg.alert) got.push(msg.alert.id);
        });
        const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
        await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
        return { ws, got, closed };
      };
      // The fast subscriber reads on its own thread, as a real one in its own process does: on this
      // event loop it could not read while the hub writes a batch, and would look stalled under load.
      const fast = await startSubscriberFleet(`http://127.0.0.1:${addr.port}`, 1, { workers: 1 });
      const fastIds = async () => (await fast.collect())[0].alerts.map((a) => a.id);
      const slow = await connect();
      await waitUntil(() => hub.subscriberCount === 2, { timeoutMs: 5000, what: 'two subscribers' });
      slow.ws.pause();
      const excerpt = 'x'.repeat(2000);
      const acked: number[] = [];
      while (hub.stats().slowConsumerDisconnects === 0 && acked.length < 20_000) {
        const results = await store.append(Array.from({ length: 50 }, () => draft({ textExcerpt: excerpt })));
        acked.push(...results.map((r) => r.alert.id));
      }
      expect(hub.stats().dropped.buffer).toBe(1);
      let got: number[] = [];
      for (const deadline = Date.now() + 30_000; got.length < acked.length && Date.now() < deadline; ) {
        got = await fastIds();
        if (got.length < acked.length) await new Promise((r) => setTimeout(r, 100));
      }
      expect(got).toEqual(acked);
      slow.ws.resume();
      expect(await slow.closed).toBe(CLOSE_SLOW_CONSUMER);
      await fast.close();
    } finally {
      await app.close();
    }
  }, 60_000);

  it('NATS unreachable from the start: the store opens, queues, and a process using it exits once it is closed', async () => {
    // A port nothing listens on; a child process, so that a connect still pending would show as a process that does not exit.
    const dir = tempDir('lw-nats-down-');
    const script = join(dir, 'child.mts');
    const module = new URL('../src/daemon/nats-alert-store.ts', import.meta.url).pathname;
    writeFileSync(
      script,
      `import { JetStreamAlertStore } from ${JSON.stringify(module)};
const store = await JetStreamAlertStore.open({ servers: ['nats://127.0.0.1:${await freePort()}'], stream: 'S', subject: 's.a', replicas: 1, outboxPath: ${JSON.stringify(join(dir, 'outbox.db'))}, publishTimeoutMs: 200, duplicateWindowSeconds: 60, connectWaitMs: 500 });
const [r] = await store.append([{ requestId: 'r', model: 'm', probeId: 'p', probeLabel: 'p', severity: 'warning', score: 1, threshold: 0.5, tokenIndex: 0, silent: true, verbalized: false, kind: 'detection' }]);
process.stdout.write(JSON.stringify({ queued: r.queued, pending: store.outboxPending, connected: store.isConnected }) + '\\n');
await store.close();
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += String(b)));
    child.stderr.on('data', (b: Buffer) => (out += String(b)));
    await waitUntil(() => child.exitCode !== null, { timeoutMs: 30_000, what: 'the process to exit after closing the store', detail: () => out });
    expect(child.exitCode, out).toBe(0);
    expect(JSON.parse(out.trim().split('\n').at(-1)!)).toEqual({ queued: true, pending: 1, connected: false });
  }, 60_000);
});
