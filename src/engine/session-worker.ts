/**
 * A host-provider onnxruntime session on a thread of its own (runtime.ts SessionThread).
 *
 * Why: onnxruntime-node runs a pass synchronously on the calling thread. On the event loop, every
 * forward pass held every WebSocket send, NATS delivery, health check and metrics scrape behind it:
 * an alert raised on another replica reached a subscriber only when this replica's pass ended
 * (issue 15: receipt p99 24.9 ms with traffic on all three replicas vs 3.4 ms with one raising).
 * Here the pass runs while the event loop stays free.
 *
 * The KV cache is lent for the pass (wire-tensor.ts): its buffer moves here and back, its views
 * cross as offsets, and the pass's new keys and values are written into it here (kv-write.ts), so
 * they never cross. What comes back (logits, taps) is copied into one buffer that moves. Everything
 * crosses as numbers (wire-tensor.ts says why).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { applyKvWrites, unpackKvWrites } from './kv-write.js';
import { packTensors, unpackTensors, type PackedTensors } from './wire-tensor.js';

export interface SessionWorkerData {
  model: string | Uint8Array;
  options: ort.InferenceSession.SessionOptions;
}

export type SessionRequest =
  /** outputs: indexes into outputNames, null for all; writes: kv-write.ts packKvWrites. */
  | { type: 'run'; id: number; feeds: PackedTensors; outputs: Int32Array | null; writes: Float64Array; lent: ArrayBuffer[] }
  | { type: 'endProfiling' }
  | { type: 'release'; id: number };

export type SessionReply =
  | { type: 'ready'; inputNames: readonly string[]; outputNames: readonly string[] }
  | { type: 'failed'; message: string }
  | { type: 'ran'; id: number; outputs: PackedTensors; lent: ArrayBuffer[] }
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
  const outputIndex = new Map(session.outputNames.map((n, i) => [n, i]));
  port.on('message', (m: SessionRequest) => {
    if (m.type === 'endProfiling') return session.endProfiling();
    if (m.type === 'release') {
      void session.release().finally(() => {
        port.postMessage({ type: 'released', id: m.id } satisfies SessionReply);
        port.close();
      });
      return;
    }
    // The lent buffers go back whatever happened; the outputs' values move to the caller in one buffer.
    run(session, m, outputIndex).then(
      (outputs) => port.postMessage({ type: 'ran', id: m.id, outputs, lent: m.lent } satisfies SessionReply, [...m.lent, outputs.values]),
      (e: unknown) => port.postMessage({ type: 'error', id: m.id, message: (e as Error).message, lent: m.lent } satisfies SessionReply, m.lent),
    );
  });
}

async function run(session: ort.InferenceSession, m: Extract<SessionRequest, { type: 'run' }>, outputIndex: ReadonlyMap<string, number>): Promise<PackedTensors> {
  const feeds = unpackTensors(m.feeds, session.inputNames, m.lent);
  const writes = unpackKvWrites(m.writes, session.inputNames, session.outputNames);
  const written = new Set(writes.map((w) => w.output));
  const wanted = m.outputs ? Array.from(m.outputs, (i) => session.outputNames[i]) : null;
  const r = wanted ? await session.run(feeds, [...wanted, ...written]) : await session.run(feeds);
  applyKvWrites(writes, (name) => feeds[name].data as Float32Array, (name) => r[name].data as Float32Array);
  return packTensors(Object.fromEntries(Object.entries(r).filter(([k]) => !written.has(k))) as Record<string, ort.Tensor>, outputIndex);
}
