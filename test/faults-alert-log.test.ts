/**
 * The alert log's disk fails while the daemon runs: full (SQLITE_FULL, `PRAGMA max_page_count`
 * held at the current size) or read-only (SQLITE_READONLY, `PRAGMA query_only`), both set on the
 * daemon's own SQLite connection, so the real write path fails as it would on a real disk. During
 * the outage live subscribers still get every alert, the failure is counted
 * (latentwatch_alert_log_failures_total, latentwatch_alert_log_pending) and shown by /readyz; once
 * the disk recovers, every alert a client was told about (verdict alert_ids, WebSocket) is in the
 * SQLite file, once, when a separate connection opens it after shutdown.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../src/daemon/daemon.js';
import { scrape, subscribe } from '../bench/lib/clients.js';
import { ADMIN_KEY, INJECT_LAYER, startTestDaemon, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { tempDir, waitUntil } from './helpers.js';

const MODEL = 'qwen2-code-16m';
let probe: TestProbe;

beforeAll(async () => {
  probe = await trainTestProbe();
});

/** One admin-injected request; returns the alert ids its verdict acknowledges. */
async function injected(d: Daemon, i: number): Promise<number[]> {
  const r = await fetch(`${d.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
    body: JSON.stringify({ model: MODEL, prompt: `def f${i}(x):\n`, max_tokens: 3, temperature: 0, latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window: 'generation' } } }),
  });
  expect(r.status).toBe(200);
  const ids = ((await r.json()) as { latentwatch: { probes: { alert_ids: number[] }[] } }).latentwatch.probes[0].alert_ids;
  expect(ids.length).toBeGreaterThan(0);
  return ids;
}

const readyz = async (d: Daemon) => (await (await fetch(`${d.url}/readyz`)).json()) as { status: string; alert_log: { ok: boolean; pending: number; failures: number; last_error: string | null } };

const MODES = [
  { name: 'full disk (SQLITE_FULL)', error: /SQLITE_FULL/, fail: (db: Database.Database) => db.pragma(`max_page_count = ${db.pragma('page_count', { simple: true }) as number}`), heal: (db: Database.Database) => db.pragma('max_page_count = 1073741823') },
  { name: 'read-only disk (SQLITE_READONLY)', error: /SQLITE_READONLY/, fail: (db: Database.Database) => db.pragma('query_only = 1'), heal: (db: Database.Database) => db.pragma('query_only = 0') },
];

describe('alert log on a failing disk while the daemon serves', () => {
  for (const mode of MODES) {
    describe(mode.name, () => {
      let d: Daemon;
      let path: string;
      beforeAll(async () => {
        const dir = tempDir('lw-faultlog-');
        path = join(dir, 'alerts.db');
        const cfg = join(dir, 'config.json');
        // Retry pending alerts often (default: every 60 s). The fault is set on the connection of the
        // log written on the event loop (d.log); the group-commit writer runs the same AlertLog code.
        writeFileSync(cfg, JSON.stringify({ alertLog: { maintenanceIntervalSeconds: 0.2, groupCommit: false } }));
        d = await startTestDaemon(probe, ['--alert-log', path], { LATENTWATCH_CONFIG: cfg });
      });
      afterAll(async () => {
        await d?.close();
      });

      it('subscribers get every alert live, the failure is counted and shown, and nothing acknowledged is lost', async () => {
        const sub = subscribe(d.url, { key: ADMIN_KEY }); // the admin key reads every tenant's alerts (injection runs as admin)
        await sub.opened;
        const acked: number[] = [];
        acked.push(...(await injected(d, 0)));
        expect(d.log!.stats()).toMatchObject({ pending: 0, failures: 0 });
        expect((await readyz(d)).alert_log).toMatchObject({ ok: true, pending: 0 });

        mode.fail(d.log!.database);
        // A full disk still takes rows while the last page has room: raise alerts until writes fail,
        // then a few more during the outage.
        for (let i = 1; i <= 60 && d.log!.stats().failures === 0; i++) acked.push(...(await injected(d, i)));
        expect(d.log!.stats().failures).toBeGreaterThan(0);
        for (let i = 0; i < 5; i++) acked.push(...(await injected(d, 100 + i)));

        const pending = d.log!.stats().pending;
        expect(pending).toBeGreaterThanOrEqual(5);
        // Live delivery did not wait for the disk.
        await waitUntil(() => sub.alerts.length >= acked.length, { timeoutMs: 5000, what: `the subscriber to receive all ${acked.length} acknowledged alerts live`, detail: () => `received ${sub.alerts.length}` });
        expect(sub.alerts.map((a) => a.id)).toEqual(acked);
        // Counted and surfaced.
        expect(await scrape(d.url, 'latentwatch_alert_log_failures_total')).toBeGreaterThan(0);
        expect(await scrape(d.url, 'latentwatch_alert_log_pending')).toBe(pending);
        const r = await readyz(d);
        expect(r.status).toBe('ready'); // alerts still flow: the daemon stays ready
        expect(r.alert_log.ok).toBe(false);
        expect(r.alert_log.pending).toBe(pending);
        expect(r.alert_log.last_error).toMatch(mode.error);
        // Pollers see pending alerts too.
        const polled = (await (await fetch(`${d.url}/v1/alerts?since=0&limit=1000`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json()) as { data: { id: number }[] };
        expect(polled.data.map((a) => a.id)).toEqual(acked);

        // The disk recovers: the maintenance timer writes the pending alerts without new traffic.
        mode.heal(d.log!.database);
        await waitUntil(() => d.log!.stats().pending === 0, { timeoutMs: 5000, what: 'the maintenance timer to write the pending alerts', detail: () => JSON.stringify(d.log!.stats()) });
        expect((await readyz(d)).alert_log).toMatchObject({ ok: true, pending: 0, last_error: null });
        expect(await scrape(d.url, 'latentwatch_alert_log_pending')).toBe(0);
        acked.push(...(await injected(d, 200)));
        sub.ws.close();

        // After shutdown another connection reads the file: every acknowledged alert, once, in order.
        await d.close();
        const db = new Database(path, { readonly: true });
        const stored = (db.prepare('SELECT id FROM alerts ORDER BY id').all() as { id: number }[]).map((x) => x.id);
        db.close();
        expect(stored).toEqual(acked);
      });
    });
  }
});
