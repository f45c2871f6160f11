/**
 * Several daemon front ends over ONE engine in one process, for measurements that must not
 * compare two processes (on a shared machine two identical daemon processes differ by ±30 % in
 * decode speed, far more than what is measured): each variant is the daemon's own assembly
 * (src/daemon/daemon.ts startDaemon: ProbeBank, the alert store, AlertHub, metrics, InferenceService,
 * buildServer on its own port) with its own probes and alert log, and all share the Engine, its
 * onnxruntime session and KV pool. Variants are used one at a time.
 *
 *   node --import tsx bench/lib/twin-child.ts '<json spec>'   → prints LATENTWATCH_READY {"url", "pid", "urls": {name: url}}
 */
import { basename } from 'node:path';
import { AlertHub } from '../../src/daemon/alert-hub.js';
import { AlertLog } from '../../src/daemon/alert-log.js';
import { SqliteAlertStore } from '../../src/daemon/alert-store.js';
import { GroupCommitAlertStore } from '../../src/daemon/group-commit-store.js';
import { Authenticator } from '../../src/daemon/auth.js';
import { loadConfig } from '../../src/daemon/config.js';
import { VERSION } from '../../src/daemon/daemon.js';
import { InferenceService } from '../../src/daemon/inference.js';
import { createMetrics } from '../../src/daemon/metrics.js';
import { buildServer } from '../../src/daemon/server.js';
import { Engine } from '../../src/engine/engine.js';
import { loadProbe, ProbeBank } from '../../src/probes/probe.js';
import { wallOffsetUs } from './clients.js';

export interface TwinSpec {
  modelDir: string;
  adminKey: string;
  maxConcurrent: number;
  precision?: 'fp32' | 'fp16' | 'int8' | 'int4';
  spinning?: boolean;
  /** Forward passes on the engine's own thread (default: the daemon's, engineThread). */
  engineThread?: boolean;
  /** groupCommit: the log written by the worker thread with group commit (the daemon's default; group-commit-store.ts), else on the event loop. */
  variants: { name: string; probes: string[]; alertLog: string; synchronous?: 'full' | 'normal'; groupCommit?: boolean }[];
}

const spec = JSON.parse(process.argv[2]) as TwinSpec;
const { config } = loadConfig({
  env: { LATENTWATCH_ADMIN_KEY: spec.adminKey, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1' },
  argv: ['--model', spec.modelDir, '--port', '0', '--log-level', 'warn', '--max-concurrent', String(spec.maxConcurrent), '--max-queue', '256', '--max-tokens', '1024'],
});
// Passes on the engine's own thread as the daemon runs them (config engineThread, default on).
const engine = await Engine.load(spec.modelDir, { maxBatch: config.limits.maxConcurrent, precision: spec.precision, spinning: spec.spinning, ownThread: spec.engineThread ?? config.engineThread });
const modelName = basename(spec.modelDir);
const urls: Record<string, string> = {};
const closers: (() => Promise<void>)[] = [];
for (const v of spec.variants) {
  const probes = await Promise.all(v.probes.map((p) => loadProbe(p, engine.fingerprint)));
  const bank = new ProbeBank(probes);
  const metrics = createMetrics({ version: VERSION });
  const logOptions = { path: v.alertLog, pendingLimit: config.alertLog.pendingLimit, synchronous: v.synchronous ?? 'full' } as const;
  const auth = new Authenticator({ apiKeys: [], adminKey: spec.adminKey });
  const ws = config.websocket;
  const store = v.groupCommit ? await GroupCommitAlertStore.open(logOptions) : new SqliteAlertStore(AlertLog.open(logOptions));
  const hub = new AlertHub({ store, auth, bufferLimitBytes: ws.bufferLimitBytes, maxQueuedMessages: ws.maxQueuedMessages, heartbeatIntervalMs: ws.heartbeatIntervalSeconds * 1000, replayPageSize: ws.replayPageSize });
  metrics.bindAlertLog(store);
  metrics.bindAlertHub(hub);
  const inference = new InferenceService({ engine, bank, config, hub, metrics, concepts: null, modelName });
  const app = buildServer({
    config,
    auth,
    inference,
    hub,
    store,
    metrics,
    modelName,
    modelInfo: { fingerprint: engine.fingerprint, precision: engine.build.options.precision, probes: probes.map((p) => ({ id: p.id, label: p.label, hook: p.hooks })) },
    ready: () => true,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address();
  if (!addr || typeof addr !== 'object') throw new Error('no address');
  urls[v.name] = `http://127.0.0.1:${addr.port}`;
  closers.push(async () => {
    app.server.closeAllConnections();
    await app.close();
    await store.close();
  });
}
// clockOffsetUs: this process's wall clock − its forwardAtUs clock (lib/clients.ts wallOffsetUs).
process.stdout.write(`LATENTWATCH_READY ${JSON.stringify({ url: Object.values(urls)[0], pid: process.pid, urls, clockOffsetUs: wallOffsetUs() })}\n`);
const stop = () => {
  void Promise.all(closers.map((c) => c()))
    .then(() => engine.close())
    .then(
      () => process.exit(0),
      () => process.exit(1),
    );
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
