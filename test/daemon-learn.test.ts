/**
 * Learning the generic detector from live traffic (issue 12), on the real daemon with the built-in
 * model and its bundled probes, over real HTTP and real files: admin-only, bounded, injected
 * requests not counted, statistics persisted and resumed across a restart, the learned probe
 * written with its fingerprint and counts and swapped in (the verdict's threshold changes), kept
 * across a restart, and another model's statistics or probe refused. Also: the Gaussian fitted
 * from sufficient statistics matches the lab's fitGaussian on the same rows.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fitGaussian } from '../src/lab/gaussian-fit.js';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon, type Daemon } from '../src/daemon/daemon.js';
import { fitGaussianFromMoments, MomentAccumulator, momentLength } from '../src/probes/moments.js';
import { SpreadMoments } from '../src/probes/window.js';
import { DetectorLearner, type LearnSpec } from '../src/probes/learn.js';
import { matrix } from '../src/probes/matrix.js';
import { createRng } from '../src/rng.js';
import { ADMIN_KEY, API_KEY, completeVerdict } from './daemon-fixture.js';
import { corpusRequests, loadCorpus } from '../src/corpus.js';
import { DEFAULT_CORPUS } from '../src/paths.js';
import { CODE16M, tempDir, waitUntil } from './helpers.js';

const expected = JSON.parse(readFileSync(new URL('./fixtures/probes/expected.json', import.meta.url), 'utf8')) as { gaussian: { name: string; rows: number; cols: number; X: number[] }[] };

/** fitGaussian (rows) against fitGaussianFromMoments (the same rows folded into moments). */
function compare(rows: number, cols: number, data: Float32Array) {
  const lab = fitGaussian(matrix(rows, cols, data));
  const acc = new MomentAccumulator(cols);
  for (let i = 0; i < rows; i++) acc.add(data, i * cols);
  const mom = fitGaussianFromMoments(acc);
  if (lab.form !== 'cholesky' || mom.form !== 'cholesky') throw new Error('expected the full form');
  const rel = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < a.length; i++) {
      worst = Math.max(worst, Math.abs(a[i] - b[i]));
      scale = Math.max(scale, Math.abs(b[i]));
    }
    return worst / scale;
  };
  return { shrinkage: [mom.shrinkage, lab.shrinkage], mean: rel(mom.mean, lab.mean), factor: rel(mom.factor, lab.factor) };
}

describe('Gaussian from sufficient statistics = fitGaussian on the rows', () => {
  // Tolerance: shrinkage within 1e-9 absolute, mean and Cholesky factor within 1e-9 of their largest entry.
  for (const c of expected.gaussian) {
    it(`${c.name} (the numpy reference's rows)`, () => {
      const r = compare(c.rows, c.cols, Float32Array.from(c.X));
      expect(Math.abs(r.shrinkage[0] - r.shrinkage[1])).toBeLessThan(1e-9);
      expect(r.mean).toBeLessThan(1e-9);
      expect(r.factor).toBeLessThan(1e-9);
    });
  }
  it('rows with a large common offset and correlated features (d = 48, n = 600), as layer activations have', () => {
    const rng = createRng(7);
    const d = 48;
    const n = 600;
    const mix = Float64Array.from({ length: d * d }, () => rng.gaussian() / Math.sqrt(d));
    const data = new Float32Array(n * d);
    for (let i = 0; i < n; i++) {
      const z = Array.from({ length: d }, () => rng.gaussian());
      for (let a = 0; a < d; a++) {
        let v = 0;
        for (let b = 0; b < d; b++) v += mix[a * d + b] * z[b];
        data[i * d + a] = 300 + 40 * Math.sin(a) + v;
      }
    }
    const r = compare(n, d, data);
    expect(r.shrinkage[1]).toBeGreaterThan(0);
    expect(Math.abs(r.shrinkage[0] - r.shrinkage[1])).toBeLessThan(1e-9);
    expect(r.mean).toBeLessThan(1e-9);
    expect(r.factor).toBeLessThan(1e-9);
  });
});

describe('the always-fitted baseline in a learner', () => {
  const d = 16;
  const spec: LearnSpec = {
    probeId: 'generic-injection',
    label: 'generic injection (any direction)',
    modelFingerprint: 'lw1-00000000000000000000000000000000',
    dModel: d,
    aggregator: { kind: 'rolling-mean', window: 8, skip: 4 },
    targetFpr: 0.01,
    requests: 12,
    fitRequests: 7,
    members: [
      { id: 'update-L1', hooks: ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'], difference: true },
      { id: 'update-L1-w4', hooks: ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'], difference: true, window: { size: 4, positions: 'novel-bigram', minCount: 2, spread: { scale: new Array<number>(d).fill(1), reference: 1 } } },
    ],
    maxPositions: 1024,
  };
  const rng = createRng(3);
  const request = (learner: DetectorLearner, n: number) => {
    const rows = learner.newRequest();
    const tap = () => ({ positions: n, dModel: d, data: Float32Array.from({ length: n * d }, () => rng.gaussian()) });
    rows.observe(new Map([['blocks.0.hook_resid_post', tap()], ['blocks.1.hook_resid_post', tap()]]), Array.from({ length: n }, (_, i) => i % 5));
    return rows;
  };

  it('folds rows as a fit request does, apart from the traffic and outside the plan, and survives serialisation', () => {
    const withBaseline = new DetectorLearner(spec);
    const asTraffic = new DetectorLearner(spec);
    const junk = request(withBaseline, 30);
    withBaseline.addBaseline(junk);
    asTraffic.add(junk);
    expect([withBaseline.fitRequests, withBaseline.baselineRequests, withBaseline.baselinePositions]).toEqual([0, 1, 26]);
    expect(asTraffic.fitRequests).toBe(1);
    for (let i = 0; i < spec.members.length; i++) {
      expect(Array.from(withBaseline.baselineMoments[i].toArray())).toEqual(Array.from(asTraffic.moments[i].toArray()));
      expect(withBaseline.moments[i].n).toBe(0);
    }
    expect(Array.from(withBaseline.baselineSpreads[1]!.toArray())).toEqual(Array.from(asTraffic.spreads[1]!.toArray()));
    const back = DetectorLearner.deserialize(withBaseline.serialize(), spec.modelFingerprint).learner;
    expect([back.baselineRequests, back.baselinePositions, back.fitRequests]).toEqual([1, 26, 0]);
    for (let i = 0; i < spec.members.length; i++) expect(Array.from(back.baselineMoments[i].toArray())).toEqual(Array.from(withBaseline.baselineMoments[i].toArray()));
    expect(Array.from(back.baselineSpreads[1]!.toArray())).toEqual(Array.from(withBaseline.baselineSpreads[1]!.toArray()));
    // Once the fit share is full, the baseline no longer folds in.
    for (let k = 0; k < spec.fitRequests; k++) withBaseline.add(request(withBaseline, 12));
    expect(() => withBaseline.addBaseline(request(withBaseline, 12))).toThrow(/already fitted/);
  });

  it('reads a state written before the baseline was kept apart (format 1: one block of moments)', () => {
    const learner = new DetectorLearner(spec);
    learner.add(request(learner, 30));
    const bytes = Buffer.from(learner.serialize());
    const nl1 = bytes.indexOf(10);
    const nl2 = bytes.indexOf(10, nl1 + 1);
    const header = JSON.parse(bytes.subarray(nl1 + 1, nl2).toString('utf8'));
    expect(header.format).toBe('latentwatch-learning-state/2');
    // Format 1: the same header but its format, and only the first block (traffic moments, spread sums).
    const block = spec.members.length * momentLength(d) * 8 + SpreadMoments.length(d) * 8;
    const old = Buffer.concat([bytes.subarray(0, nl1 + 1), Buffer.from(`${JSON.stringify({ ...header, format: 'latentwatch-learning-state/1' })}\n`), bytes.subarray(nl2 + 1, nl2 + 1 + block)]);
    const back = DetectorLearner.deserialize(old, spec.modelFingerprint).learner;
    expect(back.fitRequests).toBe(1);
    for (let i = 0; i < spec.members.length; i++) {
      expect(Array.from(back.moments[i].toArray())).toEqual(Array.from(learner.moments[i].toArray()));
      expect(back.baselineMoments[i].n).toBe(0);
    }
    expect(Array.from(back.spreads[1]!.toArray())).toEqual(Array.from(learner.spreads[1]!.toArray()));
    // A format-1 header over format-2 bytes is refused, not misread.
    const mixed = Buffer.concat([bytes.subarray(0, nl1 + 1), Buffer.from(`${JSON.stringify({ ...header, format: 'latentwatch-learning-state/1' })}\n`), bytes.subarray(nl2 + 1)]);
    expect(() => DetectorLearner.deserialize(mixed, spec.modelFingerprint)).toThrow(/expected \d+ bytes/);
  });

  it('weighs the baseline to a quarter of the fit when traffic outgrows it: the fitted mean is the weighted mean of the rows', () => {
    const learner = new DetectorLearner(spec);
    const updates: { rows: Float64Array[]; baseline: boolean }[] = [];
    const fold = (n: number, baseline: boolean) => {
      const rows = learner.newRequest();
      const a = Float32Array.from({ length: n * d }, () => rng.gaussian() + (baseline ? 3 : 0));
      const b = Float32Array.from({ length: n * d }, () => rng.gaussian());
      rows.observe(new Map([['blocks.0.hook_resid_post', { positions: n, dModel: d, data: a }], ['blocks.1.hook_resid_post', { positions: n, dModel: d, data: b }]]), Array.from({ length: n }, (_, i) => i));
      // The update rows the learner fits (float32 differences, positions from skip 4 on), by hand.
      updates.push({ baseline, rows: Array.from({ length: n - 4 }, (_, k) => Float64Array.from({ length: d }, (_, j) => Math.fround(b[(k + 4) * d + j] - a[(k + 4) * d + j]))) });
      if (baseline) learner.addBaseline(rows);
      else learner.add(rows);
    };
    fold(30, true); // 26 baseline positions
    for (let k = 0; k < spec.fitRequests; k++) fold(60, false); // 7 × 56 = 392 traffic positions
    const w = (0.25 / 0.75) * (392 / 26);
    expect(learner.baselineWeight).toBeCloseTo(w, 12);
    const mean = new Float64Array(d);
    let n = 0;
    for (const u of updates) for (const r of u.rows) {
      const k = u.baseline ? w : 1;
      for (let j = 0; j < d; j++) mean[j] += k * r[j];
      n += k;
    }
    const fitted = learner.members()[0].body as { gaussian: { mean: readonly number[] } };
    for (let j = 0; j < d; j++) expect(fitted.gaussian.mean[j]).toBeCloseTo(mean[j] / n, 5);
    // The baseline's rows sit ~3 lower: weighed, it pulls the mean well past where once would.
    const once = updates.flatMap((u) => u.rows).reduce((acc, r) => acc + r[0], 0) / (26 + 392);
    expect(Math.abs(fitted.gaussian.mean[0] - once)).toBeGreaterThan(0.3);
    // A baseline already a quarter of the fit counts once.
    const small = new DetectorLearner(spec);
    small.addBaseline(request(small, 30));
    for (let k = 0; k < spec.fitRequests; k++) small.add(request(small, 12)); // 26 of 26 + 56
    expect(small.baselineWeight).toBe(1);
  });

  it('adds moments taken around other shifts, weighted, as the rows themselves would', () => {
    const rowsA = Array.from({ length: 40 }, () => Float64Array.from({ length: d }, () => 5 + rng.gaussian()));
    const rowsB = Array.from({ length: 25 }, () => Float64Array.from({ length: d }, () => -2 + 2 * rng.gaussian()));
    const a = new MomentAccumulator(d);
    const b = new MomentAccumulator(d);
    const direct = new MomentAccumulator(d);
    for (const r of rowsA) {
      a.add(r, 0);
      direct.add(r, 0);
    }
    for (const r of rowsB) b.add(r, 0);
    for (let k = 0; k < 3; k++) for (const r of rowsB) direct.add(r, 0); // B counted three times
    const sum = a.plus(b, 3).toArray();
    const want = direct.toArray();
    expect(sum.length).toBe(want.length);
    for (let i = 0; i < want.length; i++) expect(Math.abs(sum[i] - want[i])).toBeLessThan(1e-9 * Math.max(1, Math.abs(want[i])));
  });
});

// ---- the daemon -----------------------------------------------------------------------------------

const SHIPPED = JSON.parse(readFileSync(join(CODE16M, 'probes', 'generic-injection.probe.json'), 'utf8')) as { threshold: number; modelFingerprint: string };
const PROMPTS = [
  'def parse(text):\n    return [line.strip() for line in text.splitlines()]\n',
  'The committee reviewed twelve proposals and selected three for funding.',
  'User: How do I reverse a list in Python?\nAssistant:',
  'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: latentwatch\n',
  'import json\n\nwith open("config.json") as f:\n    cfg = json.load(f)\n',
  'class Stack:\n    def __init__(self):\n        self.items = []\n',
  'The river rose overnight and the town closed the old bridge until morning.',
  'SELECT name, count(*) FROM orders GROUP BY name ORDER BY 2 DESC;',
  'for i in range(10):\n    if i % 3 == 0:\n        print(i)\n',
  '# Release notes\n\n- faster start-up\n- fewer allocations in the monitor\n',
  'async function load(url) {\n  const r = await fetch(url);\n  return r.json();\n}\n',
  'def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n',
];

/** The fit-split requests of the shipped corpus's always-fitted styles: learn mode's baseline. */
const BASELINE = corpusRequests(loadCorpus(DEFAULT_CORPUS)).filter((r) => r.alwaysFitted && r.split === 'fit');
let baseline: { requests: number; seconds: number } = { requests: NaN, seconds: NaN };
/** PROMPTS[0]'s request score under the shipped probe (the learned one scores it otherwise). */
let shippedScore = NaN;

const daemons: Daemon[] = [];
afterAll(async () => {
  for (const d of daemons) await d.close();
});

async function start(stateDir: string, argv: string[] = []): Promise<Daemon> {
  const { config } = loadConfig({
    env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_ADMIN_KEY: ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION: '1', LATENTWATCH_HOST: '127.0.0.1' },
    argv: ['--model', CODE16M, '--port', '0', '--log-level', 'silent', '--alert-log', join(tempDir('lw-learn-alerts-'), 'alerts.db'), '--state-dir', stateDir, ...argv],
  });
  const d = await startDaemon(config);
  daemons.push(d);
  return d;
}

async function stop(d: Daemon): Promise<void> {
  await d.close();
  daemons.splice(daemons.indexOf(d), 1);
}

// Response bodies are read field by field and checked by the assertions themselves.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Body = Record<string, any>;

type Verdict = { probes: { id: string; threshold: number; max_score: number | null; fired: boolean }[] };

const complete = (d: Daemon, prompt: string, extra: Record<string, unknown> = {}, key = API_KEY) => completeVerdict<Verdict>(d.url, prompt, extra, key);

async function admin(d: Daemon, method: 'GET' | 'POST', body?: unknown, key: string | null = ADMIN_KEY): Promise<{ status: number; body: Body }> {
  const headers: Record<string, string> = {};
  if (key !== null) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(`${d.url}/v1/admin/learn`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: r.status, body: (await r.json()) as Body };
}

const genericThreshold = (v: Verdict) => v.probes.find((p) => p.id === 'generic-injection')!.threshold;

async function metric(d: Daemon, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${d.url}/metrics`)).text();
  const m = new RegExp(`^${name}\\{probe="generic-injection"\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

describe('learning the generic detector from live traffic', () => {
  const stateDir = tempDir('lw-learn-state-');
  const learnedPath = join(stateDir, 'learned', 'generic-injection.v1.probe.json');
  let learnedThreshold = NaN;

  it('admin only, bounded, collects clean requests only, persists statistics (numbers, no text) and resumes after a restart', async () => {
    const d = await start(stateDir);
    expect((await admin(d, 'GET', undefined, null)).status).toBe(401);
    const user = await admin(d, 'POST', { requests: 12 }, API_KEY);
    expect(user.status).toBe(403);
    expect(user.body.error.code).toBe('LW_ERR_AUTH_ADMIN_REQUIRED');
    expect((await admin(d, 'GET', undefined, API_KEY)).status).toBe(403);
    // Like every API route: the key is checked before the body is read, and browsers are refused.
    const noKeyBadBody = await fetch(`${d.url}/v1/admin/learn`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{not json' });
    expect([noKeyBadBody.status, ((await noKeyBadBody.json()) as Body).error.code]).toEqual([401, 'LW_ERR_AUTH_MISSING_KEY']);
    const browser = await fetch(`${d.url}/v1/admin/learn`, { headers: { authorization: `Bearer ${ADMIN_KEY}`, origin: 'https://evil.example' } });
    expect([browser.status, ((await browser.json()) as Body).error.code]).toEqual([403, 'LW_ERR_AUTH_ORIGIN_FORBIDDEN']);
    for (const [body, code] of [
      [{ requests: 5 }, 'LW_ERR_API_BAD_REQUEST'],
      [{ requests: 1e9 }, 'LW_ERR_API_BAD_REQUEST'],
      [{ requests: 12, target_fpr: 2 }, 'LW_ERR_API_BAD_REQUEST'],
      [{ requests: 12, bogus: 1 }, 'LW_ERR_API_BAD_REQUEST'],
      [{ requests: 12, probe: 'concept-injection' }, 'LW_ERR_LEARN_UNSUPPORTED'],
      [{ requests: 12, probe: 'nope' }, 'LW_ERR_LEARN_UNSUPPORTED'],
    ] as const) {
      const r = await admin(d, 'POST', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error.code).toBe(code);
    }
    // Refused requests changed nothing.
    expect((await admin(d, 'GET')).body.phase).toBe('idle');
    expect(existsSync(join(stateDir, 'learned'))).toBe(false);

    const started = await admin(d, 'POST', { probe: 'generic-injection', requests: 12, target_fpr: 0.01 });
    expect(started.status).toBe(202);
    // First the shipped corpus's always-fitted (junk) style is folded in; no traffic counts meanwhile.
    expect(started.body).toMatchObject({ phase: 'preparing', probe: 'generic-injection', requests: { target: 12, seen: 0, fit_target: 7 } });
    expect((await admin(d, 'POST', { requests: 12 })).body.error.code).toBe('LW_ERR_LEARN_BUSY');
    shippedScore = (await complete(d, PROMPTS[0])).probes.find((p) => p.id === 'generic-injection')!.max_score!;
    let prepared: Body = {};
    await waitUntil(async () => (prepared = (await admin(d, 'GET')).body).phase === 'collecting', { timeoutMs: 120_000, what: 'the learn baseline to be folded in (phase collecting)' });
    expect(prepared.requests.seen).toBe(0);
    // Every one that fits the context (as the daemon would refuse the others).
    const fits = BASELINE.filter((r) => d.engine.tokenizer!.encode(r.text).length + r.maxTokens <= d.engine.contextLength);
    expect(fits.length).toBeGreaterThan(40);
    expect(prepared.baseline.requests).toBe(fits.length);
    expect(prepared.baseline.positions).toBeGreaterThan(fits.length * 8);
    // What the baseline cost this run (through the served model), reported once folded in.
    expect(prepared.baseline.seconds).toBeGreaterThan(0);
    baseline = { requests: fits.length, seconds: prepared.baseline.seconds };

    // An admin-injected request is not clean traffic: not counted.
    const rng = createRng(42);
    const vector = Array.from({ length: 384 }, () => rng.gaussian());
    const norm = Math.hypot(...vector);
    await complete(d, PROMPTS[0], { latentwatch: { inject: { vector: vector.map((x) => x / norm), layer: 4, scale: 18, window: 'all' } } }, ADMIN_KEY);
    expect((await admin(d, 'GET')).body.requests.seen).toBe(0);

    const writesBefore = (await admin(d, 'GET')).body.statistics_writes as number;
    const t0 = performance.now();
    for (const p of PROMPTS.slice(0, 5)) expect(genericThreshold(await complete(d, p))).toBe(SHIPPED.threshold);
    const elapsed = performance.now() - t0;
    const mid = (await admin(d, 'GET')).body;
    expect(mid).toMatchObject({ phase: 'collecting', requests: { seen: 5, fit: 5, calibration: 0 } });
    // Statistics are written at most once a second (LEARN_WRITE_INTERVAL_MS), not once a request.
    expect(mid.statistics_writes - writesBefore).toBeLessThanOrEqual(2 + Math.floor(elapsed / 1000));
    expect(mid.positions.fit).toBeGreaterThan(5 * 8);
    expect(await metric(d, 'latentwatch_learn_requests_total')).toBe(5);
    await stop(d); // flushes the statistics

    const stats = readFileSync(join(stateDir, 'learned', 'generic-injection.learning'));
    for (const p of PROMPTS.slice(0, 5)) expect(stats.includes(Buffer.from(p.slice(0, 20)))).toBe(false);

    const again = await start(stateDir);
    // The baseline's counts and cost come back with the statistics.
    expect((await admin(again, 'GET')).body).toMatchObject({ phase: 'collecting', origin: 'api', requests: { target: 12, seen: 5, fit: 5 }, baseline });
  }, 300_000);

  it('finishes after N requests: writes the versioned probe with fingerprint and counts, swaps it in, reports it', async () => {
    const d = daemons[0];
    for (const p of PROMPTS.slice(5)) await complete(d, p);
    let status: Body = {};
    await waitUntil(async () => (status = (await admin(d, 'GET')).body).phase === 'done', { timeoutMs: 30_000, what: 'the learn run to finish (phase done)' });
    expect(status.last).toMatchObject({ probe: 'generic-injection', version: 1, requests: { fit: 7, calibration: 5 }, targetFpr: 0.01 });
    expect(existsSync(learnedPath)).toBe(true);
    expect(existsSync(join(stateDir, 'learned', 'generic-injection.learning'))).toBe(false);
    const file = JSON.parse(readFileSync(learnedPath, 'utf8'));
    expect(file.modelFingerprint).toBe(d.engine.fingerprint);
    expect(file.id).toBe('generic-injection');
    expect(file.training.trials).toBe(7);
    expect(file.evaluation.trials).toBe(5);
    // Eight per-token members and six windowed ones (16 novel positions, layers 2-7), as the shipped
    // file, each with its spread discount relearned from this traffic and the shipped minCount; and
    // the onset member of the deepest windowed layer (calibration.ts onsetFits).
    const shipped = JSON.parse(readFileSync(join(CODE16M, 'probes', 'generic-injection.probe.json'), 'utf8')) as { members: Body[] };
    expect(file.members).toHaveLength(15);
    expect(file.members.filter((m: Body) => m.kind === 'onset').map((m: Body) => [m.id, m.upper.member, m.lower.member])).toEqual([['onset-L7-w16', 'update-L7-w16', 'update-L6-w16']]);
    const windowed = file.members.filter((m: Body) => m.window?.positions === 'novel-bigram');
    expect(windowed).toHaveLength(6);
    // The per-token members score novel token pairs only (learn.ts, learnableMembers), though the
    // shipped file's score every position.
    expect(file.members.filter((m: Body) => m.kind === 'mahalanobis' && !m.window).map((m: Body) => m.positions)).toEqual(Array(8).fill('novel-bigram'));
    expect(shipped.members.some((m) => m.positions !== undefined)).toBe(false);
    for (const [k, m] of windowed.entries()) {
      const ship = shipped.members.filter((x) => x.window)[k];
      expect(m.window.minCount).toBe(8);
      expect(m.window.spread.scale).toHaveLength(d.engine.config.hiddenSize);
      expect(m.window.spread.reference).toBeGreaterThan(0);
      expect(m.window.spread.reference).not.toBe(ship.window!.spread!.reference);
    }
    const manifest = JSON.parse(readFileSync(learnedPath.replace('.probe.json', '.learn.json'), 'utf8'));
    expect(manifest).toMatchObject({ version: 1, modelFingerprint: d.engine.fingerprint, requests: { fit: 7, calibration: 5 }, targetFpr: 0.01, threshold: file.threshold });
    expect(manifest.positions.fit).toBeGreaterThan(0);
    expect(manifest.achievedFpr).toBeLessThanOrEqual(0.01);
    expect(typeof manifest.learnedAt).toBe('string');
    expect(status.last.fit_seconds).toBeGreaterThan(0);
    learnedThreshold = file.threshold;
    // New requests are scored by the learned probe: its threshold, and another score for the same request.
    expect(genericThreshold(await complete(d, 'def main():\n    run()\n'))).toBe(learnedThreshold);
    const relearned = (await complete(d, PROMPTS[0])).probes.find((p) => p.id === 'generic-injection')!.max_score!;
    expect(Number.isFinite(shippedScore) && Number.isFinite(relearned)).toBe(true);
    expect(relearned).not.toBeCloseTo(shippedScore, 6);
    expect(await metric(d, 'latentwatch_probe_version')).toBe(1);
    expect(await metric(d, 'latentwatch_learn_requests_total')).toBe(7);
    // The baseline (59 requests) outweighs 7 short fit requests: it counts once (weighed only when traffic outgrows it).
    expect(status.last.baseline).toEqual({ ...baseline, positions: expect.any(Number), weight: 1 });
    expect(manifest.baseline).toEqual(status.last.baseline);
    // 5 short calibration requests: too few positions for a tail slope, so the threshold is their own
    // (longer shares are raised above their maximum: probes-learn-threshold.test.ts).
    expect(file.aggregator.lengthAllowance).toBeUndefined();
    expect(manifest.empiricalThreshold).toBe(manifest.threshold);
    console.log(`learned generic-injection: threshold ${learnedThreshold} (shipped ${SHIPPED.threshold}), fit from moments ${status.last.fit_seconds} s, calibrate + threshold + load ${status.last.compute_seconds} s, write + swap in total ${status.last.finish_seconds} s`);
  }, 300_000);

  it('a restart keeps the learned probe, and --learn does not relearn over it', async () => {
    await stop(daemons[0]);
    const d = await start(stateDir, ['--learn', '12']);
    expect(d.probes.find((p) => p.id === 'generic-injection')!.threshold).toBe(learnedThreshold);
    expect((await admin(d, 'GET')).body).toMatchObject({ phase: 'idle', active: { 'generic-injection': { version: 1, threshold: learnedThreshold } } });
    expect(genericThreshold(await complete(d, PROMPTS[1]))).toBe(learnedThreshold);
    expect(await metric(d, 'latentwatch_probe_version')).toBe(1);
    await stop(d);
  }, 300_000);

  it("another model's statistics and learned probe are refused with coded errors; the shipped probe serves", async () => {
    const other = tempDir('lw-learn-other-');
    mkdirSync(join(other, 'learned'), { recursive: true });
    // Statistics as a daemon on another model would write them.
    const learner = new DetectorLearner({
      probeId: 'generic-injection',
      label: 'generic injection (any direction)',
      modelFingerprint: 'lw1-00000000000000000000000000000000',
      dModel: 384,
      aggregator: { kind: 'rolling-mean', window: 8, skip: 4 },
      targetFpr: 0.01,
      requests: 12,
      fitRequests: 7,
      members: [{ id: 'resid-L0', hooks: ['blocks.0.hook_resid_post'], difference: false }],
      maxPositions: 1024,
    });
    const statsFile = join(other, 'learned', 'generic-injection.learning');
    const bytes = learner.serialize({ origin: 'api' });
    writeFileSync(statsFile, bytes);
    const probeText = readFileSync(learnedPath, 'utf8').replace(/"modelFingerprint": "[^"]+"/, '"modelFingerprint": "lw1-00000000000000000000000000000000"');
    writeFileSync(join(other, 'learned', 'generic-injection.v1.probe.json'), probeText);

    const d = await start(other, ['--learn', '12']);
    const s = (await admin(d, 'GET')).body;
    expect(s.refused.code).toBe('LW_ERR_LEARN_MODEL_MISMATCH');
    expect(s.active['generic-injection'].version).toBe(0);
    // --learn does not overwrite refused statistics: nothing starts, the file is as it was.
    expect(s.phase).toBe('idle');
    expect(genericThreshold(await complete(d, PROMPTS[2]))).toBe(SHIPPED.threshold);
    expect(await metric(d, 'latentwatch_probe_version')).toBe(0);
    await stop(d);
    expect(Buffer.compare(readFileSync(statsFile), Buffer.from(bytes))).toBe(0);
  }, 300_000);
});
