/**
 * The HTTP surface (fastify): the OpenAI-compatible API with verdicts, /v1/alerts (polling and
 * WebSocket), /metrics, /healthz and /readyz. Every error leaves as an OpenAI error body with its
 * LW_ERR_* code; routes are counted by pattern, never by raw URL.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { lwError } from '../errors.js';
import type { AlertHub } from './alert-hub.js';
import { alertRoutes } from './alert-routes.js';
import type { AlertStore } from './alert-store.js';
import type { Authenticator } from './auth.js';
import { namedApiKeys, type FrozenConfig } from './config.js';
import { clientErrorHandler, installErrorHandlers, installJsonBodyParser, sendHttpError, toHttpError } from './http-errors.js';
import type { InferenceService } from './inference.js';
import type { ProxyService } from './proxy.js';
import type { DaemonMetrics } from './metrics.js';
import { checkHeaders, installRequestGuard, principalOf, type GuardOptions } from './request-guard.js';
import { redactUrl, SecretScrubber, setProcessSecrets } from './redact.js';
import { attachPromptIds, chatRequestSchema, completionRequestSchema, deltaChunk, fullResponse, toJob, usageChunk, verdictChunk, type ApiKind, type ChatBody, type CompletionBody } from './openai.js';

export interface ServerDeps {
  config: FrozenConfig;
  auth: Authenticator;
  inference: InferenceService;
  hub: AlertHub;
  store: AlertStore;
  metrics: DaemonMetrics;
  modelName: string;
  /** Extra /v1/models fields. */
  modelInfo: Record<string, unknown>;
  /** False while starting or draining: /readyz answers 503 and the API refuses work. */
  ready: () => boolean;
  /** Start-up warnings an operator should see beyond the log (e.g. no probe loaded): /readyz lists them. */
  warnings?: readonly string[];
  /** Proxy mode (`serve --upstream`): the completion routes forward to the upstream and score its answer (proxy.ts). */
  proxy?: Pick<ProxyService, 'complete'>;
  /** Where log lines go (default stdout); tests capture them here. */
  logStream?: Pick<NodeJS.WritableStream, 'write'>;
}

/** Body limit of every route but the completions (which take limits.bodyLimitBytes). */
export const SMALL_BODY_LIMIT = 64 * 1024;

/** Keys the daemon knows; none may reach a log line (redact.ts). */
function configuredSecrets(config: FrozenConfig): string[] {
  const nats = [config.nats.password, config.nats.token].filter((x): x is string => x !== null);
  const upstream = config.upstream.key === null ? [] : [config.upstream.key];
  return [...namedApiKeys(config).map((k) => k.key), ...(config.adminKey === null ? [] : [config.adminKey]), ...nats, ...upstream];
}

export function buildServer(d: ServerDeps): FastifyInstance {
  const secrets = configuredSecrets(d.config);
  setProcessSecrets(secrets);
  const scrubber = new SecretScrubber(secrets);
  const app = Fastify({
    logger:
      d.config.logLevel === 'silent'
        ? false
        : {
            level: d.config.logLevel,
            stream: scrubber.stream(d.logStream ?? process.stdout),
            // fastify's own request serializer, but the URL without credentials (`?token=` is the documented WebSocket auth).
            serializers: {
              req: (req: FastifyRequest) => ({ method: req.method, url: redactUrl(req.url), host: req.host, remoteAddress: req.ip, remotePort: req.socket?.remotePort }),
            },
          },
    // Only the completion routes take large bodies (their own bodyLimit below); every other route gets this.
    bodyLimit: Math.min(d.config.limits.bodyLimitBytes, SMALL_BODY_LIMIT),
    // Streams are long-lived; request timeouts are the client's business.
    requestTimeout: 0,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // Oversized headers and malformed requests get coded bodies too (node answers them before fastify routes).
    clientErrorHandler,
  });

  installErrorHandlers(app);
  installJsonBodyParser(app);
  const guard: GuardOptions = {
    auth: d.auth,
    allowedOrigins: d.config.allowedOrigins,
    port: () => {
      const a = app.server.address();
      return typeof a === 'object' && a !== null ? a.port : undefined;
    },
  };
  installRequestGuard(app, guard);
  app.addHook('onResponse', async (req, reply) => {
    d.metrics.recordHttp(req.routeOptions.url, reply.statusCode, reply.elapsedTime / 1000);
  });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    if (!d.ready()) return sendHttpError(reply, lwError('LW_ERR_API_NOT_READY'));
    // A failing alert log (or an unreachable NATS) does not make the daemon unready (alerts wait in
    // memory or in the outbox), but it shows here, beside latentwatch_alert_log_failures_total.
    return {
      status: 'ready',
      ...d.inference.load,
      ...(d.warnings && d.warnings.length > 0 ? { warnings: d.warnings } : {}),
      [d.store.kind === 'sqlite' ? 'alert_log' : 'alert_stream']: d.store.health(),
    };
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', d.metrics.contentType);
    return d.metrics.text();
  });
  app.get('/v1/models', { config: { auth: true } }, async () => {
    return { object: 'list', data: [{ id: d.modelName, object: 'model', created: 0, owned_by: 'latentwatch', ...d.modelInfo }] };
  });

  const completion = (kind: ApiKind) => async (req: FastifyRequest, reply: FastifyReply) => {
    const principal = principalOf(req);
    if (!d.ready()) throw lwError('LW_ERR_API_SHUTTING_DOWN');
    if (d.proxy) return d.proxy.complete(kind, req, reply, principal);
    const job = toJob(kind, req.body as ChatBody | CompletionBody);
    const prepared = d.inference.prepare(job, principal);
    const ac = new AbortController();
    // A client that goes away cancels its generation (the engine frees its cache).
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) ac.abort();
    });
    const events = d.inference.run(prepared, ac.signal);
    if (!job.stream) {
      let text = '';
      for await (const ev of events) {
        if (ev.type === 'text') text += ev.text;
        else {
          const body = fullResponse(job, text, ev.finishReason, ev.usage, ev.verdict);
          return job.returnTokenIds ? attachPromptIds(job.kind, body, prepared.promptIds) : body;
        }
      }
      throw lwError('LW_ERR_API_INTERNAL', 'generation ended without a result');
    }
    // Admission errors (queue full, draining) must still be plain JSON errors: pull the first event
    // before committing to a stream.
    const first = await events.next();
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    // return_token_ids: the prompt's ids ride on the first chunk with a choice, as vLLM sends them.
    let promptIdsSent = !job.returnTokenIds;
    const send = (obj: Record<string, unknown>) => {
      if (!promptIdsSent && Array.isArray(obj.choices) && obj.choices.length > 0) {
        attachPromptIds(job.kind, obj, prepared.promptIds);
        promptIdsSent = true;
      }
      res.write(`data: ${JSON.stringify(obj)}\n\n`);
    };
    let started = false;
    try {
      for (let ev = first; !ev.done; ev = await events.next()) {
        const e = ev.value;
        if (e.type === 'text') {
          send(deltaChunk(job, e.text, null, !started));
          started = true;
        } else {
          if (!started && job.kind === 'chat') send(deltaChunk(job, '', null, true));
          send(deltaChunk(job, '', e.finishReason));
          if (job.includeUsage) send(usageChunk(job, e.usage));
          send(verdictChunk(job, e.verdict));
        }
      }
    } catch (err) {
      if (ac.signal.aborted) return;
      req.log.error({ err }, 'stream failed');
      send({ ...toHttpError(err).body });
    }
    res.end('data: [DONE]\n\n');
  };
  const bodyLimit = d.config.limits.bodyLimitBytes;
  app.post('/v1/chat/completions', { schema: { body: chatRequestSchema }, config: { auth: true }, bodyLimit }, completion('chat'));
  app.post('/v1/completions', { schema: { body: completionRequestSchema }, config: { auth: true }, bodyLimit }, completion('completion'));

  void app.register(alertRoutes, { hub: d.hub, store: d.store, auth: d.auth, checkHeaders: (h) => checkHeaders(h, guard, true) });
  return app;
}
