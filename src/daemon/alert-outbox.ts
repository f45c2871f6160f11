/**
 * The local outbox of a replica on a shared JetStream stream (nats-alert-store.ts): alerts NATS has
 * not acknowledged wait here, in a SQLite file (better-sqlite3, WAL, synchronous=FULL, so a queued
 * alert survives kill -9 and power loss), oldest first, until they are published.
 *
 * Each row keeps the message id it is (or was) published with (Nats-Msg-Id): a publish whose
 * acknowledgement was lost, republished from here, is dropped by the stream's duplicate window
 * instead of stored twice. A row leaves the outbox only after JetStream acknowledged it; a crash
 * between the acknowledgement and the delete republishes it under the same id (a duplicate the
 * stream drops).
 *
 * One process owns an outbox file (locking_mode EXCLUSIVE): two replicas draining one outbox
 * would publish each alert twice.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { lwError } from '../errors.js';

export interface OutboxEntry {
  /** Position in the outbox (publish order). */
  seq: number;
  /** Nats-Msg-Id: the same on every publish of this alert. */
  msgId: string;
  /** The message body (the alert as JSON, without its id). */
  payload: string;
}

export class AlertOutbox {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly insertStmt: Database.Statement;
  private readonly peekStmt: Database.Statement;
  private readonly deleteStmt: Database.Statement;
  private count: number;
  private closed = false;

  private constructor(db: Database.Database, path: string) {
    this.db = db;
    this.path = path;
    db.exec('CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL, payload TEXT NOT NULL)');
    this.insertStmt = db.prepare('INSERT INTO outbox (msg_id, payload) VALUES (?, ?)');
    this.peekStmt = db.prepare('SELECT seq, msg_id AS msgId, payload FROM outbox ORDER BY seq LIMIT ?');
    this.deleteStmt = db.prepare('DELETE FROM outbox WHERE seq = ?');
    this.count = (db.prepare('SELECT COUNT(*) AS n FROM outbox').get() as { n: number }).n;
  }

  /** Open (creating if needed). Throws LW_ERR_ALERT_OUTBOX_OPEN. */
  static open(path: string): AlertOutbox {
    let db: Database.Database | undefined;
    try {
      if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
      db = new Database(path);
      db.pragma('busy_timeout = 2000');
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      return new AlertOutbox(db, path);
    } catch (e) {
      try {
        db?.close();
      } catch {
        // report the first error
      }
      throw lwError('LW_ERR_ALERT_OUTBOX_OPEN', `${path}: ${(e as Error).message}`, { path }, e);
    }
  }

  /** Queue entries in order, in one transaction (one fsync). Throws the SQLite error on a disk failure. */
  add(entries: readonly { msgId: string; payload: string }[]): void {
    if (entries.length === 0) return;
    this.db.transaction(() => {
      for (const e of entries) this.insertStmt.run(e.msgId, e.payload);
    })();
    this.count += entries.length;
  }

  /** The oldest `limit` entries, in order. */
  peek(limit: number): OutboxEntry[] {
    return this.peekStmt.all(limit) as OutboxEntry[];
  }

  /** Remove published entries, in one transaction. */
  remove(seqs: readonly number[]): void {
    if (seqs.length === 0) return;
    this.db.transaction(() => {
      for (const s of seqs) this.deleteStmt.run(s);
    })();
    this.count -= seqs.length;
  }

  get pending(): number {
    return this.count;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }
}
