/**
 * What every API request passes before its body is read (a fastify onRequest hook, so a request
 * without a key gets its 401 before fastify parses, limits or validates the body: a stranger
 * learns nothing about the API from its 400s and 413s, and costs no parsing).
 *
 * Routes opt in with `config: { auth: true }` (the token from `Authorization: Bearer`) or
 * `config: { auth: 'query' }` (also `?token=`, for /v1/alerts). The principal is kept for the
 * handler (`principalOf`), and the request's logger gains the tenant (the key's name, never the key).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
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
}

export function installRequestGuard(app: FastifyInstance, o: GuardOptions): void {
  app.addHook('onRequest', async (req, reply) => {
    const mode = req.routeOptions.config?.auth;
    if (mode === undefined) return;
    const principal = authenticateRequest(req, o.auth, mode);
    // Every later line of this request (errors, "request completed") names its tenant.
    const log = req.log.child({ tenant: principal.tenant });
    req.log = log;
    reply.log = log;
  });
}
