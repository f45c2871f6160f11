/**
 * The caller's side of a session on its own thread (session-worker.ts says why). Passes go to the
 * worker in order and come back as promises; the event loop is free while one runs.
 */
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../worker.js';
import type { SessionReply, SessionRequest, SessionWorkerData } from './session-worker.js';
import { fromWire, lendable, returnLent, toWire, type Tensor } from './wire-tensor.js';

interface Pending {
  resolve(outputs: Record<string, Tensor>): void;
  reject(e: Error): void;
  /** The buffers the pass borrowed, as they were before they moved. */
  lent: ArrayBuffer[];
}

export class SessionThread {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
  ) {
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

  /** One pass; `outputs` null: every output. */
  run(feeds: Record<string, Tensor>, outputs: readonly string[] | null): Promise<Record<string, Tensor>> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const wire = Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, toWire(t)]));
    // The KV cache moves for the pass (no copy); small feeds are copied.
    const lent = lendable(Object.values(wire));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, lent });
      if (this.pending.size === 1) this.worker.ref();
      this.worker.postMessage({ type: 'run', id, feeds: wire, outputs, lent } satisfies SessionRequest, lent);
    });
  }

  endProfiling(): void {
    this.post({ type: 'endProfiling' });
  }

  async release(): Promise<void> {
    if (this.failure) return;
    const id = this.nextId++;
    await new Promise<void>((resolve, reject) => {
      this.pending.set(id, { resolve: () => resolve(), reject, lent: [] });
      this.worker.ref();
      this.post({ type: 'release', id });
    });
    await this.worker.terminate();
  }

  private post(m: SessionRequest): void {
    this.worker.postMessage(m);
  }

  private answer(m: SessionReply): void {
    if (m.type !== 'ran' && m.type !== 'error' && m.type !== 'released') return;
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.worker.unref();
    if (m.type !== 'released') returnLent(p.lent, m.lent);
    if (m.type === 'error') p.reject(new Error(m.message));
    else p.resolve(m.type === 'ran' ? Object.fromEntries(Object.entries(m.outputs).map(([k, w]) => [k, fromWire(w)])) : {});
  }

  /** The thread died (it should not): every pass in flight fails, and so does every later one. */
  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }
}
