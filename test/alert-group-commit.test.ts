/**
 * The alert log written by a worker thread with group commit (group-commit-store.ts,
 * alert-log-worker.ts): acknowledged only once durable, in id order; the appends posted during
 * one commit share the next; the same file and ids as the log on the event loop; coded errors;
 * kill -9 of a writing process loses no acknowledged alert.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { AlertLog, type Alert, type AlertDraft } from '../src/daemon/alert-log.js';
import { GroupCommitAlertStore } from '../src/daemon/group-commit-store.js';
import { LatentwatchError } from '../src/errors.js';
import { waitUntil } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = mkdtempSync(join(tmpdir(), 'lw-group-commit-'));
const opened: GroupCommitAlertStore[] = [];

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

async function open(name: string, extra: Partial<Parameters<typeof GroupCommitAlertStore.open>[0]> = {}): Promise<GroupCommitAlertStore> {
  const s = await GroupCommitAlertStore.open({ path: join(dir, name), ...extra });
  opened.push(s);
  return s;
}

async function rejection(p: Promise<unknown>): Promise<LatentwatchError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(LatentwatchError);
    return e as LatentwatchError;
  }
  throw new Error('expected a rejection');
}

afterAll(async () => {
  for (const s of opened) await s.close();
});

describe('GroupCommitAlertStore', () => {
  it('acknowledges durable alerts in id order, reads them back, and leaves a file the event-loop log continues', async () => {
    const path = 'basic.db';
    const store = await open(path);
    const live: number[] = [];
    store.onLive((alerts) => live.push(...alerts.map((a) => a.id)));
    const first = await store.append([draft(1), draft(2)], { forwardAtUs: 5 });
    expect(first.map((r) => [r.alert.id, r.durable, r.retained])).toEqual([
      [1, true, true],
      [2, true, true],
    ]);
    // The live feed got them before the append resolved.
    expect(live).toEqual([1, 2]);
    expect(store.liveThrough).toBe(2);
    await store.append([draft(3, { tenant: 'team-a' })]);
    expect(await store.lastId()).toBe(3);
    const page = await store.since(1, {}, 100);
    expect(page.alerts.map((a) => a.id)).toEqual([2, 3]);
    expect(page.scannedThrough).toBe(3);
    expect((await store.since(0, { tenant: 'team-a' }, 100)).alerts.map((a) => a.requestId)).toEqual(['req-3']);
    expect(store.stats()).toMatchObject({ writes: 3, pending: 0, failures: 0, lastId: 3, lastDurableId: 3 });
    expect(store.health()).toMatchObject({ ok: true, pending: 0 });
    await store.close();
    // Same format and ids: the log on the event loop reads the rows and continues after them.
    const log = AlertLog.open({ path: join(dir, path) });
    try {
      expect(log.since(0).map((a) => [a.id, a.requestId, a.tenant])).toEqual([
        [1, 'req-1', 'anonymous'],
        [2, 'req-2', 'anonymous'],
        [3, 'req-3', 'team-a'],
      ]);
      expect(log.append(draft(4)).alert.id).toBe(4);
    } finally {
      log.close();
    }
    const again = await open(path);
    expect((await again.append([draft(5)]))[0].alert.id).toBe(5);
  });

  it('commits the appends that arrive during a commit together, and answers each in id order', async () => {
    const store = await open('group.db');
    const live: Alert[] = [];
    store.onLive((alerts) => live.push(...alerts));
    const n = 300;
    const resolvedOrder: number[] = [];
    // All posted at once, as concurrent requests' tokens are: the writer takes them in batches.
    const all = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        store.append([draft(i, { requestId: `g-${i}` })]).then((r) => {
          resolvedOrder.push(r[0].alert.id);
          return r[0];
        }),
      ),
    );
    const ids = all.map((r) => r.alert.id);
    // The i-th append posted got the i-th id; answers and the live feed arrive in id order.
    expect(ids).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    expect(all.every((r) => r.durable)).toBe(true);
    expect(resolvedOrder).toEqual(ids);
    expect(live.map((a) => a.id)).toEqual(ids);
    expect(live.map((a) => a.requestId)).toEqual(ids.map((id) => `g-${id - 1}`));
    // Far fewer transactions (fsyncs) than appends.
    const { commits, writes } = store.stats();
    expect(writes).toBe(n);
    expect(commits).toBeGreaterThan(0);
    expect(commits).toBeLessThan(n / 4);
  });

  it('fans a token out before a synchronous task queued after it (a forward pass on the event loop), unless told not to wait', async () => {
    // onnxruntime-node runs a pass synchronously from a setImmediate: queued right after the append,
    // as the decode batcher starts another stream's pass.
    const order = async (store: GroupCommitAlertStore): Promise<string[]> => {
      const seen: string[] = [];
      store.onLive(() => seen.push('live'));
      const stored = store.append([draft(1), draft(2)], { forwardAtUs: 1 });
      setImmediate(() => {
        seen.push('pass');
        const end = performance.now() + 50;
        while (performance.now() < end) {
          // the pass
        }
      });
      expect((await stored).every((r) => r.durable)).toBe(true);
      await new Promise((r) => setTimeout(r, 100)); // both have run
      return seen;
    };
    expect(await order(await open('before-pass.db'))).toEqual(['live', 'pass']);
    expect(await order(await open('after-pass.db', { waitForCommitMs: 0 }))).toEqual(['pass', 'live']);
  });

  it('fans a token out before a pass that was queued before the append (another request\'s prefill already waiting)', async () => {
    // Four requests at once: their prefills are queued (onnxruntime-node: one setImmediate each)
    // while the first request's pass runs; its alerts are appended in that pass's continuation.
    // Waiting in the loop's next turn (a setImmediate) came after every queued prefill: 198 ms at
    // p99 on the 16-core host (docs/reports/bench/daemon-latency-h200host.md, 4 at a time).
    const store = await open('before-queued-pass.db');
    const seen: string[] = [];
    store.onLive(() => seen.push('live'));
    let stored: Promise<unknown> | undefined;
    setImmediate(() => {
      // The first request's pass returned: its continuation (a promise) appends the alerts.
      void Promise.resolve().then(() => {
        stored = store.append([draft(1), draft(2)], { forwardAtUs: 1 });
      });
    });
    setImmediate(() => {
      seen.push('pass');
      const end = performance.now() + 50;
      while (performance.now() < end) {
        // the next request's prefill
      }
    });
    await new Promise((r) => setTimeout(r, 150));
    await stored;
    expect(seen).toEqual(['live', 'pass']);
  });

  it('refuses a bad draft alone, with its coded error; the others of the same batch are stored', async () => {
    const store = await open('refuse.db');
    const good = store.append([draft(1)]);
    const bad = store.append([draft(2, { severity: 'loud' as never })]);
    const after = store.append([draft(3)]);
    expect((await rejection(bad)).code).toBe('LW_ERR_ALERT_BAD_QUERY');
    expect((await good)[0].alert.id).toBe(1);
    expect((await after)[0].alert.id).toBe(2);
    expect((await store.since(0, {}, 10)).alerts.map((a) => a.requestId)).toEqual(['req-1', 'req-3']);
    expect((await rejection(store.since(-1, {}, 10))).code).toBe('LW_ERR_ALERT_BAD_QUERY');
    expect((await rejection(store.since(0, {}, 0))).code).toBe('LW_ERR_ALERT_BAD_QUERY');
  });

  it('fails to open with LW_ERR_ALERT_LOG_OPEN (a file another process holds, a path under a file) and refuses calls after close', async () => {
    const holder = await open('held.db');
    const second = await rejection(GroupCommitAlertStore.open({ path: join(dir, 'held.db'), busyTimeoutMs: 50 }));
    expect(second.code).toBe('LW_ERR_ALERT_LOG_OPEN');
    writeFileSync(join(dir, 'plain-file'), 'x');
    expect((await rejection(GroupCommitAlertStore.open({ path: join(dir, 'plain-file', 'alerts.db') }))).code).toBe('LW_ERR_ALERT_LOG_OPEN');
    await holder.append([draft(1)]);
    await holder.close();
    expect((await rejection(holder.append([draft(2)]))).code).toBe('LW_ERR_ALERT_LOG_CLOSED');
    expect((await rejection(holder.since(0, {}, 10))).code).toBe('LW_ERR_ALERT_LOG_CLOSED');
    // Closed cleanly: the next run continues the ids.
    const reopened = await open('held.db');
    expect((await reopened.append([draft(3)]))[0].alert.id).toBe(2);
  });

  it('kill -9 of a process writing without pause loses no acknowledged alert', async () => {
    const path = join(dir, 'killed.db');
    const script = join(dir, 'writer.mts');
    // Appends without pause (several in flight, as concurrent streams post them) and prints each
    // id once its append resolved: what a subscriber or a verdict would have seen.
    writeFileSync(
      script,
      `import { writeSync } from 'node:fs';
import { GroupCommitAlertStore } from ${JSON.stringify(pathToFileURL(join(root, 'src/daemon/group-commit-store.ts')).href)};
const store = await GroupCommitAlertStore.open({ path: ${JSON.stringify(path)} });
writeSync(1, 'ready\\n');
const d = (i) => ({ requestId: 'k-' + i, model: 'tiny', probeId: 'p', probeLabel: 'l', severity: 'warning', score: 1, threshold: 0.5, tokenIndex: i, silent: false, verbalized: false, kind: 'detection' });
let i = 0;
const loop = async () => { for (;;) { const r = await store.append([d(i++), d(i++)]); writeSync(1, r.map((x) => x.alert.id).join(' ') + '\\n'); } };
for (let k = 0; k < 8; k++) void loop();
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += String(b)));
    child.stderr.on('data', (b: Buffer) => (err += String(b)));
    const acked = () => out.split('\n').slice(1, -1).flatMap((l) => l.split(' ').map(Number));
    await waitUntil(() => acked().length >= 400, { timeoutMs: 60_000, what: 'the writer to acknowledge 400 alerts', detail: () => err.slice(-2000) });
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const seen = acked(); // everything it printed before it died
    expect(seen.length).toBeGreaterThanOrEqual(400);
    const log = AlertLog.open({ path });
    try {
      const stored = new Set(log.since(0, {}, 10_000).map((a) => a.id));
      const missing = seen.filter((id) => !stored.has(id));
      expect(missing).toEqual([]);
    } finally {
      log.close();
    }
  }, 90_000);
});
