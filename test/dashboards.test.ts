/**
 * The dashboards check (after vLLM's dashboard generator): every PromQL query in
 * grafana/dashboards/*.json selects only series the daemon defines (src/daemon/metrics.ts, with
 * _bucket/_sum/_count for histograms), every range is $__rate_interval, every query reads the
 * datasource variable, and the checked-in JSON is exactly what `npm run dashboards` writes.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { DASHBOARDS, renderDashboards } from '../grafana/src/dashboards.js';
import { familyOf, metricNames, parseLabelValues, substituteVariables, unknownMetrics } from '../grafana/src/promql.js';
import { type DashboardJson, dashboardQueries } from '../grafana/src/queries.js';
import { METRIC_FAMILIES, METRIC_NAMES, PROCESS_METRIC_NAMES, seriesNames } from '../src/daemon/metrics.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIR = join(ROOT, 'grafana', 'dashboards');

/** prom-client's default metrics that are histograms (the rest are gauges and counters). */
const PROCESS_HISTOGRAMS = ['latentwatch_nodejs_gc_duration_seconds'];
/**
 * Every series name the daemon exposes: its own families (a histogram as _bucket, _sum, _count,
 * never its bare name) and the process metrics of METRIC_NAMES.
 */
const HISTOGRAMS = new Set([...METRIC_FAMILIES.filter((f) => f.type === 'histogram').map((f) => f.name), ...PROCESS_HISTOGRAMS]);
const KNOWN = new Set<string>(
  METRIC_NAMES.flatMap((n) => (HISTOGRAMS.has(n) ? [`${n}_bucket`, `${n}_sum`, `${n}_count`] : [n])),
);

const checkedIn = (): Map<string, DashboardJson> =>
  new Map(
    readdirSync(DIR)
      .filter((f) => f.endsWith('.json'))
      .sort()
      .map((f) => [f, JSON.parse(readFileSync(join(DIR, f), 'utf8')) as DashboardJson]),
  );

describe('promql metric-name extraction', () => {
  it('finds selected series and ignores functions, keywords, labels, ranges and variables', () => {
    expect(
      metricNames(
        'histogram_quantile(0.99, sum by (le, model) (rate(latentwatch_e2e_request_latency_seconds_bucket{instance=~"$instance", model!="x"}[$__rate_interval])))',
      ),
    ).toEqual(['latentwatch_e2e_request_latency_seconds_bucket']);
    expect(metricNames('sum(rate(a_total[5m])) / on (job) group_left (model) b_info offset 1h > bool 0.5 and c')).toEqual(['a_total', 'b_info', 'c']);
    expect(metricNames('{__name__="x_total", job="y"} unless count without (instance) (up)')).toEqual(['x_total', 'up']);
    expect(metricNames('max_over_time(foo[1h:5m]) * 1e3 + inf')).toEqual(['foo']);
    expect(metricNames('sum(x) by (le)')).toEqual(['x']);
    expect(metricNames('label_replace(vector(1), "dst", "$1", "src", "(.*)")')).toEqual([]);
  });

  it('flags a query on a metric the daemon does not define', () => {
    expect(unknownMetrics('sum(rate(latentwatch_alerts_total[$__rate_interval]))', KNOWN)).toEqual([]);
    expect(unknownMetrics('sum(rate(latentwatch_alert_total[$__rate_interval]))', KNOWN)).toEqual(['latentwatch_alert_total']);
    // Histogram suffixes exist only on histograms.
    expect(unknownMetrics('latentwatch_alerts_total_bucket', KNOWN)).toEqual(['latentwatch_alerts_total_bucket']);
    expect(unknownMetrics('latentwatch_probe_score_bucket + latentwatch_probe_score_count', KNOWN)).toEqual([]);
    expect(unknownMetrics('latentwatch_probe_score', KNOWN)).toEqual(['latentwatch_probe_score']);
    expect(familyOf('latentwatch_probe_score_sum', HISTOGRAMS)).toBe('latentwatch_probe_score');
  });

  it('knows every series of METRIC_NAMES, histograms by their three series', () => {
    for (const f of METRIC_FAMILIES) for (const s of seriesNames(f)) expect(KNOWN.has(s), s).toBe(true);
    for (const n of PROCESS_HISTOGRAMS) expect(PROCESS_METRIC_NAMES).toContain(n);
    expect(KNOWN.size).toBe(METRIC_NAMES.length + 2 * HISTOGRAMS.size);
  });

  it('reads label_values variables and substitutes Grafana variables', () => {
    expect(parseLabelValues('label_values(latentwatch_probe_score_count{instance=~"$instance"}, probe)')).toEqual({
      selector: 'latentwatch_probe_score_count{instance=~"$instance"}',
      label: 'probe',
    });
    expect(parseLabelValues('query_result(up)')).toBeNull();
    expect(substituteVariables('rate(x{i=~"$instance",p=~"${probe}"}[$__rate_interval])', { instance: '.*', probe: 'a', __rate_interval: '15s' })).toBe(
      'rate(x{i=~".*",p=~"a"}[15s])',
    );
    expect(substituteVariables('x[$unknown]', {})).toBe('x[$unknown]');
  });
});

describe('grafana/dashboards', () => {
  it('holds exactly the generated dashboards, byte for byte (run `npm run dashboards` after editing grafana/src)', () => {
    const expected = renderDashboards();
    const files = [...checkedIn().keys()];
    expect(files).toEqual([...expected.keys()].sort());
    for (const [file, text] of expected) {
      expect(readFileSync(join(DIR, file), 'utf8'), `grafana/dashboards/${file} is stale: run npm run dashboards`).toBe(text);
    }
  });

  it('queries only metrics the daemon defines', () => {
    const problems: string[] = [];
    let count = 0;
    for (const [file, d] of checkedIn()) {
      for (const q of dashboardQueries(d)) {
        count++;
        const names = metricNames(q.expr);
        if (names.length === 0) problems.push(`${file} ${q.where}: selects no metric: ${q.expr}`);
        for (const n of unknownMetrics(q.expr, KNOWN)) problems.push(`${file} ${q.where} ${q.refId}: ${n} is not defined in src/daemon/metrics.ts`);
      }
    }
    expect(problems).toEqual([]);
    expect(count).toBeGreaterThan(40);
  });

  it('covers every metric family the daemon defines, except build info', () => {
    const used = new Set<string>();
    for (const d of checkedIn().values()) for (const q of dashboardQueries(d)) for (const n of metricNames(q.expr)) used.add(familyOf(n, HISTOGRAMS));
    const unused = METRIC_FAMILIES.map((f) => f.name).filter((n) => !used.has(n) && n !== 'latentwatch_build_info');
    expect(unused).toEqual([]);
  });

  it('uses $__rate_interval for every range, the datasource variable everywhere, and unique panel ids', () => {
    for (const [file, d] of checkedIn()) {
      const raw = readFileSync(join(DIR, file), 'utf8');
      const vars = (d.templating?.list ?? []) as { name: string; type: string; query?: unknown }[];
      expect(vars.find((v) => v.name === 'datasource'), `${file}: datasource variable`).toMatchObject({ type: 'datasource', query: 'prometheus' });
      for (const q of dashboardQueries(d)) {
        for (const range of q.expr.matchAll(/\[([^\]]*)\]/g)) expect(range[1], `${file} ${q.where}: ${q.expr}`).toBe('$__rate_interval');
      }
      // Every datasource reference (panels, targets, variables) is the variable, never a fixed uid.
      const refs = [...raw.matchAll(/"datasource":\s*\{\s*"type":\s*"([^"]+)",\s*"uid":\s*"([^"]+)"/g)].map((m) => `${m[1]}:${m[2]}`);
      expect(refs.length).toBeGreaterThan(0);
      expect(new Set(refs)).toEqual(new Set(['prometheus:${datasource}']));
      const ids: number[] = [];
      const walk = (ps: { id?: number; panels?: unknown[] }[] | undefined) => {
        for (const p of ps ?? []) {
          ids.push(p.id ?? -1);
          walk(p.panels as typeof ps);
        }
      };
      walk(d.panels as { id?: number; panels?: unknown[] }[]);
      expect(new Set(ids).size, `${file}: panel ids`).toBe(ids.length);
      expect(ids.every((i) => i > 0)).toBe(true);
    }
  });

  it('has the panels the issue asks for', () => {
    const titles = (file: string) => dashboardQueries(checkedIn().get(file)!).map((q) => `${q.where}: ${q.expr}`).join('\n');
    const overview = titles('overview.json');
    for (const m of ['time_to_first_token_seconds_bucket', 'inter_token_latency_seconds_bucket', 'e2e_request_latency_seconds_bucket', 'generation_tokens_total', 'num_requests_running', 'num_requests_waiting', 'http_requests_total'])
      expect(overview).toContain(`latentwatch_${m}`);
    expect(overview).toContain('histogram_quantile(0.99');
    const latent = titles('latent-signals.json');
    for (const s of ['latentwatch_probe_score_bucket', 'verbalized="false"', 'verbalized="true"', 'sum by (severity', 'latentwatch_canary_success', 'latentwatch_canary_runs_total'])
      expect(latent).toContain(s);
    expect(JSON.stringify(checkedIn().get('latent-signals.json'))).toContain('"type":"heatmap"');
    const delivery = titles('alert-delivery.json');
    for (const m of ['websocket_subscribers', 'websocket_slow_consumer_disconnects_total', 'alert_log_writes_total', 'alert_log_failures_total', 'alert_log_pending'])
      expect(delivery).toContain(`latentwatch_${m}`);
    expect(Object.keys(DASHBOARDS).length).toBe(3);
  });
});

describe('grafana/provisioning', () => {
  it('provisions a Prometheus datasource and the dashboards folder', () => {
    const pdir = join(ROOT, 'grafana', 'provisioning');
    const ds = readdirSync(join(pdir, 'datasources')).map((f) => parseYaml(readFileSync(join(pdir, 'datasources', f), 'utf8')));
    const sources = ds.flatMap((d: { apiVersion: number; datasources: { type: string; uid: string; url: string }[] }) => {
      expect(d.apiVersion).toBe(1);
      return d.datasources;
    });
    expect(sources.some((s) => s.type === 'prometheus' && /^https?:\/\//.test(s.url))).toBe(true);
    const dash = readdirSync(join(pdir, 'dashboards')).map((f) => parseYaml(readFileSync(join(pdir, 'dashboards', f), 'utf8')));
    const providers = dash.flatMap((d: { apiVersion: number; providers: { type: string; options: { path: string } }[] }) => d.providers);
    expect(providers.some((p) => p.type === 'file' && typeof p.options.path === 'string')).toBe(true);
  });
});
