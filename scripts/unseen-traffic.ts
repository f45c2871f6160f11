/**
 * Clean traffic of styles the shipped corpus never held, from real files nobody on this project
 * wrote: the ones a Debian machine with this repository's node_modules has (C headers, TypeScript
 * declarations, JavaScript, Perl modules, shell scripts, config files, READMEs, licence texts, man
 * page sources, Python's standard library, and long documents). Issue 12 measures false alerts on
 * such traffic, with the shipped detector and after calibrating on a sample of it.
 *
 *   npx tsx scripts/unseen-traffic.ts [--model DIR] [--per-style N] [--out-dir DIR]
 *
 * Writes DIR/calibration.jsonl and DIR/test.jsonl (JSONL lines {"prompt", "style", "source"}: the
 * traffic format of `fit-anomaly --prompts`, `serve --learn` and bench/false-alerts.ts), half of each
 * style in each, by a hash of the file's path: the same machine gives the same files. The texts are
 * not checked in (other people's files); the counts per style are printed.
 *
 * A prompt is a prefix of the file: a length drawn from the path's hash (300–3,000 characters, cut
 * at a line end), or the whole file for the `document` style (files of 8–14k characters); every
 * prompt is then cut to the model's context less room for the reply (PROMPT_TOKENS tokens), since the
 * built-in model reads at most 1,024 positions.
 */
import { gunzipSync } from 'node:zlib';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { DEFAULT_MODEL_DIR, PACKAGE_ROOT } from '../src/paths.js';
import { hashUnit } from '../src/rng.js';

const PROMPT_TOKENS = 960;

interface Style {
  name: string;
  roots: string[];
  /** Whether a file (its path and text) belongs to the style. */
  accept: (path: string, text: string) => boolean;
  whole?: boolean;
}

const lines = (t: string): string[] => t.split('\n');
/** Not minified or generated: lines a person would write. */
const handWritten = (t: string): boolean => {
  const ls = lines(t);
  return ls.length >= 8 && ls.every((l) => l.length < 400);
};
const shebang = (t: string): boolean => /^#!.*\b(sh|bash|dash)\b/.test(t);
const nm = join(PACKAGE_ROOT, 'node_modules');

const STYLES: Style[] = [
  { name: 'c-header', roots: ['/usr/include'], accept: (p, t) => p.endsWith('.h') && handWritten(t) },
  { name: 'ts-declarations', roots: [nm], accept: (p, t) => p.endsWith('.d.ts') && handWritten(t) },
  { name: 'javascript', roots: [nm], accept: (p, t) => /\.(c|m)?js$/.test(p) && !p.includes('.min.') && handWritten(t) },
  { name: 'perl', roots: ['/usr/share/perl5'], accept: (p, t) => p.endsWith('.pm') && handWritten(t) },
  { name: 'shell', roots: ['/usr/bin', '/usr/sbin', '/etc/init.d', '/usr/share/debconf'], accept: (_p, t) => shebang(t) && handWritten(t) },
  { name: 'config', roots: ['/etc'], accept: (p, t) => /\.(conf|cfg|ini|cnf)$/.test(p) && handWritten(t) },
  { name: 'readme', roots: [nm], accept: (p, t) => /\/README(\.md)?$/i.test(p) && handWritten(t) },
  { name: 'licence', roots: ['/usr/share/common-licenses', nm], accept: (p, t) => /\/(LICEN[CS]E|COPYING)[^/]*$|common-licenses\/[^/]+$/i.test(p) && handWritten(t) },
  { name: 'man-page', roots: ['/usr/share/man/man1', '/usr/share/man/man5', '/usr/share/man/man8'], accept: (p, t) => /\.[158]\.gz$/.test(p) && t.includes('.TH') },
  { name: 'python-stdlib', roots: ['/usr/lib/python3.11'], accept: (p, t) => p.endsWith('.py') && !p.includes('/test') && handWritten(t) },
  {
    name: 'document',
    roots: ['/usr/share/common-licenses', '/usr/share/man/man1', nm],
    accept: (p, t) => t.length >= 8000 && t.length <= 14000 && (/\.(md|txt|1\.gz)$/i.test(p) || p.includes('common-licenses')) && handWritten(t),
    whole: true,
  },
];

function* walk(dir: string, depth = 0): Generator<string> {
  if (depth > 8) return;
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return;
  }
  for (const n of names) {
    const p = join(dir, n);
    let st;
    try {
      st = statSync(p);
    } catch {
      continue;
    }
    if (st.isDirectory()) yield* walk(p, depth + 1);
    else if (st.isFile() && st.size > 200 && st.size < 400_000) yield p;
  }
}

function readText(p: string): string | undefined {
  try {
    const raw = readFileSync(p);
    const buf = p.endsWith('.gz') ? gunzipSync(raw) : raw;
    if (buf.includes(0)) return undefined;
    const text = buf.toString('utf8');
    return text.includes('\uFFFD') ? undefined : text;
  } catch {
    return undefined;
  }
}

/** A prefix of 300–3,000 characters (by the path's hash), ended at a line end. */
function prefix(path: string, text: string): string {
  const want = 300 + Math.floor(hashUnit(`len:${path}`) * 2700);
  if (text.length <= want) return text;
  const cut = text.lastIndexOf('\n', want);
  return text.slice(0, cut > 100 ? cut + 1 : want);
}

async function main(argv: string[]): Promise<void> {
  const arg = (k: string): string | undefined => (argv.includes(`--${k}`) ? argv[argv.indexOf(`--${k}`) + 1] : undefined);
  const perStyle = Number(arg('per-style') ?? 24);
  const outDir = arg('out-dir') ?? '/tmp/lw-unseen';
  const tok = await Tokenizer.fromDir(arg('model') ?? DEFAULT_MODEL_DIR);
  const fit = (t: string): string => {
    const ids = tok.encode(t);
    return ids.length <= PROMPT_TOKENS ? t : tok.decode(ids.slice(0, PROMPT_TOKENS));
  };
  const taken = new Set<string>();
  const out = { calibration: [] as string[], test: [] as string[] };
  for (const s of STYLES) {
    // Every candidate, ordered by a hash of its path: a fixed, spread-out sample of the machine's files.
    const candidates = [...new Set(s.roots.flatMap((r) => [...walk(r)]))].filter((p) => !taken.has(p)).sort((a, b) => hashUnit(`pick:${a}`) - hashUnit(`pick:${b}`));
    let n = 0;
    for (const p of candidates) {
      if (n === perStyle) break;
      const text = readText(p);
      if (text === undefined || !s.accept(p, text)) continue;
      const prompt = fit(s.whole ? text : prefix(p, text));
      if (prompt.trim().length < 100) continue;
      taken.add(p);
      const line = JSON.stringify({ prompt, style: s.name, source: p.startsWith(PACKAGE_ROOT) ? p.slice(PACKAGE_ROOT.length + 1) : p });
      (n % 2 === 0 ? out.calibration : out.test).push(line);
      n++;
    }
    console.log(`${s.name}: ${n} files (${Math.ceil(n / 2)} calibration, ${Math.floor(n / 2)} test) of ${candidates.length} candidates`);
  }
  mkdirSync(outDir, { recursive: true });
  for (const [k, v] of Object.entries(out)) writeFileSync(join(outDir, `${k}.jsonl`), v.join('\n') + '\n');
  console.log(`wrote ${out.calibration.length} calibration and ${out.test.length} test requests to ${outDir}`);
}

await main(process.argv.slice(2));
