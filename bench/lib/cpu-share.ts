/**
 * How much CPU other processes used while we measured: all CPUs' busy time from /proc/stat minus
 * this process's own CPU time (process.cpuUsage), as cores over the wall time of the window. On a
 * 2-core machine shared with other people's work, 0 means we had the machine to ourselves; 1 means
 * another process held a whole core on average. (The load average cannot tell our threads from
 * theirs.) Linux only: elsewhere null.
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** USER_HZ: /proc/stat counts in 1/100 s on Linux. */
const TICK_MS = 10;

interface Mark {
  busyMs: number;
  ownMs: number;
  wallMs: number;
}

function busyMs(): number | null {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = f[3] + (f[4] ?? 0);
    return (total - idle) * TICK_MS;
  } catch {
    return null;
  }
}

export function markCpu(): Mark | null {
  const b = busyMs();
  if (b === null) return null;
  const u = process.cpuUsage();
  return { busyMs: b, ownMs: (u.user + u.system) / 1000, wallMs: performance.now() };
}

/** Cores' worth of CPU other processes used since `m` (≥ 0), or null. */
export function othersCores(m: Mark | null): number | null {
  const now = markCpu();
  if (!m || !now || now.wallMs - m.wallMs < 50) return null;
  const others = now.busyMs - m.busyMs - (now.ownMs - m.ownMs);
  return Math.max(0, others / (now.wallMs - m.wallMs));
}

/**
 * Waits (at most `maxSeconds`) until other processes use under `threshold` cores over a 1 s window,
 * while this process idles. Returns the seconds waited and the last window's reading.
 */
export async function waitForQuiet(maxSeconds: number, threshold = 0.3): Promise<{ waitedSeconds: number; othersCores: number | null }> {
  const t0 = performance.now();
  let last: number | null = null;
  do {
    const m = markCpu();
    if (!m) return { waitedSeconds: 0, othersCores: null };
    await sleep(1000);
    last = othersCores(m);
    if (last !== null && last < threshold) break;
  } while ((performance.now() - t0) / 1000 < maxSeconds);
  return { waitedSeconds: (performance.now() - t0) / 1000, othersCores: last };
}
