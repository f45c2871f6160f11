/** Small helpers shared by the CLI commands: option parsing with coded errors, progress output. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { lwError } from '../errors.js';

export interface Command {
  name: string;
  usage: string;
  run(argv: string[]): Promise<void>;
}

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: T, usage: string) {
  try {
    const r = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: false, strict: true });
    if ((r.values as Record<string, unknown>).help) {
      process.stdout.write(usage.trimStart() + '\n');
      process.exit(0);
    }
    return r.values;
  } catch (e) {
    if ((e as { code?: string }).code === 'LW_ERR_CLI_USAGE') throw e;
    throw lwError('LW_ERR_CLI_USAGE', (e as Error).message);
  }
}

export function num(v: string | undefined, name: string, fallback?: number): number | undefined {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw lwError('LW_ERR_CLI_USAGE', `--${name} must be a number (got ${v})`);
  return n;
}

export function layerList(v: string | undefined, name: string): number[] | 'all' | undefined {
  if (v === undefined) return undefined;
  if (v === 'all') return 'all';
  if (v === 'none' || v === '') return [];
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (xs.some((x) => !Number.isInteger(x) || x < 0)) throw lwError('LW_ERR_CLI_USAGE', `--${name} must be 'all' or a comma list of layer indices (got ${v})`);
  return xs;
}

/** A progress bar on stderr (only when it is a terminal, else one line per 10%). */
export function progressBar(label: string): (done: number, total: number, what: string) => void {
  let lastDecile = -1;
  return (done, total, what) => {
    const frac = total > 0 ? done / total : 1;
    if (process.stderr.isTTY) {
      const width = 30;
      const fill = Math.round(frac * width);
      process.stderr.write(`\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${done}/${total} ${what}\x1b[K`);
      if (done >= total) process.stderr.write('\n');
    } else {
      const decile = Math.floor(frac * 10);
      if (decile !== lastDecile) {
        lastDecile = decile;
        process.stderr.write(`${label}: ${done}/${total} ${what}\n`);
      }
    }
  };
}
