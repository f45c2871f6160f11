/**
 * Alert fan-out over WebSocket (`ws`, a noServer WebSocketServer on the fastify server's
 * 'upgrade' event) at /v1/alerts. Polling (GET /v1/alerts) is alert-routes.ts; the query both
 * read is alert-query.ts.
 *
 * Connect: `ws://host/v1/alerts?token=KEY&probe=P&severity=warning&model=M&silent=1&last_id=N`
 * (or `Authorization: Bearer KEY`). Auth as the API: an API key or the admin key, open when no
 * API key is configured. Filters: `probe` (repeat or comma-separate for several), `severity`
 * (minimum: info < warning < critical), `model`, `silent=1` (only silent alerts), `kind`, `tenant`.
 * Tenancy (auth.ts): a user key gets only alerts its own tenant's requests raised; the admin key all.
 *
 * Messages (server → client, JSON text frames):
 *   {"type":"alert","alert":{id, ts, requestId, model, probeId, probeLabel, severity, score,
 *      threshold, tokenIndex, silent, verbalized, textExcerpt?, concept?, kind, tenant}}
 *      Live alerts raised by a request also carry `"forwardAtUs"`: epoch microseconds, on the
 *      daemon's monotonic clock (performance.timeOrigin + performance.now()), at which the forward
 *      pass of the token whose scores raised the alert returned (`ts` has millisecond resolution);
 *      receipt time minus it is the alert latency. Replayed alerts (last_id) do not carry it.
 *   {"type":"heartbeat","ts":"<ISO time>"}  every websocket.heartbeatIntervalSeconds, with a ws ping;
 *      a client that has not answered the previous ping by the next beat is terminated.
 *
 * Resume (`last_id=N`): the client first receives every stored alert with id > N that matches its
 * filters (alert-store.ts: the SQLite log, pending ones included, or the shared JetStream stream),
 * then live alerts, with no gap and no duplicate. How: alerts reach subscribers only through the
 * store's live feed, in id order, and the hub remembers the highest id the feed delivered
 * (`liveThrough`). While a client replays, live fan-out skips it; the replay reads the store page
 * by page from a scan position, and when a read returns a short page it switches the client to
 * live only if the feed has delivered nothing past what that read examined (`scannedThrough`),
 * checked in one synchronous step with the switch; otherwise it reads again from there. So any
 * alert the feed delivered before the switch was in a replay read, and any later one is sent
 * live. A per-client `lastSentId` guard drops anything at or below the last id sent (a feed that
 * lags the store delivers again what the replay already sent). Without `last_id`, a client gets
 * live alerts from the moment it connects.
 *
 * Slow consumers: each client has a bounded buffer. When a send would take the socket's unsent
 * bytes (`bufferedAmount`) past websocket.bufferLimitBytes, or the messages not yet handed to the
 * kernel past websocket.maxQueuedMessages, the client is closed with code 4008 and reason
 * 'slow consumer' (and terminated if it has not completed the close in closeGraceMs). Other
 * clients are unaffected: sends never wait on one another. A replay paces itself instead: it
 * pauses while the client's buffer is over half the limit, and closes it with 4008 only if it
 * stays there for stallTimeoutMs.
 *
 * Close codes: 4008 slow consumer; 1001 daemon shutting down; 1011 the store cannot be read for a
 * replay (the SQLite log failing, or NATS unreachable). Before the upgrade, failures are HTTP
 * answers with OpenAI error bodies: 401 (missing/invalid key), 403 (foreign Origin or Host:
 * request-guard.ts), 400 (bad query), 409 (cursor ahead of the store: it comes from another
 * replica's log or a deleted one; resume from 0), 503 (shutting down).
 */
import type { IncomingHttpHeaders, IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { lwError } from '../errors.js';
import { matchesFilter, type Alert, type AlertDraft, type AlertFilter } from './alert-log.js';
import { checkCursor, parseAlertQuery, scopeToTenant, type AlertQuery } from './alert-query.js';
import type { AlertPage, AlertStore, AlertTiming, StoredResult } from './alert-store.js';
import { extractToken, type Authenticator } from './auth.js';
import { rejectUpgrade } from './http-errors.js';
import { redactUrl } from './redact.js';

export const ALERTS_PATH = '/v1/alerts';
/** Close code for a client whose buffer exceeded its bound (4000–4999: application codes). */
export const CLOSE_SLOW_CONSUMER = 4008;
export const CLOSE_SLOW_CONSUMER_REASON = 'slow consumer';
export const CLOSE_GOING_AWAY = 1001;

export type { AlertTiming } from './alert-store.js';

export interface AlertHubOptions {
  store: AlertStore;
  auth: Authenticator;
  bufferLimitBytes: number;
  maxQueuedMessages: number;
  heartbeatIntervalMs: number;
  /** Rows per replay read (default 500). */
  replayPageSize?: number;
  /** A replaying client stuck over half its buffer this long is closed with 4008 (default 30 s). */
  stallTimeoutMs?: number;
  /** After a 4008 close, terminate if the close handshake has not finished (default 5 s). */
  closeGraceMs?: number;
  /** A client that has not answered a ping this long is a stalled reader: closed with 4008 (default 10 s). */
  pongTimeoutMs?: number;
}

/** Why a subscriber was closed with 4008: its buffer bound, no pong in time, or a replay that could not drain. */
export const DROP_REASONS = ['buffer', 'pong_timeout', 'replay_stall'] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export interface AlertHubStats {
  subscribers: number;
  /** Every 4008 close (the sum of `dropped`). */
  slowConsumerDisconnects: number;
  /** Clients dropped for not answering a ping (also in dropped.pong_timeout). */
  heartbeatTimeouts: number;
  dropped: Record<DropReason, number>;
}

interface Client {
  ws: WebSocket;
  /** The upgraded TCP socket under `ws`: live frames are written to it directly (send). */
  socket: Duplex;
  filter: AlertFilter;
  replaying: boolean;
  lastSentId: number;
  /** Messages passed to ws.send whose callback has not fired (not yet written to the kernel). */
  queued: number;
  alive: boolean;
  /** When the unanswered ping was sent (undefined: none outstanding). */
  pingSentAt: number | undefined;
  closing: boolean;
}

export class AlertHub {
  private readonly store: AlertStore;
  private readonly auth: Authenticator;
  private readonly wss: WebSocketServer;
  private readonly clients = new Set<Client>();
  private readonly opts: Required<Omit<AlertHubOptions, 'store' | 'auth'>>;
  private heartbeat: NodeJS.Timeout | undefined;
  private liveness: NodeJS.Timeout | undefined;
  private dropped: Record<DropReason, number> = { buffer: 0, pong_timeout: 0, replay_stall: 0 };
  private closed = false;
  private check: ((headers: IncomingHttpHeaders) => void) | undefined;
  /** Connects, disconnects and drops are logged here (alert-routes.ts sets the server's logger). */
  logger: { info(obj: object, msg: string): void } | undefined;

  constructor(options: AlertHubOptions) {
    this.store = options.store;
    this.auth = options.auth;
    this.opts = {
      bufferLimitBytes: options.bufferLimitBytes,
      maxQueuedMessages: options.maxQueuedMessages,
      heartbeatIntervalMs: options.heartbeatIntervalMs,
      replayPageSize: options.replayPageSize ?? 500,
      stallTimeoutMs: options.stallTimeoutMs ?? 30_000,
      closeGraceMs: options.closeGraceMs ?? 5_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
    };
    this.wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024, perMessageDeflate: false });
    this.heartbeat = setInterval(() => this.beat(), this.opts.heartbeatIntervalMs);
    this.heartbeat.unref();
    // A reader that stopped reading answers no ping: found within 1.5 × pongTimeoutMs, not at the
    // next heartbeats (30–60 s), and closed like any other slow consumer.
    this.liveness = setInterval(() => this.checkLiveness(), Math.max(10, this.opts.pongTimeoutMs / 2));
    this.liveness.unref();
    this.store.onLive((alerts, timing) => this.fanOut(alerts, timing));
  }

  /**
   * Store the alert; subscribers get it from the store's live feed once it is stored (the order
   * every alert takes). `timing` travels in the live WebSocket message only (never stored as part
   * of the alert, never replayed).
   */
  async raise(draft: AlertDraft, timing?: AlertTiming): Promise<StoredResult> {
    return (await this.raiseMany([draft], timing))[0];
  }

  /** `raise` for one token's alerts: one store write (one SQLite transaction and fsync), in id order. */
  raiseMany(drafts: readonly AlertDraft[], timing?: AlertTiming): Promise<StoredResult[]> {
    return this.store.append(drafts, timing);
  }

  /**
   * The store's live feed: one token's alerts, in id order. Each alert is serialised and framed
   * once; the frames a subscriber gets are joined once per distinct selection (every subscriber
   * without a filter shares one buffer) and leave in ONE socket write per subscriber: with 100
   * subscribers and 16 alerts a token, 100 writes instead of 1,600 (bench/alert-path.ts measured
   * the per-frame writes at 5-7 ms of event loop per token on the 2-core machine).
   */
  private fanOut(alerts: readonly Alert[], timing?: AlertTiming): void {
    const frames: (Buffer | undefined)[] = new Array(alerts.length);
    const frame = (i: number): Buffer =>
      (frames[i] ??= textFrame(JSON.stringify(timing?.forwardAtUs === undefined ? { type: 'alert', alert: alerts[i] } : { type: 'alert', alert: alerts[i], forwardAtUs: timing.forwardAtUs })));
    const joined = new Map<string, Buffer>();
    const picked: number[] = [];
    for (const c of this.clients) {
      if (c.replaying || c.closing) continue;
      picked.length = 0;
      for (let i = 0; i < alerts.length; i++) if (alerts[i].id > c.lastSentId && matchesFilter(alerts[i], c.filter)) picked.push(i);
      if (picked.length === 0) continue;
      const key = picked.length === alerts.length ? '*' : picked.join(',');
      let bytes = joined.get(key);
      if (bytes === undefined) {
        bytes = picked.length === 1 ? frame(picked[0]) : Buffer.concat(picked.map(frame));
        joined.set(key, bytes);
      }
      this.send(c, bytes, alerts[picked[picked.length - 1]].id, picked.length);
    }
  }

  /** Handle upgrades for /v1/alerts on this server (fastify: `app.server`); `check` refuses foreign Origins and Hosts (request-guard.ts). */
  attach(server: Server, check?: (headers: IncomingHttpHeaders) => void): void {
    this.check = check;
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      const url = new URL(req.url ?? '/', 'http://localhost');
      if (url.pathname !== ALERTS_PATH) {
        // Leave it to another upgrade handler if there is one; else answer 404.
        if (server.listenerCount('upgrade') <= 1) rejectUpgrade(socket, lwError('LW_ERR_API_NOT_FOUND', url.pathname));
        return;
      }
      void this.handleUpgrade(req, socket, head, url);
    });
  }

  get subscriberCount(): number {
    return this.clients.size;
  }

  stats(): AlertHubStats {
    const total = DROP_REASONS.reduce((n, r) => n + this.dropped[r], 0);
    return { subscribers: this.clients.size, slowConsumerDisconnects: total, heartbeatTimeouts: this.dropped.pong_timeout, dropped: { ...this.dropped } };
  }

  /** Close every subscriber with 1001 and stop the heartbeat. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.liveness) clearInterval(this.liveness);
    for (const c of this.clients) {
      c.closing = true;
      c.ws.close(CLOSE_GOING_AWAY, 'shutting down');
      setTimeout(() => c.ws.terminate(), this.opts.closeGraceMs).unref();
    }
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }

  private async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, url: URL): Promise<void> {
    let query: AlertQuery;
    try {
      if (this.closed) throw lwError('LW_ERR_API_SHUTTING_DOWN');
      this.check?.(req.headers);
      const principal = this.auth.authenticate(extractToken(req.headers, url.searchParams.get('token')));
      query = parseAlertQuery((name) => url.searchParams.getAll(name));
      scopeToTenant(query, this.auth, principal);
      if (query.limit !== undefined) throw lwError('LW_ERR_ALERT_BAD_QUERY', 'limit applies to polling only', { param: 'limit' });
      await checkCursor(query.after, this.store, 'last_id');
      if (this.closed) throw lwError('LW_ERR_API_SHUTTING_DOWN');
    } catch (e) {
      rejectUpgrade(socket, e);
      return;
    }
    if (socket.destroyed) return;
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const c = this.addClient(ws, socket, query);
      // The URL without credentials (redact.ts), the tenant's name, never the key.
      const fields = { url: redactUrl(req.url ?? ''), scope: query.filter.tenant ?? 'all tenants', remoteAddress: req.socket.remoteAddress, subscribers: this.clients.size };
      this.logger?.info(fields, 'alert subscriber connected');
      ws.once('close', (code) => this.logger?.info({ ...fields, code, subscribers: this.clients.size, dropped: c.closing && code === CLOSE_SLOW_CONSUMER }, 'alert subscriber disconnected'));
    });
  }

  private addClient(ws: WebSocket, socket: Duplex, query: AlertQuery): Client {
    const c: Client = { ws, socket, filter: query.filter, replaying: query.after !== undefined, lastSentId: query.after ?? 0, queued: 0, alive: true, pingSentAt: undefined, closing: false };
    this.clients.add(c);
    ws.on('pong', () => {
      c.alive = true;
      c.pingSentAt = undefined;
    });
    ws.on('message', () => {
      // Clients have nothing to say; any message counts as liveness.
      c.alive = true;
      c.pingSentAt = undefined;
    });
    ws.on('error', () => ws.terminate());
    ws.on('close', () => {
      c.closing = true;
      this.clients.delete(c);
    });
    if (c.replaying) void this.replay(c);
    return c;
  }

  /** Send the store after c.lastSentId, page by page, then switch the client to live (module comment). */
  private async replay(c: Client): Promise<void> {
    const pageSize = this.opts.replayPageSize;
    const half = this.opts.bufferLimitBytes / 2;
    // Every alert at or below `scanned` has been examined and, if it matched, sent.
    let scanned = c.lastSentId;
    for (;;) {
      if (c.closing) return;
      let page: AlertPage;
      try {
        page = await this.store.since(scanned, c.filter, pageSize);
      } catch {
        c.closing = true;
        c.ws.close(1011, 'alert store unavailable');
        return;
      }
      if (c.closing) return;
      let paused = false;
      for (const a of page.alerts) {
        if (a.id > c.lastSentId) this.send(c, textFrame(JSON.stringify({ type: 'alert', alert: a })), a.id);
        scanned = a.id;
        if (c.closing) return;
        if (c.ws.bufferedAmount > half) {
          paused = true;
          break;
        }
      }
      if (!paused && page.alerts.length < pageSize) {
        scanned = Math.max(scanned, page.scannedThrough);
        // Same synchronous step as the check: the feed cannot deliver anything in between.
        if (this.store.liveThrough <= scanned) {
          c.replaying = false;
          return;
        }
        continue; // the feed delivered alerts past this read while the client replayed: read them
      }
      if (!(await this.room(c, half))) return;
    }
  }

  /** Wait until the client's buffer is at most `level` bytes; false if it closed or stalled (then closed with 4008). */
  private async room(c: Client, level: number): Promise<boolean> {
    const deadline = Date.now() + this.opts.stallTimeoutMs;
    while (!c.closing && (c.ws.bufferedAmount > level || c.queued > this.opts.maxQueuedMessages / 2)) {
      if (Date.now() > deadline) {
        this.dropSlow(c, 'replay_stall');
        return false;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    if (c.closing) return false;
    await new Promise((r) => setImmediate(r)); // let live traffic and other clients through
    return !c.closing;
  }

  /**
   * Sends a frame built by textFrame (or `messages` of them joined), written straight to the
   * socket: with 100 subscribers, framing each copy in ws was most of the fan-out's cost. Safe beside ws's own writes (pings,
   * close frames): the server does not compress (perMessageDeflate: false), so ws writes whole
   * frames synchronously and frames never interleave; ws's bufferedAmount counts the socket's
   * buffer, so the slow-consumer check sees these bytes too.
   */
  private send(c: Client, frame: Buffer, alertId?: number, messages = 1): void {
    if (c.closing) return;
    if (c.ws.readyState !== c.ws.OPEN) {
      c.closing = true; // the 'close' event will remove it
      return;
    }
    if (c.ws.bufferedAmount + frame.length > this.opts.bufferLimitBytes || c.queued + messages > this.opts.maxQueuedMessages) {
      this.dropSlow(c, 'buffer');
      return;
    }
    if (alertId !== undefined) c.lastSentId = alertId;
    c.queued += messages;
    c.socket.write(frame, () => {
      c.queued -= messages;
    });
  }

  private dropSlow(c: Client, reason: DropReason): void {
    if (c.closing) return;
    c.closing = true;
    this.dropped[reason]++;
    this.logger?.info({ reason, subscribers: this.clients.size - 1 }, 'alert subscriber dropped (4008 slow consumer)');
    c.ws.close(CLOSE_SLOW_CONSUMER, CLOSE_SLOW_CONSUMER_REASON);
    setTimeout(() => c.ws.terminate(), this.opts.closeGraceMs).unref();
  }

  private beat(): void {
    const frame = textFrame(JSON.stringify({ type: 'heartbeat', ts: new Date().toISOString() }));
    for (const c of this.clients) {
      if (c.closing) continue;
      if (!c.alive) {
        this.dropSlow(c, 'pong_timeout');
        continue;
      }
      c.alive = false;
      this.ping(c);
      this.send(c, frame);
    }
  }

  private ping(c: Client): void {
    c.pingSentAt ??= Date.now();
    c.ws.ping();
  }

  private checkLiveness(): void {
    const now = Date.now();
    for (const c of this.clients) {
      if (c.closing) continue;
      if (c.pingSentAt === undefined) this.ping(c);
      else if (now - c.pingSentAt >= this.opts.pongTimeoutMs) this.dropSlow(c, 'pong_timeout');
    }
  }
}

/** An unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2), as a server sends one. */
export function textFrame(text: string): Buffer {
  const payload = Buffer.from(text, 'utf8');
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(head + n);
  frame[0] = 0x81; // FIN, opcode 1 (text)
  if (n < 126) frame[1] = n;
  else if (n < 65536) {
    frame[1] = 126;
    frame.writeUInt16BE(n, 2);
  } else {
    frame[1] = 127;
    frame.writeBigUInt64BE(BigInt(n), 2);
  }
  payload.copy(frame, head);
  return frame;
}
