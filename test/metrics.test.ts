import { register as globalRegistry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { AlertHub } from '../src/daemon/alert-hub.js';
import { AlertLog, type AlertDraft } from '../src/daemon/alert-log.js';
import { SqliteAlertStore } from '../src/daemon/alert-store.js';
import { Authenticator } from '../src/daemon/auth.js';
import {
  ALERT_LOG_FAILURES_TOTAL,
  ALERT_LOG_PENDING,
  ALERT_LOG_WRITES_TOTAL,
  BOUNDED_LABELS,
  createMetrics,
  METRIC_FAMILIES,
  METRIC_NAMES,
  METRIC_PREFIX,
  PROCESS_METRIC_NAMES,
  seriesNames,
  statusClass,
} from '../src/daemon/metrics.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function samples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable line ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const value = (all: Sample[], name: string, labels: Record<string, string> = {}): number | undefined =>
  all.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

const draft = (i: number): AlertDraft => ({
  requestId: `r${i}`,
  model: 'tiny',
  probeId: 'probe.a',
  probeLabel: 'P',
  severity: 'warning',
  score: 0.9,
  threshold: 0.5,
  tokenIndex: i,
  silent: true,
  verbalized: false,
  kind: 'detection',
});

describe('metrics', () => {
  it('exposes every family, named by the rules, on its own registry', async () => {
    const m = createMetrics({ version: '0.1.0' });
    const text = await m.text();
    for (const name of METRIC_NAMES) expect(text, name).toContain(`# TYPE ${name} `);
    for (const f of METRIC_FAMILIES) {
      expect(f.name.startsWith(METRIC_PREFIX)).toBe(true);
      expect(text).toContain(`# TYPE ${f.name} ${f.type}`);
      if (f.type === 'counter') expect(f.name).toMatch(/_total$/);
      // A histogram of counts carries what it counts as its unit (alerts per group commit).
      if (f.type === 'histogram') expect(f.name).toMatch(/_seconds$|_score$|_alerts$/);
      expect(seriesNames(f).length).toBe(f.type === 'histogram' ? 3 : 1);
    }
    // The process metrics list matches what prom-client registers.
    const registered = (await m.registry.getMetricsAsJSON()).map((x) => x.name);
    const own = new Set(METRIC_FAMILIES.map((f) => f.name));
    expect(registered.filter((n) => !own.has(n)).sort()).toEqual([...PROCESS_METRIC_NAMES].sort());
    expect(new Set(METRIC_NAMES).size).toBe(METRIC_NAMES.length);
    // Not the global registry.
    expect((await globalRegistry.getMetricsAsJSON()).some((x) => x.name.startsWith(METRIC_PREFIX))).toBe(false);
    expect(value(samples(text), 'latentwatch_build_info', { version: '0.1.0', node: process.version })).toBe(1);
    expect(m.contentType).toMatch(/^text\/plain/);
  });

  it('records requests, probe signals, canaries and HTTP under bounded labels', async () => {
    const m = createMetrics({ version: '0.1.0', processMetrics: false, maxLabelValues: 4 });
    m.setModelInfo({ model: 'qwen2-code-16m', fingerprint: 'sha256:abc', precision: 'int4' });
    m.setQueue('qwen2-code-16m', 2, 5);
    m.recordRequest({ model: 'qwen2-code-16m', promptTokens: 12, generationTokens: 3, timeToFirstTokenSeconds: 0.02, interTokenLatenciesSeconds: [0.01, 0.012], e2eSeconds: 0.05 });
    for (let i = 0; i < 50; i++) {
      m.observeProbeScore(`probe-${i}`, i / 50); // 50 distinct probe ids: folded after 4
      m.recordAlert({ probeId: `probe-${i}`, severity: i % 2 ? 'critical' : ('loud' as never) });
      m.recordDetection(`probe-${i}`, i % 3 === 0);
      m.recordHttp(`/route/${i}`, 200 + (i % 4) * 100, 0.001);
    }
    m.observeProbeScore('probe-0', Number.NaN); // ignored
    m.recordHttp(undefined, 404, 0.001);
    m.recordCanary('success');
    m.recordCanary('failure');
    const all = samples(await m.text());

    expect(value(all, 'latentwatch_prompt_tokens_total', { model: 'qwen2-code-16m' })).toBe(12);
    expect(value(all, 'latentwatch_generation_tokens_total', { model: 'qwen2-code-16m' })).toBe(3);
    expect(value(all, 'latentwatch_inter_token_latency_seconds_count')).toBe(2);
    expect(value(all, 'latentwatch_time_to_first_token_seconds_count')).toBe(1);
    expect(value(all, 'latentwatch_num_requests_running')).toBe(2);
    expect(value(all, 'latentwatch_num_requests_waiting')).toBe(5);
    expect(value(all, 'latentwatch_model_info', { precision: 'int4' })).toBe(1);
    expect(value(all, 'latentwatch_canary_success')).toBe(0);
    expect(value(all, 'latentwatch_canary_runs_total', { result: 'success' })).toBe(1);
    expect(value(all, 'latentwatch_canary_runs_total', { result: 'failure' })).toBe(1);
    expect(value(all, 'latentwatch_probe_score_count', { probe: 'other' })).toBe(46);
    expect(value(all, 'latentwatch_http_requests_total', { route: 'unmatched', status_class: '4xx' })).toBe(1);

    // Label names only from the bounded set (plus le); label values bounded per label.
    const info = new Set(['latentwatch_model_info', 'latentwatch_build_info']);
    const values = new Map<string, Set<string>>();
    for (const s of all) {
      if (info.has(s.name)) continue;
      for (const [k, v] of Object.entries(s.labels)) {
        expect([...BOUNDED_LABELS, 'le'], `${s.name}{${k}}`).toContain(k);
        if (k !== 'le') values.set(k, (values.get(k) ?? new Set()).add(v));
      }
    }
    expect(values.get('probe')?.size).toBe(5); // 4 + other
    expect(values.get('route')?.size).toBe(6); // 4 + other + unmatched
    expect([...(values.get('severity') ?? [])].sort()).toEqual(['critical', 'other']);
    expect([...(values.get('verbalized') ?? [])].sort()).toEqual(['false', 'true']);
    expect([...(values.get('status_class') ?? [])].sort()).toEqual(['2xx', '3xx', '4xx', '5xx']);
    expect(statusClass(99)).toBe('5xx');
  });

  it('mirrors the alert log and hub at scrape time, counting each write once', async () => {
    const m = createMetrics({ version: '0.1.0', processMetrics: false });
    const log = AlertLog.open({ path: ':memory:', retryIntervalMs: 0 });
    const hub = new AlertHub({ store: new SqliteAlertStore(log), auth: new Authenticator({ apiKeys: [], adminKey: null }), bufferLimitBytes: 1 << 20, maxQueuedMessages: 100, heartbeatIntervalMs: 60_000 });
    m.bindAlertLog(log);
    m.bindAlertHub(hub);
    for (let i = 0; i < 3; i++) hub.raise(draft(i));
    let all = samples(await m.text());
    expect(value(all, ALERT_LOG_WRITES_TOTAL)).toBe(3);
    all = samples(await m.text());
    expect(value(all, ALERT_LOG_WRITES_TOTAL)).toBe(3); // scraping twice does not double count
    expect(value(all, 'latentwatch_websocket_subscribers')).toBe(0);
    log.database.pragma('query_only = 1');
    hub.raise(draft(3));
    hub.raise(draft(4));
    all = samples(await m.text());
    expect(value(all, ALERT_LOG_FAILURES_TOTAL)).toBe(2);
    expect(value(all, ALERT_LOG_PENDING)).toBe(2);
    log.database.pragma('query_only = 0');
    log.retryPending();
    all = samples(await m.text());
    expect(value(all, ALERT_LOG_WRITES_TOTAL)).toBe(5);
    expect(value(all, ALERT_LOG_PENDING)).toBe(0);
    await hub.close();
    log.close();
  });
});
