import { describe, expect, it } from 'vitest';
import { isLatentwatchError } from '../src/errors.js';
import { aggregateSequence, createAggregator, validateAggregatorSpec, type AggregatorSpec } from '../src/probes/aggregators.js';

const seq = [1, 3, 2, 5, 4, 0];

function run(spec: AggregatorSpec): number[] {
  return [...aggregateSequence(spec, seq)];
}

describe('aggregators on a known sequence [1, 3, 2, 5, 4, 0]', () => {
  it('last', () => expect(run({ kind: 'last' })).toEqual(seq));
  it('max', () => expect(run({ kind: 'max' })).toEqual([1, 3, 3, 5, 5, 5]));
  it('mean', () => expect(run({ kind: 'mean' })).toEqual([1, 2, 2, 11 / 4, 3, 15 / 6]));

  it('ema(0.5): seeded with the first score', () => {
    // 1 → .5·3+.5·1=2 → .5·2+.5·2=2 → 3.5 → 3.75 → 1.875
    expect(run({ kind: 'ema', alpha: 0.5 })).toEqual([1, 2, 2, 3.5, 3.75, 1.875]);
  });

  it('ema(1) is last', () => expect(run({ kind: 'ema', alpha: 1 })).toEqual(seq));

  it('rolling-mean(3)', () => {
    const got = run({ kind: 'rolling-mean', window: 3 });
    const want = [1, 2, 2, 10 / 3, 11 / 3, 3];
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i], 14));
  });

  it('rolling-max(2)', () => expect(run({ kind: 'rolling-max', window: 2 })).toEqual([1, 3, 3, 5, 5, 4]));
  it('rolling-max(1) is last', () => expect(run({ kind: 'rolling-max', window: 1 })).toEqual(seq));
});

describe('aggregator state', () => {
  it('value is NaN before the first push; reset clears everything', () => {
    for (const spec of [
      { kind: 'ema', alpha: 0.3 },
      { kind: 'rolling-mean', window: 4 },
      { kind: 'rolling-max', window: 4 },
      { kind: 'max' },
      { kind: 'mean' },
      { kind: 'last' },
    ] as AggregatorSpec[]) {
      const a = createAggregator(spec);
      expect(a.value).toBeNaN();
      expect(a.count).toBe(0);
      for (const x of [9, 8, 7]) a.push(x);
      expect(a.count).toBe(3);
      a.reset();
      expect(a.value).toBeNaN();
      expect(a.count).toBe(0);
      // After a reset it behaves like a fresh one.
      const fresh = createAggregator(spec);
      for (const x of seq) expect(a.push(x)).toBe(fresh.push(x));
      expect(a.spec).toEqual(spec);
    }
  });

  it('specs round-trip through JSON', () => {
    const spec: AggregatorSpec = { kind: 'rolling-mean', window: 8 };
    expect(validateAggregatorSpec(JSON.parse(JSON.stringify(spec)))).toEqual(spec);
  });

  it('invalid specs give LW_ERR_PROBE_INVALID', () => {
    for (const bad of [
      null,
      { kind: 'median' },
      { kind: 'ema' },
      { kind: 'ema', alpha: 0 },
      { kind: 'ema', alpha: 1.5 },
      { kind: 'rolling-mean', window: 0 },
      { kind: 'rolling-max', window: 2.5 },
      { kind: 'max', window: 3 },
    ]) {
      try {
        validateAggregatorSpec(bad);
        expect.unreachable(JSON.stringify(bad));
      } catch (e) {
        expect(isLatentwatchError(e) && e.code).toBe('LW_ERR_PROBE_INVALID');
      }
    }
  });
});
