/**
 * How long the disk under a directory takes to make a small write durable (fdatasync of a 4 KiB
 * append, what a synchronous=FULL commit of one token's alerts costs at least): the floor of the
 * durable alert path's latency, reported beside it by bench/daemon.ts.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, fdatasyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { maxOf, quantile, round } from './stats.js';

export interface DiskFlush {
  dir: string;
  samples: number;
  /** The first fdatasync: the one that pays for whatever else the journal must write out first. */
  firstMs: number;
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
  return { dir, samples, firstMs: round(ms[0], 3), p50Ms: round(quantile(ms, 0.5), 3), p90Ms: round(quantile(ms, 0.9), 3), p99Ms: round(quantile(ms, 0.99), 3), maxMs: round(maxOf(ms), 3) };
}

/**
 * `sync`: writes out every file's pending data. Benches call it after their setup (a checkpoint of
 * ~1 GB, a graph cache) and before measuring a durable log, so the log's first fsyncs do not pay for
 * the setup's writeback (bench/disk-writeback.ts measures that cost).
 */
export function flushAllWrites(): void {
  execFileSync('sync');
}
