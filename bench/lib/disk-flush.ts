/**
 * How long the disk under a directory takes to make a small write durable (fdatasync of a 4 KiB
 * append, what a synchronous=FULL commit of one token's alerts costs at least): the floor of the
 * durable alert path's latency, reported beside it by bench/daemon.ts.
 */
import { closeSync, fdatasyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { maxOf, quantile, round } from './stats.js';

export interface DiskFlush {
  dir: string;
  samples: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export function measureDiskFlush(dir: string, samples = 200): DiskFlush {
  const path = join(dir, 'disk-flush.probe');
  const fd = openSync(path, 'w');
  const block = Buffer.alloc(4096, 7);
  const ms: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      writeSync(fd, block);
      const t0 = performance.now();
      fdatasyncSync(fd);
      ms.push(performance.now() - t0);
    }
  } finally {
    closeSync(fd);
    rmSync(path, { force: true });
  }
  return { dir, samples, p50Ms: round(quantile(ms, 0.5), 3), p90Ms: round(quantile(ms, 0.9), 3), p99Ms: round(quantile(ms, 0.99), 3), maxMs: round(maxOf(ms), 3) };
}
