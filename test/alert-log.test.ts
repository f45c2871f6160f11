import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertLog, type AlertDraft } from '../src/daemon/alert-log.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = mkdtempSync(join(tmpdir(), 'lw-alertlog-'));
// The child must run our real module under plain node: transpile it (and what it imports) into a
// gitignored folder inside the repo, so that node_modules resolves.
const childDir = join(root, '.cache', `alert-log-child-${process.pid}`);

function draft(i: number, extra: Partial<AlertDraft> = {}): AlertDraft {
  return {
    requestId: `req-${i}`,
    model: 'tiny',
    probeId: i % 2 ? 'probe.a' : 'probe.b',
    probeLabel: 'injected concept',
    severity: i % 3 === 0 ? 'critical' : 'warning',
    score: 0.9,
    threshold: 0.5,
    tokenIndex: i,
    silent: i % 2 === 0,
    verbalized: i % 2 !== 0,
    kind: 'detection',
    ...extra,
  };
}

beforeAll(() => {
  // src/daemon/alert-log.ts and every project module it imports, found by following relative imports.
  const files = new Set<string>();
  const visit = (f: string) => {
    if (files.has(f)) return;
    files.add(f);
    const text = readFileSync(join(root, f), 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*'(\.{1,2}\/[^']+)\.js'/g)) visit(join(dirname(f), `${m[1]}.ts`));
  };
  visit('src/daemon/alert-log.ts');
  for (const f of files) {
    const out = ts.transpileModule(readFileSync(join(root, f), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false },
    }).outputText;
    const dest = join(childDir, f.replace(/\.ts$/, '.js'));
    mkdirSync(dirname(dest), { recursive: true });
    writeFileSync(dest, out);
  }
  writeFileSync(
    join(childDir, 'child.mjs'),
    `import { writeSync } from 'node:fs';
import { AlertLog } from './src/daemon/alert-log.js';
const [path, mode] = process.argv.slice(2);
// 'sync-normal': synchronous=NORMAL (no fsync per append), which must still survive a process kill.
const log = AlertLog.open({ path, pendingLimit: 100000, retryIntervalMs: 1e9, synchronous: mode === 'sync-normal' ? 'normal' : 'full' });
writeSync(1, 'ready\\n');
for (let i = 0; ; i++) {
  // 'fail-after-10': from the 10th alert on the disk refuses writes (a real SQLITE_READONLY).
  if (mode === 'fail-after-10' && i === 10) log.database.pragma('query_only = 1');
  const r = log.append({ requestId: 'r' + i, model: 'tiny', probeId: 'p', probeLabel: 'P', severity: 'warning',
    score: 0.9, threshold: 0.5, tokenIndex: i, silent: true, verbalized: false, kind: 'detection' });
  // An id is printed only once append has returned: durable = acknowledged.
  writeSync(1, (r.durable ? 'ack ' : 'live ') + r.alert.id + '\\n');
  if (i % 20 === 19) await new Promise((res) => setTimeout(res, 1));
}
`,
  );
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(childDir, { recursive: true, force: true });
});

/** Run the child until `stopWhen` holds on the lines it printed, then SIGKILL it. */
function runAndKill(path: string, mode: string, stopWhen: (lines: string[]) => boolean): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(childDir, 'child.mjs'), path, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let buf = '';
    let err = '';
    let killed = false;
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop() ?? '';
      lines.push(...parts);
      if (!killed && stopWhen(lines)) {
        killed = true;
        child.kill('SIGKILL');
      }
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`child exited ${code} ${signal}: ${err}`));
      else resolve(lines.filter((l) => l !== 'ready'));
    });
  });
}

describe('alert log', () => {
  it('appends with increasing ids, filters, pages, and survives a reopen', () => {
    const path = join(dir, 'basic.db');
    let log = AlertLog.open({ path });
    expect(log.database.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(log.database.pragma('synchronous', { simple: true })).toBe(2); // FULL
    const ids = Array.from({ length: 12 }, (_, i) => log.append(draft(i + 1, i === 0 ? { textExcerpt: 'the text so far' } : {})).alert.id);
    expect(ids).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(log.since(0).map((a) => a.id)).toEqual(ids);
    expect(log.since(5, {}, 3).map((a) => a.id)).toEqual([6, 7, 8]);
    expect(log.since(0, { probe: 'probe.a' }).every((a) => a.probeId === 'probe.a')).toBe(true);
    expect(log.since(0, { probe: ['probe.a', 'probe.b'] })).toHaveLength(12);
    expect(log.since(0, { minSeverity: 'critical' }).map((a) => a.id)).toEqual([3, 6, 9, 12]);
    expect(log.since(0, { silentOnly: true }).every((a) => a.silent)).toBe(true);
    expect(log.since(0, { model: 'other' })).toEqual([]);
    expect(log.since(0, { kind: 'canary_failure' })).toEqual([]);
    const first = log.since(0, {}, 1)[0];
    expect(first).toMatchObject({ id: 1, requestId: 'req-1', textExcerpt: 'the text so far', silent: false, verbalized: true, kind: 'detection' });
    expect(typeof first.ts).toBe('string');
    expect(log.since(1, {}, 1)[0].textExcerpt).toBeUndefined();
    expect(() => log.since(-1)).toThrow(expect.objectContaining({ code: 'LW_ERR_ALERT_BAD_QUERY' }));
    expect(log.stats()).toMatchObject({ writes: 12, failures: 0, pending: 0, lastId: 12 });
    expect(log.close()).toBe(0);
    expect(() => log.append(draft(99))).toThrow(expect.objectContaining({ code: 'LW_ERR_ALERT_LOG_CLOSED' }));

    // After a clean close ids continue contiguously.
    log = AlertLog.open({ path });
    expect(log.since(0, {}, 1000).map((a) => a.id)).toEqual(ids);
    expect(log.append(draft(13)).alert.id).toBe(13);
    log.close();
  });

  it('one process owns a log file', () => {
    const path = join(dir, 'owned.db');
    const a = AlertLog.open({ path });
    a.append(draft(1));
    expect(() => AlertLog.open({ path, busyTimeoutMs: 50 })).toThrow(expect.objectContaining({ code: 'LW_ERR_ALERT_LOG_OPEN' }));
    a.close();
    AlertLog.open({ path }).close();
  });

  it("fsyncs every append by default (synchronous=FULL); alertLog.synchronous 'normal' leaves the WAL unsynced per append and still reads back", () => {
    const full = AlertLog.open({ path: join(dir, 'sync-full.db') });
    expect(full.database.pragma('synchronous', { simple: true })).toBe(2); // FULL
    full.close();
    const path = join(dir, 'sync-normal.db');
    const normal = AlertLog.open({ path, synchronous: 'normal' });
    expect(normal.database.pragma('synchronous', { simple: true })).toBe(1); // NORMAL
    expect(normal.database.pragma('journal_mode', { simple: true })).toBe('wal');
    const a = normal.append(draft(1));
    expect(a.durable).toBe(true);
    normal.close();
    const again = AlertLog.open({ path, synchronous: 'normal' });
    expect(again.since(0).map((x) => x.id)).toEqual([a.alert.id]);
    again.close();
  });

  it('applies retention by age and by row count', () => {
    let now = Date.parse('2026-01-10T00:00:00Z');
    const log = AlertLog.open({ path: join(dir, 'retention.db'), retentionDays: 2, retentionRows: 5, now: () => now });
    for (let d = 0; d < 10; d++) log.append(draft(d + 1, { ts: new Date(Date.parse('2026-01-01T00:00:00Z') + d * 86_400_000).toISOString() }));
    // Jan 1..10; now Jan 10: 2 days keeps Jan 8, 9, 10.
    expect(log.prune()).toBe(7);
    expect(log.since(0).map((a) => a.id)).toEqual([8, 9, 10]);
    for (let i = 11; i <= 20; i++) log.append(draft(i));
    expect(log.prune()).toBe(8);
    expect(log.since(0).map((a) => a.id)).toEqual([16, 17, 18, 19, 20]);
    now += 30 * 86_400_000;
    expect(log.prune()).toBe(5);
    expect(log.since(0)).toEqual([]);
    expect(log.append(draft(21)).alert.id).toBe(21); // ids are never reused, even with the table empty
    log.close();
  });

  it('kill -9: every acknowledged alert is there after a restart, and ids are not reused', async () => {
    const path = join(dir, 'kill.db');
    const lines = await runAndKill(path, 'normal', (l) => l.filter((x) => x.startsWith('ack ')).length >= 150);
    const acked = lines.filter((l) => l.startsWith('ack ')).map((l) => Number(l.slice(4)));
    expect(acked.length).toBeGreaterThanOrEqual(150);
    const log = AlertLog.open({ path });
    const stored = new Set(log.since(0, {}, 10_000).map((a) => a.id));
    for (const id of acked) expect(stored.has(id), `acknowledged alert ${id}`).toBe(true);
    const next = log.append(draft(1)).alert.id;
    expect(next).toBeGreaterThan(Math.max(...stored));
    log.close();
  });

  it('kill -9 with synchronous=NORMAL: every acknowledged alert is there after a restart (a process crash loses nothing without the fsync)', async () => {
    const path = join(dir, 'kill-sync-normal.db');
    const lines = await runAndKill(path, 'sync-normal', (l) => l.filter((x) => x.startsWith('ack ')).length >= 300);
    const acked = lines.filter((l) => l.startsWith('ack ')).map((l) => Number(l.slice(4)));
    expect(acked.length).toBeGreaterThanOrEqual(300);
    const log = AlertLog.open({ path, synchronous: 'normal' });
    const stored = new Set(log.since(0, {}, 10_000).map((a) => a.id));
    for (const id of acked) expect(stored.has(id), `acknowledged alert ${id}`).toBe(true);
    log.close();
  });

  it('kill -9 while the disk refuses writes: ids handed out live are never reused', async () => {
    const path = join(dir, 'kill-failing.db');
    const lines = await runAndKill(path, 'fail-after-10', (l) => l.filter((x) => x.startsWith('live ')).length >= 20);
    const acked = lines.filter((l) => l.startsWith('ack ')).map((l) => Number(l.slice(4)));
    const live = lines.filter((l) => l.startsWith('live ')).map((l) => Number(l.slice(5)));
    expect(acked).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(live.length).toBeGreaterThanOrEqual(20);
    const log = AlertLog.open({ path });
    expect(log.since(0, {}, 10_000).map((a) => a.id)).toEqual(acked);
    // A subscriber that saw live id N resumes with last_id=N: the next run's ids must be above it.
    expect(log.append(draft(1)).alert.id).toBeGreaterThan(Math.max(...live));
    log.close();
  });

  it('disk full (SQLITE_FULL via max_page_count): pending in memory, then recovery with no gap and no duplicate', () => {
    const states: string[] = [];
    const log = AlertLog.open({ path: join(dir, 'full.db'), pendingLimit: 1000, retryIntervalMs: 0, onStateChange: (e) => states.push(e.state) });
    for (let i = 1; i <= 3; i++) expect(log.append(draft(i)).durable).toBe(true);
    const pages = log.database.pragma('page_count', { simple: true }) as number;
    log.database.pragma(`max_page_count = ${pages}`);
    const results = Array.from({ length: 30 }, (_, i) => log.append(draft(4 + i, { textExcerpt: 'x'.repeat(1500) })));
    expect(results.map((r) => r.alert.id)).toEqual(Array.from({ length: 30 }, (_, i) => 4 + i));
    expect(results.every((r) => r.retained)).toBe(true);
    const firstFailed = results.findIndex((r) => !r.durable);
    expect(firstFailed, 'some append found the disk full').not.toBe(-1);
    // Once one alert is pending, later ones queue behind it, in order.
    expect(results.slice(firstFailed).every((r) => !r.durable)).toBe(true);
    const stats = log.stats();
    expect(stats.pending).toBe(30 - firstFailed);
    expect(stats.failures).toBeGreaterThan(0);
    expect(stats.lastError).toMatch(/SQLITE_FULL/);
    expect(states).toEqual(['failing']);

    // During the outage, since() serves committed rows then pending ones: the whole sequence.
    const all = Array.from({ length: 33 }, (_, i) => i + 1);
    expect(log.since(0, {}, 1000).map((a) => a.id)).toEqual(all);
    // A poller reads a first page during the outage...
    const page1 = log.since(0, {}, 20);
    expect(page1.map((a) => a.id)).toEqual(all.slice(0, 20));
    const filtered = log.since(0, { minSeverity: 'critical' }, 1000).map((a) => a.id);
    expect(filtered).toEqual(all.filter((i) => i % 3 === 0));

    // ...the disk recovers...
    log.database.pragma('max_page_count = 1073741823');
    expect(log.retryPending()).toBe(30 - firstFailed);
    expect(log.stats().pending).toBe(0);
    expect(states).toEqual(['failing', 'recovered']);
    // ...and resumes from its cursor: exactly the rest, each once.
    const rest = log.since(page1[page1.length - 1].id, {}, 1000).map((a) => a.id);
    expect([...page1.map((a) => a.id), ...rest]).toEqual(all);
    expect(log.append(draft(34)).durable).toBe(true);
    expect(log.stats().writes).toBe(34);
    log.close();
    const reopened = AlertLog.open({ path: join(dir, 'full.db') });
    expect(reopened.since(0, {}, 1000).map((a) => a.id)).toEqual([...all, 34]);
    reopened.close();
  });

  it("appendMany: one token's alerts in one transaction; on a failing disk all wait, in order, and land together", () => {
    const log = AlertLog.open({ path: join(dir, 'many.db'), pendingLimit: 100, retryIntervalMs: 60_000 });
    const writes = log.stats().writes;
    const ok = log.appendMany([draft(1), draft(2), draft(3)]);
    expect(ok.map((r) => [r.alert.id, r.durable])).toEqual([[1, true], [2, true], [3, true]]);
    expect(log.stats().writes).toBe(writes + 3);
    expect(log.appendMany([])).toEqual([]);
    log.database.pragma('query_only = 1');
    const failed = log.appendMany([draft(4), draft(5)]);
    expect(failed.map((r) => [r.alert.id, r.durable, r.retained])).toEqual([[4, false, true], [5, false, true]]);
    expect(log.since(0).map((a) => a.id)).toEqual([1, 2, 3, 4, 5]);
    log.database.pragma('query_only = 0');
    expect(log.retryPending()).toBe(2);
    log.close();
    const reopened = AlertLog.open({ path: join(dir, 'many.db') });
    expect(reopened.since(0).map((a) => a.id)).toEqual([1, 2, 3, 4, 5]);
    reopened.close();
  });

  it('read-only disk (SQLITE_READONLY): bounded pending queue, overflow is live-only and counted', () => {
    const log = AlertLog.open({ path: join(dir, 'ro.db'), pendingLimit: 5, retryIntervalMs: 60_000 });
    log.append(draft(1));
    log.database.pragma('query_only = 1');
    const r = Array.from({ length: 8 }, (_, i) => log.append(draft(2 + i)));
    expect(r.map((x) => x.alert.id)).toEqual([2, 3, 4, 5, 6, 7, 8, 9]);
    expect(r.map((x) => x.retained)).toEqual([true, true, true, true, true, false, false, false]);
    expect(log.stats()).toMatchObject({ pending: 5, dropped: 3 });
    expect(log.stats().lastError).toMatch(/SQLITE_READONLY/);
    // Retries are throttled by retryIntervalMs: appends during the outage do not hammer the disk.
    const failures = log.stats().failures;
    log.append(draft(10));
    expect(log.stats().failures).toBe(failures);
    expect(log.retryPending()).toBe(0);
    expect(log.stats().failures).toBe(failures + 1);
    log.database.pragma('query_only = 0');
    expect(log.retryPending()).toBe(5);
    expect(log.since(0).map((a) => a.id)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(log.append(draft(11)).alert.id).toBe(11);
    log.close();
  });
});
