/**
 * The embedded SQLite alert log with its durable writes off the event loop: a worker thread
 * (alert-log-worker.ts) owns the connection and commits the appends that arrive during one fsync
 * together in the next transaction (group commit). The default store of a daemon without --nats
 * (alertLog.groupCommit); SqliteAlertStore (alert-store.ts) is the same log written on the event loop.
 *
 * Why: with synchronous=FULL each token's alerts cost an fsync (milliseconds); on the event loop
 * that fsync held every stream and every WebSocket send behind it. Here the event loop only posts
 * a message; decoding, streaming and fan-out go on while the disk works, and the alerts of many
 * tokens (of concurrent requests) share one fsync.
 *
 * Durability is unchanged: an append resolves, and its alerts reach the live feed (subscribers,
 * the verdict), only after the writer committed them (or, on a disk failure, holds them pending:
 * `durable: false`, as alert-log.ts describes). So kill -9 loses no alert a client has seen.
 * Ids, the file format and the reservation are the log's own (alert-log.ts): the same file can be
 * opened by either store.
 *
 * One exception to "the event loop only posts": onnxruntime-node runs each forward pass
 * synchronously on the event loop, so an answer that arrives during another stream's pass would wait
 * for all of it. So once the task that posted a token's alerts is done (process.nextTick: after its
 * promise continuations, before any I/O callback or setImmediate) the loop waits (at most
 * waitForCommitMs) for their commit and takes the answers synchronously (a reply channel and a
 * shared counter the writer bumps): the alerts are fanned out before any later task starts, a pass
 * queued earlier included (several requests' prefills, each its own setImmediate: waiting in the
 * loop's next turn instead came after all of them, p99 198 ms with 4 requests at a time on 16 cores).
 * The wait is about one commit, on tokens that raised alerts only; appends of the same task (the
 * streams of one batched pass) share it.
 *
 * The live feed delivers in id order: the writer answers appends in the order it assigned ids and
 * the answers arrive in that order. It may lag the log (an alert is committed before its answer
 * reaches this thread); the hub's resume handles a feed that lags (alert-hub.ts module comment).
 *
 * The writer dies (the thread terminated, a crash in it): its SQLite connection is closed with it
 * (an open transaction rolls back), and a new writer is started on the same file. What the dead one
 * had not answered is settled without loss and without duplicates: the appends it committed before
 * dying are found in the log (the ids after the last one answered, matched to the unanswered appends
 * in the order they were posted: each batch was one transaction, so the committed ones are a prefix)
 * and acknowledged with their ids, durable, and delivered live; the others, and unanswered reads, are
 * posted again to the new writer (a retry, so their callers just wait longer). Alerts the dead writer
 * held pending in memory (a failing disk: answered `durable: false`, delivered live) die with it:
 * counted in `lostPending` and reported. Each restart is counted (latentwatch_alert_log_writer_restarts_total)
 * and reported through onWriterEvent (the daemon logs it). More than `maxRestarts` deaths within
 * `restartWindowMs`, or a writer that cannot start again, fail the store loudly: every waiting and
 * later call rejects with LW_ERR_ALERT_LOG_CLOSED, /readyz shows it (health().ok false), the event
 * says so.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { lwError, type ErrorCode, ERRORS } from '../errors.js';
import { MAX_SINCE_LIMIT, normalise, type Alert, type AlertDraft, type AlertFilter, type AppendResult } from './alert-log.js';
import type { AlertPage, AlertStore, AlertStoreHealth, AlertTiming, LiveListener, StoredResult } from './alert-store.js';
import type { CommitObservation, WorkerError, WorkerOptions, WorkerReply, WorkerRequest, WorkerSnapshot } from './alert-log-worker.js';
import { startWorker } from '../worker.js';

export interface GroupCommitOptions {
  /** SQLite file; ':memory:' for a non-durable log. */
  path: string;
  retentionDays?: number;
  retentionRows?: number;
  pendingLimit?: number;
  retryIntervalMs?: number;
  busyTimeoutMs?: number;
  synchronous?: 'full' | 'normal';
  /** Retention and retries of pending alerts every this many ms, in the writer (0: never; default 60 000). */
  maintenanceIntervalMs?: number;
  /** Told about write failures and recoveries (the daemon logs them). */
  onStateChange?: (event: { state: 'failing' | 'recovered'; error?: string; pending: number }) => void;
  /** Told when the writer died and was restarted, or could not be (the daemon logs it). */
  onWriterEvent?: (event: WriterEvent) => void;
  /**
   * After a token's alerts are posted, the event loop waits up to this long, once the posting task
   * is done, for their commit and fans them out then (default 50; 0: never wait, the answer comes
   * as a message).
   * Why: onnxruntime-node runs a forward pass synchronously on the event loop; an answer that
   * arrives during another stream's pass waits for the whole pass (bench/alert-path.ts
   * --forward-ms: 44 ms instead of 4.5 behind a 40 ms pass). Waiting blocks the loop for about one
   * commit (as the log on the event loop does) only on tokens that raised alerts; the appends
   * posted in the same task (concurrent streams of one batched pass) still share one commit.
   */
  waitForCommitMs?: number;
  /** Writer deaths tolerated within restartWindowMs before the store fails for good (default 5). */
  maxRestarts?: number;
  restartWindowMs?: number;
}

/** The writer thread died: restarted (the unanswered work settled as the module comment says) or not. */
export interface WriterEvent {
  state: 'restarted' | 'failed';
  /** Why the writer stopped (its error or exit code; no alert content). */
  error: string;
  /** Unanswered requests when it died. */
  unanswered: number;
  /** Of those, appends found committed in the log and acknowledged. */
  recovered: number;
  /** Of those, requests posted again to the new writer (0 when failed). Requests made during the restart are posted too, not counted here. */
  retried: number;
  /** Alerts the dead writer held pending in memory (answered durable: false): lost. */
  lostPending: number;
  /** Restarts so far. */
  restarts: number;
}

/** What the metrics read: the log's counters over every writer this store ran, commits, restarts. */
export interface GroupCommitStats extends WorkerSnapshot {
  restarts: number;
  lostPending: number;
}

/** A request without its sequence number (distributed over the union). */
type WorkerRequestBody = WorkerRequest extends infer R ? (R extends WorkerRequest ? Omit<R, 'seq'> : never) : never;

interface Waiter {
  /** What was posted (posted again to a new writer when the old one died without answering). */
  body: WorkerRequestBody;
  resolve: (value: unknown) => void;
  reject: (e: Error) => void;
  /** Appends: the live feed gets these alerts, with this timing, when the answer comes. */
  live?: { timing: AlertTiming | undefined };
}

/** Counters of writers that died: added to the live writer's so that the totals only grow. */
const COUNTED = ['writes', 'failures', 'dropped', 'commits'] as const;

function startWriter(options: WorkerOptions): Worker {
  return startWorker(import.meta.url, 'alert-log-worker', { workerData: options, transferList: options.replyPort ? [options.replyPort] : [] });
}

/** A writer and the channel its answers come back on (alert-log-worker.ts WorkerOptions.replyPort). */
interface Writer {
  worker: Worker;
  replies: MessagePort;
  /** Bumped by the writer after each batch's answers. */
  answered: Int32Array;
}

/** Start a writer and wait until it opened the log. Throws LW_ERR_ALERT_LOG_OPEN. */
async function launch(base: WorkerOptions): Promise<Writer & { snapshot: WorkerSnapshot; early: WorkerReply[] }> {
  const channel = new MessageChannel();
  const answered = new SharedArrayBuffer(4);
  const options: WorkerOptions = { ...base, replyPort: channel.port2, answered };
  const worker = startWriter(options);
  const early: WorkerReply[] = [];
  const snapshot = await new Promise<WorkerSnapshot>((resolve, reject) => {
    const onMessage = (m: WorkerReply) => {
      if (m.type === 'ready') done(() => resolve(m.snapshot));
      else if (m.type === 'openFailed') done(() => reject(rebuild(m.error)));
      else early.push(m);
    };
    const onError = (e: Error) => done(() => reject(lwError('LW_ERR_ALERT_LOG_OPEN', `${options.path}: alert log writer failed to start: ${e.message}`, { path: options.path }, e)));
    const onExit = (code: number) => done(() => reject(lwError('LW_ERR_ALERT_LOG_OPEN', `${options.path}: alert log writer exited (${code})`, { path: options.path })));
    const done = (f: () => void) => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
      f();
    };
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  }).catch(async (e: unknown) => {
    worker.on('error', () => undefined); // already reported by the rejection
    await worker.terminate();
    channel.port1.close();
    throw e;
  });
  return { worker, replies: channel.port1, answered: new Int32Array(answered), snapshot, early };
}

function rebuild(e: WorkerError): Error {
  if (e.code !== undefined && e.code in ERRORS) {
    const err = lwError(e.code as ErrorCode);
    // The worker's message already carries the code's text and the detail.
    err.message = e.message;
    return Object.assign(err, { details: e.details });
  }
  return new Error(e.message);
}

/** Whether a committed alert is the one a draft asked for (the fields a writer copies unchanged). */
function sameAlert(a: Alert, d: AlertDraft): boolean {
  return a.requestId === d.requestId && a.probeId === d.probeId && a.tokenIndex === d.tokenIndex && a.kind === d.kind && a.model === d.model && a.score === d.score;
}

export class GroupCommitAlertStore implements AlertStore {
  readonly kind = 'sqlite' as const;
  readonly path: string;
  private worker: Worker;
  private replies: MessagePort;
  private answered: Int32Array;
  private readonly workerOptions: WorkerOptions;
  /** GroupCommitOptions.waitForCommitMs as configured (alertLog.waitForCommitMs). */
  readonly waitForCommitMs: number;
  private pickUpScheduled = false;
  private readonly waiters = new Map<number, Waiter>();
  private readonly listeners: LiveListener[] = [];
  private readonly commitListeners: ((c: CommitObservation) => void)[] = [];
  private readonly onStateChange: GroupCommitOptions['onStateChange'];
  private readonly onWriterEvent: GroupCommitOptions['onWriterEvent'];
  private readonly maxRestarts: number;
  private readonly restartWindowMs: number;
  private snapshot: WorkerSnapshot;
  /** Counters of the writers that died (COUNTED). */
  private readonly base = { writes: 0, failures: 0, dropped: 0, commits: 0 };
  private restarts = 0;
  private readonly deaths: number[] = [];
  /** Writers whose death was handled ('error' and 'exit' both come for one crash). */
  private readonly buried = new WeakSet<Worker>();
  private lostPending = 0;
  /** Set while a new writer starts: requests wait for it instead of being posted. */
  private restarting: Promise<void> | undefined;
  private seq = 0;
  private delivered = 0;
  private closed = false;
  /** Set when the writer died for good: every later call fails with it. */
  private dead: Error | undefined;
  private closing: Promise<void> | undefined;

  private constructor(writer: Writer, snapshot: WorkerSnapshot, options: GroupCommitOptions, workerOptions: WorkerOptions) {
    this.worker = writer.worker;
    this.replies = writer.replies;
    this.answered = writer.answered;
    this.waitForCommitMs = options.waitForCommitMs ?? 50;
    this.snapshot = snapshot;
    this.path = options.path;
    this.workerOptions = workerOptions;
    this.onStateChange = options.onStateChange;
    this.onWriterEvent = options.onWriterEvent;
    this.maxRestarts = options.maxRestarts ?? 5;
    this.restartWindowMs = options.restartWindowMs ?? 60_000;
    this.watch(writer);
  }

  /** Start the writer and open the log in it. Throws LW_ERR_ALERT_LOG_OPEN. */
  static async open(options: GroupCommitOptions): Promise<GroupCommitAlertStore> {
    const workerOptions: WorkerOptions = {
      path: options.path,
      maintenanceIntervalMs: options.maintenanceIntervalMs ?? 60_000,
      ...(options.retentionDays !== undefined ? { retentionDays: options.retentionDays } : {}),
      ...(options.retentionRows !== undefined ? { retentionRows: options.retentionRows } : {}),
      ...(options.pendingLimit !== undefined ? { pendingLimit: options.pendingLimit } : {}),
      ...(options.retryIntervalMs !== undefined ? { retryIntervalMs: options.retryIntervalMs } : {}),
      ...(options.busyTimeoutMs !== undefined ? { busyTimeoutMs: options.busyTimeoutMs } : {}),
      ...(options.synchronous !== undefined ? { synchronous: options.synchronous } : {}),
    };
    const { snapshot, early, ...writer } = await launch(workerOptions);
    const store = new GroupCommitAlertStore(writer, snapshot, options, workerOptions);
    for (const m of early) store.receive(m);
    return store;
  }

  append(drafts: readonly AlertDraft[], timing?: AlertTiming): Promise<StoredResult[]> {
    if (drafts.length === 0 && !this.closed) return Promise.resolve([]);
    const answer = this.request({ op: 'append', drafts: [...drafts] }, { timing }) as Promise<StoredResult[]>;
    if (this.waitForCommitMs > 0 && !this.pickUpScheduled && !this.restarting && !this.dead) {
      this.pickUpScheduled = true;
      // Not setImmediate: a forward pass already queued (another request's prefill) would run first.
      process.nextTick(() => this.pickUp());
    }
    return answer;
  }

  /**
   * Right after the task that posted alerts: wait (Atomics.wait, at most
   * waitForCommitMs) until the writer answered every append posted so far, taking its answers
   * synchronously, so the alerts are fanned out before any later task runs (waitForCommitMs).
   */
  private pickUp(): void {
    this.pickUpScheduled = false;
    const deadline = performance.now() + this.waitForCommitMs;
    while (!this.restarting && !this.dead && !this.closed && this.unansweredAppends()) {
      // Read the counter before looking at the port: an answer posted after the look bumps it after the read.
      const seen = Atomics.load(this.answered, 0);
      let m = receiveMessageOnPort(this.replies);
      if (m !== undefined) {
        for (; m !== undefined; m = receiveMessageOnPort(this.replies)) this.receive(m.message as WorkerReply);
        continue;
      }
      const left = deadline - performance.now();
      if (left <= 0 || Atomics.wait(this.answered, 0, seen, left) === 'timed-out') return; // the answer comes as a message
    }
  }

  private unansweredAppends(): boolean {
    for (const w of this.waiters.values()) if (w.body.op === 'append') return true;
    return false;
  }

  since(afterId: number, filter: AlertFilter, limit: number): Promise<AlertPage> {
    return this.request({ op: 'since', afterId, filter, limit }) as Promise<AlertPage>;
  }

  lastId(): Promise<number> {
    return this.request({ op: 'lastId' }) as Promise<number>;
  }

  onLive(listener: LiveListener): void {
    this.listeners.push(listener);
  }

  /** Told of each group commit: alerts in its transaction and its duration (metrics.ts). */
  onCommit(listener: (c: CommitObservation) => void): void {
    this.commitListeners.push(listener);
  }

  get liveThrough(): number {
    return this.delivered;
  }

  health(): AlertStoreHealth {
    const s = this.stats();
    if (this.dead) return { ok: false, pending: s.pending, failures: s.failures, dropped: s.dropped, restarts: s.restarts, last_error: this.dead.message };
    return { ok: !s.failing, pending: s.pending, failures: s.failures, dropped: s.dropped, restarts: s.restarts, last_error: s.failing ? s.lastError : null };
  }

  /** The log's counters as of the writer's last answer (alert-log.ts AlertLogStats, over every writer), its commits and restarts. */
  stats(): GroupCommitStats {
    const s: GroupCommitStats = { ...this.snapshot, restarts: this.restarts, lostPending: this.lostPending };
    for (const k of COUNTED) s[k] += this.base[k];
    return s;
  }

  /**
   * The writer thread, for fault-injection tests only (terminate it to kill the writer as a crash
   * would; the store restarts it).
   */
  get writerThread(): Worker {
    return this.worker;
  }

  /** Flush what can be flushed (alert-log.ts close), stop the writer. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.restarting) await this.restarting;
      if (!this.dead) {
        try {
          await this.request({ op: 'close' });
        } catch {
          // the writer is gone already: nothing left to flush
        }
      }
      this.closed = true;
      await this.worker.terminate();
      this.replies.close();
    })();
    return this.closing;
  }

  private watch({ worker, replies }: Writer): void {
    replies.on('message', (m: WorkerReply) => {
      if (worker === this.worker) this.receive(m);
    });
    // 'error' (an uncaught exception) is followed by 'exit'; the first one seen handles the death.
    worker.on('error', (e) => this.died(worker, e.message));
    worker.on('exit', (code) => this.died(worker, `alert log writer exited (${code})`));
  }

  private request(body: WorkerRequestBody, live?: Waiter['live']): Promise<unknown> {
    if (this.dead) return Promise.reject(lwError('LW_ERR_ALERT_LOG_CLOSED', this.dead.message));
    if (this.closed || (this.closing && body.op !== 'close')) return Promise.reject(lwError('LW_ERR_ALERT_LOG_CLOSED'));
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiters.set(seq, { body, resolve, reject, ...(live ? { live } : {}) });
      // While a new writer starts, the request waits in `waiters`: posted once it is up.
      if (!this.restarting) this.worker.postMessage({ ...body, seq } as WorkerRequest);
    });
  }

  private receive(m: WorkerReply): void {
    if (m.type === 'state') {
      this.onStateChange?.(m.event);
      return;
    }
    if (m.type === 'replies') {
      for (const r of m.replies) this.receive(r);
      return;
    }
    if (m.type === 'snapshot') {
      this.snapshot = m.snapshot;
      return;
    }
    if (m.type !== 'reply') return;
    this.snapshot = m.snapshot;
    if (m.commit) for (const l of this.commitListeners) l(m.commit);
    const w = this.waiters.get(m.seq);
    if (!w) return;
    this.waiters.delete(m.seq);
    if (!m.ok) {
      w.reject(rebuild(m.error));
      return;
    }
    if (w.live) this.deliver(m.value as AppendResult[], w.live.timing);
    w.resolve(m.value);
  }

  private deliver(results: readonly AppendResult[], timing: AlertTiming | undefined): void {
    if (results.length === 0) return;
    const alerts: Alert[] = results.map((r) => r.alert);
    this.delivered = alerts[alerts.length - 1].id;
    for (const l of this.listeners) l(alerts, timing);
  }

  /** A writer stopped. Closing: what it had not answered fails. Else: restart it (module comment) or fail for good. */
  private died(worker: Worker, why: string): void {
    if (worker !== this.worker || this.dead || this.buried.has(worker)) return;
    this.buried.add(worker);
    if (this.closed || this.closing || this.restarting) {
      // Closing, or the new writer died during its own restart: no more tries.
      this.failAll(new Error(why));
      if (this.restarting) this.onWriterEvent?.({ state: 'failed', error: `${why} (while restarting)`, unanswered: this.waiters.size, recovered: 0, retried: 0, lostPending: 0, restarts: this.restarts });
      return;
    }
    const now = Date.now();
    this.deaths.push(now);
    while (this.deaths.length > 0 && this.deaths[0] < now - this.restartWindowMs) this.deaths.shift();
    const unanswered = this.waiters.size;
    const lostPending = this.snapshot.pending;
    if (this.deaths.length > this.maxRestarts) {
      this.failAll(new Error(`${why}; ${this.deaths.length} deaths within ${this.restartWindowMs} ms, not restarted`));
      this.onWriterEvent?.({ state: 'failed', error: why, unanswered, recovered: 0, retried: 0, lostPending, restarts: this.restarts });
      return;
    }
    this.restarting = this.restart(why, unanswered, this.seq).finally(() => {
      this.restarting = undefined;
    });
  }

  private async restart(why: string, unanswered: number, lastSeqPosted: number): Promise<void> {
    let next: Awaited<ReturnType<typeof launch>>;
    try {
      next = await launch(this.workerOptions);
    } catch (e) {
      this.failAll(new Error(`${why}; restart failed: ${(e as Error).message}`));
      this.onWriterEvent?.({ state: 'failed', error: `${why}; restart failed: ${(e as Error).message}`, unanswered, recovered: 0, retried: 0, lostPending: this.snapshot.pending, restarts: this.restarts });
      return;
    }
    this.restarts++;
    // The dead writer's counters stay counted (its answers that came after the death included).
    for (const k of COUNTED) this.base[k] += this.snapshot[k];
    const lostPending = this.snapshot.pending;
    this.lostPending += lostPending;
    const old = this.replies;
    this.worker = next.worker;
    this.replies = next.replies;
    this.answered = next.answered;
    this.snapshot = next.snapshot;
    this.watch(next);
    old.close();
    for (const m of next.early) this.receive(m);
    // What the dead writer committed but never answered: the log's alerts after the last one answered.
    const committed: Alert[] = [];
    try {
      for (let after = this.delivered; ; ) {
        const page = (await this.direct({ op: 'since', afterId: after, filter: {}, limit: MAX_SINCE_LIMIT })) as AlertPage;
        committed.push(...page.alerts);
        if (page.alerts.length < MAX_SINCE_LIMIT) break;
        after = page.alerts[page.alerts.length - 1].id;
      }
    } catch (e) {
      if (this.dead) return; // the new writer died during the read: died() reported it
      await next.worker.terminate();
      next.replies.close();
      if (this.dead) return; // its exit was reported as a death during the restart
      this.failAll(new Error(`${why}; the new writer could not read the log: ${(e as Error).message}`));
      this.onWriterEvent?.({ state: 'failed', error: why, unanswered, recovered: 0, retried: 0, lostPending, restarts: this.restarts });
      return;
    }
    // The dead writer wrote them: counted with its writes.
    this.base.writes += committed.length;
    // Match them to the unanswered appends in the order they were posted (the committed ones are a prefix).
    let at = 0;
    let recovered = 0;
    const retry: [number, Waiter][] = [];
    for (const [seq, w] of [...this.waiters].sort((a, b) => a[0] - b[0])) {
      if (w.body.op === 'append' && at < committed.length) {
        const drafts = w.body.drafts;
        let valid = true;
        try {
          for (const d of drafts) normalise(d, 0, 0);
        } catch (e) {
          // The dead writer refused it too: answer as it would have.
          this.waiters.delete(seq);
          w.reject(e as Error);
          valid = false;
        }
        if (!valid) continue;
        const mine = committed.slice(at, at + drafts.length);
        if (mine.length === drafts.length && mine.every((a, i) => sameAlert(a, drafts[i]))) {
          at += drafts.length;
          recovered++;
          this.waiters.delete(seq);
          const results: AppendResult[] = mine.map((alert) => ({ alert, durable: true, retained: true }));
          this.deliver(results, w.live?.timing);
          w.resolve(results);
          continue;
        }
      }
      retry.push([seq, w]);
    }
    // Committed alerts that match no unanswered append cannot be told apart from a bug: deliver
    // them live all the same (they are in the log), so the feed has every stored alert.
    if (at < committed.length) {
      const rest = committed.slice(at);
      this.delivered = rest[rest.length - 1].id;
      for (const l of this.listeners) l(rest, undefined);
    }
    for (const [seq, w] of retry) this.worker.postMessage({ ...w.body, seq } as WorkerRequest);
    const retried = retry.filter(([seq]) => seq <= lastSeqPosted).length;
    this.onWriterEvent?.({ state: 'restarted', error: why, unanswered, recovered, retried, lostPending, restarts: this.restarts });
  }

  /** A request to the current writer outside the waiters' order (the restart's own read). */
  private direct(body: WorkerRequestBody): Promise<unknown> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiters.set(seq, { body, resolve, reject });
      this.worker.postMessage({ ...body, seq } as WorkerRequest);
    }).finally(() => this.waiters.delete(seq));
  }

  /** The store cannot go on: what waits fails, and so does everything after. */
  private failAll(e: Error): void {
    if (this.dead || (this.closed && this.waiters.size === 0)) return;
    this.dead = e;
    for (const w of this.waiters.values()) w.reject(lwError('LW_ERR_ALERT_LOG_CLOSED', `alert log writer stopped: ${e.message}`));
    this.waiters.clear();
  }
}
