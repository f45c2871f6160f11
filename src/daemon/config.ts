/**
 * The daemon's configuration: one JSON schema, four layers, validated once, frozen.
 *
 * Layers, lowest precedence first (DESIGN.md; after fastify `lib/initial-config-validation.js`):
 *   1. DEFAULTS (below)
 *   2. a JSON config file (`--config FILE` or `LATENTWATCH_CONFIG`); relative paths inside it are
 *      resolved against the file's directory
 *   3. the environment (ENV_VARS below); relative paths against the working directory
 *   4. command-line flags (FLAGS below); relative paths against the working directory
 * Objects merge key by key; arrays and scalars replace (so `LATENTWATCH_API_KEY` replaces the
 * file's `apiKeys`, it does not add to it).
 *
 * This is the only module that reads `process.env`, and only in `processEnv()`: everything else
 * takes the environment as a parameter, so tests pass their own.
 *
 * Listening rule: with no API key configured, `host` defaults to 127.0.0.1 and any non-loopback
 * host is refused (LW_ERR_CONFIG_INVALID at /host): an unauthenticated daemon is local-only.
 * With API keys, `host` defaults to 0.0.0.0. `loadConfig` returns a notice saying which applied;
 * the daemon logs its notices at start-up.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { ErrorObject } from 'ajv';
import { Type, type Static } from 'typebox';
import { lwError } from '../errors.js';
import { parseCommandLine } from '../flags.js';
import { closedObject, nullable, schemaValidator } from '../schema.js';
import { RESERVED_TENANTS } from './auth.js';

export const SEVERITIES = ['info', 'warning', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];
/** Rank of a severity, for "at least this severity" filters. */
export function severityRank(s: Severity): number {
  return SEVERITIES.indexOf(s);
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * When a detection alert is raised (see src/daemon/monitor.ts for the full semantics):
 * - 'immediate': at the token where the rule fires; `verbalized`/`silent` describe the text so far.
 * - 'settled': held until the text verbalises (then silent=false) or the request ends (silent=true).
 */
export const ALERT_EMIT_MODES = ['immediate', 'settled'] as const;
export type AlertEmitMode = (typeof ALERT_EMIT_MODES)[number];

/**
 * onnxruntime execution providers the daemon can run on (`cuda` needs the CUDA libraries: README,
 * "GPU"; `webgpu` a Vulkan loader and driver: docs/gpu.md).
 */
export const PROVIDERS = ['cpu', 'cuda', 'webgpu'] as const;

const nonEmpty = Type.String({ minLength: 1 });
/** Bounds on a learning run's requests (enough to split into fit and calibration; memory-bounded). */
export const LEARN_MIN_REQUESTS = 10;
export const LEARN_MAX_REQUESTS = 10_000;
const PROBE_ID = '^[A-Za-z0-9_.:-]+$';
const API_KEY = Type.String({ pattern: '^\\S+$' });
/** A key's name (its tenant): short, and safe as a log field and a metric label value. */
const TENANT_NAME = '^[A-Za-z0-9_.-]{1,64}$';

const ALERT_RULE_SCHEMA = closedObject({
  /** Overrides the probe file's decision threshold (on the aggregated score). */
  threshold: Type.Optional(Type.Number()),
  /** Consecutive positions at or above the threshold before an alert is raised. */
  minConsecutive: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
  /** After an alert, no new alert for this probe in this request for this many positions... */
  cooldownTokens: Type.Integer({ minimum: 0 }),
  /** ...and for this many seconds (both must have passed). */
  cooldownSeconds: Type.Number({ minimum: 0 }),
  severity: Type.Enum(SEVERITIES),
});
export type AlertRuleConfig = Static<typeof ALERT_RULE_SCHEMA>;

/** The one schema; the TypeScript types below are derived from it. Every object is closed, so typos fail loudly. */
export const CONFIG_SCHEMA = closedObject(
  {
    $schema: Type.Optional(Type.String()),
    /** Checkpoint directory; null = the built-in default model. */
    modelDir: nullable(nonEmpty),
    /** Weight precision of the served graph (int4/int8: MatMulNBits; fp16: fp16 storage). */
    precision: Type.Enum(['fp32', 'fp16', 'int8', 'int4']),
    /** onnxruntime execution provider. */
    provider: Type.Enum(PROVIDERS),
    /**
     * What the graph computes in between the weights: fp16 on provider webgpu only (docs/gpu.md);
     * 'auto': the engine's default (fp16 on webgpu for int4/int8/fp16 weights, else fp32).
     */
    activations: Type.Enum(['auto', 'fp32', 'fp16']),
    /** onnxruntime intra-op threads; 0 = one per core. */
    threads: Type.Integer({ minimum: 0, maximum: 1024 }),
    /**
     * Whether idle onnxruntime threads spin-wait between passes (onnxruntime's own default is on).
     * Off by default here: the daemon's event loop (scoring, streaming, alerts) needs the cores between
     * passes. Measured on 2 cores (bench/daemon.ts): 4 streams 1.9–2.0× one stream instead of 1.2–1.7×,
     * alert p99 with 100 subscribers 8.6 ms instead of 12–14 ms, at up to ~10% single-stream speed.
     */
    spinning: Type.Boolean(),
    /**
     * Whether forward passes on the cpu provider run on a thread of their own (default on): the event
     * loop then streams, fans alerts out and answers health checks while a pass runs (engine/session-worker.ts).
     */
    engineThread: Type.Boolean(),
    /** Name answered in /v1/models and matched against `model` in requests; null = derived from the model. */
    servedModelName: nullable(Type.String({ minLength: 1, maxLength: 256 })),
    /** `*.probe.json` files to load. */
    probes: Type.Array(nonEmpty),
    host: Type.String({ minLength: 1, maxLength: 255, pattern: '^[^\\s/]+$' }),
    port: Type.Integer({ minimum: 0, maximum: 65535 }),
    /**
     * Inference keys (`Authorization: Bearer <key>`); empty = open, and local-only (see above). Each
     * is a key (named by position: key-1, key-2, …) or `{name, key}`; the name is the key's tenant
     * in alerts, logs and metrics (the key itself never is). Unique names and keys (checked below).
     */
    apiKeys: Type.Array(Type.Union([API_KEY, closedObject({ name: Type.String({ pattern: TENANT_NAME }), key: API_KEY })])),
    /** Admin key for injection and admin routes; null = no admin access. */
    adminKey: nullable(Type.String({ pattern: '^\\S+$' })),
    /**
     * Browser origins (`https://app.example.com`; `*` = any) allowed to call the API and open the
     * /v1/alerts WebSocket. A request with any other Origin header gets a 403 (a page on another
     * site must not drive the daemon through a user's browser). Empty by default.
     */
    allowedOrigins: Type.Array(Type.String({ minLength: 1, maxLength: 2048 })),
    /** Honour admin injection requests (`LATENTWATCH_ALLOW_INJECTION=1`). */
    allowInjection: Type.Boolean(),
    logLevel: Type.Enum(LOG_LEVELS),
    limits: closedObject({
      bodyLimitBytes: Type.Integer({ minimum: 1024, maximum: 1_073_741_824 }),
      maxTokens: Type.Integer({ minimum: 1, maximum: 1_048_576 }),
      maxConcurrent: Type.Integer({ minimum: 1, maximum: 1024 }),
      maxQueue: Type.Integer({ minimum: 0, maximum: 1_000_000 }),
    }),
    alerts: closedObject({
      /** Applies to every probe; `rules[probeId]` overrides it key by key. */
      defaultRule: ALERT_RULE_SCHEMA,
      rules: Type.Record(Type.String(), Type.Partial(ALERT_RULE_SCHEMA, { additionalProperties: false }), { propertyNames: { pattern: PROBE_ID } }),
      emit: Type.Enum(ALERT_EMIT_MODES),
      /** Characters of generated text carried in an alert's `textExcerpt`; 0 = none. */
      excerptChars: Type.Integer({ minimum: 0, maximum: 4096 }),
    }),
    verbalization: closedObject({
      /** Case-insensitive phrases whose presence in the generated text counts as verbalising. */
      phrases: Type.Array(Type.String({ minLength: 1, maxLength: 200 })),
      /** Also count the injected/canary concept word (whole word, case-insensitive) when known. */
      matchConceptWord: Type.Boolean(),
    }),
    alertLog: closedObject({
      /** SQLite file (':memory:' for tests). */
      path: nonEmpty,
      /** Rows older than this are deleted; 0 = keep forever. */
      retentionDays: Type.Number({ minimum: 0 }),
      /** At most this many rows are kept (oldest deleted first); 0 = no limit. */
      retentionRows: Type.Integer({ minimum: 0 }),
      /** Alerts kept in memory while the disk fails (see alert-log.ts). */
      pendingLimit: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
      /** How often retention runs and pending alerts are retried. */
      maintenanceIntervalSeconds: Type.Number({ exclusiveMinimum: 0, maximum: 86_400 }),
      /** 'full': an alert survives power loss (an fsync per token with alerts); 'normal': it survives a process crash (alert-log.ts). */
      synchronous: Type.Union([Type.Literal('full'), Type.Literal('normal')]),
      /** true: a worker thread writes the log and commits the alerts of many tokens in one fsync, off the event loop (group-commit-store.ts); false: each token's alerts are committed on the event loop. */
      groupCommit: Type.Boolean(),
      /**
       * With groupCommit: after a token raised alerts, the event loop's next turn waits up to this
       * many ms for their commit and fans them out before any later task (a forward pass); 0: never
       * wait, the answer comes as a message (group-commit-store.ts waitForCommitMs).
       */
      waitForCommitMs: Type.Integer({ minimum: 0, maximum: 1000 }),
    }),
    /**
     * Several replicas, one alert stream (docs/daemon.md, "Several replicas"): with servers, alerts go
     * to one NATS JetStream stream shared by every replica (nats-alert-store.ts) instead of the
     * SQLite log; ids are the stream's sequence numbers. Empty servers: the SQLite log (default).
     */
    nats: closedObject({
      /** nats://HOST:PORT (tls://… for TLS); several for a cluster. */
      servers: Type.Array(Type.String({ pattern: '^(nats|tls)://[^\\s,]+$', maxLength: 2048 })),
      /** JetStream stream the alerts go to (created on first start if missing). */
      stream: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }),
      /** Subject the alerts are published on (the stream's only subject; no wildcards). */
      subject: Type.String({ pattern: '^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$', maxLength: 256 }),
      /** Stream replicas when the daemon creates it: 3 on a 3-node JetStream cluster, 1 on one server. */
      replicas: Type.Integer({ minimum: 1, maximum: 5 }),
      /** This daemon's name in the alerts it raises (`replica`); null = the host name (a pod's name in Kubernetes). */
      replica: nullable(Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,128}$' })),
      /** Credentials (from the environment or the config file; never logged): user + password, a token, or a .creds file. */
      user: nullable(nonEmpty),
      password: nullable(nonEmpty),
      token: nullable(nonEmpty),
      credsFile: nullable(nonEmpty),
      /** Local SQLite outbox for alerts NATS has not acknowledged; null = stateDir/alert-outbox.db. */
      outboxPath: nullable(nonEmpty),
      /** How long a publish waits for JetStream's acknowledgement before the alert goes to the outbox. */
      publishTimeoutMs: Type.Integer({ minimum: 50, maximum: 60_000 }),
      /** The stream's duplicate window (Nats-Msg-Id dedup) when the daemon creates it. */
      duplicateWindowSeconds: Type.Integer({ minimum: 1, maximum: 86_400 }),
    }),
    websocket: closedObject({
      /** A subscriber whose unsent bytes exceed this is closed with 4008 'slow consumer'. */
      bufferLimitBytes: Type.Integer({ minimum: 1024 }),
      /** ...or whose messages not yet handed to the kernel exceed this. */
      maxQueuedMessages: Type.Integer({ minimum: 1 }),
      heartbeatIntervalSeconds: Type.Number({ exclusiveMinimum: 0, maximum: 3600 }),
      /** A subscriber that answers no ping this long stopped reading: closed with 4008 (pings go out every half of it). */
      pongTimeoutSeconds: Type.Number({ exclusiveMinimum: 0, maximum: 600 }),
      /** Rows read from the log per replay step when a subscriber resumes. */
      replayPageSize: Type.Integer({ minimum: 1, maximum: 100_000 }),
    }),
    canary: closedObject({
      enabled: Type.Boolean(),
      intervalSeconds: Type.Number({ minimum: 1 }),
      /** Concept injected by the canary; null = the first concept stored for the model. */
      concept: nullable(nonEmpty),
    }),
    shutdown: closedObject({
      /** SIGTERM: streams still running after this are cancelled. */
      deadlineSeconds: Type.Number({ minimum: 0, maximum: 3600 }),
    }),
    /**
     * Proxy mode (docs/daemon.md, "Proxy mode"): with a url, requests are forwarded to this
     * OpenAI-compatible server (vLLM, SGLang, another latentwatch…) and the local replica only scores
     * the prompt and the upstream's tokens, teacher-forced (src/daemon/proxy.ts).
     */
    upstream: closedObject({
      /** http(s)://HOST:PORT/v1; null = serve locally (default). */
      url: nullable(Type.String({ pattern: '^https?://\\S+$', maxLength: 2048 })),
      /** Name of the environment variable holding the upstream's API key (the key itself is never logged). */
      keyEnv: nullable(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 256 })),
      /** The upstream's API key (set from keyEnv at load; or LATENTWATCH_UPSTREAM_KEY). */
      key: nullable(Type.String({ pattern: '^\\S+$' })),
      /** The model id the upstream serves the same checkpoint under; null = the served model name. */
      model: nullable(Type.String({ minLength: 1, maxLength: 256 })),
      /** Bound on waiting for the upstream's headers, and for each stream chunk. */
      timeoutSeconds: Type.Number({ exclusiveMinimum: 0, maximum: 3600 }),
      /** Retries of a request the upstream refused to connect or answered 502/503 to (before any byte was sent on). */
      retries: Type.Integer({ minimum: 0, maximum: 5 }),
      /** Ask the upstream for its token ids (vLLM and latentwatch: `return_token_ids`); false: re-tokenise its text. */
      tokenIds: Type.Boolean(),
      /**
       * Streams: pass each chunk on as it arrives (no added latency; its alerts may trail its text)
       * instead of once its tokens are scored and their alerts stored (default, as local serving).
       */
      passThrough: Type.Boolean(),
      /** Score a stream's few newly arrived tokens as one-token steps shared with other streams' passes (proxy.ts scoringPlan); false: one pass of their own. */
      batchSteps: Type.Boolean(),
    }),
    /** Where the daemon keeps what it learns: learned probes and learning statistics (docs/daemon.md). */
    stateDir: nonEmpty,
    /** Learning a detector from live clean traffic (docs/daemon.md, "Learning from your traffic"). */
    learn: closedObject({
      /** Learn from the next N clean requests at start-up, unless a learned probe exists; 0 = off. */
      requests: Type.Union([Type.Literal(0), Type.Integer({ minimum: LEARN_MIN_REQUESTS, maximum: LEARN_MAX_REQUESTS })]),
      /** The loaded probe to relearn (an ensemble of full-covariance Gaussian members). */
      probe: Type.String({ pattern: PROBE_ID }),
      /**
       * False alerts per clean request the threshold is set at. 0.005 by default: a threshold set on
       * a calibration share of a few hundred requests holds its rate only on average (qwen3-code-7m
       * learned at 0.01 gave 1.21% on other traffic), so half the rate a pager can accept (1%).
       */
      targetFpr: Type.Number({ exclusiveMinimum: 0, maximum: 0.5 }),
    }),
  },
  { $id: 'https://latentwatch.dev/schemas/daemon-config.json' },
);

/** The validated configuration (`$schema` is allowed in a config file, and means nothing). */
export type DaemonConfig = Omit<Static<typeof CONFIG_SCHEMA>, '$schema'>;

/** Deeply readonly view of the validated configuration. */
export type DeepReadonly<T> = T extends (infer U)[]
  ? readonly DeepReadonly<U>[]
  : T extends object
    ? { readonly [K in keyof T]: DeepReadonly<T[K]> }
    : T;
export type FrozenConfig = DeepReadonly<DaemonConfig>;

export const DEFAULT_VERBALIZATION_PHRASES: readonly string[] = [
  'injected thought',
  'injected concept',
  'injected idea',
  'intrusive thought',
  'foreign thought',
  'unusual thought',
  'detect a thought',
  'detect an injected',
  'i detect',
  'something unusual',
];

/** Layer 1. `host` is absent on purpose: it is derived from whether API keys are configured. */
export const DEFAULTS: DeepReadonly<Omit<DaemonConfig, 'host'>> = deepFreeze({
  modelDir: null,
  precision: 'fp32',
  provider: 'cpu',
  activations: 'auto',
  threads: 0,
  spinning: false,
  engineThread: true,
  servedModelName: null,
  probes: [],
  port: 8000,
  apiKeys: [],
  adminKey: null,
  allowedOrigins: [],
  allowInjection: false,
  logLevel: 'info',
  limits: { bodyLimitBytes: 1_048_576, maxTokens: 4096, maxConcurrent: 4, maxQueue: 64 },
  alerts: {
    defaultRule: { minConsecutive: 1, cooldownTokens: 32, cooldownSeconds: 0, severity: 'warning' },
    rules: {},
    emit: 'immediate',
    excerptChars: 200,
  },
  verbalization: { phrases: [...DEFAULT_VERBALIZATION_PHRASES], matchConceptWord: true },
  alertLog: {
    path: '.latentwatch/alerts.db',
    retentionDays: 30,
    retentionRows: 1_000_000,
    pendingLimit: 10_000,
    maintenanceIntervalSeconds: 60,
    synchronous: 'full',
    groupCommit: true,
    waitForCommitMs: 50,
  },
  nats: {
    servers: [],
    stream: 'LATENTWATCH_ALERTS',
    subject: 'latentwatch.alerts',
    replicas: 1,
    replica: null,
    user: null,
    password: null,
    token: null,
    credsFile: null,
    outboxPath: null,
    publishTimeoutMs: 2000,
    duplicateWindowSeconds: 600,
  },
  websocket: { bufferLimitBytes: 1_048_576, maxQueuedMessages: 4096, heartbeatIntervalSeconds: 30, pongTimeoutSeconds: 10, replayPageSize: 500 },
  canary: { enabled: false, intervalSeconds: 300, concept: null },
  shutdown: { deadlineSeconds: 10 },
  upstream: { url: null, keyEnv: null, key: null, model: null, timeoutSeconds: 60, retries: 2, tokenIds: true, passThrough: false, batchSteps: true },
  stateDir: '.latentwatch',
  learn: { requests: 0, probe: 'generic-injection', targetFpr: 0.005 },
} satisfies Omit<DaemonConfig, 'host'>);

type ValueKind = 'string' | 'int' | 'number' | 'bool' | 'list' | 'namedList' | 'path' | 'paths';

/** Layer 3: environment variables → JSON pointer. */
export const ENV_VARS: Readonly<Record<string, { pointer: string; kind: ValueKind }>> = Object.freeze({
  LATENTWATCH_MODEL: { pointer: '/modelDir', kind: 'path' },
  LATENTWATCH_PRECISION: { pointer: '/precision', kind: 'string' },
  LATENTWATCH_PROVIDER: { pointer: '/provider', kind: 'string' },
  LATENTWATCH_ACTIVATIONS: { pointer: '/activations', kind: 'string' },
  LATENTWATCH_THREADS: { pointer: '/threads', kind: 'int' },
  LATENTWATCH_SPINNING: { pointer: '/spinning', kind: 'bool' },
  LATENTWATCH_ENGINE_THREAD: { pointer: '/engineThread', kind: 'bool' },
  LATENTWATCH_SERVED_MODEL_NAME: { pointer: '/servedModelName', kind: 'string' },
  LATENTWATCH_PROBES: { pointer: '/probes', kind: 'paths' },
  LATENTWATCH_HOST: { pointer: '/host', kind: 'string' },
  LATENTWATCH_PORT: { pointer: '/port', kind: 'int' },
  LATENTWATCH_API_KEY: { pointer: '/apiKeys', kind: 'list' },
  /** `name:key,name:key`: named keys (the name is the tenant). */
  LATENTWATCH_API_KEYS: { pointer: '/apiKeys', kind: 'namedList' },
  LATENTWATCH_ADMIN_KEY: { pointer: '/adminKey', kind: 'string' },
  LATENTWATCH_ALLOW_INJECTION: { pointer: '/allowInjection', kind: 'bool' },
  LATENTWATCH_ALLOWED_ORIGINS: { pointer: '/allowedOrigins', kind: 'list' },
  LATENTWATCH_LOG_LEVEL: { pointer: '/logLevel', kind: 'string' },
  LATENTWATCH_BODY_LIMIT: { pointer: '/limits/bodyLimitBytes', kind: 'int' },
  LATENTWATCH_MAX_TOKENS: { pointer: '/limits/maxTokens', kind: 'int' },
  LATENTWATCH_MAX_CONCURRENT: { pointer: '/limits/maxConcurrent', kind: 'int' },
  LATENTWATCH_MAX_QUEUE: { pointer: '/limits/maxQueue', kind: 'int' },
  LATENTWATCH_ALERT_LOG: { pointer: '/alertLog/path', kind: 'path' },
  LATENTWATCH_ALERT_LOG_SYNC: { pointer: '/alertLog/synchronous', kind: 'string' },
  LATENTWATCH_ALERT_LOG_GROUP_COMMIT: { pointer: '/alertLog/groupCommit', kind: 'bool' },
  LATENTWATCH_ALERT_LOG_WAIT_FOR_COMMIT_MS: { pointer: '/alertLog/waitForCommitMs', kind: 'int' },
  LATENTWATCH_CANARY: { pointer: '/canary/enabled', kind: 'bool' },
  LATENTWATCH_CANARY_INTERVAL: { pointer: '/canary/intervalSeconds', kind: 'number' },
  LATENTWATCH_SHUTDOWN_DEADLINE: { pointer: '/shutdown/deadlineSeconds', kind: 'number' },
  LATENTWATCH_STATE_DIR: { pointer: '/stateDir', kind: 'path' },
  LATENTWATCH_LEARN: { pointer: '/learn/requests', kind: 'int' },
  LATENTWATCH_LEARN_TARGET_FPR: { pointer: '/learn/targetFpr', kind: 'number' },
  LATENTWATCH_NATS_URL: { pointer: '/nats/servers', kind: 'list' },
  LATENTWATCH_NATS_STREAM: { pointer: '/nats/stream', kind: 'string' },
  LATENTWATCH_NATS_REPLICAS: { pointer: '/nats/replicas', kind: 'int' },
  LATENTWATCH_NATS_USER: { pointer: '/nats/user', kind: 'string' },
  LATENTWATCH_NATS_PASSWORD: { pointer: '/nats/password', kind: 'string' },
  LATENTWATCH_NATS_TOKEN: { pointer: '/nats/token', kind: 'string' },
  LATENTWATCH_NATS_CREDS: { pointer: '/nats/credsFile', kind: 'path' },
  LATENTWATCH_REPLICA_NAME: { pointer: '/nats/replica', kind: 'string' },
  LATENTWATCH_UPSTREAM_URL: { pointer: '/upstream/url', kind: 'string' },
  LATENTWATCH_UPSTREAM_KEY_ENV: { pointer: '/upstream/keyEnv', kind: 'string' },
  LATENTWATCH_UPSTREAM_KEY: { pointer: '/upstream/key', kind: 'string' },
  LATENTWATCH_UPSTREAM_MODEL: { pointer: '/upstream/model', kind: 'string' },
  LATENTWATCH_UPSTREAM_TIMEOUT: { pointer: '/upstream/timeoutSeconds', kind: 'number' },
  LATENTWATCH_UPSTREAM_TOKEN_IDS: { pointer: '/upstream/tokenIds', kind: 'bool' },
  LATENTWATCH_UPSTREAM_PASS_THROUGH: { pointer: '/upstream/passThrough', kind: 'bool' },
  LATENTWATCH_UPSTREAM_BATCH_STEPS: { pointer: '/upstream/batchSteps', kind: 'bool' },
});
/** Names the config file; not a config value itself. */
export const CONFIG_FILE_ENV = 'LATENTWATCH_CONFIG';

/**
 * Layer 4: `latentwatch serve` flags → JSON pointer. `--flag value` or `--flag=value`; booleans
 * take no value (`--allow-injection`, `--no-allow-injection`); `--probe` repeats. Keys are not
 * accepted as flags (they would show in `ps`): use the environment or the config file.
 */
export const FLAGS: Readonly<Record<string, { pointer: string; kind: ValueKind; repeat?: boolean; help: string }>> =
  Object.freeze({
    model: { pointer: '/modelDir', kind: 'path', help: 'checkpoint directory (default: the built-in model)' },
    precision: { pointer: '/precision', kind: 'string', help: 'fp32|fp16|int8|int4 weights' },
    provider: { pointer: '/provider', kind: 'string', help: `${PROVIDERS.join('|')} onnxruntime execution provider (default cpu)` },
    activations: { pointer: '/activations', kind: 'string', help: 'auto|fp32|fp16: fp16 activations on provider webgpu (a device with shader-f16); auto: fp16 there for int4/int8/fp16 weights, else fp32' },
    threads: { pointer: '/threads', kind: 'int', help: 'onnxruntime intra-op threads (0: one per core)' },
    spinning: { pointer: '/spinning', kind: 'bool', help: 'idle onnxruntime threads spin-wait between passes (default off)' },
    'engine-thread': { pointer: '/engineThread', kind: 'bool', help: 'cpu forward passes run on a thread of their own, off the event loop (default on)' },
    'served-model-name': { pointer: '/servedModelName', kind: 'string', help: 'model name answered by the API' },
    probe: { pointer: '/probes', kind: 'path', repeat: true, help: '*.probe.json file (repeatable)' },
    host: { pointer: '/host', kind: 'string', help: 'listen address (127.0.0.1 unless an API key is set)' },
    port: { pointer: '/port', kind: 'int', help: 'listen port' },
    'allow-injection': { pointer: '/allowInjection', kind: 'bool', help: 'honour admin injection requests' },
    'allowed-origin': { pointer: '/allowedOrigins', kind: 'string', repeat: true, help: 'browser Origin allowed to use the API and /v1/alerts (repeatable; * = any)' },
    'log-level': { pointer: '/logLevel', kind: 'string', help: LOG_LEVELS.join('|') },
    'body-limit': { pointer: '/limits/bodyLimitBytes', kind: 'int', help: 'request body limit in bytes' },
    'max-tokens': { pointer: '/limits/maxTokens', kind: 'int', help: 'largest max_tokens accepted' },
    'max-concurrent': { pointer: '/limits/maxConcurrent', kind: 'int', help: 'generations running at once' },
    'max-queue': { pointer: '/limits/maxQueue', kind: 'int', help: 'requests waiting for a slot before 429' },
    'alert-log': { pointer: '/alertLog/path', kind: 'path', help: 'SQLite alert log file' },
    canary: { pointer: '/canary/enabled', kind: 'bool', help: 'run the periodic injection canary' },
    'canary-interval': { pointer: '/canary/intervalSeconds', kind: 'number', help: 'seconds between canary runs' },
    'shutdown-deadline': { pointer: '/shutdown/deadlineSeconds', kind: 'number', help: 'seconds to finish streams on SIGTERM' },
    'state-dir': { pointer: '/stateDir', kind: 'path', help: 'directory for learned probes and learning statistics' },
    nats: { pointer: '/nats/servers', kind: 'list', help: 'nats://HOST:PORT[,…]: publish alerts to one JetStream stream shared by every replica (credentials: LATENTWATCH_NATS_USER/PASSWORD/TOKEN/CREDS)' },
    'nats-stream': { pointer: '/nats/stream', kind: 'string', help: 'JetStream stream name (default LATENTWATCH_ALERTS)' },
    replica: { pointer: '/nats/replica', kind: 'string', help: "this replica's name in its alerts (default: the host name)" },
    upstream: { pointer: '/upstream/url', kind: 'string', help: 'http://HOST:PORT/v1: proxy mode, forward requests to this OpenAI-compatible server and score its answers' },
    'upstream-key-env': { pointer: '/upstream/keyEnv', kind: 'string', help: "name of the environment variable holding the upstream's API key" },
    'upstream-model': { pointer: '/upstream/model', kind: 'string', help: 'model id of the same checkpoint on the upstream (default: the served model name)' },
    'upstream-timeout': { pointer: '/upstream/timeoutSeconds', kind: 'number', help: 'seconds to wait for the upstream\'s headers and for each stream chunk (default 60)' },
    'upstream-token-ids': { pointer: '/upstream/tokenIds', kind: 'bool', help: "ask the upstream for its token ids (return_token_ids; default on); --no-upstream-token-ids re-tokenises its text" },
    'upstream-pass-through': { pointer: '/upstream/passThrough', kind: 'bool', help: 'stream chunks on as they arrive, not once scored (no added latency; alerts may trail the text)' },
    'upstream-batch-steps': { pointer: '/upstream/batchSteps', kind: 'bool', help: "score a stream's few new tokens in passes shared with other streams (default on); --no-upstream-batch-steps: a pass of their own" },
    learn: { pointer: '/learn/requests', kind: 'int', help: `learn the generic detector from the next N clean requests (${LEARN_MIN_REQUESTS}..${LEARN_MAX_REQUESTS}; skipped when a learned probe exists)` },
    'learn-target-fpr': { pointer: '/learn/targetFpr', kind: 'number', help: 'false alerts per clean request the learned threshold is set at (default 0.005)' },
  });

export interface LoadConfigOptions {
  /** Environment to read (default: none; the daemon passes `processEnv()`). */
  env?: Readonly<Record<string, string | undefined>>;
  /** `latentwatch serve` arguments after the subcommand, e.g. ['--port', '8080', '--probe', 'a.probe.json']. */
  argv?: readonly string[];
  /** Config file path; overrides `--config` and `LATENTWATCH_CONFIG`. */
  configFile?: string;
  /** Base for relative paths from the environment and flags (default: process.cwd()). */
  cwd?: string;
}

export interface LoadedConfig {
  config: FrozenConfig;
  /** Lines the daemon should log at start-up (e.g. the local-only notice). */
  notices: readonly string[];
  /** Which layer set each value, by JSON pointer: 'default', 'file <path>', 'env <NAME>', 'flag --<name>'. */
  sources: ReadonlyMap<string, string>;
}

/** The only read of process.env in the project. */
export function processEnv(): Record<string, string | undefined> {
  return { ...process.env };
}

export const LOOPBACK_HOSTS: readonly string[] = ['127.0.0.1', 'localhost', '::1', '[::1]'];
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.includes(host.toLowerCase()) || /^127(\.\d{1,3}){3}$/.test(host);
}

const validate = schemaValidator(CONFIG_SCHEMA);

/** Merge the layers, validate once, freeze. Throws LW_ERR_CONFIG_* errors. */
export function loadConfig(options: LoadConfigOptions = {}): LoadedConfig {
  const env = options.env ?? {};
  const cwd = options.cwd ?? process.cwd();
  const sources = new Map<string, string>();

  const flags = parseFlags(options.argv ?? [], cwd);
  const merged = structuredClone(DEFAULTS) as Record<string, unknown>;
  (merged.alertLog as { path: string }).path = resolve(cwd, DEFAULTS.alertLog.path);
  merged.stateDir = resolve(cwd, DEFAULTS.stateDir);
  recordSources(merged, '', 'default', sources);

  const file = options.configFile ?? flags.configFile ?? nonBlank(env[CONFIG_FILE_ENV]);
  if (file !== undefined) {
    const path = resolve(cwd, file);
    const layer = readConfigFile(path);
    resolveFilePaths(layer, dirname(path));
    mergeInto(merged, layer, `file ${path}`, '', sources);
  }

  if (nonBlank(env.LATENTWATCH_API_KEY) !== undefined && nonBlank(env.LATENTWATCH_API_KEYS) !== undefined) {
    throw lwError('LW_ERR_CONFIG_INVALID', '/apiKeys: set LATENTWATCH_API_KEY or LATENTWATCH_API_KEYS, not both', { path: '/apiKeys', source: 'env LATENTWATCH_API_KEYS' });
  }
  const envLayer: Record<string, unknown> = {};
  const envOrigins = new Map<string, string>();
  for (const [name, spec] of Object.entries(ENV_VARS)) {
    const raw = nonBlank(env[name]);
    if (raw === undefined) continue;
    setPointer(envLayer, spec.pointer, coerce(raw, spec.kind, cwd));
    envOrigins.set(spec.pointer, `env ${name}`);
  }
  mergeLayer(merged, envLayer, envOrigins, sources);
  mergeLayer(merged, flags.layer, flags.origins, sources);

  const apiKeys = merged.apiKeys;
  const hasKeys = Array.isArray(apiKeys) && apiKeys.length > 0;
  const notices: string[] = [];
  if (merged.host === undefined) {
    merged.host = hasKeys ? '0.0.0.0' : '127.0.0.1';
    sources.set('/host', 'default');
  }

  const errors = validate(merged);
  if (errors.length > 0) throw configError(errors, sources);

  const config = merged as unknown as DaemonConfig;
  if (!hasKeys && !isLoopbackHost(config.host)) {
    throw lwError('LW_ERR_CONFIG_INVALID', `/host: listening on ${config.host} requires an API key (set LATENTWATCH_API_KEY or apiKeys); without one the daemon is local-only`, {
      path: '/host',
      source: sources.get('/host'),
    });
  }
  checkApiKeys(config, sources);
  resolveUpstreamKey(config, env, sources);
  if (config.adminKey !== null && namedApiKeys(config).some((k) => k.key === config.adminKey)) {
    throw lwError('LW_ERR_CONFIG_INVALID', '/adminKey: the admin key must differ from every API key', {
      path: '/adminKey',
      source: sources.get('/adminKey'),
    });
  }

  if (!hasKeys) notices.push(`no API key configured: listening on ${config.host} only (set LATENTWATCH_API_KEY to require keys and listen elsewhere)`);
  if (config.allowInjection && config.adminKey === null) {
    notices.push('injection is enabled but no admin key is configured: every injection request will be refused (set LATENTWATCH_ADMIN_KEY)');
  }
  if (config.alertLog.path === ':memory:') notices.push('alert log is in memory (:memory:): alerts do not survive a restart');

  return { config: deepFreeze(config) as FrozenConfig, notices: Object.freeze(notices), sources };
}

/** `upstream.keyEnv` names the variable holding the upstream's key: read it here (the one reader of the environment). */
function resolveUpstreamKey(config: DaemonConfig, env: Readonly<Record<string, string | undefined>>, sources: Map<string, string>): void {
  const name = config.upstream.keyEnv;
  if (name === null) return;
  const key = nonBlank(env[name])?.trim();
  if (key === undefined || /\s/.test(key)) {
    throw lwError('LW_ERR_CONFIG_INVALID', `/upstream/keyEnv: the environment variable ${name} is ${key === undefined ? 'not set' : 'not a key (it holds whitespace)'}`, { path: '/upstream/keyEnv', source: sources.get('/upstream/keyEnv') });
  }
  config.upstream.key = key;
}

/** Every API key with its name: `{name, key}` as configured, a bare key named by its position (key-1, key-2, …). */
export function namedApiKeys(config: Pick<FrozenConfig, 'apiKeys'>): { name: string; key: string }[] {
  return config.apiKeys.map((k, i) => (typeof k === 'string' ? { name: `key-${i + 1}`, key: k } : { name: k.name, key: k.key }));
}

/** Names and keys are unique, and no name is one the daemon gives its own tenants. */
function checkApiKeys(config: DaemonConfig, sources: Map<string, string>): void {
  const names = new Set<string>();
  const keys = new Set<string>();
  namedApiKeys(config).forEach(({ name, key }, i) => {
    const fail = (why: string) => {
      throw lwError('LW_ERR_CONFIG_INVALID', `/apiKeys/${i}: ${why}`, { path: `/apiKeys/${i}`, source: sources.get('/apiKeys') });
    };
    if (RESERVED_TENANTS.includes(name)) fail(`the name ${name} is reserved (${RESERVED_TENANTS.join(', ')})`);
    if (names.has(name)) fail(`the name ${name} is given twice`);
    if (keys.has(key)) fail('the same key is given twice'); // never the key itself: it would be logged
    names.add(name);
    keys.add(key);
  });
}

/** The alert rule for one probe: defaultRule, then rules[probeId], then the probe file's threshold if neither set one. */
export function ruleForProbe(config: FrozenConfig, probeId: string, probeThreshold: number): Required<AlertRuleConfig> {
  const rule = { ...config.alerts.defaultRule, ...(config.alerts.rules[probeId] ?? {}) };
  return { ...rule, threshold: rule.threshold ?? probeThreshold };
}

/** What FLAGS asks of the shared parser: `--config`, a string per valued flag, `--X`/`--no-X` per boolean. */
const FLAG_OPTIONS: Record<string, { type: 'string' | 'boolean' }> = { config: { type: 'string' } };
for (const [name, spec] of Object.entries(FLAGS)) {
  if (spec.kind === 'bool') FLAG_OPTIONS[name] = FLAG_OPTIONS[`no-${name}`] = { type: 'boolean' };
  else FLAG_OPTIONS[name] = { type: 'string' };
}

/**
 * Parse `latentwatch serve` flags into a config layer (paths resolved against `cwd`), through the
 * shared parser (src/flags.ts). Flags apply in command-line order, so the last of `--X`/`--no-X` wins.
 * Throws LW_ERR_CONFIG_FLAG_UNKNOWN.
 */
export function parseFlags(argv: readonly string[], cwd: string = process.cwd()): {
  layer: Record<string, unknown>;
  origins: Map<string, string>;
  configFile?: string;
} {
  const layer: Record<string, unknown> = {};
  const origins = new Map<string, string>();
  let configFile: string | undefined;
  const repeated = new Map<string, string[]>();
  for (const token of parseCommandLine(argv, FLAG_OPTIONS, 'LW_ERR_CONFIG_FLAG_UNKNOWN').tokens) {
    if (token.name === 'config') {
      configFile = resolve(cwd, token.value as string);
      continue;
    }
    const negated = !(token.name in FLAGS);
    const name = negated ? token.name.slice('no-'.length) : token.name;
    const spec = FLAGS[name];
    let value: unknown = spec.kind === 'bool' ? !negated : coerce(token.value as string, spec.kind, cwd);
    if (spec.repeat) {
      const list = repeated.get(spec.pointer) ?? [];
      list.push(String(value));
      repeated.set(spec.pointer, list);
      value = list;
    }
    setPointer(layer, spec.pointer, value);
    origins.set(spec.pointer, `flag --${name}`);
  }
  return configFile === undefined ? { layer, origins } : { layer, origins, configFile };
}

function mergeLayer(target: Record<string, unknown>, layer: Record<string, unknown>, origins: Map<string, string>, sources: Map<string, string>): void {
  // Each value of an env/flag layer has its own origin; merge pointer by pointer.
  for (const [pointer, origin] of origins) {
    const value = getPointer(layer, pointer);
    setPointer(target, pointer, value);
    clearSources(sources, pointer);
    recordSources(value, pointer, origin, sources);
  }
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw lwError('LW_ERR_CONFIG_FILE_UNREADABLE', `${path}: ${(e as Error).message}`, { file: path }, e);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw lwError('LW_ERR_CONFIG_FILE_UNREADABLE', `${path}: ${(e as Error).message}`, { file: path }, e);
  }
  if (!isPlainObject(parsed)) throw lwError('LW_ERR_CONFIG_FILE_UNREADABLE', `${path}: the top level must be a JSON object`, { file: path });
  return parsed;
}

/** Paths in a config file are relative to the file. Non-strings are left for the schema to reject. */
function resolveFilePaths(layer: Record<string, unknown>, base: string): void {
  const abs = (p: unknown): unknown => (typeof p === 'string' && p !== ':memory:' && p.length > 0 && !isAbsolute(p) ? resolve(base, p) : p);
  if ('modelDir' in layer) layer.modelDir = abs(layer.modelDir);
  if (Array.isArray(layer.probes)) layer.probes = layer.probes.map(abs);
  if (isPlainObject(layer.alertLog) && 'path' in layer.alertLog) layer.alertLog.path = abs(layer.alertLog.path);
  if ('stateDir' in layer) layer.stateDir = abs(layer.stateDir);
  if (isPlainObject(layer.nats)) for (const k of ['credsFile', 'outboxPath']) if (k in layer.nats) layer.nats[k] = abs(layer.nats[k]);
}

function mergeInto(target: Record<string, unknown>, layer: Record<string, unknown>, origin: string, pointer: string, sources: Map<string, string>): void {
  for (const [key, value] of Object.entries(layer)) {
    const p = `${pointer}/${escapePointer(key)}`;
    if (isPlainObject(value) && isPlainObject(target[key])) {
      sources.set(p, origin);
      mergeInto(target[key] as Record<string, unknown>, value, origin, p, sources);
    } else {
      target[key] = structuredClone(value);
      clearSources(sources, p);
      recordSources(value, p, origin, sources);
    }
  }
}

function recordSources(value: unknown, pointer: string, origin: string, sources: Map<string, string>): void {
  if (pointer !== '') sources.set(pointer, origin);
  if (isPlainObject(value)) for (const [k, v] of Object.entries(value)) recordSources(v, `${pointer}/${escapePointer(k)}`, origin, sources);
}

function clearSources(sources: Map<string, string>, pointer: string): void {
  for (const key of [...sources.keys()]) if (key === pointer || key.startsWith(`${pointer}/`)) sources.delete(key);
}

function configError(errors: ErrorObject[], sources: Map<string, string>): Error {
  const describe = (e: ErrorObject): { path: string; message: string; source: string | undefined } => {
    let path = e.instancePath === '' ? '' : e.instancePath;
    if (e.keyword === 'additionalProperties') path += `/${escapePointer(String((e.params as { additionalProperty: string }).additionalProperty))}`;
    if (e.keyword === 'required') path += `/${escapePointer(String((e.params as { missingProperty: string }).missingProperty))}`;
    let source: string | undefined;
    for (let p = path; source === undefined && p !== ''; p = p.slice(0, p.lastIndexOf('/'))) source = sources.get(p);
    const message = e.keyword === 'additionalProperties' ? 'unknown key' : (e.message ?? e.keyword);
    return { path: path || '/', message, source };
  };
  const all = errors.map(describe);
  const first = all[0];
  return lwError('LW_ERR_CONFIG_INVALID', `${first.path}: ${first.message}${first.source ? ` (from ${first.source})` : ''}`, {
    path: first.path,
    source: first.source,
    errors: all,
  });
}

function coerce(raw: string, kind: ValueKind, cwd: string): unknown {
  const trimmed = raw.trim();
  switch (kind) {
    case 'string':
      return trimmed;
    case 'path':
      // ':memory:' is SQLite's in-memory database, not a file name.
      return trimmed === ':memory:' ? trimmed : resolve(cwd, trimmed);
    case 'int':
      return /^-?\d+$/.test(trimmed) ? Number(trimmed) : trimmed; // left as a string → a schema error with its path
    case 'number':
      return trimmed !== '' && Number.isFinite(Number(trimmed)) ? Number(trimmed) : trimmed;
    case 'bool': {
      const v = trimmed.toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(v)) return true;
      if (['0', 'false', 'no', 'off'].includes(v)) return false;
      return trimmed;
    }
    case 'list':
      return trimmed.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
    case 'namedList':
      // name:key (split at the first colon); an entry without one keeps an empty name, which the schema refuses with its path.
      return trimmed
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0)
        .map((s) => (s.includes(':') ? { name: s.slice(0, s.indexOf(':')).trim(), key: s.slice(s.indexOf(':') + 1).trim() } : { name: '', key: s }));
    case 'paths':
      return trimmed
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0)
        .map((s) => resolve(cwd, s));
  }
}

function nonBlank(v: string | undefined): string | undefined {
  return v === undefined || v.trim() === '' ? undefined : v;
}

function setPointer(target: Record<string, unknown>, pointer: string, value: unknown): void {
  const parts = pointer.split('/').slice(1);
  const last = parts.pop() as string;
  let node = target;
  for (const p of parts) {
    if (!isPlainObject(node[p])) node[p] = {};
    node = node[p] as Record<string, unknown>;
  }
  node[last] = value;
}

function getPointer(target: Record<string, unknown>, pointer: string): unknown {
  let node: unknown = target;
  for (const p of pointer.split('/').slice(1)) node = isPlainObject(node) ? node[p] : undefined;
  return node;
}

function escapePointer(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Freeze an object graph (objects and arrays) in place and return it. */
export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
