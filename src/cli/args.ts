/** Small helpers shared by the CLI commands: option parsing with coded errors, progress output. */
import { lwError } from '../errors.js';
import { parseCommandLine, type FlagOptions, type FlagValues } from '../flags.js';

export interface Command {
  name: string;
  usage: string;
  run(argv: string[]): Promise<void>;
}

/** The command's options (plus --help/-h, which prints `usage` and exits); LW_ERR_CLI_USAGE on bad flags. */
export function parse<T extends FlagOptions>(argv: string[], options: T, usage: string): FlagValues<T> {
  const { values } = parseCommandLine(argv, { ...options, help: { type: 'boolean', short: 'h' } }, 'LW_ERR_CLI_USAGE');
  if ((values as Record<string, unknown>).help) {
    process.stdout.write(usage.trimStart() + '\n');
    process.exit(0);
  }
  return values as FlagValues<T>;
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
