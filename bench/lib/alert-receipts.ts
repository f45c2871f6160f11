/**
 * What the alert-latency benches share (replicas.ts, single-node.ts): admin-injected requests that
 * raise alerts, collecting every subscriber's receipts, latency and delivery figures over them.
 */
import type { BenchProbeSet } from './bench-probes.js';
import type { ReceivedAlert } from './clients.js';
import type { DaemonProcess } from './daemon-process.js';
import { maxOf, quantile, round } from './stats.js';
import type { SubscriberFleet } from './subscriber-fleet.js';

export const ADMIN_KEY = 'bench-admin-key';
const PROMPTS = ['def main():\n', 'import os\n\n', 'class Cache:\n    def ', 'for line in lines:\n    '];

export interface Latency {
  receipts: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export function latency(values: readonly number[]): Latency {
  return { receipts: values.length, p50Ms: round(quantile(values, 0.5), 3), p90Ms: round(quantile(values, 0.9), 3), p99Ms: round(quantile(values, 0.99), 3), maxMs: round(maxOf(values), 3) };
}

/** Missing and duplicate receipts of `ids` over every subscriber. */
export function delivery(subs: readonly { alerts: readonly ReceivedAlert[] }[], ids: readonly number[]): { missing: number; duplicates: number } {
  let missing = 0;
  let duplicates = 0;
  for (const s of subs) {
    const seen = new Map<number, number>();
    for (const a of s.alerts) seen.set(a.id, (seen.get(a.id) ?? 0) + 1);
    for (const id of ids) {
      const k = seen.get(id) ?? 0;
      if (k === 0) missing++;
      if (k > 1) duplicates += k - 1;
    }
  }
  return { missing, duplicates };
}

export async function injectedIds(d: DaemonProcess, set: BenchProbeSet, model: string, i: number): Promise<number[]> {
  const r = await fetch(`${d.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
    body: JSON.stringify({ model, prompt: PROMPTS[i % PROMPTS.length], max_tokens: 2, temperature: 0, latentwatch: { inject: { vector: set.vector, layer: set.injectLayer, scale: set.scale, window: 'generation' } } }),
  });
  if (r.status !== 200) throw new Error(`injected request: ${r.status} ${await r.text()}`);
  const v = ((await r.json()) as { latentwatch: { probes: { alert_ids: number[]; alerts_queued?: number }[] } }).latentwatch;
  if (v.probes.some((p) => (p.alerts_queued ?? 0) > 0)) throw new Error('alerts were queued in the outbox: NATS did not acknowledge them');
  return v.probes.flatMap((p) => p.alert_ids);
}

export async function collectAll(fleets: readonly SubscriberFleet[], ids: readonly number[]): Promise<{ alerts: ReceivedAlert[] }[]> {
  const complete = (subs: { alerts: ReceivedAlert[] }[]) => subs.every((s) => ids.every((id) => s.alerts.some((a) => a.id === id)));
  for (const deadline = Date.now() + 20_000; ; ) {
    const subs = (await Promise.all(fleets.map((f) => f.collect()))).flat();
    if (complete(subs) || Date.now() > deadline) return subs;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A daemon child's wall clock − its forwardAtUs clock (µs), from its ready line. */
export const clockOffsetOf = (d: DaemonProcess): number => Number(d.ready.clockOffsetUs ?? 0);

/** The sum of latentwatch_alerts_total on a daemon's /metrics. */
export async function alertsCounted(d: DaemonProcess): Promise<number> {
  const text = await (await fetch(`${d.url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith('latentwatch_alerts_total{')) sum += Number(line.split(' ').at(-1));
  return sum;
}

