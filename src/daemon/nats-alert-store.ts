/**
 * Several replicas, one alert stream: the alert store on NATS JetStream (`serve --nats`), with the
 * official client (@nats-io/transport-node + @nats-io/jetstream).
 *
 * Every replica publishes its alerts to one stream (file storage; `replicas` copies on a JetStream
 * cluster). An alert's id IS its stream sequence number: one increasing id space for the cluster.
 * Each alert names the replica that raised it (`replica`).
 *
 * Acknowledged means stored: `append` resolves with an alert's id only after JetStream acknowledged
 * the publish; that id goes into the request's verdict. Subscribers on every replica get alerts
 * from the stream itself: each replica reads the stream with an ordered consumer (the live feed,
 * from the stream's end at start-up), so a subscriber on replica C receives what A and B raised,
 * in id order, and only once it is stored. Polling and resume (`since`) read the stream from a
 * sequence; filters and tenancy are applied here, as the SQLite log applies them in SQL.
 *
 * NATS unreachable (or a publish not acknowledged within publishTimeoutMs): the alerts go to the
 * local SQLite outbox (alert-outbox.ts, fsynced) and `append` resolves with them `queued` (id 0:
 * the verdict counts them in `alerts_queued`); the replica keeps serving. While anything is queued,
 * new alerts queue behind it (each replica's alerts reach the stream in the order it raised them).
 * When NATS is back the outbox is published oldest first and emptied; every alert keeps one
 * Nats-Msg-Id for all its publishes, so one whose acknowledgement was lost (or that the client
 * flushed on reconnect) is dropped by the stream's duplicate window, never stored twice.
 *
 * What an unacknowledged alert risks: between the publish and JetStream's acknowledgement (one
 * round trip) an alert is only in memory; a kill -9 then may lose it, but it was acknowledged to
 * no one (the request had not received the token that raised it).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { connect, credsAuthenticator, headers, nanos, type NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import { lwError } from '../errors.js';
import { matchesFilter, normalise, type Alert, type AlertDraft, type AlertFilter } from './alert-log.js';
import { AlertOutbox } from './alert-outbox.js';
import type { AlertPage, AlertStore, AlertStoreHealth, AlertTiming, LiveListener, StoredResult } from './alert-store.js';

/** Header carrying a live alert's forwardAtUs (alert-hub.ts); a header, so never part of the stored alert. */
const FORWARD_AT_HEADER = 'Lw-Forward-At-Us';
/** Header carrying how many alerts one append published with that forwardAtUs (one token's). */
const TOKEN_ALERTS_HEADER = 'Lw-Token-Alerts';
/** How long the live feed holds an incomplete token batch for its stragglers (some went to the outbox). */
const STRAGGLER_MS = 20;
/** Outbox entries published per round (pipelined, in order). */
const DRAIN_CHUNK = 256;
/** Messages the live feed and `since` ask for at once. */
const READ_BATCH = 500;

export interface JetStreamStoreOptions {
  servers: readonly string[];
  stream: string;
  subject: string;
  /** Stream replicas when this store creates the stream. */
  replicas: number;
  /** This daemon's name in its alerts (default: os.hostname()). */
  replica?: string | null;
  user?: string | null;
  password?: string | null;
  token?: string | null;
  credsFile?: string | null;
  outboxPath: string;
  publishTimeoutMs: number;
  duplicateWindowSeconds: number;
  /** Stream limits when this store creates the stream (the SQLite log's retention); 0 = none. */
  retentionDays?: number;
  retentionRows?: number;
  /** How long `open` waits for NATS before serving with the outbox (default 5 s). */
  connectWaitMs?: number;
  /** Told about connection changes and failures (the daemon logs them; never credentials). */
  onEvent?: (level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string) => void;
}

/** A server list for logs: scheme, host and port only (a URL may carry user:password@). */
export function redactServers(servers: readonly string[]): string[] {
  return servers.map((s) => {
    try {
      const u = new URL(s);
      return `${u.protocol}//${u.host}`;
    } catch {
      return '(unparsable server URL)';
    }
  });
}

export class JetStreamAlertStore implements AlertStore {
  readonly kind = 'jetstream' as const;
  readonly replica: string;
  private readonly opts: JetStreamStoreOptions;
  private readonly outbox: AlertOutbox;
  private readonly listeners: LiveListener[] = [];
  /** Unique per process: message ids `${instance}-${n}` never repeat across restarts. */
  private readonly instance = randomUUID();
  private msgCounter = 0;
  private nc: NatsConnection | undefined;
  private js: JetStreamClient | undefined;
  private jsm: JetStreamManager | undefined;
  /** Connected and the stream exists: publishes are attempted (else alerts go to the outbox). */
  private ready = false;
  private delivered = 0;
  private feedStarted = false;
  private feedMessages: ConsumerMessages | undefined;
  private draining: Promise<void> | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private counters = { published: 0, failures: 0, dropped: 0, queued: 0 };
  private lastError: string | null = null;
  private readyWaiters: (() => void)[] = [];

  private constructor(opts: JetStreamStoreOptions, outbox: AlertOutbox) {
    this.opts = opts;
    this.outbox = outbox;
    this.replica = opts.replica ?? hostname();
  }

  /**
   * Open the outbox, connect (in the background: a replica starts and serves without NATS), create
   * the stream if missing, start the live feed. Waits up to connectWaitMs for all of that.
   * Throws LW_ERR_ALERT_OUTBOX_OPEN.
   */
  static async open(opts: JetStreamStoreOptions): Promise<JetStreamAlertStore> {
    const store = new JetStreamAlertStore(opts, AlertOutbox.open(opts.outboxPath));
    store.drainTimer = setInterval(() => void store.drain(), 1000);
    store.drainTimer.unref();
    void store.connectLoop();
    await store.waitReady(opts.connectWaitMs ?? 5000);
    return store;
  }

  private event(level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string): void {
    this.opts.onEvent?.(level, { servers: redactServers(this.opts.servers), stream: this.opts.stream, ...fields }, msg);
  }

  private waitReady(ms: number): Promise<void> {
    if (this.ready) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.readyWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private setReady(ready: boolean): void {
    if (ready === this.ready) return;
    this.ready = ready;
    if (ready) {
      for (const w of this.readyWaiters.splice(0)) w();
      void this.drain();
    }
  }

  /**
   * Connect, retrying (backoff to 10 s, unref'd timers) until it succeeds or the store closes: a
   * replica started before NATS, or during an outage, serves with the outbox meanwhile. Hand-written
   * rather than the client's waitOnFirstConnect, whose pending connect cannot be cancelled (a
   * daemon stopped while NATS is unreachable would not exit).
   */
  private async connectLoop(): Promise<void> {
    const o = this.opts;
    let nc: NatsConnection | undefined;
    for (let attempt = 0; !this.closed && !nc; attempt++) {
      try {
        nc = await connect({
          servers: [...o.servers],
          name: `latentwatch ${this.replica}`,
          // Once connected, the client reconnects by itself, forever.
          maxReconnectAttempts: -1,
          reconnectTimeWait: 500,
          ...(o.user ? { user: o.user } : {}),
          ...(o.password ? { pass: o.password } : {}),
          ...(o.token ? { token: o.token } : {}),
          ...(o.credsFile ? { authenticator: credsAuthenticator(readFileSync(o.credsFile)) } : {}),
        });
      } catch (e) {
        this.lastError = (e as Error).message;
        if (attempt === 0) this.event('error', { error: this.lastError }, 'cannot connect to NATS: alerts go to the outbox; retrying');
        await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** Math.min(attempt, 5))).unref());
      }
    }
    if (!nc) return;
    if (this.closed) {
      await nc.close();
      return;
    }
    this.nc = nc;
    this.js = jetstream(nc);
    this.jsm = await jetstreamManager(nc, { checkAPI: false });
    this.event('info', {}, 'connected to NATS');
    void this.watchStatus(nc);
    await this.setupStream();
  }

  private async watchStatus(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        this.setReady(false);
        this.event('warn', {}, 'NATS disconnected: new alerts go to the outbox until it is back');
      } else if (s.type === 'reconnect') {
        this.event('info', {}, 'NATS reconnected');
        await this.setupStream();
        // A restarted server lost the feed's ephemeral consumer: start a new one from the last
        // delivered sequence rather than wait for the old one to notice.
        this.feedMessages?.stop();
      }
    }
  }

  /** Create the stream if it does not exist (every replica may race to: identical configs are accepted), then start the feed. */
  private async setupStream(): Promise<void> {
    const o = this.opts;
    const jsm = this.jsm;
    if (!jsm) return;
    for (let attempt = 0; !this.closed && this.nc && !this.nc.isClosed(); attempt++) {
      try {
        let lastSeq: number;
        try {
          lastSeq = (await jsm.streams.info(o.stream)).state.last_seq;
        } catch (e) {
          if (!/stream not found/i.test((e as Error).message)) throw e;
          const info = await jsm.streams.add({
            name: o.stream,
            subjects: [o.subject],
            storage: StorageType.File,
            retention: RetentionPolicy.Limits,
            discard: DiscardPolicy.Old,
            num_replicas: o.replicas,
            duplicate_window: nanos(o.duplicateWindowSeconds * 1000),
            max_age: o.retentionDays ? nanos(o.retentionDays * 86_400_000) : 0,
            max_msgs: o.retentionRows || -1,
          });
          lastSeq = info.state.last_seq;
          this.event('info', { replicas: o.replicas }, 'created the alert stream');
        }
        if (!this.feedStarted) {
          this.feedStarted = true;
          this.delivered = lastSeq; // the live feed starts at the stream's end
          void this.feed();
        }
        this.setReady(true);
        return;
      } catch (e) {
        this.lastError = (e as Error).message;
        if (attempt === 0) this.event('error', { code: 'LW_ERR_ALERT_STREAM_SETUP', error: this.lastError }, 'cannot create or read the alert stream; retrying (alerts go to the outbox)');
        await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** Math.min(attempt, 5))).unref());
      }
    }
  }

  /**
   * The live feed: an ordered consumer from the last delivered sequence, restarted if it ends.
   * One token's alerts go to the listeners in one call, so the hub writes each subscriber one
   * corked batch instead of a frame per alert: consecutive messages with the same forwardAtUs are
   * held until all the append published with it have arrived (its count header), however the
   * socket reads split them, or STRAGGLER_MS for those that went through the outbox. Messages
   * without the header (outbox drains) are held until the iterator has yielded everything already
   * received (setImmediate: the same turn of the event loop).
   */
  private async feed(): Promise<void> {
    let batch: Alert[] = [];
    let batchAt: string | undefined;
    let batchWant: number | undefined;
    let pending: { cancel(): void } | null = null;
    const flush = () => {
      pending?.cancel();
      pending = null;
      if (batch.length === 0) return;
      const alerts = batch;
      const timing: AlertTiming | undefined = batchAt ? { forwardAtUs: Number(batchAt) } : undefined;
      batch = [];
      this.delivered = alerts[alerts.length - 1].id;
      for (const l of this.listeners) l(alerts, timing);
    };
    while (!this.closed) {
      try {
        const consumer = await this.js!.consumers.get(this.opts.stream, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.delivered + 1 });
        const messages = await consumer.consume({ max_messages: READ_BATCH });
        this.feedMessages = messages;
        for await (const m of messages) {
          if (m.seq <= (batch.at(-1)?.id ?? this.delivered)) continue;
          const at = m.headers?.get(FORWARD_AT_HEADER) || undefined;
          if (batch.length > 0 && at !== batchAt) flush();
          if (batch.length === 0) {
            const want = Number(m.headers?.get(TOKEN_ALERTS_HEADER));
            batchWant = at !== undefined && Number.isInteger(want) && want > 0 ? want : undefined;
          }
          batch.push(decode(m));
          batchAt = at;
          if (batchWant !== undefined && batch.length >= batchWant) flush();
          else if (pending === null) {
            if (batchWant !== undefined) {
              const t = setTimeout(flush, STRAGGLER_MS).unref();
              pending = { cancel: () => clearTimeout(t) };
            } else {
              const t = setImmediate(flush);
              pending = { cancel: () => clearImmediate(t) };
            }
          }
        }
      } catch (e) {
        if (this.closed) return;
        this.lastError = (e as Error).message;
        await new Promise((r) => setTimeout(r, 500).unref());
      } finally {
        flush(); // before a restarted consumer starts after `delivered`
      }
    }
  }

  async append(drafts: readonly AlertDraft[], timing?: AlertTiming): Promise<StoredResult[]> {
    if (this.closed) throw lwError('LW_ERR_ALERT_LOG_CLOSED', 'the alert store is closed');
    if (drafts.length === 0) return [];
    const now = Date.now();
    const alerts = drafts.map((d) => ({ ...normalise(d, 0, now), replica: this.replica }));
    const entries = alerts.map((a) => ({ msgId: `${this.instance}-${++this.msgCounter}`, payload: encode(a) }));
    // Behind anything queued (per-replica order), or NATS is down: straight to the outbox.
    if (!this.ready || this.outbox.pending > 0 || this.draining) return this.queue(alerts, entries);
    const h = headers();
    if (timing?.forwardAtUs !== undefined) {
      h.set(FORWARD_AT_HEADER, String(timing.forwardAtUs));
      h.set(TOKEN_ALERTS_HEADER, String(entries.length));
    }
    const acks = await Promise.all(entries.map((e) => this.publish(e.msgId, e.payload, h).catch((err: unknown) => err as Error)));
    const results: StoredResult[] = [];
    const failed: number[] = [];
    acks.forEach((ack, i) => {
      if (typeof ack === 'number') results[i] = { alert: { ...alerts[i], id: ack }, durable: true, retained: true };
      else failed.push(i);
    });
    if (failed.length > 0) {
      this.noteFailure(acks[failed[0]] as Error);
      const queued = this.queue(
        failed.map((i) => alerts[i]),
        failed.map((i) => entries[i]),
      );
      failed.forEach((i, k) => (results[i] = queued[k]));
    }
    return results;
  }

  /** Publish one message; resolves with its stream sequence (the original's for a duplicate). */
  private async publish(msgId: string, payload: string, h?: ReturnType<typeof headers>): Promise<number> {
    const ack = await this.js!.publish(this.opts.subject, payload, { msgID: msgId, timeout: this.opts.publishTimeoutMs, ...(h ? { headers: h } : {}) });
    this.counters.published++;
    return ack.seq;
  }

  private queue(alerts: readonly Alert[], entries: readonly { msgId: string; payload: string }[]): StoredResult[] {
    try {
      this.outbox.add(entries);
    } catch (e) {
      // The outbox's disk failed too: the alert cannot be kept (counted, logged).
      this.counters.dropped += alerts.length;
      this.event('error', { error: (e as Error).message, alerts: alerts.length }, 'alert outbox write failed: alerts lost');
      return alerts.map((a) => ({ alert: { ...a, id: 0 }, durable: false, retained: false, queued: false }));
    }
    this.counters.queued += alerts.length;
    return alerts.map((a) => ({ alert: { ...a, id: 0 }, durable: true, retained: true, queued: true }));
  }

  private noteFailure(e: Error): void {
    this.counters.failures++;
    this.lastError = e.message;
  }

  /** Publish the outbox oldest first while NATS accepts; one round at a time. */
  private drain(): Promise<void> {
    if (this.draining || !this.ready || this.closed || this.outbox.pending === 0) return this.draining ?? Promise.resolve();
    this.draining = (async () => {
      try {
        while (this.ready && !this.closed && this.outbox.pending > 0) {
          const chunk = this.outbox.peek(DRAIN_CHUNK);
          // Pipelined: sent in order on one connection, so stored in order.
          const acks = await Promise.all(chunk.map((e) => this.publish(e.msgId, e.payload).then(() => true, (err: unknown) => err as Error)));
          const done: number[] = [];
          for (let i = 0; i < chunk.length && acks[i] === true; i++) done.push(chunk[i].seq);
          this.outbox.remove(done);
          if (done.length < chunk.length) {
            this.noteFailure(acks[done.length] as Error);
            return;
          }
        }
        if (this.outbox.pending === 0) this.event('info', {}, 'alert outbox drained');
      } catch (e) {
        this.noteFailure(e as Error);
      } finally {
        this.draining = undefined;
      }
    })();
    return this.draining;
  }

  async since(afterId: number, filter: AlertFilter, limit: number): Promise<AlertPage> {
    if (this.closed) throw lwError('LW_ERR_ALERT_LOG_CLOSED', 'the alert store is closed');
    if (!this.ready || !this.js || !this.jsm) throw lwError('LW_ERR_ALERT_STREAM_UNAVAILABLE');
    let last: number;
    try {
      last = (await this.jsm.streams.info(this.opts.stream)).state.last_seq;
    } catch (e) {
      throw lwError('LW_ERR_ALERT_STREAM_UNAVAILABLE', (e as Error).message, undefined, e);
    }
    if (last <= afterId) return { alerts: [], scannedThrough: afterId };
    const out: Alert[] = [];
    let scanned = afterId;
    let messages: ConsumerMessages | undefined;
    // The read ends at `last`; a deadline keeps a vanished message from holding it forever.
    const deadline = setTimeout(() => messages?.stop(), 10_000);
    try {
      const consumer = await this.js.consumers.get(this.opts.stream, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: afterId + 1 });
      messages = await consumer.consume({ max_messages: Math.min(READ_BATCH, last - afterId) });
      for await (const m of messages) {
        scanned = m.seq;
        const a = decode(m);
        if (matchesFilter(a, filter)) out.push(a);
        if (out.length >= limit || m.seq >= last || m.info.pending === 0) break;
      }
    } catch (e) {
      throw lwError('LW_ERR_ALERT_STREAM_UNAVAILABLE', (e as Error).message, undefined, e);
    } finally {
      clearTimeout(deadline);
      messages?.stop();
    }
    if (out.length < limit && scanned < last) throw lwError('LW_ERR_ALERT_STREAM_UNAVAILABLE', `read stopped at ${scanned} of ${last}`);
    return { alerts: out, scannedThrough: out.length >= limit ? scanned : Math.max(scanned, last) };
  }

  async lastId(): Promise<number> {
    if (this.ready && this.jsm) {
      try {
        return Math.max(this.delivered, (await this.jsm.streams.info(this.opts.stream)).state.last_seq);
      } catch {
        // fall back to what the feed has seen
      }
    }
    return this.delivered;
  }

  onLive(listener: LiveListener): void {
    this.listeners.push(listener);
  }

  get liveThrough(): number {
    return this.delivered;
  }

  /** Connected to NATS with the stream available. */
  get isConnected(): boolean {
    return this.ready;
  }

  /** Alerts waiting in the outbox. */
  get outboxPending(): number {
    return this.outbox.pending;
  }

  health(): AlertStoreHealth {
    return {
      ok: this.ready && this.outbox.pending === 0,
      connected: this.ready,
      stream: this.opts.stream,
      replica: this.replica,
      outbox_pending: this.outbox.pending,
      published: this.counters.published,
      failures: this.counters.failures,
      dropped: this.counters.dropped,
      last_error: this.ready ? null : this.lastError,
    };
  }

  stats() {
    return { writes: this.counters.published, failures: this.counters.failures, pending: this.outbox.pending, dropped: this.counters.dropped, outboxPending: this.outbox.pending, connected: this.ready };
  }

  /** Publish what the outbox holds if NATS is there (bounded by publishTimeoutMs), then disconnect; the rest waits in the outbox for the next start. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.drainTimer) clearInterval(this.drainTimer);
    await Promise.race([this.drain(), new Promise((r) => setTimeout(r, this.opts.publishTimeoutMs).unref())]);
    this.closed = true;
    this.setReady(false);
    for (const w of this.readyWaiters.splice(0)) w();
    this.feedMessages?.stop();
    try {
      await this.nc?.close();
    } catch {
      // closing anyway
    }
    await this.draining?.catch(() => undefined);
    this.outbox.close();
  }
}

/** The stored message: the alert without its id (the sequence number is the id). */
function encode(a: Alert): string {
  const { id: _id, ...rest } = a;
  return JSON.stringify(rest);
}

function decode(m: JsMsg): Alert {
  return { id: m.seq, ...(JSON.parse(m.string()) as Omit<Alert, 'id'>) };
}
