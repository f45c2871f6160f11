/**
 * False alerts per request and per 1,000 tokens, measured through the real daemon (issue 12): the
 * held-out requests of every corpus style, the junk prompts of test/fixtures/junk-prompts.json and,
 * optionally, a JSONL file of the deployment's own traffic, each sent to `latentwatch serve` as a
 * client would (greedy, the corpus's generation length). A request is a false alert when any probe
 * fires on it; every one of these requests is clean.
 *
 *   npx tsx bench/false-alerts.ts [--model DIR] [--probe FILE]... [--corpus FILE] [--traffic FILE.jsonl]
 *                                 [--learn FILE.jsonl] [--learn-shuffle SEED] [--learn-target RATE] [--max-tokens N] [--out FILE.json]
 *                                 [--inject-sample N] [--inject-seed S] [--inject-layers L,...] [--inject-concepts a,b,...]
 *
 * Writes FILE.json, FILE.md and FILE.svg (rate per style and probe). Without --probe the daemon
 * loads the model's shipped probes.
 *
 * --learn runs the product's calibration on a deployment's own traffic first: the daemon (with an
 * admin key and a fresh state dir) is asked to relearn `generic-injection` from the next N requests
 * (POST /v1/admin/learn, N = the file's lines, 10..10000), every line of FILE.jsonl is sent as a
 * client would, and once the learned probe is swapped in the sets above are measured on it. The
 * learned file is copied beside FILE.json (FILE.learned.probe.json) for offline sensitivity figures
 * (`generic-report --compare`). Learn mode's fit share is the first 60% of the requests it counts,
 * so a file sorted by style gives a fit and a calibration share of different styles; live traffic
 * interleaves them: `--learn-shuffle SEED` sends the lines in a seeded random order instead.
 * `--learn-target RATE` asks for that false-alert rate per request (target_fpr; default: the
 * daemon's learn.targetFpr).
 *
 * --inject-sample N measures sensitivity the same way, through the daemon and on the deployment's
 * own kind of request: N requests of the traffic file (seeded sample, --inject-seed; the held-out
 * corpus without --traffic) are sent again with an admin injection of each family (a stored
 * concept, a seeded random direction, a stored contrast pair), at 0.5× and 0.25× the layer's mean
 * residual norm, during the prompt only (the latent trace afterwards) and throughout, at the layers
 * of --inject-layers (default ⌊L/3⌋, ⌊L/2⌋, ⌊5L/6⌋, taken in turn); --inject-concepts a,b,... draws the
 * concept family from those stored concepts only (e.g. a trial dataset's held-out ones). A request fires when any probe
 * fires; its score is the largest max_score/threshold over the probes, and the AUROC of each cell
 * is against the same score on every clean traffic request.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { corpusRequests, loadCorpus } from '../src/lab/corpus.js';
import { auroc } from '../src/lab/metrics.js';
import { barChart } from '../src/lab/svg-plot.js';
import { DEFAULT_CORPUS, DEFAULT_MODEL_DIR, PACKAGE_ROOT } from '../src/paths.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { createRng, shuffled } from '../src/rng.js';
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
  /** The largest max_score / threshold over the probes (null: no probe scored). */
  score: number | null;
}

type Family = 'concept' | 'random' | 'contrast';
type Window = 'prompt' | 'all';

interface InjectedResult {
  family: Family;
  strength: number;
  window: Window;
  layer: number;
  status: number;
  fired: boolean;
  score: number | null;
}

interface SensitivityCell {
  family: Family | 'all';
  strength: number;
  window: Window | 'both';
  /** The injection layer, on the per-layer rows (every family and window); null: every layer. */
  layer: number | null;
  requests: number;
  fired: number;
  firedShare: number;
  auroc: number;
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

type Verdict = { probes: { id: string; fired: boolean; max_score: number | null; threshold: number }[] };

/** A JSONL traffic file's lines: a JSON string, or {prompt, style?, max_tokens?} (as fit-anomaly reads them). */
function readTraffic(path: string): { prompt: string; style?: string; maxTokens?: number }[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const v = JSON.parse(l) as string | { prompt: string; style?: string; max_tokens?: number };
      return typeof v === 'string' ? { prompt: v } : { prompt: v.prompt, style: v.style, maxTokens: v.max_tokens };
    });
}

const ADMIN_KEY = 'bench-false-alerts-admin';

async function learnAdmin(url: string, method: 'GET' | 'POST', body?: unknown): Promise<Record<string, unknown>> {
  const r = await fetch(`${url}/v1/admin/learn`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await r.json()) as Record<string, unknown>;
  if (r.status >= 300) throw new Error(`/v1/admin/learn ${method}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** Relearn generic-injection from every line of `path` through the daemon's learn mode; the run's last report. */
async function learnFromTraffic(url: string, path: string, maxTokens: number, shuffleSeed: number | null, targetFpr: number | null): Promise<Record<string, unknown>> {
  const inFile = readTraffic(path);
  const lines = shuffleSeed === null ? inFile : shuffled(inFile, createRng(shuffleSeed));
  await learnAdmin(url, 'POST', { probe: 'generic-injection', requests: lines.length, ...(targetFpr === null ? {} : { target_fpr: targetFpr }) });
  // The run folds in the always-fitted baseline first; requests count once it is collecting.
  while ((await learnAdmin(url, 'GET')).phase === 'preparing') await new Promise((r) => setTimeout(r, 250));
  for (const [k, l] of lines.entries()) {
    const r = await send(url, l.prompt, l.maxTokens ?? maxTokens);
    if (r.status !== 200) throw new Error(`learn traffic line ${k + 1}: status ${r.status}`);
    if ((k + 1) % 25 === 0 || k + 1 === lines.length) console.error(`false-alerts: learning ${k + 1}/${lines.length} requests`);
  }
  for (const start = Date.now(); Date.now() - start < 600_000; await new Promise((r) => setTimeout(r, 500))) {
    const status = await learnAdmin(url, 'GET');
    if (status.phase === 'done') return status;
    if (status.phase === 'failed') throw new Error(`learn run failed: ${JSON.stringify(status)}`);
  }
  throw new Error('learn run did not finish within 10 minutes');
}

async function send(url: string, prompt: string | number[], maxTokens: number, inject?: Record<string, unknown>): Promise<Omit<RequestResult, 'set' | 'id'>> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(inject ? { authorization: `Bearer ${ADMIN_KEY}` } : {}) },
    body: JSON.stringify({ model: 'served', prompt, max_tokens: maxTokens, temperature: 0, ...(inject ? { latentwatch: { inject } } : {}) }),
  });
  const body = (await r.json()) as { latentwatch?: Verdict; usage?: { total_tokens: number } };
  const probes = body.latentwatch?.probes ?? [];
  return {
    status: r.status,
    tokens: body.usage?.total_tokens ?? 0,
    fired: probes.filter((p) => p.fired).map((p) => p.id),
    maxScore: Object.fromEntries(probes.map((p) => [p.id, p.max_score])),
    score: probes.some((p) => p.max_score !== null) ? Math.max(...probes.filter((p) => p.max_score !== null).map((p) => p.max_score! / p.threshold)) : null,
  };
}

/** The `latentwatch.inject` object for one injected request: stored vectors by name (relative scale), a random direction as a unit vector scaled to the layer's norm. */
function injection(family: Family, strength: number, window: Window, layer: number, k: number, lib: ConceptStore, seed: number, concepts: readonly string[] | null): Record<string, unknown> {
  if (family !== 'random') {
    const names = family === 'concept' && concepts ? concepts : lib.names(family);
    return { concept: names[k % names.length], layer, scale: strength, window };
  }
  const rng = createRng(seed * 100_003 + k);
  const v = Array.from({ length: lib.dModel }, () => rng.gaussian());
  const n = Math.hypot(...v);
  return { vector: v.map((x) => x / n), layer, scale: strength * lib.meanResidNorm(layer), window };
}

function sensitivityCells(injected: readonly InjectedResult[], clean: readonly number[]): SensitivityCell[] {
  const cell = (family: Family | 'all', strength: number, window: Window | 'both', rs: readonly InjectedResult[], layer: number | null = null): SensitivityCell => {
    const ok = rs.filter((r) => r.status === 200);
    const fired = ok.filter((r) => r.fired).length;
    return { family, strength, window, layer, requests: ok.length, fired, firedShare: ok.length ? fired / ok.length : 0, auroc: auroc(ok.map((r) => r.score ?? 0), clean) };
  };
  const cells: SensitivityCell[] = [];
  for (const strength of [...new Set(injected.map((r) => r.strength))]) {
    for (const family of ['concept', 'random', 'contrast'] as const) {
      for (const window of ['prompt', 'all'] as const) cells.push(cell(family, strength, window, injected.filter((r) => r.family === family && r.strength === strength && r.window === window)));
    }
    cells.push(cell('all', strength, 'both', injected.filter((r) => r.strength === strength)));
    for (const layer of [...new Set(injected.map((r) => r.layer))].sort((x, y) => x - y)) cells.push(cell('all', strength, 'both', injected.filter((r) => r.strength === strength && r.layer === layer), layer));
  }
  return cells;
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
  const a = parseArgs(argv, ['model', 'probe', 'corpus', 'traffic', 'learn', 'learn-shuffle', 'learn-target', 'max-tokens', 'inject-sample', 'inject-seed', 'inject-layers', 'inject-concepts', 'out', 'md']);
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
  if (traffic) for (const [i, l] of readTraffic(traffic).entries()) sets.push({ set: l.style ? `traffic: ${l.style}` : 'traffic', id: `traffic/${i}`, prompt: l.prompt });
  const learn = a.get('learn');
  const injectSample = a.has('inject-sample') ? a.num('inject-sample', 0) : 0;
  const injectSeed = a.has('inject-seed') ? a.num('inject-seed', 0) : 1;
  const lib = injectSample > 0 ? ConceptStore.open(join(a.get('model') ?? DEFAULT_MODEL_DIR, 'concepts'), null) : null;
  const injectConcepts = a.get('inject-concepts')?.split(',').map((x) => x.trim()) ?? null;
  for (const c of injectConcepts ?? []) if (!lib?.names('concept').includes(c)) throw new Error(`--inject-concepts: ${c} is not a stored concept of the model`);
  const injectLayers = lib ? (a.get('inject-layers')?.split(',').map(Number) ?? [Math.floor(lib.numLayers / 3), Math.floor(lib.numLayers / 2), Math.floor((5 * lib.numLayers) / 6)]) : [];
  const stateDir = learn ? mkdtempSync(join(tmpdir(), 'lw-false-alerts-learn-')) : null;
  const daemon = await spawnDaemonProcess({
    argv: [
      ...(a.get('model') ? ['--model', a.get('model')!] : []),
      ...probes.flatMap((p) => ['--probe', p]),
      ...(stateDir ? ['--state-dir', stateDir] : []),
      ...['--port', '0', '--served-model-name', 'served', '--alert-log', ':memory:', '--log-level', 'warn'],
    ],
    env: { ...(stateDir || injectSample > 0 ? { LATENTWATCH_ADMIN_KEY: ADMIN_KEY } : {}), ...(injectSample > 0 ? { LATENTWATCH_ALLOW_INJECTION: '1' } : {}) },
  });
  const out = a.get('out') ?? join(PACKAGE_ROOT, 'bench/out/false-alerts.json');
  let learned: Record<string, unknown> | null = null;
  const results: RequestResult[] = [];
  const injected: InjectedResult[] = [];
  try {
    if (learn && stateDir) {
      learned = (await learnFromTraffic(daemon.url, learn, maxTokens, a.has('learn-shuffle') ? a.num('learn-shuffle', 0) : null, a.has('learn-target') ? a.num('learn-target', 0) : null)).last as Record<string, unknown>;
      const version = learned.version as number;
      mkdirSync(dirname(out), { recursive: true });
      copyFileSync(join(stateDir, 'learned', `generic-injection.v${version}.probe.json`), out.replace(/\.json$/, '.learned.probe.json'));
    }
    for (const [k, s] of sets.entries()) {
      results.push({ set: s.set, id: s.id, ...(await send(daemon.url, s.prompt, maxTokens)) });
      if ((k + 1) % 25 === 0 || k + 1 === sets.length) console.error(`false-alerts: ${k + 1}/${sets.length} requests`);
    }
    if (lib) {
      const pool = sets.filter((x) => (traffic ? x.set.startsWith('traffic') : x.set.startsWith('corpus: ')));
      const sample = shuffled(pool, createRng(injectSeed)).slice(0, injectSample);
      const plan = sample.flatMap((x, j) => (['concept', 'random', 'contrast'] as const).flatMap((family, fi) => [0.5, 0.25].flatMap((strength, si) => (['prompt', 'all'] as const).map((window, wi) => ({ x, family, strength, window, layer: injectLayers[(j + fi + si + wi) % injectLayers.length], k: j * 4 + si * 2 + wi })))));
      for (const [n, q] of plan.entries()) {
        const r = await send(daemon.url, q.x.prompt, maxTokens, injection(q.family, q.strength, q.window, q.layer, q.k, lib, injectSeed, injectConcepts));
        if (r.status !== 200) throw new Error(`injected request ${n + 1}: status ${r.status}`);
        injected.push({ family: q.family, strength: q.strength, window: q.window, layer: q.layer, status: r.status, fired: r.fired.length > 0, score: r.score });
        if ((n + 1) % 25 === 0 || n + 1 === plan.length) console.error(`false-alerts: injected ${n + 1}/${plan.length} requests`);
      }
    }
  } finally {
    await daemon.stop();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
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
  const svg = barChart({
    title: 'Requests with a false alert, per set (clean traffic through the daemon)',
    yLabel: 'fraction of requests',
    categories: summaries.map((s) => s.set.replace('corpus: ', '')),
    series: probeIds.map((p) => ({ name: p, values: summaries.map((s) => (s.requests ? s.byProbe[p] / s.requests : null)) })),
    referenceLines: [{ y: 0.01, label: '1% goal' }],
    width: 900,
  });
  writeText(out.replace(/\.json$/, '.svg'), svg);
  const cleanScores = (trafficAll.length ? trafficAll : corpusAll).filter((r) => r.status === 200).map((r) => r.score ?? 0);
  const sensitivity = injected.length ? sensitivityCells(injected, cleanScores) : [];
  const sensitivityPath = out.replace(/\.json$/, '.sensitivity.svg');
  if (sensitivity.length) {
    const rows = sensitivity.filter((c) => c.family !== 'all' || c.layer !== null);
    writeText(
      sensitivityPath,
      barChart({
        title: 'Injected requests that fire, through the daemon (same requests as the clean traffic)',
        yLabel: 'fraction of requests',
        categories: rows.map((c) => (c.layer === null ? `${c.family} ×${c.strength} ${c.window}` : `layer ${c.layer} ×${c.strength}`)),
        series: [
          { name: 'fired', values: rows.map((c) => c.firedShare) },
          { name: 'AUROC vs clean traffic', values: rows.map((c) => c.auroc) },
        ],
        referenceLines: [{ y: 0.9, label: '×0.5 goal' }, { y: 0.5, label: '×0.25 goal' }, { y: 0.95, label: 'AUROC goal' }],
        width: 1100,
      }),
    );
  }
  const markdown = [
    `# False alerts on clean traffic (${new Date().toISOString().slice(0, 10)})`,
    '',
    `Daemon: ${a.get('model') ?? 'built-in model'}, probes ${probes.length ? probes.join(', ') : '(shipped)'}; ${maxTokens} greedy tokens per request; corpus ${corpus.name} (held-out requests only)`,
    '',
    machineMarkdown(describeMachine()),
    '',
    ...(learned
      ? [
          `Learned first from ${learn}${a.has('learn-shuffle') ? ` (lines in a random order, seed ${a.get('learn-shuffle')})` : ' (lines in file order)'} through the daemon's learn mode (POST /v1/admin/learn): ${JSON.stringify(learned.requests)} requests, ` +
            `target ${learned.targetFpr} per request, threshold ${learned.threshold}${learned.empiricalThreshold !== undefined && learned.empiricalThreshold !== learned.threshold ? ` (the calibration share's own ${learned.empiricalThreshold}, raised: too few requests to hold the rate)` : ''} (replaced ${JSON.stringify(learned.replaced)}), achieved rate on its calibration share ${learned.achievedFpr}; ` +
            `the learned file: ${out.replace(/\.json$/, '.learned.probe.json').split('/').at(-1)}`,
          '',
        ]
      : []),
    markdownTable(
      ['set', 'requests', 'errors', 'tokens', 'false-alert requests', 'per request', 'per 1,000 tokens', ...probeIds.map((p) => `${p} fired`)],
      summaries.map((s) => [s.set, s.requests, s.errors, s.tokens, s.falseAlertRequests, s.perRequest, s.per1kTokens, ...probeIds.map((p) => s.byProbe[p])]),
    ),
    '',
    `![false alerts](${out.replace(/\.json$/, '.svg').split('/').at(-1)})`,
    ...(sensitivity.length
      ? [
          '',
          `## Sensitivity on the same kind of request`,
          '',
          `${injectSample} ${traffic ? 'traffic' : 'held-out corpus'} requests (seed ${injectSeed}) sent again with an admin injection per family, strength and window, at layers ${injectLayers.join(', ')} in turn (${injected.length} requests)${injectConcepts ? `; concepts drawn from ${injectConcepts.join(', ')}` : ''}. Fired: any probe fired. AUROC: the request's largest max_score / threshold against the same on the ${cleanScores.length} clean ${traffic ? 'traffic' : 'corpus'} requests above.`,
          '',
          markdownTable(
            ['family', 'strength', 'window', 'layer', 'requests', 'fired', 'share', 'AUROC'],
            sensitivity.map((c) => [c.family, c.strength, c.window === 'prompt' ? 'prompt only' : c.window === 'all' ? 'throughout' : c.window, c.layer ?? 'all', c.requests, c.fired, c.firedShare, c.auroc]),
          ),
          '',
          `![sensitivity](${sensitivityPath.split('/').at(-1)})`,
        ]
      : []),
  ].join('\n');
  writeBenchResult(a, 'false-alerts', { machine: describeMachine(), corpus: corpus.name, maxTokens, probes, learned: learned && { from: learn, shuffleSeed: a.has('learn-shuffle') ? a.num('learn-shuffle', 0) : null, ...learned }, summaries, results, ...(injected.length ? { sensitivity: { sample: injectSample, seed: injectSeed, layers: injectLayers, cells: sensitivity, injected } } : {}) }, markdown);
}

runIfMain(import.meta.url, main);
