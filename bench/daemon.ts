/**
 * Daemon benchmark: what watching the residual stream costs, how fast alerts reach subscribers,
 * and how throughput scales with concurrent streams, all through the real daemon (child processes
 * started as `latentwatch serve` starts, clients over loopback HTTP/SSE and WebSocket).
 *
 *   npx tsx bench/daemon.ts [--quick] [--out FILE.json] [--md FILE.md] [--model DIR] [--big] [--big-model DIR]
 *       [--precision P] [--spinning] [--no-engine-thread] [--latency-only]
 *
 * --latency-only measures the alert latency alone (no monitor overhead, no concurrency).
 *
 * --big also benches a bigger checkpoint (default /tmp/lw-bench/qwen2.5-0.5b-random, written by
 * bench/random-checkpoint.ts) with fewer repetitions and tokens.
 *
 * Probes: the model's bundled probes (DIR/probes) plus bench probes trained on the spot (a random
 * direction injected at layer 3, one difference-of-means probe per later layer; bench/lib/
 * bench-probes.ts), so every layer after the injection is watched.
 *
 * The daemon runs in a child process (bench/lib/twin-child.ts): ONE engine (one onnxruntime
 * session, one KV pool, max-concurrent 16) behind several front ends, each the daemon's own assembly
 * (InferenceService, ProbeBank, the alert store, AlertHub, metrics, the fastify server) on its own
 * port: "on" (every probe, the alert rule, the SQLite alert log on disk with synchronous=FULL
 * written by the group-commit worker: the daemon as shipped), "off" (no probe: nothing tapped or
 * scored), and for the alert latency "inline" (FULL written on the event loop, alertLog.groupCommit
 * false), "groupnormal" and "normal" (synchronous=NORMAL, worker and event loop) and "memlog" (the
 * log in memory). One process because two identical daemon processes on this shared 2-core machine
 * differ by up to ±30 % in decode speed.
 *
 * - Monitor overhead: "on" vs "off", the same engine and build, the same run. Repetitions
 *   alternate on/off (ABBA); each is one greedy streamed completion, and its
 *   decode rate is (completion tokens − 1) ÷ (end of stream − first token event). Both generate
 *   the same tokens. monitor_overhead_pct = (median off − median on) ÷ median off × 100; the
 *   paired figure (median over repetitions of on/off) is reported beside it, and so is the
 *   daemon's CPU time per token (all threads, /proc schedstat), which waiting for a core on a busy
 *   machine does not inflate.
 * - Alert latency: admin-injected requests (window "generation", so every probe after the
 *   injection fires on the first generated token's forward pass); latency = the subscriber's
 *   receipt time − the message's `forwardAtUs` (when that forward pass returned to the daemon),
 *   both corrected to the wall clock (each process and subscriber thread reads its own offset:
 *   lib/clients.ts wallOffsetUs). First 1 subscriber on "on"; then 100 subscribers on each of the
 *   five logs at once (one on this thread plus 99 on 4 worker threads, lib/subscriber-fleet.ts, so
 *   one event loop's parsing of 99 copies is not charged to the 100th), requests round-robin over
 *   the logs (the machine's load falls on each alike), one at a time, then 4 at a time with a plain
 *   stream beside each batch whose token gaps show what the alerts' writes hold back. Each receipt
 *   is a sample; it includes scoring, the append, JSON, the fan-out and loopback TCP. "First alert
 *   of the token" and "last subscriber" (fan-out complete) are reported too.
 * - Concurrency: 1, 4 and 16 simultaneous greedy streams (different prompts, same max_tokens) on
 *   the "on" daemon (max-concurrent 16, so the engine batches up to 16 decode steps); aggregate
 *   tokens/s = all completion tokens ÷ wall time; per stream: time to first token, inter-token gaps,
 *   tokens/s. Levels interleaved per repetition; medians.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { loadConfig, ruleForProbe } from '../src/daemon/config.js';
import { bundledProbes } from '../src/daemon/daemon.js';
import { createMetrics } from '../src/daemon/metrics.js';
import { RequestMonitor } from '../src/daemon/monitor.js';
import { loadProbe, ProbeBank } from '../src/probes/probe.js';
import { DEFAULT_MODEL_DIR } from '../src/paths.js';
import { trainBenchProbes, type BenchProbeSet } from './lib/bench-probes.js';
import { nowUs, processWallOffsetUs, receiptLatencyMs, streamRequest, subscribe, until, type ReceivedAlert, type StreamResult, type Subscriber } from './lib/clients.js';
import { startSubscriberFleet } from './lib/subscriber-fleet.js';
import { cpuNsOf, spawnDaemonProcess, type DaemonProcess } from './lib/daemon-process.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { flushAllWrites, measureDiskFlush, type DiskFlush } from './lib/disk-flush.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult } from './lib/report.js';
import { maxOf, median, quantile, round, summarize, type Summary } from './lib/stats.js';

/** Worker threads the 99 other subscribers of the 100-subscriber latency run are spread over. */
const FLEET_WORKERS = 4;
/** Injected requests at a time in the second latency round (concurrent streams: alerts whose fsyncs group commit can share). */
const PARALLEL_STREAMS = 4;
const ADMIN_KEY = 'bench-admin-key';
const PROMPTS = [
  'import numpy as np\n\ndef ',
  'class Stack:\n    def __init__(self):\n',
  'def parse_config(path):\n',
  '# binary search\ndef search(xs, x):\n',
  'import os\nimport sys\n\ndef main():\n',
  'def fib(n):\n',
  'class Node:\n    def __init__(self, value):\n',
  'def read_lines(path):\n    with open(path) as f:\n',
];

export interface LatencyStats {
  alerts: number;
  subscribers: number;
  receipts: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Only the first alert raised on each token (per subscriber): p50/p99. */
  firstOfTokenP50Ms: number;
  firstOfTokenP99Ms: number;
  /** Per alert, the last subscriber's receipt (fan-out complete): p50/p99. */
  lastReceiptP50Ms: number;
  lastReceiptP99Ms: number;
}

type LogName = 'groupFull' | 'inlineFull' | 'groupNormal' | 'inlineNormal' | 'memoryLog';

export interface ConcurrencyLevel {
  streams: number;
  aggregateTokS: Summary;
  perStreamTokS: Summary;
  ttftMs: Summary;
  interTokenP50Ms: number;
  interTokenP99Ms: number;
  tokensPerStream: number;
}

export interface ModelDaemonBench {
  modelDir: string;
  modelName: string;
  fingerprint: string;
  precision: string;
  spinning: boolean;
  /** Forward passes on the engine's own thread (the daemon's default, engineThread); false with --no-engine-thread. */
  engineThread: boolean;
  probes: { id: string; hook: string }[];
  /** null with latencyOnly. */
  monitorOverhead: {
    repetitions: number;
    maxTokens: number;
    completionTokens: number;
    sameOutput: boolean;
    onTokS: Summary;
    offTokS: Summary;
    /** (median off − median on) ÷ median off × 100. */
    pct: number;
    /** Median over repetitions of (1 − on/off) × 100, each pair run back to back. */
    pairedPct: number;
    /** Daemon CPU time (every thread, ns from /proc schedstat) per generated token, summed over the runs: µs. */
    cpuUsPerTokenOn: number;
    cpuUsPerTokenOff: number;
    /** (on − off) ÷ off × 100 of CPU time per token: insensitive to waiting for a core on a busy machine. */
    cpuPct: number;
    /** The monitor's own work per token (scores, rule, verbalization, histograms) timed in-process without the engine: µs. */
    monitorUsPerToken: number;
    /** That, as a share of the unmonitored daemon's time per token (%). */
    monitorPctOfToken: number;
    alertsDuringRuns: number;
  } | null;
  alertLatency: {
    requests: number;
    alertsPerRequest: number;
    one: LatencyStats;
    hundred: LatencyStats;
    /** 100 subscribers, alert log in memory (no fsync): the floor the durable logs are compared with. */
    memoryLog: LatencyStats;
    /** 100 subscribers, synchronous=NORMAL (WAL: no fsync per append; alertLog.synchronous), written on the event loop. */
    normalSync: LatencyStats;
    /** 100 subscribers, synchronous=FULL written on the event loop (alertLog.groupCommit false: the daemon before group commit). */
    inlineFull: LatencyStats;
    /** 100 subscribers, synchronous=NORMAL written by the group-commit worker. */
    groupNormal: LatencyStats;
    /** The same five logs with `parallelStreams` injected requests at a time (their alerts' fsyncs can be shared). */
    parallel: {
      streams: number;
      requests: number;
      groupFull: LatencyStats;
      inlineFull: LatencyStats;
      groupNormal: LatencyStats;
      inlineNormal: LatencyStats;
      memoryLog: LatencyStats;
      /** Gaps between tokens (client receipt, ms) of a plain stream run beside each batch, per log. */
      plainStreamGaps: Record<LogName, { p50Ms: number; p99Ms: number }>;
      sendToFirstAlert: Record<LogName, { p50Ms: number; p99Ms: number }>;
    };
    /** Per request: sent → its first alert received (ms, the bench's clock alone), per log, one at a time. */
    sendToFirstAlert: Record<LogName, { p50Ms: number; p99Ms: number }>;
    /**
     * Each side's wall clock − its monotonic epoch clock (ms; lib/clients.ts wallOffsetUs), by which
     * latencies are corrected, and the check: min over alerts of alert.ts − corrected forwardAtUs
     * (ms; ts is whole ms, so within (−1, 0] plus the append's delay when the correction is right).
     */
    clockCheckMs: { daemonOffset: number; benchOffset: number; daemon: number };
  };
  /** null with latencyOnly. */
  concurrency: { maxTokens: number; repetitions: number; levels: ConcurrencyLevel[]; speedup4: number; speedup16: number } | null;
  /** The daemon process (one engine, six front ends). */
  rssBytes: number | null;
}

export interface DaemonBenchResult {
  kind: 'latentwatch.bench.daemon';
  version: 1;
  quick: boolean;
  machine: MachineDescription;
  models: ModelDaemonBench[];
  /** fdatasync of a 4 KiB append where the alert logs live: the floor of a synchronous=FULL append (lib/disk-flush.ts), before the models' runs. */
  diskFlush: DiskFlush;
  /** Flat keys for the top-level bench (issue 6): the first (default) model's, then the others' with a suffix. */
  summary: Record<string, number | null>;
  seconds: number;
}

export interface DaemonBenchOptions {
  quick?: boolean;
  /** Checkpoints to bench (default: the built-in model). */
  models?: string[];
  /** onnxruntime's idle threads spin-wait between passes (default false, as the daemon). */
  spinning?: boolean;
  engineThread?: boolean;
  /** Precision of the served graph per checkpoint: default fp32 for the built-in model, int4 for others. */
  precision?: 'fp32' | 'fp16' | 'int8' | 'int4';
  /** Only the alert latency (skip monitor overhead and concurrency; their fields are left empty). */
  latencyOnly?: boolean;
  log?: (line: string) => void;
}

/** Latencies on wall-aligned clocks: the subscriber's receipt and the daemon's forwardAtUs, each corrected by its own thread's offset (lib/clients.ts wallOffsetUs). */
function latencyStats(subs: readonly { alerts: readonly ReceivedAlert[] }[], ids: readonly number[], daemonOffsetUs: number): LatencyStats {
  const want = new Set(ids);
  const all: number[] = [];
  const last = new Map<number, number>();
  for (const s of subs) {
    for (const a of s.alerts) {
      const ms = want.has(a.id) ? receiptLatencyMs(a, daemonOffsetUs) : null;
      if (ms === null) continue;
      all.push(ms);
      last.set(a.id, Math.max(last.get(a.id) ?? -Infinity, ms));
    }
  }
  const lasts = [...last.values()];
  const first: number[] = [];
  for (const s of subs) {
    const byToken = new Map<number, number>();
    for (const a of s.alerts) {
      const ms = want.has(a.id) ? receiptLatencyMs(a, daemonOffsetUs) : null;
      if (ms === null) continue;
      byToken.set(a.forwardAtUs!, Math.min(byToken.get(a.forwardAtUs!) ?? Infinity, ms));
    }
    first.push(...byToken.values());
  }
  return {
    alerts: ids.length,
    subscribers: subs.length,
    receipts: all.length,
    p50Ms: round(quantile(all, 0.5), 3),
    p90Ms: round(quantile(all, 0.9), 3),
    p99Ms: round(quantile(all, 0.99), 3),
    maxMs: round(maxOf(all), 3),
    firstOfTokenP50Ms: round(quantile(first, 0.5), 3),
    firstOfTokenP99Ms: round(quantile(first, 0.99), 3),
    lastReceiptP50Ms: round(quantile(lasts, 0.5), 3),
    lastReceiptP99Ms: round(quantile(lasts, 0.99), 3),
  };
}

const decodeRate = (r: StreamResult): number => ((r.completionTokens ?? 0) - 1) / ((r.endedAt - r.tokenTimes[0]) / 1000);

async function benchModel(modelDir: string, quick: boolean, latencyOnly: boolean, root: string, log: (l: string) => void, engineOpts: { precision: string; spinning: boolean; engineThread: boolean }): Promise<ModelDaemonBench> {
  const small = basename(modelDir) === basename(DEFAULT_MODEL_DIR);
  // Counts: bounded in time on a shared 2-core machine (quick: well under a minute for the 16M model).
  const scale = small ? 1 : 0.25;
  const n = (quickN: number, fullN: number) => Math.max(2, Math.round((quick ? quickN : fullN) * scale));
  const overheadReps = n(12, 24);
  const overheadTokens = small ? (quick ? 64 : 128) : 32;
  const alertRequests = n(30, 100);
  const concReps = quick ? 2 : 3;
  const concTokens = small ? (quick ? 48 : 96) : quick ? 32 : 64;
  const cacheDir = undefined; // the daemon's default build cache, shared by every daemon below

  log(`[${basename(modelDir)}] training bench probes`);
  const probeDir = join(root, 'probes', basename(modelDir));
  mkdirSync(probeDir, { recursive: true });
  const set: BenchProbeSet = await trainBenchProbes(modelDir, { dir: probeDir, cacheDir });
  const probePaths = [...bundledProbes(modelDir), ...set.probes.map((p) => p.path)];
  log(`[${basename(modelDir)}] starting the daemon: one engine, variants on (${probePaths.length} probes, SQLite FULL, group commit), off (no probes), inline, normal, groupnormal, memlog`);
  const twin = await spawnDaemonProcess({
    entry: 'twin-child',
    // The first start on a big checkpoint builds (and quantizes) its graph: minutes on a busy machine.
    startTimeoutMs: small ? 120_000 : 1_200_000,
    argv: [
      JSON.stringify({
        modelDir,
        adminKey: ADMIN_KEY,
        maxConcurrent: 16,
        ...engineOpts,
        variants: [
          // "on" is the daemon as shipped: synchronous=FULL, written by the group-commit worker.
          { name: 'on', probes: probePaths, alertLog: join(root, `alerts-${basename(modelDir)}.db`), groupCommit: true },
          { name: 'off', probes: [], alertLog: ':memory:' },
          { name: 'memlog', probes: probePaths, alertLog: ':memory:' },
          { name: 'inline', probes: probePaths, alertLog: join(root, `alerts-inline-${basename(modelDir)}.db`) },
          { name: 'normal', probes: probePaths, alertLog: join(root, `alerts-normal-${basename(modelDir)}.db`), synchronous: 'normal' },
          { name: 'groupnormal', probes: probePaths, alertLog: join(root, `alerts-groupnormal-${basename(modelDir)}.db`), synchronous: 'normal', groupCommit: true },
        ],
      }),
    ],
  });
  const urls = twin.ready.urls as Record<string, string>;
  const daemonOffsetUs = Number(twin.ready.clockOffsetUs ?? 0);
  const variant = (name: string): DaemonProcess => ({ ...twin, url: urls[name] });
  const on = variant('on');
  const off = variant('off');
  const memLog = variant('memlog');
  const normalLog = variant('normal');
  const inlineLog = variant('inline');
  const groupNormalLog = variant('groupnormal');
  const subs: Subscriber[] = [];
  try {
    const models = async (d: DaemonProcess) => (await (await fetch(`${d.url}/v1/models`)).json()) as { data: { id: string; fingerprint: string; probes: { id: string; hook: string[] }[] }[] };
    const mOn = (await models(on)).data[0];
    const mOff = (await models(off)).data[0];
    if (mOff.probes.length !== 0) throw new Error(`the "off" daemon loaded probes: ${JSON.stringify(mOff.probes)}`);
    if (mOn.probes.length !== probePaths.length) throw new Error(`the "on" daemon has ${mOn.probes.length} probes`);
    const modelName = mOn.id;
    const stream = (d: DaemonProcess, body: Record<string, unknown>, key?: string) => streamRequest(d.url, '/v1/completions', { model: modelName, temperature: 0, ...body }, { key });

    // ---- monitor overhead ----
    const measureOverhead = async (): Promise<NonNullable<ModelDaemonBench['monitorOverhead']>> => {
      log(`[${basename(modelDir)}] monitor overhead: ${overheadReps} × (on, off), ${overheadTokens} tokens`);
      const body = { prompt: PROMPTS[0], max_tokens: overheadTokens };
      for (const d of [on, off, on, off]) await stream(d, body); // warm-up
      const alertsBefore = await alertCount(on);
      const onRates: number[] = [];
      const offRates: number[] = [];
      const paired: number[] = [];
      let sameOutput = true;
      let completionTokens = 0;
      const cpu = new Map<string, number>();
      const toks = new Map<string, number>();
      for (let r = 0; r < overheadReps; r++) {
        const order = r % 2 === 0 ? [on, off] : [off, on];
        const res = new Map<string, StreamResult>();
        for (const d of order) {
          const c0 = cpuNsOf(twin.pid);
          const x = await stream(d, body);
          const c1 = cpuNsOf(twin.pid);
          res.set(d.url, x);
          if (c0 !== null && c1 !== null) cpu.set(d.url, (cpu.get(d.url) ?? 0) + (c1 - c0));
          toks.set(d.url, (toks.get(d.url) ?? 0) + (x.completionTokens ?? 0));
        }
        const a = res.get(on.url)!;
        const b = res.get(off.url)!;
        if (a.error || b.error) throw new Error(`stream failed: ${JSON.stringify(a.error ?? b.error)}`);
        sameOutput &&= a.text === b.text;
        completionTokens = a.completionTokens ?? 0;
        onRates.push(decodeRate(a));
        offRates.push(decodeRate(b));
        paired.push((1 - decodeRate(a) / decodeRate(b)) * 100);
      }
      const onS = summarize(onRates);
      const offS = summarize(offRates);
      const alertsDuringRuns = (await alertCount(on)) - alertsBefore;
      const microUs = await monitorMicro(modelDir, probePaths, mOn.fingerprint, set.vector.length, 512);
      const cpuPerToken = (d: DaemonProcess) => (cpu.get(d.url) ?? NaN) / (toks.get(d.url) ?? NaN) / 1e3;
        return {
          repetitions: overheadReps,
          maxTokens: overheadTokens,
          completionTokens,
          sameOutput,
          onTokS: onS,
          offTokS: offS,
          pct: round(((offS.median - onS.median) / offS.median) * 100, 3),
          pairedPct: round(median(paired), 3),
          cpuUsPerTokenOn: round(cpuPerToken(on), 1),
          cpuUsPerTokenOff: round(cpuPerToken(off), 1),
          cpuPct: round((cpuPerToken(on) / cpuPerToken(off) - 1) * 100, 3),
          monitorUsPerToken: round(microUs, 2),
          monitorPctOfToken: round((microUs / (1e6 / offS.median)) * 100, 3),
          alertsDuringRuns,
        };
    };
    const monitorOverhead = latencyOnly ? null : await measureOverhead();

    // ---- alert latency ----
    const injectBody = (i: number) => ({
      prompt: PROMPTS[i % PROMPTS.length],
      max_tokens: 2,
      latentwatch: { inject: { vector: set.vector, layer: set.injectLayer, scale: set.scale, window: 'generation' } },
    });
    const raiseOne = async (d: DaemonProcess, i: number): Promise<number[]> => {
      const r = await fetch(`${d.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` }, body: JSON.stringify({ model: modelName, temperature: 0, ...injectBody(i) }) });
      const v = ((await r.json()) as { latentwatch: { probes: { alert_ids: number[] }[] } }).latentwatch;
      return v.probes.flatMap((p) => p.alert_ids);
    };
    const raiseAlerts = async (d: DaemonProcess, count: number): Promise<number[]> => {
      const ids: number[] = [];
      for (let i = 0; i < count; i++) ids.push(...(await raiseOne(d, i)));
      return ids;
    };
    /** A variant's subscribers: one on this thread, the others on worker threads (lib/subscriber-fleet.ts: separate event loops, as separate subscriber processes would be). */
    interface Audience {
      d: DaemonProcess;
      main: Subscriber;
      fleet: Awaited<ReturnType<typeof startSubscriberFleet>> | null;
    }
    const connect = async (d: DaemonProcess, nsubs: number): Promise<Audience> => {
      const main = subscribe(d.url, { key: ADMIN_KEY });
      await main.opened;
      subs.push(main);
      const fleet = nsubs > 1 ? await startSubscriberFleet(d.url, nsubs - 1, { key: ADMIN_KEY, workers: FLEET_WORKERS }) : null;
      return { d, main, fleet };
    };
    const statsOf = async (a: Audience, ids: number[]): Promise<LatencyStats> => {
      const complete = (xs: { alerts: { id: number }[] }[]) => xs.every((x) => ids.every((id) => x.alerts.some((al) => al.id === id)));
      await until(() => complete([a.main]), 10_000);
      let others = a.fleet ? await a.fleet.collect() : [];
      for (const deadline = Date.now() + 10_000; !complete(others); others = await a.fleet!.collect()) {
        if (Date.now() > deadline) throw new Error('the subscriber fleet missed alerts');
        await new Promise((r) => setTimeout(r, 50));
      }
      return latencyStats([a.main, ...others], ids, daemonOffsetUs);
    };
    log(`[${basename(modelDir)}] alert latency: ${alertRequests} injected requests, 1 subscriber`);
    const oneAudience = await connect(on, 1);
    await raiseAlerts(on, 3); // warm-up
    const oneIds = await raiseAlerts(on, alertRequests);
    const one = { stats: await statsOf(oneAudience, oneIds), ids: oneIds };
    const daemonClock = Math.min(...oneAudience.main.alerts.filter((x) => x.forwardAtUs !== undefined).map((x) => x.tsMs - (x.forwardAtUs! + daemonOffsetUs) / 1000));
    for (const x of subs.splice(0)) x.ws.terminate();
    // 100 subscribers on each of the five logs at once; requests go round-robin over the logs, so
    // the machine's load (shared, busy) falls on each alike. Then again with `parallel` requests at a time.
    const logs = [
      ['groupFull', on],
      ['inlineFull', inlineLog],
      ['groupNormal', groupNormalLog],
      ['inlineNormal', normalLog],
      ['memoryLog', memLog],
    ] as const;
    log(`[${basename(modelDir)}] alert latency, 100 subscribers on each of ${logs.map(([k]) => k).join(', ')}: ${alertRequests} requests each, interleaved`);
    const audiences = new Map<string, Audience>();
    for (const [k, d] of logs) audiences.set(k, await connect(d, 100));
    type LogKey = (typeof logs)[number][0];
    // With parallel > 1, a plain streamed request (no injection, no alert) runs beside each batch:
    // its gaps between tokens show what the alerts' writes hold back for everyone else (an fsync
    // on the event loop stalls every stream; the group-commit writer does not).
    // Besides forwardAtUs (stamped when the request's loop takes the step, so a wait before that,
    // e.g. behind another request's fsync on the event loop, is not in it): request sent → its
    // first alert received by the subscriber on this thread, both on this process's clock.
    const measureRound = async (parallel: number): Promise<{ stats: Record<LogKey, LatencyStats>; gaps: Record<LogKey, { p50Ms: number; p99Ms: number }>; sendToAlert: Record<LogKey, { p50Ms: number; p99Ms: number }> }> => {
      for (const [, d] of logs) await raiseAlerts(d, 2); // warm-up
      flushAllWrites(); // the setup's checkpoint and graph cache, so the logs' fsyncs measure the logs
      const ids = new Map<string, number[]>(logs.map(([k]) => [k, []]));
      const gaps = new Map<string, number[]>(logs.map(([k]) => [k, []]));
      const sent = new Map<string, { atWallUs: number; ids: number[] }[]>(logs.map(([k]) => [k, []]));
      for (let i = 0; i < alertRequests; i += parallel) {
        for (const [k, d] of logs) {
          const plain = parallel > 1 ? stream(d, { prompt: PROMPTS[(i / parallel) % PROMPTS.length], max_tokens: 12 }) : null;
          const atWallUs = nowUs() + processWallOffsetUs();
          const batch = await Promise.all(Array.from({ length: Math.min(parallel, alertRequests - i) }, (_, j) => raiseOne(d, i + j)));
          for (const b of batch) sent.get(k)!.push({ atWallUs, ids: b });
          ids.get(k)!.push(...batch.flat());
          const x = await plain;
          if (x) gaps.get(k)!.push(...x.tokenTimes.slice(1).map((t, n) => t - x.tokenTimes[n]));
        }
      }
      const stats = {} as Record<LogKey, LatencyStats>;
      const gapStats = {} as Record<LogKey, { p50Ms: number; p99Ms: number }>;
      const sendStats = {} as Record<LogKey, { p50Ms: number; p99Ms: number }>;
      for (const [k] of logs) {
        stats[k] = await statsOf(audiences.get(k)!, ids.get(k)!);
        const g = gaps.get(k)!;
        gapStats[k] = { p50Ms: round(quantile(g, 0.5), 3), p99Ms: round(quantile(g, 0.99), 3) };
        const receipt = new Map(audiences.get(k)!.main.alerts.map((x) => [x.id, x.receivedWallUs]));
        const firsts = sent.get(k)!.filter((r) => r.ids.length > 0).map((r) => (Math.min(...r.ids.map((id) => receipt.get(id) ?? Infinity)) - r.atWallUs) / 1000);
        sendStats[k] = { p50Ms: round(quantile(firsts, 0.5), 3), p99Ms: round(quantile(firsts, 0.99), 3) };
      }
      return { stats, gaps: gapStats, sendToAlert: sendStats };
    };
    let sequential: Awaited<ReturnType<typeof measureRound>>;
    let parallel: Awaited<ReturnType<typeof measureRound>>;
    try {
      sequential = await measureRound(1);
      log(`[${basename(modelDir)}] alert latency, the same with ${PARALLEL_STREAMS} injected requests at a time`);
      parallel = await measureRound(PARALLEL_STREAMS);
    } finally {
      for (const a of audiences.values()) await a.fleet?.close();
      for (const x of subs.splice(0)) x.ws.terminate();
    }
    const hundred = { stats: sequential.stats.groupFull };
    const alertsPerRequest = one.ids.length / alertRequests;

    // ---- concurrency ----
    const measureConcurrency = async (): Promise<NonNullable<ModelDaemonBench['concurrency']>> => {
      log(`[${basename(modelDir)}] concurrency: 1, 4, 16 streams × ${concReps}, ${concTokens} tokens each`);
      const levels = [1, 4, 16];
      const agg = new Map<number, number[]>(levels.map((l) => [l, []]));
      const perStream = new Map<number, StreamResult[]>(levels.map((l) => [l, []]));
      await Promise.all(Array.from({ length: 4 }, (_, i) => stream(on, { prompt: PROMPTS[i], max_tokens: 8 })));
      for (let r = 0; r < concReps; r++) {
        for (const c of r % 2 === 0 ? levels : [...levels].reverse()) {
          const t0 = performance.now();
          const rs = await Promise.all(Array.from({ length: c }, (_, i) => stream(on, { prompt: PROMPTS[i % PROMPTS.length] + '#'.repeat(Math.floor(i / PROMPTS.length)), max_tokens: concTokens })));
          const wall = (Math.max(...rs.map((x) => x.endedAt)) - t0) / 1000;
          for (const x of rs) if (x.error) throw new Error(`stream failed: ${JSON.stringify(x.error)}`);
          agg.get(c)!.push(rs.reduce((s, x) => s + (x.completionTokens ?? 0), 0) / wall);
          perStream.get(c)!.push(...rs);
        }
      }
      const levelStats: ConcurrencyLevel[] = levels.map((c) => {
        const rs = perStream.get(c)!;
        const gaps = rs.flatMap((x) => x.tokenTimes.slice(1).map((t, i) => t - x.tokenTimes[i]));
        return {
          streams: c,
          aggregateTokS: summarize(agg.get(c)!),
          perStreamTokS: summarize(rs.map(decodeRate)),
          ttftMs: summarize(rs.map((x) => x.tokenTimes[0] - x.startedAt)),
          interTokenP50Ms: round(quantile(gaps, 0.5), 3),
          interTokenP99Ms: round(quantile(gaps, 0.99), 3),
          tokensPerStream: median(rs.map((x) => x.completionTokens ?? 0)),
        };
      });
      const aggMedian = (c: number) => levelStats.find((l) => l.streams === c)!.aggregateTokS.median;
      return { maxTokens: concTokens, repetitions: concReps, levels: levelStats, speedup4: round(aggMedian(4) / aggMedian(1), 3), speedup16: round(aggMedian(16) / aggMedian(1), 3) };
    };
    const concurrency = latencyOnly ? null : await measureConcurrency();

    return {
      modelDir,
      modelName,
      fingerprint: mOn.fingerprint,
      ...engineOpts,
      probes: mOn.probes.map((p) => ({ id: p.id, hook: p.hook.join('+') })),
      monitorOverhead,
      alertLatency: {
        requests: alertRequests,
        alertsPerRequest,
        one: one.stats,
        hundred: hundred.stats,
        memoryLog: sequential.stats.memoryLog,
        normalSync: sequential.stats.inlineNormal,
        inlineFull: sequential.stats.inlineFull,
        groupNormal: sequential.stats.groupNormal,
        sendToFirstAlert: sequential.sendToAlert,
        parallel: { streams: PARALLEL_STREAMS, requests: alertRequests, ...parallel.stats, plainStreamGaps: parallel.gaps, sendToFirstAlert: parallel.sendToAlert },
        clockCheckMs: { daemonOffset: round(daemonOffsetUs / 1000, 3), benchOffset: round(processWallOffsetUs() / 1000, 3), daemon: round(daemonClock, 3) },
      },
      concurrency,
      rssBytes: twin.rssBytes(),
    };
  } finally {
    for (const s of subs) s.ws.terminate();
    await twin.stop();
  }
}

/**
 * The monitor's own work per token, in this process with no engine: ProbeBank.score over taps of
 * the model's width, RequestMonitor.step (aggregators, alert rule, verbalization over the text)
 * and the per-probe score histograms, for `tokens` tokens of one request. Returns µs per token.
 */
async function monitorMicro(modelDir: string, probePaths: string[], fingerprint: string, dModel: number, tokens: number): Promise<number> {
  const { config } = loadConfig({ argv: ['--model', modelDir] });
  const probes = await Promise.all(probePaths.map((p) => loadProbe(p, fingerprint)));
  const bank = new ProbeBank(probes);
  const metrics = createMetrics({ version: 'bench' });
  const taps = new Map(bank.hooks().map((h) => [h, { positions: 1, dModel, data: Float32Array.from({ length: dModel }, (_, i) => Math.sin(i)) }]));
  const words = ['def', ' parse', '(', 'line', '):', '\n', '    ', 'return', ' line', '.split', '()'];
  const runOnce = () => {
    let id = 0;
    const monitor = new RequestMonitor({
      requestId: 'bench',
      model: 'bench',
      probes: bank.probes.map((probe) => ({ probe, rule: ruleForProbe(config, probe.id, probe.threshold) })),
      verbalization: config.verbalization,
      emit: config.alerts.emit,
      excerptChars: config.alerts.excerptChars,
      raise: (drafts) => drafts.map(() => ++id),
      onScore: (probeId, score) => metrics.observeProbeScore(probeId, score),
    });
    const t0 = performance.now();
    // Windowed probes (the generic detector) read each position's token id.
    for (let t = 0; t < tokens; t++) monitor.step({ position: t, text: words[t % words.length] }, bank.score(taps, [100 + (t % words.length)]));
    monitor.finish();
    return ((performance.now() - t0) * 1000) / tokens;
  };
  for (let i = 0; i < 3; i++) runOnce(); // warm up the JIT
  return median(Array.from({ length: 7 }, runOnce));
}

async function alertCount(d: DaemonProcess): Promise<number> {
  const text = await (await fetch(`${d.url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith('latentwatch_alerts_total{')) sum += Number(line.split(' ').at(-1));
  return sum;
}

function modelSummary(m: ModelDaemonBench): Record<string, number | null> {
  const o = m.monitorOverhead;
  const c = m.concurrency;
  const a = m.alertLatency;
  const level = (n: number) => c?.levels.find((l) => l.streams === n)?.aggregateTokS.median;
  const r3 = (x: number | undefined) => (x === undefined ? null : round(x, 3));
  return {
    monitor_overhead_pct: o?.pct ?? null,
    monitor_overhead_paired_pct: o?.pairedPct ?? null,
    monitor_overhead_cpu_pct: o?.cpuPct ?? null,
    monitor_us_per_token: o?.monitorUsPerToken ?? null,
    monitor_pct_of_token: o?.monitorPctOfToken ?? null,
    daemon_decode_tok_s_monitored: r3(o?.onTokS.median),
    daemon_decode_tok_s_unmonitored: r3(o?.offTokS.median),
    alert_p50_ms: a.one.p50Ms,
    alert_p99_ms: Math.max(a.one.p99Ms, a.hundred.p99Ms),
    alert_p99_ms_1_subscriber: a.one.p99Ms,
    // 100 subscribers; the daemon as shipped (synchronous=FULL, group-commit writer), then the other logs of the same run.
    alert_p50_ms_100_subscribers: a.hundred.p50Ms,
    alert_p99_ms_100_subscribers: a.hundred.p99Ms,
    alert_p99_ms_100_subscribers_inline_full: a.inlineFull.p99Ms,
    alert_p99_ms_100_subscribers_group_normal: a.groupNormal.p99Ms,
    alert_p99_ms_100_subscribers_sync_normal: a.normalSync.p99Ms,
    alert_p99_ms_memory_log: a.memoryLog.p99Ms,
    alert_p99_ratio_inline_full_to_group_full: round(a.inlineFull.p99Ms / a.hundred.p99Ms, 3),
    alert_p99_ms_parallel_group_full: a.parallel.groupFull.p99Ms,
    alert_p99_ms_parallel_inline_full: a.parallel.inlineFull.p99Ms,
    alert_p99_ms_parallel_group_normal: a.parallel.groupNormal.p99Ms,
    alert_p99_ms_parallel_memory_log: a.parallel.memoryLog.p99Ms,
    alert_p99_ratio_parallel_inline_full_to_group_full: round(a.parallel.inlineFull.p99Ms / a.parallel.groupFull.p99Ms, 3),
    plain_stream_gap_p99_ms_group_full: a.parallel.plainStreamGaps.groupFull.p99Ms,
    plain_stream_gap_p99_ms_inline_full: a.parallel.plainStreamGaps.inlineFull.p99Ms,
    plain_stream_gap_p99_ms_memory_log: a.parallel.plainStreamGaps.memoryLog.p99Ms,
    send_to_alert_p99_ms_group_full: a.sendToFirstAlert.groupFull.p99Ms,
    send_to_alert_p99_ms_inline_full: a.sendToFirstAlert.inlineFull.p99Ms,
    send_to_alert_p99_ms_parallel_group_full: a.parallel.sendToFirstAlert.groupFull.p99Ms,
    send_to_alert_p99_ms_parallel_inline_full: a.parallel.sendToFirstAlert.inlineFull.p99Ms,
    concurrency1_tok_s: r3(level(1)),
    concurrency4_tok_s: r3(level(4)),
    concurrency16_tok_s: r3(level(16)),
    concurrency4_speedup: c?.speedup4 ?? null,
    concurrency16_speedup: c?.speedup16 ?? null,
  };
}

export async function runDaemonBench(o: DaemonBenchOptions = {}): Promise<DaemonBenchResult> {
  const t0 = performance.now();
  const quick = o.quick ?? false;
  const log = o.log ?? ((l: string) => console.error(l));
  const machine = describeMachine();
  const root = mkdtempSync(join(tmpdir(), 'lw-bench-daemon-'));
  const models: ModelDaemonBench[] = [];
  const diskFlush = measureDiskFlush(root);
  try {
    for (const m of o.models ?? [DEFAULT_MODEL_DIR]) {
      const precision = o.precision ?? (basename(m) === basename(DEFAULT_MODEL_DIR) ? 'fp32' : 'int4');
      models.push(await benchModel(resolve(m), quick, o.latencyOnly ?? false, root, log, { precision, spinning: o.spinning ?? false, engineThread: o.engineThread ?? true }));
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  // The first (default) model's figures under the plain keys; every other model's again with its
  // precision and name as a suffix (e.g. concurrency4_speedup_int4_qwen2_5_0_5b_random).
  const summary: Record<string, number | null> = { ...modelSummary(models[0]) };
  for (const m of models.slice(1)) {
    const tag = `${m.precision}_${m.modelName.replace(/[^A-Za-z0-9]+/g, '_').toLowerCase()}`;
    for (const [k, v] of Object.entries(modelSummary(m))) summary[`${k}_${tag}`] = v;
  }
  return {
    kind: 'latentwatch.bench.daemon',
    version: 1,
    quick,
    machine,
    models,
    diskFlush,
    summary,
    seconds: round((performance.now() - t0) / 1000, 1),
  };
}

const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '–');

function latencyRow(n: number, logKind: string, x: LatencyStats): (string | number)[] {
  return [n, logKind, x.receipts, x.p50Ms, x.p90Ms, x.p99Ms, x.maxMs, `${f(x.firstOfTokenP50Ms, 2)} / ${f(x.firstOfTokenP99Ms, 2)}`, `${f(x.lastReceiptP50Ms, 2)} / ${f(x.lastReceiptP99Ms, 2)}`];
}

function monitorOverheadMarkdown(m: ModelDaemonBench, o: NonNullable<ModelDaemonBench['monitorOverhead']>): string[] {
  return [
    `### Monitor overhead`,
    '',
    `${o.repetitions} alternating pairs of one greedy streamed completion (${o.completionTokens} tokens${o.sameOutput ? ', identical text on both' : ', TEXT DIFFERED'}); decode tokens/s seen by the client; ${o.alertsDuringRuns} alert(s) raised during the runs.`,
    '',
    markdownTable(
      ['daemon', 'decode tok/s (median)', 'p10', 'p90'],
      [
        ['every probe + alert path', o.onTokS.median, o.onTokS.p10, o.onTokS.p90],
        ['no probes', o.offTokS.median, o.offTokS.p10, o.offTokS.p90],
      ],
    ),
    '',
    `Overhead: **${f(o.pct, 2)} %** of medians (paired median ${f(o.pairedPct, 2)} %). Daemon CPU time per token (all threads): ${f(o.cpuUsPerTokenOn, 0)} µs monitored vs ${f(o.cpuUsPerTokenOff, 0)} µs unmonitored: **${f(o.cpuPct, 2)} %** (CPU time includes onnxruntime's threads spin-waiting while the main thread scores). The monitor's own work timed alone (${m.probes.length} probes: scores, alert rule, verbalization, histograms): ${f(o.monitorUsPerToken, 1)} µs per token = ${f(o.monitorPctOfToken, 2)} % of an unmonitored token here.`,
    '',
  ];
}

function concurrencyMarkdown(c: NonNullable<ModelDaemonBench['concurrency']>): string[] {
  return [
    `### Concurrency (${c.maxTokens} tokens per stream, ${c.repetitions} repetitions, monitored daemon)`,
    '',
    markdownTable(
      ['streams', 'aggregate tok/s', 'per-stream tok/s', 'TTFT ms (median)', 'TTFT ms (p90)', 'inter-token p50 ms', 'inter-token p99 ms', 'speedup vs 1'],
      c.levels.map((l) => [l.streams, l.aggregateTokS.median, l.perStreamTokS.median, l.ttftMs.median, l.ttftMs.p90, l.interTokenP50Ms, l.interTokenP99Ms, l.aggregateTokS.median / c.levels[0].aggregateTokS.median]),
    ),
    '',
  ];
}

export function daemonBenchMarkdown(r: DaemonBenchResult): string {
  const d = r.diskFlush;
  const parts = [
    `# Daemon benchmark${r.quick ? ' (quick)' : ''}`,
    '',
    machineMarkdown(r.machine),
    '',
    `Disk under the alert logs (${d.dir}): fdatasync of a 4 KiB append, ${d.samples} samples: p50 ${f(d.p50Ms, 2)} ms, p90 ${f(d.p90Ms, 2)} ms, p99 ${f(d.p99Ms, 2)} ms, max ${f(d.maxMs, 2)} ms: the floor of an append with synchronous=FULL.`,
    '',
  ];
  for (const m of r.models) {
    const o = m.monitorOverhead;
    const a = m.alertLatency;
    parts.push(
      `## ${m.modelName} (${m.fingerprint}), ${m.precision}, onnxruntime spinning ${m.spinning ? 'on' : 'off'}, forward passes on ${m.engineThread ? "the engine's own thread" : 'the event loop'}`,
      '',
      `Probes (monitored daemon): ${m.probes.map((p) => `${p.id} @ ${p.hook}`).join(', ')}. Daemon RSS ${f((m.rssBytes ?? NaN) / 2 ** 20, 0)} MiB.`,
      '',
      ...(o ? monitorOverheadMarkdown(m, o) : []),
      `### Alert latency (forward pass → WebSocket receipt)`,
      '',
      `${a.requests} admin-injected requests one at a time, ${f(a.alertsPerRequest, 1)} alert(s) each (every probe after the injection fires on the first generated token). Clocks: each process's (and subscriber thread's) monotonic epoch clock differs from the wall clock by a few ms (daemon ${f(a.clockCheckMs.daemonOffset, 3)} ms, bench ${f(a.clockCheckMs.benchOffset, 3)} ms), so both ends are corrected to the wall clock; check: min(alert ts − corrected forwardAtUs) ${f(a.clockCheckMs.daemon, 3)} ms (within (−1, 0] and the append's delay when right: ts is whole ms).`,
      '',
      markdownTable(
        ['subscribers', 'alert log', 'receipts', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'first alert of a token: p50 / p99 ms', 'last subscriber: p50 / p99 ms'],
        (
          [
            [1, 'SQLite FULL, group-commit worker (default)', a.one],
            [100, 'SQLite FULL, group-commit worker (default)', a.hundred],
            [100, 'SQLite FULL, on the event loop', a.inlineFull],
            [100, 'SQLite NORMAL, group-commit worker', a.groupNormal],
            [100, 'SQLite NORMAL, on the event loop', a.normalSync],
            [100, 'in memory', a.memoryLog],
          ] as const
        ).map(([n, logKind, x]) => latencyRow(n, logKind, x)),
      ),
      '',
      `The 100-subscriber rows ran at once (100 subscribers on each log), requests round-robin over the logs. p99 FULL on the event loop ÷ FULL with group commit: **${f(a.inlineFull.p99Ms / a.hundred.p99Ms, 2)}**. The same with ${a.parallel.streams} injected requests at a time (${a.parallel.requests} per log):`,
      '',
      markdownTable(
        ['subscribers', 'alert log', 'receipts', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'first alert of a token: p50 / p99 ms', 'last subscriber: p50 / p99 ms', 'plain stream beside: token gap p50 / p99 ms'],
        (
          [
            [100, 'SQLite FULL, group-commit worker (default)', a.parallel.groupFull, a.parallel.plainStreamGaps.groupFull],
            [100, 'SQLite FULL, on the event loop', a.parallel.inlineFull, a.parallel.plainStreamGaps.inlineFull],
            [100, 'SQLite NORMAL, group-commit worker', a.parallel.groupNormal, a.parallel.plainStreamGaps.groupNormal],
            [100, 'SQLite NORMAL, on the event loop', a.parallel.inlineNormal, a.parallel.plainStreamGaps.inlineNormal],
            [100, 'in memory', a.parallel.memoryLog, a.parallel.plainStreamGaps.memoryLog],
          ] as const
        ).map(([n, logKind, x, g]) => [...latencyRow(n, logKind, x), `${f(g.p50Ms, 2)} / ${f(g.p99Ms, 2)}`]),
      ),
      '',
      `p99 ratio FULL on the event loop ÷ FULL with group commit, ${a.parallel.streams} at a time: **${f(a.parallel.inlineFull.p99Ms / a.parallel.groupFull.p99Ms, 2)}**.`,
      '',
      `forwardAtUs is stamped when the request's loop takes its step: a wait before that (behind another request's fsync on a blocked event loop) is not in the figures above. Measured on the bench's clock alone, request sent → its first alert received (the same requests; the request's prompt and first token are in it, alike for every log):`,
      '',
      markdownTable(
        ['alert log', 'one at a time: p50 / p99 ms', `${a.parallel.streams} at a time: p50 / p99 ms`],
        (
          [
            ['SQLite FULL, group-commit worker (default)', 'groupFull'],
            ['SQLite FULL, on the event loop', 'inlineFull'],
            ['SQLite NORMAL, group-commit worker', 'groupNormal'],
            ['SQLite NORMAL, on the event loop', 'inlineNormal'],
            ['in memory', 'memoryLog'],
          ] as const
        ).map(([name, k]) => [name, `${f(a.sendToFirstAlert[k].p50Ms, 2)} / ${f(a.sendToFirstAlert[k].p99Ms, 2)}`, `${f(a.parallel.sendToFirstAlert[k].p50Ms, 2)} / ${f(a.parallel.sendToFirstAlert[k].p99Ms, 2)}`]),
      ),
      '',
      ...(m.concurrency ? concurrencyMarkdown(m.concurrency) : []),
    );
  }
  parts.push(`Summary: ${JSON.stringify(r.summary)}`, '', `Total ${r.seconds.toFixed(0)} s.`);
  return parts.join('\n');
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['out', 'md', 'model', 'big-model', 'precision']);
  const quick = a.has('quick');
  const models = [a.get('model') ?? DEFAULT_MODEL_DIR];
  if (a.has('big') || a.has('big-model')) models.push(a.get('big-model') ?? '/tmp/lw-bench/qwen2.5-0.5b-random');
  const precision = a.get('precision') as DaemonBenchOptions['precision'];
  const latencyOnly = a.has('latency-only');
  const res = await runDaemonBench({ quick, models, precision, spinning: a.has('spinning'), engineThread: !a.has('no-engine-thread'), latencyOnly });
  writeBenchResult(a, `daemon${quick ? '-quick' : ''}${latencyOnly ? '-latency' : ''}`, res, daemonBenchMarkdown(res));
}

runIfMain(import.meta.url, main);
