/**
 * The length allowance (issue 12: a request's false-alert rate should not grow with its length):
 * the aggregator and the fitted slope against numpy on fixed data
 * (scripts/length-allowance-reference.py wrote test/fixtures/length-allowance-reference.json), the
 * spec's coded errors and file round trip, the daemon's streaming aggregator equal to the offline
 * one, and the property it exists for: on clean requests of very different lengths the per-request
 * rate at one threshold stays level, where without it the long requests fire several times as often.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { aggregateSequence, createAggregator, validateAggregatorSpec, type AggregatorSpec } from '../src/probes/aggregators.js';
import { fitLengthAllowance, requestScore, setEnsembleThreshold, thresholdAtFpr, withLengthAllowance } from '../src/probes/calibration.js';
import { createRng } from '../src/rng.js';
import { thrown } from './helpers.js';

interface Reference {
  aggregates: number[][];
  perLog: number;
  aggregator: AggregatorSpec;
  requests: number[][];
  requestScores: number[];
  requestScoresPlain: number[];
}
const REF = JSON.parse(readFileSync(new URL('./fixtures/length-allowance-reference.json', import.meta.url), 'utf8')) as Reference;

describe('length allowance', () => {
  it('fits the slope numpy computes (mean excess over the 99th percentile), rounded to 7 digits', () => {
    const la = fitLengthAllowance(REF.aggregates);
    expect(la).not.toBeNull();
    expect(Math.abs(la!.perLog - REF.perLog) / REF.perLog).toBeLessThan(1e-6);
    expect(la!.from).toBe(16);
    // Too few positions to say anything about a tail: no allowance rather than a guess.
    expect(fitLengthAllowance([REF.aggregates[2]])).toBeNull();
  });

  it('scores requests as numpy does, with and without the allowance', () => {
    const spec = validateAggregatorSpec(REF.aggregator);
    const { lengthAllowance: _la, ...plain } = spec;
    REF.requests.forEach((r, i) => {
      expect(Math.abs(requestScore(r, spec) - REF.requestScores[i])).toBeLessThan(1e-12);
      expect(Math.abs(requestScore(r, plain as AggregatorSpec) - REF.requestScoresPlain[i])).toBeLessThan(1e-12);
    });
    // The injected-like request (a lasting shift from position 31) still stands out after the allowance.
    expect(REF.requestScores[2]).toBeGreaterThan(REF.requestScores[1] + 1);
  });

  it('the streaming aggregator (the daemon, one push per token) equals the offline one, also from mid-request', () => {
    const spec = validateAggregatorSpec(REF.aggregator);
    const r = REF.requests[2];
    const agg = createAggregator(spec);
    const streamed = r.map((x) => agg.push(x));
    expect(Array.from(aggregateSequence(spec, r))).toEqual(streamed);
    // A sequence read from position 50 of the same request: the allowance counts the 48 scored before it.
    const tail = aggregateSequence({ ...spec, skip: undefined } as AggregatorSpec, r.slice(50), 48);
    for (let p = 52; p < r.length; p++) expect(Math.abs(tail[p - 50] - streamed[p])).toBeLessThan(1e-12);
    expect(requestScore(r.slice(50), spec, 50)).toBe(Math.max(...streamed.slice(50)));
  });

  it('is part of the spec: validated with coded errors, kept through a round trip, stripped by refits', () => {
    expect(validateAggregatorSpec(JSON.parse(JSON.stringify(REF.aggregator)))).toEqual(REF.aggregator);
    for (const bad of [{ perLog: -1, from: 4 }, { perLog: 0.2, from: 0 }, { perLog: 0.2, from: 1.5 }, { perLog: Number.NaN, from: 4 }, { perLog: 0.2 }, { perLog: 0.2, from: 4, extra: 1 }, 'x']) {
      expect(thrown(() => validateAggregatorSpec({ kind: 'max', lengthAllowance: bad })).code).toBe('LW_ERR_PROBE_INVALID');
    }
    const refit = withLengthAllowance({ kind: 'max', lengthAllowance: { perLog: 9, from: 2 } }, REF.aggregates);
    expect(refit.lengthAllowance?.perLog).toBeCloseTo(REF.perLog, 6);
    expect(withLengthAllowance({ kind: 'max', lengthAllowance: { perLog: 9, from: 2 } }, [[1, 2]])).toEqual({ kind: 'max' });
  });

  it('keeps the per-request false-alert rate level across lengths, where one plain threshold does not', () => {
    // Clean requests: AR(1) per-position scores (neighbouring positions alike, as a rolling mean makes
    // them) with a Gumbel innovation; half of 32 positions, half of 768. Calibrate on one set, measure
    // on another.
    const rng = createRng(7);
    const gumbel = () => -Math.log(-Math.log(Math.max(1e-12, rng.next())));
    const request = (n: number): Float64Array => {
      const x = new Float64Array(n);
      let prev = 0;
      for (let i = 0; i < n; i++) x[i] = prev = 0.5 * prev + 0.4 * gumbel();
      return x;
    };
    const make = (k: number) => Array.from({ length: k }, (_, i) => ({ scores: request(i % 2 === 0 ? 32 : 768), start: 0, population: 'clean', short: i % 2 === 0 }));
    const calibration = make(2000);
    const test = make(4000);
    const base: AggregatorSpec = { kind: 'last' };
    const member = { calibration: { center: 0, scale: 1 }, body: { kind: 'mahalanobis' } } as never;
    const set = setEnsembleThreshold([member], () => calibration, base, 0.01);
    expect(set.aggregator.lengthAllowance?.perLog).toBeGreaterThan(0);
    const rate = (agg: AggregatorSpec, threshold: number, short: boolean) => {
      const xs = test.filter((r) => r.short === short);
      return xs.filter((r) => requestScore(r.scores, agg) > threshold).length / xs.length;
    };
    const withShort = rate(set.aggregator, set.threshold, true);
    const withLong = rate(set.aggregator, set.threshold, false);
    const plainThreshold = thresholdAtFpr(
      calibration.map((r) => requestScore(r.scores, base)),
      0.01,
    );
    const plainShort = rate(base, plainThreshold, true);
    const plainLong = rate(base, plainThreshold, false);
    // Plain: long requests carry nearly every false alert.
    expect(plainLong).toBeGreaterThan(5 * Math.max(plainShort, 0.001));
    // With the allowance both lengths sit near the 1% target (within a factor of 3 of each other).
    expect(withShort).toBeGreaterThan(0.002);
    expect(withLong).toBeLessThan(0.03);
    expect(Math.max(withShort, withLong) / Math.max(1e-9, Math.min(withShort, withLong))).toBeLessThan(3);
  });
});
