/**
 * A host-provider onnxruntime session on a thread of its own (the caller's side: session-thread.ts).
 *
 * Why: onnxruntime-node runs a pass synchronously on the calling thread. On the event loop, every
 * forward pass held every WebSocket send, NATS delivery, health check and metrics scrape behind it:
 * an alert raised on another replica reached a subscriber only when this replica's pass ended
 * (issue 15: receipt p99 24.9 ms with traffic on all three replicas vs 3.4 ms with one raising).
 * Here the pass runs while the event loop stays free.
 *
 * The KV cache lives here (kv-memory.ts): a pass names regions of it, and its new keys and values
 * are written into it here (kv-write.ts), so the cache never crosses. What comes back (logits, taps)
 * is copied into one buffer that moves. Everything crosses as numbers (wire-tensor.ts says why).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { moveRuns } from './kv-memory.js';
import { applyKvWrites, unpackKvWrites } from './kv-write.js';
import { packTensors, unpackTensors, type PackedTensors } from './wire-tensor.js';

export interface SessionWorkerData {
  model: string | Uint8Array;
  options: ort.InferenceSession.SessionOptions;
}

export type SessionRequest =
  /** outputs: indexes into outputNames, null for all; writes: kv-write.ts packKvWrites. */
  | { type: 'run'; id: number; feeds: PackedTensors; outputs: Int32Array | null; writes: Float64Array }
  /** KV memory resident here (kv-memory.ts): allocated, grown (moves: [from, to, length] floats), freed. */
  | { type: 'kvAlloc'; id: number; floats: number }
  | { type: 'kvResize'; id: number; floats: number; moves: Float64Array }
  | { type: 'kvFree'; id: number }
  | { type: 'endProfiling' }
  | { type: 'release'; id: number };

export type SessionReply =
  | { type: 'ready'; inputNames: readonly string[]; outputNames: readonly string[] }
  | { type: 'failed'; message: string }
  | { type: 'ran'; id: number; outputs: PackedTensors }
  | { type: 'error'; id: number; message: string }
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
  const memories = new Map<number, Float32Array>();
  const resident = (id: number) => {
    const m = memories.get(id);
    if (!m) throw new Error(`no resident KV memory ${id}`);
    return m;
  };
  port.on('message', (m: SessionRequest) => {
    if (m.type === 'endProfiling') return session.endProfiling();
    if (m.type === 'kvAlloc') return void memories.set(m.id, new Float32Array(m.floats));
    if (m.type === 'kvFree') return void memories.delete(m.id);
    if (m.type === 'kvResize') {
      const next = new Float32Array(m.floats);
      moveRuns(resident(m.id), next, m.moves);
      return void memories.set(m.id, next);
    }
    if (m.type === 'release') {
      void session.release().finally(() => {
        port.postMessage({ type: 'released', id: m.id } satisfies SessionReply);
        port.close();
      });
      return;
    }
    // The outputs' values move to the caller in one buffer.
    run(session, m, outputIndex, resident).then(
      (outputs) => port.postMessage({ type: 'ran', id: m.id, outputs } satisfies SessionReply, [outputs.values]),
      (e: unknown) => port.postMessage({ type: 'error', id: m.id, message: (e as Error).message } satisfies SessionReply),
    );
  });
}

async function run(session: ort.InferenceSession, m: Extract<SessionRequest, { type: 'run' }>, outputIndex: ReadonlyMap<string, number>, resident: (id: number) => Float32Array): Promise<PackedTensors> {
  const feeds = unpackTensors(m.feeds, session.inputNames, resident);
  const writes = unpackKvWrites(m.writes, session.inputNames, session.outputNames);
  const written = new Set(writes.map((w) => w.output));
  const wanted = m.outputs ? Array.from(m.outputs, (i) => session.outputNames[i]) : null;
  const r = wanted ? await session.run(feeds, [...wanted, ...written]) : await session.run(feeds);
  applyKvWrites(writes, (name) => feeds[name].data as Float32Array, (name) => r[name].data as Float32Array);
  return packTensors(Object.fromEntries(Object.entries(r).filter(([k]) => !written.has(k))) as Record<string, ort.Tensor>, outputIndex);
}
