/**
 * The latentwatch Grafana dashboards, as code. `npm run dashboards` writes them to
 * grafana/dashboards/*.json; test/dashboards.test.ts fails when the checked-in JSON differs from
 * what this module builds, or when a query selects a metric src/daemon/metrics.ts does not define.
 *
 * Conventions: every panel and query reads the `datasource` variable; every range is
 * `$__rate_interval`; every query filters on the `instance` variable (one series per replica,
 * see deploy/k8s/README.md); metric names come from the daemon's exported constants.
 */
import * as common from '@grafana/grafana-foundation-sdk/common';
import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';
import * as heatmap from '@grafana/grafana-foundation-sdk/heatmap';
import { PromQueryFormat } from '@grafana/grafana-foundation-sdk/prometheus';
import * as table from '@grafana/grafana-foundation-sdk/table';
import {
  ALERTS_TOTAL,
  ALERT_SUBSCRIBERS_DROPPED_TOTAL,
  TENANT_ALERTS_TOTAL,
  ALERT_LOG_COMMITS_TOTAL,
  ALERT_LOG_COMMIT_ALERTS,
  ALERT_LOG_COMMIT_SECONDS,
  ALERT_LOG_DROPPED_TOTAL,
  ALERT_LOG_FAILURES_TOTAL,
  ALERT_LOG_WRITER_RESTARTS_TOTAL,
  ALERT_LOG_PENDING,
  ALERT_OUTBOX_PENDING,
  ALERT_LOG_WRITES_TOTAL,
  BUILD_INFO,
  CANARY_RUNS_TOTAL,
  LEARN_REQUESTS_TOTAL,
  PROBE_VERSION,
  CANARY_SUCCESS,
  E2E_REQUEST_LATENCY_SECONDS,
  GENERATION_TOKENS_TOTAL,
  HTTP_REQUESTS_TOTAL,
  HTTP_REQUEST_DURATION_SECONDS,
  UPSTREAM_REQUESTS_TOTAL,
  UPSTREAM_REQUEST_DURATION_SECONDS,
  INTER_TOKEN_LATENCY_SECONDS,
  MONITOR_SECONDS,
  LATENT_DETECTIONS_TOTAL,
  METRIC_PREFIX,
  MODEL_INFO,
  NUM_REQUESTS_RUNNING,
  NUM_REQUESTS_WAITING,
  PROBE_SCORE,
  PROMPT_TOKENS_TOTAL,
  TIME_TO_FIRST_TOKEN_SECONDS,
  WEBSOCKET_SLOW_CONSUMER_DISCONNECTS_TOTAL,
  WEBSOCKET_SUBSCRIBERS,
} from '../../src/daemon/metrics.js';
import {
  DS,
  Grid,
  INSTANCE,
  RATE,
  datasourceVariable,
  instanceVariable,
  labelVariable,
  quantileTargets,
  query,
  stackedBars,
  statPanel,
  thresholds,
  timeSeries,
} from './kit.js';

const PROCESS_RESIDENT_MEMORY = `${METRIC_PREFIX}process_resident_memory_bytes`;
const PROCESS_CPU = `${METRIC_PREFIX}process_cpu_seconds_total`;
const EVENTLOOP_LAG_P99 = `${METRIC_PREFIX}nodejs_eventloop_lag_p99_seconds`;

const TAGS = ['latentwatch'];
const I = INSTANCE;
/** The instance and probe pickers (Latent signals). */
const IP = `${INSTANCE}, probe=~"$probe"`;

const fixedColor = (color: string) => [{ id: 'color', value: { mode: 'fixed', fixedColor: color } }];
/** Green at zero, `color` as soon as the value is above zero (event rates that should stay at zero). */
const zeroIsGood = (color: string) => thresholds([{ value: null, color: 'green' }, { value: 1e-9, color }]);

function base(uid: string, title: string, description: string): dashboard.DashboardBuilder {
  return new dashboard.DashboardBuilder(title)
    .uid(uid)
    .description(description)
    .tags(TAGS)
    .editable()
    .refresh('30s')
    .time({ from: 'now-1h', to: 'now' })
    .timezone('browser')
    .tooltip(dashboard.DashboardCursorSync.Crosshair)
    .link(
      new dashboard.DashboardLinkBuilder('latentwatch')
        .type(dashboard.DashboardLinkType.Dashboards)
        .tags(TAGS)
        .asDropdown(true)
        .includeVars(true)
        .keepTime(true),
    );
}

/** Overview: traffic, latency, throughput and queue, process. */
export function overview(): dashboard.DashboardBuilder {
  const d = base(
    'latentwatch-overview',
    'latentwatch / Overview',
    'Traffic, latency (vLLM-named request histograms), tokens per second and the generation queue of every latentwatch replica.',
  )
    .withVariable(datasourceVariable())
    .withVariable(instanceVariable());
  const g = new Grid(d);

  g.row('Traffic')
    .add(
      statPanel('Replicas', 'Daemons reporting build info (one per replica).', 'short') //
        .targets([query(`count(${BUILD_INFO}{${I}})`, 'replicas')]),
      4,
    )
    .add(
      statPanel('Requests/s', 'Answered HTTP requests per second, all routes.', 'reqps') //
        .targets([query(`sum(rate(${HTTP_REQUESTS_TOTAL}{${I}}[${RATE}]))`, 'requests/s')]),
      4,
    )
    .add(
      statPanel('5xx share', 'Share of answered requests with a 5xx status.', 'percentunit')
        .thresholds(thresholds([{ value: null, color: 'green' }, { value: 0.01, color: 'orange' }, { value: 0.05, color: 'red' }]))
        .noValue('0')
        .targets([
          query(
            // `or vector(0)`: no 5xx series yet means a share of 0, not "no data".
            `(sum(rate(${HTTP_REQUESTS_TOTAL}{${I}, status_class="5xx"}[${RATE}])) or vector(0)) / sum(rate(${HTTP_REQUESTS_TOTAL}{${I}}[${RATE}]))`,
            '5xx share',
          ),
        ]),
      4,
    )
    .add(
      new table.PanelBuilder()
        .title('Served model')
        .description('latentwatch_model_info per replica: model, fingerprint, precision.')
        .datasource(DS)
        .targets([query(`${MODEL_INFO}{${I}}`, '').instant().format(PromQueryFormat.Table)])
        .withTransformation({ id: 'organize', options: { excludeByName: { Time: true, Value: true, __name__: true } } }),
      12,
      4,
    )
    .add(
      timeSeries('Requests by route and status', 'Answered HTTP requests per second by route pattern and status class.', 'reqps') //
        .targets([query(`sum by (route, status_class) (rate(${HTTP_REQUESTS_TOTAL}{${I}}[${RATE}]))`, '{{route}} {{status_class}}')]),
      12,
    )
    .add(
      timeSeries('Finished generations', 'Generations finished per second (e2e latency observations), by model.', 'reqps') //
        .targets([query(`sum by (model) (rate(${E2E_REQUEST_LATENCY_SECONDS}_count{${I}}[${RATE}]))`, '{{model}}')]),
      12,
    );

  g.row('Latency')
    .add(
      timeSeries('Time to first token', 'Request arrival to first generated token: p50, p90, p99.', 's') //
        .targets(quantileTargets(TIME_TO_FIRST_TOKEN_SECONDS, ['model'], I, '{{model}} ')),
      8,
    )
    .add(
      timeSeries('Inter-token latency', 'Gap between consecutive generated tokens: p50, p90, p99.', 's') //
        .targets(quantileTargets(INTER_TOKEN_LATENCY_SECONDS, ['model'], I, '{{model}} ')),
      8,
    )
    .add(
      timeSeries('End-to-end request latency', 'Request arrival to last token: p50, p90, p99.', 's') //
        .targets(quantileTargets(E2E_REQUEST_LATENCY_SECONDS, ['model'], I, '{{model}} ')),
      8,
    )
    .add(
      timeSeries('Monitor time per token', 'What watching costs: scoring every probe, the alert rules and alerts for one generated token (p50, p90, p99); compare with the inter-token latency.', 's') //
        .targets(quantileTargets(MONITOR_SECONDS, ['model'], I, '{{model}} ')),
      8,
    )
    .add(
      timeSeries('HTTP duration p99 by route', 'p99 of HTTP request duration (streams: until the last byte), by route.', 's') //
        .targets([
          query(`histogram_quantile(0.99, sum by (le, route) (rate(${HTTP_REQUEST_DURATION_SECONDS}_bucket{${I}}[${RATE}])))`, '{{route}}'),
        ]),
      12,
    )
    .add(
      timeSeries('Upstream requests by outcome', 'Proxy mode (serve --upstream): requests forwarded to the upstream model server per second, by its HTTP status or unreachable / timeout / broken.', 'reqps') //
        .targets([query(`sum by (code) (rate(${UPSTREAM_REQUESTS_TOTAL}{${I}}[${RATE}]))`, '{{code}}')]),
      12,
    )
    .add(
      timeSeries('Upstream latency', 'Proxy mode: forwarding a request to the upstream until its last byte, p50, p90, p99.', 's') //
        .targets(quantileTargets(UPSTREAM_REQUEST_DURATION_SECONDS, [], I, '')),
      12,
    )
    .add(
      timeSeries('Mean latencies', 'Mean time to first token and mean end-to-end latency (sum / count).', 's') //
        .targets([
          query(
            `sum(rate(${TIME_TO_FIRST_TOKEN_SECONDS}_sum{${I}}[${RATE}])) / sum(rate(${TIME_TO_FIRST_TOKEN_SECONDS}_count{${I}}[${RATE}]))`,
            'mean TTFT',
            'A',
          ),
          query(
            `sum(rate(${E2E_REQUEST_LATENCY_SECONDS}_sum{${I}}[${RATE}])) / sum(rate(${E2E_REQUEST_LATENCY_SECONDS}_count{${I}}[${RATE}]))`,
            'mean e2e',
            'B',
          ),
        ]),
      12,
    );

  g.row('Throughput and queue')
    .add(
      timeSeries('Tokens per second', 'Generated tokens and prompt (prefill) tokens per second, by model.', 'short')
        .axisLabel('tokens/s')
        .targets([
          query(`sum by (model) (rate(${GENERATION_TOKENS_TOTAL}{${I}}[${RATE}]))`, '{{model}} generated', 'A'),
          query(`sum by (model) (rate(${PROMPT_TOKENS_TOTAL}{${I}}[${RATE}]))`, '{{model}} prompt', 'B'),
        ]),
      12,
    )
    .add(
      timeSeries('Running and waiting requests', 'Requests generating now and requests queued for a generation slot.', 'short') //
        .targets([
          query(`sum by (model) (${NUM_REQUESTS_RUNNING}{${I}})`, '{{model}} running', 'A'),
          query(`sum by (model) (${NUM_REQUESTS_WAITING}{${I}})`, '{{model}} waiting', 'B'),
        ]),
      12,
    );

  g.row('Process')
    .add(
      timeSeries('Resident memory', 'Resident set size per replica (model weights, KV cache, Node heap).', 'bytes') //
        .targets([query(`${PROCESS_RESIDENT_MEMORY}{${I}}`, '{{instance}}')]),
      8,
    )
    .add(
      timeSeries('CPU', 'CPU seconds per second per replica (1 = one core busy).', 'short') //
        .targets([query(`rate(${PROCESS_CPU}{${I}}[${RATE}])`, '{{instance}}')]),
      8,
    )
    .add(
      timeSeries('Event loop lag p99', 'Node.js event loop lag p99 per replica: high values delay streaming and alerts.', 's') //
        .targets([query(`${EVENTLOOP_LAG_P99}{${I}}`, '{{instance}}')]),
      8,
    );
  return d;
}

/** Latent signals: probe scores, detections (silent vs verbalised), alerts, canary. */
export function latentSignals(): dashboard.DashboardBuilder {
  const d = base(
    'latentwatch-latent-signals',
    'latentwatch / Latent signals',
    'What the probes read in the residual stream: score distributions per probe, detections silent vs verbalised, alerts by severity and the injection canary.',
  )
    .withVariable(datasourceVariable())
    .withVariable(instanceVariable())
    .withVariable(labelVariable('probe', 'Probe', `${PROBE_SCORE}_count{${I}}`, 'probe'));
  const g = new Grid(d);
  /**
   * A zero series for every probe that scored tokens: a detection counter series appears only
   * with its first increment, so without this a probe that never fired shows "no data", not 0.
   */
  const zeroPerProbe = `0 * sum by (probe) (rate(${PROBE_SCORE}_count{${IP}}[${RATE}]))`;

  g.row('Detections')
    .add(
      statPanel('Silent detections/s', 'Requests per second in which a probe fired and the text never said so.', 'short')
        .colorMode(common.BigValueColorMode.Background)
        .thresholds(zeroIsGood('red'))
        .noValue('0')
        .targets([query(`sum(rate(${LATENT_DETECTIONS_TOTAL}{${IP}, verbalized="false"}[${RATE}])) or vector(0)`, 'silent')]),
      6,
    )
    .add(
      statPanel('Verbalised detections/s', 'Requests per second in which a probe fired and the text said so.', 'short')
        .thresholds(zeroIsGood('orange'))
        .noValue('0')
        .targets([query(`sum(rate(${LATENT_DETECTIONS_TOTAL}{${IP}, verbalized="true"}[${RATE}])) or vector(0)`, 'verbalised')]),
      6,
    )
    .add(
      statPanel('Silent share', 'Share of detections whose text stayed silent.', 'percentunit')
        .noValue('-')
        .targets([
          query(
            `sum(rate(${LATENT_DETECTIONS_TOTAL}{${IP}, verbalized="false"}[${RATE}])) / sum(rate(${LATENT_DETECTIONS_TOTAL}{${IP}}[${RATE}]))`,
            'silent share',
          ),
        ]),
      6,
    )
    .add(
      statPanel('Alerts/s', 'Alerts raised per second (detections and canary failures), all severities.', 'short')
        .noValue('0')
        .targets([query(`sum(rate(${ALERTS_TOTAL}{${IP}}[${RATE}])) or vector(0)`, 'alerts/s')]),
      6,
    )
    .add(
      stackedBars(
        'Detections: silent vs verbalised',
        'Requests per second in which a probe fired, by probe and by whether the generated text verbalised it.',
        'short',
      )
        .targets([
          query(`sum by (probe) (rate(${LATENT_DETECTIONS_TOTAL}{${IP}, verbalized="false"}[${RATE}])) or ${zeroPerProbe}`, '{{probe}} silent', 'A'),
          query(`sum by (probe) (rate(${LATENT_DETECTIONS_TOTAL}{${IP}, verbalized="true"}[${RATE}])) or ${zeroPerProbe}`, '{{probe}} verbalised', 'B'),
        ])
        .overrideByRegexp('.* silent$', fixedColor('red'))
        .overrideByRegexp('.* verbalised$', fixedColor('orange')),
      12,
    )
    .add(
      stackedBars('Alerts by severity', 'Alerts raised per second, by severity and probe.', 'short')
        .targets([query(`sum by (severity, probe) (rate(${ALERTS_TOTAL}{${IP}}[${RATE}]))`, '{{severity}} {{probe}}')])
        .overrideByRegexp('^critical .*', fixedColor('red'))
        .overrideByRegexp('^warning .*', fixedColor('orange'))
        .overrideByRegexp('^info .*', fixedColor('blue')),
      12,
    );

  g.row('Probe scores')
    .add(
      new heatmap.PanelBuilder()
        .title('Probe score distribution: $probe')
        .description('Aggregated probe score at every prompt and generated position (the value the alert threshold applies to), one heatmap per probe.')
        .datasource(DS)
        .repeat('probe')
        .repeatDirection('h')
        .maxPerRow(3)
        .calculate(false)
        .rowsFrame(new heatmap.RowsHeatmapOptionsBuilder().layout(common.HeatmapCellLayout.Le))
        .yAxis(new heatmap.YAxisConfigBuilder().unit('short').decimals(2))
        .cellValues(new heatmap.CellValuesBuilder().unit('short'))
        .color(
          new heatmap.HeatmapColorOptionsBuilder()
            .mode(heatmap.HeatmapColorMode.Scheme)
            .scheme('Spectral')
            .scale(heatmap.HeatmapColorScale.Exponential)
            .exponent(0.5)
            .steps(64)
            .reverse(false)
            .fill('dark-orange'),
        )
        .targets([
          query(`sum by (le) (increase(${PROBE_SCORE}_bucket{${I}, probe=~"$probe"}[${RATE}]))`, '{{le}}') //
            .format(PromQueryFormat.Heatmap),
        ]),
      24,
      9,
    )
    .add(
      timeSeries('Probe score quantiles', 'p50, p90, p99 of the aggregated probe score per probe (compare with the probe threshold).', 'short') //
        .targets(quantileTargets(PROBE_SCORE, ['probe'], IP, '{{probe}} ')),
      8,
    )
    .add(
      timeSeries('Scored positions', 'Token positions scored per second, per probe (prompt and generated).', 'short') //
        .targets([query(`sum by (probe) (rate(${PROBE_SCORE}_count{${IP}}[${RATE}]))`, '{{probe}}')]),
      8,
    )
    .add(
      timeSeries('Mean probe score', 'Mean aggregated score per probe (sum / count).', 'short') //
        .targets([
          query(
            `sum by (probe) (rate(${PROBE_SCORE}_sum{${IP}}[${RATE}])) / sum by (probe) (rate(${PROBE_SCORE}_count{${IP}}[${RATE}]))`,
            '{{probe}}',
          ),
        ]),
      8,
    );

  g.row('Canary')
    .add(
      statPanel(
        'Canary status',
        'Result of the last canary run per replica (a known injection that must make the probe fire). Empty while the canary is off or has not run.',
        'short',
      )
        .graphMode(common.BigValueGraphMode.None)
        .colorMode(common.BigValueColorMode.Background)
        .textMode(common.BigValueTextMode.ValueAndName)
        .noValue('canary off')
        .mappings([
          {
            type: dashboard.MappingType.ValueToText,
            options: { '0': { text: 'FAILING', color: 'red', index: 0 }, '1': { text: 'OK', color: 'green', index: 1 } },
          },
        ])
        .thresholds(thresholds([{ value: null, color: 'red' }, { value: 1, color: 'green' }]))
        .targets([
          query(`${CANARY_SUCCESS}{${I}} and on (job, instance) (sum by (job, instance) (${CANARY_RUNS_TOTAL}{${I}}) > 0)`, '{{instance}}'),
        ]),
      8,
    )
    .add(
      stackedBars('Canary runs by result', 'Canary runs per second by result (success, failure, error).', 'short')
        .targets([query(`sum by (result) (rate(${CANARY_RUNS_TOTAL}{${I}}[${RATE}]))`, '{{result}}')])
        .overrideByName('success', fixedColor('green'))
        .overrideByName('failure', fixedColor('red'))
        .overrideByName('error', fixedColor('purple')),
      16,
    );

  g.row('Learning from traffic')
    .add(
      timeSeries('Probe version', 'Version of each probe in use: 0 = as loaded from its file, k = the k-th version learned from this deployment\'s traffic (docs/daemon.md, "Learning from your traffic").', 'short') //
        .targets([query(`max by (probe) (${PROBE_VERSION}{${I}})`, '{{probe}}')]),
      12,
    )
    .add(
      timeSeries('Requests learned from', 'Clean requests folded into a learning run per second (fit and calibration shares), per probe.', 'reqps') //
        .targets([query(`sum by (probe) (rate(${LEARN_REQUESTS_TOTAL}{${I}}[${RATE}]))`, '{{probe}}')]),
      12,
    );
  return d;
}

/** Alert delivery: WebSocket subscribers, slow consumers, the durable alert log. */
export function alertDelivery(): dashboard.DashboardBuilder {
  const d = base(
    'latentwatch-alert-delivery',
    'latentwatch / Alert delivery',
    'How alerts reach people: WebSocket subscribers and slow-consumer disconnects, alert-log writes, failures, pending and dropped alerts.',
  )
    .withVariable(datasourceVariable())
    .withVariable(instanceVariable());
  const g = new Grid(d);

  g.row('Now')
    .add(
      statPanel('WebSocket subscribers', 'Connected /v1/alerts subscribers, all replicas.', 'short') //
        .targets([query(`sum(${WEBSOCKET_SUBSCRIBERS}{${I}})`, 'subscribers')]),
      6,
    )
    .add(
      statPanel('Alert-log failures/s', 'Failed alert-log write transactions per second.', 'short')
        .colorMode(common.BigValueColorMode.Background)
        .thresholds(zeroIsGood('red'))
        .targets([query(`sum(rate(${ALERT_LOG_FAILURES_TOTAL}{${I}}[${RATE}]))`, 'failures/s')]),
      6,
    )
    .add(
      statPanel('Pending alerts', 'Alerts held in memory until the alert log accepts writes again.', 'short')
        .thresholds(thresholds([{ value: null, color: 'green' }, { value: 1, color: 'orange' }, { value: 1000, color: 'red' }]))
        .targets([query(`sum(${ALERT_LOG_PENDING}{${I}})`, 'pending')]),
      6,
    )
    .add(
      statPanel('Dropped from pending/s', 'Alerts delivered live only, because the pending queue was full (not durable).', 'short')
        .thresholds(zeroIsGood('red'))
        .targets([query(`sum(rate(${ALERT_LOG_DROPPED_TOTAL}{${I}}[${RATE}]))`, 'dropped/s')]),
      6,
    );

  g.row('WebSocket')
    .add(
      timeSeries('Subscribers per replica', 'Connected /v1/alerts subscribers per replica (a subscriber connects to every replica).', 'short') //
        .targets([query(`sum by (instance) (${WEBSOCKET_SUBSCRIBERS}{${I}})`, '{{instance}}')]),
      12,
    )
    .add(
      stackedBars('Slow-consumer disconnects', 'Subscribers closed with 4008 (slow consumer) per second, per replica.', 'short') //
        .targets([
          query(`sum by (instance) (rate(${WEBSOCKET_SLOW_CONSUMER_DISCONNECTS_TOTAL}{${I}}[${RATE}]))`, '{{instance}}', 'A'),
          query(`sum by (reason) (rate(${ALERT_SUBSCRIBERS_DROPPED_TOTAL}{${I}}[${RATE}]))`, 'all replicas: {{reason}}', 'B'),
        ]),
      12,
    )
    .add(
      stackedBars('Alerts by tenant', 'Alerts raised per second, by the tenant (API key name) whose request raised them.', 'short') //
        .targets([query(`sum by (tenant) (rate(${TENANT_ALERTS_TOTAL}{${I}}[${RATE}]))`, '{{tenant}}')]),
      24,
    );

  g.row('Alert log')
    .add(
      timeSeries('Alerts raised vs written', 'Alerts raised by the monitor and alerts committed to the SQLite log, per second: they should match.', 'short') //
        .targets([
          query(`sum(rate(${ALERTS_TOTAL}{${I}}[${RATE}]))`, 'raised', 'A'),
          query(`sum(rate(${ALERT_LOG_WRITES_TOTAL}{${I}}[${RATE}]))`, 'written', 'B'),
        ]),
      12,
    )
    .add(
      timeSeries('Alert-log failures and drops', 'Failed write transactions and alerts dropped from the pending queue, per second, per replica.', 'short') //
        .targets([
          query(`sum by (instance) (rate(${ALERT_LOG_FAILURES_TOTAL}{${I}}[${RATE}]))`, '{{instance}} failures', 'A'),
          query(`sum by (instance) (rate(${ALERT_LOG_DROPPED_TOTAL}{${I}}[${RATE}]))`, '{{instance}} dropped', 'B'),
        ]),
      12,
    )
    .add(
      timeSeries('Pending alerts per replica', 'Alerts waiting in memory for the log to accept writes; with serve --nats, alerts waiting in the local outbox for the shared stream.', 'short') //
        .targets([
          query(`sum by (instance) (${ALERT_LOG_PENDING}{${I}})`, '{{instance}}', 'A'),
          query(`sum by (instance) (${ALERT_OUTBOX_PENDING}{${I}})`, '{{instance}} outbox', 'B'),
        ]),
      12,
    )
    .add(
      timeSeries('Write failure share', 'failures / (writes + failures) per replica.', 'percentunit') //
        .targets([
          query(
            `sum by (instance) (rate(${ALERT_LOG_FAILURES_TOTAL}{${I}}[${RATE}])) / ` +
              `(sum by (instance) (rate(${ALERT_LOG_WRITES_TOTAL}{${I}}[${RATE}])) + sum by (instance) (rate(${ALERT_LOG_FAILURES_TOTAL}{${I}}[${RATE}])))`,
            '{{instance}}',
          ),
        ]),
      12,
    )
    .add(
      timeSeries('Group commits', 'Commits of the group-commit writer per second (one fsync each with synchronous=full), and the mean alerts each carried, per replica.', 'short') //
        .targets([
          query(`sum by (instance) (rate(${ALERT_LOG_COMMITS_TOTAL}{${I}}[${RATE}]))`, '{{instance}} commits/s', 'A'),
          query(`sum by (instance) (rate(${ALERT_LOG_COMMIT_ALERTS}_sum{${I}}[${RATE}])) / sum by (instance) (rate(${ALERT_LOG_COMMIT_ALERTS}_count{${I}}[${RATE}]))`, '{{instance}} alerts per commit', 'B'),
        ]),
      8,
    )
    .add(
      timeSeries('Commit time', 'Time one group commit takes in the writer thread, the fsync included: p50 and p99 over all replicas. An alert reaches subscribers only after its commit.', 's') //
        .targets([
          query(`histogram_quantile(0.5, sum by (le) (rate(${ALERT_LOG_COMMIT_SECONDS}_bucket{${I}}[${RATE}])))`, 'p50', 'A'),
          query(`histogram_quantile(0.99, sum by (le) (rate(${ALERT_LOG_COMMIT_SECONDS}_bucket{${I}}[${RATE}])))`, 'p99', 'B'),
        ]),
      8,
    )
    .add(
      stackedBars('Writer restarts', 'Times the alert-log writer thread died and was restarted, per replica (no acknowledged alert is lost; each restart is logged).', 'short') //
        .targets([query(`sum by (instance) (increase(${ALERT_LOG_WRITER_RESTARTS_TOTAL}{${I}}[${RATE}]))`, '{{instance}}')]),
      8,
    );
  return d;
}

/** File name (under grafana/dashboards/) → builder. */
export const DASHBOARDS: Readonly<Record<string, () => dashboard.DashboardBuilder>> = Object.freeze({
  'overview.json': overview,
  'latent-signals.json': latentSignals,
  'alert-delivery.json': alertDelivery,
});

/** The exact text `npm run dashboards` writes for each file. */
export function renderDashboards(): Map<string, string> {
  const out = new Map<string, string>();
  for (const [file, build] of Object.entries(DASHBOARDS)) out.set(file, `${JSON.stringify(build().build(), null, 2)}\n`);
  return out;
}
