/**
 * deploy/: promtool check config, check rules and test rules; the rules select only metrics the
 * daemon defines; every YAML file parses; the Kubernetes objects agree with each other (selectors,
 * ports, probes, secrets, the config file validates against the daemon's schema); the compose file
 * mounts what exists; the Dockerfile and the systemd unit have what the issue asks for.
 *
 * Docker and Kubernetes are not available here: nothing is built or applied, only linted.
 * promtool comes with Debian's prometheus package (.ci/run installs it); without it this fails.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { metricNames } from '../grafana/src/promql.js';
import { loadConfig } from '../src/daemon/config.js';
import { METRIC_FAMILIES, METRIC_NAMES, seriesNames } from '../src/daemon/metrics.js';
import { natsServerBinary } from './nats-fixture.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEPLOY = join(ROOT, 'deploy');
const RULES = join(DEPLOY, 'prometheus', 'rules', 'latentwatch.rules.yml');
const RULES_TEST = join(DEPLOY, 'prometheus', 'rules', 'latentwatch.rules.test.yml');
const PROM_CONFIG = join(DEPLOY, 'prometheus', 'prometheus.yml');

function which(cmd: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

function promtool(...args: string[]): string {
  if (!which('promtool')) throw new Error('promtool not found: install Debian\'s prometheus package (apt-get install -y prometheus; .ci/run does this)');
  const r = spawnSync('promtool', args, { encoding: 'utf8', cwd: ROOT });
  const out = `${r.stdout}${r.stderr}`;
  if (r.status !== 0) throw new Error(`promtool ${args.join(' ')} failed (${r.status}):\n${out}`);
  return out;
}

const yamlFiles = (dir: string): string[] =>
  readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => /\.ya?ml$/.test(f))
    .map((f) => join(dir, f))
    .sort();

interface Rule {
  record?: string;
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rulesFile = () => parseYaml(readFileSync(RULES, 'utf8')) as { groups: { name: string; rules: Rule[] }[] };
const allRules = () => rulesFile().groups.flatMap((g) => g.rules);

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  spec?: any;
  data?: Record<string, string>;
  stringData?: Record<string, string>;
}
const k8sObjects = (): K8sObject[] =>
  yamlFiles(join(DEPLOY, 'k8s'))
    .filter((f) => !f.endsWith('kustomization.yaml'))
    .flatMap((f) => parseAllDocuments(readFileSync(f, 'utf8')).map((d) => d.toJSON() as K8sObject));
const k8s = (kind: string, name?: string): K8sObject => {
  const o = k8sObjects().find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  if (!o) throw new Error(`no ${kind} ${name ?? ''} in deploy/k8s`);
  return o;
};
const matches = (selector: Record<string, string>, labels: Record<string, string> | undefined) =>
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);

describe('deploy/prometheus', () => {
  it('promtool check config and check rules pass', () => {
    expect(promtool('check', 'config', '--syntax-only', PROM_CONFIG)).toMatch(/SUCCESS/);
    expect(promtool('check', 'rules', RULES)).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('promtool test rules passes', () => {
    expect(promtool('test', 'rules', RULES_TEST)).toMatch(/SUCCESS/);
  });

  it('has the alerts the issue asks for, each with a severity, a summary and a unit test', () => {
    const rules = allRules();
    const alerts = rules.filter((r) => r.alert).map((r) => r.alert!);
    for (const a of ['LatentInjectionDetected', 'SilentLatentDetection', 'CanaryFailed', 'DaemonDown', 'AlertLogFailing', 'HighLatency']) expect(alerts).toContain(a);
    expect(new Set(alerts).size).toBe(alerts.length);
    for (const r of rules.filter((x) => x.alert)) {
      expect(['info', 'warning', 'critical'], r.alert).toContain(r.labels?.severity);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
      expect(r.annotations?.description, r.alert).toBeTruthy();
    }
    const tests = parseYaml(readFileSync(RULES_TEST, 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] };
    const firing = new Set(tests.tests.flatMap((t) => t.alert_rule_test ?? []).filter((t) => t.exp_alerts.length > 0).map((t) => t.alertname));
    for (const a of ['LatentInjectionDetected', 'SilentLatentDetection', 'CanaryFailed', 'DaemonDown', 'AlertLogFailing', 'HighLatency']) expect([...firing], `a test where ${a} fires`).toContain(a);
  });

  it('rule expressions select only metrics the daemon defines (plus up and the recording rules)', () => {
    const rules = allRules();
    const known = new Set<string>([
      ...METRIC_NAMES,
      ...METRIC_FAMILIES.flatMap(seriesNames),
      'up',
      ...rules.filter((r) => r.record).map((r) => r.record!),
    ]);
    const problems = rules.flatMap((r) => metricNames(r.expr).filter((n) => !known.has(n)).map((n) => `${r.alert ?? r.record}: ${n}`));
    expect(problems).toEqual([]);
    // Recording rules follow level:metric:operations.
    for (const r of rules.filter((x) => x.record)) expect(r.record).toMatch(/^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$/);
  });

  it('the scrape job is the one DaemonDown selects, and rule_files matches the rules file name', () => {
    const cfg = parseYaml(readFileSync(PROM_CONFIG, 'utf8')) as { scrape_configs: { job_name: string; metrics_path?: string }[]; rule_files: string[] };
    const job = cfg.scrape_configs.find((s) => s.job_name === 'latentwatch');
    expect(job?.metrics_path).toBe('/metrics');
    expect(allRules().find((r) => r.alert === 'DaemonDown')!.expr).toContain('job="latentwatch"');
    const glob = cfg.rule_files[0].split('/').pop()!;
    const re = new RegExp(`^${glob.replace(/\./g, '\\.').replace(/\*/g, '.*')}$`);
    expect(re.test('latentwatch.rules.yml')).toBe(true);
    expect(re.test('latentwatch.rules.test.yml')).toBe(false); // the unit tests are not loaded as rules
  });
});

describe('deploy/alertmanager', () => {
  const file = join(DEPLOY, 'alertmanager', 'alertmanager.yml');
  interface Route {
    receiver?: string;
    matchers?: string[];
    routes?: Route[];
  }
  const cfg = () => parseYaml(readFileSync(file, 'utf8')) as { route: Route; receivers: { name: string }[]; inhibit_rules: unknown[] };

  it('routes to receivers that exist, by severity and for silent detections', () => {
    const c = cfg();
    const names = new Set(c.receivers.map((r) => r.name));
    const walk = (r: Route): string[] => [r.receiver ?? '', ...(r.routes ?? []).flatMap(walk)].filter(Boolean);
    for (const n of walk(c.route)) expect(names.has(n), n).toBe(true);
    const matchers = (c.route.routes ?? []).flatMap((r) => r.matchers ?? []);
    for (const m of ['alertname="SilentLatentDetection"', 'severity="critical"', 'severity="warning"']) expect(matchers).toContain(m);
  });

  it('amtool check-config passes and routes each alert to its receiver (amtool: Debian prometheus-alertmanager, installed by scripts/test-deps.sh)', () => {
    if (!which('amtool')) throw new Error('amtool not found: run scripts/test-deps.sh (npm test does)');
    expect(execFileSync('amtool', ['check-config', file], { encoding: 'utf8' })).toMatch(/SUCCESS/);
    const route = (labels: string[]) => execFileSync('amtool', ['config', 'routes', 'test', `--config.file=${file}`, ...labels], { encoding: 'utf8' }).trim();
    expect(route(['alertname=SilentLatentDetection', 'severity=critical'])).toBe('latentwatch-security-pager');
    expect(route(['alertname=CanaryFailed', 'severity=critical'])).toBe('latentwatch-oncall-pager');
    expect(route(['alertname=LatentInjectionDetected', 'severity=warning'])).toBe('latentwatch-chat');
  });
});

describe('deploy YAML', () => {
  it('every YAML file under deploy/ and grafana/provisioning parses', () => {
    const files = [...yamlFiles(DEPLOY), ...yamlFiles(join(ROOT, 'grafana', 'provisioning'))];
    expect(files.length).toBeGreaterThan(10);
    for (const f of files) {
      for (const d of parseAllDocuments(readFileSync(f, 'utf8'))) expect(d.errors, relative(ROOT, f)).toEqual([]);
    }
  });
});

describe('deploy/k8s', () => {
  it('has a Deployment, Service, ConfigMap, Secret, PodDisruptionBudget, ServiceMonitor and the NATS StatefulSet, all in the kustomization', () => {
    const kinds = k8sObjects().map((o) => o.kind);
    for (const k of ['Deployment', 'Service', 'ConfigMap', 'Secret', 'PodDisruptionBudget', 'ServiceMonitor', 'StatefulSet']) expect(kinds).toContain(k);
    const kust = parseYaml(readFileSync(join(DEPLOY, 'k8s', 'kustomization.yaml'), 'utf8')) as { resources: string[] };
    const files = readdirSync(join(DEPLOY, 'k8s')).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
    expect([...kust.resources].sort()).toEqual(files.sort());
  });

  it('the Deployment probes /readyz and /healthz on its port, sets resources, runs as non-root, and mounts what exists', () => {
    const dep = k8s('Deployment', 'latentwatch');
    const pod = dep.spec.template;
    expect(matches(dep.spec.selector.matchLabels, pod.metadata.labels)).toBe(true);
    const c = pod.spec.containers[0];
    expect(c.readinessProbe.httpGet).toMatchObject({ path: '/readyz', port: 'http' });
    expect(c.livenessProbe.httpGet).toMatchObject({ path: '/healthz', port: 'http' });
    expect(c.ports.map((p: { name: string }) => p.name)).toContain('http');
    expect(c.resources.requests.cpu).toBeTruthy();
    expect(c.resources.requests.memory).toBeTruthy();
    expect(c.resources.limits.memory).toBeTruthy();
    expect(pod.spec.securityContext.runAsNonRoot).toBe(true);
    expect(c.securityContext.allowPrivilegeEscalation).toBe(false);
    const volumes = new Set(pod.spec.volumes.map((v: { name: string }) => v.name));
    for (const m of c.volumeMounts) expect(volumes.has(m.name), m.name).toBe(true);
    // Secrets and ConfigMaps referenced exist with those keys.
    const secret = k8s('Secret');
    for (const e of c.env.filter((x: { valueFrom?: { secretKeyRef?: unknown } }) => x.valueFrom?.secretKeyRef)) {
      const ref = e.valueFrom.secretKeyRef;
      expect(ref.name).toBe(secret.metadata.name);
      expect(Object.keys(secret.stringData ?? secret.data ?? {})).toContain(ref.key);
    }
    const cmName = pod.spec.volumes.find((v: { configMap?: { name: string } }) => v.configMap).configMap.name;
    expect(k8s('ConfigMap', cmName).data?.['config.json']).toBeTruthy();
    // Grace period covers the configured drain deadline.
    const cfg = JSON.parse(k8s('ConfigMap', cmName).data!['config.json']) as { shutdown: { deadlineSeconds: number } };
    expect(pod.spec.terminationGracePeriodSeconds).toBeGreaterThan(cfg.shutdown.deadlineSeconds + 5);
  });

  it("the ConfigMap's config file validates against the daemon's schema (with the Secret's keys in the environment)", () => {
    const dir = mkdtempSync(join(tmpdir(), 'lw-k8s-config-'));
    const path = join(dir, 'config.json');
    writeFileSync(path, k8s('ConfigMap', 'latentwatch-config').data!['config.json']);
    const env = { ...(k8s('Secret').stringData as Record<string, string>), LATENTWATCH_HOST: '0.0.0.0' };
    const { config } = loadConfig({ env, configFile: path });
    expect(config.host).toBe('0.0.0.0');
    expect(config.port).toBe(8000);
    expect(config.alertLog.path).toBe('/var/lib/latentwatch/alerts.db');
    expect(config.adminKey).toBeTruthy();
    expect(config.nats.servers.length).toBe(3);
    expect(config.nats.user).toBeTruthy();
    expect(config.nats.password).toBeTruthy();
  });

  it('the daemon publishes to a 3-node JetStream cluster: its servers are the StatefulSet pods, the stream has one copy per node, nats-server accepts the config', () => {
    const sts = k8s('StatefulSet', 'nats');
    const svc = k8s('Service', sts.spec.serviceName);
    expect(sts.spec.replicas).toBe(3);
    expect(svc.spec.clusterIP).toBe('None');
    expect(matches(svc.spec.selector, sts.spec.template.metadata.labels)).toBe(true);
    expect(matches(sts.spec.selector.matchLabels, sts.spec.template.metadata.labels)).toBe(true);
    const port = (name: string) => svc.spec.ports.find((p: { name: string }) => p.name === name).port as number;
    const pods = Array.from({ length: sts.spec.replicas as number }, (_, i) => `${sts.metadata.name}-${i}.${svc.metadata.name}`);
    // The daemon names every node at the client port, and asks for one copy of the stream per node.
    const daemon = JSON.parse(k8s('ConfigMap', 'latentwatch-config').data!['config.json']) as { nats: { servers: string[]; replicas: number } };
    expect([...daemon.nats.servers].sort()).toEqual(pods.map((p) => `nats://${p}:${port('client')}`));
    expect(daemon.nats.replicas).toBe(sts.spec.replicas);
    // The routes name every node at the cluster port; JetStream stores on the claimed volume.
    const c = sts.spec.template.spec.containers[0];
    const cmName = sts.spec.template.spec.volumes.find((v: { configMap?: { name: string } }) => v.configMap).configMap.name;
    const conf = k8s('ConfigMap', cmName).data!['nats.conf'];
    for (const p of pods) expect(conf).toContain(`nats://${p}:${port('cluster')}`);
    const dataMount = c.volumeMounts.find((m: { name: string }) => m.name === sts.spec.volumeClaimTemplates[0].metadata.name).mountPath as string;
    expect(conf).toMatch(new RegExp(`store_dir: ${dataMount}/`));
    // The credentials come from the Secret the daemon reads them from.
    const secret = k8s('Secret');
    const env: Record<string, string> = {};
    for (const e of c.env) {
      if (e.valueFrom?.secretKeyRef) {
        expect(e.valueFrom.secretKeyRef.name).toBe(secret.metadata.name);
        env[e.name] = (secret.stringData as Record<string, string>)[e.valueFrom.secretKeyRef.key];
      } else if (e.valueFrom?.fieldRef) env[e.name] = `${sts.metadata.name}-0`;
    }
    const daemonEnv = k8s('Deployment', 'latentwatch').spec.template.spec.containers[0].env as { name: string; valueFrom?: { secretKeyRef?: { key: string } } }[];
    const keyOf = (name: string) => daemonEnv.find((e) => e.name === name)?.valueFrom?.secretKeyRef?.key;
    expect(keyOf('LATENTWATCH_NATS_USER')).toBe(c.env.find((e: { name: string }) => e.name === 'NATS_USER').valueFrom.secretKeyRef.key);
    expect(keyOf('LATENTWATCH_NATS_PASSWORD')).toBe(c.env.find((e: { name: string }) => e.name === 'NATS_PASSWORD').valueFrom.secretKeyRef.key);
    // nats-server itself (Debian's, installed by scripts/test-deps.sh) parses it with that environment.
    const dir = mkdtempSync(join(tmpdir(), 'lw-nats-conf-'));
    writeFileSync(join(dir, 'nats.conf'), conf);
    const r = spawnSync(natsServerBinary(), ['-t', '-c', join(dir, 'nats.conf')], { encoding: 'utf8', env: { ...process.env, ...env } });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
  });

  it('Services, PDBs and ServiceMonitor select the pods and the scraped port', () => {
    const podLabels = k8s('Deployment').spec.template.metadata.labels;
    const natsLabels = k8s('StatefulSet', 'nats').spec.template.metadata.labels;
    const all = k8sObjects().filter((o) => o.kind === 'Service');
    for (const s of all) expect(matches(s.spec.selector, podLabels) || matches(s.spec.selector, natsLabels), s.metadata.name).toBe(true);
    // One Service for the daemon: API and alert subscribers alike (every replica serves the whole stream).
    const services = all.filter((s) => matches(s.spec.selector, podLabels));
    expect(services.map((s) => s.metadata.name)).toEqual(['latentwatch']);
    expect(services[0].spec.ports[0].targetPort).toBe('http');
    expect(matches(k8s('PodDisruptionBudget', 'latentwatch').spec.selector.matchLabels, podLabels)).toBe(true);
    expect(matches(k8s('PodDisruptionBudget', 'nats').spec.selector.matchLabels, natsLabels)).toBe(true);
    const sm = k8s('ServiceMonitor');
    const scraped = services.filter((s) => matches(sm.spec.selector.matchLabels, s.metadata.labels));
    expect(scraped.map((s) => s.metadata.name)).toEqual(['latentwatch']); // once per pod, job="latentwatch"
    expect(sm.spec.endpoints[0]).toMatchObject({ port: 'http', path: '/metrics' });
  });

  it('the README explains several replicas (own model copy, one stream, one cursor, through the Service)', () => {
    const readme = readFileSync(join(DEPLOY, 'k8s', 'README.md'), 'utf8');
    for (const s of ['own copy of the model', 'one stream', 'one cursor', '/v1/alerts?since=', 'latentwatch_alert_outbox_pending', 'nats.yaml']) expect(readme).toContain(s);
    expect(readme).not.toContain('latentwatch-replicas');
  });
});

describe('deploy/compose.yaml', () => {
  it('runs the daemon, prometheus, alertmanager and grafana, mounting files that exist', () => {
    const compose = parseYaml(readFileSync(join(DEPLOY, 'compose.yaml'), 'utf8')) as {
      services: Record<string, { volumes?: string[]; build?: { context: string; dockerfile: string }; environment?: Record<string, string> }>;
    };
    expect(Object.keys(compose.services).sort()).toEqual(['alertmanager', 'grafana', 'latentwatch', 'nats', 'prometheus']);
    // The daemon publishes its alerts to the compose NATS server, which runs JetStream.
    expect(compose.services.latentwatch.environment?.LATENTWATCH_NATS_URL).toBe('nats://nats:4222');
    expect((compose.services.nats as unknown as { command: string[] }).command).toContain('-js');
    const mounts = Object.entries(compose.services).flatMap(([name, s]) => (s.volumes ?? []).map((v) => ({ name, src: v.split(':')[0] })));
    const local = mounts.filter((m) => m.src.startsWith('.'));
    expect(local.length).toBeGreaterThan(0);
    for (const { name, src } of local) expect(existsSync(resolve(DEPLOY, src)), `${name}: ${src}`).toBe(true);
    const build = compose.services.latentwatch.build!;
    expect(existsSync(join(resolve(DEPLOY, build.context), build.dockerfile))).toBe(true);
    const grafana = compose.services.grafana.volumes!.join('\n');
    expect(grafana).toContain('../grafana/provisioning:/etc/grafana/provisioning');
    // The dashboards provider reads the path the dashboards are mounted at.
    const provider = parseYaml(readFileSync(join(ROOT, 'grafana', 'provisioning', 'dashboards', 'latentwatch.yaml'), 'utf8')) as { providers: { options: { path: string } }[] };
    expect(grafana).toContain(`../grafana/dashboards:${provider.providers[0].options.path}`);
    // The scrape target is the compose service.
    expect(readFileSync(join(DEPLOY, 'prometheus', 'prometheus.yml'), 'utf8')).toContain("targets: ['latentwatch:8000']");
  });
});

describe('deploy/Dockerfile', () => {
  const text = () => readFileSync(join(DEPLOY, 'Dockerfile'), 'utf8');

  it('is multi-stage, skips the CUDA download by environment, builds with npm ci && npm run build, runs as non-root with a healthcheck', () => {
    const t = text();
    expect(t.match(/^FROM /gm)?.length).toBeGreaterThanOrEqual(2);
    expect(t).toMatch(/^RUN npm ci[^\n]*&& npm run build/m);
    expect(t).toMatch(/^ENV ONNXRUNTIME_NODE_INSTALL=skip$/m);
    expect(t).toMatch(/^USER (node|\d+)/m);
    expect(t).toMatch(/^HEALTHCHECK [\s\S]*\/healthz/m);
    expect(t).toMatch(/^COPY --from=build /m);
  });

  it('copies only paths that exist, and everything tsconfig compiles', () => {
    const sources = [...text().matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1].split(/\s+/));
    for (const s of sources) expect(existsSync(join(ROOT, s)), s).toBe(true);
    const tsconfig = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { include: string[] };
    for (const inc of tsconfig.include) expect(sources, `tsconfig include ${inc}`).toContain(inc);
    expect(statSync(join(DEPLOY, 'Dockerfile.dockerignore')).isFile()).toBe(true);
  });
});

describe('deploy/systemd', () => {
  const unit = join(DEPLOY, 'systemd', 'latentwatch.service');

  it('runs `latentwatch serve` as an unprivileged user with state, restart and a stop timeout', () => {
    const t = readFileSync(unit, 'utf8');
    for (const s of ['[Unit]', '[Service]', '[Install]', 'User=latentwatch', 'StateDirectory=latentwatch', 'Restart=on-failure', 'KillSignal=SIGTERM', 'NoNewPrivileges=yes'])
      expect(t).toContain(s);
    expect(t).toMatch(/^ExecStart=\S*node \S*bin\/latentwatch\.js serve/m);
  });

  it('systemd-analyze verify accepts it (when systemd-analyze is installed)', () => {
    if (!which('systemd-analyze')) {
      console.warn('systemd-analyze not installed: unit checked structurally only');
      return;
    }
    const r = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8' });
    // Complaints about this host (no latentwatch user, no /opt/latentwatch) are not the unit's fault.
    const lines = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.trim() && !/latentwatch\.js|\/opt\/latentwatch|user|No such file/i.test(l));
    expect(lines).toEqual([]);
  });
});
