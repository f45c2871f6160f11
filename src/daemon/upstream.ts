/**
 * The client for proxy mode's upstream (`serve --upstream URL`): an OpenAI-compatible server (vLLM,
 * SGLang, TGI, llama.cpp, another latentwatch) that generates while the local replica scores.
 *
 * Bounds: waiting for the headers, and for each stream chunk after them, is limited to
 * `timeoutSeconds` (504 LW_ERR_UPSTREAM_TIMEOUT). A refused or reset connection, or a 502/503
 * answer, is retried `retries` times with a short doubling backoff before any byte reaches the
 * client (then 503 LW_ERR_UPSTREAM_UNAVAILABLE); other 5xx answers, malformed bodies and streams
 * that break off are 502 LW_ERR_UPSTREAM_BAD_GATEWAY; the upstream's own 4xx go back unchanged.
 * Every attempt is counted with its outcome (latentwatch_upstream_requests_total{code}).
 *
 * Transport: Node's fetch (undici); SSE framing by `eventsource-parser`.
 */
import { EventSourceParserStream } from 'eventsource-parser/stream';
import { lwError, type LatentwatchError } from '../errors.js';

export interface UpstreamSettings {
  url: string;
  /** Bearer key for the upstream; never logged (server.ts scrubs it from log lines). */
  key: string | null;
  timeoutSeconds: number;
  retries: number;
}

/** What the client reports per attempt (metrics.ts `recordUpstream`). */
export interface UpstreamRecorder {
  recordUpstream(code: string, seconds: number): void;
}

/** A whole answer: a non-streamed 200, or an error status of the upstream's (4xx passed through). */
export interface JsonAnswer {
  kind: 'json';
  status: number;
  body: unknown;
}
/** A streamed 200: the `data:` payloads in order, up to (not including) `[DONE]`. */
export interface StreamAnswer {
  kind: 'stream';
  events: AsyncGenerator<string>;
}
export type UpstreamAnswer = JsonAnswer | StreamAnswer;

/** Errors of the connection itself (no HTTP answer) worth another attempt. */
const RETRYABLE_NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'EAI_AGAIN']);
const RETRYABLE_STATUS = new Set([502, 503]);

/** The URL without credentials, for logs and error details. */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    return '(invalid url)';
  }
}

function networkCode(e: unknown): string | undefined {
  for (let c: unknown = e, depth = 0; c && depth < 4; c = (c as { cause?: unknown }).cause, depth++) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

export class UpstreamClient {
  private readonly base: string;
  /** Set once the daemon's metrics exist (the identity check at start-up runs before). */
  recorder: UpstreamRecorder | undefined;

  constructor(private readonly s: UpstreamSettings) {
    this.base = s.url.replace(/\/+$/, '');
  }

  get url(): string {
    return displayUrl(this.base);
  }

  /** The model ids and entries of the upstream's GET /models. */
  async models(signal?: AbortSignal): Promise<{ id: string; [k: string]: unknown }[]> {
    const answer = await this.request('GET', '/models', undefined, signal ?? new AbortController().signal);
    if (answer.kind !== 'json' || answer.status !== 200) {
      throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.url}/models answered ${answer.kind === 'json' ? answer.status : 'a stream'}`, { upstream: this.url });
    }
    const data = (answer.body as { data?: unknown } | null)?.data;
    if (!Array.isArray(data)) throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.url}/models: no data list`, { upstream: this.url });
    return data.filter((m): m is { id: string } => typeof (m as { id?: unknown } | null)?.id === 'string');
  }

  /** POSTs a completion request; a 200 stream comes back as its events, anything else as JSON. */
  post(path: '/chat/completions' | '/completions', body: unknown, signal: AbortSignal): Promise<UpstreamAnswer> {
    return this.request('POST', path, body, signal);
  }

  private record(code: string, started: number): void {
    this.recorder?.recordUpstream(code, (performance.now() - started) / 1000);
  }

  private async request(method: 'GET' | 'POST', path: string, body: unknown, signal: AbortSignal): Promise<UpstreamAnswer> {
    const headers: Record<string, string> = { accept: 'application/json, text/event-stream' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.s.key !== null) headers.authorization = `Bearer ${this.s.key}`;
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) throw lwError('LW_ERR_ENGINE_ABORTED');
      const started = performance.now();
      const a = new Attempt(signal, this.s.timeoutSeconds * 1000);
      let res: Response;
      try {
        res = await fetch(this.base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: a.ac.signal });
      } catch (e) {
        a.end();
        if (signal.aborted) throw lwError('LW_ERR_ENGINE_ABORTED');
        if (a.timedOut) {
          this.record('timeout', started);
          throw lwError('LW_ERR_UPSTREAM_TIMEOUT', `${this.url}${path}: no answer within ${this.s.timeoutSeconds}s`, { upstream: this.url });
        }
        const code = networkCode(e);
        this.record('unreachable', started);
        if (attempt < this.s.retries && code !== undefined && RETRYABLE_NETWORK.has(code)) {
          await backoff(attempt, signal);
          continue;
        }
        throw lwError('LW_ERR_UPSTREAM_UNAVAILABLE', `${this.url}${path}: ${code ?? (e as Error).message}`, { upstream: this.url, cause: code ?? null }, e);
      }
      if (RETRYABLE_STATUS.has(res.status) && attempt < this.s.retries) {
        a.end();
        this.record(String(res.status), started);
        await res.body?.cancel().catch(() => undefined);
        await backoff(attempt, signal);
        continue;
      }
      if (res.status === 200 && (res.headers.get('content-type') ?? '').includes('text/event-stream')) {
        return { kind: 'stream', events: this.events(res, a, signal, started, path) };
      }
      let text: string;
      try {
        text = await res.text();
      } catch (e) {
        a.end();
        if (signal.aborted) throw lwError('LW_ERR_ENGINE_ABORTED');
        this.record(a.timedOut ? 'timeout' : 'broken', started);
        if (a.timedOut) throw lwError('LW_ERR_UPSTREAM_TIMEOUT', `${this.url}${path}: the body did not arrive within ${this.s.timeoutSeconds}s`, { upstream: this.url });
        throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.url}${path}: the body broke off`, { upstream: this.url }, e);
      }
      a.end();
      this.record(String(res.status), started);
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      if (res.status >= 400 && res.status < 500) {
        // The upstream's verdict on the request: passed through as it is (a non-JSON body wrapped OpenAI-style).
        return { kind: 'json', status: res.status, body: parsed ?? { error: { message: text.slice(0, 1000), type: 'invalid_request_error', code: null, param: null } } };
      }
      if (res.status >= 500) throw this.serverError(res.status, path, parsed ?? text);
      if (parsed === undefined) throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.url}${path}: the answer is not JSON`, { upstream: this.url });
      return { kind: 'json', status: res.status, body: parsed };
    }
  }

  private serverError(status: number, path: string, body: unknown): LatentwatchError {
    const inner = (body as { error?: { message?: unknown; code?: unknown } } | null)?.error;
    const said = typeof inner?.message === 'string' ? `: ${inner.message.slice(0, 300)}` : '';
    const details = { upstream: this.url, upstreamStatus: status, upstreamCode: typeof inner?.code === 'string' ? inner.code : null };
    return lwError(status === 503 ? 'LW_ERR_UPSTREAM_UNAVAILABLE' : status === 504 ? 'LW_ERR_UPSTREAM_TIMEOUT' : 'LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.url}${path} answered ${status}${said}`, details);
  }

  /** The data payloads of a 200 stream; each chunk must come within the timeout. */
  private async *events(res: Response, a: Attempt, signal: AbortSignal, started: number, path: string): AsyncGenerator<string> {
    const reader = res.body!.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream()).getReader();
    let finished = false;
    try {
      for (;;) {
        let next: Awaited<ReturnType<typeof reader.read>>;
        try {
          next = await reader.read();
        } catch (e) {
          finished = true;
          if (signal.aborted) throw lwError('LW_ERR_ENGINE_ABORTED');
          this.record(a.timedOut ? 'timeout' : 'broken', started);
          if (a.timedOut) throw lwError('LW_ERR_UPSTREAM_TIMEOUT', `${this.url}${path}: no stream chunk within ${this.s.timeoutSeconds}s`, { upstream: this.url });
          throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.url}${path}: the stream broke off`, { upstream: this.url }, e);
        }
        if (next.done) {
          finished = true;
          this.record('broken', started);
          throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.url}${path}: the stream ended without [DONE]`, { upstream: this.url });
        }
        if (next.value.data.trim() === '[DONE]') {
          finished = true;
          this.record(String(res.status), started);
          return;
        }
        // The clock restarts for every chunk: a stream may run long, but not stall.
        a.arm();
        yield next.value.data;
      }
    } finally {
      a.end();
      // A consumer that stops early (client gone, scoring failed) closes the connection.
      if (!finished) a.ac.abort();
      await reader.cancel().catch(() => undefined);
    }
  }
}

/** One attempt's cancellation: the caller's signal, or the timeout (re-armed per stream chunk). */
class Attempt {
  readonly ac = new AbortController();
  timedOut = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly onAbort = () => this.ac.abort();

  constructor(
    private readonly signal: AbortSignal,
    private readonly ms: number,
  ) {
    signal.addEventListener('abort', this.onAbort, { once: true });
    this.arm();
  }

  arm(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.ac.abort();
    }, this.ms);
  }

  end(): void {
    clearTimeout(this.timer);
    this.signal.removeEventListener('abort', this.onAbort);
  }
}

function backoff(attempt: number, signal: AbortSignal): Promise<void> {
  const ms = Math.min(2000, 100 * 2 ** attempt);
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });
}
