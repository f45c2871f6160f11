/**
 * One daemon, 100 subscribers: the single-node alert path's tail (issue 15's goal p99 ≤ 10 ms on
 * the 0.5B shape) with enough requests that the p99 is not one token's luck, and what held the
 * slowest tokens back. bench/replicas.ts's single-node row has 50 requests: ~59 tokens, each of
 * whose 16 alerts × 100 subscribers is 1.7% of the receipts, so its p99 is its worst token.
 *
 *   npx tsx bench/single-node.ts [--quick] [--model DIR] [--requests N] [--logs full,normal,memory]
 *                                [--out FILE.json] [--md FILE.md]
 *
 * Each log in turn, alone on the machine (a fresh daemon process and file, its 100 subscribers on 4
 * worker threads, the same requests; a log named twice runs twice): 'full' is the shipped default
 * (SQLite synchronous=FULL, group-commit worker), 'normal' the same with synchronous=NORMAL,
 * 'memory' no file (the fan-out's floor).
 * Per log: receipt latency (receipt − forwardAtUs, wall clocks) p50 / p99 / p99.9 / max; per token
 * (its alerts share forwardAtUs) the worst receipt, the share of tokens over 10 ms and the slowest
 * five; from the daemon's /metrics over the measured requests, garbage collections over 10 ms
 * (prom-client's nodejs_gc_duration_seconds) and the event loop's longest delay.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { DEFAULT_MODEL_DIR } from '../src/paths.js';
import { bundledProbes } from '../src/daemon/daemon.js';
import { ADMIN_KEY, alertsCounted, clockOffsetOf, collectAll, delivery, injectedIds, latency, type Latency } from './lib/alert-receipts.js';
import { trainBenchProbes } from './lib/bench-probes.js';
import { receiptLatencyMs } from './lib/clients.js';
import { spawnDaemonProcess } from './lib/daemon-process.js';
import { flushAllWrites } from './lib/disk-flush.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult } from './lib/report.js';
import { quantile, round } from './lib/stats.js';
import { startSubscriberFleet } from './lib/subscriber-fleet.js';

const SUBSCRIBERS = 100;
const LOGS = {
  full: { label: 'SQLite FULL, group-commit worker (default)', env: {} },
  normal: { label: 'SQLite NORMAL, group-commit worker', env: { LATENTWATCH_ALERT_LOG_SYNC: 'normal' } },
  memory: { label: 'in memory', env: {} },
} as const;
type LogName = keyof typeof LOGS;

interface LogRun {
  log: LogName;
  label: string;
  alerts: number;
  latency: Latency & { p999Ms: number };
  tokens: number;
  tokensOver10Ms: number;
  slowestTokensMs: number[];
  gcOver10Ms: number;
  gcMaxBucketS: string | null;
  eventLoopDelayMaxMs: number | null;
  missing: number;
  duplicates: number;
  alertsCounted: number;
}

export interface SingleNodeBench {
  kind: 'latentwatch.bench.single-node';
  version: 1;
  machine: MachineDescription;
  model: string;
  requests: number;
  subscribers: number;
  runs: LogRun[];
  seconds: number;
}

/** The daemon's prom-client process metrics now: GC counts per duration bucket and the event loop's max delay. */
async function processMetrics(url: string): Promise<{ gcBuckets: Map<string, number>; loopMaxS: number | null }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const gcBuckets = new Map<string, number>();
  let loopMaxS: number | null = null;
  for (const line of text.split('\n')) {
    const gc = /^latentwatch_nodejs_gc_duration_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)/.exec(line);
    if (gc) gcBuckets.set(gc[1], (gcBuckets.get(gc[1]) ?? 0) + Number(gc[2]));
    if (line.startsWith('latentwatch_nodejs_eventloop_lag_max_seconds ')) loopMaxS = Number(line.split(' ')[1]);
  }
  return { gcBuckets, loopMaxS };
}

export async function runSingleNodeBench(o: { modelDir: string; requests: number; logs: readonly LogName[]; log?: (l: string) => void }): Promise<SingleNodeBench> {
  const say = o.log ?? ((l: string) => console.error(l));
  const t0 = Date.now();
  const root = mkdtempSync(join(tmpdir(), 'lw-bench-single-'));
  try {
    say(`training bench probes on ${basename(o.modelDir)}`);
    mkdirSync(join(root, 'probes'), { recursive: true });
    const set = await trainBenchProbes(o.modelDir, { dir: join(root, 'probes') });
    const probeArgs = [...bundledProbes(o.modelDir), ...set.probes.map((p) => p.path)].flatMap((p) => ['--probe', p]);
    const runs: LogRun[] = [];
    for (const [k, name] of o.logs.entries()) {
      say(`${name}: one daemon, ${SUBSCRIBERS} subscribers, ${o.requests} injected requests`);
      const d = await spawnDaemonProcess({
        argv: ['--model', o.modelDir, ...probeArgs, '--port', '0', '--alert-log', name === 'memory' ? ':memory:' : join(root, `${name}-${k}.db`)],
        env: { LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1', LATENTWATCH_LOG_LEVEL: 'warn', ...LOGS[name].env },
      });
      const fleet = await startSubscriberFleet(d.url, SUBSCRIBERS, { key: ADMIN_KEY, workers: 4 });
      try {
        const model = ((await (await fetch(`${d.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0].id;
        for (let i = 0; i < 3; i++) await injectedIds(d, set, model, i); // warm-up
        flushAllWrites(); // the setup's checkpoint and graph cache, so the log's fsyncs measure the log
        const before = await processMetrics(d.url);
        const ids: number[] = [];
        for (let i = 0; i < o.requests; i++) {
          ids.push(...(await injectedIds(d, set, model, i)));
          if ((i + 1) % 50 === 0) say(`  ${i + 1} / ${o.requests}`);
        }
        const after = await processMetrics(d.url);
        const subs = await collectAll([fleet], ids);
        const want = new Set(ids);
        const offsetUs = clockOffsetOf(d);
        const values: number[] = [];
        const perToken = new Map<number, number>();
        for (const s of subs) {
          for (const a of s.alerts) {
            const ms = want.has(a.id) ? receiptLatencyMs(a, offsetUs) : null;
            if (ms === null) continue;
            values.push(ms);
            perToken.set(a.forwardAtUs!, Math.max(perToken.get(a.forwardAtUs!) ?? 0, ms));
          }
        }
        const tokenWorst = [...perToken.values()].sort((x, y) => y - x);
        // Collections during the measured requests, per cumulative bucket bound.
        const gcDuring = (le: string) => (after.gcBuckets.get(le) ?? 0) - (before.gcBuckets.get(le) ?? 0);
        const allGc = gcDuring('+Inf');
        const gcOver10Ms = allGc - gcDuring('0.01');
        // The smallest bucket bound holding every collection of the window: a bound on the longest.
        const bounds = [...after.gcBuckets.keys()].filter((le) => le !== '+Inf').sort((x, y) => Number(x) - Number(y));
        const smallestCoveringAll = bounds.find((le) => gcDuring(le) === allGc);
        runs.push({
          log: name,
          label: LOGS[name].label,
          alerts: ids.length,
          latency: { ...latency(values), p999Ms: round(quantile(values, 0.999), 3) },
          tokens: perToken.size,
          tokensOver10Ms: tokenWorst.filter((x) => x > 10).length,
          slowestTokensMs: tokenWorst.slice(0, 5).map((x) => round(x, 1)),
          gcOver10Ms,
          gcMaxBucketS: allGc === 0 ? null : smallestCoveringAll !== undefined ? `≤ ${smallestCoveringAll}` : `> ${bounds.at(-1)}`,
          eventLoopDelayMaxMs: after.loopMaxS === null ? null : round(after.loopMaxS * 1000, 2),
          ...delivery(subs, ids),
          alertsCounted: await alertsCounted(d),
        });
      } finally {
        await fleet.close();
        await d.stop();
      }
    }
    return { kind: 'latentwatch.bench.single-node', version: 1, machine: describeMachine(), model: basename(o.modelDir), requests: o.requests, subscribers: SUBSCRIBERS, runs, seconds: round((Date.now() - t0) / 1000, 1) };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

export function singleNodeBenchMarkdown(r: SingleNodeBench): string {
  return [
    '# One node, 100 subscribers: the alert path\'s tail',
    '',
    machineMarkdown(r.machine),
    '',
    `Model ${r.model}; ${r.subscribers} WebSocket subscribers (admin key, 4 worker threads); ${r.requests} admin-injected requests one at a time per log, each log a fresh daemon alone on the machine. Latency = receipt − forwardAtUs, both on the wall clock. A token's latency is its slowest receipt (its alerts share forwardAtUs). GC and event-loop delay: the daemon's /metrics over the measured requests.`,
    '',
    markdownTable(
      ['alert log', 'alerts', 'receipts', 'p50 ms', 'p90 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'tokens > 10 ms', 'slowest tokens ms', 'GCs > 10 ms (longest)', 'loop delay max ms', 'missing / duplicates'],
      r.runs.map((x) => [x.label, x.alerts, x.latency.receipts, x.latency.p50Ms, x.latency.p90Ms, x.latency.p99Ms, x.latency.p999Ms, x.latency.maxMs, `${x.tokensOver10Ms} of ${x.tokens}`, x.slowestTokensMs.join(', '), x.gcMaxBucketS === null ? '0' : `${x.gcOver10Ms} (longest ${x.gcMaxBucketS} s)`, x.eventLoopDelayMaxMs, `${x.missing} / ${x.duplicates}`]),
    ),
    '',
    `Total ${r.seconds} s.`,
  ].join('\n');
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['out', 'md', 'model', 'requests', 'logs']);
  const quick = a.has('quick');
  const logs = (a.get('logs') ?? 'full,normal,memory').split(',') as LogName[];
  for (const l of logs) if (!(l in LOGS)) throw new Error(`--logs: unknown log ${l} (full, normal, memory)`);
  const res = await runSingleNodeBench({ modelDir: a.get('model') ?? DEFAULT_MODEL_DIR, requests: Number(a.get('requests') ?? (quick ? 15 : 150)), logs });
  writeBenchResult(a, `single-node${quick ? '-quick' : ''}`, res, singleNodeBenchMarkdown(res));
}

runIfMain(import.meta.url, main);
