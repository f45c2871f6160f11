/**
 * Sustained load and disconnecting clients against a daemon in a child process (so its resident
 * memory is its own): three rounds of streaming chat and completions through the openai SDK (some
 * admin-injected, so alerts flow to a WebSocket subscriber) beside plain HTTP load on every other
 * route, with zero errors, every alert delivered and memory not growing from round to round; then
 * waves of clients that disconnect mid-stream, while queued, and before a non-streamed answer:
 * generation stops, slots and memory come back.
 * The amount of work is fixed, not the time it takes: throughput and RSS over minutes of load are
 * measured by bench/soak.ts (streams, tokens and HTTP requests per run, RSS start/end/max).
 */
import OpenAI from 'openai';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scrape, streamRequest, subscribe } from '../bench/lib/clients.js';
import { spawnDaemonProcess, type DaemonProcess } from '../bench/lib/daemon-process.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { CODE16M, tempDir, waitUntil } from './helpers.js';

const MODEL = 'qwen2-code-16m';
/** Rounds of load; per round each of 4 SSE workers streams STREAMS_PER_WORKER, each of 2 HTTP workers sends HTTP_PER_WORKER. */
const ROUNDS = 3;
const STREAMS_PER_WORKER = 4;
const HTTP_PER_WORKER = 24;
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

/** Waits until the daemon runs and queues nothing. */
async function idle(): Promise<void> {
  let last = '';
  await waitUntil(
    async () => {
      const r = (await (await fetch(`${d.url}/readyz`)).json()) as { running: number; waiting: number };
      last = JSON.stringify(r);
      return r.running === 0 && r.waiting === 0;
    },
    { timeoutMs: 10_000, what: 'the daemon to be idle (readyz running = 0, waiting = 0)', detail: () => last },
  );
}

describe('sustained load', () => {
  it(`${ROUNDS} rounds of SSE streams (openai SDK) and plain HTTP load: zero errors, every alert delivered, memory not growing`, async () => {
    inject.latentwatch.inject.vector = probe.vector;
    inject.latentwatch.inject.scale = probe.scale;
    const client = new OpenAI({ baseURL: `${d.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const admin = new OpenAI({ baseURL: `${d.url}/v1`, apiKey: ADMIN_KEY, maxRetries: 0 });
    // Warm up (first requests allocate the KV pool, JIT the paths).
    const rssAtLaunch = d.rssBytes()!;
    await Promise.all([0, 1, 2, 3].map((i) => client.completions.create({ model: MODEL, prompt: PROMPTS[i], max_tokens: 32 })));
    const rssStart = d.rssBytes()!;
    const sub = subscribe(d.url, { key: ADMIN_KEY }); // the injected requests are the admin's: only the admin key sees their alerts (tenancy)
    await sub.opened;

    const errors: string[] = [];
    const counts = { streams: 0, tokens: 0, http: 0, injected: 0, alertIds: [] as number[] };
    const rssAfterRound: number[] = [];

    const sseLoop = async (w: number, round: number) => {
      for (let k = 0; k < STREAMS_PER_WORKER; k++) {
        const i = round * STREAMS_PER_WORKER + k;
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
    const httpLoop = async (w: number, round: number) => {
      const routes = ['/healthz', '/readyz', '/metrics', '/v1/models', '/v1/alerts?since=0&limit=50', 'completion'];
      for (let k = 0; k < HTTP_PER_WORKER; k++) {
        const i = round * HTTP_PER_WORKER + k;
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
    for (let round = 0; round < ROUNDS; round++) {
      await Promise.all([...[0, 1, 2, 3].map((w) => sseLoop(w, round)), ...[0, 1].map((w) => httpLoop(w, round))]);
      await idle();
      rssAfterRound.push(d.rssBytes()!);
    }
    await waitUntil(() => sub.alerts.length >= counts.alertIds.length, {
      timeoutMs: 5000,
      what: `the subscriber to receive all ${counts.alertIds.length} acknowledged alerts`,
      detail: () => `received ${sub.alerts.length}`,
    });
    sub.ws.close();

    const summary = {
      rounds: ROUNDS,
      streams: counts.streams,
      streamedTokens: counts.tokens,
      httpRequests: counts.http,
      injectedStreams: counts.injected,
      alerts: counts.alertIds.length,
      rssMiB: { atLaunch: +(rssAtLaunch / MB).toFixed(1), start: +(rssStart / MB).toFixed(1), afterEachRound: rssAfterRound.map((b) => +(b / MB).toFixed(1)) },
    };
    console.log(`load: ${JSON.stringify(summary)}`);
    expect(errors).toEqual([]);
    // Every planned request completed.
    expect(counts.streams).toBe(ROUNDS * 4 * STREAMS_PER_WORKER);
    expect(counts.http).toBe(ROUNDS * 2 * HTTP_PER_WORKER);
    expect(counts.injected).toBe((ROUNDS * STREAMS_PER_WORKER) / 2);
    expect(counts.alertIds.length).toBeGreaterThan(0);
    expect(sub.alerts.map((a) => a.id)).toEqual(expect.arrayContaining(counts.alertIds));
    expect(await scrape(d.url, 'latentwatch_http_requests_total', { status_class: '5xx' })).toBe(0);
    // Leak check: the same work again does not keep adding memory (bounded growth over the rounds).
    expect(rssAfterRound[ROUNDS - 1]).toBeLessThan(rssAfterRound[0] + 30 * MB);
  }, 300_000); // a fixed amount of work: on a busy shared machine it takes longer, it does not do less
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
      await idle();
      // Nothing keeps generating: far fewer tokens than 16 × 400, and across one further request
      // the counter moves by exactly that request's tokens.
      const generated = (await tokensTotal()) - started;
      expect(generated).toBeLessThan(16 * 400 * 0.25);
      const settled = await tokensTotal();
      const next = await streamRequest(d.url, '/v1/completions', { ...body, max_tokens: 4 }, { key: API_KEY });
      expect(next.completionTokens).toBe(4);
      expect(await tokensTotal()).toBe(settled + 4);
      rssAfter.push(d.rssBytes()!);
    }
    // Every slot is usable: four concurrent requests complete in full.
    const full = await Promise.all([0, 1, 2, 3].map(() => streamRequest(d.url, '/v1/completions', { ...body, max_tokens: 16 }, { key: API_KEY })));
    expect(full.map((f) => f.completionTokens)).toEqual([16, 16, 16, 16]);
    console.log(`disconnects: RSS after each round ${rssAfter.map((b) => (b / MB).toFixed(1)).join(', ')} MiB`);
    expect(rssAfter[2]).toBeLessThan(rssAfter[0] + 30 * MB);
  });
});
