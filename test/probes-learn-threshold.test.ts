/**
 * Learn mode's threshold when the calibration share is too small to hold the target rate (issue 12):
 * the maximum of n clean requests is exceeded by a new one with probability 1 / (n + 1), so the
 * learner extrapolates the request score's exponential tail with the length allowance's slope
 * (smallShareThreshold). Checked on the rule itself and on a learner fed Gaussian rows: the learned
 * threshold sits perLog · ln(1 / ((n + 1) · targetFpr)) above the highest calibration request
 * (scored independently with the written file), and a share that holds the rate is left as it is.
 */
import { describe, expect, it } from 'vitest';
import { conformalThreshold, requestScore, roundThreshold, thresholdAtFpr } from '../src/probes/calibration.js';
import { DetectorLearner, smallShareThreshold, type LearnSpec, type RequestRows } from '../src/probes/learn.js';
import { createProbe } from '../src/probes/probe.js';
import type { EnsembleProbeFile } from '../src/probes/probe-file.js';
import { novelPositions } from '../src/probes/window.js';
import { createRng } from '../src/rng.js';

describe('smallShareThreshold', () => {
  it('raises the maximum of too few requests by the tail slope times ln(1 / ((n + 1) · rate)); else leaves it', () => {
    // 53 calibration requests (a 132-request run) at 1%: ln(1 / 0.54) = 0.6162 slopes above the maximum.
    expect(smallShareThreshold(1, 53, 0.01, 0.07)).toBeCloseTo(1 + 0.07 * Math.log(1 / 0.54), 7);
    expect(smallShareThreshold(1, 53, 0.005, 0.07) - smallShareThreshold(1, 53, 0.01, 0.07)).toBeCloseTo(0.07 * Math.LN2, 7);
    // 99 requests at 1% hold the rate: (99 + 1) · 0.01 = 1.
    expect(smallShareThreshold(1.2, 99, 0.01, 0.07)).toBe(1.2);
    expect(smallShareThreshold(1.2, 2000, 0.01, 0.07)).toBe(1.2);
    // No allowance (too few positions to fit a slope): nothing to extrapolate with.
    expect(smallShareThreshold(1.2, 53, 0.01, undefined)).toBe(1.2);
  });
});

describe('conformalThreshold', () => {
  it('is the smallest score with (above + 1) / (n + 1) within the rate', () => {
    const xs = Array.from({ length: 132 }, (_, i) => i + 1); // 1..132
    // 132 at 1%: (0 + 1) / 133 ≤ 0.01, (1 + 1) / 133 > 0.01: the largest; thresholdAtFpr allows one above.
    expect(conformalThreshold(xs, 0.01)).toBe(132);
    expect(thresholdAtFpr(xs, 0.01)).toBe(131);
    // 799 at 1%: up to 7 above ((7 + 1) / 800 = 0.01); so does thresholdAtFpr (8 / 799 > 0.01): large shares agree.
    const ys = Array.from({ length: 799 }, (_, i) => i + 1);
    expect(conformalThreshold(ys, 0.01)).toBe(792);
    expect(thresholdAtFpr(ys, 0.01)).toBe(792);
    // Ties count together: [1, 2, 2, 2] at 0.5 → (0 + 1) / 5 ≤ 0.5 for 2, (3 + 1) / 5 > 0.5 for 1.
    expect(conformalThreshold([2, 1, 2, 2], 0.5)).toBe(2);
    // Too few to hold the rate: the largest (learn mode then extrapolates: smallShareThreshold).
    expect(conformalThreshold([3, 1, 2], 0.01)).toBe(3);
    expect(() => conformalThreshold([], 0.01)).toThrow(RangeError);
    expect(() => conformalThreshold([1, Number.NaN], 0.01)).toThrow(RangeError);
  });

  it('sets a threshold far enough above its clean score that a float32 recomputation of it does not fire', () => {
    // Measured: a learned threshold set at a calibration score of 1.0 was 1.00000001; the daemon
    // scored requests like it 1.0000000894 and they fired.
    for (const score of [1, 0.731, 1.2533195, 17.25, -0.5]) {
      const t = roundThreshold(score);
      expect(t).toBeGreaterThanOrEqual(score + Math.abs(score) * 1e-6);
      expect(t).toBeLessThan(score + Math.abs(score) * 1.1e-6 + 1e-9);
      expect(Math.fround(score) + Math.abs(score) * 2.4e-7).toBeLessThan(t); // two float32 steps off
    }
    expect(roundThreshold(1)).toBe(1.000001);
  });

  it('holds the rate on new requests drawn like the calibration ones, where the empirical rule exceeds it', () => {
    // 4,000 calibrations of 132 heavy-tailed scores each, every threshold checked on 200 new scores
    // of the same law: the conformal rule's mean rate is 1 / 133 (≤ 1%); the empirical one's 2 / 133.
    const rng = createRng(5);
    const draw = () => (-Math.log(1 - rng.next())) ** 1.5;
    let conformal = 0;
    let empirical = 0;
    const runs = 4000;
    const fresh = 200;
    for (let r = 0; r < runs; r++) {
      const cal = Array.from({ length: 132 }, draw);
      const tc = conformalThreshold(cal, 0.01);
      const te = thresholdAtFpr(cal, 0.01);
      for (let k = 0; k < fresh; k++) {
        const x = draw();
        if (x > tc) conformal++;
        if (x > te) empirical++;
      }
    }
    const rate = (n: number) => n / (runs * fresh);
    expect(rate(conformal)).toBeLessThan(0.01);
    expect(rate(conformal)).toBeCloseTo(1 / 133, 3);
    expect(rate(empirical)).toBeGreaterThan(0.01);
    expect(rate(empirical)).toBeCloseTo(2 / 133, 3);
  });
});

describe('a learner with a small calibration share', () => {
  const d = 8;
  const hooks = ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'];
  const spec = (targetFpr: number): LearnSpec => ({
    probeId: 'generic-injection',
    label: 'generic injection (any direction)',
    modelFingerprint: 'lw1-00000000000000000000000000000000',
    dModel: d,
    aggregator: { kind: 'rolling-mean', window: 8, skip: 4 },
    targetFpr,
    requests: 12,
    fitRequests: 7,
    members: [
      { id: 'resid-L0', hooks: [hooks[0]], difference: false },
      { id: 'update-L1', hooks, difference: true },
    ],
    maxPositions: 1024,
  });
  /** 12 requests of 300 positions of Gaussian rows (the same for every learner: seeded). */
  const requests = () => {
    const rng = createRng(11);
    return Array.from({ length: 12 }, () => {
      const n = 300;
      const tap = () => ({ positions: n, dModel: d, data: Float32Array.from({ length: n * d }, () => rng.gaussian()) });
      return { taps: new Map(hooks.map((h) => [h, tap()])), ids: Array.from({ length: n }, (_, i) => i) };
    });
  };
  const learn = (targetFpr: number) => {
    const learner = new DetectorLearner(spec(targetFpr));
    const rows: RequestRows[] = [];
    for (const r of requests()) {
      const x = learner.newRequest();
      x.observe(r.taps, r.ids);
      rows.push(x);
      learner.add(x);
    }
    return { result: learner.finish(), calibrationRows: rows.slice(7) };
  };

  it('sets the threshold above the highest calibration request by the extrapolated margin, as the written file scores it', () => {
    const { result, calibrationRows } = learn(0.01);
    const probe = createProbe(result.file);
    const perLog = probe.aggregator.lengthAllowance!.perLog;
    expect(perLog).toBeGreaterThan(0);
    // The calibration requests scored by the written file, independently of the learner's own scores.
    const scores = calibrationRows.map((r) => {
      const score = probe.createScorer();
      const x = new Float32Array(2 * d);
      const a = r.hookRows(0);
      const b = r.hookRows(1);
      const s = Float64Array.from({ length: r.positions }, (_, p) => {
        x.set(a.subarray(p * d, (p + 1) * d), 0);
        x.set(b.subarray(p * d, (p + 1) * d), d);
        return score(x, 0, true);
      });
      return requestScore(s, probe.aggregator);
    });
    const highest = Math.max(...scores);
    expect(result.empiricalThreshold).toBeCloseTo(highest, 4);
    expect(result.threshold - highest).toBeCloseTo(perLog * Math.log(1 / (6 * 0.01)), 4);
    expect(result.threshold).toBe(probe.threshold);
    expect(result.achievedFpr).toBe(0);
    expect(result.file.description).toMatch(/raised from their maximum/);
    // Half the rate: the same maximum, ln 2 slopes higher.
    const stricter = learn(0.005).result;
    expect(stricter.empiricalThreshold).toBe(result.empiricalThreshold);
    expect(stricter.threshold - result.threshold).toBeCloseTo(perLog * Math.LN2, 6);
  });

  it('a novel-only member: repeated pairs score 0, and the threshold is the written file\'s own scores', () => {
    // Ids repeat (a 3-token cycle after 100 novel ones), so most pairs are seen before.
    const ids = Array.from({ length: 300 }, (_, i) => (i < 100 ? i : 1000 + (i % 3)));
    const novel = novelPositions(ids);
    const novelSpec: LearnSpec = { ...spec(0.2), members: spec(0.2).members.map((m) => ({ ...m, positions: 'novel-bigram' as const })) };
    const learner = new DetectorLearner(novelSpec);
    const rows: RequestRows[] = [];
    for (const r of requests()) {
      const x = learner.newRequest();
      x.observe(r.taps, ids);
      rows.push(x);
      learner.add(x);
    }
    const result = learner.finish();
    expect((result.file as EnsembleProbeFile).members.map((m) => m.positions)).toEqual(['novel-bigram', 'novel-bigram']);
    const probe = createProbe(result.file);
    expect(probe.ordered).toBe(true);
    const scores = rows.slice(7).map((r) => {
      const score = probe.createScorer();
      const x = new Float32Array(2 * d);
      const s = Float64Array.from({ length: r.positions }, (_, p) => {
        x.set(r.hookRows(0).subarray(p * d, (p + 1) * d), 0);
        x.set(r.hookRows(1).subarray(p * d, (p + 1) * d), d);
        return score(x, 0, novel[p] === 1);
      });
      // Repeated pairs score exactly 0 (both members novel-only).
      for (let p = 0; p < r.positions; p++) if (novel[p] !== 1) expect(s[p]).toBe(0);
      return requestScore(s, probe.aggregator);
    });
    // 5 requests at 20%: the conformal rule takes their maximum, as the written file scores them.
    expect(result.empiricalThreshold).toBeCloseTo(Math.max(...scores), 4);
    expect(result.threshold).toBe(result.empiricalThreshold);
  });

  it('a share that holds the rate keeps the empirical threshold', () => {
    // 5 calibration requests at 20%: (5 + 1) · 0.2 ≥ 1.
    const { result } = learn(0.2);
    expect(result.threshold).toBe(result.empiricalThreshold);
    expect(result.file.description).not.toMatch(/raised from their maximum/);
  });
});
