import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { AlertHub, CLOSE_SLOW_CONSUMER, textFrame, type AlertHubOptions } from '../src/daemon/alert-hub.js';
import { AlertLog, type Alert, type AlertDraft } from '../src/daemon/alert-log.js';
import { SqliteAlertStore } from '../src/daemon/alert-store.js';
import { alertRoutes } from '../src/daemon/alert-routes.js';
import { Authenticator } from '../src/daemon/auth.js';
import { installErrorHandlers } from '../src/daemon/http-errors.js';

const dir = mkdtempSync(join(tmpdir(), 'lw-hub-'));
const servers: Server[] = [];
afterAll(async () => {
  for (const s of servers) await s.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Server {
  base: string;
  ws: string;
  hub: AlertHub;
  log: AlertLog;
  app: FastifyInstance;
  close(): Promise<void>;
}

async function startServer(name: string, hubOptions: Partial<AlertHubOptions> = {}, keys = { apiKeys: ['user-key'], adminKey: 'admin-key' as string | null }): Promise<Server> {
  const log = AlertLog.open({ path: name === ':memory:' ? ':memory:' : join(dir, `${name}.db`) });
  const auth = new Authenticator(keys);
  const store = new SqliteAlertStore(log);
  const hub = new AlertHub({ store, auth, bufferLimitBytes: 1 << 20, maxQueuedMessages: 100_000, heartbeatIntervalMs: 60_000, ...hubOptions });
  const app = Fastify();
  installErrorHandlers(app); // as server.ts: the routes answer through the root handlers
  await app.register(alertRoutes, { hub, store, auth });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no address');
  const s: Server = {
    base: `http://127.0.0.1:${addr.port}`,
    ws: `ws://127.0.0.1:${addr.port}/v1/alerts`,
    hub,
    log,
    app,
    close: async () => {
      await app.close();
      if (!log.isClosed) log.close();
    },
  };
  servers.push(s);
  return s;
}

let seq = 0;
function draft(extra: Partial<AlertDraft> = {}): AlertDraft {
  seq++;
  return {
    requestId: `req-${seq}`,
    model: 'tiny',
    probeId: 'probe.a',
    probeLabel: 'injected concept',
    severity: 'warning',
    score: 0.91,
    threshold: 0.5,
    tokenIndex: seq,
    silent: true,
    verbalized: false,
    kind: 'detection',
    tenant: 'key-1', // the name of 'user-key', the servers' one API key: a user key sees its own tenant's alerts
    ...extra,
  };
}

interface Client {
  ws: WebSocket;
  alerts: Alert[];
  heartbeats: number;
  pings: number;
  closed: Promise<{ code: number; reason: string }>;
}

function client(url: string, headers: Record<string, string> = {}): Client {
  const ws = new WebSocket(url, { headers });
  const c: Client = {
    ws,
    alerts: [],
    heartbeats: 0,
    pings: 0,
    closed: new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))),
  };
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString()) as { type: string; alert?: Alert };
    if (m.type === 'alert' && m.alert) c.alerts.push(m.alert);
    else if (m.type === 'heartbeat') c.heartbeats++;
  });
  ws.on('ping', () => c.pings++);
  ws.on('error', () => undefined);
  return c;
}

async function opened(c: Client): Promise<Client> {
  if (c.ws.readyState === WebSocket.OPEN) return c;
  await new Promise<void>((resolve, reject) => {
    c.ws.once('open', () => resolve());
    c.ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    c.ws.once('error', reject);
  });
  return c;
}

/** The HTTP answer to a refused upgrade. */
function refused(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: { error: { code: string; type: string } } }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on('open', () => reject(new Error('upgrade accepted')));
    ws.on('error', () => undefined);
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(body) }));
    });
  });
}

async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const ids = (alerts: readonly Alert[]): number[] => alerts.map((a) => a.id);
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('alert hub', () => {
  it('authenticates by bearer header or ?token=, and answers refusals with OpenAI error bodies', async () => {
    const s = await startServer('auth');
    let r = await refused(s.ws);
    expect(r.status).toBe(401);
    expect(r.body.error).toMatchObject({ code: 'LW_ERR_AUTH_MISSING_KEY', type: 'authentication_error' });
    r = await refused(`${s.ws}?token=wrong`);
    expect(r.body.error.code).toBe('LW_ERR_AUTH_INVALID_KEY');
    r = await refused(`${s.ws}?token=user-key&severity=loud`);
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('LW_ERR_ALERT_BAD_QUERY');
    r = await refused(s.ws.replace('/v1/alerts', '/v1/nope'));
    expect(r.status).toBe(404);

    const byQuery = await opened(client(`${s.ws}?token=user-key`));
    const byHeader = await opened(client(s.ws, { authorization: 'Bearer admin-key' }));
    await until(() => s.hub.subscriberCount === 2, 'two subscribers');
    const a = (await s.hub.raise(draft())).alert;
    await until(() => byQuery.alerts.length === 1 && byHeader.alerts.length === 1, 'delivery');
    expect(byQuery.alerts[0]).toEqual(a);
    byQuery.ws.close();
    byHeader.ws.close();
    await until(() => s.hub.subscriberCount === 0, 'disconnects');

    const poll = await fetch(`${s.base}/v1/alerts`);
    expect(poll.status).toBe(401);
    expect(poll.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(((await poll.json()) as { error: { code: string } }).error.code).toBe('LW_ERR_AUTH_MISSING_KEY');

    // No API key configured: open.
    const open = await startServer('open', {}, { apiKeys: [], adminKey: null });
    const anon = await opened(client(open.ws));
    open.hub.raise(draft());
    await until(() => anon.alerts.length === 1, 'open delivery');
    anon.ws.close();
  });

  it('filters by probe, minimum severity, model, silent and kind', async () => {
    const s = await startServer('filters');
    const t = 'token=user-key';
    const all = await opened(client(`${s.ws}?${t}`));
    const probeB = await opened(client(`${s.ws}?${t}&probe=probe.b`));
    const both = await opened(client(`${s.ws}?${t}&probe=probe.a,probe.b`));
    const critical = await opened(client(`${s.ws}?${t}&severity=critical`));
    const warnUp = await opened(client(`${s.ws}?${t}&severity=warning`));
    const silent = await opened(client(`${s.ws}?${t}&silent=1`));
    const model = await opened(client(`${s.ws}?${t}&model=big`));
    const canary = await opened(client(`${s.ws}?${t}&kind=canary_failure`));
    await until(() => s.hub.subscriberCount === 8, 'subscribers');
    const raised: Alert[] = [];
    const probes = ['probe.a', 'probe.b', 'probe.c'];
    const severities = ['info', 'warning', 'critical'] as const;
    for (let i = 0; i < 24; i++) {
      raised.push(
        (await s.hub.raise(
          draft({
            probeId: probes[i % 3],
            severity: severities[Math.floor(i / 3) % 3],
            silent: i % 2 === 0,
            verbalized: i % 2 !== 0,
            model: i % 4 === 0 ? 'big' : 'tiny',
            kind: i === 23 ? 'canary_failure' : 'detection',
          }),
        )).alert,
      );
    }
    const expected = new Map<Client, Alert[]>([
      [all, raised],
      [probeB, raised.filter((a) => a.probeId === 'probe.b')],
      [both, raised.filter((a) => a.probeId !== 'probe.c')],
      [critical, raised.filter((a) => a.severity === 'critical')],
      [warnUp, raised.filter((a) => a.severity !== 'info')],
      [silent, raised.filter((a) => a.silent)],
      [model, raised.filter((a) => a.model === 'big')],
      [canary, raised.filter((a) => a.kind === 'canary_failure')],
    ]);
    for (const [c, want] of expected) await until(() => c.alerts.length >= want.length, 'filtered delivery');
    await new Promise((r) => setTimeout(r, 50)); // nothing extra arrives
    for (const [c, want] of expected) {
      expect(want.length).toBeGreaterThan(0);
      expect(ids(c.alerts)).toEqual(ids(want));
    }
    for (const c of expected.keys()) c.ws.close();
  });

  it("raiseMany: one token's alerts get consecutive ids, one log transaction, and reach each subscriber in order (filters apply)", async () => {
    const s = await startServer('many');
    const t = 'token=user-key';
    const all = await opened(client(`${s.ws}?${t}`));
    const onlyB = await opened(client(`${s.ws}?${t}&probe=probe.b`));
    await until(() => s.hub.subscriberCount === 2, 'subscribers');
    const first = await s.hub.raiseMany([draft({ probeId: 'probe.a' }), draft({ probeId: 'probe.b' }), draft({ probeId: 'probe.c' })], { forwardAtUs: 1 });
    const second = await s.hub.raiseMany([draft({ probeId: 'probe.b' })]);
    const want = [...first, ...second].map((r) => r.alert);
    expect(ids(want)).toEqual(range(want[0].id, want[0].id + 3));
    expect(want.every((a, i) => a.id === [...first, ...second][i].alert.id)).toBe(true);
    await until(() => all.alerts.length === 4 && onlyB.alerts.length === 2, 'delivery');
    expect(ids(all.alerts)).toEqual(ids(want));
    expect(ids(onlyB.alerts)).toEqual(ids(want.filter((a) => a.probeId === 'probe.b')));
    expect(ids(s.log.since(0))).toEqual(ids(want));
    all.ws.close();
    onlyB.ws.close();
  });

  it('frames alerts of every length class (7-, 16- and 64-bit payload lengths) so a real client reads them intact', async () => {
    const s = await startServer('frames');
    const c = await opened(client(`${s.ws}?token=user-key`));
    await until(() => s.hub.subscriberCount === 1, 'subscriber');
    const excerpts = ['', 'x'.repeat(500), 'é'.repeat(40_000)]; // the last one is > 65535 bytes in UTF-8
    const raised: Alert[] = [];
    for (const textExcerpt of excerpts) raised.push((await s.hub.raise(textExcerpt ? draft({ textExcerpt }) : draft())).alert);
    await until(() => c.alerts.length === 3, 'delivery');
    expect(c.alerts).toEqual(raised);
    expect(textFrame('a'.repeat(125)).length).toBe(127);
    expect(textFrame('a'.repeat(126)).length).toBe(130);
    expect(textFrame('a'.repeat(65536)).length).toBe(65546);
    c.ws.close();
  });

  it('sends heartbeats (JSON + ping) and drops a client that stops answering pings', async () => {
    const s = await startServer('heartbeat', { heartbeatIntervalMs: 60, closeGraceMs: 100 });
    const live = await opened(client(`${s.ws}?token=user-key`));
    const mute = await opened(client(`${s.ws}?token=user-key`));
    mute.ws.pause(); // stops reading: no pongs
    await until(() => live.heartbeats >= 3 && live.pings >= 3, 'heartbeats');
    await until(() => s.hub.stats().heartbeatTimeouts === 1, 'mute client dropped');
    expect(s.hub.stats().dropped).toEqual({ buffer: 0, pong_timeout: 1, replay_stall: 0 }); // closed with 4008, then terminated after the grace
    await until(() => s.hub.subscriberCount === 1, 'mute client gone');
    mute.ws.terminate();
    live.ws.close();
  });

  it('resumes from last_id with no gap and no duplicate while alerts keep being appended', async () => {
    const s = await startServer('resume', { replayPageSize: 7 });
    for (let i = 0; i < 60; i++) s.hub.raise(draft({ probeId: i % 2 ? 'probe.a' : 'probe.b' }));
    // Connections start now; the producer runs from before the server sees them until after they caught up.
    const resumed = client(`${s.ws}?token=user-key&last_id=25`);
    const resumedA = client(`${s.ws}?token=user-key&last_id=10&probe=probe.a`);
    const fromZero = client(`${s.ws}?token=user-key&last_id=0`);
    let producing = true;
    let raisedDuringReplay = 0;
    const producer = (async () => {
      let i = 0;
      while (producing) {
        for (let k = 0; k < 3; k++) s.hub.raise(draft({ probeId: i++ % 2 ? 'probe.a' : 'probe.b' }));
        if (resumed.alerts.length > 0 && resumed.alerts.length < 40) raisedDuringReplay += 3;
        await new Promise((r) => setImmediate(r));
      }
    })();
    await Promise.all([opened(resumed), opened(resumedA), opened(fromZero)]);
    await until(() => resumed.alerts.length >= 120, 'replay and live traffic');
    producing = false;
    await producer;
    const last = s.log.lastId;
    await until(() => resumed.alerts.at(-1)?.id === last && fromZero.alerts.at(-1)?.id === last, 'catch-up');
    await until(() => resumedA.alerts.at(-1)?.id === s.log.since(last - 2, { probe: 'probe.a' }).at(-1)?.id, 'filtered catch-up');
    expect(raisedDuringReplay).toBeGreaterThan(0);
    expect(ids(resumed.alerts)).toEqual(range(26, last));
    expect(ids(fromZero.alerts)).toEqual(range(1, last));
    expect(ids(resumedA.alerts)).toEqual(ids(s.log.since(10, { probe: 'probe.a' }, 10_000)));
    // The replayed alerts are the logged ones, field for field.
    expect(resumed.alerts.slice(0, 5)).toEqual(s.log.since(25, {}, 5));
    for (const c of [resumed, resumedA, fromZero]) c.ws.close();
  });

  it('closes a slow consumer with 4008 while a fast one receives everything', async () => {
    const s = await startServer(':memory:', { bufferLimitBytes: 256 * 1024, closeGraceMs: 30_000 });
    const fast = await opened(client(`${s.ws}?token=user-key`));
    const slow = await opened(client(`${s.ws}?token=user-key`));
    await until(() => s.hub.subscriberCount === 2, 'subscribers');
    slow.ws.pause(); // a consumer that stops reading
    const excerpt = 'x'.repeat(2000);
    let raised = 0;
    while (s.hub.stats().slowConsumerDisconnects === 0 && raised < 40_000) {
      for (let k = 0; k < 50; k++, raised++) s.hub.raise(draft({ textExcerpt: excerpt }));
      await new Promise((r) => setImmediate(r)); // let the fast client drain
    }
    expect(s.hub.stats().slowConsumerDisconnects).toBe(1);
    for (let k = 0; k < 100; k++, raised++) s.hub.raise(draft({ textExcerpt: excerpt })); // the fast one keeps getting alerts
    await until(() => fast.alerts.length === raised, 'fast client gets everything', 30_000);
    expect(ids(fast.alerts)).toEqual(ids(s.log.since(0, {}, 10_000)).slice(0, raised));
    slow.ws.resume();
    const closed = await slow.closed;
    expect(closed).toEqual({ code: CLOSE_SLOW_CONSUMER, reason: 'slow consumer' });
    // What it did receive before the cut is a gap-free prefix.
    expect(ids(slow.alerts)).toEqual(range(fast.alerts[0].id, fast.alerts[0].id + slow.alerts.length - 1));
    await until(() => s.hub.subscriberCount === 1, 'slow client removed');
    fast.ws.close();
  });

  it('GET /v1/alerts polls with since, limit and filters', async () => {
    const s = await startServer('poll');
    for (let i = 0; i < 12; i++) s.hub.raise(draft({ probeId: i % 2 ? 'probe.a' : 'probe.b', severity: i % 3 === 0 ? 'critical' : 'info' }));
    const get = async (q: string): Promise<{ status: number; body: { data: Alert[]; last_id: number; has_more: boolean; error?: { code: string } } }> => {
      const r = await fetch(`${s.base}/v1/alerts?${q}`, { headers: { authorization: 'Bearer user-key' } });
      return { status: r.status, body: (await r.json()) as never };
    };
    const seen: number[] = [];
    let since = 0;
    for (;;) {
      const { status, body } = await get(`since=${since}&limit=5`);
      expect(status).toBe(200);
      seen.push(...ids(body.data));
      since = body.last_id;
      if (!body.has_more) break;
    }
    expect(seen).toEqual(range(1, 12));
    expect((await get('since=12')).body).toMatchObject({ data: [], last_id: 12, has_more: false });
    expect(ids((await get('probe=probe.a&severity=critical')).body.data)).toEqual(ids(s.log.since(0, { probe: 'probe.a', minSeverity: 'critical' })));
    const bad = await get('since=-1');
    expect(bad.status).toBe(400);
    expect(bad.body.error?.code).toBe('LW_ERR_ALERT_BAD_QUERY');
    expect((await get('since=1&last_id=2')).status).toBe(400);
    const ahead = await get('since=13');
    expect(ahead.status).toBe(409);
    expect(ahead.body.error?.code).toBe('LW_ERR_ALERT_CURSOR_AHEAD');
    const wsAhead = await refused(`${s.ws}?token=user-key&last_id=13`);
    expect(wsAhead.status).toBe(409);
    expect(wsAhead.body.error.code).toBe('LW_ERR_ALERT_CURSOR_AHEAD');
  });

  it('alerts raised while the log fails still reach subscribers, and resume covers them', async () => {
    const s = await startServer('failing');
    const live = await opened(client(`${s.ws}?token=user-key`));
    s.hub.raise(draft());
    s.log.database.pragma('query_only = 1');
    for (let i = 0; i < 5; i++) expect((await s.hub.raise(draft())).durable).toBe(false);
    await until(() => live.alerts.length === 6, 'live delivery during the outage');
    const resumed = client(`${s.ws}?token=user-key&last_id=2`);
    await until(() => resumed.alerts.length === 4, 'resume from memory');
    s.log.database.pragma('query_only = 0');
    expect(s.log.retryPending()).toBe(5);
    s.hub.raise(draft());
    await until(() => resumed.alerts.length === 5 && live.alerts.length === 7, 'after recovery');
    expect(ids(resumed.alerts)).toEqual(range(3, 7));
    expect(ids(live.alerts)).toEqual(range(1, 7));
    live.ws.close();
    resumed.ws.close();
  });

  it('closes subscribers with 1001 when the server closes', async () => {
    const s = await startServer('shutdown');
    const c = await opened(client(`${s.ws}?token=user-key`));
    await s.close();
    expect((await c.closed).code).toBe(1001);
  });
});
