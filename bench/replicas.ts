/**
 * Several replicas, one alert stream (issue 15): alert latency and delivery with 3 daemons on one
 * NATS JetStream stream and 100 subscribers spread over them, against one daemon with its SQLite
 * log and 100 subscribers, in one run (so the ratio is measured on the same machine, same load).
 *
 *   npx tsx bench/replicas.ts [--quick] [--model DIR] [--out FILE.json] [--md FILE.md]
 *
 * Latency: receipt time of a live alert minus `forwardAtUs` (the raising daemon's clock when the
 * forward pass of the token returned; all processes on this host share the epoch clock), per
 * receipt, split into receipts on the replica that raised the alert and on another one. Delivery:
 * every acknowledged alert (an id in a verdict) must reach every subscriber exactly once.
 * Traffic: admin-injected requests, one at a time per replica, on every replica at once.
 * Needs nats-server (scripts/test-deps.sh). Writes docs-ready JSON and Markdown.
 */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { DEFAULT_MODEL_DIR } from '../src/paths.js';
import { bundledProbes } from '../src/daemon/daemon.js';
import { trainBenchProbes } from './lib/bench-probes.js';
import { processWallOffsetUs, receiptLatencyMs } from './lib/clients.js';
import { spawnDaemonProcess, type DaemonProcess } from './lib/daemon-process.js';
import { flushAllWrites } from './lib/disk-flush.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { startNats, type NatsServer } from './lib/nats-server.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult } from './lib/report.js';
import { round } from './lib/stats.js';
import { startSubscriberFleet, type SubscriberFleet } from './lib/subscriber-fleet.js';
import { ADMIN_KEY, alertsCounted, clockOffsetOf, collectAll, delivery, injectedIds, latency, type Latency } from './lib/alert-receipts.js';

const SUBSCRIBERS = 100;

export interface ReplicasBench {
  machine: MachineDescription;
  model: string;
  requestsPerReplica: number;
  subscribers: number;
  single: { alerts: number; latency: Latency; missing: number; duplicates: number };
  replicas: {
    count: number;
    alerts: number;
    latency: Latency;
    sameReplica: Latency;
    crossReplica: Latency;
    missing: number;
    duplicates: number;
    /** Sum of latentwatch_alerts_total over the replicas; equals alertsRaised (measured + warm-up alerts) when the counters add up. */
    alertsCounted: number;
    alertsRaised: number;
  };
  /** The same three replicas with traffic on A only (the single node's load): the NATS hop without three engines sharing the cores. */
  oneRaising: { alerts: number; latency: Latency; sameReplica: Latency; crossReplica: Latency; missing: number; duplicates: number };
  /** The three replicas again with every forward pass on the event loop (`--no-engine-thread`), traffic on all. */
  eventLoopEngine: { alerts: number; latency: Latency; sameReplica: Latency; crossReplica: Latency; missing: number; duplicates: number; alertsCounted: number; alertsRaised: number };
  /** p99 three replicas on NATS / p99 one node on SQLite, same run. */
  p99Ratio: number;
  /** p99 with passes on the event loop / p99 with the engine's own thread (three replicas, traffic on all), same run. */
  p99RatioEventLoop: number;
  /** p99 three replicas, traffic on A only / p99 one node. */
  p99RatioOneRaising: number;
  /** The bench's wall clock − monotonic epoch clock (ms); receipts and forwardAtUs are both corrected to the wall clock (lib/clients.ts wallOffsetUs). */
  clockCheckMs: number;
  /** Each daemon's wall clock − its forwardAtUs clock (ms). */
  daemonClockOffsetsMs: { single: number; replicas: number[] };
  seconds: number;
}

export async function runReplicasBench(o: { modelDir: string; quick: boolean; log?: (l: string) => void }): Promise<ReplicasBench> {
  const log = o.log ?? ((l: string) => console.error(l));
  const t0 = Date.now();
  const root = mkdtempSync(join(tmpdir(), 'lw-bench-replicas-'));
  const requests = o.quick ? 15 : 50;
  log(`training bench probes on ${basename(o.modelDir)}`);
  mkdirSync(join(root, 'probes'), { recursive: true });
  const set = await trainBenchProbes(o.modelDir, { dir: join(root, 'probes') });
  const probeArgs = [...bundledProbes(o.modelDir), ...set.probes.map((p) => p.path)].flatMap((p) => ['--probe', p]);
  const env = { LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1', LATENTWATCH_LOG_LEVEL: 'warn' };
  const base = ['--model', o.modelDir, ...probeArgs, '--port', '0', '--max-concurrent', '4'];
  const daemons: DaemonProcess[] = [];
  const fleets: SubscriberFleet[] = [];
  let nats: NatsServer | undefined;
  try {
    // ---- one node, SQLite log, 100 subscribers ----
    log('one daemon, SQLite alert log, 100 subscribers');
    const single = await spawnDaemonProcess({ argv: [...base, '--alert-log', join(root, 'single.db')], env });
    daemons.push(single);
    const model = ((await (await fetch(`${single.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0].id;
    fleets.push(await startSubscriberFleet(single.url, SUBSCRIBERS, { key: ADMIN_KEY, workers: 4 }));
    for (let i = 0; i < 3; i++) await injectedIds(single, set, model, i); // warm-up
    flushAllWrites(); // the checkpoint and graph cache the setup wrote, so the log's fsyncs measure the log
    const singleIds: number[] = [];
    for (let i = 0; i < requests; i++) singleIds.push(...(await injectedIds(single, set, model, i)));
    const singleSubs = await collectAll(fleets, singleIds);
    const want = new Set(singleIds);
    const singleOffsetUs = clockOffsetOf(single);
    const singleLat = singleSubs.flatMap((s) => s.alerts.flatMap((a) => (want.has(a.id) ? receiptLatencyMs(a, singleOffsetUs) ?? [] : [])));
    const singleResult = { alerts: singleIds.length, latency: latency(singleLat), ...delivery(singleSubs, singleIds) };
    for (const f of fleets.splice(0)) await f.close();
    await single.stop();
    daemons.splice(0);

    // ---- three replicas on one JetStream stream, 100 subscribers spread over them ----
    nats = await startNats();
    const natsUrl = nats.url;
    const names = ['A', 'B', 'C'];
    /** Three replicas (extra flags `extra`), their subscribers, traffic on all and then (`alsoOnlyA`) on A only; stopped after. */
    const threeReplicas = async (label: string, extra: readonly string[], alsoOnlyA: boolean) => {
      log(`three daemons on ${natsUrl} (${label}), ${SUBSCRIBERS} subscribers spread over them`);
      for (const name of names) daemons.push(await spawnDaemonProcess({ argv: [...base, ...extra, '--nats', natsUrl, '--replica', name, '--state-dir', join(root, `${label}-${name}`)], env }));
      for (let k = 0; k < names.length; k++) fleets.push(await startSubscriberFleet(daemons[k].url, Math.floor(SUBSCRIBERS / names.length) + (k < SUBSCRIBERS % names.length ? 1 : 0), { key: ADMIN_KEY, workers: 2 }));
      let warmup = 0;
      for (const d of daemons) for (let i = 0; i < 2; i++) warmup += (await injectedIds(d, set, model, i)).length;
      const offsets = daemons.map(clockOffsetOf);
      flushAllWrites();
      /** Traffic on `raising` (indexes into daemons) at once, one request at a time on each; every receipt's latency, split by where it arrived. */
      const round3 = async (raising: readonly number[]) => {
        const raisedBy = new Map<number, number>();
        await Promise.all(
          raising.map(async (k) => {
            for (let i = 0; i < requests; i++) for (const id of await injectedIds(daemons[k], set, model, i)) raisedBy.set(id, k);
          }),
        );
        const ids = [...raisedBy.keys()].sort((x, y) => x - y);
        const perFleet = await Promise.all(fleets.map(async (f) => (await collectAll([f], ids)).map((s) => ({ ...s }))));
        const all: number[] = [];
        const same: number[] = [];
        const cross: number[] = [];
        perFleet.forEach((subs, k) => {
          for (const s of subs) {
            for (const a of s.alerts) {
              const by = raisedBy.get(a.id);
              const ms = by === undefined ? null : receiptLatencyMs(a, offsets[by]);
              if (ms === null) continue;
              all.push(ms);
              (by === k ? same : cross).push(ms);
            }
          }
        });
        return { ids, perFleet, all, same, cross };
      };
      const every = await round3(daemons.map((_, k) => k));
      const counted = (await Promise.all(daemons.map(alertsCounted))).reduce((x, y) => x + y, 0);
      const result = { count: names.length, alerts: every.ids.length, latency: latency(every.all), sameReplica: latency(every.same), crossReplica: latency(every.cross), ...delivery(every.perFleet.flat(), every.ids), alertsCounted: counted, alertsRaised: every.ids.length + warmup };
      // The same path with a third of the compute: traffic on A only (the single node's load), so
      // what the NATS hop costs shows apart from three engines sharing the cores.
      let onlyA: Awaited<ReturnType<typeof round3>> | undefined;
      if (alsoOnlyA) {
        log('traffic on replica A only');
        onlyA = await round3([0]);
      }
      const oneRaising = onlyA && { alerts: onlyA.ids.length, latency: latency(onlyA.all), sameReplica: latency(onlyA.same), crossReplica: latency(onlyA.cross), ...delivery(onlyA.perFleet.flat(), onlyA.ids) };
      for (const f of fleets.splice(0)) await f.close();
      for (const d of daemons.splice(0)) await d.stop();
      return { result, oneRaising, offsets };
    };
    const shipped = await threeReplicas('engine-thread', [], true);
    // The same with every forward pass on the event loop (as before the engine had a thread of its
    // own): what a pass holding the loop costs the other replicas' alerts.
    const onLoop = await threeReplicas('event-loop', ['--no-engine-thread'], false);
    const replicas = shipped.result;
    const oneRaising = shipped.oneRaising!;
    const offsets = shipped.offsets;
    const { count: _count, ...eventLoop } = onLoop.result;
    const clockCheckMs = round(processWallOffsetUs() / 1000, 3);
    return {
      machine: describeMachine(),
      model: basename(o.modelDir),
      requestsPerReplica: requests,
      subscribers: SUBSCRIBERS,
      single: singleResult,
      replicas,
      oneRaising,
      eventLoopEngine: eventLoop,
      p99Ratio: round(replicas.latency.p99Ms / singleResult.latency.p99Ms, 2),
      p99RatioEventLoop: round(eventLoop.latency.p99Ms / replicas.latency.p99Ms, 2),
      p99RatioOneRaising: round(oneRaising.latency.p99Ms / singleResult.latency.p99Ms, 2),
      daemonClockOffsetsMs: { single: round(singleOffsetUs / 1000, 3), replicas: offsets.map((x) => round(x / 1000, 3)) },
      clockCheckMs,
      seconds: round((Date.now() - t0) / 1000, 1),
    };
  } finally {
    for (const f of fleets) await f.close().catch(() => undefined);
    for (const d of daemons) await d.stop().catch(() => undefined);
    await nats?.stop();
  }
}

export function replicasBenchMarkdown(r: ReplicasBench): string {
  const row = (what: string, l: Latency, alerts: number, missing: number | string, dup: number | string) => [what, alerts, l.receipts, l.p50Ms, l.p90Ms, l.p99Ms, l.maxMs, missing, dup];
  return [
    '# Several replicas, one alert stream',
    '',
    machineMarkdown(r.machine),
    '',
    `Model ${r.model}; ${r.subscribers} WebSocket subscribers (admin key, worker threads); ${r.requestsPerReplica} admin-injected requests per daemon, one at a time per daemon, on every daemon at once. Latency = receipt − forwardAtUs of the raising daemon, both on the wall clock.`,
    '',
    markdownTable(
      ['setup', 'alerts', 'receipts', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'missing', 'duplicates'],
      [
        row('1 daemon, SQLite log, 100 subscribers', r.single.latency, r.single.alerts, r.single.missing, r.single.duplicates),
        row(`${r.replicas.count} daemons on one JetStream stream, subscribers spread`, r.replicas.latency, r.replicas.alerts, r.replicas.missing, r.replicas.duplicates),
        row('… receipts on the raising replica', r.replicas.sameReplica, r.replicas.alerts, '', ''),
        row('… receipts on another replica', r.replicas.crossReplica, r.replicas.alerts, '', ''),
        row(`${r.replicas.count} daemons on one JetStream stream, traffic on A only`, r.oneRaising.latency, r.oneRaising.alerts, r.oneRaising.missing, r.oneRaising.duplicates),
        row('… receipts on A', r.oneRaising.sameReplica, r.oneRaising.alerts, '', ''),
        row('… receipts on B and C', r.oneRaising.crossReplica, r.oneRaising.alerts, '', ''),
        row(`${r.replicas.count} daemons, traffic on all, forward passes on the event loop (--no-engine-thread)`, r.eventLoopEngine.latency, r.eventLoopEngine.alerts, r.eventLoopEngine.missing, r.eventLoopEngine.duplicates),
        row('… receipts on the raising replica', r.eventLoopEngine.sameReplica, r.eventLoopEngine.alerts, '', ''),
        row('… receipts on another replica', r.eventLoopEngine.crossReplica, r.eventLoopEngine.alerts, '', ''),
      ],
    ),
    '',
    `p99 ratio (3 replicas on NATS / 1 node on SQLite, same run): **${r.p99Ratio}**; with traffic on A only: **${r.p99RatioOneRaising}**; forward passes on the event loop / on the engine's thread (3 replicas, traffic on all): **${r.p99RatioEventLoop}**.`,
    '',
    `Clocks: each process's and subscriber thread's monotonic epoch clock (forwardAtUs, receipt) differs from the wall clock by a few ms; both ends are corrected to it (bench ${r.clockCheckMs} ms, daemons ${r.daemonClockOffsetsMs.single} / ${r.daemonClockOffsetsMs.replicas.join(', ')} ms).`,
    '',
    `Sum of latentwatch_alerts_total over the replicas: ${r.replicas.alertsCounted}; alerts raised (measured + warm-up): ${r.replicas.alertsRaised} (event-loop run: ${r.eventLoopEngine.alertsCounted} / ${r.eventLoopEngine.alertsRaised}).`,
    '',
    `Total ${r.seconds} s.`,
  ].join('\n');
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['out', 'md', 'model']);
  const quick = a.has('quick');
  const res = await runReplicasBench({ modelDir: a.get('model') ?? DEFAULT_MODEL_DIR, quick });
  writeBenchResult(a, `replicas${quick ? '-quick' : ''}`, res, replicasBenchMarkdown(res));
}

runIfMain(import.meta.url, main);
