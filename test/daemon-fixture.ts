/**
 * Test setup for daemon tests: trains a small linear probe on qwen2-code-16m in a few seconds
 * (a fixed random direction injected at layer 3, activations read at layer 5, difference of means)
 * and starts daemons against it, in process or as a child process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { Engine } from '../src/engine/engine.js';
import { residPost } from '../src/hooks.js';
import { createRng } from '../src/rng.js';
import { fitDiffMeans } from '../src/lab/logistic.js';
import { matrix } from '../src/probes/matrix.js';
import { linearBody, writeProbeFile, type ProbeFile } from '../src/probes/probe-file.js';
import { createProbe } from '../src/probes/probe.js';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon, type Daemon } from '../src/daemon/daemon.js';
import { CODE16M, TEST_CACHE, tempDir, waitUntil } from './helpers.js';
import { expect } from 'vitest';

export const INJECT_LAYER = 3;
export const PROBE_LAYER = 5;
const PROMPTS = ['import os\n\ndef ', 'class Cache:\n    def ', '# parse the config\nfor line in ', 'def test_add():\n    assert ', 'with open(path) as f:\n    ', 'x = [i * 2 for i in '];

export interface TestProbe {
  path: string;
  /** Unit direction; inject it with scale INJECT_SCALE. */
  vector: number[];
  scale: number;
}

/** Trains the probe and writes it to a temp dir (deterministic: fixed seed). */
export async function trainTestProbe(): Promise<TestProbe> {
  const engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE });
  const D = engine.config.hiddenSize;
  const rnd = createRng(1234).next;
  const v = Float32Array.from({ length: D }, () => rnd() * 2 - 1);
  const n = Math.hypot(...v);
  for (let i = 0; i < D; i++) v[i] /= n;
  const tok = engine.tokenizer!;
  // Mean residual norm at the injection layer sets the strength (1x, as the trials' relative mode).
  const rows: Float32Array[] = [];
  const labels: number[] = [];
  let normSum = 0;
  let normCount = 0;
  const hook = residPost(PROBE_LAYER);
  for (const text of PROMPTS) {
    const ids = tok.encode(text);
    const clean = await engine.newSequence(ids.length).forward(ids, { taps: [hook, residPost(INJECT_LAYER)], logits: 'none' });
    const base = clean.taps.get(residPost(INJECT_LAYER))!.data;
    for (let p = 0; p < ids.length; p++) {
      normSum += Math.hypot(...base.subarray(p * D, (p + 1) * D));
      normCount++;
    }
  }
  const scale = normSum / normCount;
  for (const text of PROMPTS) {
    const ids = tok.encode(text);
    for (const inject of [false, true]) {
      const seq = engine.newSequence(ids.length);
      const r = await seq.forward(ids, { taps: [hook], logits: 'none', injections: inject ? [{ hook: residPost(INJECT_LAYER), vector: v, scale, window: { kind: 'all' } }] : [] });
      seq.release();
      const data = r.taps.get(hook)!.data;
      for (let p = 0; p < ids.length; p++) {
        rows.push(data.slice(p * D, (p + 1) * D));
        labels.push(inject ? 1 : 0);
      }
    }
  }
  const x = matrix(rows.length, D, Float32Array.from(rows.flatMap((r) => Array.from(r))));
  const model = fitDiffMeans(x, labels);
  const body = linearBody(model, 'direction');
  const figures = { trials: rows.length, concepts: ['random-direction'], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };
  const draft: ProbeFile = {
    formatVersion: 1,
    id: 'test-injection',
    label: 'test injection probe',
    description: 'difference of means, random direction at layer 3 read at layer 5 (test fixture)',
    modelFingerprint: engine.fingerprint,
    hook,
    dModel: D,
    threshold: 0,
    targetFpr: 0,
    aggregator: { kind: 'max' },
    training: figures,
    evaluation: figures,
    ...body,
  };
  // Threshold: above every clean position's score, below the injected ones' (checked below).
  const probe = createProbe(draft);
  const scores = rows.map((r) => probe.scoreRow(r, 0));
  const cleanMax = Math.max(...scores.filter((_, i) => labels[i] === 0));
  const injMin = Math.min(...scores.filter((_, i) => labels[i] === 1));
  if (!(injMin > cleanMax)) throw new Error(`test probe does not separate: clean max ${cleanMax}, injected min ${injMin}`);
  const path = join(tempDir('lw-probe-'), 'test-injection.probe.json');
  await writeProbeFile(path, { ...draft, threshold: (cleanMax + injMin) / 2 });
  await engine.close();
  return { path, vector: Array.from(v), scale };
}

export const ADMIN_KEY = 'admin-secret-key';
export const API_KEY = 'user-secret-key';

/**
 * A greedy 8-token completion on the built-in model; asserts 200 and returns the `latentwatch`
 * verdict (typed by the caller: tests read different fields of it).
 */
export async function completeVerdict<V>(url: string, prompt: string, extra: Record<string, unknown> = {}, key = API_KEY): Promise<V> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: 'qwen2-code-16m', prompt, max_tokens: 8, temperature: 0, ...extra }),
  });
  expect(r.status).toBe(200);
  return ((await r.json()) as { latentwatch: V }).latentwatch;
}

/**
 * An in-process daemon on `model` with its bundled probes (unless argv names --probe), the test keys,
 * admin injection allowed, port 0 and a fresh alert log.
 */
export async function startModelDaemon(model: string, extraArgv: string[] = [], env: Record<string, string> = {}): Promise<Daemon> {
  const { config } = loadConfig({
    env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1', ...env },
    argv: ['--model', model, '--port', '0', '--log-level', 'silent', '--alert-log', join(tempDir('lw-alerts-'), 'alerts.db'), ...extraArgv],
  });
  return startDaemon(config);
}

export async function startTestDaemon(probe: TestProbe, extraArgv: string[] = [], env: Record<string, string> = {}): Promise<Daemon> {
  return startModelDaemon(CODE16M, ['--probe', probe.path, ...extraArgv], env);
}

const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;

export interface ServeProcess {
  child: ChildProcess;
  /** http://127.0.0.1:PORT, the address the daemon reported listening on. */
  url: string;
  port: number;
  /** Everything it wrote so far (stdout log and stderr). */
  log(): string;
}

/**
 * `latentwatch serve` as a separate process (for kill -9 and signals) on a port it binds itself
 * (`--port 0`): resolves once it has logged its address and /readyz answers 200. Logs at info, the
 * level of the "listening on URL" line; `argv` may add flags (a later --log-level wins).
 */
export async function spawnServe(argv: readonly string[], env: Record<string, string>, o: { what?: string; timeoutMs?: number } = {}): Promise<ServeProcess> {
  const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--log-level', 'info', ...argv], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  let url: string | null = null;
  const onData = (b: Buffer) => {
    log += String(b);
    url ??= /listening on (http:\/\/[^\s"]+)/.exec(log)?.[1] ?? null;
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const what = o.what ?? 'latentwatch serve';
  try {
    await waitUntil(
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited ${child.exitCode ?? child.signalCode}`);
        return url !== null && (await fetch(`${url}/readyz`)).ok;
      },
      { timeoutMs: o.timeoutMs ?? 120_000, stepMs: 100, what: `${what} to listen and be ready`, detail: () => log.slice(-4000) },
    );
  } catch (e) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    throw e;
  }
  return { child, url: url!, port: Number(new URL(url!).port), log: () => log };
}

/** The daemon on the test probe as a separate process (for kill -9); resolves once it is ready. */
export function spawnDaemon(probe: TestProbe, alertLog: string): Promise<ServeProcess> {
  return spawnServe(['--model', CODE16M, '--probe', probe.path, '--alert-log', alertLog], {
    LATENTWATCH_API_KEY: API_KEY,
    LATENTWATCH_ADMIN_KEY: ADMIN_KEY,
    LATENTWATCH_ALLOW_INJECTION: '1',
    LATENTWATCH_HOST: '127.0.0.1',
  });
}
