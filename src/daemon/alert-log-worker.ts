/**
 * The alert log's writer thread (group commit): runs inside a node:worker_threads Worker started
 * by GroupCommitAlertStore (group-commit-store.ts) and owns the SQLite connection (alert-log.ts,
 * unchanged: the same file, ids, reservation and pending queue as the log on the event loop).
 *
 * Group commit: while one transaction's fsync runs here, the daemon's event loop keeps going and
 * the appends it posts queue on this thread's port. When the commit returns, every queued message
 * is taken at once (receiveMessageOnPort) and all their alerts go into ONE transaction, ONE fsync;
 * then each append is answered with its alerts, in order. An answer is posted only after its
 * alerts' transaction committed, so the daemon acknowledges (verdict, subscribers) durable alerts
 * only. Reads are answered after the batch's writes, from the same connection (pending alerts
 * included), so a read and the ids it reports as examined are one consistent step.
 */
import { parentPort, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { LatentwatchError } from '../errors.js';
import { AlertLog, normalise, type AlertDraft, type AlertFilter, type AppendResult } from './alert-log.js';

/** What the store sends. `seq` pairs a request with its reply. */
export type WorkerRequest =
  | { op: 'append'; seq: number; drafts: AlertDraft[] }
  | { op: 'since'; seq: number; afterId: number; filter: AlertFilter; limit: number }
  | { op: 'lastId'; seq: number }
  | { op: 'close'; seq: number };

/** The log's state after a step: the store answers stats() and health() from the latest one. */
export interface WorkerSnapshot {
  writes: number;
  failures: number;
  pending: number;
  dropped: number;
  lastId: number;
  lastDurableId: number;
  lastError: string | null;
  failing: boolean;
  /** Write transactions this writer committed (each one fsync under synchronous=full). */
  commits: number;
}

/** One group commit: how many alerts its transaction held and how long it took (the fsync included). */
export interface CommitObservation {
  alerts: number;
  seconds: number;
}

export interface WorkerError {
  code?: string;
  message: string;
  details?: Record<string, unknown>;
}

export type WorkerReply =
  | { type: 'ready'; snapshot: WorkerSnapshot }
  | { type: 'openFailed'; error: WorkerError }
  | { type: 'reply'; seq: number; ok: true; value: unknown; snapshot: WorkerSnapshot; commit?: CommitObservation }
  | { type: 'reply'; seq: number; ok: false; error: WorkerError; snapshot: WorkerSnapshot; commit?: CommitObservation }
  | { type: 'state'; event: { state: 'failing' | 'recovered'; error?: string; pending: number } }
  /** A batch's answers, in order, in one message: one wake-up of the daemon's event loop per commit, not one per append. */
  | { type: 'replies'; replies: WorkerReply[] }
  /** After a maintenance run (retries, retention) that changed the log's state: no request was answered, health must still see it. */
  | { type: 'snapshot'; snapshot: WorkerSnapshot };

export interface WorkerOptions {
  path: string;
  retentionDays?: number;
  retentionRows?: number;
  pendingLimit?: number;
  retryIntervalMs?: number;
  busyTimeoutMs?: number;
  synchronous?: 'full' | 'normal';
  /** Retention and retries every this many ms (0: never). */
  maintenanceIntervalMs: number;
  /**
   * Where answers go (after 'ready'), and a counter bumped after each batch's answers are posted:
   * the store can then take them synchronously (receiveMessageOnPort) while it waits on the counter
   * (Atomics.wait). Without them, answers go to the parent port.
   */
  replyPort?: MessagePort;
  answered?: SharedArrayBuffer;
}

function toWorkerError(e: unknown): WorkerError {
  if (e instanceof LatentwatchError) return { code: e.code, message: e.message, ...(e.details ? { details: e.details } : {}) };
  return { message: (e as Error)?.message ?? String(e) };
}

if (parentPort) serve(parentPort, workerData as WorkerOptions);

function serve(port: MessagePort, options: WorkerOptions): void {
  const replies = options.replyPort ?? port;
  const answered = options.answered ? new Int32Array(options.answered) : undefined;
  const post = (m: WorkerReply) => replies.postMessage(m);
  const bump = () => {
    if (!answered) return;
    Atomics.add(answered, 0, 1);
    Atomics.notify(answered, 0);
  };
  let log: AlertLog;
  try {
    log = AlertLog.open({ ...options, onStateChange: (event) => post({ type: 'state', event }) });
  } catch (e) {
    port.postMessage({ type: 'openFailed', error: toWorkerError(e) } satisfies WorkerReply);
    port.close();
    return;
  }
  let commits = 0;
  const snapshot = (): WorkerSnapshot => ({ ...log.stats(), failing: log.isFailing, commits });
  let closing = false;
  let stopMaintenance = () => undefined as void;
  if (options.maintenanceIntervalMs > 0) {
    const timer = setInterval(() => {
      const before = JSON.stringify(snapshot());
      log.retryPending();
      log.prune();
      const after = snapshot();
      if (JSON.stringify(after) !== before) post({ type: 'snapshot', snapshot: after });
    }, options.maintenanceIntervalMs);
    timer.unref();
    stopMaintenance = () => clearInterval(timer);
  }
  port.postMessage({ type: 'ready', snapshot: snapshot() } satisfies WorkerReply);

  const handle = (batch: WorkerRequest[]) => {
    const answers: WorkerReply[] = [];
    const reply = (seq: number, f: () => unknown) => {
      try {
        answers.push({ type: 'reply', seq, ok: true, value: f(), snapshot: snapshot() });
      } catch (e) {
        answers.push({ type: 'reply', seq, ok: false, error: toWorkerError(e), snapshot: snapshot() });
      }
    };
    // Every valid append of the batch in one transaction. A draft the log would refuse fails its
    // own append only (checked first: one bad draft must not fail the others' transaction).
    const appends = batch.filter((m): m is Extract<WorkerRequest, { op: 'append' }> => m.op === 'append');
    const refused = new Map<number, unknown>();
    for (const m of appends) {
      try {
        for (const d of m.drafts) normalise(d, 0, 0);
      } catch (e) {
        refused.set(m.seq, e);
      }
    }
    const accepted = appends.filter((m) => !refused.has(m.seq));
    let results: AppendResult[] = [];
    let writeError: unknown;
    let commit: CommitObservation | undefined;
    if (!closing && accepted.length > 0) {
      try {
        const drafts = accepted.flatMap((m) => m.drafts);
        const started = performance.now();
        results = log.appendMany(drafts);
        // A batch the disk refused is held pending (durable: false): no commit to report.
        if (results.length > 0 && results[0].durable) {
          commits++;
          commit = { alerts: drafts.length, seconds: (performance.now() - started) / 1000 };
        }
      } catch (e) {
        writeError = e;
      }
    }
    let at = 0;
    for (const m of batch) {
      if (m.op === 'append') {
        reply(m.seq, () => {
          if (refused.has(m.seq)) throw refused.get(m.seq);
          if (closing) throw new LatentwatchError('LW_ERR_ALERT_LOG_CLOSED');
          if (writeError !== undefined) throw writeError;
          const mine = results.slice(at, at + m.drafts.length);
          at += m.drafts.length;
          return mine;
        });
      } else if (m.op === 'since') {
        // In one synchronous step with the read: every id up to lastId is in the table or pending.
        reply(m.seq, () => ({ alerts: log.since(m.afterId, m.filter, m.limit), scannedThrough: Math.max(m.afterId, log.lastId) }));
      } else if (m.op === 'lastId') {
        reply(m.seq, () => log.lastId);
      } else {
        reply(m.seq, () => {
          if (closing) return 0;
          closing = true;
          stopMaintenance();
          return log.close();
        });
      }
    }
    // The commit's figures ride on the batch's first answer (metrics.ts: commits, alerts per commit, commit seconds).
    if (commit && answers.length > 0) answers[0] = { ...answers[0], commit } as WorkerReply;
    if (answers.length === 1) post(answers[0]);
    else if (answers.length > 1) post({ type: 'replies', replies: answers });
    bump();
    if (closing) port.close();
  };

  port.on('message', (first: WorkerRequest) => {
    const batch = [first];
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) batch.push(m.message as WorkerRequest);
    handle(batch);
  });
}
