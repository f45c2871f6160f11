/**
 * GET /v1/alerts (polling) behind the root error handlers, set up as server.ts sets them: a fault
 * under the route (the alert log's SQLite connection closed beneath it) is logged as a 5xx and
 * still answers a coded OpenAI error body; client errors answer without an error log line.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { afterAll, describe, expect, it } from 'vitest';
import { AlertHub } from '../src/daemon/alert-hub.js';
import { AlertLog } from '../src/daemon/alert-log.js';
import { SqliteAlertStore } from '../src/daemon/alert-store.js';
import { alertRoutes } from '../src/daemon/alert-routes.js';
import { Authenticator } from '../src/daemon/auth.js';
import { installErrorHandlers } from '../src/daemon/http-errors.js';

const dir = mkdtempSync(join(tmpdir(), 'lw-routes-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface LogLine {
  level: number;
  msg: string;
  err?: { message: string; code?: string };
}

describe('GET /v1/alerts errors', () => {
  it('a 5xx goes through the root handler: logged, and answered with a coded OpenAI body', async () => {
    const lines: LogLine[] = [];
    const app = Fastify({ logger: { level: 'error', stream: { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) } } });
    installErrorHandlers(app);
    const log = AlertLog.open({ path: join(dir, 'alerts.db') });
    const auth = new Authenticator({ apiKeys: ['user-key'], adminKey: null });
    const store = new SqliteAlertStore(log);
    const hub = new AlertHub({ store, auth, bufferLimitBytes: 1 << 20, maxQueuedMessages: 1000, heartbeatIntervalMs: 60_000 });
    await app.register(alertRoutes, { hub, store, auth });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const addr = app.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('no address');
    const get = (q: string) => fetch(`http://127.0.0.1:${addr.port}/v1/alerts?${q}`, { headers: { authorization: 'Bearer user-key' } });
    try {
      await hub.raise({ requestId: 'r1', model: 'm', probeId: 'p', probeLabel: 'p', severity: 'warning', score: 1, threshold: 0.5, tokenIndex: 0, silent: true, verbalized: false, kind: 'detection' });
      expect((await get('since=0')).status).toBe(200);
      // A client error: coded, and no error log line.
      const bad = await get('since=x');
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('LW_ERR_ALERT_BAD_QUERY');
      expect(lines).toEqual([]);

      // The real fault: the log's database connection closes under the running route.
      log.database.close();
      const r = await get('since=0');
      expect(r.status).toBe(500);
      expect(await r.json()).toEqual({ error: { message: expect.stringMatching(/^alert log read failed/), type: 'server_error', code: 'LW_ERR_ALERT_LOG_READ', param: null } });
      const logged = lines.filter((l) => l.msg === 'request failed');
      expect(logged).toHaveLength(1);
      expect(logged[0].level).toBe(50);
      expect(logged[0].err).toMatchObject({ code: 'LW_ERR_ALERT_LOG_READ', message: expect.stringContaining('not open') });
    } finally {
      await app.close();
    }
  });
});
