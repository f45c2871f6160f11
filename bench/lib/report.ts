/**
 * Bench output: Markdown tables for people, JSON files for machines, a tiny argv parser and the
 * scripts' shared entry point.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** Where a script's result goes unless --out says otherwise. */
const BENCH_OUT = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'out');

export type Cell = string | number | null | undefined;

function fmt(c: Cell): string {
  if (c === null || c === undefined || (typeof c === 'number' && Number.isNaN(c))) return '–';
  if (typeof c === 'number') {
    if (Number.isInteger(c)) return String(c);
    const a = Math.abs(c);
    return a >= 100 ? c.toFixed(0) : a >= 10 ? c.toFixed(1) : a >= 1 ? c.toFixed(2) : c.toPrecision(3);
  }
  return c.replace(/\|/g, '\\|');
}

export function markdownTable(headers: readonly string[], rows: readonly (readonly Cell[])[]): string {
  const lines = [`| ${headers.join(' | ')} |`, `|${headers.map(() => '---').join('|')}|`];
  for (const r of rows) lines.push(`| ${r.map(fmt).join(' | ')} |`);
  return lines.join('\n');
}

/** A bench script's --help: its opening doc comment, without the comment markers. */
export function usageOf(file: string | URL): string {
  return readFileSync(file, 'utf8').split('*/')[0].replace(/^\/\*\*?|^ \* ?/gm, '');
}

/** Writes pretty JSON, creating the directory. */
export function writeJson(path: string, value: unknown): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`);
}

export function writeText(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

export interface ParsedArgs {
  flags: Set<string>;
  values: Map<string, string>;
  positionals: string[];
  /** The value of --name, or the fallback. */
  get(name: string, fallback?: string): string | undefined;
  num(name: string, fallback: number): number;
  has(name: string): boolean;
}

/**
 * Parses `--flag`, `--key value` and `--key=value`. Names listed in `valued` always take the next
 * argument; any other `--name` followed by a non-option also does.
 */
export function parseArgs(argv: readonly string[], valued: readonly string[] = []): ParsedArgs {
  const flags = new Set<string>();
  const values = new Map<string, string>();
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    if (eq > 0) {
      values.set(a.slice(2, eq), a.slice(eq + 1));
      continue;
    }
    const name = a.slice(2);
    const next = argv[i + 1];
    if (valued.includes(name) || (next !== undefined && !next.startsWith('--') && !valued.length)) {
      if (next === undefined) throw new Error(`--${name} needs a value`);
      values.set(name, next);
      i++;
    } else {
      flags.add(name);
    }
  }
  return {
    flags,
    values,
    positionals,
    get: (name, fallback) => values.get(name) ?? fallback,
    num: (name, fallback) => {
      const v = values.get(name);
      if (v === undefined) return fallback;
      const n = Number(v);
      if (!Number.isFinite(n)) throw new Error(`--${name} must be a number (got ${v})`);
      return n;
    },
    has: (name) => flags.has(name) || values.has(name),
  };
}

/**
 * A script's result: the Markdown on stdout, the JSON at --out (default bench/out/NAME.json) and
 * the Markdown beside it as .md (or at --md).
 */
export function writeBenchResult(a: ParsedArgs, name: string, result: unknown, markdown: string): void {
  console.log(markdown);
  const out = a.get('out') ?? join(BENCH_OUT, `${name}.json`);
  writeJson(out, result);
  writeText(a.get('md') ?? `${out.replace(/\.json$/, '')}.md`, `${markdown}\n`);
  console.error(`wrote ${out}`);
}

/**
 * Runs `main` with the arguments when the module at `moduleUrl` is the process's entry point (a
 * script bench/run.ts imports must not run itself); a failure is printed and exits 1.
 */
export function runIfMain(moduleUrl: string, main: (argv: string[]) => Promise<void> | void): void {
  if (!process.argv[1] || moduleUrl !== pathToFileURL(resolve(process.argv[1])).href) return;
  Promise.resolve()
    .then(() => main(process.argv.slice(2)))
    .catch((e: unknown) => {
      console.error(e);
      process.exit(1);
    });
}
