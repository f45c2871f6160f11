/**
 * The durable alert path alone, stage by stage: where an alert's time goes between the moment a
 * token's alerts are handed to the store and their receipt by 100 WebSocket subscribers, without a
 * model (bench/daemon.ts measures the whole daemon, forward pass and scoring included).
 *
 *   npx tsx bench/alert-path.ts [--tokens N] [--alerts K] [--interval-ms MS] [--subscribers S] [--rounds R] [--forward-ms F]
 *       [--queued-passes Q] [--stores a,b]
 *   (defaults: 50 tokens, 16 alerts, 200 ms apart — one burst per injected request, as in bench/daemon.ts — 100 subscribers, 2 rounds, F 40)
 *       [--out FILE.json] [--md FILE.md]
 *
 * In this process: the alert store (each of, or those --stores names: groupFull = SQLite FULL with
 * the group-commit worker, inlineFull = FULL on the event loop, poolSync = NORMAL on the event loop
 * with fdatasync of the WAL on the libuv pool (lib/pool-sync-store.ts, a candidate), groupNormal =
 * NORMAL with the worker, memory), the daemon's AlertHub on an HTTP server on
 * loopback, and S subscribers (`ws` clients) on 4 worker threads (lib/subscriber-fleet.ts, as
 * bench/daemon.ts). A producer appends one token's K alerts every MS milliseconds (the pace of a
 * decode loop), each with forwardAtUs = the time of the append call. Stages, per token:
 *   - commit: append call → the store's live feed hands the alerts over on the event loop (the
 *     worker round trip and the transaction's fsync; on the event loop, the synchronous write);
 *   - fan-out: → the hub has written every subscriber's frames to its socket (JSON and framing once
 *     per alert, one write per subscriber);
 *   - receipt: append call → each subscriber's receipt (wall clocks of both threads aligned,
 *     lib/clients.ts wallOffsetUs); "last subscriber": the last of the S receipts of an alert.
 * With --forward-ms F (default 40; 0: off) the stores run again with F ms of synchronous work
 * started on the event loop right after each append, from a setImmediate: what the daemon's event
 * loop does when the decode batcher starts another stream's forward pass (onnxruntime-node runs a
 * session synchronously, node_modules/onnxruntime-node/dist/backend.js `run`). An answer from the
 * writer thread that arrives meanwhile waits for the pass; a synchronous store fans out before it.
 * With --queued-passes Q (default 0: off) they run a third time with Q such passes already queued
 * when the append is made from the continuation of an earlier immediate: several requests at once,
 * the others' prefills waiting (groupFullNoWait: the worker's answer taken as a message, which is
 * where a wait in the loop's next turn also landed).
 * Rounds alternate the stores' order (ABBA...), so the machine's load falls on each alike.
 * Then the fan-out's own synchronous cost, three ways, interleaved (fanOutStrategies): the ratio
 * holds on a loaded machine where the wall-clock stages above do not.
 */
import { createServer, type Server } from 'node:http';
import { createServer as createTcpServer, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AlertHub, textFrame } from '../src/daemon/alert-hub.js';
import { AlertLog, type AlertDraft } from '../src/daemon/alert-log.js';
import { SqliteAlertStore, type AlertStore } from '../src/daemon/alert-store.js';
import { Authenticator } from '../src/daemon/auth.js';
import { GroupCommitAlertStore } from '../src/daemon/group-commit-store.js';
import { nowUs, processWallOffsetUs, receiptLatencyMs } from './lib/clients.js';
import { measureDiskFlush, type DiskFlush } from './lib/disk-flush.js';
import { PoolSyncAlertStore } from './lib/pool-sync-store.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult } from './lib/report.js';
import { quantile, round } from './lib/stats.js';
import { startSubscriberFleet } from './lib/subscriber-fleet.js';

type StoreName = 'groupFull' | 'groupFullNoWait' | 'inlineFull' | 'poolSync' | 'groupNormal' | 'memory';
const STORES: { name: StoreName; label: string }[] = [
  { name: 'groupFull', label: 'SQLite FULL, group-commit worker (default)' },
  { name: 'groupFullNoWait', label: 'SQLite FULL, group-commit worker, waitForCommitMs 0 (the answer as a message)' },
  { name: 'inlineFull', label: 'SQLite FULL, on the event loop' },
  { name: 'poolSync', label: 'SQLite NORMAL on the event loop + fdatasync of the WAL on the libuv pool (candidate)' },
  { name: 'groupNormal', label: 'SQLite NORMAL, group-commit worker' },
  { name: 'memory', label: 'in memory' },
];

export interface StageStats {
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface StoreResult {
  store: StoreName;
  label: string;
  /** Milliseconds of synchronous work started on the event loop right after each append (0: none). */
  forwardMs: number;
  /** Passes of forwardMs already queued (setImmediate) when the append is made (0: the pass comes after it). */
  queuedPasses: number;
  tokens: number;
  receipts: number;
  commit: StageStats;
  fanOut: StageStats;
  receipt: StageStats;
  lastSubscriber: StageStats;
  firstSubscriber: StageStats;
}

/** One way of writing a token's alerts to every subscriber: the event loop's synchronous time per token. */
export interface FanOutStrategy {
  name: string;
  label: string;
  p50Ms: number;
  p99Ms: number;
}

export interface AlertPathBench {
  machine: MachineDescription;
  /** `uptime`'s load averages when the run started and ended. */
  loadAverage: { start: number[]; end: number[] };
  diskFlush: DiskFlush;
  config: { tokens: number; alertsPerToken: number; intervalMs: number; subscribers: number; rounds: number; forwardMs: number; queuedPasses?: number; stores?: StoreName[] };
  results: StoreResult[];
  /** The fan-out's own cost, three ways, interleaved in one run (fanOutStrategies). */
  fanOut: { subscribers: number; alertsPerToken: number; tokens: number; strategies: FanOutStrategy[]; perFrameOverJoined: number; perSubscriberJsonOverJoined: number };
}

const stats = (xs: readonly number[]): StageStats => ({ p50Ms: round(quantile(xs, 0.5), 3), p90Ms: round(quantile(xs, 0.9), 3), p99Ms: round(quantile(xs, 0.99), 3), maxMs: round(xs.reduce((m, x) => Math.max(m, x), -Infinity), 3) });

async function openStore(name: StoreName, dir: string): Promise<AlertStore> {
  const path = join(dir, `${name}.db`);
  if (name === 'groupFull') return GroupCommitAlertStore.open({ path, synchronous: 'full' });
  if (name === 'groupFullNoWait') return GroupCommitAlertStore.open({ path, synchronous: 'full', waitForCommitMs: 0 });
  if (name === 'groupNormal') return GroupCommitAlertStore.open({ path, synchronous: 'normal' });
  if (name === 'inlineFull') return new SqliteAlertStore(AlertLog.open({ path, synchronous: 'full' }));
  if (name === 'poolSync') return new PoolSyncAlertStore(path);
  return new SqliteAlertStore(AlertLog.open({ path: ':memory:' }));
}

function drafts(token: number, k: number): AlertDraft[] {
  return Array.from({ length: k }, (_, i) => ({
    requestId: `chatcmpl-bench-${token}`,
    model: 'qwen2.5-0.5b-random',
    probeId: `bench-L${4 + i}`,
    probeLabel: 'random direction (bench)',
    severity: 'warning',
    score: 3.25 + i / 100,
    threshold: 1.5,
    tokenIndex: 12 + token,
    silent: true,
    verbalized: false,
    kind: 'detection',
    textExcerpt: 'def parse_config(path):\n    with open(path) as f:',
    concept: null,
    tenant: 'anonymous',
  }));
}

interface Samples {
  commit: number[];
  fanOut: number[];
  receipt: number[];
  last: number[];
  first: number[];
  tokens: number;
}

async function runStore(name: StoreName, dir: string, o: AlertPathBench['config'], forwardMs: number, queuedPasses: number, into: Samples): Promise<void> {
  const store = await openStore(name, dir);
  // Registered before the hub's: called when the feed hands a token's alerts over, before the fan-out.
  const handedAt = new Map<number, number>();
  store.onLive((alerts) => handedAt.set(alerts[0].id, nowUs()));
  const hub = new AlertHub({ store, auth: new Authenticator({ apiKeys: [], adminKey: null }), bufferLimitBytes: 8 * 1024 * 1024, maxQueuedMessages: 100_000, heartbeatIntervalMs: 60_000 });
  // Registered after the hub's: called once every subscriber's frames were written.
  const writtenAt = new Map<number, number>();
  store.onLive((alerts) => writtenAt.set(alerts[0].id, nowUs()));
  const server: Server = createServer((_req, res) => res.writeHead(404).end());
  hub.attach(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const fleet = await startSubscriberFleet(`http://127.0.0.1:${port}`, o.subscribers, { workers: 4 });
  while (hub.subscriberCount < o.subscribers) await new Promise((r) => setTimeout(r, 10));
  const postedAt = new Map<number, number>();
  const writes: Promise<unknown>[] = [];
  for (let t = 0; t < o.tokens; t++) {
    const pass = () => {
      const end = performance.now() + forwardMs;
      while (performance.now() < end) {
        // the pass
      }
    };
    const append = () => {
      const at = nowUs();
      writes.push(store.append(drafts(t, o.alertsPerToken), { forwardAtUs: at }).then((r) => postedAt.set(r[0].alert.id, at)));
    };
    if (queuedPasses > 0) {
      // Several requests at once: this request's pass just returned (an immediate) and appends in its
      // continuation, while the other requests' prefills are queued behind it (one setImmediate each).
      setImmediate(() => void Promise.resolve().then(append));
      for (let i = 0; i < queuedPasses; i++) setImmediate(pass);
    } else {
      append();
      // Another stream's forward pass, as the decode batcher starts one: onnxruntime-node runs a
      // session synchronously on the event loop (from a setImmediate), so nothing else runs meanwhile.
      if (forwardMs > 0) setImmediate(pass);
    }
    await new Promise((r) => setTimeout(r, o.intervalMs));
  }
  await Promise.all(writes);
  const expected = o.tokens * o.alertsPerToken;
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
    const got = await fleet.collect();
    if (got.every((s) => s.alerts.length >= expected)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const subs = await fleet.collect();
  const offset = processWallOffsetUs();
  for (const [firstId, at] of postedAt) {
    into.commit.push((handedAt.get(firstId)! - at) / 1000);
    into.fanOut.push((writtenAt.get(firstId)! - handedAt.get(firstId)!) / 1000);
  }
  const perAlert = new Map<number, number[]>();
  for (const s of subs) {
    for (const a of s.alerts) {
      const ms = receiptLatencyMs(a, offset);
      if (ms === null) continue;
      into.receipt.push(ms);
      let xs = perAlert.get(a.id);
      if (!xs) perAlert.set(a.id, (xs = []));
      xs.push(ms);
    }
  }
  for (const xs of perAlert.values()) {
    into.last.push(Math.max(...xs));
    into.first.push(Math.min(...xs));
  }
  into.tokens += o.tokens;
  await fleet.close();
  await hub.close();
  await new Promise((r) => server.close(r));
  await store.close();
}

// Drains `count` loopback connections to `port` on its own thread, as remote subscribers would.
const DRAINER = `
const { workerData, parentPort } = require('node:worker_threads');
const net = require('node:net');
let open = 0;
for (let i = 0; i < workerData.count; i++) {
  const s = net.connect(workerData.port, '127.0.0.1', () => { if (++open === workerData.count) parentPort.postMessage('open'); });
  s.on('data', () => {});
}
`;

/**
 * The synchronous cost of one token's fan-out to `subscribers` sockets, three ways, interleaved:
 *   - per subscriber JSON: each subscriber's copy serialised and framed on its own, one write per frame;
 *   - per frame: serialised and framed once, one write per frame and subscriber, corked per subscriber
 *     (the hub before this change);
 *   - joined: serialised and framed once, the token's frames joined once, one write per subscriber (the hub now).
 */
async function fanOutStrategies(subscribers: number, k: number, tokens: number): Promise<AlertPathBench['fanOut']> {
  const sockets: Socket[] = [];
  const server = createTcpServer((s) => sockets.push(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const drainer = new Worker(DRAINER, { eval: true, workerData: { port: (server.address() as { port: number }).port, count: subscribers } });
  await new Promise((r) => drainer.once('message', r));
  while (sockets.length < subscribers) await new Promise((r) => setTimeout(r, 10));
  const alerts = drafts(0, k).map((d, i) => ({ ...d, id: 1000 + i, ts: new Date().toISOString(), tenant: 'anonymous' }));
  const message = (a: (typeof alerts)[number]) => JSON.stringify({ type: 'alert', alert: a, forwardAtUs: 1733353200000000 });
  const strategies: Record<string, (() => void)> = {
    perSubscriberJson: () => {
      for (const s of sockets) for (const a of alerts) s.write(textFrame(message(a)));
    },
    perFrame: () => {
      const frames = alerts.map((a) => textFrame(message(a)));
      for (const s of sockets) s.cork();
      for (const f of frames) for (const s of sockets) s.write(f);
      for (const s of sockets) s.uncork();
    },
    joined: () => {
      const joined = Buffer.concat(alerts.map((a) => textFrame(message(a))));
      for (const s of sockets) s.write(joined);
    },
  };
  const names = Object.keys(strategies);
  const times = new Map<string, number[]>(names.map((n) => [n, []]));
  for (let t = 0; t < tokens; t++) {
    // Rotate the order each token: the machine's load falls on each alike.
    for (let j = 0; j < names.length; j++) {
      const name = names[(t + j) % names.length];
      const started = performance.now();
      strategies[name]();
      times.get(name)!.push(performance.now() - started);
      // Let the bytes drain before the next one.
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  await drainer.terminate();
  for (const s of sockets) s.destroy();
  await new Promise((r) => server.close(r));
  const labels: Record<string, string> = {
    perSubscriberJson: 'JSON and framing per subscriber, a write per frame',
    perFrame: 'JSON and framing once, a write per frame and subscriber (corked): the hub before',
    joined: "JSON and framing once, the token's frames joined once, one write per subscriber: the hub now",
  };
  const out = names.map((n) => ({ name: n, label: labels[n], p50Ms: round(quantile(times.get(n)!, 0.5), 3), p99Ms: round(quantile(times.get(n)!, 0.99), 3) }));
  const p50 = (n: string) => quantile(times.get(n)!, 0.5);
  return { subscribers, alertsPerToken: k, tokens, strategies: out, perFrameOverJoined: round(p50('perFrame') / p50('joined'), 2), perSubscriberJsonOverJoined: round(p50('perSubscriberJson') / p50('joined'), 2) };
}

function loadAverage(): number[] {
  // /proc/loadavg: the 1, 5 and 15 minute figures `uptime` prints.
  return (process.platform === 'linux' ? readFileSync('/proc/loadavg', 'utf8') : '0 0 0').split(' ').slice(0, 3).map(Number);
}

export async function benchAlertPath(config: AlertPathBench['config']): Promise<AlertPathBench> {
  const dir = mkdtempSync(join(tmpdir(), 'lw-bench-alert-path-'));
  const start = loadAverage();
  const machine = describeMachine();
  const diskFlush = measureDiskFlush(dir);
  // Every store without a forward pass; the durable ones and memory with one after each token.
  const chosen = STORES.filter((s) => !config.stores || config.stores.includes(s.name));
  const queued = config.queuedPasses ?? 0;
  const runs = [
    ...chosen.map((s) => ({ ...s, forwardMs: 0, queuedPasses: 0 })),
    ...(config.forwardMs > 0 ? chosen.filter((s) => s.name !== 'groupNormal').map((s) => ({ ...s, forwardMs: config.forwardMs, queuedPasses: 0 })) : []),
    ...(config.forwardMs > 0 && queued > 0 ? chosen.filter((s) => s.name !== 'groupNormal').map((s) => ({ ...s, forwardMs: config.forwardMs, queuedPasses: queued })) : []),
  ];
  const key = (r: { name: StoreName; forwardMs: number; queuedPasses: number }) => `${r.name}/${r.forwardMs}/${r.queuedPasses}`;
  const samples = new Map<string, Samples>(runs.map((r) => [key(r), { commit: [], fanOut: [], receipt: [], last: [], first: [], tokens: 0 }]));
  try {
    for (let r = 0; r < config.rounds; r++) {
      const order = r % 2 === 0 ? runs : [...runs].reverse();
      for (const s of order) {
        process.stderr.write(`round ${r + 1}/${config.rounds}: ${s.label}${s.queuedPasses ? `, ${s.queuedPasses} passes of ${s.forwardMs} ms queued before each append` : s.forwardMs ? `, ${s.forwardMs} ms pass after each token` : ''}\n`);
        await runStore(s.name, dir, config, s.forwardMs, s.queuedPasses, samples.get(key(s))!);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.stderr.write('fan-out strategies\n');
  const fanOut = await fanOutStrategies(config.subscribers, config.alertsPerToken, 300);
  const results = runs.map((s) => {
    const x = samples.get(key(s))!;
    return { store: s.name, label: s.label, forwardMs: s.forwardMs, queuedPasses: s.queuedPasses, tokens: x.tokens, receipts: x.receipt.length, commit: stats(x.commit), fanOut: stats(x.fanOut), receipt: stats(x.receipt), lastSubscriber: stats(x.last), firstSubscriber: stats(x.first) };
  });
  return { machine, loadAverage: { start, end: loadAverage() }, diskFlush, config, results, fanOut };
}

export function alertPathMarkdown(b: AlertPathBench): string {
  const c = b.config;
  const cell = (s: StageStats) => `${s.p50Ms} / ${s.p99Ms}`;
  return [
    '# The durable alert path, stage by stage',
    '',
    machineMarkdown(b.machine),
    '',
    `Load average (1, 5, 15 min) at the start ${b.loadAverage.start.join(', ')}, at the end ${b.loadAverage.end.join(', ')} (the machine is shared).`,
    '',
    `Disk under the logs: fdatasync of a 4 KiB append, ${b.diskFlush.samples} samples: p50 ${b.diskFlush.p50Ms} ms, p99 ${b.diskFlush.p99Ms} ms.`,
    '',
    `No model: one token's ${c.alertsPerToken} alerts appended every ${c.intervalMs} ms, ${c.tokens} tokens per store per round, ${c.rounds} rounds (store order alternating), ${c.subscribers} WebSocket subscribers on 4 worker threads of this process. Figures are p50 / p99 ms from the append call. "Synchronous pass": ${c.forwardMs} ms of work on the event loop started (setImmediate) right after each append, as another stream's forward pass in onnxruntime-node; "queued before": that many such passes already queued when the append is made from the continuation of an earlier one (several requests' prefills at once).`,
    '',
    markdownTable(
      ['alert log', 'synchronous pass after each token', 'tokens', 'receipts', 'commit (append → feed)', 'fan-out (feed → all sockets written)', 'receipt, every subscriber', 'first subscriber', 'last subscriber'],
      b.results.map((r) => [r.label, r.queuedPasses ? `${r.queuedPasses} × ${r.forwardMs} ms queued before the append` : r.forwardMs ? `${r.forwardMs} ms after` : 'none', r.tokens, r.receipts, cell(r.commit), cell(r.fanOut), cell(r.receipt), cell(r.firstSubscriber), cell(r.lastSubscriber)]),
    ),
    '',
    `## The fan-out's own cost`,
    '',
    `The event loop's synchronous time to hand one token's ${b.fanOut.alertsPerToken} alerts to ${b.fanOut.subscribers} loopback sockets (drained by another thread), ${b.fanOut.tokens} tokens, the three ways interleaved:`,
    '',
    markdownTable(['how', 'p50 ms', 'p99 ms'], b.fanOut.strategies.map((x) => [x.label, x.p50Ms, x.p99Ms])),
    '',
    `p50 per frame ÷ joined: **${b.fanOut.perFrameOverJoined}**; per-subscriber JSON ÷ joined: **${b.fanOut.perSubscriberJsonOverJoined}**.`,
  ].join('\n');
}

runIfMain(import.meta.url, async (argv) => {
  const a = parseArgs(argv, ['tokens', 'alerts', 'interval-ms', 'subscribers', 'rounds', 'forward-ms', 'queued-passes', 'stores', 'out', 'md']);
  const stores = a.get('stores')?.split(',') as StoreName[] | undefined;
  for (const s of stores ?? []) if (!STORES.some((x) => x.name === s)) throw new Error(`--stores: unknown store ${s} (${STORES.map((x) => x.name).join(', ')})`);
  const config = { tokens: a.num('tokens', 50), alertsPerToken: a.num('alerts', 16), intervalMs: a.num('interval-ms', 200), subscribers: a.num('subscribers', 100), rounds: a.num('rounds', 2), forwardMs: a.num('forward-ms', 40), queuedPasses: a.num('queued-passes', 0), ...(stores ? { stores } : {}) };
  const b = await benchAlertPath(config);
  writeBenchResult(a, 'alert-path', b, alertPathMarkdown(b));
});
