/**
 * fastify plugin for /v1/alerts: GET for polling, `?since=ID&limit=N` (&probe, severity, model,
 * silent, kind; on any replica with a shared JetStream stream, the whole cluster's alerts), answering `{object:"list", data:[alerts], last_id, has_more}` (pass `last_id` back
 * as `since`); and the hub's WebSocket upgrade on the same path, closed with the server.
 * It sets no error handler: its errors go through the root one (http-errors.ts), which logs 5xx.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import { ALERTS_PATH, type AlertHub } from './alert-hub.js';
import { checkCursor, parseAlertQuery, scopeToTenant } from './alert-query.js';
import type { AlertStore } from './alert-store.js';
import type { Authenticator } from './auth.js';
import { principalOf } from './request-guard.js';

export interface AlertRoutesOptions {
  hub: AlertHub;
  store: AlertStore;
  auth: Authenticator;
  /** Host and Origin checks for the WebSocket upgrade (request-guard.ts `checkHeaders`; fastify's hooks do not see upgrades). */
  checkHeaders?: (headers: IncomingHttpHeaders) => void;
}

export const alertRoutes: FastifyPluginAsync<AlertRoutesOptions> = async (app: FastifyInstance, opts: AlertRoutesOptions) => {
  opts.hub.attach(app.server, opts.checkHeaders);
  opts.hub.logger = app.log;
  // preClose, not onClose: open WebSocket connections would keep the HTTP server from closing.
  app.addHook('preClose', async () => {
    await opts.hub.close();
  });
  // Authenticated by the request guard (request-guard.ts; `?token=` accepted here); a user key reads its own tenant's alerts.
  app.get(ALERTS_PATH, { config: { auth: 'query' } }, async (req) => {
    const raw = req.query as Record<string, string | string[] | undefined>;
    const get = (name: string): string[] => {
      const v = raw[name];
      return v === undefined ? [] : Array.isArray(v) ? v : [v];
    };
    const q = parseAlertQuery(get);
    scopeToTenant(q, opts.auth, principalOf(req, opts.auth));
    const after = q.after ?? 0;
    await checkCursor(after, opts.store, 'since');
    const limit = Math.min(q.limit ?? 100, 1000);
    const rows = (await opts.store.since(after, q.filter, limit + 1)).alerts;
    const data = rows.slice(0, limit);
    return { object: 'list', data, last_id: data.length > 0 ? data[data.length - 1].id : after, has_more: rows.length > limit };
  });
};
