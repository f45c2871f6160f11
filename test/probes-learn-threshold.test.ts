/**
 * Learn mode's threshold when the calibration share is too small to hold the target rate (issue 12):
 * the maximum of n clean requests is exceeded by a new one with probability 1 / (n + 1), so the
 * learner extrapolates the request score's exponential tail with the length allowance's slope
 * (smallShareThreshold). Checked on the rule itself and on a learner fed Gaussian rows: the learned
 * threshold sits perLog · ln(1 / ((n + 1) · targetFpr)) above the highest calibration request
 * (scored independently with the written file), and a share that holds the rate is left as it is.
 */
import { describe, expect, it } from 'vitest';
import { requestScore } from '../src/probes/calibration.js';
import { DetectorLearner, smallShareThreshold, type LearnSpec, type RequestRows } from '../src/probes/learn.js';
import { createProbe } from '../src/probes/probe.js';
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

  it('a share that holds the rate keeps the empirical threshold', () => {
    // 5 calibration requests at 20%: (5 + 1) · 0.2 ≥ 1.
    const { result } = learn(0.2);
    expect(result.threshold).toBe(result.empiricalThreshold);
    expect(result.file.description).not.toMatch(/raised from their maximum/);
  });
});
