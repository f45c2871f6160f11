/**
 * API and admin keys, and the roles they grant (errors leave as HTTP answers in http-errors.ts).
 *
 * Roles: 'admin' (the admin key), 'user' (an API key, or anyone when no API key is configured:
 * config.ts then keeps the daemon on loopback). The admin key is accepted wherever a user key is.
 * Keys are compared in constant time (SHA-256 of both sides, then timingSafeEqual, over every
 * configured key without an early exit), so neither the key nor its length leaks through timing.
 *
 * Tenancy: each API key has a name (config.ts `namedApiKeys`), the tenant of the requests made
 * with it. Alerts carry the tenant of the request that raised them; a user key sees only its own
 * tenant's alerts, the admin key (tenant "admin") sees every tenant's. An open daemon (no API key)
 * has one tenant, "anonymous", and everyone sees all of it. The daemon's own alerts (canary
 * failures) belong to "system". The name, never the key, goes to alerts, logs and metrics.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { lwError } from '../errors.js';

export type Role = 'admin' | 'user';
export interface Principal {
  role: Role;
  /** false when no key was needed (open daemon). */
  authenticated: boolean;
  /** The key's name (see the module comment); ANONYMOUS_TENANT on an open daemon, ADMIN_TENANT for the admin key. */
  tenant: string;
}

export const ANONYMOUS_TENANT = 'anonymous';
export const ADMIN_TENANT = 'admin';
export const SYSTEM_TENANT = 'system';
/** Names a configured key may not take. */
export const RESERVED_TENANTS: readonly string[] = [ANONYMOUS_TENANT, ADMIN_TENANT, SYSTEM_TENANT];

export interface AuthKeys {
  /** Bare keys are named by position (key-1, key-2, …), as config.ts `namedApiKeys` names them. */
  apiKeys: readonly (string | { readonly name: string; readonly key: string })[];
  adminKey: string | null;
}

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

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
  private readonly apiNames: string[];
  private readonly adminDigest: Buffer | null;

  constructor(keys: AuthKeys) {
    const named = keys.apiKeys.map((k, i) => (typeof k === 'string' ? { name: `key-${i + 1}`, key: k } : k));
    this.apiDigests = named.map((k) => digest(k.key));
    this.apiNames = named.map((k) => k.name);
    this.adminDigest = keys.adminKey === null ? null : digest(keys.adminKey);
  }

  /** No API key configured: user-level routes need no key. */
  get open(): boolean {
    return this.apiDigests.length === 0;
  }

  /** Classify a token without throwing: 'admin', 'user', or null (missing or wrong). */
  identify(token: string | undefined): Role | null {
    return this.resolve(token)?.role ?? null;
  }

  /** `identify` with the key's tenant. */
  resolve(token: string | undefined): { role: Role; tenant: string } | null {
    if (token === undefined) return null;
    const d = digest(token);
    let admin = false;
    if (this.adminDigest !== null) admin = timingSafeEqual(d, this.adminDigest);
    let user = -1;
    this.apiDigests.forEach((k, i) => {
      if (timingSafeEqual(d, k)) user = i; // no early exit
    });
    return admin ? { role: 'admin', tenant: ADMIN_TENANT } : user >= 0 ? { role: 'user', tenant: this.apiNames[user] } : null;
  }

  /**
   * Whose alerts a principal may read: its own tenant's, or undefined for all (the admin key; an
   * open daemon, whose one tenant everyone shares).
   */
  alertTenant(principal: Principal): string | undefined {
    return principal.role === 'admin' || this.open ? undefined : principal.tenant;
  }

  /**
   * A user-level route (inference, alerts). Throws LW_ERR_AUTH_MISSING_KEY / LW_ERR_AUTH_INVALID_KEY (401).
   * With no API key configured anyone passes; a presented admin key still yields the admin role.
   */
  authenticate(token: string | undefined): Principal {
    const who = this.resolve(token);
    if (who !== null) return { ...who, authenticated: true };
    if (this.open) return { role: 'user', authenticated: false, tenant: ANONYMOUS_TENANT };
    if (token === undefined) throw lwError('LW_ERR_AUTH_MISSING_KEY', 'send Authorization: Bearer <key>');
    throw lwError('LW_ERR_AUTH_INVALID_KEY');
  }
}

/**
 * The admin role, else a coded 403 saying what needed it. The principal comes from
 * `authenticate`, which has already answered a missing or wrong key with a 401.
 */
export function requireAdmin(principal: Principal, what: string): void {
  if (principal.role !== 'admin') throw lwError('LW_ERR_AUTH_ADMIN_REQUIRED', `${what} needs Authorization: Bearer <admin key>`);
}

/** Admin injection: the admin role and injection enabled, else a coded 403. */
export function requireInjection(principal: Principal, allowInjection: boolean): void {
  requireAdmin(principal, 'injection');
  if (!allowInjection) throw lwError('LW_ERR_AUTH_INJECTION_DISABLED', 'enable it with LATENTWATCH_ALLOW_INJECTION=1 or allowInjection in the config file');
}
