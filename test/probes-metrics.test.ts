import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  areaUnderCurve,
  auroc,
  detectionSummary,
  fprAtThreshold,
  rocCurve,
  thresholdAtFpr,
  tprAtFpr,
  tprAtThreshold,
} from '../src/lab/metrics.js';

// Brute-force numpy values (all positive/negative pairs; every candidate threshold) from
// test/fixtures/probes/make_expected.py.
const expected = JSON.parse(readFileSync(new URL('./fixtures/probes/expected.json', import.meta.url), 'utf8'));

describe('AUROC (hand-computed)', () => {
  it('perfect, inverted and chance separations', () => {
    expect(auroc([3, 4], [1, 2])).toBe(1);
    expect(auroc([1, 2], [3, 4])).toBe(0);
    expect(auroc([1, 2], [1, 2])).toBe(0.5);
  });

  it('ties count one half', () => {
    // pairs: (2,1)=1 (2,2)=.5 (2,3)=0 (3,1)=1 (3,2)=1 (3,3)=.5 → 4 / 6
    expect(auroc([2, 3], [1, 2, 3])).toBeCloseTo(4 / 6, 15);
  });

  it('throws on empty or NaN input', () => {
    expect(() => auroc([], [1])).toThrow(RangeError);
    expect(() => auroc([NaN], [1])).toThrow(RangeError);
  });
});

describe('thresholds at a target FPR (score > threshold fires)', () => {
  it('documented example: negatives [1,2,3,4]', () => {
    expect(thresholdAtFpr([4, 1, 3, 2], 0.25)).toBe(3);
    expect(thresholdAtFpr([4, 1, 3, 2], 0.2)).toBe(4);
    expect(thresholdAtFpr([4, 1, 3, 2], 0)).toBe(4);
    expect(thresholdAtFpr([4, 1, 3, 2], 0.75)).toBe(1);
    expect(thresholdAtFpr([4, 1, 3, 2], 0.99)).toBe(1);
    expect(fprAtThreshold([1, 2, 3, 4], 3)).toBe(0.25);
  });

  it('ties among negatives: the whole tie group moves together', () => {
    // Above 2: [3] (1/5); above 1: [2,2,2,3] (4/5). Target 0.5 → 2.
    expect(thresholdAtFpr([1, 2, 2, 2, 3], 0.5)).toBe(2);
    expect(fprAtThreshold([1, 2, 2, 2, 3], 2)).toBe(0.2);
  });

  it('TPR at the chosen threshold', () => {
    expect(tprAtFpr([2.5, 3.5, 5], [1, 2, 3, 4], 0.25)).toBeCloseTo(2 / 3, 15);
    expect(tprAtThreshold([2.5, 3.5, 5], 4)).toBeCloseTo(1 / 3, 15);
  });

  it('rejects targets outside [0, 1)', () => {
    expect(() => thresholdAtFpr([1], 1)).toThrow(RangeError);
    expect(() => thresholdAtFpr([1], -0.1)).toThrow(RangeError);
  });
});

describe('vs numpy brute force', () => {
  for (const c of expected.metrics) {
    it(`${c.name}: AUROC, thresholds, FPR/TPR, ROC`, () => {
      expect(auroc(c.positives, c.negatives)).toBeCloseTo(c.auroc, 12);
      c.targets.forEach((target: number, i: number) => {
        const t = thresholdAtFpr(c.negatives, target);
        expect(t).toBe(c.thresholds[i]);
        expect(fprAtThreshold(c.negatives, t)).toBe(c.fpr[i]);
        expect(tprAtFpr(c.positives, c.negatives, target)).toBe(c.tpr[i]);
      });
      const roc = rocCurve(c.positives, c.negatives);
      expect(roc.map((p) => [Number.isFinite(p.threshold) ? p.threshold : null, p.fpr, p.tpr])).toEqual(c.roc);
      expect(areaUnderCurve(roc)).toBeCloseTo(c.auroc, 12);
      const summary = detectionSummary(c.positives, c.negatives);
      expect(summary['tpr_at_fpr_0.01']).toBe(c.tpr[1]);
      expect(summary['tpr_at_fpr_0.05']).toBe(c.tpr[2]);
    });
  }
});
