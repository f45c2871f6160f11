/**
 * Does a small durable append wait for other files' unflushed writes? On ext4 (data=ordered) an
 * fsync commits the journal, which may first write out other files' pending data, so an alert
 * log's fdatasync right after a large unflushed write (a 1 GB checkpoint, a graph cache) could take
 * far longer than the disk's flush of 4 KiB. This measures whether it does on a given disk (on the
 * device host, 2026-12-05: no, first flush 0.63 ms after 1 GiB; docs/benchmarks.md).
 *
 *   npx tsx bench/disk-writeback.ts [--dir DIR] [--mb 1024] [--out F.json]
 *
 * Three phases in DIR, each 200 fdatasyncs of a 4 KiB append (lib/disk-flush.ts): the disk at rest;
 * right after writing MB MiB to another file of DIR without flushing it; after `sync`. Prints each
 * phase's first, p50, p99 and max ms, writes JSON.
 */
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { flushAllWrites, measureDiskFlush, type DiskFlush } from './lib/disk-flush.js';
import { describeMachine } from './lib/machine.js';
import { parseArgs, writeJson } from './lib/report.js';

function writeUnflushed(path: string, mb: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(1 << 20, 3);
  try {
    for (let i = 0; i < mb; i++) writeSync(fd, chunk);
  } finally {
    closeSync(fd);
  }
}

const a = parseArgs(process.argv.slice(2), ['dir', 'mb', 'out']);
const mb = a.num('mb', 1024);
const out = a.get('out');
const dir = mkdtempSync(join(a.get('dir') ?? tmpdir(), 'lw-writeback-'));
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
  if (out) writeJson(out, { kind: 'latentwatch.bench.disk-writeback', version: 1, machine: describeMachine(), mb, writeMs, syncMs, phases });
} finally {
  rmSync(dir, { recursive: true, force: true });
}
