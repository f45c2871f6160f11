/**
 * The alert store: where alerts get their ids, are kept, are read back (polling, resume), and
 * from which the hub (alert-hub.ts) receives the live feed it fans out. Two implementations:
 *   - SqliteAlertStore (here): the embedded SQLite log of one daemon (alert-log.ts); the default.
 *   - JetStreamAlertStore (nats-alert-store.ts): one NATS JetStream stream shared by every
 *     replica (`serve --nats`); ids are the stream's sequence numbers.
 *
 * The contract the hub relies on (no gap, no duplicate on resume):
 *   - ids are positive integers, increasing in the order the live feed delivers alerts;
 *   - `since(after)` returns stored alerts with id > after in id order, and `scannedThrough`: every
 *     alert with id <= scannedThrough was examined by that read (matching ones are in the page,
 *     unless the page is full);
 *   - the live feed delivers every stored alert once, in id order, to each listener.
 */
import type { Alert, AlertDraft, AlertFilter, AppendResult, AlertLog } from './alert-log.js';

/** High-resolution timing of a live alert (alert-hub.ts module comment: `forwardAtUs`). */
export interface AlertTiming {
  /**
   * When the forward pass of the token whose scores raised the alert returned to the daemon:
   * epoch microseconds on the daemon's monotonic clock, `(performance.timeOrigin + performance.now()) * 1000`.
   */
  forwardAtUs?: number;
}

export interface AlertPage {
  /** Matching alerts in id order, at most the limit asked for. */
  alerts: Alert[];
  /** Every alert with an id at or below this was examined (>= the `after` asked for). */
  scannedThrough: number;
}

/** Receives the live feed: alerts in id order, each once (a token's alerts together). */
export type LiveListener = (alerts: readonly Alert[], timing?: AlertTiming) => void;

/** What /readyz shows about the store. */
export interface AlertStoreHealth {
  ok: boolean;
  [field: string]: unknown;
}

export interface AlertStore {
  readonly kind: 'sqlite' | 'jetstream';
  /**
   * Store one token's alerts (in order). Resolves when each is acknowledged by the store (then it
   * has its id and reaches the live feed) or, for a store with an outbox, queued there (`queued`,
   * id 0: the id comes when the outbox is published). Rejects only when the store is closed.
   */
  append(drafts: readonly AlertDraft[], timing?: AlertTiming): Promise<StoredResult[]>;
  /** Stored alerts after `afterId` matching the filter (see the module comment). */
  since(afterId: number, filter: AlertFilter, limit: number): Promise<AlertPage>;
  /** The highest id this store knows to exist (a cursor above it is refused with 409). */
  lastId(): Promise<number>;
  /** Subscribe to the live feed (the hub does, once). */
  onLive(listener: LiveListener): void;
  /** The highest id the live feed has delivered (0: none). */
  readonly liveThrough: number;
  health(): AlertStoreHealth;
  /** Counters for the metrics (metrics.ts AlertLogStatsSource). */
  stats(): { writes: number; failures: number; pending: number; dropped: number; outboxPending?: number; connected?: boolean };
  /** Flush what can be flushed and release the store. */
  close(): Promise<void>;
}

export interface StoredResult extends AppendResult {
  /** In the local outbox, waiting for the shared stream: `alert.id` is 0 until it is published. */
  queued?: boolean;
}

/** The embedded SQLite log behind the store interface: append and fan-out in one synchronous step. */
export class SqliteAlertStore implements AlertStore {
  readonly kind = 'sqlite' as const;
  private readonly listeners: LiveListener[] = [];
  private delivered = 0;

  constructor(readonly log: AlertLog) {}

  append(drafts: readonly AlertDraft[], timing?: AlertTiming): Promise<StoredResult[]> {
    try {
      return Promise.resolve(this.appendNow(drafts, timing));
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }

  /**
   * `append` without the promise: the log commits (or holds the alerts pending) and they are fanned
   * out before this returns, so a reader of the log and the live feed never disagree.
   */
  appendNow(drafts: readonly AlertDraft[], timing?: AlertTiming): StoredResult[] {
    const results = this.log.appendMany(drafts);
    if (results.length > 0) {
      const alerts = results.map((r) => r.alert);
      this.delivered = alerts[alerts.length - 1].id;
      for (const l of this.listeners) l(alerts, timing);
    }
    return results;
  }

  since(afterId: number, filter: AlertFilter, limit: number): Promise<AlertPage> {
    try {
      // Read in one synchronous step with lastId: everything up to it is in the table or pending.
      const scannedThrough = Math.max(afterId, this.log.lastId);
      return Promise.resolve({ alerts: this.log.since(afterId, filter, limit), scannedThrough });
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }

  lastId(): Promise<number> {
    return Promise.resolve(this.log.lastId);
  }

  onLive(listener: LiveListener): void {
    this.listeners.push(listener);
  }

  get liveThrough(): number {
    return this.delivered;
  }

  health(): AlertStoreHealth {
    const st = this.log.stats();
    return { ok: !this.log.isFailing, pending: st.pending, failures: st.failures, dropped: st.dropped, last_error: this.log.isFailing ? st.lastError : null };
  }

  stats() {
    return this.log.stats();
  }

  close(): Promise<void> {
    this.log.close();
    return Promise.resolve();
  }
}
