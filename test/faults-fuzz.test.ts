/**
 * Property-based fuzzing (fast-check) of every HTTP route's input against a real daemon in a child
 * process (so a request that wedges the event loop shows up as a timeout here instead of hanging
 * the test runner): chat and completions bodies (well-formed, mutated and arbitrary JSON, raw
 * bytes), /v1/models, /v1/alerts polling queries and WebSocket upgrades, /metrics, /healthz,
 * /readyz, with every kind of key. Properties: never a 5xx, every error is a coded OpenAI error
 * body, every accepted stream ends with [DONE] and no error event, and the daemon keeps serving.
 */
import fc from 'fast-check';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { ERRORS, type ErrorCode } from '../src/errors.js';
import { spawnDaemonProcess, type DaemonProcess } from '../bench/lib/daemon-process.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { CODE16M, tempDir } from './helpers.js';

const MODEL = 'qwen2-code-16m';
let probe: TestProbe;
let d: DaemonProcess;
const seen = { requests: 0, byStatus: new Map<number, number>() };

beforeAll(async () => {
  probe = await trainTestProbe();
  d = await spawnDaemonProcess({
    argv: ['--model', CODE16M, '--probe', probe.path, '--port', '0', '--log-level', 'warn', '--alert-log', join(tempDir('lw-fuzz-'), 'alerts.db'), '--max-tokens', '4', '--max-concurrent', '4', '--max-queue', '256'],
    env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1' },
  });
});
afterAll(async () => {
  const code = await d?.stop();
  expect(code).toBe(0);
  console.log(`fuzz: ${seen.requests} requests, by status ${JSON.stringify(Object.fromEntries([...seen.byStatus].sort((a, b) => a[0] - b[0])))}`);
});

// ---- arbitraries ----------------------------------------------------------------------------

const edgeNumber = fc.oneof(
  fc.constantFrom(0, -0, 1, -1, 0.5, 2, 3, 1e-320, 5e-324, 1e-300, 1e308, -1e308, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 65536, 1e39, 3.5e38),
  fc.integer({ min: -10, max: 10 }),
  fc.double(),
  fc.integer(),
);
const text = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 }), fc.constantFrom('', ' ', '\u0000', '\ud800', '<|im_end|>', '<|endoftext|>', 'def ', '{{ x }}', '{% if %}', '\n'.repeat(50)));
const anyValue = fc.oneof(edgeNumber, text, fc.boolean(), fc.constant(null), fc.array(edgeNumber, { maxLength: 4 }), fc.dictionary(text, text, { maxKeys: 3 }));
const key = fc.oneof({ weight: 6, arbitrary: fc.constantFrom<string | null>(API_KEY, ADMIN_KEY) }, { weight: 1, arbitrary: fc.constantFrom<string | null>(null, 'wrong', '', ` ${API_KEY}`) });

// probe.vector is only known after beforeAll; bodies hold this function until they are sent.
function probe0Vector(): number[] {
  return probe.vector;
}

const injectArb = fc.record(
  {
    concept: text,
    vector: fc.oneof(
      { weight: 4, arbitrary: fc.constant(probe0Vector) },
      { weight: 1, arbitrary: fc.array(fc.double({ noNaN: true, noDefaultInfinity: true }), { maxLength: 8 }) },
      { weight: 2, arbitrary: edgeNumber.filter(Number.isFinite).map((x) => new Array(384).fill(x)) },
    ),
    layer: fc.constantFrom(INJECT_LAYER, 0, 7, 8, 1e9),
    scale: fc.oneof(fc.double({ min: -1e6, max: 1e6, noNaN: true }), fc.constantFrom(0, 1, 1e6, -1e6)),
    window: fc.constantFrom('prompt', 'generation', 'all'),
  },
  { requiredKeys: ['layer'] },
);

// Valid values only, edges included: these bodies get through validation to tokenisation, the
// engine, the sampler and the monitor.
const validCommon = {
  model: fc.constant(MODEL),
  max_tokens: fc.oneof(fc.integer({ min: 0, max: 4 }), fc.constant(null)),
  max_completion_tokens: fc.integer({ min: 0, max: 4 }),
  temperature: fc.oneof(fc.double({ min: 0, max: 2, noNaN: true }), fc.constantFrom(0, 1e-320, 5e-324, 1e-300, 1e-30, 2, null)),
  top_p: fc.oneof(fc.double({ min: 5e-324, max: 1, noNaN: true }), fc.constantFrom(5e-324, 1e-300, 1, null)),
  top_k: fc.oneof(fc.integer({ min: 0, max: 200_000 }), fc.constantFrom(0, 1, 2 ** 53, null)),
  seed: fc.oneof(fc.integer(), fc.constantFrom(-1, 2 ** 32, 2 ** 53, -(2 ** 53), 1e300, null)),
  n: fc.constantFrom(1, null),
  stop: fc.oneof(text, fc.array(text, { maxLength: 8 }), fc.constant(null)),
  stream: fc.oneof(fc.boolean(), fc.constant(null)),
  stream_options: fc.oneof(fc.record({ include_usage: fc.boolean() }, { requiredKeys: [] }), fc.constant(null)),
  user: text,
  // OpenAI's range [-2, 2] (values outside it are the mutated bodies' business).
  frequency_penalty: fc.oneof(fc.double({ min: -2, max: 2, noNaN: true }), fc.constantFrom(-2, 0, 2, null)),
  presence_penalty: fc.oneof(fc.double({ min: -2, max: 2, noNaN: true }), fc.constantFrom(-2, 0, 2, null)),
  latentwatch: fc.record({ inject: injectArb }, { requiredKeys: ['inject'] }),
};

const completionBody = fc.record(
  {
    ...validCommon,
    prompt: fc.oneof(text, fc.array(fc.integer({ min: 0, max: 8191 }), { minLength: 1, maxLength: 20 }), fc.array(text, { minLength: 1, maxLength: 1 })),
    echo: fc.boolean(),
    // Completions take the legacy form: how many alternatives per token (0–5).
    logprobs: fc.oneof(fc.integer({ min: 0, max: 5 }), fc.constant(null)),
  },
  { requiredKeys: ['model', 'prompt'] },
);

const message = fc.record(
  {
    role: fc.constantFrom('system', 'developer', 'user', 'assistant', 'tool'),
    // Mostly text parts (image parts are refused with a coded 400, which the mutated bodies cover).
    content: fc.oneof(text, fc.constant(null), fc.array(fc.record({ type: fc.oneof({ weight: 4, arbitrary: fc.constant('text') }, { weight: 1, arbitrary: fc.oneof(fc.constant('image_url'), text) }), text }, { requiredKeys: ['type'] }), { maxLength: 3 })),
    name: text,
  },
  { requiredKeys: ['role'] },
);
const chatBody = fc.record(
  { ...validCommon, messages: fc.array(message, { minLength: 1, maxLength: 4 }), logprobs: fc.oneof(fc.boolean(), fc.constant(null)), top_logprobs: fc.integer({ min: 0, max: 20 }) },
  { requiredKeys: ['model', 'messages'] },
);

/** A valid body with one key (known or not; top level or inside latentwatch.inject) set to anything. */
const mutated = (valid: fc.Arbitrary<Record<string, unknown>>, keys: readonly string[]) =>
  fc.tuple(valid, fc.oneof(fc.constantFrom(...keys), fc.string({ maxLength: 8 })), anyValue, fc.boolean()).map(([b, k, v, nested]) => {
    const out: Record<string, unknown> = { ...b };
    const inj = (out.latentwatch as { inject?: Record<string, unknown> } | undefined)?.inject;
    if (nested && inj) out.latentwatch = { inject: { ...inj, [k]: v } };
    else out[k] = v;
    return out;
  });

const COMMON_KEYS = [...Object.keys(validCommon), 'concept', 'vector', 'layer', 'scale', 'window'];

/** A body: valid, mutated, any JSON value, raw text, or valid JSON under another content type. */
const bodyOf = (valid: fc.Arbitrary<Record<string, unknown>>, keys: readonly string[]) =>
  fc.oneof(
    { weight: 4, arbitrary: valid.map((b) => ({ raw: JSON.stringify(resolveLazy(b)), type: 'application/json' })) },
    { weight: 3, arbitrary: mutated(valid, keys).map((b) => ({ raw: JSON.stringify(resolveLazy(b)), type: 'application/json' })) },
    { weight: 1, arbitrary: fc.jsonValue().map((v) => ({ raw: JSON.stringify(v), type: 'application/json' })) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 60 }).map((s) => ({ raw: s, type: 'application/json' })) },
    {
      weight: 1,
      arbitrary: fc.tuple(valid, fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1', '')).map(([b, t]) => ({ raw: JSON.stringify(resolveLazy(b)), type: t })),
    },
  );

function resolveLazy(v: unknown): unknown {
  if (typeof v === 'function') return (v as () => unknown)();
  if (Array.isArray(v)) return v.map(resolveLazy);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, resolveLazy(x)]));
  return v;
}

const queryArb = fc
  .array(
    fc.tuple(
      fc.oneof(fc.constantFrom('since', 'limit', 'last_id', 'probe', 'severity', 'model', 'silent', 'kind', 'token'), fc.string({ maxLength: 8 })),
      fc.oneof(fc.constantFrom('0', '1', '-1', '10001', '1e3', '99999999999999999999', 'test-injection', 'warning', 'critical', 'detection', 'true', MODEL, API_KEY, ''), fc.string({ maxLength: 12 }), fc.nat().map(String)),
    ),
    { maxLength: 5 },
  )
  .map((pairs) => pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&'));

// ---- checks ---------------------------------------------------------------------------------

interface Answer {
  status: number;
  body: string;
}

async function send(method: string, path: string, o: { key?: string | null; body?: string; type?: string } = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (o.key !== undefined && o.key !== null) headers.authorization = `Bearer ${o.key}`;
  if (o.type) headers['content-type'] = o.type;
  const r = await fetch(`${d.url}${path}`, { method, headers, body: o.body, signal: AbortSignal.timeout(20_000) });
  const body = await r.text();
  seen.requests++;
  seen.byStatus.set(r.status, (seen.byStatus.get(r.status) ?? 0) + 1);
  return { status: r.status, body };
}

/** No 5xx; errors are coded OpenAI bodies whose code maps to the status; streams end cleanly. */
function checkAnswer(a: Answer, what: string): void {
  expect(a.status, `${what} → ${a.status} ${a.body.slice(0, 300)}`).toBeLessThan(500);
  if (a.status >= 400) {
    const j = JSON.parse(a.body) as { error: { code: string; message: string; type: string } };
    expect(j.error.code, what).toMatch(/^LW_ERR_/);
    expect(ERRORS[j.error.code as ErrorCode].status, what).toBe(a.status);
    expect(typeof j.error.message).toBe('string');
  } else if (a.body.startsWith('data: ')) {
    expect(a.body.endsWith('data: [DONE]\n\n'), what).toBe(true);
    for (const ev of a.body.split('\n\n').filter((e) => e.startsWith('data: {'))) {
      expect(JSON.parse(ev.slice(6)).error, `${what}: error event ${ev}`).toBeUndefined();
    }
  }
}

async function stillServing(): Promise<void> {
  expect((await send('GET', '/healthz')).status).toBe(200);
  const ok = await send('POST', '/v1/completions', { key: API_KEY, type: 'application/json', body: JSON.stringify({ model: MODEL, prompt: 'def ', max_tokens: 2 }) });
  expect(ok.status, ok.body).toBe(200);
}

const RUNS = { numRuns: 400, interruptAfterTimeLimit: 25_000 };

describe('fuzzing every route: no 5xx, coded errors, the daemon keeps serving', () => {
  it('POST /v1/completions', async () => {
    await fc.assert(
      fc.asyncProperty(bodyOf(completionBody, [...COMMON_KEYS, 'prompt', 'echo']), key, async (b, k) => {
        checkAnswer(await send('POST', '/v1/completions', { key: k, body: b.raw, type: b.type }), `completions ${b.raw.slice(0, 300)}`);
      }),
      RUNS,
    );
    await stillServing();
  });

  it('POST /v1/chat/completions', async () => {
    await fc.assert(
      fc.asyncProperty(bodyOf(chatBody, [...COMMON_KEYS, 'messages']), key, async (b, k) => {
        checkAnswer(await send('POST', '/v1/chat/completions', { key: k, body: b.raw, type: b.type }), `chat ${b.raw.slice(0, 300)}`);
      }),
      RUNS,
    );
    await stillServing();
  });

  it('GET /v1/alerts (polling), /v1/models, /metrics, /healthz, /readyz with any query, key and method', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('/v1/alerts', '/v1/models', '/metrics', '/healthz', '/readyz', '/v1/alerts/', '/v1/models/x', '/v1', '/'),
        queryArb,
        key,
        fc.constantFrom('GET', 'GET', 'GET', 'POST', 'DELETE', 'PUT', 'HEAD', 'OPTIONS'),
        async (path, q, k, method) => {
          const a = await send(method, `${path}${q ? `?${q}` : ''}`, { key: k });
          if (method === 'HEAD') expect(a.status).toBeLessThan(500);
          else checkAnswer(a, `${method} ${path}?${q}`);
        },
      ),
      { numRuns: 250, interruptAfterTimeLimit: 20_000 },
    );
    await stillServing();
  });

  it('WebSocket upgrades to /v1/alerts with any query and key: a 101 or a coded 4xx', async () => {
    await fc.assert(
      fc.asyncProperty(queryArb, key, async (q, k) => {
        const status = await new Promise<number>((resolve, reject) => {
          const ws = new WebSocket(`${d.url.replace('http', 'ws')}/v1/alerts${q ? `?${q}` : ''}`, k === null ? {} : { headers: { authorization: `Bearer ${k}` } });
          ws.once('open', () => {
            ws.close();
            resolve(101);
          });
          ws.once('unexpected-response', (_req, res) => {
            resolve(res.statusCode ?? 0);
            res.resume();
            ws.terminate();
          });
          ws.once('error', (e) => reject(e));
        });
        seen.requests++;
        expect(status === 101 || (status >= 400 && status < 500), `upgrade ?${q} → ${status}`).toBe(true);
      }),
      { numRuns: 100, interruptAfterTimeLimit: 15_000 },
    );
    await stillServing();
  });

  it('regressions found by fuzzing: a subnormal temperature and an overflowing injection', async () => {
    // temperature 1e-320 used to make every logit NaN in the sampler, which then looped forever:
    // the whole daemon stopped answering. It now samples greedily, as the limit t → 0+ does.
    const greedy = await send('POST', '/v1/completions', { key: API_KEY, type: 'application/json', body: JSON.stringify({ model: MODEL, prompt: 'def add(a, b):', max_tokens: 4, temperature: 0 }) });
    for (const t of [5e-324, 1e-320]) {
      const r = await send('POST', '/v1/completions', { key: API_KEY, type: 'application/json', body: JSON.stringify({ model: MODEL, prompt: 'def add(a, b):', max_tokens: 4, temperature: t }) });
      expect(r.status, r.body).toBe(200);
      expect(JSON.parse(r.body).choices[0].text).toBe(JSON.parse(greedy.body).choices[0].text);
    }
    // A vector value times scale beyond float32 (here 1e39 → Infinity) made the residual stream
    // infinite (the same NaN logits and, with temperature > 0, the same endless loop).
    for (const [value, scale] of [[1e39, 1], [1e38, 10]]) {
      const r = await send('POST', '/v1/completions', {
        key: ADMIN_KEY,
        type: 'application/json',
        body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 2, temperature: 1, latentwatch: { inject: { vector: new Array(384).fill(value), layer: INJECT_LAYER, scale } } }),
      });
      expect(r.status, r.body).toBe(400);
      expect(JSON.parse(r.body).error).toMatchObject({ code: 'LW_ERR_API_BAD_REQUEST', param: 'latentwatch.inject.vector' });
    }
    await stillServing();
  });
});
