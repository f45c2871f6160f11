import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CONFIG_SCHEMA, DEFAULTS, loadConfig, parseFlags, ruleForProbe } from '../src/daemon/config.js';
import { thrown } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'lw-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, value: unknown): string {
  const p = join(dir, name);
  writeFileSync(p, typeof value === 'string' ? value : JSON.stringify(value));
  return p;
}

describe('daemon config', () => {
  it('defaults: local-only without keys, and says so', () => {
    const { config, notices, sources } = loadConfig({ cwd: dir });
    expect(config.host).toBe('127.0.0.1');
    expect(config.port).toBe(8000);
    expect(config.apiKeys).toEqual([]);
    expect(config.allowInjection).toBe(false);
    expect(config.alertLog.path).toBe(join(dir, '.latentwatch/alerts.db'));
    expect(notices.some((n) => n.includes('no API key') && n.includes('127.0.0.1'))).toBe(true);
    expect(sources.get('/host')).toBe('default');
  });

  it('merges defaults < file < env < flags, objects key by key, and records sources', () => {
    const cfg = file('a.json', {
      port: 9000,
      probes: ['p/one.probe.json'],
      apiKeys: ['file-key'],
      limits: { maxTokens: 100 },
      alerts: { rules: { 'probe.a': { severity: 'critical', minConsecutive: 3 } } },
      alertLog: { path: 'data/alerts.db' },
    });
    const { config, sources, notices } = loadConfig({
      cwd: '/work',
      env: { LATENTWATCH_CONFIG: cfg, LATENTWATCH_PORT: '9100', LATENTWATCH_API_KEY: 'k1, k2', LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_ADMIN_KEY: 'admin-key' },
      argv: ['--port=9200', '--probe', 'x.probe.json', '--probe', '/abs/y.probe.json', '--max-concurrent', '8'],
    });
    expect(config.port).toBe(9200);
    expect(sources.get('/port')).toBe('flag --port');
    expect(config.apiKeys).toEqual(['k1', 'k2']); // env replaces the file's list
    expect(sources.get('/apiKeys')).toBe('env LATENTWATCH_API_KEY');
    expect(config.host).toBe('0.0.0.0'); // keys configured: all interfaces by default
    expect(notices.some((n) => n.includes('no API key'))).toBe(false);
    expect(config.allowInjection).toBe(true);
    expect(config.limits).toEqual({ ...DEFAULTS.limits, maxTokens: 100, maxConcurrent: 8 });
    expect(sources.get('/limits/maxTokens')).toBe(`file ${cfg}`);
    expect(sources.get('/limits/maxQueue')).toBe('default');
    expect(config.probes).toEqual(['/work/x.probe.json', '/abs/y.probe.json']); // flags replace, relative to cwd
    expect(config.alertLog.path).toBe(join(dir, 'data/alerts.db')); // file paths relative to the file
    expect(config.alertLog.retentionDays).toBe(DEFAULTS.alertLog.retentionDays);
    expect(ruleForProbe(config, 'probe.a', 0.5)).toEqual({ threshold: 0.5, minConsecutive: 3, cooldownTokens: 32, cooldownSeconds: 0, severity: 'critical' });
    expect(ruleForProbe(config, 'other', 0.7).severity).toBe('warning');
  });

  it('engineThread: on by default, off by env or flag, the flag winning', () => {
    expect(loadConfig({ cwd: '/work', env: {}, argv: [] }).config.engineThread).toBe(true);
    expect(loadConfig({ cwd: '/work', env: { LATENTWATCH_ENGINE_THREAD: '0' }, argv: [] }).config.engineThread).toBe(false);
    expect(loadConfig({ cwd: '/work', env: {}, argv: ['--no-engine-thread'] }).config.engineThread).toBe(false);
    const flagged = loadConfig({ cwd: '/work', env: { LATENTWATCH_ENGINE_THREAD: '0' }, argv: ['--engine-thread'] });
    expect(flagged.config.engineThread).toBe(true);
    expect(flagged.sources.get('/engineThread')).toBe('flag --engine-thread');
  });

  it('spinning: off by default, on by env or flag, the flag winning, type-checked', () => {
    expect(loadConfig({ cwd: '/work', env: {}, argv: [] }).config.spinning).toBe(false);
    expect(loadConfig({ cwd: '/work', env: { LATENTWATCH_SPINNING: '1' }, argv: [] }).config.spinning).toBe(true);
    expect(loadConfig({ cwd: '/work', env: {}, argv: ['--spinning'] }).config.spinning).toBe(true);
    const flagged = loadConfig({ cwd: '/work', env: { LATENTWATCH_SPINNING: '1' }, argv: ['--no-spinning'] });
    expect(flagged.config.spinning).toBe(false);
    expect(flagged.sources.get('/spinning')).toBe('flag --spinning');
    expect(() => loadConfig({ cwd: '/work', env: { LATENTWATCH_CONFIG: file('spin.json', { spinning: 'yes' }) }, argv: [] })).toThrow(/spinning/);
  });

  it('freezes the result deeply', () => {
    const { config } = loadConfig({ env: { LATENTWATCH_API_KEY: 'k' } });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.limits)).toBe(true);
    expect(Object.isFrozen(config.apiKeys)).toBe(true);
    expect(Object.isFrozen(config.alerts.defaultRule)).toBe(true);
    expect(() => {
      (config.limits as { maxTokens: number }).maxTokens = 1;
    }).toThrow(TypeError);
    expect(() => (config.apiKeys as string[]).push('x')).toThrow(TypeError);
  });

  it('refuses a non-loopback host without an API key', () => {
    const e = thrown(() => loadConfig({ env: { LATENTWATCH_HOST: '0.0.0.0' } }));
    expect(e.code).toBe('LW_ERR_CONFIG_INVALID');
    expect(e.details?.path).toBe('/host');
    expect(e.details?.source).toBe('env LATENTWATCH_HOST');
    expect(loadConfig({ env: { LATENTWATCH_HOST: '::1' } }).config.host).toBe('::1');
    expect(loadConfig({ env: { LATENTWATCH_HOST: '0.0.0.0', LATENTWATCH_API_KEY: 'k' } }).config.host).toBe('0.0.0.0');
  });

  it('coded errors carry the JSON path and the layer that set the value', () => {
    let e = thrown(() => loadConfig({ env: { LATENTWATCH_PORT: 'eighty' } }));
    expect(e.code).toBe('LW_ERR_CONFIG_INVALID');
    expect(e.status).toBe(500);
    expect(e.details?.path).toBe('/port');
    expect(e.details?.source).toBe('env LATENTWATCH_PORT');
    expect(e.message).toContain('/port');

    e = thrown(() => loadConfig({ configFile: file('typo.json', { limits: { maxToken: 5 } }) }));
    expect(e.details?.path).toBe('/limits/maxToken');
    expect(String(e.details?.source)).toMatch(/^file /);

    e = thrown(() => loadConfig({ configFile: file('rule.json', { alerts: { rules: { p: { severity: 'loud' } } } }) }));
    expect(e.details?.path).toBe('/alerts/rules/p/severity');

    e = thrown(() => loadConfig({ argv: ['--port', '70000'] }));
    expect(e.details?.path).toBe('/port');
    expect(e.details?.source).toBe('flag --port');

    e = thrown(() => loadConfig({ env: { LATENTWATCH_ALLOW_INJECTION: 'maybe' } }));
    expect(e.details?.path).toBe('/allowInjection');

    e = thrown(() => loadConfig({ env: { LATENTWATCH_API_KEY: 'same', LATENTWATCH_ADMIN_KEY: 'same' } }));
    expect(e.details?.path).toBe('/adminKey');

    e = thrown(() => loadConfig({ configFile: file('bad.json', '{"port": ') }));
    expect(e.code).toBe('LW_ERR_CONFIG_FILE_UNREADABLE');
    e = thrown(() => loadConfig({ configFile: join(dir, 'missing.json') }));
    expect(e.code).toBe('LW_ERR_CONFIG_FILE_UNREADABLE');
    e = thrown(() => loadConfig({ configFile: file('arr.json', '[]') }));
    expect(e.code).toBe('LW_ERR_CONFIG_FILE_UNREADABLE');
  });

  it('parses flags strictly', () => {
    expect(parseFlags(['--allow-injection', '--no-canary', '--log-level', 'debug'], '/w').layer).toEqual({
      allowInjection: true,
      canary: { enabled: false },
      logLevel: 'debug',
    });
    expect(parseFlags(['--config', 'c.json'], '/w').configFile).toBe('/w/c.json');
    expect(thrown(() => parseFlags(['--api-key', 'k'])).code).toBe('LW_ERR_CONFIG_FLAG_UNKNOWN'); // keys stay out of ps
    expect(thrown(() => parseFlags(['--port'])).code).toBe('LW_ERR_CONFIG_FLAG_UNKNOWN');
    expect(thrown(() => parseFlags(['serve'])).code).toBe('LW_ERR_CONFIG_FLAG_UNKNOWN');
  });

  it('notices injection without an admin key; blank env values count as unset', () => {
    const { config, notices } = loadConfig({ env: { LATENTWATCH_ALLOW_INJECTION: 'true', LATENTWATCH_PORT: '  ' } });
    expect(config.port).toBe(8000);
    expect(notices.some((n) => n.includes('no admin key'))).toBe(true);
  });

  it('the schema accepts exactly the defaults plus a host', () => {
    expect(CONFIG_SCHEMA.additionalProperties).toBe(false);
    expect([...CONFIG_SCHEMA.required].sort()).toEqual([...Object.keys(DEFAULTS), 'host'].sort());
  });
});

describe('execution provider', () => {
  it('defaults to cpu; set by --provider or LATENTWATCH_PROVIDER, the flag winning', () => {
    expect(loadConfig({ cwd: dir }).config.provider).toBe('cpu');
    const fromFlag = loadConfig({ cwd: dir, argv: ['--provider', 'cpu'], env: { LATENTWATCH_PROVIDER: 'cuda' } });
    expect(fromFlag.config.provider).toBe('cpu');
    expect(fromFlag.sources.get('/provider')).toBe('flag --provider');
    const fromEnv = loadConfig({ cwd: dir, env: { LATENTWATCH_PROVIDER: 'cuda' } });
    expect(fromEnv.config.provider).toBe('cuda');
    expect(fromEnv.sources.get('/provider')).toBe('env LATENTWATCH_PROVIDER');
    expect(loadConfig({ configFile: file('gpu.json', { provider: 'cuda' }) }).config.provider).toBe('cuda');
  });

  it('an unknown provider is LW_ERR_CONFIG_INVALID at /provider, naming where it came from', () => {
    const e = thrown(() => loadConfig({ cwd: dir, argv: ['--provider=tpu'] }));
    expect(e.code).toBe('LW_ERR_CONFIG_INVALID');
    expect(e.details?.path).toBe('/provider');
    expect(e.details?.source).toBe('flag --provider');
    expect(thrown(() => loadConfig({ cwd: dir, env: { LATENTWATCH_PROVIDER: 'CPU' } })).details?.path).toBe('/provider');
  });
});

describe('serve flags go through the shared parser', () => {
  it('apply in command-line order: the last of --X / --no-X wins', () => {
    expect(parseFlags(['--no-spinning', '--spinning']).layer).toEqual({ spinning: true });
    expect(parseFlags(['--spinning', '--no-spinning']).layer).toEqual({ spinning: false });
    expect(parseFlags(['--port', '1', '--port=2']).layer).toEqual({ port: 2 });
  });

  it('refuse what the CLI parser refuses, naming the flag', () => {
    for (const [argv, flag] of [
      [['--spinning=1'], '--spinning'], // booleans take no value
      [['--no-port'], '--no-port'], // only booleans have a --no- form
      [['--port', '--spinning'], '--port'], // a value that looks like a flag is a missing value
      [['--', '--port', '1'], '--'],
      [['-p', '1'], '-p'],
    ] as const) {
      const e = thrown(() => parseFlags(argv));
      expect(e.code).toBe('LW_ERR_CONFIG_FLAG_UNKNOWN');
      expect(e.details?.flag).toBe(flag);
    }
    expect(parseFlags(['--served-model-name=-odd']).layer).toEqual({ servedModelName: '-odd' });
  });
});

describe('alertLog.waitForCommitMs', () => {
  it('defaults to 50; set by the file or LATENTWATCH_ALERT_LOG_WAIT_FOR_COMMIT_MS, the env winning', () => {
    expect(loadConfig({ cwd: dir }).config.alertLog.waitForCommitMs).toBe(50);
    const cfg = file('wait.json', { alertLog: { waitForCommitMs: 0 } });
    const fromFile = loadConfig({ configFile: cfg });
    expect(fromFile.config.alertLog.waitForCommitMs).toBe(0);
    expect(fromFile.config.alertLog.groupCommit).toBe(true); // the rest of alertLog keeps its defaults
    expect(fromFile.sources.get('/alertLog/waitForCommitMs')).toBe(`file ${cfg}`);
    const fromEnv = loadConfig({ configFile: cfg, env: { LATENTWATCH_ALERT_LOG_WAIT_FOR_COMMIT_MS: '20' } });
    expect(fromEnv.config.alertLog.waitForCommitMs).toBe(20);
    expect(fromEnv.sources.get('/alertLog/waitForCommitMs')).toBe('env LATENTWATCH_ALERT_LOG_WAIT_FOR_COMMIT_MS');
  });

  it('refuses a negative, fractional, too large or non-numeric wait with LW_ERR_CONFIG_INVALID at its path', () => {
    for (const value of ['-1', '2.5', '1001', 'soon']) {
      const e = thrown(() => loadConfig({ env: { LATENTWATCH_ALERT_LOG_WAIT_FOR_COMMIT_MS: value } }));
      expect(e.code).toBe('LW_ERR_CONFIG_INVALID');
      expect(e.details?.path).toBe('/alertLog/waitForCommitMs');
      expect(e.details?.source).toBe('env LATENTWATCH_ALERT_LOG_WAIT_FOR_COMMIT_MS');
    }
    const e = thrown(() => loadConfig({ configFile: file('wait-bad.json', { alertLog: { waitForCommitMs: '50' } }) }));
    expect(e.code).toBe('LW_ERR_CONFIG_INVALID');
    expect(e.details?.path).toBe('/alertLog/waitForCommitMs');
    expect(String(e.details?.source)).toMatch(/^file /);
  });
});

describe('learn.targetFpr', () => {
  it('defaults to 0.005; set by LATENTWATCH_LEARN_TARGET_FPR or --learn-target-fpr, the flag winning', () => {
    expect(loadConfig({ cwd: dir }).config.learn.targetFpr).toBe(0.005);
    const fromEnv = loadConfig({ cwd: dir, env: { LATENTWATCH_LEARN_TARGET_FPR: '0.01' } });
    expect(fromEnv.config.learn.targetFpr).toBe(0.01);
    expect(fromEnv.sources.get('/learn/targetFpr')).toBe('env LATENTWATCH_LEARN_TARGET_FPR');
    const both = loadConfig({ cwd: dir, env: { LATENTWATCH_LEARN_TARGET_FPR: '0.01' }, argv: ['--learn-target-fpr', '0.002'] });
    expect(both.config.learn.targetFpr).toBe(0.002);
  });

  it('refuses 0, more than 0.5 and non-numbers with LW_ERR_CONFIG_INVALID at its path', () => {
    for (const value of ['0', '0.6', 'low']) {
      const e = thrown(() => loadConfig({ cwd: dir, argv: ['--learn-target-fpr', value] }));
      expect(e.code).toBe('LW_ERR_CONFIG_INVALID');
      expect(e.details?.path).toBe('/learn/targetFpr');
      expect(e.details?.source).toBe('flag --learn-target-fpr');
    }
  });
});

describe('in-memory alert log from flags and environment', () => {
  it('keeps :memory: as SQLite in-memory, not a file named after it', () => {
    const fromFlag = loadConfig({ argv: ['--alert-log', ':memory:'], cwd: '/tmp' }).config;
    expect(fromFlag.alertLog.path).toBe(':memory:');
    const fromEnv = loadConfig({ env: { LATENTWATCH_ALERT_LOG: ':memory:' }, cwd: '/tmp' }).config;
    expect(fromEnv.alertLog.path).toBe(':memory:');
  });
});
