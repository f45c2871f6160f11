/**
 * Soak: several minutes of sustained streaming load on a daemon in a child process, with zero
 * errors expected and memory watched (the daemon's RSS sampled every 5 s; start = after warm-up).
 *
 *   npx tsx bench/soak.ts [--seconds 300] [--streams 4] [--http 2] [--subscribers 10] [--out FILE.json]
 *   npm run bench:soak -- --seconds 300
 *
 * Load: `streams` workers each streaming completions and chats back to back (SSE, 48 tokens,
 * temperature 0.7; every fourth one admin-injected so alerts flow), `http` workers cycling through
 * /healthz, /readyz, /metrics, /v1/models, /v1/alerts polling and short non-streamed completions,
 * and `subscribers` WebSocket subscribers receiving every alert. Loopback only. test/faults-load.test.ts
 * is the 20-second version of this that runs with the tests.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { bundledProbes } from '../src/daemon/daemon.js';
import { DEFAULT_MODEL_DIR } from '../src/paths.js';
import { trainBenchProbes } from './lib/bench-probes.js';
import { scrape, streamRequest, subscribe, until, type Subscriber } from './lib/clients.js';
import { spawnDaemonProcess } from './lib/daemon-process.js';
import { describeMachine, machineMarkdown, type MachineDescription } from './lib/machine.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult } from './lib/report.js';
import { quantile, round } from './lib/stats.js';

const ADMIN_KEY = 'soak-admin-key';
const MB = 2 ** 20;
const PROMPTS = ['def parse(line):\n', 'class Stack:\n    def push(self, x):\n', 'import json\n\ndef load(path):\n', 'for i in range(10):\n', '# sort a list\ndef sort(xs):\n'];

export interface SoakOptions {
  seconds?: number;
  streams?: number;
  http?: number;
  subscribers?: number;
  modelDir?: string;
  log?: (line: string) => void;
}

export interface SoakResult {
  kind: 'latentwatch.bench.soak';
  version: 1;
  machine: MachineDescription;
  settings: Required<Omit<SoakOptions, 'log'>>;
  streams: number;
  streamedTokens: number;
  httpRequests: number;
  alerts: { raised: number; receivedBySubscribers: number; missing: number };
  errors: string[];
  http5xx: number;
  ttftMs: { p50: number; p99: number };
  interTokenMs: { p50: number; p99: number };
  rssMiB: { atLaunch: number; start: number; end: number; max: number; samples: { t: number; mib: number }[] };
  seconds: number;
}

export async function runSoak(o: SoakOptions = {}): Promise<SoakResult> {
  const t0 = performance.now();
  const settings = { seconds: o.seconds ?? 300, streams: o.streams ?? 4, http: o.http ?? 2, subscribers: o.subscribers ?? 10, modelDir: resolve(o.modelDir ?? DEFAULT_MODEL_DIR) };
  const log = o.log ?? ((l: string) => console.error(l));
  const machine = describeMachine();
  const root = mkdtempSync(join(tmpdir(), 'lw-soak-'));
  const set = await trainBenchProbes(settings.modelDir, { dir: root });
  const probes = [...bundledProbes(settings.modelDir), ...set.probes.map((p) => p.path)];
  const d = await spawnDaemonProcess({
    argv: ['--model', settings.modelDir, ...probes.flatMap((p) => ['--probe', p]), '--port', '0', '--log-level', 'warn', '--alert-log', join(root, 'alerts.db'), '--max-concurrent', '4', '--max-queue', '64'],
    env: { LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1' },
  });
  const subs: Subscriber[] = [];
  try {
    const model = ((await (await fetch(`${d.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0].id;
    const rssAtLaunch = d.rssBytes() ?? NaN;
    await Promise.all(PROMPTS.slice(0, 4).map((p) => streamRequest(d.url, '/v1/completions', { model, prompt: p, max_tokens: 32 })));
    const rssStart = d.rssBytes() ?? NaN;
    // Injected requests are the admin's tenant: only the admin key sees every alert.
    for (let i = 0; i < settings.subscribers; i++) subs.push(subscribe(d.url, { key: ADMIN_KEY }));
    await Promise.all(subs.map((s) => s.opened));
    log(`soak: ${settings.seconds} s, ${settings.streams} stream workers, ${settings.http} HTTP workers, ${settings.subscribers} subscribers; RSS ${(rssStart / MB).toFixed(0)} MiB after warm-up`);

    const errors: string[] = [];
    const ttft: number[] = [];
    const gaps: number[] = [];
    const alertIds: number[] = [];
    const counts = { streams: 0, tokens: 0, http: 0 };
    const samples: { t: number; mib: number }[] = [{ t: 0, mib: round(rssStart / MB, 1) }];
    const start = Date.now();
    const end = start + settings.seconds * 1000;
    const sampler = setInterval(() => {
      const rss = d.rssBytes();
      if (rss !== null) samples.push({ t: round((Date.now() - start) / 1000, 1), mib: round(rss / MB, 1) });
      if (samples.length % 12 === 0) log(`  t=${Math.round((Date.now() - start) / 1000)} s: ${counts.streams} streams, ${counts.http} HTTP requests, ${errors.length} errors, RSS ${samples.at(-1)!.mib} MiB`);
    }, 5000);
    const streamWorker = async (w: number) => {
      for (let i = 0; Date.now() < end; i++) {
        const injected = (w + i) % 4 === 0;
        const chat = i % 2 === 1;
        const body: Record<string, unknown> = chat
          ? { model, messages: [{ role: 'user', content: PROMPTS[(w + i) % PROMPTS.length] }], max_tokens: 48, temperature: 0.7 }
          : { model, prompt: PROMPTS[(w + i) % PROMPTS.length], max_tokens: 48, temperature: 0.7 };
        if (injected) body.latentwatch = { inject: { vector: set.vector, layer: set.injectLayer, scale: set.scale, window: 'generation' } };
        try {
          const r = await streamRequest(d.url, chat ? '/v1/chat/completions' : '/v1/completions', body, { key: injected ? ADMIN_KEY : undefined });
          if (r.status !== 200 || r.error || !r.done) {
            errors.push(`stream: HTTP ${r.status} ${JSON.stringify(r.error)}`);
            continue;
          }
          counts.streams++;
          counts.tokens += r.completionTokens ?? 0;
          if (r.tokenTimes.length > 0) ttft.push(r.tokenTimes[0] - r.startedAt);
          for (let k = 1; k < r.tokenTimes.length; k++) gaps.push(r.tokenTimes[k] - r.tokenTimes[k - 1]);
          const v = r.events.at(-1)?.latentwatch as { probes: { alert_ids: number[] }[] } | undefined;
          for (const p of v?.probes ?? []) alertIds.push(...p.alert_ids);
        } catch (e) {
          errors.push(`stream: ${String(e)}`);
        }
      }
    };
    const httpWorker = async (w: number) => {
      const routes = ['/healthz', '/readyz', '/metrics', '/v1/models', '/v1/alerts?since=0&limit=100', 'completion'];
      for (let i = 0; Date.now() < end; i++) {
        const route = routes[(w + i) % routes.length];
        try {
          const r =
            route === 'completion'
              ? await fetch(`${d.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: PROMPTS[i % PROMPTS.length], max_tokens: 4 }) })
              : await fetch(`${d.url}${route}`);
          await r.arrayBuffer();
          if (r.status !== 200) errors.push(`${route}: HTTP ${r.status}`);
          counts.http++;
        } catch (e) {
          errors.push(`${route}: ${String(e)}`);
        }
      }
    };
    await Promise.all([...Array.from({ length: settings.streams }, (_, w) => streamWorker(w)), ...Array.from({ length: settings.http }, (_, w) => httpWorker(w))]);
    clearInterval(sampler);
    await until(async () => ((await (await fetch(`${d.url}/readyz`)).json()) as { running: number }).running === 0, 10_000);
    await until(() => subs.every((s) => alertIds.every((id) => s.alerts.some((a) => a.id === id))), 10_000);
    const rssEnd = d.rssBytes() ?? NaN;
    samples.push({ t: round((Date.now() - start) / 1000, 1), mib: round(rssEnd / MB, 1) });
    const missing = subs.reduce((n, s) => n + alertIds.filter((id) => !s.alerts.some((a) => a.id === id)).length, 0);
    return {
      kind: 'latentwatch.bench.soak',
      version: 1,
      machine,
      settings,
      streams: counts.streams,
      streamedTokens: counts.tokens,
      httpRequests: counts.http,
      alerts: { raised: alertIds.length, receivedBySubscribers: subs.reduce((n, s) => n + s.alerts.length, 0), missing },
      errors: errors.slice(0, 100),
      http5xx: await scrape(d.url, 'latentwatch_http_requests_total', { status_class: '5xx' }),
      ttftMs: { p50: round(quantile(ttft, 0.5), 2), p99: round(quantile(ttft, 0.99), 2) },
      interTokenMs: { p50: round(quantile(gaps, 0.5), 2), p99: round(quantile(gaps, 0.99), 2) },
      rssMiB: { atLaunch: round(rssAtLaunch / MB, 1), start: round(rssStart / MB, 1), end: round(rssEnd / MB, 1), max: Math.max(...samples.map((s) => s.mib)), samples },
      seconds: round((performance.now() - t0) / 1000, 1),
    };
  } finally {
    for (const s of subs) s.ws.terminate();
    await d.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

export function soakMarkdown(r: SoakResult): string {
  const s = r.settings;
  return [
    '# Soak',
    '',
    machineMarkdown(r.machine),
    '',
    `${s.seconds} s: ${s.streams} SSE stream workers, ${s.http} HTTP workers, ${s.subscribers} WebSocket subscribers, daemon max-concurrent 4.`,
    '',
    markdownTable(
      ['streams', 'streamed tokens', 'HTTP requests', 'errors', '5xx', 'alerts (raised / missing at subscribers)', 'TTFT p50 / p99 ms', 'inter-token p50 / p99 ms', 'RSS MiB launch / start / end / max'],
      [[r.streams, r.streamedTokens, r.httpRequests, r.errors.length, r.http5xx, `${r.alerts.raised} / ${r.alerts.missing}`, `${r.ttftMs.p50} / ${r.ttftMs.p99}`, `${r.interTokenMs.p50} / ${r.interTokenMs.p99}`, `${r.rssMiB.atLaunch} / ${r.rssMiB.start} / ${r.rssMiB.end} / ${r.rssMiB.max}`]],
    ),
    '',
    `RSS samples (s: MiB): ${r.rssMiB.samples.map((x) => `${x.t}: ${x.mib}`).join(', ')}`,
    ...(r.errors.length ? ['', 'Errors:', ...r.errors.map((e) => `- ${e}`)] : []),
  ].join('\n');
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['seconds', 'streams', 'http', 'subscribers', 'out', 'md', 'model']);
  const r = await runSoak({ seconds: a.num('seconds', 300), streams: a.num('streams', 4), http: a.num('http', 2), subscribers: a.num('subscribers', 10), modelDir: a.get('model') });
  writeBenchResult(a, 'soak', r, soakMarkdown(r));
  if (r.errors.length > 0 || r.http5xx > 0 || r.alerts.missing > 0) process.exitCode = 1;
}

runIfMain(import.meta.url, main);
