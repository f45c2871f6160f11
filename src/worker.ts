/**
 * Starts a module of this package on a worker thread. From dist/ the compiled .js runs as is; from
 * source (tsx, vitest) the worker first registers tsx's loader, which a Worker does not inherit from
 * its parent on Node 20.
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** `moduleName` without extension, beside the caller's `here` (its import.meta.url). */
export function startWorker(here: string, moduleName: string, options: WorkerOptions): Worker {
  if (!here.endsWith('.ts')) return new Worker(new URL(`./${moduleName}.js`, here), options);
  const entry = new URL(`./${moduleName}.ts`, here).href;
  const boot = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(boot, { ...options, eval: true });
}
