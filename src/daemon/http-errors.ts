/**
 * Errors as HTTP answers: any thrown value → status, headers and an OpenAI error body
 * `{error:{message,type,code,param}}` whose `code` is a LW_ERR_* code. One root error handler
 * (installErrorHandlers, set once by server.ts) answers and logs every route's errors; route
 * plugins set none of their own, so no 5xx escapes the log.
 */
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isLatentwatchError, lwError, type ErrorCode, type LatentwatchError } from '../errors.js';

export interface OpenAIErrorBody {
  error: { message: string; type: string; code: string; param: string | null };
}

export interface HttpError {
  status: number;
  headers: Record<string, string>;
  body: OpenAIErrorBody;
}

/** OpenAI's error `type` for an HTTP status (as api.openai.com answers: 404s are invalid requests). */
function openAIErrorType(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** fastify's own errors (body parsing, limits) → our codes. */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'LW_ERR_API_BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'LW_ERR_API_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'LW_ERR_API_BAD_REQUEST',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'LW_ERR_API_INVALID_JSON',
  FST_ERR_CTP_INVALID_JSON_BODY: 'LW_ERR_API_INVALID_JSON',
  FST_ERR_VALIDATION: 'LW_ERR_API_BAD_REQUEST',
};

/**
 * LatentwatchErrors keep their code and status (`param` from `details.param`); fastify's client
 * errors map to LW_ERR_API_* codes; anything else is LW_ERR_API_INTERNAL with a generic message
 * (the cause is for the log, never the response).
 */
export function toHttpError(err: unknown): HttpError {
  const e = normaliseError(err);
  const param = typeof e.details?.param === 'string' ? e.details.param : null;
  const headers: Record<string, string> = {};
  if (e.status === 401) headers['www-authenticate'] = 'Bearer realm="latentwatch"';
  // RFC 9110: a 405 names the methods the route takes.
  if (e.status === 405 && typeof e.details?.allow === 'string') headers.allow = e.details.allow;
  if (e.status === 429 || e.status === 503) {
    const retry = e.details?.retryAfterSeconds;
    headers['retry-after'] = String(typeof retry === 'number' ? Math.max(1, Math.ceil(retry)) : 1);
  }
  return { status: e.status, headers, body: { error: { message: e.message, type: openAIErrorType(e.status), code: e.code, param } } };
}

function normaliseError(err: unknown): LatentwatchError {
  if (isLatentwatchError(err)) return err;
  const fe = err as { code?: unknown; statusCode?: unknown; message?: unknown; validation?: unknown; validationContext?: unknown };
  if (typeof fe === 'object' && fe !== null) {
    const mapped = typeof fe.code === 'string' ? FASTIFY_CODES[fe.code] : undefined;
    const status = typeof fe.statusCode === 'number' ? fe.statusCode : undefined;
    const message = typeof fe.message === 'string' ? fe.message : undefined;
    if (mapped) return lwError(mapped, message, paramOf(fe), err);
    if (fe.validation !== undefined) return lwError('LW_ERR_API_BAD_REQUEST', message, paramOf(fe), err);
    if (status !== undefined && status >= 400 && status < 500) {
      const byStatus: Partial<Record<number, ErrorCode>> = {
        404: 'LW_ERR_API_NOT_FOUND',
        405: 'LW_ERR_API_METHOD_NOT_ALLOWED',
        413: 'LW_ERR_API_BODY_TOO_LARGE',
        415: 'LW_ERR_API_UNSUPPORTED_MEDIA_TYPE',
      };
      if (status === 400 && err instanceof SyntaxError) return lwError('LW_ERR_API_INVALID_JSON', message, undefined, err);
      return lwError(byStatus[status] ?? 'LW_ERR_API_BAD_REQUEST', message, undefined, err);
    }
  }
  return lwError('LW_ERR_API_INTERNAL', undefined, undefined, err);
}

function paramOf(fe: { validation?: unknown; validationContext?: unknown }): Record<string, unknown> | undefined {
  const v = Array.isArray(fe.validation) ? (fe.validation[0] as { instancePath?: string; params?: { missingProperty?: string } }) : undefined;
  if (!v) return undefined;
  const path = `${v.instancePath ?? ''}${v.params?.missingProperty ? `/${v.params.missingProperty}` : ''}`;
  const param = path.replace(/^\//, '').replace(/\//g, '.');
  return param ? { param } : undefined;
}

/** Send any error as an OpenAI error body. */
export function sendHttpError(reply: FastifyReply, err: unknown): FastifyReply {
  const h = toHttpError(err);
  return reply.code(h.status).headers(h.headers).send(h.body);
}

/** 5xx codes that are the daemon's state (draining, not ready), logged at info without a stack. */
const REFUSALS: ReadonlySet<string> = new Set<ErrorCode>(['LW_ERR_API_SHUTTING_DOWN', 'LW_ERR_API_NOT_READY']);

/**
 * The root error and not-found handlers. Set on the root instance only: fastify gives a plugin's
 * routes the root handler unless the plugin sets its own, which would bypass the 5xx log.
 */
export function installErrorHandlers(app: FastifyInstance): void {
  // Methods per route path (set before any route is added, so plugins' routes are seen too): a
  // known path asked with another method is a 405 naming them, not a 404.
  const methods = new Map<string, Set<string>>();
  app.addHook('onRoute', (r) => {
    const set = methods.get(r.url) ?? new Set<string>();
    for (const m of [r.method].flat()) set.add(m);
    methods.set(r.url, set);
  });
  app.setErrorHandler((err, req, reply) => {
    const h = toHttpError(err);
    // Refusals while starting or draining are expected, not failures: one info line, no stack.
    if (REFUSALS.has(h.body.error.code)) req.log.info({ code: h.body.error.code }, 'request refused');
    else if (h.status >= 500) req.log.error({ err }, 'request failed');
    return sendHttpError(reply, err);
  });
  app.setNotFoundHandler((req: FastifyRequest, reply) => {
    const path = req.url.split('?')[0];
    const allowed = methods.get(path);
    if (allowed && !allowed.has(req.method)) {
      const allow = [...allowed].sort().join(', ');
      return sendHttpError(reply, lwError('LW_ERR_API_METHOD_NOT_ALLOWED', `${req.method} ${path} (allowed: ${allow})`, { allow }));
    }
    return sendHttpError(reply, lwError('LW_ERR_API_NOT_FOUND', `${req.method} ${path}`));
  });
}

/** Own keys that would reach an object's prototype if the body were merged or spread (secure-json-parse's rule). */
function forbiddenKey(root: unknown): string | undefined {
  const stack: [unknown, string][] = [[root, '']];
  while (stack.length > 0) {
    const [v, path] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    for (const k of Object.keys(v)) {
      const child = (v as Record<string, unknown>)[k];
      const at = path === '' ? k : `${path}.${k}`;
      if (k === '__proto__') return at;
      if (k === 'constructor' && typeof child === 'object' && child !== null && Object.hasOwn(child, 'prototype')) return `${at}.prototype`;
      stack.push([child, at]);
    }
  }
  return undefined;
}

/**
 * The only body parser: `application/json`. fastify's default one also takes `text/plain` (a string
 * the schema then refuses with a misleading 400: it is a 415 here), and reports a `__proto__` key
 * as "not valid JSON" (its secure-json-parse error is swallowed): here it is a 400 naming the key.
 */
export function installJsonBodyParser(app: FastifyInstance): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = body as string;
    if (text.length === 0) return done(lwError('LW_ERR_API_INVALID_JSON', 'the body is empty'), undefined);
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      return done(lwError('LW_ERR_API_INVALID_JSON', (e as Error).message.slice(0, 200)), undefined);
    }
    const key = forbiddenKey(value);
    if (key !== undefined) return done(lwError('LW_ERR_API_BAD_REQUEST', 'body must not contain __proto__ or constructor.prototype keys', { param: key }), undefined);
    done(null, value);
  });
}

/**
 * Errors node's HTTP parser raises before fastify sees a request (headers over `maxHeaderSize`, a
 * timeout, a malformed request line): the same coded bodies instead of fastify's own. Passed as
 * fastify's `clientErrorHandler`, so `this` is the instance.
 */
export function clientErrorHandler(this: FastifyInstance, err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const coded =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? lwError('LW_ERR_API_HEADERS_TOO_LARGE', 'the request line and headers are over the limit (node --max-http-header-size)')
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? lwError('LW_ERR_API_REQUEST_TIMEOUT')
        : lwError('LW_ERR_API_BAD_REQUEST', `malformed HTTP request (${err.code ?? 'parse error'})`);
  this.log.debug({ code: coded.code, cause: err.code }, 'client error');
  // A response already under way on this socket (keep-alive) must not get a second status line.
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
  if (!socket.writable || inFlight) {
    socket.destroy();
    return;
  }
  writeRawError(socket, coded);
  // Closing with unread bytes (the rest of an oversized header) can reset the connection before the
  // client reads the answer: drain for a moment, then close.
  socket.resume();
  setTimeout(() => socket.destroy(), 2000).unref();
}

/** Write a whole HTTP/1.1 error response on a raw socket and close it (no fastify reply exists). */
function writeRawError(socket: Duplex, err: unknown): void {
  const h = toHttpError(err);
  const body = JSON.stringify(h.body);
  const reason = STATUS_CODES[h.status] ?? 'Error';
  const headers = [
    `HTTP/1.1 ${h.status} ${reason}`,
    'Connection: close',
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...Object.entries(h.headers).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.end(`${headers.join('\r\n')}\r\n\r\n${body}`);
}

/** Answer a refused WebSocket upgrade (no fastify reply exists yet) with the same error body, then close. */
export function rejectUpgrade(socket: Duplex, err: unknown): void {
  writeRawError(socket, err);
}
