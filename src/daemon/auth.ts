/**
 * API and admin keys, and the roles they grant (errors leave as HTTP answers in http-errors.ts).
 *
 * Roles: 'admin' (the admin key), 'user' (an API key, or anyone when no API key is configured:
 * config.ts then keeps the daemon on loopback). The admin key is accepted wherever a user key is.
 * Keys are compared in constant time (SHA-256 of both sides, then timingSafeEqual, over every
 * configured key without an early exit), so neither the key nor its length leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { lwError } from '../errors.js';

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
}

/**
 * Admin injection: the admin role and injection enabled, else a coded 403. The principal comes
 * from `authenticate`, which has already answered a missing or wrong key with a 401.
 */
export function requireInjection(principal: Principal, allowInjection: boolean): void {
  if (principal.role !== 'admin') throw lwError('LW_ERR_AUTH_ADMIN_REQUIRED', 'injection needs Authorization: Bearer <admin key>');
  if (!allowInjection) throw lwError('LW_ERR_AUTH_INJECTION_DISABLED', 'enable it with LATENTWATCH_ALLOW_INJECTION=1 or allowInjection in the config file');
}
