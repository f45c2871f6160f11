/**
 * API and admin keys, and OpenAI-style error bodies.
 *
 * Roles: 'admin' (the admin key), 'user' (an API key, or anyone when no API key is configured:
 * config.ts then keeps the daemon on loopback). The admin key is accepted wherever a user key is.
 * Keys are compared in constant time (SHA-256 of both sides, then timingSafeEqual, over every
 * configured key without an early exit), so neither the key nor its length leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { isLatentwatchError, lwError, type ErrorCode, type LatentwatchError } from '../errors.js';

export type Role = 'admin' | 'user';
export interface Principal {
  role: Role;
  /** false when no key was needed (open daemon). */
  authenticated: boolean;
}

export interface AuthKeys {
  apiKeys: readonly string[];
  adminKey: string | null;
}

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** Constant-time string comparison (lengths may differ). */
export function keysEqual(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

/** The bearer token of an Authorization header, else the `token` query parameter, else undefined. */
export function extractToken(headers: IncomingHttpHeaders, queryToken?: string | null): string | undefined {
  const h = headers.authorization;
  if (typeof h === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    if (m) return m[1];
  }
  if (typeof queryToken === 'string' && queryToken.length > 0) return queryToken;
  return undefined;
}

export class Authenticator {
  private readonly apiDigests: Buffer[];
  private readonly adminDigest: Buffer | null;

  constructor(keys: AuthKeys) {
    this.apiDigests = keys.apiKeys.map(digest);
    this.adminDigest = keys.adminKey === null ? null : digest(keys.adminKey);
  }

  /** No API key configured: user-level routes need no key. */
  get open(): boolean {
    return this.apiDigests.length === 0;
  }

  get adminConfigured(): boolean {
    return this.adminDigest !== null;
  }

  /** Classify a token without throwing: 'admin', 'user', or null (missing or wrong). */
  identify(token: string | undefined): Role | null {
    if (token === undefined) return null;
    const d = digest(token);
    let admin = false;
    if (this.adminDigest !== null) admin = timingSafeEqual(d, this.adminDigest);
    let user = false;
    for (const k of this.apiDigests) user = timingSafeEqual(d, k) || user; // no early exit
    return admin ? 'admin' : user ? 'user' : null;
  }

  /**
   * A user-level route (inference, alerts). Throws LW_ERR_AUTH_MISSING_KEY / LW_ERR_AUTH_INVALID_KEY (401).
   * With no API key configured anyone passes; a presented admin key still yields the admin role.
   */
  authenticate(token: string | undefined): Principal {
    const role = this.identify(token);
    if (role !== null) return { role, authenticated: true };
    if (this.open) return { role: 'user', authenticated: false };
    if (token === undefined) throw lwError('LW_ERR_AUTH_MISSING_KEY', 'send Authorization: Bearer <key>');
    throw lwError('LW_ERR_AUTH_INVALID_KEY');
  }

  /** An admin-only operation. 401 without a valid key, 403 with a user key (or no admin key configured). */
  requireAdmin(token: string | undefined): Principal {
    const role = this.identify(token);
    if (role === 'admin') return { role, authenticated: true };
    if (role === 'user') throw lwError('LW_ERR_AUTH_ADMIN_REQUIRED');
    if (token !== undefined) {
      throw this.open ? lwError('LW_ERR_AUTH_ADMIN_REQUIRED', this.adminConfigured ? 'wrong admin key' : 'no admin key is configured') : lwError('LW_ERR_AUTH_INVALID_KEY');
    }
    if (this.open) throw lwError('LW_ERR_AUTH_ADMIN_REQUIRED', this.adminConfigured ? undefined : 'no admin key is configured');
    throw lwError('LW_ERR_AUTH_MISSING_KEY', 'send Authorization: Bearer <admin key>');
  }

  /** Admin injection: the admin key and injection enabled, else a coded 401/403. */
  requireInjection(token: string | undefined, allowInjection: boolean): Principal {
    const principal = this.requireAdmin(token);
    if (!allowInjection) throw lwError('LW_ERR_AUTH_INJECTION_DISABLED', 'set LATENTWATCH_ALLOW_INJECTION=1 or allowInjection in the config file');
    return principal;
  }
}

// ── OpenAI error bodies ──────────────────────────────────────────────────────────────────────

export interface OpenAIErrorBody {
  error: { message: string; type: string; code: string; param: string | null };
}

export interface HttpError {
  status: number;
  headers: Record<string, string>;
  body: OpenAIErrorBody;
}

/** OpenAI's error `type` for an HTTP status (as api.openai.com answers: 404s are invalid requests). */
export function openAIErrorType(status: number): string {
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
 * Any thrown value → status, headers and an OpenAI error body `{error:{message,type,code,param}}`.
 * LatentwatchErrors keep their code and status (`param` from `details.param`); fastify's client
 * errors map to LW_ERR_API_* codes; anything else is LW_ERR_API_INTERNAL with a generic message
 * (the cause is for the log, never the response).
 */
export function toHttpError(err: unknown): HttpError {
  const e = normaliseError(err);
  const param = typeof e.details?.param === 'string' ? e.details.param : null;
  const headers: Record<string, string> = {};
  if (e.status === 401) headers['www-authenticate'] = 'Bearer realm="latentwatch"';
  if (e.status === 429 || e.status === 503) {
    const retry = e.details?.retryAfterSeconds;
    headers['retry-after'] = String(typeof retry === 'number' ? Math.max(1, Math.ceil(retry)) : 1);
  }
  return { status: e.status, headers, body: { error: { message: e.message, type: openAIErrorType(e.status), code: e.code, param } } };
}

/** Any thrown value as a LatentwatchError (see toHttpError). */
export function normaliseError(err: unknown): LatentwatchError {
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

/** Minimal reply shape (fastify's FastifyReply satisfies it). */
export interface ReplyLike {
  code(status: number): ReplyLike;
  headers(values: Record<string, string>): ReplyLike;
  send(payload: unknown): unknown;
}

/** Send any error as an OpenAI error body. Usable as (part of) a fastify error handler. */
export function sendHttpError(reply: ReplyLike, err: unknown): unknown {
  const h = toHttpError(err);
  return reply.code(h.status).headers(h.headers).send(h.body);
}
