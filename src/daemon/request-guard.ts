/**
 * What every API request passes before its body is read (a fastify onRequest hook, so a request
 * without a key gets its 401 before fastify parses, limits or validates the body: a stranger
 * learns nothing about the API from its 400s and 413s, and costs no parsing).
 *
 * Routes opt in with `config: { auth: true }` (the token from `Authorization: Bearer`) or
 * `config: { auth: 'query' }` (also `?token=`, for /v1/alerts). The principal is kept for the
 * handler (`principalOf`), and the request's logger gains the tenant (the key's name, never the key).
 *
 * Browsers (`checkHeaders`, also run on the /v1/alerts WebSocket upgrade):
 *   - Origin: a request to the API carrying an Origin header not in `allowedOrigins` is refused
 *     (403 LW_ERR_AUTH_ORIGIN_FORBIDDEN): a page on another site must not use the daemon through
 *     a visitor's browser (WebSockets are not covered by CORS; a `text/plain` POST needs no preflight).
 *   - Host: a key-less daemon (loopback only, config.ts) answers only requests addressed to
 *     localhost, 127.0.0.1 or [::1] (optionally with its port), on every route (403
 *     LW_ERR_AUTH_HOST_FORBIDDEN). DNS rebinding points a foreign name at 127.0.0.1; the Host header
 *     still carries the foreign name.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { IncomingHttpHeaders } from 'node:http';
import { lwError } from '../errors.js';
import { extractToken, type Authenticator, type Principal } from './auth.js';

export type RouteAuth = true | 'query';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Authenticate in onRequest (request-guard.ts). */
    auth?: RouteAuth;
  }
}

const principals = new WeakMap<FastifyRequest, Principal>();

/**
 * The principal the guard authenticated (routes with `config.auth`). On an instance without the
 * guard (a plugin registered alone, as in tests), authenticate here from the same sources.
 */
export function principalOf(req: FastifyRequest, auth?: Authenticator): Principal {
  const p = principals.get(req);
  if (p !== undefined) return p;
  if (auth === undefined) throw new Error(`route ${req.routeOptions.url ?? req.url.split('?')[0]} has no config.auth`);
  return authenticateRequest(req, auth, req.routeOptions.config?.auth ?? true);
}

function authenticateRequest(req: FastifyRequest, auth: Authenticator, mode: RouteAuth): Principal {
  const query = mode === 'query' ? (req.query as Record<string, unknown> | undefined)?.token : undefined;
  const principal = auth.authenticate(extractToken(req.headers, typeof query === 'string' ? query : Array.isArray(query) ? String(query[0]) : undefined));
  principals.set(req, principal);
  return principal;
}

export interface GuardOptions {
  auth: Authenticator;
  allowedOrigins: readonly string[];
  /** The port the server listens on (Host checks), once known. */
  port: () => number | undefined;
}

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '[::1]'];

/** Host and Origin checks (see the module comment); `api`: the route is part of the API (Origin applies). Throws 403s. */
export function checkHeaders(headers: IncomingHttpHeaders, o: GuardOptions, api: boolean): void {
  if (o.auth.open) {
    const host = (headers.host ?? '').toLowerCase();
    const m = /^(localhost|127\.0\.0\.1|\[::1\])(?::(\d{1,5}))?$/.exec(host);
    const port = o.port();
    if (!m || !LOOPBACK_NAMES.includes(m[1]) || (m[2] !== undefined && port !== undefined && Number(m[2]) !== port)) {
      throw lwError('LW_ERR_AUTH_HOST_FORBIDDEN', `Host ${JSON.stringify(host.slice(0, 100))}; use http://127.0.0.1${port === undefined ? '' : `:${port}`}`);
    }
  }
  const origin = headers.origin;
  if (api && origin !== undefined) {
    const normal = origin.trim().replace(/\/+$/, '').toLowerCase();
    const allowed = o.allowedOrigins.some((a) => a === '*' || a.trim().replace(/\/+$/, '').toLowerCase() === normal);
    if (!allowed) throw lwError('LW_ERR_AUTH_ORIGIN_FORBIDDEN', `Origin ${JSON.stringify(origin.slice(0, 200))} (allow it with --allowed-origin or allowedOrigins)`);
  }
}

export function installRequestGuard(app: FastifyInstance, o: GuardOptions): void {
  app.addHook('onRequest', async (req, reply) => {
    const mode = req.routeOptions.config?.auth;
    checkHeaders(req.headers, o, mode !== undefined);
    if (mode === undefined) return;
    const principal = authenticateRequest(req, o.auth, mode);
    // Every later line of this request (errors, "request completed") names its tenant.
    const log = req.log.child({ tenant: principal.tenant });
    req.log = log;
    reply.log = log;
  });
}
