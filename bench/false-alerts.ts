/**
 * False alerts per request and per 1,000 tokens, measured through the real daemon (issue 12): the
 * held-out requests of every corpus style, the junk prompts of test/fixtures/junk-prompts.json and,
 * optionally, a JSONL file of the deployment's own traffic, each sent to `latentwatch serve` as a
 * client would (greedy, the corpus's generation length). A request is a false alert when any probe
 * fires on it; every one of these requests is clean.
 *
 *   npx tsx bench/false-alerts.ts [--model DIR] [--probe FILE]... [--corpus FILE] [--traffic FILE.jsonl]
 *                                 [--max-tokens N] [--out FILE.json]
 *
 * Writes FILE.json, FILE.md and FILE.svg (rate per style and probe). Without --probe the daemon
 * loads the model's shipped probes.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { corpusRequests, loadCorpus } from '../src/lab/corpus.js';
import { barChart } from '../src/lab/svg-plot.js';
import { DEFAULT_CORPUS, PACKAGE_ROOT } from '../src/paths.js';
import { spawnDaemonProcess } from './lib/daemon-process.js';
import { describeMachine, machineMarkdown } from './lib/machine.js';
import { markdownTable, parseArgs, runIfMain, usageOf, writeBenchResult, writeText } from './lib/report.js';

interface RequestResult {
  set: string;
  id: string;
  status: number;
  tokens: number;
  fired: string[];
  maxScore: Record<string, number | null>;
}

interface SetSummary {
  set: string;
  requests: number;
  errors: number;
  tokens: number;
  /** Requests on which at least one probe fired. */
  falseAlertRequests: number;
  perRequest: number;
  per1kTokens: number;
  byProbe: Record<string, number>;
}

type Verdict = { probes: { id: string; fired: boolean; max_score: number | null }[] };

async function send(url: string, prompt: string | number[], maxTokens: number): Promise<Omit<RequestResult, 'set' | 'id'>> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'served', prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  const body = (await r.json()) as { latentwatch?: Verdict; usage?: { total_tokens: number } };
  const probes = body.latentwatch?.probes ?? [];
  return {
    status: r.status,
    tokens: body.usage?.total_tokens ?? 0,
    fired: probes.filter((p) => p.fired).map((p) => p.id),
    maxScore: Object.fromEntries(probes.map((p) => [p.id, p.max_score])),
  };
}

function summarise(set: string, rs: readonly RequestResult[], probeIds: readonly string[]): SetSummary {
  const ok = rs.filter((r) => r.status === 200);
  const tokens = ok.reduce((a, r) => a + r.tokens, 0);
  const falseAlertRequests = ok.filter((r) => r.fired.length > 0).length;
  return {
    set,
    requests: ok.length,
    errors: rs.length - ok.length,
    tokens,
    falseAlertRequests,
    perRequest: ok.length ? falseAlertRequests / ok.length : 0,
    per1kTokens: tokens ? (1000 * falseAlertRequests) / tokens : 0,
    byProbe: Object.fromEntries(probeIds.map((p) => [p, ok.filter((r) => r.fired.includes(p)).length])),
  };
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['model', 'probe', 'corpus', 'traffic', 'max-tokens', 'out', 'md']);
  if (a.has('help')) return void console.log(usageOf(import.meta.url));
  const probes = argv.flatMap((x, i) => (argv[i - 1] === '--probe' ? [x] : []));
  const corpus = loadCorpus(a.get('corpus') ?? DEFAULT_CORPUS);
  const maxTokens = a.num('max-tokens', corpus.generation.maxTokens);
  const junk = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'test/fixtures/junk-prompts.json'), 'utf8')) as Record<string, string | number[]>;
  const sets: { set: string; id: string; prompt: string | number[] }[] = [
    ...corpusRequests(corpus)
      .filter((r) => r.split === 'test')
      .map((r) => ({ set: `corpus: ${r.style}`, id: r.id, prompt: r.text })),
    ...Object.entries(junk).map(([id, prompt]) => ({ set: 'junk', id, prompt })),
  ];
  const traffic = a.get('traffic');
  if (traffic) {
    readFileSync(traffic, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .forEach((l, i) => {
        const v = JSON.parse(l) as string | { prompt: string; style?: string };
        const style = typeof v === 'string' ? undefined : v.style;
        sets.push({ set: style ? `traffic: ${style}` : 'traffic', id: `traffic/${i}`, prompt: typeof v === 'string' ? v : v.prompt });
      });
  }
  const daemon = await spawnDaemonProcess({
    argv: [...(a.get('model') ? ['--model', a.get('model')!] : []), ...probes.flatMap((p) => ['--probe', p]), '--port', '0', '--served-model-name', 'served', '--alert-log', ':memory:', '--log-level', 'warn'],
  });
  const results: RequestResult[] = [];
  try {
    for (const [k, s] of sets.entries()) {
      results.push({ set: s.set, id: s.id, ...(await send(daemon.url, s.prompt, maxTokens)) });
      if ((k + 1) % 25 === 0 || k + 1 === sets.length) console.error(`false-alerts: ${k + 1}/${sets.length} requests`);
    }
  } finally {
    await daemon.stop();
  }
  const probeIds = [...new Set(results.flatMap((r) => Object.keys(r.maxScore)))].sort();
  const names = [...new Set(results.map((r) => r.set))];
  const corpusAll = results.filter((r) => r.set.startsWith('corpus: '));
  const trafficAll = results.filter((r) => r.set.startsWith('traffic'));
  const summaries = [
    ...names.map((n) => summarise(n, results.filter((r) => r.set === n), probeIds)),
    summarise('corpus: all held-out', corpusAll, probeIds),
    ...(trafficAll.length ? [summarise('traffic: all', trafficAll, probeIds)] : []),
  ];
  const out = a.get('out') ?? join(PACKAGE_ROOT, 'bench/out/false-alerts.json');
  const svg = barChart({
    title: 'Requests with a false alert, per set (clean traffic through the daemon)',
    yLabel: 'fraction of requests',
    categories: summaries.map((s) => s.set.replace('corpus: ', '')),
    series: probeIds.map((p) => ({ name: p, values: summaries.map((s) => (s.requests ? s.byProbe[p] / s.requests : null)) })),
    referenceLines: [{ y: 0.01, label: '1% goal' }],
    width: 900,
  });
  writeText(out.replace(/\.json$/, '.svg'), svg);
  const markdown = [
    `# False alerts on clean traffic (${new Date().toISOString().slice(0, 10)})`,
    '',
    `Daemon: ${a.get('model') ?? 'built-in model'}, probes ${probes.length ? probes.join(', ') : '(shipped)'}; ${maxTokens} greedy tokens per request; corpus ${corpus.name} (held-out requests only)`,
    '',
    machineMarkdown(describeMachine()),
    '',
    markdownTable(
      ['set', 'requests', 'errors', 'tokens', 'false-alert requests', 'per request', 'per 1,000 tokens', ...probeIds.map((p) => `${p} fired`)],
      summaries.map((s) => [s.set, s.requests, s.errors, s.tokens, s.falseAlertRequests, s.perRequest, s.per1kTokens, ...probeIds.map((p) => s.byProbe[p])]),
    ),
    '',
    `![false alerts](${out.replace(/\.json$/, '.svg').split('/').at(-1)})`,
  ].join('\n');
  writeBenchResult(a, 'false-alerts', { machine: describeMachine(), corpus: corpus.name, maxTokens, probes, summaries, results }, markdown);
}

runIfMain(import.meta.url, main);
