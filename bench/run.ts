/**
 * The whole benchmark (issue 6): the engine bench (bench/engine.ts: prefill/decode at the
 * Qwen2.5-0.5B shape against this machine's memory-bandwidth limit), the peers bench
 * (bench/peers.ts: transformers.js on the same int4 graph and llama.cpp on GGUFs of the same
 * weights, in one process with our engine) and the daemon bench (bench/daemon.ts: monitor overhead,
 * alert latency, concurrency), one after the other, into one JSON and one Markdown file with the
 * machine described.
 *
 *   npm run bench -- [--quick] [--out FILE.json] [--md FILE.md] [--skip-engine] [--skip-peers] [--skip-daemon]
 *   (npm run bench runs `tsx bench/run.ts`)
 *
 * The summary always has these keys (null when not measured, with `<key>_reason` saying why):
 * decode_tok_s_int4, bandwidth_limit_tok_s_int4, decode_tok_s_transformersjs_int4,
 * monitor_overhead_pct, alert_p99_ms, concurrency4_speedup; plus the rest of both benches' summaries.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { daemonBenchMarkdown, runDaemonBench, type DaemonBenchResult } from './daemon.js';
import { DEFAULT_CKPT, engineBenchMarkdown, runEngineBench, type EngineBenchResult } from './engine.js';
import { peersBenchMarkdown, runPeersBench, type PeersBenchResult } from './peers.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult } from './lib/report.js';
import { round } from './lib/stats.js';
import { DEFAULT_MODEL_DIR } from '../src/paths.js';


export const REQUIRED_KEYS = ['decode_tok_s_int4', 'bandwidth_limit_tok_s_int4', 'decode_tok_s_transformersjs_int4', 'monitor_overhead_pct', 'alert_p99_ms', 'concurrency4_speedup'] as const;

export interface BenchResult {
  kind: 'latentwatch.bench';
  version: 1;
  quick: boolean;
  machine: MachineDescription;
  summary: Record<string, number | string | null>;
  /** Issue 6's targets, each with the measured ratio. */
  targets: { name: string; target: string; measured: number | null; met: boolean | null }[];
  engine: EngineBenchResult | { error: string } | null;
  peers: PeersBenchResult | { error: string } | null;
  daemon: DaemonBenchResult | { error: string } | null;
  seconds: number;
}

export interface BenchOptions {
  quick?: boolean;
  skipEngine?: boolean;
  skipPeers?: boolean;
  skipDaemon?: boolean;
  log?: (line: string) => void;
}

export async function runBench(o: BenchOptions = {}): Promise<BenchResult> {
  const t0 = performance.now();
  const quick = o.quick ?? false;
  const log = o.log ?? ((l: string) => console.error(l));
  const machine = describeMachine();
  const summary: Record<string, number | string | null> = {};
  // One failing half must not lose the other: record the error and go on.
  const runHalf = async <T extends { summary: Record<string, number | string | null> }>(name: string, run: () => Promise<T>): Promise<T | { error: string }> => {
    log(`== ${name} bench`);
    try {
      const r = await run();
      Object.assign(summary, r.summary);
      return r;
    } catch (e) {
      log(`${name} bench failed: ${String(e)}`);
      return { error: String((e as Error).stack ?? e) };
    }
  };
  const engine = o.skipEngine ? null : await runHalf('engine', () => runEngineBench({ quick, log }));
  const peers = o.skipPeers ? null : await runHalf('peers', () => runPeersBench({ quick, log }));
  // Beside the built-in model, the Qwen2.5-0.5B shape at int4 (written by the engine bench)
  // when present: a model whose decode reads its weights from memory, as production models do.
  const daemon = o.skipDaemon ? null : await runHalf('daemon', () => runDaemonBench({ quick, log, models: [DEFAULT_MODEL_DIR, ...(existsSync(join(DEFAULT_CKPT, 'config.json')) ? [DEFAULT_CKPT] : [])] }));
  const why = (k: string): string => {
    const half = ['monitor_overhead_pct', 'alert_p99_ms', 'concurrency4_speedup'].includes(k) ? 'daemon' : k === 'decode_tok_s_transformersjs_int4' ? 'peers' : 'engine';
    const r = half === 'daemon' ? daemon : half === 'peers' ? peers : engine;
    if (r === null) return `the ${half} bench was skipped`;
    if ('error' in r) return `the ${half} bench failed: ${r.error.split('\n')[0]}`;
    return `not reported by the ${half} bench`;
  };
  for (const k of REQUIRED_KEYS) {
    if (summary[k] === undefined || summary[k] === null || (typeof summary[k] === 'number' && !Number.isFinite(summary[k]))) {
      summary[k] = null;
      summary[`${k}_reason`] ??= why(k);
    }
  }
  const num = (k: string) => (typeof summary[k] === 'number' ? (summary[k] as number) : null);
  const ratio = (a: number | null, b: number | null) => (a !== null && b !== null && b !== 0 ? round(a / b, 3) : null);
  const decodeRatio = ratio(num('decode_tok_s_int4'), num('bandwidth_limit_tok_s_int4'));
  const decodeRatioB128 = ratio(num('decode_tok_s_int4_b128'), num('bandwidth_limit_tok_s_int4_b128'));
  const targets: BenchResult['targets'] = [
    { name: 'int4 decode ÷ bandwidth limit', target: '≥ 0.8', measured: decodeRatio, met: decodeRatio === null ? null : decodeRatio >= 0.8 },
    { name: 'int4 (block 128) decode ÷ bandwidth limit', target: '≥ 0.8', measured: decodeRatioB128, met: decodeRatioB128 === null ? null : decodeRatioB128 >= 0.8 },
    { name: 'monitor overhead %', target: '≤ 2', measured: num('monitor_overhead_pct'), met: num('monitor_overhead_pct') === null ? null : num('monitor_overhead_pct')! <= 2 },
    { name: 'alert p99 ms (loopback)', target: '≤ 10', measured: num('alert_p99_ms'), met: num('alert_p99_ms') === null ? null : num('alert_p99_ms')! <= 10 },
    { name: '4 streams ÷ 1 stream aggregate tok/s', target: '≥ 2', measured: num('concurrency4_speedup'), met: num('concurrency4_speedup') === null ? null : num('concurrency4_speedup')! >= 2 },
  ];
  // The same daemon targets on the other benched models (keys with a model suffix).
  const rows: [string, string, string, (x: number) => boolean][] = [
    ['monitor_overhead_pct', 'monitor overhead %', '≤ 2', (x) => x <= 2],
    ['alert_p99_ms', 'alert p99 ms (loopback)', '≤ 10', (x) => x <= 10],
    ['concurrency4_speedup', '4 streams ÷ 1 stream aggregate tok/s', '≥ 2', (x) => x >= 2],
  ];
  for (const key of Object.keys(summary)) {
    for (const [base, name, target, ok] of rows) {
      if (!key.startsWith(`${base}_int`) && !key.startsWith(`${base}_fp`)) continue;
      const v = num(key);
      targets.push({ name: `${name} (${key.slice(base.length + 1)})`, target, measured: v, met: v === null ? null : ok(v) });
    }
  }
  return { kind: 'latentwatch.bench', version: 1, quick, machine, summary, targets, engine, peers, daemon, seconds: round((performance.now() - t0) / 1000, 1) };
}

export function benchMarkdown(r: BenchResult): string {
  const parts = [
    `# latentwatch benchmark${r.quick ? ' (quick)' : ''}`,
    '',
    machineMarkdown(r.machine),
    '',
    '## Targets (issue 6)',
    '',
    markdownTable(
      ['target', 'wanted', 'measured', 'met'],
      r.targets.map((t) => [t.name, t.target, t.measured, t.met === null ? 'not measured' : t.met ? 'yes' : 'no']),
    ),
    '',
    '## Summary',
    '',
    markdownTable(
      ['key', 'value'],
      Object.entries(r.summary).map(([k, v]) => [k, v]),
    ),
    '',
  ];
  if (r.engine && !('error' in r.engine)) parts.push(engineBenchMarkdown(r.engine).replace(/^# /m, '## '), '');
  else if (r.engine) parts.push('## Engine benchmark', '', `Failed: ${r.engine.error.split('\n')[0]}`, '');
  if (r.peers && !('error' in r.peers)) parts.push(peersBenchMarkdown(r.peers).replace(/^# /m, '## '), '');
  else if (r.peers) parts.push('## Peer benchmark', '', `Failed: ${r.peers.error.split('\n')[0]}`, '');
  if (r.daemon && !('error' in r.daemon)) parts.push(daemonBenchMarkdown(r.daemon).replace(/^# /m, '## ').replace(/^## (?!Daemon)/gm, '### '), '');
  else if (r.daemon) parts.push('## Daemon benchmark', '', `Failed: ${r.daemon.error.split('\n')[0]}`, '');
  parts.push(`Total ${r.seconds.toFixed(0)} s.`);
  return parts.join('\n');
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['out', 'md']);
  const quick = a.has('quick');
  const r = await runBench({ quick, skipEngine: a.has('skip-engine'), skipPeers: a.has('skip-peers'), skipDaemon: a.has('skip-daemon') });
  writeBenchResult(a, `bench${quick ? '-quick' : ''}`, r, benchMarkdown(r));
  const failed = [r.engine, r.peers, r.daemon].some((x) => x !== null && 'error' in x);
  if (failed) process.exitCode = 1;
}

runIfMain(import.meta.url, main);
