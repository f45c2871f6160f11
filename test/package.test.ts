/**
 * The npm package, end to end and for real: `npm pack` in a copy of this checkout (its prepack
 * builds dist/ from a clean slate), `npm install` of
 * the tarball into an empty folder the way the README tells a user to (ONNXRUNTIME_NODE_INSTALL=skip,
 * since onnxruntime-node's postinstall otherwise fetches CUDA libraries from nuget.org and fails
 * where that is unreachable), then `npx latentwatch serve --port N` from that folder, with a fresh
 * HOME (no graph cache), answers a completion on the built-in model.
 *
 * Two things keep it under the time a 2-core machine allows: the install is --prefer-offline (the
 * cache `npm ci` filled holds every locked version), and better-sqlite3's install finds its native
 * binary through prebuild-install's documented local-prebuilds directory, filled from the binary
 * `npm ci` already built here, instead of compiling sqlite3.c again (minutes at -O3). Everything
 * else (the tarball's contents, dependency resolution, the bin link, path resolution, model
 * loading, graph build, HTTP) is the real thing.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, tempDir, waitUntil } from './helpers.js';

const ROOT = new URL('..', import.meta.url).pathname;
const MODEL = 'models/qwen2-code-16m';
const rootPkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };

function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}, timeoutMs = 240_000): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  return r;
}

function mustRun(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): SpawnSyncReturns<string> {
  const r = run(cmd, args, cwd, env);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);
  return r;
}

/** The checkout as git sees it (tracked and untracked-but-not-ignored files), without dist/ or node_modules/. */
function copyCheckout(to: string): void {
  const files = mustRun('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], ROOT).stdout.split('\0').filter(Boolean);
  for (const f of files) {
    if (!existsSync(join(ROOT, f))) continue; // deleted in the working tree, not yet in the index
    mkdirSync(dirname(join(to, f)), { recursive: true });
    copyFileSync(join(ROOT, f), join(to, f));
  }
  symlinkSync(join(ROOT, 'node_modules'), join(to, 'node_modules'), 'dir');
}

/** prebuild-install's local-prebuilds tarball for better-sqlite3, made from the binary `npm ci` built. */
function localPrebuilds(dir: string): Record<string, string> {
  const pkgDir = join(ROOT, 'node_modules', 'better-sqlite3');
  const version = (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version;
  if (!existsSync(join(pkgDir, 'build', 'Release', 'better_sqlite3.node'))) throw new Error('node_modules/better-sqlite3 has no built binary: run npm ci first');
  mkdirSync(dir, { recursive: true });
  // The name prebuild-install derives from its default URL template.
  const name = `better-sqlite3-v${version}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`;
  mustRun('tar', ['-czf', join(dir, name), '-C', pkgDir, 'build/Release/better_sqlite3.node'], ROOT);
  return { npm_config_better_sqlite3_local_prebuilds: dir };
}

interface PackResult {
  filename: string;
  size: number;
  files: { path: string }[];
}

let work: string;
let checkout: string;
let app: string;
let packed: PackResult;
let install: SpawnSyncReturns<string>;
let installSeconds: number;
const children: ChildProcess[] = [];

beforeAll(() => {
  work = tempDir('lw-package-');
  checkout = join(work, 'checkout');
  app = join(work, 'app');
  copyCheckout(checkout);
  // A module that moved away earlier: a build that does not start from a clean dist/ would ship it.
  mkdirSync(join(checkout, 'dist', 'src', 'probes'), { recursive: true });
  writeFileSync(join(checkout, 'dist', 'src', 'probes', 'moved-away.js'), 'export {};\n');

  const pack = mustRun('npm', ['pack', '--json', '--pack-destination', work], checkout);
  packed = (JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as PackResult[])[0]!;

  mkdirSync(app);
  const t0 = performance.now();
  install = run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, packed.filename)], app, {
    ONNXRUNTIME_NODE_INSTALL: 'skip',
    ...localPrebuilds(join(work, 'prebuilds')),
  });
  installSeconds = (performance.now() - t0) / 1000;
}, 420_000);

afterAll(() => {
  for (const c of children) if (c.pid && c.exitCode === null && c.signalCode === null) process.kill(-c.pid, 'SIGKILL');
  // The copy, the tarball and the installed tree come to about 570 MB per run.
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('npm pack', () => {
  it('ships the compiled CLI, the default model with its probes and concepts, and configs', () => {
    const paths = new Set(packed.files.map((f) => f.path));
    const index = JSON.parse(readFileSync(join(ROOT, MODEL, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const shards = [...new Set(Object.values(index.weight_map))];
    expect(shards.length).toBeGreaterThan(0);
    for (const p of [
      'package.json',
      'README.md',
      'bin/latentwatch.js',
      'dist/src/cli/main.js',
      'dist/src/paths.js',
      'dist/src/daemon/daemon.js',
      'configs/corpus/clean.json',
      `${MODEL}/config.json`,
      `${MODEL}/model.safetensors.index.json`,
      `${MODEL}/tokenizer.json`,
      `${MODEL}/tokenizer_config.json`,
      `${MODEL}/concepts/concepts.json`,
      `${MODEL}/concepts/concepts.safetensors`,
      ...shards.map((s) => `${MODEL}/${s}`),
    ])
      expect(paths, p).toContain(p);
    expect([...paths].filter((p) => p.startsWith(`${MODEL}/probes/`) && p.endsWith('.probe.json')).length).toBeGreaterThan(0);
  });

  it('ships no stale modules, source maps, sources, tests, bench or test-only reference data', () => {
    const paths = packed.files.map((f) => f.path);
    expect(paths).not.toContain('dist/src/probes/moved-away.js');
    // Every compiled module has its source in this checkout: dist/ was emptied before the build.
    const orphans = paths.filter((p) => p.startsWith('dist/src/') && p.endsWith('.js') && !existsSync(join(checkout, p.slice('dist/'.length).replace(/\.js$/, '.ts'))));
    expect(orphans).toEqual([]);
    expect(paths.filter((p) => /\.map$|^src\/|^test\/|^bench\/|^dist\/bench\/|^grafana\/|^dist\/grafana\/|^node_modules\/|\/reference\./.test(p))).toEqual([]);
    // About 28 MB: the model's bf16 shards dominate.
    expect(packed.size).toBeLessThan(40e6);
  });
});

describe('npm install of the tarball into an empty folder', () => {
  it('succeeds, with no EBADENGINE warning on Node 20 (light-my-request stays at 6.6.0 in the consumer too)', () => {
    const out = `${install.stdout}\n${install.stderr}`;
    expect(install.status, out.slice(-4000)).toBe(0);
    expect(out).not.toMatch(/EBADENGINE/);
    // npm names every npm_config_* variable it does not know; this one is the test's, not the package's.
    expect(out.split('\n').filter((l) => /npm warn Unknown/.test(l) && !/better-sqlite3-local-prebuilds/.test(l))).toEqual([]);
    expect(out).not.toMatch(/npm error/);
    console.info(`npm install of ${packed.filename}: ${installSeconds.toFixed(1)} s`);
    expect(existsSync(join(app, 'node_modules', '.bin', 'latentwatch'))).toBe(true);
  });

  it('finds the default model and the default corpus inside the installed package, not under dist/', () => {
    const r = mustRun(
      process.execPath,
      ['--input-type=module', '-e', "const p = await import('latentwatch/dist/src/paths.js'); console.log(JSON.stringify({ root: p.PACKAGE_ROOT, model: p.DEFAULT_MODEL_DIR, corpus: p.DEFAULT_CORPUS }));"],
      app,
    );
    const p = JSON.parse(r.stdout) as { root: string; model: string; corpus: string };
    const installed = join(app, 'node_modules', rootPkg.name);
    expect(p.root).toBe(installed);
    expect(p.model).toBe(join(installed, MODEL));
    expect(p.corpus).toBe(join(installed, 'configs', 'corpus', 'clean.json'));
    expect(existsSync(join(p.model, 'config.json'))).toBe(true);
    expect(JSON.parse(readFileSync(p.corpus, 'utf8'))).toBeTypeOf('object');
  });

  it('fit-anomaly and calibrate-probe without --prompts read the shipped corpus (issue 13: they looked under dist/)', () => {
    // The default corpus loads before the model, so a missing model is the first error when the
    // corpus was found; LW_ERR_CORPUS_NOT_FOUND here means the default path is wrong.
    for (const cmd of ['fit-anomaly', 'calibrate-probe']) {
      const args = ['latentwatch', cmd, '--model', join(work, 'no-such-model'), '--out', join(work, `${cmd}.probe.json`)];
      if (cmd === 'calibrate-probe') args.push('--probe', join(app, 'node_modules', rootPkg.name, MODEL, 'probes', 'generic-injection.probe.json'));
      const r = run('npx', args, app, { npm_config_update_notifier: 'false' }, 60_000);
      expect(r.status, cmd).not.toBe(0);
      expect(r.stderr, `${cmd}: ${r.stderr}`).toMatch(/LW_ERR_MODEL_NOT_FOUND/);
      expect(r.stderr).not.toMatch(/LW_ERR_CORPUS_NOT_FOUND/);
    }
  });

  it('npx latentwatch serve --port N answers POST /v1/completions on the built-in model', async () => {
    expect(install.status).toBe(0);
    const port = await freePort();
    const home = join(work, 'home');
    mkdirSync(home);
    // Own process group: npx runs the daemon as a grandchild, and afterAll must be able to stop both.
    const child = spawn('npx', ['latentwatch', 'serve', '--port', String(port)], {
      cwd: app,
      env: { ...process.env, HOME: home, npm_config_update_notifier: 'false' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    children.push(child);
    let log = '';
    child.stdout!.on('data', (b: Buffer) => (log += String(b)));
    child.stderr!.on('data', (b: Buffer) => (log += String(b)));
    const url = `http://127.0.0.1:${port}`;
    await waitUntil(
      async () => {
        if (child.exitCode !== null) throw new Error(`serve exited ${child.exitCode}`);
        return (await fetch(`${url}/readyz`)).ok;
      },
      { timeoutMs: 180_000, stepMs: 200, what: 'the installed latentwatch serve to be ready', detail: () => log.slice(-4000) },
    );
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'qwen2-code-16m', prompt: 'def load(path):\n', max_tokens: 8, temperature: 0 }),
    });
    const body = (await res.json()) as { choices?: { text: string }[]; usage?: { completion_tokens: number }; latentwatch?: unknown };
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body.choices?.[0]?.text).toBeTypeOf('string');
    expect(body.usage?.completion_tokens).toBeGreaterThan(0);
    expect(body.latentwatch).toBeTypeOf('object');
    // The graph was built into the fresh HOME: the installed package compiled the model itself.
    expect(existsSync(join(home, '.cache', 'latentwatch', 'builds'))).toBe(true);

    process.kill(-child.pid!, 'SIGTERM');
    await waitUntil(() => child.exitCode !== null || child.signalCode !== null, { timeoutMs: 30_000, what: 'serve to stop on SIGTERM', detail: () => log.slice(-2000) });
  }, 240_000);
});
