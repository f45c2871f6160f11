/**
 * Sustained load and disconnecting clients against a daemon in a child process (so its resident
 * memory is its own): ~20 s of streaming chat and completions through the openai SDK (some
 * admin-injected, so alerts flow to a WebSocket subscriber) beside plain HTTP load on every other
 * route, with zero errors and bounded memory; then waves of clients that disconnect mid-stream,
 * while queued, and before a non-streamed answer: generation stops, slots and memory come back.
 * The several-minute version of the load is bench/soak.ts.
 */
import OpenAI from 'openai';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scrape, streamRequest, subscribe, until } from '../bench/lib/clients.js';
import { spawnDaemonProcess, type DaemonProcess } from '../bench/lib/daemon-process.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { CODE16M, tempDir } from './helpers.js';

const MODEL = 'qwen2-code-16m';
const LOAD_SECONDS = Number(process.env.LW_LOAD_SECONDS ?? 20);
const MB = 2 ** 20;
let probe: TestProbe;
let d: DaemonProcess;

beforeAll(async () => {
  probe = await trainTestProbe();
  d = await spawnDaemonProcess({
    argv: ['--model', CODE16M, '--probe', probe.path, '--port', '0', '--log-level', 'warn', '--alert-log', join(tempDir('lw-load-'), 'alerts.db'), '--max-concurrent', '4', '--max-queue', '64'],
    env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1' },
  });
});
afterAll(async () => {
  expect(await d?.stop()).toBe(0);
});

const PROMPTS = ['def parse(line):\n', 'class Stack:\n    def push(self, x):\n', 'import json\n\ndef load(path):\n', 'for i in range(10):\n', '# sort a list\ndef sort(xs):\n'];
const inject = { latentwatch: { inject: { vector: [] as number[], layer: INJECT_LAYER, scale: 0, window: 'generation' } } };

describe('sustained load', () => {
  it(`${LOAD_SECONDS} s of SSE streams (openai SDK) and plain HTTP load: zero errors, memory bounded`, async () => {
    inject.latentwatch.inject.vector = probe.vector;
    inject.latentwatch.inject.scale = probe.scale;
    const client = new OpenAI({ baseURL: `${d.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const admin = new OpenAI({ baseURL: `${d.url}/v1`, apiKey: ADMIN_KEY, maxRetries: 0 });
    // Warm up (first requests allocate the KV pool, JIT the paths), then take the starting RSS.
    const rssAtLaunch = d.rssBytes()!;
    await Promise.all([0, 1, 2, 3].map((i) => client.completions.create({ model: MODEL, prompt: PROMPTS[i], max_tokens: 32 })));
    const rssStart = d.rssBytes()!;
    const sub = subscribe(d.url, { key: API_KEY });
    await sub.opened;

    const errors: string[] = [];
    const counts = { streams: 0, tokens: 0, http: 0, injected: 0, alertIds: [] as number[] };
    const rss: number[] = [rssStart];
    const end = Date.now() + LOAD_SECONDS * 1000;
    const sampler = setInterval(() => rss.push(d.rssBytes() ?? 0), 1000);

    const sseLoop = async (w: number) => {
      for (let i = 0; Date.now() < end; i++) {
        try {
          const injected = w === 0 && i % 2 === 0;
          const c = injected ? admin : client;
          let text = '';
          let usage = 0;
          let verdict: { probes: { alert_ids: number[] }[] } | undefined;
          if (i % 2 === 0) {
            const s = await c.completions.create({ model: MODEL, prompt: PROMPTS[(w + i) % PROMPTS.length], max_tokens: 48, temperature: 0.7, stream: true, stream_options: { include_usage: true }, ...(injected ? inject : {}) } as OpenAI.CompletionCreateParamsStreaming);
            for await (const ch of s) {
              text += ch.choices[0]?.text ?? '';
              usage = ch.usage?.completion_tokens ?? usage;
              verdict = (ch as { latentwatch?: typeof verdict }).latentwatch ?? verdict;
            }
          } else {
            const s = await c.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: PROMPTS[(w + i) % PROMPTS.length] }], max_tokens: 48, stream: true, stream_options: { include_usage: true } });
            for await (const ch of s) {
              text += ch.choices[0]?.delta?.content ?? '';
              usage = ch.usage?.completion_tokens ?? usage;
            }
          }
          if (usage === 0 && text.length === 0) errors.push(`stream ${w}/${i}: empty`);
          counts.streams++;
          counts.tokens += usage;
          if (injected) {
            counts.injected++;
            counts.alertIds.push(...(verdict?.probes[0].alert_ids ?? []));
          }
        } catch (e) {
          errors.push(`stream ${w}/${i}: ${String(e)}`);
        }
      }
    };
    const httpLoop = async (w: number) => {
      const routes = ['/healthz', '/readyz', '/metrics', '/v1/models', '/v1/alerts?since=0&limit=50', 'completion'];
      for (let i = 0; Date.now() < end; i++) {
        const route = routes[(w + i) % routes.length];
        try {
          const r =
            route === 'completion'
              ? await fetch(`${d.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` }, body: JSON.stringify({ model: MODEL, prompt: PROMPTS[i % PROMPTS.length], max_tokens: 4 }) })
              : await fetch(`${d.url}${route}`, { headers: { authorization: `Bearer ${API_KEY}` } });
          await r.arrayBuffer();
          if (r.status !== 200) errors.push(`${route}: HTTP ${r.status}`);
          counts.http++;
        } catch (e) {
          errors.push(`${route}: ${String(e)}`);
        }
      }
    };
    await Promise.all([...[0, 1, 2, 3].map(sseLoop), ...[0, 1].map(httpLoop)]);
    clearInterval(sampler);
    await until(async () => ((await (await fetch(`${d.url}/readyz`)).json()) as { running: number }).running === 0, 5000);
    const rssEnd = d.rssBytes()!;
    rss.push(rssEnd);
    await until(() => sub.alerts.length >= counts.alertIds.length, 5000);
    sub.ws.close();

    const summary = {
      seconds: LOAD_SECONDS,
      streams: counts.streams,
      streamedTokens: counts.tokens,
      httpRequests: counts.http,
      injectedStreams: counts.injected,
      alerts: counts.alertIds.length,
      rssMiB: { atLaunch: +(rssAtLaunch / MB).toFixed(1), start: +(rssStart / MB).toFixed(1), end: +(rssEnd / MB).toFixed(1), max: +(Math.max(...rss) / MB).toFixed(1) },
    };
    console.log(`load: ${JSON.stringify(summary)}`);
    expect(errors).toEqual([]);
    expect(counts.streams).toBeGreaterThan(LOAD_SECONDS / 2); // the load was real (a shared 2-core machine: loose)
    expect(counts.http).toBeGreaterThan(LOAD_SECONDS * 2);
    expect(counts.alertIds.length).toBeGreaterThan(0);
    expect(sub.alerts.map((a) => a.id)).toEqual(expect.arrayContaining(counts.alertIds));
    expect(await scrape(d.url, 'latentwatch_http_requests_total', { status_class: '5xx' })).toBe(0);
    expect(rssEnd).toBeLessThan(rssStart + 100 * MB);
  });
});

describe('clients that disconnect', () => {
  it('mid-stream, while queued, or before a non-streamed answer: generation stops, slots and memory return', async () => {
    const body = { model: MODEL, prompt: 'class Config:\n    def __init__(self, path):\n        self.', max_tokens: 400, temperature: 0 };
    const tokensTotal = () => scrape(d.url, 'latentwatch_generation_tokens_total');
    const rssAfter: number[] = [];
    for (let round = 0; round < 3; round++) {
      const started = await tokensTotal();
      const waves: Promise<unknown>[] = [];
      // 12 streams (4 run, 8 wait in the queue), each dropped after 1-5 tokens or, if queued, after 150 ms.
      for (let i = 0; i < 12; i++) {
        const ac = new AbortController();
        const after = 1 + (i % 5);
        setTimeout(() => ac.abort(), 150 + 100 * i);
        waves.push(streamRequest(d.url, '/v1/completions', body, { key: API_KEY, signal: ac.signal, onEvent: (_e, n) => n >= after && ac.abort() }).catch(() => null));
      }
      // 4 non-streamed requests dropped before their answer.
      for (let i = 0; i < 4; i++) {
        waves.push(fetch(`${d.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` }, body: JSON.stringify(body), signal: AbortSignal.timeout(200 + 50 * i) }).catch(() => null));
      }
      await Promise.all(waves);
      expect(await until(async () => {
        const r = (await (await fetch(`${d.url}/readyz`)).json()) as { running: number; waiting: number };
        return r.running === 0 && r.waiting === 0;
      }, 5000)).toBe(true);
      // Nothing keeps generating: far fewer tokens than 16 × 400, and the counter stands still.
      const generated = (await tokensTotal()) - started;
      expect(generated).toBeLessThan(16 * 400 * 0.25);
      const settled = await tokensTotal();
      await new Promise((r) => setTimeout(r, 500));
      expect(await tokensTotal()).toBe(settled);
      rssAfter.push(d.rssBytes()!);
    }
    // Every slot is usable: four concurrent requests complete in full.
    const full = await Promise.all([0, 1, 2, 3].map(() => streamRequest(d.url, '/v1/completions', { ...body, max_tokens: 16 }, { key: API_KEY })));
    expect(full.map((f) => f.completionTokens)).toEqual([16, 16, 16, 16]);
    console.log(`disconnects: RSS after each round ${rssAfter.map((b) => (b / MB).toFixed(1)).join(', ')} MiB`);
    expect(rssAfter[2]).toBeLessThan(rssAfter[0] + 30 * MB);
  });
});
