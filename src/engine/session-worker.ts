/**
 * A host-provider onnxruntime session on a thread of its own (runtime.ts SessionThread).
 *
 * Why: onnxruntime-node runs a pass synchronously on the calling thread. On the event loop, every
 * forward pass held every WebSocket send, NATS delivery, health check and metrics scrape behind it:
 * an alert raised on another replica reached a subscriber only when this replica's pass ended
 * (issue 15: receipt p99 24.9 ms with traffic on all three replicas vs 3.4 ms with one raising).
 * Here the pass runs while the event loop stays free.
 *
 * Tensors cross as {type, data, dims}. The KV cache is lent for the pass (wire-tensor.ts): its
 * buffers move here and back with the outputs, whose buffers move too; nothing large is copied.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { fromWire, toWire, transferable, type WireTensor } from './wire-tensor.js';

export interface SessionWorkerData {
  model: string | Uint8Array;
  options: ort.InferenceSession.SessionOptions;
}

export type SessionRequest =
  | { type: 'run'; id: number; feeds: Record<string, WireTensor>; outputs: readonly string[] | null; lent: ArrayBuffer[] }
  | { type: 'endProfiling' }
  | { type: 'release'; id: number };

export type SessionReply =
  | { type: 'ready'; inputNames: readonly string[]; outputNames: readonly string[] }
  | { type: 'failed'; message: string }
  | { type: 'ran'; id: number; outputs: Record<string, WireTensor>; lent: ArrayBuffer[] }
  | { type: 'error'; id: number; message: string; lent: ArrayBuffer[] }
  | { type: 'released'; id: number };

if (parentPort) void serve(parentPort, workerData as SessionWorkerData);

async function serve(port: MessagePort, data: SessionWorkerData): Promise<void> {
  let session: ort.InferenceSession;
  try {
    session = typeof data.model === 'string' ? await ort.InferenceSession.create(data.model, data.options) : await ort.InferenceSession.create(data.model, data.options);
  } catch (e) {
    port.postMessage({ type: 'failed', message: (e as Error).message } satisfies SessionReply);
    return;
  }
  port.postMessage({ type: 'ready', inputNames: session.inputNames, outputNames: session.outputNames } satisfies SessionReply);
  port.on('message', (m: SessionRequest) => {
    if (m.type === 'endProfiling') return session.endProfiling();
    if (m.type === 'release') {
      void session.release().finally(() => {
        port.postMessage({ type: 'released', id: m.id } satisfies SessionReply);
        port.close();
      });
      return;
    }
    // The lent buffers go back whatever happened; each output's buffer moves to the caller too.
    run(session, m.feeds, m.outputs).then(
      (outputs) => port.postMessage({ type: 'ran', id: m.id, outputs, lent: m.lent } satisfies SessionReply, [...m.lent, ...transferable(Object.values(outputs))]),
      (e: unknown) => port.postMessage({ type: 'error', id: m.id, message: (e as Error).message, lent: m.lent } satisfies SessionReply, m.lent),
    );
  });
}

async function run(session: ort.InferenceSession, wire: Record<string, WireTensor>, outputs: readonly string[] | null): Promise<Record<string, WireTensor>> {
  const feeds = Object.fromEntries(Object.entries(wire).map(([k, w]) => [k, fromWire(w)]));
  const r = outputs ? await session.run(feeds, outputs) : await session.run(feeds);
  return Object.fromEntries(Object.entries(r).map(([k, t]) => [k, toWire(t)]));
}
