/**
 * Does a small durable append wait for other files' unflushed writes? On ext4 (data=ordered) an
 * fsync commits the journal, and that commit first writes out the data of every file whose blocks
 * it allocates, so an alert log's fdatasync right after a large unflushed write (a 1 GB checkpoint,
 * a graph cache) can take hundreds of ms though the disk flushes 4 KiB in a fraction of one.
 *
 *   npx tsx bench/disk-writeback.ts [--dir DIR] [--mb 1024] [--out F.json]
 *
 * Three phases in DIR, each 200 fdatasyncs of a 4 KiB append (lib/disk-flush.ts): the disk at rest;
 * right after writing MB MiB to another file of DIR without flushing it; after `sync`. Prints each
 * phase's first, p50, p99 and max ms, writes JSON.
 */
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { flushAllWrites, measureDiskFlush, type DiskFlush } from './lib/disk-flush.js';
import { describeMachine } from './lib/machine.js';

function arg(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
}

function writeUnflushed(path: string, mb: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(1 << 20, 3);
  try {
    for (let i = 0; i < mb; i++) writeSync(fd, chunk);
  } finally {
    closeSync(fd);
  }
}

const argv = process.argv.slice(2);
const mb = Number(arg(argv, '--mb') ?? 1024);
const out = arg(argv, '--out');
const dir = mkdtempSync(join(arg(argv, '--dir') ?? tmpdir(), 'lw-writeback-'));
try {
  flushAllWrites();
  const atRest = measureDiskFlush(dir);
  const t0 = performance.now();
  writeUnflushed(join(dir, 'big.bin'), mb);
  const writeMs = performance.now() - t0;
  const afterBigWrite = measureDiskFlush(dir);
  rmSync(join(dir, 'big.bin'));
  writeUnflushed(join(dir, 'big2.bin'), mb);
  const t1 = performance.now();
  flushAllWrites();
  const syncMs = performance.now() - t1;
  const afterSync = measureDiskFlush(dir);
  const phases: Record<string, DiskFlush> = { atRest, afterBigWrite, afterSync };
  for (const [k, p] of Object.entries(phases)) console.log(`${k.padEnd(14)} first ${p.firstMs} ms, p50 ${p.p50Ms}, p99 ${p.p99Ms}, max ${p.maxMs} (${p.samples} fdatasyncs of 4 KiB)`);
  console.log(`writing ${mb} MiB unflushed: ${writeMs.toFixed(0)} ms; sync after the second: ${syncMs.toFixed(0)} ms`);
  if (out) writeFileSync(out, JSON.stringify({ kind: 'latentwatch.bench.disk-writeback', version: 1, machine: describeMachine(), mb, writeMs, syncMs, phases }, null, 2) + '\n');
} finally {
  rmSync(dir, { recursive: true, force: true });
}
