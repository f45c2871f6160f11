/**
 * Assembles the daemon from a validated config: engine, probes, concept vectors, alert log and hub,
 * metrics, inference, HTTP server, canary; and tears it down in order on SIGTERM (stop accepting,
 * let streams finish until the deadline, cancel the rest, flush the alert log).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { Engine } from '../engine/engine.js';
import { parseResidPost, residPost } from '../hooks.js';
import { hookList, readProbeFile } from '../probes/probe-file.js';
import { DEFAULT_CORPUS, DEFAULT_MODEL_DIR, PACKAGE_ROOT } from '../paths.js';
import { ConceptStore } from '../probes/concept-store.js';
import { loadProbe, ProbeBank, type Probe } from '../probes/probe.js';
import { AlertHub } from './alert-hub.js';
import { AlertLog } from './alert-log.js';
import { SqliteAlertStore, type AlertStore } from './alert-store.js';
import { GroupCommitAlertStore, type WriterEvent } from './group-commit-store.js';
import { JetStreamAlertStore, redactServers } from './nats-alert-store.js';
import { lwError } from '../errors.js';
import { Authenticator, SYSTEM_TENANT } from './auth.js';
import { Canary } from './canary.js';
import { ruleForProbe, type FrozenConfig } from './config.js';
import { InferenceService } from './inference.js';
import { learnRoutes } from './learn-routes.js';
import { alwaysFittedBaseline } from './learn-baseline.js';
import { LearningService, withLearnedProbes } from './learning.js';
import { createMetrics } from './metrics.js';
import { toJob } from './openai.js';
import { buildServer } from './server.js';
import { ProxyService } from './proxy.js';
import { UpstreamClient, type UpstreamSettings } from './upstream.js';

export interface Daemon {
  app: FastifyInstance;
  url: string;
  engine: Engine;
  probes: Probe[];
  canary: Canary | undefined;
  /** The alert store, the SQLite log when it is the store on the event loop (else null: group commit or --nats), and the hub (diagnostics and fault-injection tests). */
  store: AlertStore;
  log: AlertLog | null;
  hub: AlertHub;
  /** The live probe set (a learned probe swaps in here) and the learning service. */
  bank: ProbeBank;
  learning: LearningService;
  /** Graceful stop: drain, wait up to the deadline, cancel, flush. */
  close(): Promise<void>;
}

export const VERSION: string = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** Probe files shipped beside a model: DIR/probes/*.probe.json. */
export function bundledProbes(modelDir: string): string[] {
  const dir = join(modelDir, 'probes');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.probe.json'))
    .sort()
    .map((f) => join(dir, f));
}

export interface StartOptions {
  /** Where log lines go (default stdout): tests read them. */
  logStream?: Pick<NodeJS.WritableStream, 'write'>;
}

export async function startDaemon(config: FrozenConfig, notices: readonly string[] = [], options: StartOptions = {}): Promise<Daemon> {
  const modelDir = config.modelDir ?? DEFAULT_MODEL_DIR;
  const probePaths = config.probes.length > 0 ? [...config.probes] : bundledProbes(modelDir);
  // The graph taps only the layers the probes read, and has injection ports only when something
  // may inject: a plain serving build carries neither.
  const probeHooks = (await Promise.all(probePaths.map((p) => readProbeFile(p, null)))).flatMap((f) => [...hookList(f.hook)]);
  const engine = await Engine.load(modelDir, {
    precision: config.precision,
    provider: config.provider,
    activations: config.activations === 'auto' ? undefined : config.activations,
    threads: config.threads || undefined,
    spinning: config.spinning,
    ownThread: config.engineThread,
    taps: [...new Set(probeHooks.map(parseResidPost))],
    ports: config.allowInjection || config.canary.enabled ? 'all' : 'none',
    maxBatch: config.limits.maxConcurrent,
  });
  const modelName = config.servedModelName ?? basename(modelDir);
  // Proxy mode: the upstream must serve this checkpoint; checked before anything else is opened.
  const upstream = config.upstream.url === null ? null : new UpstreamClient(config.upstream as UpstreamSettings & { url: string });
  const upstreamModel = config.upstream.model ?? modelName;
  if (upstream) await ProxyService.checkIdentity(upstream, upstreamModel, engine.fingerprint).catch(async (e: unknown) => {
    await engine.close();
    throw e;
  });
  // A probe learned from this deployment's traffic (stateDir/learned) replaces the loaded one of its id.
  const learned = await withLearnedProbes(config.stateDir, await Promise.all(probePaths.map((p) => loadProbe(p, engine.fingerprint))), engine.fingerprint);
  const probes = learned.probes;
  for (const p of probes) for (const h of p.hooks) if (!engine.taps.has(h)) throw new Error(`probe ${p.id} reads ${h}, which the build does not tap`);
  const bank = new ProbeBank(probes);
  const conceptsDir = join(modelDir, 'concepts');
  const concepts = existsSync(join(conceptsDir, 'concepts.json')) ? ConceptStore.open(conceptsDir, engine.fingerprint) : null;
  // The canary injects a stored concept: without one, stop here (before anything else is opened)
  // with a code and the command that makes them, not a stack from deep in start-up.
  const canaryConcept = config.canary.enabled ? (config.canary.concept ?? concepts?.names()[0]) : undefined;
  if (config.canary.enabled && (!concepts || canaryConcept === undefined || !concepts.has(canaryConcept))) {
    await engine.close();
    const make = `make them with \`latentwatch concepts --model ${modelDir} --config configs/trials/base.json --out ${conceptsDir}\` (configs/trials/instruct.json for a chat model), or serve without --canary`;
    throw lwError(
      'LW_ERR_CANARY_CONCEPTS_MISSING',
      !concepts ? `${conceptsDir} holds no concept vectors; ${make}` : `${conceptsDir} has no concept ${JSON.stringify(canaryConcept ?? '')} (canary.concept); ${make}`,
      { conceptsDir, concept: canaryConcept ?? null },
    );
  }

  const metrics = createMetrics({ version: VERSION });
  metrics.setModelInfo({ model: modelName, fingerprint: engine.fingerprint, precision: engine.build.options.precision });
  for (const p of probes) metrics.initProbe(p.id, ruleForProbe(config, p.id, p.threshold).severity);
  // Until the server's logger exists, failures of the alert log go to stderr.
  let onLogState = (e: { state: 'failing' | 'recovered'; error?: string; pending: number }) => {
    process.stderr.write(`alert log ${e.state}${e.error ? `: ${e.error}` : ''}\n`);
  };
  // The group-commit writer's deaths (group-commit-store.ts WriterEvent: counts and the error, no alert content).
  let onWriterEvent = (e: WriterEvent) => {
    process.stderr.write(`alert log writer ${e.state}: ${e.error}\n`);
  };
  // The shared stream's connection events wait for the server's logger (they carry no credentials).
  const earlyStreamEvents: ['info' | 'warn' | 'error', Record<string, unknown>, string][] = [];
  let onStreamEvent = (level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string) => {
    earlyStreamEvents.push([level, fields, msg]);
  };
  // `--nats`: one JetStream stream shared by every replica; else the embedded SQLite log.
  const nats = config.nats;
  // The SQLite log on the event loop only when group commit is off (alertLog.groupCommit); by default a worker thread writes it.
  const groupCommit = nats.servers.length === 0 && config.alertLog.groupCommit;
  const log =
    nats.servers.length > 0 || groupCommit
      ? null
      : AlertLog.open({
          path: config.alertLog.path,
          retentionDays: config.alertLog.retentionDays,
          retentionRows: config.alertLog.retentionRows,
          pendingLimit: config.alertLog.pendingLimit,
          synchronous: config.alertLog.synchronous,
          onStateChange: (e) => onLogState(e),
        });
  const stopMaintenance = log ? log.startMaintenance(config.alertLog.maintenanceIntervalSeconds * 1000) : () => undefined;
  const store: AlertStore = log
    ? new SqliteAlertStore(log)
    : groupCommit
      ? await GroupCommitAlertStore.open({
          path: config.alertLog.path,
          retentionDays: config.alertLog.retentionDays,
          retentionRows: config.alertLog.retentionRows,
          pendingLimit: config.alertLog.pendingLimit,
          synchronous: config.alertLog.synchronous,
          maintenanceIntervalMs: config.alertLog.maintenanceIntervalSeconds * 1000,
          waitForCommitMs: config.alertLog.waitForCommitMs,
          onStateChange: (e) => onLogState(e),
          onWriterEvent: (e) => onWriterEvent(e),
        })
      : await JetStreamAlertStore.open({
        servers: nats.servers,
        stream: nats.stream,
        subject: nats.subject,
        replicas: nats.replicas,
        replica: nats.replica,
        user: nats.user,
        password: nats.password,
        token: nats.token,
        credsFile: nats.credsFile,
        outboxPath: nats.outboxPath ?? join(config.stateDir, 'alert-outbox.db'),
        publishTimeoutMs: nats.publishTimeoutMs,
        duplicateWindowSeconds: nats.duplicateWindowSeconds,
        retentionDays: config.alertLog.retentionDays,
        retentionRows: config.alertLog.retentionRows,
        onEvent: (level, fields, msg) => onStreamEvent(level, fields, msg),
      });
  const auth = new Authenticator({ apiKeys: config.apiKeys, adminKey: config.adminKey });
  const hub = new AlertHub({
    store,
    auth,
    bufferLimitBytes: config.websocket.bufferLimitBytes,
    maxQueuedMessages: config.websocket.maxQueuedMessages,
    heartbeatIntervalMs: config.websocket.heartbeatIntervalSeconds * 1000,
    pongTimeoutMs: config.websocket.pongTimeoutSeconds * 1000,
    replayPageSize: config.websocket.replayPageSize,
  });
  if (log) metrics.bindAlertLog(log);
  if (store instanceof GroupCommitAlertStore) {
    metrics.bindAlertLog(store);
    metrics.bindAlertLogCommits(store);
  }
  if (store instanceof JetStreamAlertStore) metrics.bindAlertOutbox(store);
  metrics.bindAlertHub(hub);
  const learning = new LearningService({ bank, fingerprint: engine.fingerprint, stateDir: config.stateDir, metrics, versions: learned.versions, baseline: alwaysFittedBaseline(engine, DEFAULT_CORPUS) });
  const inference = new InferenceService({ engine, bank, config, hub, metrics, concepts, modelName, learning });
  inference.warm();
  if (upstream) upstream.recorder = metrics;
  const proxy = upstream ? new ProxyService({ upstream, engine, inference, config, upstreamModel }) : undefined;
  let accepting = true;
  // Serving with no probe is allowed (a plain OpenAI server) but watches nothing: say so loudly, in
  // the log and on /readyz, with how to make one.
  const warnings: string[] = [];
  if (probes.length === 0) {
    warnings.push(
      `no probe loaded: nothing is watched and no alert can fire. Make one with \`latentwatch fit-anomaly --model ${modelDir} --out ${join(modelDir, 'probes', 'generic-injection.probe.json')}\` (loaded from DIR/probes/ at the next start) or pass --probe FILE; see docs/daemon.md, "Probes for a new model"`,
    );
  }
  const app = buildServer({
    config,
    auth,
    inference,
    hub,
    store,
    metrics,
    modelName,
    modelInfo: { fingerprint: engine.fingerprint, precision: engine.build.options.precision, probes: probes.map((p) => ({ id: p.id, label: p.label, hook: p.hooks })) },
    ready: () => accepting,
    warnings,
    ...(proxy ? { proxy } : {}),
    ...(options.logStream ? { logStream: options.logStream } : {}),
  });
  onLogState = (e) => {
    if (e.state === 'failing') app.log.error({ error: e.error, pending: e.pending }, 'alert log writes failing: alerts still go to subscribers and wait in memory for the disk');
    else app.log.warn('alert log recovered: pending alerts written');
  };
  onWriterEvent = (e) => {
    const { state, error, ...counts } = e;
    if (state === 'restarted') app.log.error({ error, ...counts }, 'alert log writer died and was restarted: unanswered alerts found in the log were acknowledged, the rest retried');
    else app.log.fatal({ error, ...counts }, 'alert log writer died and could not be restarted: alerts are refused until the daemon restarts');
  };
  onStreamEvent = (level, fields, msg) => app.log[level](fields, msg);
  for (const [level, fields, msg] of earlyStreamEvents.splice(0)) app.log[level](fields, msg);
  if (store instanceof JetStreamAlertStore) app.log.info({ servers: redactServers(nats.servers), stream: nats.stream, replica: store.replica, connected: store.isConnected }, 'alerts go to the shared JetStream stream');
  app.log.info({ model: modelDir, default: config.modelDir === null, fingerprint: engine.fingerprint, build: engine.build.modelPath }, config.modelDir === null ? `serving the built-in default model ${modelName}` : `serving ${modelName}`);
  app.log.info({ probes: probes.map((p) => `${p.id} @ ${p.hooks.join('+')} (threshold ${p.threshold})`) }, `${probes.length} probe(s) loaded`);
  for (const w of warnings) app.log.warn(w);
  if (upstream) app.log.info({ upstream: upstream.url, upstreamModel }, `proxy mode: requests go to ${upstream.url}; this replica scores the prompts and the upstream's tokens`);
  for (const n of notices) app.log.warn(n);
  for (const w of learned.warnings) app.log.warn({ code: w.code }, w.msg);
  for (const [id, v] of learned.versions) app.log.info({ probe: id, version: v.version, path: v.path, threshold: v.threshold, learnedAt: v.learnedAt }, `using ${id} v${v.version}, learned from this deployment's traffic`);
  learning.log = app.log;
  // Only the admin key can start learning: the routes answer 401/403 to anyone else.
  void app.register(learnRoutes, { auth, learning, config });
  // Statistics left by a previous process resume; `--learn N` starts a run only when nothing is
  // being learned or refused and no learned version is in use (restarting with the flag does not
  // relearn, and refused statistics are not overwritten without an admin asking).
  const resumed = learning.resume();
  if (!resumed && !learning.refusedState && config.learn.requests > 0 && !learning.hasLearned(config.learn.probe)) {
    learning.start({ probe: config.learn.probe, requests: config.learn.requests, targetFpr: config.learn.targetFpr }, 'config');
  }

  let canary: Canary | undefined;
  if (config.canary.enabled) {
    const concept = canaryConcept!; // checked above
    const layer = Math.floor(engine.config.numLayers / 2);
    canary = new Canary({
      model: modelName,
      concept,
      record: (r) => metrics.recordCanary(r),
      raise: (draft) => {
        void hub.raise({ ...draft, tenant: SYSTEM_TENANT }).then(
          (r) => metrics.recordAlert(r.alert),
          (e: unknown) => app.log.error({ err: e }, 'canary failure alert not stored'),
        );
      },
      log: (msg, extra) => app.log.error(extra ?? {}, msg),
      run: () => {
        const job = toJob('completion', { model: modelName, prompt: 'def main():\n', max_tokens: 8, temperature: 0, latentwatch: { inject: { concept, layer, scale: 1, window: 'all' } } });
        const prepared = inference.prepare(job, { role: 'admin', authenticated: true, tenant: SYSTEM_TENANT }, 'canary');
        return inference.run(prepared, new AbortController().signal);
      },
    });
    if (!engine.ports.has(residPost(layer))) throw new Error(`canary layer ${layer} has no injection port`);
  }

  try {
    await app.listen({ host: config.host, port: config.port });
  } catch (e) {
    // A taken or unusable address is the operator's to fix: a coded error, not a stack; release what start-up opened.
    await app.close().catch(() => undefined);
    stopMaintenance();
    await store.close();
    await engine.close();
    const code = (e as { code?: unknown }).code;
    if (code === 'EADDRINUSE') throw lwError('LW_ERR_SERVE_PORT_IN_USE', `${config.host}:${config.port} (another process listens there; pick another --port)`, { host: config.host, port: config.port });
    if (typeof code === 'string') throw lwError('LW_ERR_SERVE_LISTEN', `${config.host}:${config.port}: ${code}`, { host: config.host, port: config.port, code }, e);
    throw e;
  }
  const addr = app.server.address();
  const url = typeof addr === 'object' && addr ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : `http://${config.host}:${config.port}`;
  canary?.start(config.canary.intervalSeconds);

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      accepting = false;
      canary?.stop();
      inference.drain();
      const deadline = Date.now() + config.shutdown.deadlineSeconds * 1000;
      while (inference.load.running > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      // Past the deadline, closing the server destroys the remaining streams; their disconnects
      // abort the generations.
      app.server.closeAllConnections();
      await app.close();
      await learning.flush();
      stopMaintenance();
      await store.close();
      await engine.close();
    })());
  return { app, url, engine, probes, canary, store, log, hub, bank, learning, close };
}
