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
 * The live feed delivers in id order: the writer answers appends in the order it assigned ids and
 * the answers arrive in that order. It may lag the log (an alert is committed before its answer
 * reaches this thread); the hub's resume handles a feed that lags (alert-hub.ts module comment).
 */
import { Worker } from 'node:worker_threads';
import { lwError, type ErrorCode, ERRORS } from '../errors.js';
import type { Alert, AlertDraft, AlertFilter, AppendResult } from './alert-log.js';
import type { AlertPage, AlertStore, AlertStoreHealth, AlertTiming, LiveListener, StoredResult } from './alert-store.js';
import type { WorkerError, WorkerOptions, WorkerReply, WorkerRequest, WorkerSnapshot } from './alert-log-worker.js';

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
}

/** A request without its sequence number (distributed over the union). */
type WorkerRequestBody = WorkerRequest extends infer R ? (R extends WorkerRequest ? Omit<R, 'seq'> : never) : never;

interface Waiter {
  resolve: (value: unknown) => void;
  reject: (e: Error) => void;
  /** Appends: the live feed gets these alerts, with this timing, when the answer comes. */
  live?: { timing: AlertTiming | undefined };
}

/**
 * The worker's entry. From dist/ the compiled .js runs as is; from source (tsx, vitest) the worker
 * first registers tsx's loader, which a Worker does not inherit from its parent on Node 20.
 */
function startWorker(options: WorkerOptions): Worker {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return new Worker(new URL('./alert-log-worker.js', here), { workerData: options });
  const entry = new URL('./alert-log-worker.ts', here).href;
  const boot = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(boot, { eval: true, workerData: options });
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

export class GroupCommitAlertStore implements AlertStore {
  readonly kind = 'sqlite' as const;
  readonly path: string;
  private readonly worker: Worker;
  private readonly waiters = new Map<number, Waiter>();
  private readonly listeners: LiveListener[] = [];
  private readonly onStateChange: GroupCommitOptions['onStateChange'];
  private snapshot: WorkerSnapshot;
  private seq = 0;
  private delivered = 0;
  private closed = false;
  /** Set when the writer died: every later call fails with it. */
  private dead: Error | undefined;
  private closing: Promise<void> | undefined;

  private constructor(worker: Worker, snapshot: WorkerSnapshot, options: GroupCommitOptions) {
    this.worker = worker;
    this.snapshot = snapshot;
    this.path = options.path;
    this.onStateChange = options.onStateChange;
    worker.on('message', (m: WorkerReply) => this.receive(m));
    worker.on('error', (e) => this.fail(e));
    worker.on('exit', (code) => this.fail(new Error(`alert log writer exited (${code})`)));
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
    const worker = startWorker(workerOptions);
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
      throw e;
    });
    const store = new GroupCommitAlertStore(worker, snapshot, options);
    for (const m of early) store.receive(m);
    return store;
  }

  append(drafts: readonly AlertDraft[], timing?: AlertTiming): Promise<StoredResult[]> {
    if (drafts.length === 0 && !this.closed) return Promise.resolve([]);
    return this.request({ op: 'append', drafts: [...drafts] }, { timing }) as Promise<StoredResult[]>;
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

  get liveThrough(): number {
    return this.delivered;
  }

  health(): AlertStoreHealth {
    const s = this.snapshot;
    if (this.dead) return { ok: false, pending: s.pending, failures: s.failures, dropped: s.dropped, last_error: this.dead.message };
    return { ok: !s.failing, pending: s.pending, failures: s.failures, dropped: s.dropped, last_error: s.failing ? s.lastError : null };
  }

  /** The log's counters as of the writer's last answer (alert-log.ts AlertLogStats), and its commits. */
  stats(): WorkerSnapshot {
    return { ...this.snapshot };
  }

  /** Flush what can be flushed (alert-log.ts close), stop the writer. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.dead) {
        try {
          await this.request({ op: 'close' });
        } catch {
          // the writer is gone already: nothing left to flush
        }
      }
      this.closed = true;
      await this.worker.terminate();
    })();
    return this.closing;
  }

  private request(m: WorkerRequestBody, live?: Waiter['live']): Promise<unknown> {
    if (this.dead) return Promise.reject(lwError('LW_ERR_ALERT_LOG_CLOSED', this.dead.message));
    if (this.closed || (this.closing && m.op !== 'close')) return Promise.reject(lwError('LW_ERR_ALERT_LOG_CLOSED'));
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiters.set(seq, { resolve, reject, ...(live ? { live } : {}) });
      this.worker.postMessage({ ...m, seq } as WorkerRequest);
    });
  }

  private receive(m: WorkerReply): void {
    if (m.type === 'state') {
      this.onStateChange?.(m.event);
      return;
    }
    if (m.type !== 'reply') return;
    this.snapshot = m.snapshot;
    const w = this.waiters.get(m.seq);
    if (!w) return;
    this.waiters.delete(m.seq);
    if (!m.ok) {
      w.reject(rebuild(m.error));
      return;
    }
    if (w.live) {
      const results = m.value as AppendResult[];
      if (results.length > 0) {
        const alerts: Alert[] = results.map((r) => r.alert);
        this.delivered = alerts[alerts.length - 1].id;
        for (const l of this.listeners) l(alerts, w.live.timing);
      }
    }
    w.resolve(m.value);
  }

  /** The writer died (a bug or the thread killed): what it had not answered fails, and so does everything after. */
  private fail(e: Error): void {
    if (this.dead || (this.closed && this.waiters.size === 0)) return;
    this.dead = e;
    for (const w of this.waiters.values()) w.reject(lwError('LW_ERR_ALERT_LOG_CLOSED', `alert log writer stopped: ${e.message}`));
    this.waiters.clear();
  }
}
