/**
 * The durable alert log: SQLite through better-sqlite3, WAL, synchronous=FULL.
 *
 * An alert is appended here BEFORE it is fanned out (alert-hub.ts). `append` is synchronous and
 * returns after the transaction has committed and the WAL is fsynced, so an alert reported
 * `durable: true` survives kill -9 and power loss.
 *
 * ── Ids ──────────────────────────────────────────────────────────────────────────────────────
 * Ids are positive integers assigned by this class from an in-memory counter, strictly increasing
 * in append order, and never reused. They are final the moment they are assigned, whether or not
 * the row reached the disk ("provisional" describes the alert's durability, never its id).
 * Never reusing an id across restarts needs care, because an id can be handed to live subscribers
 * while the disk is failing and the process can then die: the next run must not give that id to
 * a different alert. So the log keeps a durable reservation, `meta.reserved_through`:
 *   - every id ever handed out is <= reserved_through (extended, inside the same transaction as
 *     an insert, whenever fewer than half a block of ids remains; a block is 2 × pendingLimit,
 *     at least 1024);
 *   - on open, the counter starts after max(reserved_through, max(id)), and a new block is
 *     reserved before any id is handed out (open fails with LW_ERR_ALERT_LOG_OPEN if it cannot);
 *   - on a clean close, reserved_through is lowered to the last id handed out.
 * After a clean shutdown ids therefore continue contiguously; after a crash they jump past the
 * reservation. Subscribers must treat ids as ordered, not as contiguous.
 *
 * ── Disk failures (full, read-only, I/O error) ───────────────────────────────────────────────
 * A failed insert does not lose the alert for live subscribers: it keeps its id, is returned with
 * `durable: false` (the caller still fans it out), and waits in an in-memory pending queue.
 * Invariant: the pending queue is a suffix of the id sequence. Rows reach the table strictly in id
 * order: while anything is pending, new alerts queue behind it instead of being written ahead of
 * it. `retryPending()` (called by `append` at most once per retry interval, and by the daemon's
 * maintenance timer) writes the queue front-first in chunks, each chunk one transaction, and
 * removes a chunk from the queue in the same synchronous step as its commit.
 * Hence `since(id)` = table rows after id, then pending alerts after id; every alert is in exactly
 * one of the two at any instant, and each alert's id never changes. A subscriber that resumes
 * (alert-hub.ts) during the outage or after the recovery gets the same sequence: no gap, no
 * duplicate. The queue is bounded by pendingLimit: beyond it an alert is still returned (and so
 * delivered live) but is not retained, and is counted in `dropped` (a documented loss, the price of
 * bounded memory; it is also the one case where an id can fall outside the durable reservation,
 * after more than half a block of alerts in one outage followed by a crash).
 *
 * One process owns a log file: the connection holds SQLite's exclusive lock (locking_mode
 * EXCLUSIVE), so a second daemon on the same file fails at open instead of colliding on ids.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { lwError } from '../errors.js';
import { SEVERITIES, severityRank, type Severity } from './config.js';

/** Schema version in SQLite's user_version: 1 first, 2 added `tenant`, 3 added `concept` (older files are migrated on open). */
export const ALERT_LOG_SCHEMA_VERSION = 3;

export type AlertKind = 'detection' | 'canary_failure';
export const ALERT_KINDS: readonly AlertKind[] = ['detection', 'canary_failure'];

export interface Alert {
  id: number;
  /** ISO 8601, UTC, milliseconds. */
  ts: string;
  requestId: string;
  model: string;
  probeId: string;
  probeLabel: string;
  severity: Severity;
  /** Aggregated probe score that crossed the threshold. */
  score: number;
  threshold: number;
  /** Position in the full sequence (prompt + generated) where the rule fired. */
  tokenIndex: number;
  /** fired && !verbalized, as of when the alert was raised (see monitor.ts). */
  silent: boolean;
  verbalized: boolean;
  textExcerpt?: string;
  /**
   * Detections: the stored concept closest to what the detector saw, when the match is clear
   * (src/probes/concept-naming.ts); null when no concept store is loaded, the probe cannot be read
   * this way, or no concept clears the floor. Absent on canary failures.
   */
  concept?: AlertConcept | null;
  kind: AlertKind;
  /** Name of the API key whose request raised it (auth.ts: "anonymous" on an open daemon, "system" for the canary). */
  tenant: string;
  /** The replica that raised it (pod or host name), on a shared JetStream stream only (nats-alert-store.ts). */
  replica?: string;
}

/** The closest stored concept of a detection (issue 12). */
export interface AlertConcept {
  name: string;
  /** The layer whose update was most anomalous, where the cosine was taken. */
  layer: number;
  /** Cosine with that concept's vector (in the detector member's whitened space), rounded to 4 digits. */
  cosine: number;
  /** Cosine − the runner-up concept's cosine. */
  margin: number;
}

/** What a producer hands to `append`: everything but the id (and optionally the time and tenant: default "anonymous"). */
export type AlertDraft = Omit<Alert, 'id' | 'ts' | 'tenant'> & { ts?: string; tenant?: string };

/** The tenant of an alert raised without one, and of rows written before alerts had tenants. */
export const DEFAULT_TENANT = 'anonymous';

export interface AlertFilter {
  /** One probe id or several. */
  probe?: string | readonly string[];
  /** At least this severity. */
  minSeverity?: Severity;
  model?: string;
  /** Only alerts with silent = true. */
  silentOnly?: boolean;
  kind?: AlertKind;
  /** Only this tenant's alerts (a user key's view; auth.ts `alertTenant`). */
  tenant?: string;
}

export interface AppendResult {
  alert: Alert;
  /** Committed and fsynced. false: held in memory (or, past pendingLimit, live only). */
  durable: boolean;
  /** Visible to `since` (durable or pending). false only when the pending queue was full. */
  retained: boolean;
}

export interface AlertLogStats {
  /** Rows committed. */
  writes: number;
  /** Failed write transactions (appends and retries). */
  failures: number;
  /** Alerts waiting in memory for the disk. */
  pending: number;
  /** Alerts not retained because the pending queue was full. */
  dropped: number;
  /** Last id handed out (0: none yet). */
  lastId: number;
  /** Highest id committed to disk by this process or found at open (0: none). */
  lastDurableId: number;
  lastError: string | null;
}

export interface AlertLogOptions {
  /** SQLite file; ':memory:' for a non-durable log. Parent directories are created. */
  path: string;
  /** Rows older than this many days are pruned; 0 = never. */
  retentionDays?: number;
  /** At most this many rows are kept; 0 = no limit. */
  retentionRows?: number;
  /** Bound of the in-memory pending queue (default 10 000). */
  pendingLimit?: number;
  /** Minimum milliseconds between retries triggered by `append` (default 1000). */
  retryIntervalMs?: number;
  /** How long open waits for another process's lock before failing (default 2000). */
  busyTimeoutMs?: number;
  /**
   * SQLite `synchronous` (default 'full'). 'full': each append fsyncs the WAL before it returns, so a
   * committed alert survives power loss. 'normal' (WAL): no fsync per append (the WAL is synced at
   * checkpoints), so a committed alert survives a crash or kill -9 of the process but the last
   * ones may be lost on power loss or an OS crash; the append no longer waits for the disk.
   */
  synchronous?: 'full' | 'normal';
  /** Clock in epoch milliseconds (tests). */
  now?: () => number;
  /** Told about write failures and recoveries (the daemon logs them). */
  onStateChange?: (event: { state: 'failing' | 'recovered'; error?: string; pending: number }) => void;
}

export const DEFAULT_SINCE_LIMIT = 100;
export const MAX_SINCE_LIMIT = 10_000;
const RETRY_CHUNK = 256;

interface Row {
  id: number;
  ts: number;
  kind: string;
  request_id: string;
  model: string;
  probe_id: string;
  probe_label: string;
  severity: string;
  score: number;
  threshold: number;
  token_index: number;
  silent: number;
  verbalized: number;
  text_excerpt: string | null;
  tenant: string;
  /** JSON of Alert.concept (the text 'null' for a detection without one); SQL NULL when absent. */
  concept: string | null;
}

export class AlertLog {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly pendingLimit: number;
  private readonly block: number;
  private readonly retentionDays: number;
  private readonly retentionRows: number;
  private readonly retryIntervalMs: number;
  private readonly onStateChange: AlertLogOptions['onStateChange'];
  private readonly pending: Alert[] = [];
  private nextId: number;
  private reservedThrough: number;
  private lastDurableId: number;
  private nextRetryAt = 0;
  private failing = false;
  private closed = false;
  private counters = { writes: 0, failures: 0, dropped: 0 };
  private lastError: string | null = null;
  private readonly insertStmt: Database.Statement;
  private readonly reserveStmt: Database.Statement;

  private constructor(db: Database.Database, options: AlertLogOptions) {
    this.db = db;
    this.path = options.path;
    this.now = options.now ?? Date.now;
    this.pendingLimit = options.pendingLimit ?? 10_000;
    this.block = Math.max(1024, 2 * this.pendingLimit);
    this.retentionDays = options.retentionDays ?? 0;
    this.retentionRows = options.retentionRows ?? 0;
    this.retryIntervalMs = options.retryIntervalMs ?? 1000;
    this.onStateChange = options.onStateChange;

    db.exec(`
      CREATE TABLE IF NOT EXISTS alerts (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        probe_id TEXT NOT NULL,
        probe_label TEXT NOT NULL,
        severity TEXT NOT NULL,
        severity_rank INTEGER NOT NULL,
        score REAL NOT NULL,
        threshold REAL NOT NULL,
        token_index INTEGER NOT NULL,
        silent INTEGER NOT NULL,
        verbalized INTEGER NOT NULL,
        text_excerpt TEXT,
        tenant TEXT NOT NULL DEFAULT '${DEFAULT_TENANT}',
        concept TEXT
      );
      CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    `);
    // Version 1 had no tenant: its rows become "anonymous" (on a keyed daemon, only the admin key sees them).
    const columns = db.prepare('PRAGMA table_info(alerts)').all() as { name: string }[];
    if (!columns.some((c) => c.name === 'tenant')) db.exec(`ALTER TABLE alerts ADD COLUMN tenant TEXT NOT NULL DEFAULT '${DEFAULT_TENANT}'`);
    // Version 2 had no concept: its rows read back without one.
    if (!columns.some((c) => c.name === 'concept')) db.exec('ALTER TABLE alerts ADD COLUMN concept TEXT');
    db.exec('CREATE INDEX IF NOT EXISTS alerts_tenant ON alerts (tenant, id)');
    db.pragma(`user_version = ${ALERT_LOG_SCHEMA_VERSION}`);
    this.insertStmt = db.prepare(`INSERT INTO alerts (id, ts, kind, request_id, model, probe_id, probe_label, severity,
      severity_rank, score, threshold, token_index, silent, verbalized, text_excerpt, tenant, concept)
      VALUES (@id, @ts, @kind, @request_id, @model, @probe_id, @probe_label, @severity, @severity_rank, @score,
      @threshold, @token_index, @silent, @verbalized, @text_excerpt, @tenant, @concept)`);
    this.reserveStmt = db.prepare(`INSERT INTO meta (key, value) VALUES ('reserved_through', ?)
      ON CONFLICT (key) DO UPDATE SET value = excluded.value`);

    const maxId = (db.prepare('SELECT COALESCE(MAX(id), 0) AS m FROM alerts').get() as { m: number }).m;
    const reserved = (db.prepare(`SELECT value FROM meta WHERE key = 'reserved_through'`).get() as { value: number } | undefined)?.value ?? 0;
    const base = Math.max(maxId, reserved);
    this.nextId = base + 1;
    this.lastDurableId = maxId;
    this.reservedThrough = base + this.block;
    this.reserveStmt.run(this.reservedThrough);
  }

  /** Open (creating if needed) the log. Throws LW_ERR_ALERT_LOG_OPEN. */
  static open(options: AlertLogOptions): AlertLog {
    let db: Database.Database | undefined;
    try {
      if (options.path !== ':memory:') mkdirSync(dirname(options.path), { recursive: true });
      db = new Database(options.path);
      db.pragma(`busy_timeout = ${Math.max(0, Math.floor(options.busyTimeoutMs ?? 2000))}`);
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
      const log = new AlertLog(db, options);
      log.prune();
      return log;
    } catch (e) {
      try {
        db?.close();
      } catch {
        // already failing; report the first error
      }
      throw lwError('LW_ERR_ALERT_LOG_OPEN', `${options.path}: ${(e as Error).message}`, { path: options.path }, e);
    }
  }

  /**
   * Give the alert its id and write it. Never throws for a disk failure: the alert is then kept
   * in memory (durable: false) and the caller fans it out all the same.
   * Throws LW_ERR_ALERT_LOG_CLOSED after close().
   */
  append(draft: AlertDraft): AppendResult {
    return this.appendMany([draft])[0];
  }

  /**
   * `append` for several alerts at once (one token's alerts): consecutive ids, one transaction and
   * so one fsync for all of them, which is what keeps the last one's latency near the first's.
   */
  appendMany(drafts: readonly AlertDraft[]): AppendResult[] {
    if (this.closed) throw lwError('LW_ERR_ALERT_LOG_CLOSED');
    if (drafts.length === 0) return [];
    const now = this.now();
    const alerts = drafts.map((d) => normalise(d, this.nextId++, now));
    if (this.pending.length > 0 && this.now() >= this.nextRetryAt) this.retryPending();
    if (this.pending.length === 0) {
      try {
        this.writeBatch(alerts);
        this.noteRecovered();
        return alerts.map((alert) => ({ alert, durable: true, retained: true }));
      } catch (e) {
        this.noteFailure(e);
      }
    }
    return alerts.map((alert) => {
      if (this.pending.length >= this.pendingLimit) {
        this.counters.dropped++;
        return { alert, durable: false, retained: false };
      }
      this.pending.push(alert);
      return { alert, durable: false, retained: true };
    });
  }

  /**
   * Write pending alerts, oldest first, in chunks (one transaction each). Stops at the first
   * failing chunk. Returns how many were written. Safe to call at any time.
   */
  retryPending(): number {
    if (this.closed) return 0;
    let written = 0;
    while (this.pending.length > 0) {
      const chunk = this.pending.slice(0, RETRY_CHUNK);
      try {
        this.writeBatch(chunk);
      } catch (e) {
        this.noteFailure(e);
        return written;
      }
      // Same synchronous step as the commit: an alert is never in both places or in neither.
      this.pending.splice(0, chunk.length);
      written += chunk.length;
    }
    this.noteRecovered();
    return written;
  }

  /**
   * Alerts with id > afterId matching the filter, in id order, at most `limit`
   * (default 100, at most 10 000): committed rows first, then pending ones (always newer).
   */
  since(afterId: number, filter: AlertFilter = {}, limit = DEFAULT_SINCE_LIMIT): Alert[] {
    if (this.closed) throw lwError('LW_ERR_ALERT_LOG_CLOSED');
    if (!Number.isSafeInteger(afterId) || afterId < 0) throw lwError('LW_ERR_ALERT_BAD_QUERY', `since must be a non-negative integer, got ${afterId}`, { param: 'since' });
    if (!Number.isSafeInteger(limit) || limit < 1) throw lwError('LW_ERR_ALERT_BAD_QUERY', `limit must be a positive integer, got ${limit}`, { param: 'limit' });
    const n = Math.min(limit, MAX_SINCE_LIMIT);
    const where = ['id > ?'];
    const args: (string | number)[] = [afterId];
    const probes = filter.probe === undefined ? [] : typeof filter.probe === 'string' ? [filter.probe] : [...filter.probe];
    if (probes.length > 0) {
      where.push(`probe_id IN (${probes.map(() => '?').join(', ')})`);
      args.push(...probes);
    }
    if (filter.minSeverity !== undefined) {
      where.push('severity_rank >= ?');
      args.push(severityRank(filter.minSeverity));
    }
    if (filter.model !== undefined) {
      where.push('model = ?');
      args.push(filter.model);
    }
    if (filter.silentOnly) where.push('silent = 1');
    if (filter.kind !== undefined) {
      where.push('kind = ?');
      args.push(filter.kind);
    }
    if (filter.tenant !== undefined) {
      where.push('tenant = ?');
      args.push(filter.tenant);
    }
    let rows: Row[];
    try {
      rows = this.db.prepare(`SELECT * FROM alerts WHERE ${where.join(' AND ')} ORDER BY id LIMIT ?`).all(...args, n) as Row[];
    } catch (e) {
      throw lwError('LW_ERR_ALERT_LOG_READ', (e as Error).message, undefined, e);
    }
    const out = rows.map(fromRow);
    for (const a of this.pending) {
      if (out.length >= n) break;
      if (a.id > afterId && matchesFilter(a, filter)) out.push(a);
    }
    return out;
  }

  /** Apply retention (age, then row count). Returns rows deleted; a failure is counted, not thrown. */
  prune(): number {
    if (this.closed) return 0;
    let deleted = 0;
    try {
      if (this.retentionDays > 0) {
        const cutoff = this.now() - this.retentionDays * 86_400_000;
        deleted += this.db.prepare('DELETE FROM alerts WHERE ts < ?').run(cutoff).changes;
      }
      if (this.retentionRows > 0) {
        deleted += this.db
          .prepare('DELETE FROM alerts WHERE id <= (SELECT id FROM alerts ORDER BY id DESC LIMIT 1 OFFSET ?)')
          .run(this.retentionRows).changes;
      }
    } catch (e) {
      this.noteFailure(e);
    }
    return deleted;
  }

  /** Run retention and retries every `intervalMs` (unref'd). Returns a function that stops it. */
  startMaintenance(intervalMs: number): () => void {
    const timer = setInterval(() => {
      this.retryPending();
      this.prune();
    }, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  stats(): AlertLogStats {
    return {
      writes: this.counters.writes,
      failures: this.counters.failures,
      pending: this.pending.length,
      dropped: this.counters.dropped,
      lastId: this.nextId - 1,
      lastDurableId: this.lastDurableId,
      lastError: this.lastError,
    };
  }

  /** Last id handed out (0: none). */
  get lastId(): number {
    return this.nextId - 1;
  }

  /** Writes are failing (alerts are pending in memory) since the last failure, until a retry succeeds. */
  get isFailing(): boolean {
    return this.failing;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * The underlying connection, for diagnostics and fault-injection tests only
   * (e.g. `PRAGMA max_page_count` to make the disk "full", `PRAGMA query_only` to make it read-only).
   */
  get database(): Database.Database {
    return this.db;
  }

  /**
   * Flush what can be flushed, lower the reservation to the last id handed out (so the next run
   * continues contiguously), close. Returns alerts still pending (lost: they were live-only).
   */
  close(): number {
    if (this.closed) return 0;
    this.retryPending();
    const lost = this.pending.length;
    if (lost === 0) {
      try {
        this.reserveStmt.run(this.nextId - 1);
      } catch {
        // keep the larger reservation: the next run jumps past it, which is always safe
      }
    }
    this.closed = true;
    this.db.close();
    return lost;
  }

  private writeBatch(alerts: readonly Alert[]): void {
    const last = alerts[alerts.length - 1].id;
    const extend = last > this.reservedThrough - this.block / 2;
    const target = last + this.block;
    this.db.transaction(() => {
      for (const a of alerts) this.insertStmt.run(toRow(a));
      if (extend) this.reserveStmt.run(target);
    })();
    if (extend) this.reservedThrough = target;
    this.counters.writes += alerts.length;
    this.lastDurableId = last;
  }

  private noteRecovered(): void {
    if (this.failing && this.pending.length === 0) {
      this.failing = false;
      this.onStateChange?.({ state: 'recovered', pending: 0 });
    }
  }

  private noteFailure(e: unknown): void {
    this.counters.failures++;
    const code = (e as { code?: unknown }).code;
    this.lastError = `${typeof code === 'string' ? `${code}: ` : ''}${(e as Error).message}`;
    this.nextRetryAt = this.now() + this.retryIntervalMs;
    if (!this.failing) {
      this.failing = true;
      this.onStateChange?.({ state: 'failing', error: this.lastError, pending: this.pending.length });
    }
  }
}

/** Whether an alert passes a filter (the same test `since` applies in SQL). */
export function matchesFilter(a: Alert, f: AlertFilter): boolean {
  if (f.probe !== undefined) {
    if (typeof f.probe === 'string' ? a.probeId !== f.probe : !f.probe.includes(a.probeId)) return false;
  }
  if (f.minSeverity !== undefined && severityRank(a.severity) < severityRank(f.minSeverity)) return false;
  if (f.model !== undefined && a.model !== f.model) return false;
  if (f.silentOnly && !a.silent) return false;
  if (f.kind !== undefined && a.kind !== f.kind) return false;
  if (f.tenant !== undefined && a.tenant !== f.tenant) return false;
  return true;
}

/** A draft as a stored alert: validated, its time and tenant filled in. Throws LW_ERR_ALERT_BAD_QUERY. */
export function normalise(d: AlertDraft, id: number, nowMs: number): Alert {
  if (!SEVERITIES.includes(d.severity)) throw lwError('LW_ERR_ALERT_BAD_QUERY', `unknown severity ${String(d.severity)}`, { param: 'severity' });
  if (!ALERT_KINDS.includes(d.kind)) throw lwError('LW_ERR_ALERT_BAD_QUERY', `unknown alert kind ${String(d.kind)}`, { param: 'kind' });
  const ts = d.ts === undefined ? new Date(nowMs) : new Date(d.ts);
  const alert: Alert = {
    id,
    ts: (Number.isNaN(ts.getTime()) ? new Date(nowMs) : ts).toISOString(),
    requestId: d.requestId,
    model: d.model,
    probeId: d.probeId,
    probeLabel: d.probeLabel,
    severity: d.severity,
    score: d.score,
    threshold: d.threshold,
    tokenIndex: d.tokenIndex,
    silent: d.silent,
    verbalized: d.verbalized,
    kind: d.kind,
    tenant: d.tenant ?? DEFAULT_TENANT,
  };
  if (d.textExcerpt !== undefined) alert.textExcerpt = d.textExcerpt;
  if (d.concept !== undefined) alert.concept = d.concept === null ? null : { ...d.concept };
  return alert;
}

function toRow(a: Alert): Row & { severity_rank: number } {
  return {
    id: a.id,
    ts: Date.parse(a.ts),
    kind: a.kind,
    request_id: a.requestId,
    model: a.model,
    probe_id: a.probeId,
    probe_label: a.probeLabel,
    severity: a.severity,
    severity_rank: severityRank(a.severity),
    score: a.score,
    threshold: a.threshold,
    token_index: a.tokenIndex,
    silent: a.silent ? 1 : 0,
    verbalized: a.verbalized ? 1 : 0,
    text_excerpt: a.textExcerpt ?? null,
    tenant: a.tenant,
    concept: a.concept === undefined ? null : JSON.stringify(a.concept),
  };
}

function fromRow(r: Row): Alert {
  const a: Alert = {
    id: r.id,
    ts: new Date(r.ts).toISOString(),
    requestId: r.request_id,
    model: r.model,
    probeId: r.probe_id,
    probeLabel: r.probe_label,
    severity: r.severity as Severity,
    score: r.score,
    threshold: r.threshold,
    tokenIndex: r.token_index,
    silent: r.silent === 1,
    verbalized: r.verbalized === 1,
    kind: r.kind as AlertKind,
    tenant: r.tenant,
  };
  if (r.text_excerpt !== null) a.textExcerpt = r.text_excerpt;
  if (r.concept !== null && r.concept !== undefined) a.concept = JSON.parse(r.concept) as AlertConcept | null;
  return a;
}
