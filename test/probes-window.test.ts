/**
 * Windowed probe members (issue 12, probes/window.ts): the daemon's scorer against numpy on fixed
 * data (scripts/window-reference.py wrote test/fixtures/window-reference.json), state kept across
 * the passes of one request and never shared between requests, repeated text counted once, the
 * file format, the coded errors when token ids are missing, and learn mode's windowed fit (from
 * moments, passes as the daemon feeds them) equal to fit-anomaly's on the same requests.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createProbe, ProbeBank, type TapTensor } from '../src/probes/probe.js';
import { parseProbeFile, serializeProbeFile, validateProbeFile, type EnsembleProbeFile } from '../src/probes/probe-file.js';
import { NoveltyTracker, novelPositions, WindowMean } from '../src/probes/window.js';
import { fitAnomalyMembers, type Seq } from '../src/lab/generic.js';
import { balanceKinds } from '../src/probes/calibration.js';
import { DetectorLearner } from '../src/probes/learn.js';
import { createRng } from '../src/rng.js';
import { thrown } from './helpers.js';

interface Reference {
  probe: EnsembleProbeFile;
  ids: number[];
  novel: boolean[];
  h0: number[];
  h1: number[];
  tokenScores: number[];
  windowScores: number[];
  ensemble: number[];
}
const REF = JSON.parse(readFileSync(new URL('./fixtures/window-reference.json', import.meta.url), 'utf8')) as Reference;
const D = REF.probe.dModel;
const HOOKS = ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'];
const N = REF.ids.length;
// The cholesky scorer whitens with L⁻¹ stored as int16 with per-row scales (probe.ts): ~1e-4
// relative per member; 2e-3 absolute on calibrated scores of order 1 leaves room and still fails
// on any wrong window (the reference scores move by ≥ 0.1 between windows).
const TOLERANCE = 2e-3;

/** Taps of positions [from, to) of the reference request. */
function taps(from: number, to: number): Map<string, TapTensor> {
  const rows = (h: number[]) => Float32Array.from(h.slice(from * D, to * D));
  return new Map([
    [HOOKS[0], { positions: to - from, dModel: D, data: rows(REF.h0) }],
    [HOOKS[1], { positions: to - from, dModel: D, data: rows(REF.h1) }],
  ]);
}

/** Score the reference request through a fresh snapshot, in passes ending at the given positions. */
function scoreInPasses(bank: ProbeBank, ends: number[]): number[] {
  const request = bank.snapshot();
  const out: number[] = [];
  let from = 0;
  for (const to of ends) {
    out.push(...request.score(taps(from, to), REF.ids.slice(from, to))[0].scores);
    from = to;
  }
  return out;
}

describe('windowed members', () => {
  const probe = createProbe(validateProbeFile(REF.probe));
  const bank = new ProbeBank([probe]);

  it('novelty marks the first occurrence of each token pair, as the reference does', () => {
    expect(Array.from(novelPositions(REF.ids), (x) => x === 1)).toEqual(REF.novel);
    const t = new NoveltyTracker();
    expect([7, 7, 7, 8, 7, 7].map((id) => t.next(id))).toEqual([true, true, false, true, true, false]);
  });

  it('score every position as numpy does: a prompt pass, then one pass per generated token', () => {
    expect(probe.ordered).toBe(true);
    const ends = [10, ...Array.from({ length: N - 10 }, (_, i) => 11 + i)];
    const got = scoreInPasses(bank, ends);
    expect(got).toHaveLength(N);
    for (let p = 0; p < N; p++) expect(Math.abs(got[p] - REF.ensemble[p]), `position ${p}`).toBeLessThan(TOLERANCE);
    // The windowed member decides some positions and the per-token member others, so both are checked.
    const windowWins = REF.ensemble.filter((x, p) => Math.abs(x - (REF.windowScores[p] - 0.8) / 1.25) < 1e-12).length;
    expect(windowWins).toBeGreaterThan(0);
    expect(windowWins).toBeLessThan(N);
  });

  it('the same request split into other passes scores the same; a new request starts a new window', () => {
    const whole = scoreInPasses(bank, [N]);
    expect(scoreInPasses(bank, [3, 4, 17, N])).toEqual(whole);
    // A second request on a fresh snapshot is not influenced by the first (its state is its own).
    const request = bank.snapshot();
    request.score(taps(0, N), REF.ids);
    expect(scoreInPasses(bank, [N])).toEqual(whole);
  });

  it('repeated text is counted once: the window score holds still over repeated token pairs', () => {
    const request = bank.snapshot();
    const ids = [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4];
    const n = ids.length;
    const t = new Map([...taps(0, n)].map(([h, v]) => [h, v]));
    // Only the windowed member, uncalibrated: ensemble with one member, center 0, scale 1.
    const only = createProbe(validateProbeFile({ ...REF.probe, members: [{ ...REF.probe.members[1], calibration: { center: 0, scale: 1 } }] }));
    const scores = new ProbeBank([only]).snapshot().score(t, ids)[0].scores;
    // Positions 0 (pair none→4) and 1 (4→4) are novel; every later one repeats 4→4.
    for (let p = 2; p < n; p++) expect(scores[p]).toBe(scores[1]);
    expect(scores[1]).not.toBe(scores[0]);
    expect(request.score(taps(0, n), ids)[0].scores).toHaveLength(n);
  });

  it('refuses to score without token ids, with coded errors', () => {
    expect(thrown(() => probe.scoreRow(new Float32Array(2 * D), 0)).code).toBe('LW_ERR_PROBE_INPUT_MISMATCH');
    expect(thrown(() => bank.snapshot().score(taps(0, 5))).code).toBe('LW_ERR_PROBE_INPUT_MISMATCH');
    expect(thrown(() => bank.snapshot().score(taps(0, 5), [1, 2])).code).toBe('LW_ERR_PROBE_INPUT_MISMATCH');
    expect(thrown(() => new NoveltyTracker().next(-1)).code).toBe('LW_ERR_PROBE_INPUT_MISMATCH');
  });

  it('the window survives a write and read of the file; a bad window is refused with its path', () => {
    const text = serializeProbeFile(REF.probe);
    const back = parseProbeFile(text, 'lw1-reference');
    expect(back.kind === 'ensemble-max' && back.members[1].kind === 'mahalanobis' && back.members[1].window).toEqual({ size: 4, positions: 'novel-bigram' });
    expect(serializeProbeFile(back)).toBe(text);
    const bad = (window: unknown) => thrown(() => validateProbeFile({ ...REF.probe, members: [REF.probe.members[0], { ...REF.probe.members[1], window }] }));
    expect(bad({ size: 1, positions: 'novel-bigram' })).toMatchObject({ code: 'LW_ERR_PROBE_INVALID', details: { path: '$.members[1].window.size' } });
    expect(bad({ size: 4, positions: 'sometimes' })).toMatchObject({ code: 'LW_ERR_PROBE_INVALID', details: { path: '$.members[1].window.positions' } });
    expect(bad({ size: 4 })).toMatchObject({ code: 'LW_ERR_PROBE_INVALID' });
  });

  it('WindowMean pads missing rows with the fill and drops the oldest row when full', () => {
    const w = new WindowMean(2, 1, Float32Array.of(10));
    const out = new Float32Array(1);
    w.mean(out);
    expect(out[0]).toBe(10);
    w.push(Float32Array.of(2), 0);
    w.mean(out);
    expect(out[0]).toBe(6);
    w.push(Float32Array.of(4), 0);
    w.push(Float32Array.of(8), 0);
    w.mean(out);
    expect(out[0]).toBe(6);
    expect(w.filled).toBe(2);
  });
});

describe('windowed members: the lab fit and learn mode agree', () => {
  it("learn mode's windowed Gaussian (from moments of novel-window means) equals fit-anomaly's on the same requests", () => {
    const d = 6;
    const rng = createRng(5);
    const hooks = ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'];
    const seqs: Seq[] = Array.from({ length: 12 }, (_, k) => {
      const n = 24 + k;
      const h0 = Float32Array.from({ length: n * d }, () => rng.gaussian());
      const h1 = Float32Array.from(h0, (x, i) => x + 0.5 * rng.gaussian() + (i % d === 2 ? 0.3 : 0));
      // Some repetition, so the novel-bigram rule drops positions.
      const ids = Array.from({ length: n }, (_, p) => (p % 7 < 3 ? 11 : 100 + ((k * 13 + p) % 40)));
      return { id: `s${k}`, source: 'corpus', start: 0, positions: n, ids, rows: (l: number) => (l === 0 ? h0 : h1) };
    });
    const lab = fitAnomalyMembers(seqs, d, { layers: [1], window: 4, skip: 4 }).find((m) => m.id.endsWith('-w4'))!;
    const learner = new DetectorLearner({
      probeId: 'p',
      label: 'p',
      modelFingerprint: 'lw1-x',
      dModel: d,
      aggregator: { kind: 'max', skip: 4 },
      targetFpr: 0.01,
      requests: seqs.length + 1,
      fitRequests: seqs.length,
      members: [{ id: 'update-L1-w4', hooks, difference: true, window: lab.body.kind === 'mahalanobis' ? lab.body.window : undefined }],
      maxPositions: 1024,
    });
    let current = learner;
    for (const [k, s] of seqs.entries()) {
      // Halfway the state goes through bytes, as across a daemon restart (spread sums included).
      if (k === 6) current = DetectorLearner.deserialize(current.serialize(), 'lw1-x').learner;
      const rows = current.newRequest();
      // Fed in two passes, as the daemon does (prompt, then generated tokens).
      const cut = 10;
      for (const [from, to] of [[0, cut], [cut, s.positions]]) {
        const t = new Map(hooks.map((h, l) => [h, { positions: to - from, dModel: d, data: s.rows(l).slice(from * d, to * d) }]));
        rows.observe(t, s.ids!.slice(from, to));
      }
      expect(current.add(rows)).toBe('fit');
    }
    const learned = current.members()[0];
    const a = lab.body.kind === 'mahalanobis' ? lab.body : null;
    const b = learned.body.kind === 'mahalanobis' ? learned.body : null;
    expect(a?.window).toMatchObject({ size: 4, positions: 'novel-bigram' });
    // The spread discount is learned from the same sums as the lab's (probes/window.ts SpreadMoments).
    expect(a?.window?.spread?.scale).toHaveLength(d);
    expect(b?.window).toEqual(a?.window);
    if (a?.gaussian.form !== 'cholesky' || b?.gaussian.form !== 'cholesky') throw new Error('expected full Gaussians');
    // Both round to 7 significant digits; the moment fit equals the row fit to ~1e-9 before that.
    const close = (x: readonly number[], y: readonly number[]) => x.every((v, i) => Math.abs(v - y[i]) <= 1e-6 * Math.max(1, Math.abs(y[i])));
    expect(close(b.gaussian.mean, a.gaussian.mean)).toBe(true);
    expect(close(b.gaussian.factor, a.gaussian.factor)).toBe(true);
    expect(b.gaussian.shrinkage).toBeCloseTo(a.gaussian.shrinkage, 6);
  });
});

describe('balanceKinds', () => {
  it("multiplies each kind's scales by that kind's own threshold, so each crosses 1 where it alone would fire", () => {
    const members = [
      { id: 'a', kind: 'token', calibration: { center: 1, scale: 2 } },
      { id: 'b', kind: 'token', calibration: { center: 0, scale: 1 } },
      { id: 'c', kind: 'window', calibration: { center: 5, scale: 0.5 } },
    ];
    const seen: string[][] = [];
    const out = balanceKinds(members, (m) => m.kind, (subset) => {
      seen.push(subset.map((m) => m.id));
      return subset[0].kind === 'token' ? 2 : subset[0].kind === 'window' ? 4 : NaN;
    });
    expect(seen).toEqual([['a', 'b'], ['c']]);
    expect(out.map((m) => m.calibration)).toEqual([
      { center: 1, scale: 4 },
      { center: 0, scale: 2 },
      { center: 5, scale: 2 },
    ]);
    // One kind only, or a threshold that is not positive: nothing changes.
    expect(balanceKinds(members.slice(0, 2), (m) => m.kind, () => 3)).toEqual(members.slice(0, 2));
    expect(balanceKinds(members, (m) => m.kind, (subset) => (subset[0].kind === 'window' ? -1 : 2))[2].calibration).toEqual({ center: 5, scale: 0.5 });
  });
});
