/**
 * The daemon as users meet it: a real server on qwen2-code-16m with a probe trained in setup, the
 * real `openai` SDK, real WebSocket subscribers, /metrics, and a kill -9 in the middle of traffic.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../src/daemon/daemon.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, spawnDaemon, startTestDaemon, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { CODE16M, tempDir, waitUntil } from './helpers.js';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon } from '../src/daemon/daemon.js';

const MODEL = 'qwen2-code-16m';
let probe: TestProbe;
let daemon: Daemon;
let client: OpenAI;
let admin: OpenAI;

beforeAll(async () => {
  probe = await trainTestProbe();
  daemon = await startTestDaemon(probe);
  client = new OpenAI({ baseURL: `${daemon.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
  admin = new OpenAI({ baseURL: `${daemon.url}/v1`, apiKey: ADMIN_KEY, maxRetries: 0 });
});
afterAll(async () => {
  await daemon?.close();
});

type Verdict = { request_id: string; silent: boolean; verbalized: boolean; probes: { id: string; fired: boolean; alert_ids: number[]; max_score: number; threshold: number; silent: boolean }[] };
const verdictOf = (r: unknown) => (r as { latentwatch: Verdict }).latentwatch;
const inject = (window = 'all') => ({ latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window } } });

function subscribe(query = ''): { ws: WebSocket; alerts: { id: number; silent: boolean; probeId: string }[]; opened: Promise<void> } {
  const ws = new WebSocket(`${daemon.url.replace('http', 'ws')}/v1/alerts${query}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  const alerts: { id: number; silent: boolean; probeId: string }[] = [];
  ws.on('message', (m) => {
    const msg = JSON.parse(String(m));
    if (msg.type === 'alert') alerts.push(msg.alert);
  });
  return { ws, alerts, opened: new Promise((r) => ws.once('open', () => r())) };
}

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${daemon.url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.split(' ').at(-1));
  }
  return sum;
}

describe('OpenAI SDK against the daemon', () => {
  it('non-streaming chat and completions, with the verdict attached', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
    const chat = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'def add(a, b):' }], max_tokens: 8, temperature: 0 });
    expect(chat.object).toBe('chat.completion');
    expect(chat.choices[0].message.role).toBe('assistant');
    expect(chat.choices[0].message.content!.length).toBeGreaterThan(0);
    expect(chat.usage!.completion_tokens).toBe(8);
    expect(verdictOf(chat).probes.map((p) => p.id)).toEqual(['test-injection']);
    const comp = await client.completions.create({ model: MODEL, prompt: 'import numpy as np\n\ndef ', max_tokens: 24, temperature: 0 });
    // Greedy through the daemon = transformers' greedy continuation (reference.json, prompt 0).
    expect(comp.choices[0].text).toBe('arange(x):\n    return np.arange(x)\n\ndef arange_1(x):\n    return');
    expect(comp.choices[0].finish_reason).toBe('length');
  });

  it('streaming chat and completions, with usage and the verdict in the last chunk before [DONE]', async () => {
    const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'for i in range(' }], max_tokens: 6, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    expect(text.length).toBeGreaterThan(0);
    expect(chunks.find((c) => c.usage)!.usage!.completion_tokens).toBe(6);
    expect(verdictOf(chunks.at(-1)).probes[0].id).toBe('test-injection');
    expect(chunks.some((c) => c.choices[0]?.finish_reason === 'length')).toBe(true);
    const cs = await client.completions.create({ model: MODEL, prompt: 'import numpy as np\n\ndef ', max_tokens: 24, temperature: 0, stream: true });
    let ctext = '';
    for await (const c of cs) ctext += c.choices[0]?.text ?? '';
    expect(ctext).toBe('arange(x):\n    return np.arange(x)\n\ndef arange_1(x):\n    return');
  });
});

describe('detection', () => {
  it('an admin-injected request fires the probe: the subscriber gets a silent alert, the response carries the verdict, counters move', async () => {
    const sub = subscribe('?silent=1');
    await sub.opened;
    const alertsBefore = await metric('latentwatch_alerts_total', { probe: 'test-injection' });
    const silentBefore = await metric('latentwatch_latent_detections_total', { probe: 'test-injection', verbalized: 'false' });
    const r = await admin.completions.create({ model: MODEL, prompt: 'def load(path):\n', max_tokens: 8, temperature: 0, ...inject() } as OpenAI.CompletionCreateParamsNonStreaming);
    const v = verdictOf(r);
    expect(v.probes[0].fired).toBe(true);
    expect(v.probes[0].max_score).toBeGreaterThan(v.probes[0].threshold);
    expect(v.silent).toBe(true); // code text never says "injected thought"
    const ids = v.probes[0].alert_ids;
    expect(ids.length).toBeGreaterThan(0);
    await waitUntil(() => sub.alerts.length >= ids.length, { timeoutMs: 5000, what: `the subscriber to receive alerts ${ids.join(', ')}`, detail: () => `received ${sub.alerts.map((a) => a.id).join(', ')}` });
    expect(sub.alerts.map((a) => a.id)).toEqual(ids);
    expect(sub.alerts.every((a) => a.silent && a.probeId === 'test-injection')).toBe(true);
    expect(await metric('latentwatch_alerts_total', { probe: 'test-injection' })).toBe(alertsBefore + ids.length);
    expect(await metric('latentwatch_latent_detections_total', { probe: 'test-injection', verbalized: 'false' })).toBe(silentBefore + 1);
    const polled = (await (await fetch(`${daemon.url}/v1/alerts?since=${ids[0] - 1}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json()) as { data: { id: number }[] };
    expect(polled.data.map((a: { id: number }) => a.id)).toEqual(expect.arrayContaining(ids));
    sub.ws.close();
  });

  it('an uninjected request raises nothing; the monitor times each generated token', async () => {
    const before = await metric('latentwatch_alerts_total');
    const watched = await metric('latentwatch_monitor_seconds_count');
    const r = await client.completions.create({ model: MODEL, prompt: 'def load(path):\n', max_tokens: 8, temperature: 0 });
    expect(verdictOf(r).probes[0].fired).toBe(false);
    expect(verdictOf(r).probes[0].alert_ids).toEqual([]);
    expect(await metric('latentwatch_alerts_total')).toBe(before);
    expect(await metric('latentwatch_monitor_seconds_count')).toBe(watched + (r.usage?.completion_tokens ?? NaN));
    expect(await metric('latentwatch_monitor_seconds_sum')).toBeGreaterThan(0);
  });

  it('injection needs the admin key and is refused with a coded 403 otherwise', async () => {
    await expect(client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 2, ...inject() } as OpenAI.CompletionCreateParamsNonStreaming)).rejects.toMatchObject({
      status: 403,
      code: 'LW_ERR_AUTH_ADMIN_REQUIRED',
    });
  });
});

describe('bad input gets a coded 4xx and the server keeps serving', () => {
  const post = (body: string, headers: Record<string, string> = {}) =>
    fetch(`${daemon.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, ...headers }, body });
  const cases: [string, () => Promise<Response>, number, string][] = [
    ['malformed JSON', () => post('{"model":'), 400, 'LW_ERR_API_INVALID_JSON'],
    ['wrong types', () => post(JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 'ten' })), 400, 'LW_ERR_API_BAD_REQUEST'],
    ['a huge body', () => post(JSON.stringify({ model: MODEL, prompt: 'x'.repeat(2_000_000) })), 413, 'LW_ERR_API_BODY_TOO_LARGE'],
    ['an unknown model', () => post(JSON.stringify({ model: 'gpt-4', prompt: 'x' })), 404, 'LW_ERR_API_MODEL_NOT_FOUND'],
    ['a prompt past the context', () => post(JSON.stringify({ model: MODEL, prompt: 'x = 1\n'.repeat(800), max_tokens: 10 })), 400, 'LW_ERR_ENGINE_CONTEXT_LENGTH'],
    ['max_tokens over the limit', () => post(JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 100000 })), 400, 'LW_ERR_API_MAX_TOKENS'],
    ['a missing key', () => post(JSON.stringify({ model: MODEL, prompt: 'x' }), { authorization: '' }), 401, 'LW_ERR_AUTH_MISSING_KEY'],
    ['a wrong key', () => post(JSON.stringify({ model: MODEL, prompt: 'x' }), { authorization: 'Bearer nope' }), 401, 'LW_ERR_AUTH_INVALID_KEY'],
    ['an unknown route', () => fetch(`${daemon.url}/v1/nope`), 404, 'LW_ERR_API_NOT_FOUND'],
  ];
  // What a greedy request answers on an untroubled server; after each bad request it answers the same.
  const greedy = () => client.completions.create({ model: MODEL, prompt: 'def ', max_tokens: 2, temperature: 0 });
  let reference: Awaited<ReturnType<typeof greedy>>;
  beforeAll(async () => {
    reference = await greedy();
    expect(reference.usage!.completion_tokens).toBe(2);
    expect(reference.choices[0].text.length).toBeGreaterThan(0);
  });
  for (const [name, send, status, code] of cases) {
    it(name, async () => {
      const r = await send();
      expect(r.status).toBe(status);
      const body = (await r.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe(code);
      expect(typeof body.error.message).toBe('string');
      const ok = await greedy();
      expect(ok.choices[0].text).toBe(reference.choices[0].text);
      expect(ok.usage!.completion_tokens).toBe(2);
    });
  }
});

describe('disconnects', () => {
  it('a client that disconnects mid-stream cancels its generation', async () => {
    const ac = new AbortController();
    const stream = await client.completions.create({ model: MODEL, prompt: 'class Config:\n    def __init__(self, path):\n        self.', max_tokens: 900, stream: true, temperature: 0 }, { signal: ac.signal });
    let n = 0;
    // The SDK either ends the iteration or throws its abort error; any other error is a failure.
    let outcome = 'ended';
    try {
      for await (const _ of stream) if (++n === 3) ac.abort();
    } catch (e) {
      outcome = e instanceof OpenAI.APIUserAbortError ? 'aborted' : String(e);
    }
    expect(['ended', 'aborted']).toContain(outcome);
    expect(n).toBeLessThan(50);
    await waitUntil(async () => ((await (await fetch(`${daemon.url}/readyz`)).json()) as { running: number }).running === 0, {
      timeoutMs: 5000,
      what: 'the cancelled generation to leave its slot (readyz running = 0)',
    });
    // Nothing generates for the dropped stream any more: across one further request, the token
    // counter moves by exactly that request's tokens.
    const tokensAfter = await metric('latentwatch_generation_tokens_total');
    const next = await client.completions.create({ model: MODEL, prompt: 'def ', max_tokens: 4, temperature: 0 });
    expect(await metric('latentwatch_generation_tokens_total')).toBe(tokensAfter + next.usage!.completion_tokens);
  });
});

describe('kill -9 during traffic', () => {
  it('after restart no acknowledged alert is missing, and a resuming subscriber gets exactly the ones it missed', async () => {
    const dir = tempDir('lw-kill-');
    const dbPath = join(dir, 'alerts.db');
    const first = await spawnDaemon(probe, dbPath);
    const ws = new WebSocket(`${first.url.replace('http', 'ws')}/v1/alerts`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    const seen: number[] = [];
    ws.on('message', (m) => {
      const msg = JSON.parse(String(m));
      if (msg.type === 'alert') seen.push(msg.alert.id);
    });
    ws.on('error', () => {});
    await new Promise((r) => ws.once('open', r));
    const acknowledged = new Set<number>();
    const injectBody = (prompt: string, maxTokens: number) =>
      ({ model: MODEL, prompt, max_tokens: maxTokens, temperature: 0, latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window: 'generation' } } }) as OpenAI.CompletionCreateParamsNonStreaming;
    const c = new OpenAI({ baseURL: `${first.url}/v1`, apiKey: ADMIN_KEY, maxRetries: 0 });
    let killed = false;
    const failedBeforeKill: string[] = [];
    const traffic = Array.from({ length: 6 }, async (_, i) => {
      for (let k = 0; k < 50; k++) {
        try {
          const r = await c.completions.create(injectBody(`def f${i}_${k}(x):\n`, 40));
          for (const id of verdictOf(r).probes[0].alert_ids) acknowledged.add(id);
        } catch (e) {
          // After the kill every request fails; before it, none may.
          if (!killed) failedBeforeKill.push(String(e));
          return;
        }
      }
    });
    await waitUntil(() => seen.length >= 5, { timeoutMs: 30_000, what: 'the subscriber to see 5 alerts before the kill', detail: () => first.log().slice(-2000) });
    killed = true;
    first.child.kill('SIGKILL');
    await Promise.all(traffic);
    expect(failedBeforeKill).toEqual([]);
    for (const id of seen) acknowledged.add(id);
    ws.terminate();
    expect(acknowledged.size).toBeGreaterThan(0);

    const second = await spawnDaemon(probe, dbPath);
    const { child } = second;
    const base = second.url;
    try {
      const all = (await (await fetch(`${base}/v1/alerts?since=0&limit=1000`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json()) as { data: { id: number }[] };
      const stored = new Set<number>(all.data.map((a: { id: number }) => a.id));
      for (const id of acknowledged) expect(stored.has(id), `alert ${id}`).toBe(true);
      // Resume from the last id this subscriber saw: exactly the stored alerts after it.
      const last = Math.max(...seen);
      const expected = [...stored].filter((id) => id > last).sort((a, b) => a - b);
      const resumed: number[] = [];
      const ws2 = new WebSocket(`${base.replace('http', 'ws')}/v1/alerts?last_id=${last}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
      ws2.on('message', (m) => {
        const msg = JSON.parse(String(m));
        if (msg.type === 'alert') resumed.push(msg.alert.id);
      });
      await new Promise((r) => ws2.once('open', r));
      await waitUntil(() => resumed.length >= expected.length, { timeoutMs: 5000, what: `the resumed subscriber to receive ${expected.length} missed alerts`, detail: () => `got ${resumed.join(', ')}` });
      // A fresh alert marks the end of the replay: frames arrive in order, so anything the replay
      // sent twice or beyond the missed ones would come before it.
      const fresh = verdictOf(await new OpenAI({ baseURL: `${base}/v1`, apiKey: ADMIN_KEY, maxRetries: 0 }).completions.create(injectBody('def after_restart(x):\n', 4))).probes[0].alert_ids;
      expect(fresh.length).toBeGreaterThan(0);
      await waitUntil(() => resumed.includes(fresh.at(-1)!), { timeoutMs: 5000, what: `the resumed subscriber to receive the fresh alert ${fresh.at(-1)}`, detail: () => `got ${resumed.join(', ')}` });
      expect(resumed.slice(0, expected.length)).toEqual(expected);
      expect(resumed).toEqual([...expected, ...fresh]);
      ws2.close();
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('limits, health and shutdown', () => {
  it('a full queue answers 429 with a coded body while running requests finish', async () => {
    const d = await startTestDaemon(probe, ['--max-concurrent', '1', '--max-queue', '1']);
    const c = new OpenAI({ baseURL: `${d.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    try {
      const long = () => c.completions.create({ model: MODEL, prompt: 'class Config:\n    def __init__(self, path):\n        self.', max_tokens: 120, temperature: 0 });
      const results = await Promise.allSettled([long(), long(), long(), long()]);
      const refused = results.filter((r) => r.status === 'rejected');
      expect(results.filter((r) => r.status === 'fulfilled').length).toBeGreaterThanOrEqual(2);
      expect(refused.length).toBeGreaterThanOrEqual(1);
      for (const r of refused) expect((r as PromiseRejectedResult).reason).toMatchObject({ status: 429, code: 'LW_ERR_API_QUEUE_FULL' });
    } finally {
      await d.close();
    }
  });

  it('healthz and readyz answer; after close() the port is gone and the log is flushed', async () => {
    const d = await startTestDaemon(probe);
    expect((await fetch(`${d.url}/healthz`)).status).toBe(200);
    expect(await (await fetch(`${d.url}/readyz`)).json()).toMatchObject({ status: 'ready', running: 0 });
    await d.close();
    await expect(fetch(`${d.url}/healthz`)).rejects.toThrow();
  });

  it('SIGTERM lets a running stream finish, refuses new work, and exits 0', async () => {
    const { child, url } = await spawnDaemon(probe, join(tempDir('lw-term-'), 'alerts.db'));
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: API_KEY, maxRetries: 0 });
    const stream = await c.completions.create({ model: MODEL, prompt: 'class Config:\n    def __init__(self, path):\n        self.', max_tokens: 200, temperature: 0, stream: true });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let text = '';
    let signalled = false;
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (!signalled && text.length > 5) {
        signalled = true;
        child.kill('SIGTERM');
        // While this stream drains, the server still listens: readyz turns 503 and new work is refused.
        await waitUntil(async () => (await fetch(`${url}/readyz`)).status === 503, { timeoutMs: 5000, what: 'readyz to answer 503 after SIGTERM' });
        const refused = await fetch(`${url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
          body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 2 }),
        });
        expect(refused.status).toBe(503);
        expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('LW_ERR_API_SHUTTING_DOWN');
      }
    }
    expect(finish).toBe('length');
    expect(await exited).toBe(0);
  });
});

describe('canary', () => {
  // The bundled generic detector: it fires on the canary's concept injection at the middle layer.
  const shipped = join(CODE16M, 'probes', 'generic-injection.probe.json');
  async function canaryDaemon(threshold?: number) {
    const dir = tempDir('lw-canary-');
    const cfg = join(dir, 'config.json');
    writeFileSync(cfg, JSON.stringify({ alerts: { rules: threshold === undefined ? {} : { 'generic-injection': { threshold } } }, canary: { enabled: true, intervalSeconds: 3600, concept: 'Oceans' } }));
    const { config } = loadConfig({
      env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_HOST: '127.0.0.1' },
      argv: ['--config', cfg, '--model', CODE16M, '--probe', shipped, '--port', '0', '--log-level', 'silent', '--alert-log', join(dir, 'alerts.db')],
    });
    return startDaemon(config);
  }

  it('a passing canary sets the success gauge and raises no alert or detection', async () => {
    const d = await canaryDaemon();
    try {
      expect(await d.canary!.runOnce()).toBe('success');
      const text = await (await fetch(`${d.url}/metrics`)).text();
      expect(text).toMatch(/^latentwatch_canary_success 1$/m);
      expect(text).toMatch(/^latentwatch_canary_runs_total\{result="success"\} [1-9]/m);
      expect(text).not.toMatch(/^latentwatch_alerts_total\{[^}]*\} [1-9]/m);
      expect(text).not.toMatch(/^latentwatch_latent_detections_total\{[^}]*\} [1-9]/m);
    } finally {
      await d.close();
    }
  });

  it('a canary whose probe cannot fire is a failure alert delivered to subscribers', async () => {
    const d = await canaryDaemon(1e9); // far above any calibrated score
    try {
      const ws = new WebSocket(`${d.url.replace('http', 'ws')}/v1/alerts?last_id=0`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
      const alerts: { kind: string; severity: string }[] = [];
      ws.on('message', (m) => {
        const msg = JSON.parse(String(m));
        if (msg.type === 'alert') alerts.push(msg.alert);
      });
      await new Promise((r) => ws.once('open', r));
      expect(await d.canary!.runOnce()).toBe('failure');
      await waitUntil(() => alerts.some((a) => a.kind === 'canary_failure'), { timeoutMs: 5000, what: 'the canary_failure alert to reach the subscriber' });
      expect(alerts.find((a) => a.kind === 'canary_failure')).toMatchObject({ severity: 'critical' });
      expect(await (await fetch(`${d.url}/metrics`)).text()).toMatch(/^latentwatch_canary_success 0$/m);
      ws.close();
    } finally {
      await d.close();
    }
  });
});
