/**
 * Pools learn-mode runs of bench/false-alerts.ts (`--learn`) per model and compares folders of
 * them (e.g. one learn target against another): false alerts on the tested traffic, junk and the
 * held-out corpus, per request and per 1,000 tokens. Prints a markdown table and draws a bar chart.
 *
 *   npx tsx scripts/learn-runs-summary.ts --out FILE.svg LABEL=DIR [LABEL=DIR]...
 *
 * DIR holds the runs' FILE.json reports, in it or one folder down (seed2/): every
 * `<model>-learn-*.json` with a `learned` block counts.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { barChart } from '../src/lab/svg-plot.js';
import { writeText } from '../bench/lib/report.js';

interface Summary {
  set: string;
  requests: number;
  tokens: number;
  falseAlertRequests: number;
}

interface Pooled {
  runs: number;
  traffic: { fired: number; requests: number; tokens: number };
  junk: { fired: number; requests: number };
  corpus: { fired: number; requests: number };
}

function reports(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...reports(p));
    else if (/-learn-.*\.json$/.test(name) && !name.endsWith('.probe.json')) out.push(p);
  }
  return out;
}

function pool(dir: string): Map<string, Pooled> {
  const byModel = new Map<string, Pooled>();
  for (const path of reports(dir)) {
    const r = JSON.parse(readFileSync(path, 'utf8')) as { learned: unknown; summaries: Summary[] };
    if (!r.learned) continue;
    const model = path.split('/').at(-1)!.split('-learn-')[0];
    const p = byModel.get(model) ?? byModel.set(model, { runs: 0, traffic: { fired: 0, requests: 0, tokens: 0 }, junk: { fired: 0, requests: 0 }, corpus: { fired: 0, requests: 0 } }).get(model)!;
    const s = new Map(r.summaries.map((x) => [x.set, x]));
    const need = (set: string): Summary => s.get(set) ?? (() => { throw new Error(`${path}: no "${set}" summary`); })();
    p.runs++;
    p.traffic.fired += need('traffic: all').falseAlertRequests;
    p.traffic.requests += need('traffic: all').requests;
    p.traffic.tokens += need('traffic: all').tokens;
    p.junk.fired += need('junk').falseAlertRequests;
    p.junk.requests += need('junk').requests;
    p.corpus.fired += need('corpus: all held-out').falseAlertRequests;
    p.corpus.requests += need('corpus: all held-out').requests;
  }
  return byModel;
}

const args = process.argv.slice(2);
const outAt = args.indexOf('--out');
if (outAt < 0 || outAt + 1 >= args.length) throw new Error('usage: learn-runs-summary.ts --out FILE.svg LABEL=DIR [LABEL=DIR]...');
const out = args[outAt + 1];
const folders = args.filter((_, i) => i !== outAt && i !== outAt + 1).map((a) => {
  const eq = a.indexOf('=');
  if (eq < 1) throw new Error(`expected LABEL=DIR, got ${a}`);
  return { label: a.slice(0, eq), pooled: pool(a.slice(eq + 1)) };
});
const models = [...new Set(folders.flatMap((f) => [...f.pooled.keys()]))].sort();
const pct = (k: number, n: number): string => `${k} of ${n} (${((100 * k) / n).toFixed(2)}%)`;
console.log('| model | runs | unseen traffic | per 1,000 tokens | junk | held-out corpus |');
console.log('|---|---|---|---|---|---|');
for (const m of models) {
  for (const f of folders) {
    const p = f.pooled.get(m);
    if (!p) continue;
    console.log(`| ${m}, ${f.label} | ${p.runs} | ${pct(p.traffic.fired, p.traffic.requests)} | ${((1000 * p.traffic.fired) / p.traffic.tokens).toFixed(4)} | ${pct(p.junk.fired, p.junk.requests)} | ${pct(p.corpus.fired, p.corpus.requests)} |`);
  }
}
writeText(
  out,
  barChart({
    title: 'Learn mode: false alerts per request on unseen traffic, pooled runs',
    yLabel: 'false-alert requests (%)',
    categories: models,
    series: folders.map((f) => ({ name: f.label, values: models.map((m) => { const p = f.pooled.get(m); return p ? (100 * p.traffic.fired) / p.traffic.requests : null; }) })),
    referenceLines: [{ y: 1, label: 'goal 1%' }],
  }),
);
console.log(`wrote ${out}`);
