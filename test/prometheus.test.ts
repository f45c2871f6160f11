/**
 * Proof against a real Prometheus (Debian's prometheus package; .ci/run installs it).
 *
 * Starts two `latentwatch serve` replicas on 127.0.0.1 with an admin key and injection enabled, and a
 * Prometheus scraping both every second with deploy/prometheus/rules loaded (evaluated every second):
 *   - `traffic` takes the requests: plain ones, streamed and not, and admin-injected ones that make
 *     the probe fire with nothing in the text (a silent detection), in two rounds a few scrapes apart
 *     so that every counter both exists and moves;
 *   - `canary` runs the injection canary every 2 s and takes no requests. A canary run is an admin
 *     injection through the normal request path, so it counts as a detection too; keeping it on its
 *     own replica proves that the traffic replica's SilentLatentDetection comes from the admin
 *     request (it is checked quiet before that request and firing after it).
 * Then, through Prometheus's HTTP API:
 *   - every query of every checked-in dashboard (Grafana variables substituted: $__rate_interval →
 *     RATE_WINDOW, $instance and $probe → .*) parses and returns data, and every template variable's
 *     label_values() finds values; key panels show the traffic that was sent;
 *   - every rule in deploy/prometheus/rules is healthy (evaluated, no error), every recording rule
 *     returns data, every metric an alert expression selects has series;
 *   - on the traffic replica SilentLatentDetection and LatentInjectionDetected are pending or firing;
 *     DaemonDown, AlertLogFailing, AlertsDropped and CanaryFailed are not, anywhere.
 * Nothing is skipped: without prometheus/promtool, or without a build (`npm run build`), it fails.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { parse as parseYaml } from 'yaml';
import { metricNames, substituteVariables } from '../grafana/src/promql.js';
import { type DashboardJson, type DashboardQuery, dashboardQueries } from '../grafana/src/queries.js';
import { writeConceptVectors } from '../src/lab/concepts.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, spawnServe, trainTestProbe, type ServeProcess, type TestProbe } from './daemon-fixture.js';
import { CODE16M, freePort, tempDir, waitUntil } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const RULES = join(ROOT, 'deploy', 'prometheus', 'rules', 'latentwatch.rules.yml');
const DASHBOARDS = join(ROOT, 'grafana', 'dashboards');
const MODEL = 'qwen2-code-16m';
const CANARY_CONCEPT = 'canary-direction';
/**
 * What $__rate_interval becomes. Grafana makes it max($__interval + scrape, 4 × scrape); with a 1 s
 * scrape and this test's short life, 15 s holds both traffic rounds' scrapes at the query time.
 */
const RATE_WINDOW = '15s';
const VARIABLES = { __rate_interval: RATE_WINDOW, instance: '.*', probe: '.*' };

let work: string;
let probe: TestProbe;
let prometheus: ChildProcess | undefined;
let promPort: number;
let promLog = '';
let subscriber: WebSocket | undefined;
/** Evaluation time for every query: a few scrapes after the last traffic. */
let queryTime: number;

interface Replica extends ServeProcess {
  name: string;
  /** The Prometheus instance label. */
  instance: string;
}
let traffic: Replica;
let canary: Replica;
const started = Date.now();

function need(cmd: string): void {
  if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) {
    throw new Error(`${cmd} not found: install Debian's prometheus package (apt-get install -y prometheus; .ci/run does this). This test does not skip.`);
  }
}


/**
 * A copy of the default model (symlinks) with one stored concept vector, the test probe's direction,
 * so the canary (which injects a stored concept at the middle layer) has something to inject.
 */
function modelWithCanaryConcept(dir: string): string {
  mkdirSync(dir);
  // Link the checkpoint's files, never its concepts/ or probes/ (written below; the shipped ones stay untouched).
  for (const f of readdirSync(CODE16M)) if (f !== 'concepts' && f !== 'probes') symlinkSync(join(CODE16M, f), join(dir, f));
  const probeFile = JSON.parse(readFileSync(probe.path, 'utf8')) as { modelFingerprint: string; dModel: number };
  const config = JSON.parse(readFileSync(join(CODE16M, 'config.json'), 'utf8')) as { num_hidden_layers: number };
  const L = config.num_hidden_layers;
  const d = probeFile.dModel;
  const direction = Float32Array.from(probe.vector);
  writeConceptVectors(join(dir, 'concepts'), {
    modelFingerprint: probeFile.modelFingerprint,
    dModel: d,
    numLayers: L,
    template: 'Tell me about {word}',
    chat: false,
    concepts: [CANARY_CONCEPT],
    baseline: [],
    contrastNames: [],
    contrastPairs: [],
    conceptVectors: [Array.from({ length: L }, () => direction)],
    contrastVectors: [],
    baselineMean: Array.from({ length: L }, () => new Float32Array(d)),
    // A relative strength of 1 injects the test probe's own scale (the mean residual norm it was trained at).
    meanResidNorm: Array.from({ length: L }, () => probe.scale),
  });
  return dir;
}

/** A `latentwatch serve` replica on a port it binds itself (port 0), found in its log. */
async function startReplica(name: string, modelDir: string, env: Record<string, string>): Promise<Replica> {
  const s = await spawnServe(
    ['--model', modelDir, '--served-model-name', MODEL, '--probe', probe.path, '--alert-log', join(work, `${name}-alerts.db`)],
    { LATENTWATCH_HOST: '127.0.0.1', LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', ...env },
    { what: `latentwatch serve (${name})`, timeoutMs: 240_000 },
  );
  return { ...s, name, instance: `127.0.0.1:${s.port}` };
}

async function startPrometheus(): Promise<void> {
  const config = join(work, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      'rule_files:',
      `  - ${JSON.stringify(RULES)}`,
      'scrape_configs:',
      '  - job_name: latentwatch',
      '    metrics_path: /metrics',
      '    static_configs:',
      `      - targets: ['${traffic.instance}', '${canary.instance}']`,
      '',
    ].join('\n'),
  );
  // The config (and the rules it loads) must pass promtool before Prometheus runs it.
  const check = spawnSync('promtool', ['check', 'config', config], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`promtool check config failed:\n${check.stdout}${check.stderr}`);
  // Prometheus cannot report a port it bound itself: take a free one from the OS right before.
  promPort = await freePort();
  prometheus = spawn(
    'prometheus',
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(work, 'tsdb')}`,
      `--web.listen-address=127.0.0.1:${promPort}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  prometheus.stdout!.on('data', (b) => (promLog += String(b)));
  prometheus.stderr!.on('data', (b) => (promLog += String(b)));
  await waitUntil(async () => (await fetch(`http://127.0.0.1:${promPort}/-/ready`)).ok, { timeoutMs: 60_000, stepMs: 200, what: 'prometheus to be ready', detail: () => promLog.slice(-4000) });
}

// ---- the daemon's API ------------------------------------------------------------------------

async function post(path: string, body: unknown, key = API_KEY): Promise<Record<string, unknown>> {
  const r = await fetch(`http://127.0.0.1:${traffic.port}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${path} → ${r.status}: ${text}`);
  if ((body as { stream?: boolean }).stream) return { stream: text };
  return JSON.parse(text) as Record<string, unknown>;
}

interface Verdict {
  probes: { id: string; fired: boolean }[];
  silent?: boolean;
}
const verdictOf = (r: Record<string, unknown>) => r.latentwatch as Verdict;

async function plainTraffic(round: number): Promise<void> {
  const c = await post('/v1/completions', { model: MODEL, prompt: `def add_${round}(a, b):\n`, max_tokens: 12, temperature: 0 });
  expect(verdictOf(c).probes.every((p) => !p.fired)).toBe(true);
  await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: `import os\n# round ${round}\n` }], max_tokens: 8, temperature: 0 });
  const s = await post('/v1/completions', { model: MODEL, prompt: 'class Cache:\n    def ', max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
  expect(String(s.stream)).toContain('[DONE]');
}

async function injectedRequest(round: number): Promise<void> {
  const r = await post(
    '/v1/completions',
    {
      model: MODEL,
      prompt: `def load_${round}(path):\n`,
      max_tokens: 8,
      temperature: 0,
      latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window: 'all' } },
    },
    ADMIN_KEY,
  );
  const v = verdictOf(r);
  expect(v.probes.find((p) => p.id === 'test-injection')?.fired, JSON.stringify(v)).toBe(true);
}

// ---- Prometheus's API ------------------------------------------------------------------------

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}
async function promQuery(expr: string, time = queryTime): Promise<Sample[]> {
  const url = new URL(`http://127.0.0.1:${promPort}/api/v1/query`);
  url.searchParams.set('query', expr);
  url.searchParams.set('time', String(time));
  const r = await fetch(url);
  const body = (await r.json()) as { status: string; error?: string; data?: { resultType: string; result: Sample[] } };
  if (body.status !== 'success') throw new Error(`query failed (${body.error}): ${expr}`);
  if (body.data!.resultType !== 'vector') throw new Error(`not an instant vector (${body.data!.resultType}): ${expr}`);
  return body.data!.result;
}
const value = (s: Sample[]) => s.map((x) => Number(x.value[1]));

interface PromRule {
  name: string;
  query: string;
  health: string;
  lastError?: string;
  type: 'alerting' | 'recording';
  state?: 'inactive' | 'pending' | 'firing';
  lastEvaluation: string;
}
async function promRules(): Promise<PromRule[]> {
  const r = (await (await fetch(`http://127.0.0.1:${promPort}/api/v1/rules`)).json()) as { data: { groups: { rules: PromRule[] }[] } };
  return r.data.groups.flatMap((g) => g.rules);
}

function dashboards(): { file: string; queries: DashboardQuery[] }[] {
  return readdirSync(DASHBOARDS)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => ({ file, queries: dashboardQueries(JSON.parse(readFileSync(join(DASHBOARDS, file), 'utf8')) as DashboardJson) }));
}

/** Alerts Prometheus holds now (pending or firing) for one alert name. */
async function activeAlerts(name: string): Promise<{ labels: Record<string, string>; state: string }[]> {
  const r = (await (await fetch(`http://127.0.0.1:${promPort}/api/v1/alerts`)).json()) as {
    data: { alerts: { labels: Record<string, string>; state: string }[] };
  };
  return r.data.alerts.filter((a) => a.labels.alertname === name);
}

/** Waits until every rule has been evaluated after `t` (seconds). */
async function rulesEvaluatedAfter(t: number): Promise<void> {
  await waitUntil(async () => (await promRules()).every((r) => Date.parse(r.lastEvaluation) / 1000 > t), {
    timeoutMs: 30_000,
    stepMs: 200,
    what: `every rule to be evaluated after t=${t.toFixed(3)}`,
    detail: () => promLog.slice(-4000),
  });
}

/** Waits until Prometheus holds a scrape of `replica` taken after `t` (seconds): what it counted before `t` is in the TSDB. */
async function scrapedAfter(replica: Replica, t: number): Promise<void> {
  let last = NaN;
  await waitUntil(
    async () => {
      last = value(await promQuery(`timestamp(up{instance="${replica.instance}"})`, Date.now() / 1000))[0];
      return last > t;
    },
    { timeoutMs: 30_000, stepMs: 200, what: `a scrape of ${replica.name} after t=${t.toFixed(3)}`, detail: () => `last scrape at ${last}\n${promLog.slice(-2000)}` },
  );
}

let silentBeforeInjection: { labels: Record<string, string>; state: string }[] = [];

beforeAll(async () => {
  need('prometheus');
  need('promtool');
  if (!existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` first (npm test does)');
  work = tempDir('lw-prom-');
  probe = await trainTestProbe();
  // One replica first: it compiles the model graph into the shared build cache for the other.
  traffic = await startReplica('traffic', CODE16M, {});
  canary = await startReplica('canary', modelWithCanaryConcept(join(work, 'model')), { LATENTWATCH_CANARY: '1', LATENTWATCH_CANARY_INTERVAL: '2' });
  await startPrometheus();

  // A WebSocket subscriber on the traffic replica, so its subscriber gauge reads 1.
  subscriber = new WebSocket(`ws://127.0.0.1:${traffic.port}/v1/alerts`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  await new Promise<void>((resolve, reject) => {
    subscriber!.once('open', () => resolve());
    subscriber!.once('error', reject);
  });

  // Round 1: plain traffic, then (once Prometheus has scraped it and evaluated the rules on it) the
  // first admin injection, scraped in turn.
  await plainTraffic(1);
  await scrapedAfter(traffic, Date.now() / 1000);
  await rulesEvaluatedAfter(Date.now() / 1000);
  silentBeforeInjection = (await activeAlerts('SilentLatentDetection')).filter((a) => a.labels.instance === traffic.instance);
  await injectedRequest(1);
  await scrapedAfter(traffic, Date.now() / 1000);
  // Round 2 moves every counter that round 1 created.
  await plainTraffic(2);
  await injectedRequest(2);
  await scrapedAfter(traffic, Date.now() / 1000);
  // The canary replica (a run every 2 s) has run at least twice, as Prometheus sees it.
  let canaryRuns = NaN;
  await waitUntil(
    async () => {
      canaryRuns = value(await promQuery(`sum(latentwatch_canary_runs_total{instance="${canary.instance}"})`, Date.now() / 1000))[0];
      return canaryRuns >= 2;
    },
    { timeoutMs: 30_000, stepMs: 200, what: 'Prometheus to see two canary runs', detail: () => `latentwatch_canary_runs_total = ${canaryRuns}\n${canary.log().slice(-2000)}` },
  );
  queryTime = Date.now() / 1000;
  await rulesEvaluatedAfter(queryTime - 0.5);
}, 420_000);

afterAll(async () => {
  subscriber?.close();
  for (const p of [prometheus, traffic?.child, canary?.child]) {
    if (!p || p.exitCode !== null) continue;
    p.kill('SIGTERM');
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        p.kill('SIGKILL');
        resolve();
      }, 15_000);
      p.once('exit', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }
  if (work) rmSync(work, { recursive: true, force: true });
  console.log(`prometheus proof: ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

describe('a real Prometheus scraping two real daemon replicas', () => {
  it('scrapes both (up == 1) and sees their build and model', async () => {
    expect(value(await promQuery('up{job="latentwatch"}'))).toEqual([1, 1]);
    const model = await promQuery('latentwatch_model_info');
    expect(model.map((s) => s.metric.model)).toEqual([MODEL, MODEL]);
    expect(value(await promQuery('count(latentwatch_build_info)'))).toEqual([2]);
  });

  it('every dashboard query parses and returns data', async () => {
    const empty: string[] = [];
    let n = 0;
    for (const { file, queries } of dashboards()) {
      for (const q of queries) {
        const expr = substituteVariables(q.expr, VARIABLES);
        expect(expr, `${file} ${q.where}: unsubstituted variable`).not.toContain('$');
        // A variable's label_values(selector, label): the selector has series carrying the label.
        const promql = q.kind === 'variable' ? `count by (${q.label}) (${expr})` : expr;
        const result = await promQuery(promql); // throws if Prometheus cannot parse it
        n++;
        if (result.length === 0) empty.push(`${file} ${q.where} ${q.refId}: ${promql}`);
      }
    }
    expect(empty).toEqual([]);
    expect(n).toBeGreaterThan(40);
  });

  it('the panels show the traffic that was sent', async () => {
    const w = RATE_WINDOW;
    const t = `instance="${traffic.instance}"`;
    expect(value(await promQuery(`sum(rate(latentwatch_generation_tokens_total{${t}}[${w}]))`))[0]).toBeGreaterThan(0);
    expect(value(await promQuery(`sum(rate(latentwatch_latent_detections_total{${t}, verbalized="false"}[${w}]))`))[0]).toBeGreaterThan(0);
    // Exactly the two admin-injected requests, silent (code says nothing of injected thoughts).
    expect(value(await promQuery(`sum(latentwatch_latent_detections_total{${t}, probe="test-injection", verbalized="false"})`))).toEqual([2]);
    // Loaded probes' counters start at 0 (so increase() sees the first detection): none verbalised.
    const verbalised = value(await promQuery('latentwatch_latent_detections_total{verbalized="true"}'));
    expect(verbalised.length).toBeGreaterThan(0);
    expect(verbalised.every((v) => v === 0)).toBe(true);
    const ttft = value(await promQuery(`histogram_quantile(0.99, sum by (le) (rate(latentwatch_time_to_first_token_seconds_bucket{${t}}[${w}])))`))[0];
    expect(ttft).toBeGreaterThan(0);
    expect(Number.isFinite(ttft)).toBe(true);
    const buckets = await promQuery(`sum by (le) (increase(latentwatch_probe_score_bucket{${t}, probe="test-injection"}[${w}]))`);
    expect(buckets.length).toBeGreaterThan(10);
    expect(Math.max(...value(buckets))).toBeGreaterThan(0);
    expect(value(await promQuery(`latentwatch_websocket_subscribers{${t}}`))).toEqual([1]);
    expect(value(await promQuery(`latentwatch_alert_log_writes_total{${t}}`))[0]).toBeGreaterThanOrEqual(2);
    expect(value(await promQuery('sum(latentwatch_alert_log_failures_total)'))).toEqual([0]);
    // The canary replica: several runs, all successful.
    const c = `instance="${canary.instance}"`;
    expect(value(await promQuery(`sum(latentwatch_canary_runs_total{${c}})`))[0]).toBeGreaterThanOrEqual(2);
    expect(value(await promQuery(`sum(latentwatch_canary_runs_total{${c}, result!="success"})`))).toEqual([]);
    expect(value(await promQuery(`latentwatch_canary_success{${c}}`))).toEqual([1]);
  });

  it('every rule is healthy, every recording rule returns data, every metric an alert selects has series', async () => {
    const file = parseYaml(readFileSync(RULES, 'utf8')) as { groups: { rules: { record?: string; alert?: string }[] }[] };
    const declared = file.groups.flatMap((g) => g.rules).map((r) => r.record ?? r.alert);
    const rules = await promRules();
    expect(rules.map((r) => r.name).sort()).toEqual([...declared].sort());
    for (const r of rules) expect({ rule: r.name, health: r.health, lastError: r.lastError ?? '' }).toEqual({ rule: r.name, health: 'ok', lastError: '' });
    for (const r of rules) {
      const result = await promQuery(r.query); // parses and evaluates
      if (r.type === 'recording') {
        expect(result.length, `${r.name}: ${r.query}`).toBeGreaterThan(0);
        expect((await promQuery(r.name)).length, `recorded series ${r.name}`).toBeGreaterThan(0);
      }
      for (const m of metricNames(r.query)) {
        expect(value(await promQuery(`count({__name__="${m}"})`)), `${r.name} selects ${m}`).not.toEqual([]);
      }
    }
  });

  it('the admin-injected request sends SilentLatentDetection pending or firing; the health alerts stay quiet', async () => {
    // Quiet on the traffic replica after plain traffic, before the first injection...
    expect(silentBeforeInjection).toEqual([]);
    // ...pending or firing after it, with the labels Alertmanager routes on.
    for (const name of ['SilentLatentDetection', 'LatentInjectionDetected']) {
      const mine = (await activeAlerts(name)).filter((a) => a.labels.instance === traffic.instance);
      expect(mine.length, name).toBe(1);
      expect(['pending', 'firing']).toContain(mine[0].state);
      expect(mine[0].labels).toMatchObject({ probe: 'test-injection', job: 'latentwatch', severity: name === 'SilentLatentDetection' ? 'critical' : 'warning' });
    }
    const rules = await promRules();
    for (const quiet of ['DaemonDown', 'AlertLogFailing', 'AlertsDropped', 'CanaryFailed']) expect(rules.find((r) => r.name === quiet)?.state, quiet).toBe('inactive');
  });
});
