/**
 * Issue 13: keys in logs, tenancy, origins and hosts, slow prompts, signals, slow consumers and
 * HTTP mismatches, through the real daemon (real sockets, `ws` client, HTTP).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon, type Daemon } from '../src/daemon/daemon.js';
import { ADMIN_KEY, API_KEY, trainTestProbe, type TestProbe } from './daemon-fixture.js';
import { CODE16M, tempDir, waitUntil } from './helpers.js';

let probe: TestProbe;
const daemons: Daemon[] = [];
beforeAll(async () => {
  probe = await trainTestProbe();
}, 180_000);
afterAll(async () => {
  for (const d of daemons) await d.close();
});

interface LoggedDaemon {
  daemon: Daemon;
  url: string;
  ws: string;
  logs: () => string;
}

/** A daemon on the test probe logging at info into memory. */
async function start(env: Record<string, string> = {}, argv: string[] = []): Promise<LoggedDaemon> {
  const { config } = loadConfig({
    env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1', ...env },
    argv: ['--model', CODE16M, '--probe', probe.path, '--port', '0', '--log-level', 'info', '--alert-log', join(tempDir('lw-sec-'), 'alerts.db'), ...argv],
  });
  let text = '';
  const daemon = await startDaemon(config, [], { logStream: { write: (s: string | Uint8Array) => ((text += String(s)), true) } });
  daemons.push(daemon);
  return { daemon, url: daemon.url, ws: daemon.url.replace(/^http/, 'ws'), logs: () => text };
}

function openWs(url: string, options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options);
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
}

function closed(ws: WebSocket): Promise<number> {
  return new Promise((resolve) => ws.once('close', (code) => resolve(code)));
}

describe('1. keys never reach the log', () => {
  it('?token= on a WebSocket connect and on polling is redacted, right key or wrong', async () => {
    const d = await start();
    const wrong = 'some-other-secret-value';
    const ws = await openWs(`${d.ws}/v1/alerts?token=${API_KEY}`);
    const bye = closed(ws);
    ws.close();
    await bye;
    expect((await fetch(`${d.url}/v1/alerts?since=0&token=${API_KEY}`)).status).toBe(200);
    expect((await fetch(`${d.url}/v1/alerts?token=${wrong}`)).status).toBe(401);
    expect((await fetch(`${d.url}/v1/alerts?api_key=${ADMIN_KEY}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).status).toBe(200);
    await waitUntil(() => d.logs().includes('token=[REDACTED]'), { timeoutMs: 5000, what: 'the polling request to be logged' });
    const logs = d.logs();
    expect(logs).toContain('/v1/alerts?since=0&token=[REDACTED]');
    expect(logs).not.toContain(API_KEY);
    expect(logs).not.toContain(ADMIN_KEY);
    expect(logs).not.toContain(wrong);
  });
});
