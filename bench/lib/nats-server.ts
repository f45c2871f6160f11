/**
 * A real nats-server with JetStream (Debian's nats-server 2.9, installed by scripts/test-deps.sh)
 * on a free loopback port with a temporary store directory; it can be stopped and started again
 * on the same port and store (a NATS restart). Used by the replica tests (test/nats-fixture.ts)
 * and bench/replicas.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/** nats-server on PATH, else where Debian installs it (/usr/sbin is not on every user's PATH). */
export function natsServerBinary(): string {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/bin']) {
    const p = join(dir, 'nats-server');
    if (dir !== '' && existsSync(p)) return p;
  }
  throw new Error('nats-server not found: run scripts/test-deps.sh (Debian package nats-server)');
}

export interface NatsServer {
  /** nats://127.0.0.1:PORT */
  url: string;
  port: number;
  storeDir: string;
  /** Graceful stop (SIGTERM: JetStream flushes its store); resolves when the process has exited. */
  stop(): Promise<void>;
  /** Start again on the same port and store. */
  start(): Promise<void>;
  /** What the server logged (this run and the earlier ones). */
  log(): string;
}

function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port from the OS'))));
    });
  });
}

/** `args`: more nats-server flags (e.g. --user/--pass to require credentials). */
export async function startNats(args: readonly string[] = []): Promise<NatsServer> {
  const port = await freeLoopbackPort();
  const storeDir = mkdtempSync(join(tmpdir(), 'lw-nats-'));
  const bin = natsServerBinary();
  let child: ChildProcess | undefined;
  let out = '';
  const start = async (): Promise<void> => {
    const runStart = out.length;
    const c = spawn(bin, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (b: Buffer) => (out += String(b)));
    c.stderr!.on('data', (b: Buffer) => (out += String(b)));
    // Polled: the server says so on stderr once it accepts clients (with JetStream up).
    for (const deadline = Date.now() + 30_000; !out.slice(runStart).includes('Server is ready'); ) {
      if (c.exitCode !== null) throw new Error(`nats-server exited ${c.exitCode}:\n${out.slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`nats-server on port ${port} not ready after 30 s:\n${out.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const stop = async (): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    await exited;
  };
  await start();
  return { url: `nats://127.0.0.1:${port}`, port, storeDir, stop, start, log: () => out };
}
