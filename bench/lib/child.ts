/**
 * Running one measurement in a child process: a fresh heap, its own peak RSS (read from
 * process.resourceUsage() at the end) and a timeout. The child prints one result line
 * (`@@bench-result <json>`) on stdout; anything else it prints is passed through to stderr.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MARK = '@@bench-result ';

export interface ChildResult<T> {
  result: T;
  /** Peak RSS of the child, bytes (process.resourceUsage().maxRSS at its end). */
  maxRssBytes: number;
  wallSeconds: number;
}

export interface ChildOptions {
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Called with each line the child writes to stderr (default: written to our stderr). */
  onLog?: (line: string) => void;
}

/** Node arguments to run `script` (a .ts file runs through tsx's loader). */
export function nodeArgsFor(script: string | URL): string[] {
  const path = script instanceof URL ? fileURLToPath(script) : script;
  return path.endsWith('.ts') || path.endsWith('.mts') ? ['--import', 'tsx', path] : [path];
}

/** Runs `node script ...args` and resolves with the child's result line and peak RSS. */
export function runChild<T>(script: string | URL, args: readonly string[], o: ChildOptions = {}): Promise<ChildResult<T>> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgsFor(script), ...args], {
      cwd: o.cwd,
      env: o.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let errTail = '';
    let errBuf = '';
    const log = o.onLog ?? ((l: string) => process.stderr.write(`${l}\n`));
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      errTail = (errTail + d).slice(-4000);
      errBuf += d;
      let i: number;
      while ((i = errBuf.indexOf('\n')) >= 0) {
        const line = errBuf.slice(0, i);
        errBuf = errBuf.slice(i + 1);
        if (line.trim() && !line.startsWith('npm warn')) log(line);
      }
    });
    const timer = o.timeoutMs
      ? setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`child ${args.join(' ')} timed out after ${o.timeoutMs} ms`));
        }, o.timeoutMs)
      : undefined;
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith(MARK));
      if (code !== 0 || !line) {
        reject(new Error(`child ${args.join(' ')} exited with ${code ?? signal}${line ? '' : ' without a result'}\n${errTail}`));
        return;
      }
      const payload = JSON.parse(line.slice(MARK.length)) as { result: T; maxRssBytes: number };
      resolve({ result: payload.result, maxRssBytes: payload.maxRssBytes, wallSeconds: (performance.now() - t0) / 1000 });
    });
  });
}

/** In the child: prints the result line with the process's peak RSS. */
export function emitChildResult(result: unknown): void {
  const maxRssBytes = process.resourceUsage().maxRSS * 1024;
  process.stdout.write(`${MARK}${JSON.stringify({ result, maxRssBytes })}\n`);
}

/**
 * In a script run as a child (`--child NAME --spec JSON`): runs step NAME on the parsed spec and
 * returns true; returns false when this process is no child.
 */
export async function runChildStep(child: string | undefined, specJson: string | undefined, steps: Record<string, (spec: never) => Promise<void>>): Promise<boolean> {
  if (!child) return false;
  if (!Object.hasOwn(steps, child)) throw new Error(`unknown child ${child}`);
  await (steps[child] as (spec: unknown) => Promise<void>)(JSON.parse(specJson ?? '{}'));
  return true;
}
