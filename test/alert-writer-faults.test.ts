/**
 * Faults of the group-commit alert log (group-commit-store.ts, alert-log-worker.ts), caused for
 * real: the writer thread terminated in the middle of bursts of appends (as a crash in it would end
 * it), and a disk that refuses writes (the writer's process gets RLIMIT_FSIZE 0 through prlimit(1):
 * every write to a file fails with EFBIG, which SQLite reports as SQLITE_IOERR_WRITE, as on a full
 * or failing disk). What must hold: no alert acknowledged durable is lost, none is acknowledged
 * durable that was not committed, none is stored twice; callers waiting on a commit get their
 * result (after a retry) or a coded error; the store restarts its writer, counts and reports it, or
 * fails loudly; and the daemon logs it and exports it.
 */
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scrape, subscribe } from '../bench/lib/clients.js';
import { AlertLog, type AlertDraft, type AppendResult } from '../src/daemon/alert-log.js';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon, type Daemon } from '../src/daemon/daemon.js';
import { GroupCommitAlertStore, type WriterEvent } from '../src/daemon/group-commit-store.js';
import { LatentwatchError } from '../src/errors.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { CODE16M, tempDir, waitUntil } from './helpers.js';

const dir = tempDir('lw-writer-faults-');

function draft(i: number, extra: Partial<AlertDraft> = {}): AlertDraft {
  return { requestId: `req-${i}`, model: 'tiny', probeId: 'probe.a', probeLabel: 'injected concept', severity: 'warning', score: 0.9, threshold: 0.5, tokenIndex: i, silent: true, verbalized: false, kind: 'detection', ...extra };
}

/** Every row of a closed log file, in id order. */
function storedRows(path: string): { id: number; requestId: string }[] {
  const log = AlertLog.open({ path });
  try {
    return log.since(0, {}, 10_000).map((a) => ({ id: a.id, requestId: a.requestId }));
  } finally {
    log.close();
  }
}

describe('group-commit writer thread killed', () => {
  it('during bursts: every append is acknowledged durable once, from the log (committed before the death) or by a retry; nothing lost, nothing twice', async () => {
    const seen = { recovered: 0, retried: 0 };
    // Where the kill lands is up to the scheduler. A terminate() takes effect when the thread next
    // runs JavaScript: issued during a commit's fsync, it stops the writer after the commit and
    // before its answer; issued before the writer took the batch, nothing was committed. The delay
    // after posting varies by round, until both ways of settling were seen.
    const delaysMs = [0, 1, 2, 3, 0.5, 4, 6, 1.5, 8, 2.5, 5, 10];
    for (let round = 0; round < 24 && (seen.recovered === 0 || seen.retried === 0); round++) {
      const path = join(dir, `killed-${round}.db`);
      const events: WriterEvent[] = [];
      const store = await GroupCommitAlertStore.open({ path, onWriterEvent: (e) => events.push(e) });
      const live: number[] = [];
      store.onLive((alerts) => live.push(...alerts.map((a) => a.id)));
      const n = 300;
      // Some answered before the burst, so the writer is warm and the log not empty.
      for (let i = 0; i < 5; i++) await store.append([draft(-1 - i)]);
      const appends = Array.from({ length: n }, (_, i) => store.append([draft(2 * i), draft(2 * i + 1)]));
      const until = performance.now() + delaysMs[round % delaysMs.length];
      while (performance.now() < until) {
        // busy: a timer's resolution is a millisecond at best
      }
      const first = store.writerThread;
      await first.terminate();
      const results: AppendResult[][] = await Promise.all(appends);
      await waitUntil(() => store.writerThread !== first, { timeoutMs: 30_000, what: 'a new writer' });
      const ids = results.flatMap((r) => r.map((x) => x.alert.id));
      // Each append answered, durable, its alerts in posting order with increasing ids.
      expect(results.every((r) => r.length === 2 && r.every((x) => x.durable && x.retained))).toBe(true);
      ids.unshift(...Array.from({ length: 5 }, (_, i) => i + 1));
      expect(ids.every((id, i) => i === 0 || id > ids[i - 1])).toBe(true);
      // The live feed carried exactly the acknowledged alerts, in id order.
      expect(live).toEqual(ids);
      expect(ids.slice(0, 5)).toEqual([1, 2, 3, 4, 5]);
      // Later appends go to the new writer.
      const after = await store.append([draft(9999)]);
      expect(after[0].durable).toBe(true);
      const stats = store.stats();
      await store.close();
      const rows = storedRows(path);
      // The file holds every acknowledged alert, each draft once (a retry never duplicated a committed one).
      expect(rows.map((r) => r.id)).toEqual([...ids, after[0].alert.id]);
      expect(new Set(rows.map((r) => r.requestId)).size).toBe(rows.length);
      expect(stats.writes).toBe(5 + 2 * n + 1);
      // Every death restarts the writer, whether or not something was left unanswered.
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ state: 'restarted', restarts: 1, lostPending: 0 });
      expect(events[0].error).toMatch(/exited/);
      expect(events[0].recovered + events[0].retried).toBe(events[0].unanswered);
      expect(stats.restarts).toBe(1);
      seen.recovered += events[0].recovered;
      seen.retried += events[0].retried;
    }
    expect(seen.recovered).toBeGreaterThan(0);
    expect(seen.retried).toBeGreaterThan(0);
  }, 240_000);

  it('dying again and again: after maxRestarts within the window the store fails loudly with LW_ERR_ALERT_LOG_CLOSED and shows it', async () => {
    const events: WriterEvent[] = [];
    const store = await GroupCommitAlertStore.open({ path: join(dir, 'failing.db'), maxRestarts: 1, restartWindowMs: 60_000, onWriterEvent: (e) => events.push(e) });
    expect((await store.append([draft(1)]))[0].durable).toBe(true);
    await store.writerThread.terminate();
    await waitUntil(() => events.length === 1, { timeoutMs: 30_000, what: 'the first restart' });
    expect(events[0]).toMatchObject({ state: 'restarted', restarts: 1 });
    expect((await store.append([draft(2)]))[0].durable).toBe(true);
    const waiting = store.append([draft(3)]);
    await store.writerThread.terminate();
    const e = await waiting.then(
      () => null,
      (x: unknown) => x,
    );
    // Not acknowledged: either answered before the death (then it is durable) or refused with a code.
    if (e !== null) {
      expect(e).toBeInstanceOf(LatentwatchError);
      expect((e as LatentwatchError).code).toBe('LW_ERR_ALERT_LOG_CLOSED');
    }
    await waitUntil(() => events.length === 2, { timeoutMs: 10_000, what: 'the failure event' });
    expect(events[1]).toMatchObject({ state: 'failed', retried: 0 });
    const refused = await store.append([draft(4)]).catch((x: unknown) => x);
    expect(refused).toBeInstanceOf(LatentwatchError);
    expect((refused as LatentwatchError).code).toBe('LW_ERR_ALERT_LOG_CLOSED');
    expect(store.health()).toMatchObject({ ok: false, restarts: 1 });
    expect(String(store.health().last_error)).toMatch(/not restarted/);
    await store.close();
  }, 60_000);
});

describe('group-commit writer on a disk that refuses writes (RLIMIT_FSIZE 0 on its process)', () => {
  it('acknowledges nothing durable while writes fail, shows it, and writes every held alert once when the disk takes writes again', async () => {
    const path = join(dir, 'fsize.db');
    const script = join(dir, 'holder.mts');
    // A process holding the store and taking commands on stdin: the limit applies to a whole process.
    writeFileSync(
      script,
      `import { createInterface } from 'node:readline';
import { GroupCommitAlertStore } from ${JSON.stringify(pathToFileURL(join(process.cwd(), 'src/daemon/group-commit-store.ts')).href)};
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const store = await GroupCommitAlertStore.open({ path: ${JSON.stringify(path)}, maintenanceIntervalMs: 100, retryIntervalMs: 50, onStateChange: (event) => out({ event }) });
store.onCommit((c) => out({ commit: c }));
out({ ready: process.pid });
const d = (i) => ({ requestId: 'r-' + i, model: 'm', probeId: 'p', probeLabel: 'l', severity: 'warning', score: 1, threshold: 0.5, tokenIndex: i, silent: false, verbalized: false, kind: 'detection', textExcerpt: 'x'.repeat(300) });
for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, arg] = line.split(' ');
  if (cmd === 'append') out({ appended: (await store.append([d(Number(arg)), d(Number(arg) + 0.5)])).map((r) => [r.alert.id, r.durable]) });
  if (cmd === 'stats') out({ stats: store.stats(), health: store.health() });
  if (cmd === 'close') { await store.close(); out({ closed: true }); process.exit(0); }
}
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: process.cwd(), stdio: ['pipe', 'pipe', 'pipe'] });
    const messages: Record<string, unknown>[] = [];
    let partial = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => {
      partial += String(b);
      for (let i = partial.indexOf('\n'); i >= 0; i = partial.indexOf('\n')) {
        messages.push(JSON.parse(partial.slice(0, i)) as Record<string, unknown>);
        partial = partial.slice(i + 1);
      }
    });
    child.stderr.on('data', (b: Buffer) => (err += String(b)));
    const message = async (key: string): Promise<Record<string, unknown>> => {
      await waitUntil(() => messages.some((m) => key in m), { timeoutMs: 30_000, what: `the holder's ${key}`, detail: () => err.slice(-2000) });
      return messages.splice(messages.findIndex((m) => key in m), 1)[0];
    };
    const next = async <T,>(key: string): Promise<T> => (await message(key))[key] as T;
    type Stats = { stats: { pending: number; failures: number; commits: number }; health: { ok: boolean; last_error: string | null } };
    const stats = async () => {
      send('stats');
      return (await message('stats')) as Stats;
    };
    const send = (line: string) => child.stdin.write(`${line}\n`);
    const append = async (i: number) => {
      send(`append ${i}`);
      return next<[number, boolean][]>('appended');
    };
    try {
      const pid = await next<number>('ready');
      const answers: [number, boolean][] = [];
      for (let i = 0; i < 5; i++) answers.push(...(await append(i)));
      expect(answers.every(([, durable]) => durable)).toBe(true);
      const commitsBefore = (await stats()).stats.commits;

      execFileSync('prlimit', ['--pid', String(pid), '--fsize=0:unlimited']);
      const during: [number, boolean][] = [];
      for (let i = 10; i < 30; i++) during.push(...(await append(i)));
      // Never acknowledged durable while the disk refuses writes; still answered (live delivery goes on).
      expect(during.every(([, durable]) => !durable)).toBe(true);
      const failing = await next<{ state: string; error: string }>('event');
      expect(failing.state).toBe('failing');
      expect(failing.error).toMatch(/SQLITE_IOERR|SQLITE_FULL/);
      const { stats: outage, health } = await stats();
      expect(outage.pending).toBe(during.length);
      expect(outage.failures).toBeGreaterThan(0);
      expect(outage.commits).toBe(commitsBefore); // a refused batch is no commit
      expect(health.ok).toBe(false);
      expect(health.last_error).toMatch(/SQLITE_IOERR|SQLITE_FULL/);

      execFileSync('prlimit', ['--pid', String(pid), '--fsize=unlimited:unlimited']);
      // The writer's maintenance writes the held alerts without new traffic, and health sees it.
      expect(await next<{ state: string }>('event')).toMatchObject({ state: 'recovered' });
      await waitUntil(
        async () => {
          const s = await stats();
          return s.stats.pending === 0 && s.health.ok && s.health.last_error === null;
        },
        { timeoutMs: 10_000, what: 'health to show the recovery' },
      );
      const after = await append(100);
      expect(after.every(([, durable]) => durable)).toBe(true);
      send('close');
      await next('closed');
      const rows = storedRows(path);
      const acked = [...answers, ...during, ...after].map(([id]) => id);
      expect(rows.map((r) => r.id)).toEqual(acked);
      expect(new Set(rows.map((r) => r.requestId)).size).toBe(rows.length);
    } finally {
      child.kill('SIGKILL');
    }
  }, 90_000);
});

describe('daemon with the writer killed while it serves', () => {
  let probe: TestProbe;
  let d: Daemon;
  const logLines: string[] = [];
  beforeAll(async () => {
    probe = await trainTestProbe();
    const { config } = loadConfig({
      env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1', LATENTWATCH_ALERT_LOG_WAIT_FOR_COMMIT_MS: '30' },
      argv: ['--model', CODE16M, '--port', '0', '--log-level', 'info', '--alert-log', join(dir, 'daemon.db'), '--probe', probe.path],
    });
    d = await startDaemon(config, [], { logStream: { write: (s: string) => (logLines.push(s), true) } });
  }, 120_000);
  afterAll(async () => {
    await d?.close();
  });

  async function injected(i: number): Promise<number[]> {
    const r = await fetch(`${d.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
      body: JSON.stringify({ model: 'qwen2-code-16m', prompt: `def f${i}(x):\n`, max_tokens: 3, temperature: 0, latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window: 'generation' } } }),
    });
    expect(r.status).toBe(200);
    return ((await r.json()) as { latentwatch: { probes: { alert_ids: number[] }[] } }).latentwatch.probes[0].alert_ids;
  }

  it('verdicts and subscribers get every alert, the restart is logged (no key) and exported, /readyz stays ready', async () => {
    const store = d.store as GroupCommitAlertStore;
    expect(store).toBeInstanceOf(GroupCommitAlertStore);
    expect(store.waitForCommitMs).toBe(30); // alertLog.waitForCommitMs reaches the store
    const sub = subscribe(d.url, { key: ADMIN_KEY });
    await sub.opened;
    const acked: number[] = [];
    acked.push(...(await injected(0)));
    // Requests in flight while the writer dies.
    const running = Promise.all([1, 2, 3, 4].map((i) => injected(i)));
    await store.writerThread.terminate();
    for (const ids of await running) acked.push(...ids);
    acked.push(...(await injected(5)));
    expect(acked.length).toBeGreaterThan(0);
    const sorted = [...acked].sort((a, b) => a - b);
    await waitUntil(() => sub.alerts.length >= acked.length, { timeoutMs: 10_000, what: 'every acknowledged alert live', detail: () => `${sub.alerts.length} of ${acked.length}` });
    expect(sub.alerts.map((a) => a.id)).toEqual(sorted);
    expect(store.stats().restarts).toBe(1);
    expect(await scrape(d.url, 'latentwatch_alert_log_writer_restarts_total')).toBe(1);
    expect(await scrape(d.url, 'latentwatch_alert_log_commits_total')).toBeGreaterThan(0);
    expect(await scrape(d.url, 'latentwatch_alert_log_commit_alerts_count')).toBe(await scrape(d.url, 'latentwatch_alert_log_commits_total'));
    const ready = (await (await fetch(`${d.url}/readyz`)).json()) as { status: string; alert_log: { ok: boolean; restarts: number } };
    expect(ready.status).toBe('ready');
    expect(ready.alert_log).toMatchObject({ ok: true, restarts: 1 });
    const restartLine = logLines.find((l) => l.includes('alert log writer died and was restarted'));
    expect(restartLine).toBeDefined();
    expect(JSON.parse(restartLine!)).toMatchObject({ level: 50, restarts: 1 });
    for (const l of logLines) {
      expect(l).not.toContain(ADMIN_KEY);
      expect(l).not.toContain(API_KEY);
    }
    sub.ws.close();
    await d.close();
    const stored = storedRows(join(dir, 'daemon.db')).map((r) => r.id);
    for (const id of acked) expect(stored).toContain(id);
  }, 120_000);
});
