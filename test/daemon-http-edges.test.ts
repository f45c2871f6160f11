/**
 * Issue 13, the HTTP edges and start-up messages: wrong methods (405 + Allow), oversized headers
 * (431), `__proto__` bodies, non-JSON content types (415), `serve --canary` without concept vectors
 * and a model served with no probe. Real daemon, real sockets.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon, type Daemon } from '../src/daemon/daemon.js';
import { ERRORS, type ErrorCode } from '../src/errors.js';
import { API_KEY } from './daemon-fixture.js';
import { CODE16M, tempDir } from './helpers.js';

const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;

/** The built-in model's checkpoint without its probes/ and concepts/ (a "new model"): symlinks, no copy. */
function bareModel(): string {
  const dir = join(tempDir('lw-bare-'), 'model');
  mkdirSync(dir);
  for (const f of readdirSync(CODE16M)) if (f !== 'probes' && f !== 'concepts') symlinkSync(join(CODE16M, f), join(dir, f));
  return dir;
}

let model: string;
let daemon: Daemon;
let logs = '';
beforeAll(async () => {
  model = bareModel();
  const { config } = loadConfig({
    env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_HOST: '127.0.0.1' },
    argv: ['--model', model, '--port', '0', '--log-level', 'info', '--alert-log', join(tempDir('lw-edges-'), 'alerts.db')],
  });
  daemon = await startDaemon(config, [], { logStream: { write: (s: string | Uint8Array) => ((logs += String(s)), true) } });
}, 180_000);
afterAll(async () => {
  await daemon?.close();
});

interface ErrorBody {
  error: { message: string; type: string; code: string; param: string | null };
}

/** A coded OpenAI error body whose code carries the status. */
function expectCoded(status: number, body: ErrorBody, code: ErrorCode): void {
  expect(body.error.code).toBe(code);
  expect(ERRORS[code].status).toBe(status);
  expect(body.error.type).toBe(status >= 500 ? 'server_error' : 'invalid_request_error');
  expect(typeof body.error.message).toBe('string');
  expect(body.error).toHaveProperty('param');
}

/** Send raw bytes, read until the server closes; the status and the body. */
function raw(payload: string): Promise<{ status: number; headers: string; body: string }> {
  const { port } = new URL(daemon.url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1');
    let text = '';
    s.on('data', (c: Buffer) => (text += String(c)));
    s.on('error', reject);
    s.on('close', () => {
      const [head, ...rest] = text.split('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), headers: head, body: rest.join('\r\n\r\n') });
    });
    s.end(payload);
  });
}

const auth = { authorization: `Bearer ${API_KEY}` };

describe('A. wrong method on a known path', () => {
  it('is 405 with an Allow header and a coded body; an unknown path stays 404', async () => {
    for (const [method, path, allow] of [
      ['GET', '/v1/completions', 'POST'],
      ['PUT', '/v1/chat/completions', 'POST'],
      ['DELETE', '/v1/models', 'GET, HEAD'],
      ['POST', '/v1/alerts', 'GET, HEAD'],
      ['POST', '/healthz', 'GET, HEAD'],
    ] as const) {
      const r = await fetch(`${daemon.url}${path}?x=1`, { method, headers: auth });
      expect([method, path, r.status, r.headers.get('allow')]).toEqual([method, path, 405, allow]);
      const body = (await r.json()) as ErrorBody;
      expectCoded(405, body, 'LW_ERR_API_METHOD_NOT_ALLOWED');
      expect(body.error.message).toContain(`${method} ${path}`);
    }
    const r = await fetch(`${daemon.url}/v1/nowhere`, { method: 'DELETE', headers: auth });
    expect([r.status, r.headers.get('allow')]).toEqual([404, null]);
    expectCoded(404, (await r.json()) as ErrorBody, 'LW_ERR_API_NOT_FOUND');
  });
});

describe('B. requests node refuses before fastify routes them', () => {
  it('headers over the size limit are 431 with a coded body', async () => {
    const r = await raw(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`);
    expect(r.status).toBe(431);
    expect(r.headers).toMatch(/content-type: application\/json/i);
    expectCoded(431, JSON.parse(r.body) as ErrorBody, 'LW_ERR_API_HEADERS_TOO_LARGE');
  });

  it('a malformed request is 400 with a coded body', async () => {
    const r = await raw('NOT A REQUEST\r\n\r\n');
    expect(r.status).toBe(400);
    expectCoded(400, JSON.parse(r.body) as ErrorBody, 'LW_ERR_API_BAD_REQUEST');
  });

  it('the daemon still serves afterwards', async () => {
    expect((await fetch(`${daemon.url}/healthz`)).status).toBe(200);
  });
});

const post = (path: string, body: string, type: string | null, key: string | null = API_KEY) =>
  fetch(`${daemon.url}${path}`, { method: 'POST', headers: { ...(type === null ? {} : { 'content-type': type }), ...(key ? { authorization: `Bearer ${key}` } : {}) }, body });

describe('C. prototype keys in a JSON body', () => {
  it('are a 400 saying so and naming the key, not "not valid JSON"', async () => {
    for (const [body, param] of [
      ['{"model":"m","prompt":"x","__proto__":{"admin":true}}', '__proto__'],
      ['{"model":"m","prompt":"x","latentwatch":{"__proto__":{"inject":1}}}', 'latentwatch.__proto__'],
      ['{"model":"m","messages":[{"role":"user","content":"x","constructor":{"prototype":{"a":1}}}]}', 'messages.0.constructor.prototype'],
    ]) {
      for (const path of ['/v1/completions', '/v1/chat/completions']) {
        const r = await post(path, body, 'application/json');
        const b = (await r.json()) as ErrorBody;
        expect([path, r.status]).toEqual([path, 400]);
        expectCoded(400, b, 'LW_ERR_API_BAD_REQUEST');
        expect(b.error.message).toContain('must not contain __proto__ or constructor.prototype keys');
        expect(b.error.param).toBe(param);
      }
    }
    // A key merely named "constructor" (no prototype under it), and ordinary bodies, still pass the parser.
    const ok = await post('/v1/chat/completions', JSON.stringify({ model: 'model', messages: [{ role: 'user', content: 'def f():' }], max_tokens: 2, temperature: 0, metadata: { constructor: 'x' } }), 'application/json');
    expect(ok.status, await ok.clone().text()).toBe(200);
    const broken = await post('/v1/completions', '{"model":', 'application/json');
    expect(broken.status).toBe(400);
    expectCoded(400, (await broken.json()) as ErrorBody, 'LW_ERR_API_INVALID_JSON');
    const empty = await post('/v1/completions', '', 'application/json');
    expectCoded(400, (await empty.json()) as ErrorBody, 'LW_ERR_API_INVALID_JSON');
  });
});

describe('D. non-JSON content types', () => {
  it('are 415 on the POST API routes, after the key check', async () => {
    const valid = JSON.stringify({ model: 'model', prompt: 'x', max_tokens: 1 });
    const chat = JSON.stringify({ model: 'model', messages: [{ role: 'user', content: 'x' }], max_tokens: 1 });
    for (const [path, body] of [
      ['/v1/completions', valid],
      ['/v1/chat/completions', chat],
    ]) {
      for (const type of ['text/plain', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
        const r = await post(path, body, type);
        expect([path, type, r.status]).toEqual([path, type, 415]);
        expectCoded(415, (await r.json()) as ErrorBody, 'LW_ERR_API_UNSUPPORTED_MEDIA_TYPE');
      }
      // A stranger still learns nothing: 401 first.
      const stranger = await post(path, body, 'text/plain', null);
      expect(stranger.status).toBe(401);
    }
    // JSON with a charset parameter is still JSON.
    expect((await post('/v1/completions', valid, 'application/json; charset=utf-8')).status).toBe(200);
  });
});

describe('E. a model without probes or concept vectors', () => {
  it('served with no probe: a warning in the log and on /readyz says how to make one', async () => {
    const ready = (await (await fetch(`${daemon.url}/readyz`)).json()) as { status: string; warnings?: string[] };
    expect(ready.status).toBe('ready');
    expect(ready.warnings).toHaveLength(1);
    expect(ready.warnings![0]).toContain('no probe loaded');
    expect(ready.warnings![0]).toContain(`latentwatch fit-anomaly --model ${model}`);
    const line = logs.split('\n').find((l) => l.includes('no probe loaded'));
    expect(line).toBeDefined();
    expect((JSON.parse(line!) as { level: number }).level).toBe(40);
  });

  it('serve --canary without concept vectors is a coded start-up error without a stack', async () => {
    const child = spawn(process.execPath, [BIN, 'serve', '--model', model, '--canary', '--port', '0', '--alert-log', join(tempDir('lw-canary-'), 'alerts.db')], {
      env: { ...process.env, LATENTWATCH_HOST: '127.0.0.1', LATENTWATCH_ALLOW_INJECTION: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += String(c)));
    child.stderr.on('data', (c: Buffer) => (out += String(c)));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(code, out).toBe(1);
    expect(out).toContain('LW_ERR_CANARY_CONCEPTS_MISSING');
    expect(out).toContain(`latentwatch concepts --model ${model}`);
    expect(out).not.toMatch(/\n\s+at /);
  }, 120_000);
});
