/**
 * Starts the daemon in a child process (bench/lib/daemon-child.ts) and talks to it from outside,
 * as clients do: the parent reads its URL from the child's first stdout line, its resident memory
 * from /proc, and stops it with SIGTERM. Under tsx (benches run from source, vitest) the child
 * runs the TypeScript entry with `node --import tsx`; from dist it runs the compiled file.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PACKAGE_ROOT } from '../../src/paths.js';

export interface DaemonProcessOptions {
  /** `latentwatch serve` flags (e.g. ['--model', DIR, '--probe', FILE, '--port', '0']). */
  argv: readonly string[];
  /** Extra environment (LATENTWATCH_API_KEY, LATENTWATCH_CONFIG, ...). */
  env?: Record<string, string>;
  /** How long to wait for the URL line (default 120 s: the first start may build the graph). */
  startTimeoutMs?: number;
  /** Entry script in bench/lib (default 'daemon-child'; 'twin-child' serves several variants). */
  entry?: 'daemon-child' | 'twin-child';
}

export interface DaemonProcess {
  url: string;
  pid: number;
  /** The whole ready line (twin-child adds `urls`). */
  ready: Record<string, unknown>;
  child: ChildProcess;
  /** Resident set size in bytes (Linux /proc; null elsewhere or after exit). */
  rssBytes(): number | null;
  /** What the child wrote to stderr so far (its log). */
  stderr(): string;
  /** SIGTERM, wait for exit (SIGKILL after `graceMs`); resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/** The child's ready line: this prefix, then `{"url": ..., "pid": ...}`. */
export const READY_PREFIX = 'LATENTWATCH_READY ';

const here = dirname(fileURLToPath(import.meta.url));

function childCommand(entry: string): string[] {
  const ts = join(here, `${entry}.ts`);
  const js = join(here, `${entry}.js`);
  if (fileURLToPath(import.meta.url).endsWith('.ts') || !existsSync(js)) return ['--import', 'tsx', ts];
  return [js];
}

export function rssOf(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** CPU time (ns) all threads of a process have run (Linux: the schedstat of every task under /proc/PID/task); null elsewhere. */
export function cpuNsOf(pid: number): number | null {
  try {
    let sum = 0;
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      try {
        sum += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // the thread exited between the listing and the read
      }
    }
    return sum;
  } catch {
    return null;
  }
}

export function spawnDaemonProcess(o: DaemonProcessOptions): Promise<DaemonProcess> {
  const child = spawn(process.execPath, [...(process.env.LW_BENCH_CHILD_NODE_ARGS ?? '').split(' ').filter(Boolean), ...childCommand(o.entry ?? 'daemon-child'), ...o.argv], {
    cwd: PACKAGE_ROOT,
    env: { ...process.env, ...o.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
    if (err.length > 1_000_000) err = err.slice(-500_000);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`daemon did not start in time: ${err.slice(-4000)}`));
    }, o.startTimeoutMs ?? 120_000);
    const early = (code: number | null, signal: string | null) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited (${code ?? signal}) before listening: ${err.slice(-4000)}`));
    };
    child.once('exit', early);
    let ready = false;
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      for (let nl = out.indexOf('\n'); nl >= 0; nl = out.indexOf('\n')) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        if (ready || !line.startsWith(READY_PREFIX)) {
          // The daemon's own log (pino writes to stdout): keep it with stderr.
          err += `${line}\n`;
          continue;
        }
        ready = true;
        clearTimeout(timer);
        child.off('exit', early);
        const info = JSON.parse(line.slice(READY_PREFIX.length)) as { url: string; pid: number };
        onReady(info.url, info.pid, info);
      }
    });
    const onReady = (url: string, pid: number, info: Record<string, unknown>) => {
      resolve({
        url,
        pid,
        ready: info,
        child,
        rssBytes: () => (child.exitCode === null ? rssOf(pid) : null),
        stderr: () => err,
        stop: async (graceMs = 15_000) => {
          if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
          const code = await exited;
          clearTimeout(t);
          return code;
        },
      });
    };
  });
}
