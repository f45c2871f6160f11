/**
 * The caller's side of a session on its own thread (session-worker.ts says why). Passes go to the
 * worker in order and come back as promises; the event loop is free while one runs.
 */
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../worker.js';
import type { SessionReply, SessionRequest, SessionWorkerData } from './session-worker.js';
import { packKvWrites, type KvWrite } from './kv-write.js';
import type { Feed, KvMemory } from './kv-memory.js';
import { packTensors, unpackTensors, type Tensor } from './wire-tensor.js';

interface Pending {
  resolve(outputs: Record<string, Tensor>): void;
  reject(e: Error): void;
}

export class SessionThread {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private nextMemory = 1;
  private failure: Error | undefined;
  private readonly inputIndex: ReadonlyMap<string, number>;
  private readonly outputIndex: ReadonlyMap<string, number>;

  private constructor(
    private readonly worker: Worker,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
  ) {
    this.inputIndex = new Map(inputNames.map((n, i) => [n, i]));
    this.outputIndex = new Map(outputNames.map((n, i) => [n, i]));
    worker.on('message', (m: SessionReply) => this.answer(m));
    worker.on('error', (e) => this.fail(e));
    worker.on('exit', () => this.fail(new Error('the session thread exited')));
    // An idle session does not keep the process alive; a pass in flight does (run refs it).
    worker.unref();
  }

  /** Starts the thread and loads the graph there; rejects with onnxruntime's message. */
  static start(data: SessionWorkerData): Promise<SessionThread> {
    const worker = startWorker(import.meta.url, 'session-worker', { workerData: data });
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      worker.once('error', onError);
      worker.once('message', (m: SessionReply) => {
        worker.off('error', onError);
        if (m.type === 'ready') resolve(new SessionThread(worker, m.inputNames, m.outputNames));
        else {
          void worker.terminate();
          reject(new Error(m.type === 'failed' ? m.message : `unexpected first message '${m.type}' from the session thread`));
        }
      });
    });
  }

  /** One pass; `outputs` null: every output. `writes` happen on the thread; their outputs do not come back. */
  run(feeds: Record<string, Feed>, outputs: readonly string[] | null, writes: readonly KvWrite[]): Promise<Record<string, Tensor>> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    // The KV cache is resident there (its regions go as offsets); small feeds are copied.
    let request: Extract<SessionRequest, { type: 'run' }>;
    try {
      const wanted = outputs && Int32Array.from(outputs, (n) => this.outputIndex.get(n) ?? -1);
      if (wanted?.includes(-1)) throw new Error(`unknown output among ${outputs!.join(', ')}`);
      request = { type: 'run', id, feeds: packTensors(feeds, this.inputIndex), outputs: wanted, writes: packKvWrites(writes, this.inputIndex, this.outputIndex) };
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) this.worker.ref();
      this.worker.postMessage(request, [request.feeds.values]);
    });
  }

  /**
   * KV memory resident on the thread (kv-memory.ts says why). Its messages are ordered with the
   * passes', so a resize or free takes effect between the passes around it, as on this thread.
   */
  kvMemory(floats: number): KvMemory {
    const id = this.nextMemory++;
    this.post({ type: 'kvAlloc', id, floats });
    return {
      resize: (next, moves) => this.post({ type: 'kvResize', id, floats: next, moves }),
      feed: (offset, length, dims) => ({ resident: id, offset, length, dims }),
      free: () => this.post({ type: 'kvFree', id }),
    };
  }

  endProfiling(): void {
    this.post({ type: 'endProfiling' });
  }

  async release(): Promise<void> {
    if (this.failure) return;
    // Passes asked for from now on fail, as on a released session on the calling thread; those
    // already posted run first (messages are ordered).
    this.failure = new Error('the session was released');
    const id = this.nextId++;
    await new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve: () => resolve(), reject });
      this.worker.ref();
      this.worker.postMessage({ type: 'release', id } satisfies SessionRequest);
    });
    await this.worker.terminate();
  }

  private post(m: SessionRequest): void {
    if (!this.failure) this.worker.postMessage(m);
  }

  private answer(m: SessionReply): void {
    if (m.type !== 'ran' && m.type !== 'error' && m.type !== 'released') return;
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.worker.unref();
    if (m.type === 'error') p.reject(new Error(m.message));
    else p.resolve(m.type === 'ran' ? unpackTensors(m.outputs, this.outputNames) : {});
  }

  /** The thread died (it should not): every pass in flight fails, and so does every later one. */
  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }
}
