/**
 * A candidate alert store measured by bench/alert-path.ts (issue 15's lead "fsync the WAL from the
 * libuv thread pool"), not shipped: the SQLite log on the event loop with synchronous=NORMAL (a
 * commit writes its WAL frames with no fsync: microseconds) and then fdatasync of the -wal file on
 * libuv's thread pool (fs.fdatasync); an append resolves, and reaches the live feed, only once a
 * sync that started after its commit has returned. Appends committed while a sync runs share the
 * next one (group commit without a worker thread: one hop less per commit).
 *
 * Durability is that of FULL for what is acknowledged: WAL frames are only appended (a commit
 * never rewrites an earlier frame); SQLite syncs the WAL header itself when it starts a new WAL
 * (the header sync uses the checkpoint flags, on under NORMAL) and syncs the WAL and the database
 * around every checkpoint under NORMAL; so once fdatasync of the -wal file returned, every frame of
 * every commit before it is on disk and recovery replays them. What differs: the live feed and
 * the acknowledgement wait for the sync's completion callback, which runs only when the event loop
 * is free (after a synchronous forward pass), and a checkpoint (every 1000 WAL pages) syncs on the
 * event loop.
 */
import { closeSync, fdatasync, openSync } from 'node:fs';
import { AlertLog, type Alert, type AlertDraft, type AlertFilter, type AppendResult } from '../../src/daemon/alert-log.js';
import type { AlertPage, AlertStore, AlertStoreHealth, AlertTiming, LiveListener, StoredResult } from '../../src/daemon/alert-store.js';

interface Unsynced {
  results: AppendResult[];
  timing: AlertTiming | undefined;
  resolve: (r: StoredResult[]) => void;
}

export class PoolSyncAlertStore implements AlertStore {
  readonly kind = 'sqlite' as const;
  private readonly log: AlertLog;
  private readonly listeners: LiveListener[] = [];
  private delivered = 0;
  private walFd: number | undefined;
  /** Committed, waiting for a sync that started after their commit. */
  private waiting: Unsynced[] = [];
  private syncing = false;
  /** The highest id acknowledged (synced): reads stop there, so no one sees an alert before it is durable. */
  private syncedThrough = 0;
  /** fdatasync calls issued (each covers every commit before it). */
  syncs = 0;

  constructor(private readonly path: string) {
    this.log = AlertLog.open({ path, synchronous: 'normal' });
  }

  append(drafts: readonly AlertDraft[], timing?: AlertTiming): Promise<StoredResult[]> {
    let results: AppendResult[];
    try {
      results = this.log.appendMany(drafts);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return new Promise((resolve) => {
      this.waiting.push({ results, timing, resolve });
      if (!this.syncing) this.sync();
    });
  }

  private sync(): void {
    const batch = this.waiting;
    this.waiting = [];
    this.syncing = true;
    this.syncs++;
    this.walFd ??= openSync(`${this.path}-wal`, 'r');
    fdatasync(this.walFd, (err) => {
      this.syncing = false;
      for (const u of batch) {
        // A failed sync: nothing of this batch is known to be on disk.
        const results = err ? u.results.map((r) => ({ ...r, durable: false })) : u.results;
        if (results.length > 0) {
          const alerts: Alert[] = results.map((r) => r.alert);
          this.delivered = alerts[alerts.length - 1].id;
          this.syncedThrough = this.delivered;
          for (const l of this.listeners) l(alerts, u.timing);
        }
        u.resolve(results);
      }
      if (this.waiting.length > 0) this.sync();
    });
  }

  since(afterId: number, filter: AlertFilter, limit: number): Promise<AlertPage> {
    const scannedThrough = Math.max(afterId, Math.min(this.log.lastId, this.syncedThrough));
    return Promise.resolve({ alerts: this.log.since(afterId, filter, limit).filter((a) => a.id <= scannedThrough), scannedThrough });
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
    return { ok: !this.log.isFailing };
  }

  stats() {
    return this.log.stats();
  }

  async close(): Promise<void> {
    while (this.syncing || this.waiting.length > 0) await new Promise((r) => setTimeout(r, 1));
    if (this.walFd !== undefined) closeSync(this.walFd);
    this.log.close();
  }
}
