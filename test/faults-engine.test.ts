/**
 * Engine and session errors in the middle of requests: the request that hit the fault gets a coded
 * 5xx (an HTTP 500 body before its stream starts, an error event before [DONE] after), the others
 * are unaffected, and the daemon keeps serving.
 *
 * How the faults are caused:
 *   - a real onnxruntime failure under a running stream, with nothing faked: the session is
 *     released between two forward passes (`engine.exclusive`), so the next pass fails inside
 *     onnxruntime ("Session already disposed");
 *   - per-request faults: onnxruntime itself fails, but on a pass chosen by the test. No request can
 *     make a valid session fail on its own (the daemon validates every input first), so the test
 *     wraps RuntimeSession.run and drops a required feed from the passes of one marked request;
 *     onnxruntime then raises its real missing-input error. This wrapper is the only fake here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../src/daemon/daemon.js';
import { GRAPH_NAMES } from '../src/model/graph.js';
import { injectPort, residPost } from '../src/hooks.js';
import type { Tensor } from '../src/engine/runtime.js';
import { scrape, streamRequest } from '../bench/lib/clients.js';
import { ADMIN_KEY, API_KEY, INJECT_LAYER, startTestDaemon, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { waitUntil } from './helpers.js';

const MODEL = 'qwen2-code-16m';
/** The marked request's prompt: 37 token ids, a length no other prompt here has. */
const MARKED_PROMPT = Array.from({ length: 37 }, (_, i) => 100 + i);
let probe: TestProbe;

beforeAll(async () => {
  probe = await trainTestProbe();
});

type Feeds = Record<string, Tensor>;
type Run = (feeds: Feeds, outputs: readonly string[], writes?: unknown) => Promise<Record<string, Tensor>>;

/** Drops `seqlens_k` from the passes `trip` picks: onnxruntime then fails the run itself. */
function breakPasses(d: Daemon, trip: (feeds: Feeds) => boolean): { restore(): void; tripped(): number } {
  const session = d.engine.session as unknown as { run: Run };
  const real = session.run.bind(session);
  let tripped = 0;
  session.run = (feeds, outputs, writes) => {
    if (!trip(feeds)) return real(feeds, outputs, writes);
    tripped++;
    const broken = { ...feeds };
    delete broken[GRAPH_NAMES.seqlensK];
    return real(broken, outputs, writes);
  };
  return { restore: () => (session.run = real), tripped: () => tripped };
}

const post = (d: Daemon, body: Record<string, unknown>, key = API_KEY) =>
  fetch(`${d.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify({ model: MODEL, ...body }) });

type ErrorBody = { error: { code: string; type: string; message: string } };
const readyz = async (d: Daemon) => (await (await fetch(`${d.url}/readyz`)).json()) as { running: number; waiting: number };

const long = { prompt: 'class Config:\n    def __init__(self, path):\n        self.', max_tokens: 60, temperature: 0 };

describe('engine faults mid-request', () => {
  let d: Daemon;
  beforeAll(async () => {
    d = await startTestDaemon(probe, ['--max-concurrent', '4']);
  });
  afterAll(async () => {
    await d?.close();
  });

  it('a failing prefill pass: a coded 500 for that request only, streaming or not, while other streams run on', async () => {
    const brk = breakPasses(d, (f) => f[GRAPH_NAMES.inputIds].dims[1] === MARKED_PROMPT.length);
    try {
      const fiveXxBefore = await scrape(d.url, 'latentwatch_http_requests_total', { status_class: '5xx' });
      // Two healthy streams are decoding when the marked requests arrive.
      let healthyTokens = 0;
      const healthy = [0, 1].map(() => streamRequest(d.url, '/v1/completions', { model: MODEL, ...long }, { key: API_KEY, onEvent: () => healthyTokens++ }));
      await waitUntil(() => healthyTokens >= 6, { timeoutMs: 10_000, what: 'two healthy streams to be decoding (6 events)', detail: () => `${healthyTokens} events` });
      const plain = await post(d, { prompt: MARKED_PROMPT, max_tokens: 8 });
      expect(plain.status).toBe(500);
      expect(((await plain.json()) as ErrorBody).error).toMatchObject({ code: 'LW_ERR_ENGINE_SESSION_FAILED', type: 'server_error' });
      const streamed = await streamRequest(d.url, '/v1/completions', { model: MODEL, prompt: MARKED_PROMPT, max_tokens: 8 }, { key: API_KEY });
      expect(streamed.status).toBe(500); // the stream had not started: still a plain HTTP error
      expect(streamed.error).toMatchObject({ code: 'LW_ERR_ENGINE_SESSION_FAILED' });
      expect(brk.tripped()).toBe(2);
      for (const h of await Promise.all(healthy)) {
        expect(h.error).toBeNull();
        expect(h.done).toBe(true);
        expect(h.completionTokens).toBe(60);
      }
      expect(await scrape(d.url, 'latentwatch_http_requests_total', { status_class: '5xx' })).toBe(fiveXxBefore + 2);
    } finally {
      brk.restore();
    }
    expect((await readyz(d)).running).toBe(0);
  });

  it('a failing decode pass mid-stream: the stream ends with a coded error event and [DONE]; the slot is freed', async () => {
    // The marked request injects (admin) during generation; its 4th injected decode pass fails.
    const port = injectPort(residPost(INJECT_LAYER));
    let injected = 0;
    const brk = breakPasses(d, (f) => f[GRAPH_NAMES.inputIds].dims[1] === 1 && f[port].data.some((x) => x !== 0) && ++injected === 4);
    try {
      const r = await streamRequest(
        d.url,
        '/v1/completions',
        { model: MODEL, ...long, latentwatch: { inject: { vector: probe.vector, layer: INJECT_LAYER, scale: probe.scale, window: 'generation' } } },
        { key: ADMIN_KEY },
      );
      expect(r.status).toBe(200);
      expect(r.tokenTimes.length).toBeGreaterThanOrEqual(2); // tokens went out before the fault
      expect(r.error).toMatchObject({ code: 'LW_ERR_ENGINE_SESSION_FAILED', type: 'server_error' });
      expect(r.done).toBe(true);
      expect(brk.tripped()).toBe(1);
    } finally {
      brk.restore();
    }
    expect((await readyz(d)).running).toBe(0);
    // Every slot is usable again: four concurrent requests (the pool's size) all complete.
    const rs = await Promise.all([0, 1, 2, 3].map(() => post(d, { prompt: 'def ', max_tokens: 4 })));
    expect(rs.map((x) => x.status)).toEqual([200, 200, 200, 200]);
  });
});

describe('the session is released under a running stream (real onnxruntime failure, nothing faked)', () => {
  it('the stream gets a coded error event, later requests a coded 500, and every other route keeps answering', async () => {
    const d = await startTestDaemon(probe);
    try {
      let n = 0;
      let released: Promise<void> | undefined;
      const r = await streamRequest(d.url, '/v1/completions', { model: MODEL, ...long }, {
        key: API_KEY,
        onEvent: () => {
          if (++n === 3) released = d.engine.exclusive(() => d.engine.session.release());
        },
      });
      await released;
      expect(r.status).toBe(200);
      expect(r.error).toMatchObject({ code: 'LW_ERR_ENGINE_SESSION_FAILED' });
      expect(r.error!.message).toMatch(/disposed|released/i);
      expect(r.done).toBe(true);
      const later = await post(d, { prompt: 'def ', max_tokens: 4 });
      expect(later.status).toBe(500);
      expect(((await later.json()) as ErrorBody).error.code).toBe('LW_ERR_ENGINE_SESSION_FAILED');
      for (const path of ['/healthz', '/readyz', '/metrics', '/v1/models', '/v1/alerts?since=0']) {
        const x = await fetch(`${d.url}${path}`, { headers: { authorization: `Bearer ${API_KEY}` } });
        expect(x.status, path).toBe(200);
      }
      expect((await readyz(d)).running).toBe(0);
    } finally {
      // The engine's own close would release the session a second time.
      (d.engine.session as unknown as { release(): Promise<void> }).release = async () => {};
      await d.close();
    }
  });
});
