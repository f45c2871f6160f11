/**
 * The query of /v1/alerts, read alike by polling (alert-routes.ts) and the WebSocket upgrade
 * (alert-hub.ts): filters (`probe`, `severity`, `model`, `silent`, `kind`), the cursor (`last_id`
 * or `since`) and `limit`. Bad values are LW_ERR_ALERT_BAD_QUERY (400).
 */
import { lwError } from '../errors.js';
import { ALERT_KINDS, type AlertFilter, type AlertKind } from './alert-log.js';
import type { AlertStore } from './alert-store.js';
import type { Authenticator, Principal } from './auth.js';
import { SEVERITIES, type Severity } from './config.js';

export interface AlertQuery {
  filter: AlertFilter;
  /** `last_id` (WebSocket resume) or `since` (polling). */
  after?: number;
  limit?: number;
}

/** Parse alert filters and cursors from a query. Throws LW_ERR_ALERT_BAD_QUERY (400). */
export function parseAlertQuery(get: (name: string) => readonly string[]): AlertQuery {
  const one = (name: string): string | undefined => {
    const v = get(name);
    if (v.length > 1) throw lwError('LW_ERR_ALERT_BAD_QUERY', `${name} given more than once`, { param: name });
    return v[0];
  };
  const int = (name: string, min: number): number | undefined => {
    const v = one(name);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v)) || Number(v) < min) {
      throw lwError('LW_ERR_ALERT_BAD_QUERY', `${name} must be an integer >= ${min}`, { param: name });
    }
    return Number(v);
  };
  const filter: AlertFilter = {};
  const probes = get('probe').flatMap((p) => p.split(',')).map((p) => p.trim()).filter((p) => p.length > 0);
  if (probes.length > 0) filter.probe = probes;
  const severity = one('severity');
  if (severity !== undefined) {
    if (!(SEVERITIES as readonly string[]).includes(severity)) throw lwError('LW_ERR_ALERT_BAD_QUERY', `severity must be one of ${SEVERITIES.join(', ')}`, { param: 'severity' });
    filter.minSeverity = severity as Severity;
  }
  const model = one('model');
  if (model !== undefined && model !== '') filter.model = model;
  const silent = one('silent');
  if (silent !== undefined) {
    if (!['1', 'true', '0', 'false'].includes(silent)) throw lwError('LW_ERR_ALERT_BAD_QUERY', 'silent must be 1 or 0', { param: 'silent' });
    if (silent === '1' || silent === 'true') filter.silentOnly = true;
  }
  const kind = one('kind');
  if (kind !== undefined) {
    if (!(ALERT_KINDS as readonly string[]).includes(kind)) throw lwError('LW_ERR_ALERT_BAD_QUERY', `kind must be one of ${ALERT_KINDS.join(', ')}`, { param: 'kind' });
    filter.kind = kind as AlertKind;
  }
  const tenant = one('tenant');
  if (tenant !== undefined && tenant !== '') filter.tenant = tenant;
  const q: AlertQuery = { filter };
  const lastId = int('last_id', 0);
  const since = int('since', 0);
  if (lastId !== undefined && since !== undefined) throw lwError('LW_ERR_ALERT_BAD_QUERY', 'give last_id or since, not both', { param: 'since' });
  const after = lastId ?? since;
  if (after !== undefined) q.after = after;
  const limit = int('limit', 1);
  if (limit !== undefined) q.limit = limit;
  return q;
}

/**
 * Tenancy (auth.ts): a user key reads only its own tenant's alerts; asking for another tenant's
 * (`tenant=`) needs the admin key (403). The admin key, or anyone on an open daemon, reads all
 * (`tenant=` then filters).
 */
export function scopeToTenant(q: AlertQuery, auth: Authenticator, principal: Principal): void {
  const own = auth.alertTenant(principal);
  if (own === undefined) return;
  if (q.filter.tenant !== undefined && q.filter.tenant !== own) throw lwError('LW_ERR_AUTH_ADMIN_REQUIRED', "reading another tenant's alerts needs the admin key", { param: 'tenant' });
  q.filter.tenant = own;
}

/**
 * Ids are never reused (alert-log.ts; a JetStream stream's sequence numbers neither), so a cursor
 * above the last id the store knows cannot come from it: another log (a replica without a shared
 * stream), or a deleted one. Answer 409 rather than wait silently for ids to catch up (which would
 * skip every alert until then).
 */
export async function checkCursor(after: number | undefined, store: Pick<AlertStore, 'lastId'>, param: string): Promise<void> {
  if (after === undefined) return;
  const lastId = await store.lastId();
  if (after > lastId) {
    throw lwError('LW_ERR_ALERT_CURSOR_AHEAD', `${param}=${after} but the newest alert id is ${lastId}; resume from 0`, { param, lastId });
  }
}
