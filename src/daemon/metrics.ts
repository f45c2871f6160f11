/**
 * Prometheus metrics: prom-client with the daemon's own Registry (never the global one), one small
 * factory per metric family (after prom-client's lib/metrics/*.js), names as exported constants.
 *
 * Rules (DESIGN.md): prefix `latentwatch_`; unit suffixes (`_seconds`, `_bytes`, `_total`); labels
 * only from a bounded set: model, probe, severity, verbalized, route, status_class, plus `result`
 * on canary runs (three values). Every label value passes a guard: enumerated labels accept their
 * enumeration, open ones (model, probe, route) accept their first `maxLabelValues` distinct values
 * and fold the rest into "other"; never request ids or text. The two info metrics carry constant
 * identity labels (model fingerprint and precision; version and Node version), one series each.
 * Counts are exported, never ratios; the PromQL for each useful ratio is written beside its metric.
 *
 * The engine and the monitor hand plain stats objects to the `record*` methods (vLLM's
 * stats → loggers split); the alert log and hub are read at scrape time (`bindAlertLog`,
 * `bindAlertHub`).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { SEVERITIES, type Severity } from './config.js';

export const METRIC_PREFIX = 'latentwatch_';

// Request metrics, named as vLLM names them.
export const TIME_TO_FIRST_TOKEN_SECONDS = 'latentwatch_time_to_first_token_seconds';
export const INTER_TOKEN_LATENCY_SECONDS = 'latentwatch_inter_token_latency_seconds';
export const MONITOR_SECONDS = 'latentwatch_monitor_seconds';
export const E2E_REQUEST_LATENCY_SECONDS = 'latentwatch_e2e_request_latency_seconds';
export const PROMPT_TOKENS_TOTAL = 'latentwatch_prompt_tokens_total';
export const GENERATION_TOKENS_TOTAL = 'latentwatch_generation_tokens_total';
export const NUM_REQUESTS_RUNNING = 'latentwatch_num_requests_running';
export const NUM_REQUESTS_WAITING = 'latentwatch_num_requests_waiting';
// Latent signals.
export const PROBE_SCORE = 'latentwatch_probe_score';
export const LATENT_DETECTIONS_TOTAL = 'latentwatch_latent_detections_total';
export const ALERTS_TOTAL = 'latentwatch_alerts_total';
export const TENANT_ALERTS_TOTAL = 'latentwatch_tenant_alerts_total';
// Alert delivery.
export const WEBSOCKET_SUBSCRIBERS = 'latentwatch_websocket_subscribers';
export const WEBSOCKET_SLOW_CONSUMER_DISCONNECTS_TOTAL = 'latentwatch_websocket_slow_consumer_disconnects_total';
export const ALERT_SUBSCRIBERS_DROPPED_TOTAL = 'latentwatch_alert_subscribers_dropped_total';
export const ALERT_LOG_WRITES_TOTAL = 'latentwatch_alert_log_writes_total';
export const ALERT_LOG_FAILURES_TOTAL = 'latentwatch_alert_log_failures_total';
export const ALERT_LOG_PENDING = 'latentwatch_alert_log_pending';
export const ALERT_LOG_DROPPED_TOTAL = 'latentwatch_alert_log_dropped_total';
export const ALERT_LOG_COMMITS_TOTAL = 'latentwatch_alert_log_commits_total';
export const ALERT_LOG_COMMIT_ALERTS = 'latentwatch_alert_log_commit_alerts';
export const ALERT_LOG_COMMIT_SECONDS = 'latentwatch_alert_log_commit_seconds';
export const ALERT_LOG_WRITER_RESTARTS_TOTAL = 'latentwatch_alert_log_writer_restarts_total';
export const ALERT_OUTBOX_PENDING = 'latentwatch_alert_outbox_pending';
// Canary.
export const CANARY_SUCCESS = 'latentwatch_canary_success';
export const CANARY_RUNS_TOTAL = 'latentwatch_canary_runs_total';
// Learning from traffic (learning.ts).
export const LEARN_REQUESTS_TOTAL = 'latentwatch_learn_requests_total';
export const PROBE_VERSION = 'latentwatch_probe_version';
// Identity.
export const MODEL_INFO = 'latentwatch_model_info';
export const BUILD_INFO = 'latentwatch_build_info';
// HTTP.
export const HTTP_REQUESTS_TOTAL = 'latentwatch_http_requests_total';
export const HTTP_REQUEST_DURATION_SECONDS = 'latentwatch_http_request_duration_seconds';
export const UPSTREAM_REQUESTS_TOTAL = 'latentwatch_upstream_requests_total';
export const UPSTREAM_REQUEST_DURATION_SECONDS = 'latentwatch_upstream_request_duration_seconds';

export type MetricType = 'counter' | 'gauge' | 'histogram';
export interface MetricFamily {
  name: string;
  type: MetricType;
  help: string;
  labels: readonly string[];
}

/** Labels any daemon metric may carry (info metrics aside). */
export const BOUNDED_LABELS = ['model', 'probe', 'severity', 'verbalized', 'route', 'status_class', 'result', 'code'] as const;
export const CANARY_RESULTS = ['success', 'failure', 'error'] as const;
export type CanaryResult = (typeof CANARY_RESULTS)[number];
export const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;

const family = (name: string, type: MetricType, help: string, labels: readonly string[] = []): MetricFamily =>
  Object.freeze({ name, type, help, labels: Object.freeze([...labels]) });

/** Every family this module defines (the dashboards check reads this). */
export const METRIC_FAMILIES: readonly MetricFamily[] = Object.freeze([
  // histogram_quantile(0.99, sum by (le) (rate(latentwatch_time_to_first_token_seconds_bucket[$__rate_interval])))
  // mean: rate(latentwatch_time_to_first_token_seconds_sum[5m]) / rate(latentwatch_time_to_first_token_seconds_count[5m])
  family(TIME_TO_FIRST_TOKEN_SECONDS, 'histogram', 'Time from request arrival to the first generated token.', ['model']),
  family(INTER_TOKEN_LATENCY_SECONDS, 'histogram', 'Time between consecutive generated tokens of a request.', ['model']),
  // What watching costs per token, beside the inter-token latency: p99 over p50 of the ITL.
  family(MONITOR_SECONDS, 'histogram', 'Time the monitor spends on one generated token: every probe scored on its activations, the alert rules, verbalization, alerts raised.', ['model']),
  family(E2E_REQUEST_LATENCY_SECONDS, 'histogram', 'Time from request arrival to its last token.', ['model']),
  family(PROMPT_TOKENS_TOTAL, 'counter', 'Prompt tokens processed (prefill).', ['model']),
  // generation tokens/s: sum(rate(latentwatch_generation_tokens_total[$__rate_interval]))
  family(GENERATION_TOKENS_TOTAL, 'counter', 'Tokens generated.', ['model']),
  family(NUM_REQUESTS_RUNNING, 'gauge', 'Requests generating now.', ['model']),
  family(NUM_REQUESTS_WAITING, 'gauge', 'Requests queued for a generation slot.', ['model']),
  // Aggregated probe score at every prompt and generated position (the value the alert threshold applies to).
  family(PROBE_SCORE, 'histogram', 'Aggregated probe score per token position.', ['probe']),
  // One per request per probe that fired, labelled with the request's final verbalization status.
  // silent share: sum(rate(latentwatch_latent_detections_total{verbalized="false"}[$__rate_interval]))
  //               / sum(rate(latentwatch_latent_detections_total[$__rate_interval]))
  family(LATENT_DETECTIONS_TOTAL, 'counter', 'Requests in which a probe fired, by whether the text verbalised it.', ['probe', 'verbalized']),
  family(ALERTS_TOTAL, 'counter', 'Alerts raised (detections and canary failures).', ['probe', 'severity']),
  // tenant = the API key's name (auth.ts), never the key; bounded by the configured keys.
  family(TENANT_ALERTS_TOTAL, 'counter', 'Alerts raised, by the tenant (API key name) whose request raised them.', ['tenant']),
  family(WEBSOCKET_SUBSCRIBERS, 'gauge', 'Connected /v1/alerts WebSocket subscribers.'),
  family(WEBSOCKET_SLOW_CONSUMER_DISCONNECTS_TOTAL, 'counter', 'Subscribers closed with 4008 (slow consumer).'),
  // reason: buffer (unsent bytes or messages over the bound), pong_timeout (stopped reading), replay_stall.
  family(ALERT_SUBSCRIBERS_DROPPED_TOTAL, 'counter', 'Subscribers closed with 4008 (slow consumer), by reason.', ['reason']),
  // write failure share: rate(latentwatch_alert_log_failures_total[5m])
  //   / (rate(latentwatch_alert_log_writes_total[5m]) + rate(latentwatch_alert_log_failures_total[5m]))
  family(ALERT_LOG_WRITES_TOTAL, 'counter', 'Alerts committed to the SQLite alert log.'),
  family(ALERT_LOG_FAILURES_TOTAL, 'counter', 'Failed alert log write transactions (appends and retries).'),
  family(ALERT_LOG_PENDING, 'gauge', 'Alerts held in memory until the alert log accepts writes again.'),
  family(ALERT_LOG_DROPPED_TOTAL, 'counter', 'Alerts delivered live only because the pending queue was full.'),
  // The group-commit writer (alertLog.groupCommit, the default): one commit = one transaction = one fsync under synchronous=full.
  // alerts per commit: rate(latentwatch_alert_log_commit_alerts_sum[5m]) / rate(latentwatch_alert_log_commit_alerts_count[5m])
  family(ALERT_LOG_COMMITS_TOTAL, 'counter', 'Write transactions the group-commit writer committed (each one fsync with synchronous=full).'),
  family(ALERT_LOG_COMMIT_ALERTS, 'histogram', 'Alerts in one group commit (the appends that arrived during the previous commit share it).'),
  // p99 commit time: histogram_quantile(0.99, sum by (le) (rate(latentwatch_alert_log_commit_seconds_bucket[$__rate_interval])))
  family(ALERT_LOG_COMMIT_SECONDS, 'histogram', 'Time one group commit took in the writer thread, the fsync included.'),
  // > 0: the writer thread died and was restarted (no acknowledged alert lost; the daemon logs each restart).
  family(ALERT_LOG_WRITER_RESTARTS_TOTAL, 'counter', 'Times the alert-log writer thread died and was restarted.'),
  // serve --nats: > 0 while NATS is unreachable (or refuses publishes); drains to 0 when it is back.
  family(ALERT_OUTBOX_PENDING, 'gauge', 'Alerts in the local outbox waiting for the shared JetStream stream to acknowledge them.'),
  family(CANARY_SUCCESS, 'gauge', '1 if the last canary run saw its probe fire, else 0.'),
  // canary failure share: sum(rate(latentwatch_canary_runs_total{result!="success"}[1h])) / sum(rate(latentwatch_canary_runs_total[1h]))
  family(CANARY_RUNS_TOTAL, 'counter', 'Canary runs by result (success, failure, error).', ['result']),
  // learning progress: increase(latentwatch_learn_requests_total[$__rate_interval]); a new version shows as a step of probe_version.
  family(LEARN_REQUESTS_TOTAL, 'counter', 'Clean requests a learning run folded in (fit or calibration share).', ['probe']),
  family(PROBE_VERSION, 'gauge', 'Version of the probe in use: 0 = as loaded from its file, k = the k-th version learned from traffic.', ['probe']),
  family(MODEL_INFO, 'gauge', 'The served model: always 1.', ['model', 'fingerprint', 'precision']),
  family(BUILD_INFO, 'gauge', 'The daemon build: always 1.', ['version', 'node']),
  // 5xx share: sum(rate(latentwatch_http_requests_total{status_class="5xx"}[5m])) / sum(rate(latentwatch_http_requests_total[5m]))
  family(HTTP_REQUESTS_TOTAL, 'counter', 'HTTP requests answered, by route pattern and status class.', ['route', 'status_class']),
  family(HTTP_REQUEST_DURATION_SECONDS, 'histogram', 'HTTP request duration (streams: until the last byte).', ['route', 'status_class']),
  // Proxy mode (serve --upstream): code = the upstream's HTTP status, or unreachable / timeout / broken (stream cut).
  // upstream failure share: sum(rate(latentwatch_upstream_requests_total{code!~"2.."}[5m])) / sum(rate(latentwatch_upstream_requests_total[5m]))
  family(UPSTREAM_REQUESTS_TOTAL, 'counter', 'Requests forwarded to the upstream model server (proxy mode), by outcome (its HTTP status, unreachable, timeout, broken); retries count each.', ['code']),
  family(UPSTREAM_REQUEST_DURATION_SECONDS, 'histogram', 'Time from forwarding a request to the upstream to its last byte (proxy mode).', ['code']),
]);

/** prom-client's default process and Node.js metrics under our prefix (Linux; test/metrics.test.ts keeps this in step). */
export const PROCESS_METRIC_NAMES: readonly string[] = Object.freeze(
  [
    'process_cpu_user_seconds_total', 'process_cpu_system_seconds_total', 'process_cpu_seconds_total',
    'process_start_time_seconds', 'process_resident_memory_bytes', 'process_virtual_memory_bytes', 'process_heap_bytes',
    'process_open_fds', 'process_max_fds',
    'nodejs_eventloop_lag_seconds', 'nodejs_eventloop_lag_min_seconds', 'nodejs_eventloop_lag_max_seconds',
    'nodejs_eventloop_lag_mean_seconds', 'nodejs_eventloop_lag_stddev_seconds', 'nodejs_eventloop_lag_p50_seconds',
    'nodejs_eventloop_lag_p90_seconds', 'nodejs_eventloop_lag_p99_seconds',
    'nodejs_active_resources', 'nodejs_active_resources_total', 'nodejs_active_handles', 'nodejs_active_handles_total',
    'nodejs_active_requests', 'nodejs_active_requests_total',
    'nodejs_heap_size_total_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_external_memory_bytes',
    'nodejs_heap_space_size_total_bytes', 'nodejs_heap_space_size_used_bytes', 'nodejs_heap_space_size_available_bytes',
    'nodejs_version_info', 'nodejs_gc_duration_seconds',
  ].map((n) => METRIC_PREFIX + n),
);

/** Every metric family name the daemon exposes: its own, then the process metrics. */
export const METRIC_NAMES: readonly string[] = Object.freeze([...METRIC_FAMILIES.map((f) => f.name), ...PROCESS_METRIC_NAMES]);

/** Series names a family exposes (histograms: _bucket, _sum, _count). */
export function seriesNames(f: MetricFamily): string[] {
  return f.type === 'histogram' ? [`${f.name}_bucket`, `${f.name}_sum`, `${f.name}_count`] : [f.name];
}

// Buckets: vLLM's, extended downwards for small models on CPUs.
export const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
export const ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
export const E2E_BUCKETS = [0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];
/**
 * Linear probes score probabilities (0.05-wide buckets over [0, 1] for heatmaps); direction,
 * Mahalanobis and ensemble probes score on open scales, hence the coarse buckets either side.
 */
export const PROBE_SCORE_BUCKETS = [
  -10, -5, -2, -1, -0.5, 0,
  ...Array.from({ length: 20 }, (_, i) => Math.round((i + 1) * 5) / 100),
  1.5, 2, 3, 5, 10, 20, 50,
];
export const MONITOR_BUCKETS = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];
export const COMMIT_ALERTS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
export const COMMIT_SECONDS_BUCKETS = [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1];
export const HTTP_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** Keeps a label's cardinality bounded: an enumeration, or the first `max` distinct values, then "other". */
export class LabelGuard {
  private readonly seen = new Set<string>();
  constructor(
    private readonly max: number,
    private readonly allowed?: readonly string[],
  ) {}
  value(v: string): string {
    if (this.allowed) return this.allowed.includes(v) ? v : 'other';
    if (this.seen.has(v)) return v;
    if (this.seen.size >= this.max) return 'other';
    this.seen.add(v);
    return v;
  }
}

const spec = (name: string): MetricFamily => {
  const f = METRIC_FAMILIES.find((m) => m.name === name);
  if (!f) throw new Error(`unknown metric ${name}`);
  return f;
};
function counter<L extends string>(registry: Registry, name: string, collect?: (this: Counter<L>) => void): Counter<L> {
  const f = spec(name);
  return new Counter<L>({ name, help: f.help, labelNames: f.labels as L[], registers: [registry], ...(collect ? { collect } : {}) });
}
function gauge<L extends string>(registry: Registry, name: string, collect?: (this: Gauge<L>) => void): Gauge<L> {
  const f = spec(name);
  return new Gauge<L>({ name, help: f.help, labelNames: f.labels as L[], registers: [registry], ...(collect ? { collect } : {}) });
}
function histogram<L extends string>(registry: Registry, name: string, buckets: number[]): Histogram<L> {
  const f = spec(name);
  return new Histogram<L>({ name, help: f.help, labelNames: f.labels as L[], buckets, registers: [registry] });
}

export function requestMetrics(registry: Registry) {
  return {
    timeToFirstToken: histogram<'model'>(registry, TIME_TO_FIRST_TOKEN_SECONDS, TTFT_BUCKETS),
    interTokenLatency: histogram<'model'>(registry, INTER_TOKEN_LATENCY_SECONDS, ITL_BUCKETS),
    monitor: histogram<'model'>(registry, MONITOR_SECONDS, MONITOR_BUCKETS),
    e2eLatency: histogram<'model'>(registry, E2E_REQUEST_LATENCY_SECONDS, E2E_BUCKETS),
    promptTokens: counter<'model'>(registry, PROMPT_TOKENS_TOTAL),
    generationTokens: counter<'model'>(registry, GENERATION_TOKENS_TOTAL),
    running: gauge<'model'>(registry, NUM_REQUESTS_RUNNING),
    waiting: gauge<'model'>(registry, NUM_REQUESTS_WAITING),
  };
}

export function probeMetrics(registry: Registry) {
  return {
    probeScore: histogram<'probe'>(registry, PROBE_SCORE, PROBE_SCORE_BUCKETS),
    latentDetections: counter<'probe' | 'verbalized'>(registry, LATENT_DETECTIONS_TOTAL),
    alerts: counter<'probe' | 'severity'>(registry, ALERTS_TOTAL),
  };
}

/** What the alert log and hub report (alert-log.ts AlertLogStats, alert-hub.ts AlertHubStats satisfy these). */
export interface AlertLogStatsSource {
  stats(): { writes: number; failures: number; pending: number; dropped: number };
}
/** The group-commit store (group-commit-store.ts): each commit as it happens, restarts at scrape time. */
export interface AlertLogCommitSource {
  onCommit(listener: (c: { alerts: number; seconds: number }) => void): void;
  stats(): { commits: number; restarts: number };
}
/** The JetStream store (nats-alert-store.ts). */
export interface AlertOutboxSource {
  readonly outboxPending: number;
}
export interface AlertHubStatsSource {
  stats(): { subscribers: number; slowConsumerDisconnects: number; dropped?: Readonly<Record<string, number>> };
}

/** Counters that mirror a monotonically increasing source value at scrape time. */
function mirrored(read: () => number | undefined): (this: Counter<string>) => void {
  let last = 0;
  return function (this: Counter<string>) {
    const v = read();
    if (v === undefined) return;
    if (v > last) this.inc(v - last);
    last = Math.max(last, v);
  };
}

/** `mirrored` per reason label (alert-hub.ts DROP_REASONS); every reason starts at 0. */
function droppedByReason(read: () => Readonly<Record<string, number>> | undefined): (this: Counter<'reason'>) => void {
  const last = new Map<string, number>();
  return function (this: Counter<'reason'>) {
    for (const [reason, v] of Object.entries(read() ?? {})) {
      const prev = last.get(reason) ?? 0;
      this.inc({ reason }, Math.max(0, v - prev));
      last.set(reason, Math.max(prev, v));
    }
  };
}

export function alertDeliveryMetrics(registry: Registry, sources: { log?: AlertLogStatsSource; hub?: AlertHubStatsSource; outbox?: AlertOutboxSource; commits?: AlertLogCommitSource }) {
  return {
    subscribers: gauge(registry, WEBSOCKET_SUBSCRIBERS, function () {
      if (sources.hub) this.set(sources.hub.stats().subscribers);
    }),
    slowConsumerDisconnects: counter(registry, WEBSOCKET_SLOW_CONSUMER_DISCONNECTS_TOTAL, mirrored(() => sources.hub?.stats().slowConsumerDisconnects)),
    subscribersDropped: counter<'reason'>(registry, ALERT_SUBSCRIBERS_DROPPED_TOTAL, droppedByReason(() => sources.hub?.stats().dropped)),
    logWrites: counter(registry, ALERT_LOG_WRITES_TOTAL, mirrored(() => sources.log?.stats().writes)),
    logFailures: counter(registry, ALERT_LOG_FAILURES_TOTAL, mirrored(() => sources.log?.stats().failures)),
    logPending: gauge(registry, ALERT_LOG_PENDING, function () {
      if (sources.log) this.set(sources.log.stats().pending);
    }),
    logDropped: counter(registry, ALERT_LOG_DROPPED_TOTAL, mirrored(() => sources.log?.stats().dropped)),
    outboxPending: gauge(registry, ALERT_OUTBOX_PENDING, function () {
      this.set(sources.outbox?.outboxPending ?? 0);
    }),
    logCommits: counter(registry, ALERT_LOG_COMMITS_TOTAL, mirrored(() => sources.commits?.stats().commits)),
    logCommitAlerts: histogram(registry, ALERT_LOG_COMMIT_ALERTS, COMMIT_ALERTS_BUCKETS),
    logCommitSeconds: histogram(registry, ALERT_LOG_COMMIT_SECONDS, COMMIT_SECONDS_BUCKETS),
    logWriterRestarts: counter(registry, ALERT_LOG_WRITER_RESTARTS_TOTAL, mirrored(() => sources.commits?.stats().restarts)),
  };
}

export function canaryMetrics(registry: Registry) {
  return {
    success: gauge(registry, CANARY_SUCCESS),
    runs: counter<'result'>(registry, CANARY_RUNS_TOTAL),
  };
}

export function learnMetrics(registry: Registry) {
  return {
    requests: counter<'probe'>(registry, LEARN_REQUESTS_TOTAL),
    version: gauge<'probe'>(registry, PROBE_VERSION),
  };
}

export function infoMetrics(registry: Registry) {
  return {
    model: gauge<'model' | 'fingerprint' | 'precision'>(registry, MODEL_INFO),
    build: gauge<'version' | 'node'>(registry, BUILD_INFO),
  };
}

export function httpMetrics(registry: Registry) {
  return {
    requests: counter<'route' | 'status_class'>(registry, HTTP_REQUESTS_TOTAL),
    duration: histogram<'route' | 'status_class'>(registry, HTTP_REQUEST_DURATION_SECONDS, HTTP_BUCKETS),
  };
}

/** A finished request, as the engine/daemon reports it (vLLM-style stats object). */
export interface RequestStats {
  model: string;
  promptTokens: number;
  generationTokens: number;
  /** Arrival → first generated token; absent when no token was generated. */
  timeToFirstTokenSeconds?: number;
  /** Gaps between consecutive generated tokens. */
  interTokenLatenciesSeconds?: readonly number[];
  e2eSeconds: number;
}

export interface MetricsOptions {
  /** Daemon version for build_info. */
  version: string;
  /** prom-client default process metrics (default true). */
  processMetrics?: boolean;
  /** Distinct values per open label (model, probe, route) before "other" (default 64). */
  maxLabelValues?: number;
}

export class DaemonMetrics {
  readonly registry = new Registry();
  readonly request: ReturnType<typeof requestMetrics>;
  readonly probe: ReturnType<typeof probeMetrics>;
  readonly delivery: ReturnType<typeof alertDeliveryMetrics>;
  readonly canary: ReturnType<typeof canaryMetrics>;
  readonly info: ReturnType<typeof infoMetrics>;
  readonly learn: ReturnType<typeof learnMetrics>;
  readonly http: ReturnType<typeof httpMetrics>;
  private readonly sources: { log?: AlertLogStatsSource; hub?: AlertHubStatsSource; outbox?: AlertOutboxSource; commits?: AlertLogCommitSource } = {};
  private readonly models: LabelGuard;
  private readonly probes: LabelGuard;
  private readonly routes: LabelGuard;
  private readonly severities = new LabelGuard(0, SEVERITIES);
  readonly tenantAlerts: Counter<'tenant'>;
  private readonly tenants = new LabelGuard(64);
  readonly upstream: { requests: Counter<'code'>; duration: Histogram<'code'> };
  private readonly upstreamCodes = new LabelGuard(32);

  constructor(options: MetricsOptions) {
    const max = options.maxLabelValues ?? 64;
    this.models = new LabelGuard(max);
    this.probes = new LabelGuard(max);
    this.routes = new LabelGuard(max);
    this.request = requestMetrics(this.registry);
    this.probe = probeMetrics(this.registry);
    this.delivery = alertDeliveryMetrics(this.registry, this.sources);
    this.canary = canaryMetrics(this.registry);
    this.info = infoMetrics(this.registry);
    this.learn = learnMetrics(this.registry);
    this.tenantAlerts = counter<'tenant'>(this.registry, TENANT_ALERTS_TOTAL);
    this.http = httpMetrics(this.registry);
    this.upstream = {
      requests: counter<'code'>(this.registry, UPSTREAM_REQUESTS_TOTAL),
      duration: histogram<'code'>(this.registry, UPSTREAM_REQUEST_DURATION_SECONDS, E2E_BUCKETS),
    };
    // Exported at 0 from the start (as the probe counters are), so rate() sees the first forwarded
    // request and the dashboard's upstream panels read 0, not "no data", on a replica serving locally.
    this.upstream.requests.inc({ code: '200' }, 0);
    this.upstream.duration.zero({ code: '200' });
    this.info.build.set({ version: options.version, node: process.version }, 1);
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: METRIC_PREFIX });
  }

  /** Read the alert log's counters at scrape time. */
  bindAlertLog(log: AlertLogStatsSource): void {
    this.sources.log = log;
  }

  /** The group-commit writer's commits (observed as they happen), commit count and restarts (at scrape time). */
  bindAlertLogCommits(source: AlertLogCommitSource): void {
    this.sources.commits = source;
    source.onCommit((c) => {
      this.delivery.logCommitAlerts.observe(c.alerts);
      this.delivery.logCommitSeconds.observe(c.seconds);
    });
  }

  /** Read the outbox of the JetStream store at scrape time (`serve --nats`). */
  bindAlertOutbox(outbox: AlertOutboxSource): void {
    this.sources.outbox = outbox;
  }

  /** Read the hub's subscriber count and disconnects at scrape time. */
  bindAlertHub(hub: AlertHubStatsSource): void {
    this.sources.hub = hub;
  }

  setModelInfo(info: { model: string; fingerprint: string; precision: string }): void {
    this.info.model.reset();
    this.info.model.set({ model: this.models.value(info.model), fingerprint: info.fingerprint, precision: info.precision }, 1);
  }

  /** Scheduler state, set whenever it changes. */
  setQueue(model: string, running: number, waiting: number): void {
    const m = this.models.value(model);
    this.request.running.set({ model: m }, running);
    this.request.waiting.set({ model: m }, waiting);
  }

  recordRequest(s: RequestStats): void {
    const labels = { model: this.models.value(s.model) };
    this.request.promptTokens.inc(labels, s.promptTokens);
    this.request.generationTokens.inc(labels, s.generationTokens);
    if (s.timeToFirstTokenSeconds !== undefined) this.request.timeToFirstToken.observe(labels, s.timeToFirstTokenSeconds);
    for (const gap of s.interTokenLatenciesSeconds ?? []) this.request.interTokenLatency.observe(labels, gap);
    this.request.e2eLatency.observe(labels, s.e2eSeconds);
  }

  /** The monitor's time on one generated token (inference.ts). */
  observeMonitorSeconds(model: string, seconds: number): void {
    this.request.monitor.observe({ model: this.models.value(model) }, seconds);
  }

  /** One aggregated score at one position (monitor.ts `onScore`). */
  observeProbeScore(probeId: string, score: number): void {
    if (Number.isFinite(score)) this.probe.probeScore.observe({ probe: this.probes.value(probeId) }, score);
  }

  /** Start a loaded probe's counters at 0, so rate() and increase() see its first detection. */
  initProbe(probeId: string, severity: Severity): void {
    const probe = this.probes.value(probeId);
    for (const verbalized of ['true', 'false']) this.probe.latentDetections.inc({ probe, verbalized }, 0);
    this.probe.alerts.inc({ probe, severity: this.severities.value(severity) }, 0);
  }

  recordAlert(alert: { probeId: string; severity: Severity; tenant?: string }): void {
    this.probe.alerts.inc({ probe: this.probes.value(alert.probeId), severity: this.severities.value(alert.severity) });
    if (alert.tenant !== undefined) this.tenantAlerts.inc({ tenant: this.tenants.value(alert.tenant) });
  }

  /** At the end of a request, once per probe that fired, with the final verbalization status. */
  recordDetection(probeId: string, verbalized: boolean): void {
    this.probe.latentDetections.inc({ probe: this.probes.value(probeId), verbalized: verbalized ? 'true' : 'false' });
  }

  /** One clean request folded into a learning run. */
  recordLearnRequest(probeId: string): void {
    this.learn.requests.inc({ probe: this.probes.value(probeId) });
  }

  /** The version of a probe in use (0: as loaded; k: learned); also starts its learn counter at 0. */
  setProbeVersion(probeId: string, version: number): void {
    const probe = this.probes.value(probeId);
    this.learn.version.set({ probe }, version);
    this.learn.requests.inc({ probe }, 0);
  }

  recordCanary(result: CanaryResult): void {
    this.canary.runs.inc({ result: CANARY_RESULTS.includes(result) ? result : 'error' });
    this.canary.success.set(result === 'success' ? 1 : 0);
  }

  /** One answered HTTP request; `route` is the route pattern (e.g. '/v1/chat/completions'), never the raw URL. */
  recordHttp(route: string | undefined, statusCode: number, seconds: number): void {
    const labels = { route: route === undefined ? 'unmatched' : this.routes.value(route), status_class: statusClass(statusCode) };
    this.http.requests.inc(labels);
    this.http.duration.observe(labels, seconds);
  }

  /** One request to the upstream (proxy mode): its outcome and how long it took to its last byte. */
  recordUpstream(code: string, seconds: number): void {
    const labels = { code: this.upstreamCodes.value(code) };
    this.upstream.requests.inc(labels);
    this.upstream.duration.observe(labels, seconds);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Exposition text for GET /metrics. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

export function statusClass(code: number): string {
  const c = `${Math.floor(code / 100)}xx`;
  return (STATUS_CLASSES as readonly string[]).includes(c) ? c : '5xx';
}

export function createMetrics(options: MetricsOptions): DaemonMetrics {
  return new DaemonMetrics(options);
}
