/**
 * WebSocket alert subscribers spread over worker threads, for latency measurements with many
 * subscribers. With all of them on one event loop, the receipt time of the 100th copy of an alert
 * includes parsing the 99 copies before it, a cost of the measuring process, not of the daemon;
 * real subscribers are separate processes. Each worker runs its share of `subscribe()`-like
 * clients (the `ws` package, JSON.parse per message, receipt time taken before parsing, on the
 * same epoch clock as lib/clients.ts `nowUs`), and hands its records back on `collect()`.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { ReceivedAlert } from './clients.js';

// Plain CommonJS, evaluated in each worker: no TypeScript loader needed there.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const WebSocket = require(workerData.wsPath);
const records = [];
let open = 0;
// This thread's wall clock − (timeOrigin + now), at millisecond edges (lib/clients.ts wallOffsetUs).
const offsets = [];
for (let i = 0; i < 5; i++) { const t0 = Date.now(); let t = t0; while (t === t0) t = Date.now(); offsets.push(t * 1000 - (performance.timeOrigin + performance.now()) * 1000); }
const offsetUs = offsets.sort((a, b) => a - b)[2];
for (let i = 0; i < workerData.count; i++) {
  const mine = [];
  records.push(mine);
  const ws = new WebSocket(workerData.url, workerData.headers ? { headers: workerData.headers } : {});
  ws.on('open', () => { if (++open === workerData.count) parentPort.postMessage({ type: 'open' }); });
  ws.on('error', (e) => parentPort.postMessage({ type: 'error', message: String(e) }));
  ws.on('message', (m) => {
    const receivedAtUs = (performance.timeOrigin + performance.now()) * 1000;
    const msg = JSON.parse(String(m));
    if (msg.type !== 'alert' || !msg.alert) return;
    mine.push([msg.alert.id, msg.alert.probeId, Date.parse(msg.alert.ts), msg.forwardAtUs === undefined ? null : msg.forwardAtUs, receivedAtUs, receivedAtUs + offsetUs]);
  });
  workerData.sockets = (workerData.sockets || []).concat([ws]);
}
parentPort.on('message', (cmd) => {
  if (cmd === 'collect') parentPort.postMessage({ type: 'records', records });
  if (cmd === 'close') { for (const ws of workerData.sockets) ws.terminate(); parentPort.postMessage({ type: 'closed' }); }
});
`;

type Row = [number, string, number, number | null, number, number];

export interface SubscriberFleet {
  readonly size: number;
  /** Every subscriber's alerts so far (one array per subscriber). */
  collect(): Promise<{ alerts: ReceivedAlert[] }[]>;
  close(): Promise<void>;
}

/** `count` subscribers to `${url}/v1/alerts` over `workers` threads; resolves once all are open. */
export async function startSubscriberFleet(url: string, count: number, o: { key?: string; workers?: number } = {}): Promise<SubscriberFleet> {
  const wsPath = createRequire(import.meta.url).resolve('ws');
  const n = Math.max(1, Math.min(o.workers ?? 4, count));
  const wsUrl = `${url.replace(/^http/, 'ws')}/v1/alerts`;
  const headers = o.key ? { authorization: `Bearer ${o.key}` } : undefined;
  const workers = Array.from({ length: n }, (_, i) => {
    const share = Math.floor(count / n) + (i < count % n ? 1 : 0);
    return new Worker(WORKER_SOURCE, { eval: true, workerData: { wsPath, url: wsUrl, headers, count: share } });
  });
  const next = (w: Worker, type: string): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const on = (m: Record<string, unknown>) => {
        if (m.type === 'error') reject(new Error(String(m.message)));
        else if (m.type === type) {
          w.off('message', on);
          resolve(m);
        }
      };
      w.on('message', on);
      w.once('error', reject);
    });
  await Promise.all(workers.map((w) => next(w, 'open')));
  return {
    size: count,
    async collect() {
      const parts = await Promise.all(
        workers.map(async (w) => {
          const reply = next(w, 'records');
          w.postMessage('collect');
          return (await reply).records as Row[][];
        }),
      );
      return parts.flat().map((rows) => ({
        alerts: rows.map(([id, probeId, tsMs, forwardAtUs, receivedAtUs, receivedWallUs]) => (forwardAtUs === null ? { id, probeId, tsMs, receivedAtUs, receivedWallUs } : { id, probeId, tsMs, forwardAtUs, receivedAtUs, receivedWallUs })),
      }));
    },
    async close() {
      await Promise.all(
        workers.map(async (w) => {
          const done = next(w, 'closed');
          w.postMessage('close');
          await done;
          await w.terminate();
        }),
      );
    },
  };
}
