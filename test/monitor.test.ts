import { afterEach, describe, expect, it } from 'vitest';
import { AlertLog, type Alert } from '../src/daemon/alert-log.js';
import { DEFAULT_VERBALIZATION_PHRASES } from '../src/daemon/config.js';
import { RequestMonitor, type AlertRule, type MonitorOptions } from '../src/daemon/monitor.js';
import { VerbalizationDetector } from '../src/probes/verbalization.js';
import { createAggregator, type AggregatorSpec } from '../src/probes/aggregators.js';

const logs: AlertLog[] = [];
afterEach(() => {
  for (const l of logs.splice(0)) l.close();
});

const rule = (over: Partial<AlertRule> = {}): AlertRule => ({ threshold: 0.5, minConsecutive: 1, cooldownTokens: 0, cooldownSeconds: 0, severity: 'warning', ...over });

/** A monitor wired to a real (in-memory) alert log, as the daemon wires it. */
function setup(over: Partial<MonitorOptions> & { rules?: Record<string, AlertRule>; specs?: Record<string, AggregatorSpec> } = {}) {
  const log = AlertLog.open({ path: ':memory:' });
  logs.push(log);
  const raised: Alert[] = [];
  const calls: number[] = [];
  const scores: [string, number][] = [];
  const rules = over.rules ?? { p: rule() };
  const specs = over.specs ?? {};
  const mon = new RequestMonitor({
    requestId: 'req-1',
    model: 'tiny',
    probes: Object.entries(rules).map(([id, r]) => ({
      probe: { id, label: `label ${id}`, createAggregator: () => createAggregator(specs[id] ?? { kind: 'last' }) },
      rule: r,
    })),
    verbalization: { phrases: DEFAULT_VERBALIZATION_PHRASES, matchConceptWord: true },
    raise: (drafts) => {
      calls.push(drafts.length);
      return log.appendMany(drafts).map(({ alert }) => {
        raised.push(alert);
        return alert.id;
      });
    },
    onScore: (id, s) => scores.push([id, s]),
    ...over,
  });
  return { mon, log, raised, scores, calls };
}

/** Feed per-token scores for probe p as generated tokens at positions start.. with optional texts. */
function tokens(mon: RequestMonitor, start: number, values: number[], texts: string[] = [], probe = 'p'): number[] {
  const ids: number[] = [];
  values.forEach((v, i) => ids.push(...mon.step({ position: start + i, text: texts[i] ?? '' }, [{ probeId: probe, scores: [v] }])));
  return ids;
}

describe('request monitor: alert rule', () => {
  it('one alert per episode above the threshold (score > threshold), at the position it begins', () => {
    const { mon, raised } = setup();
    // prompt: positions 0..4 in one pass
    mon.step({ position: 4, text: '' }, [{ probeId: 'p', scores: [0.1, 0.6, 0.7, 0.5, 0.9] }]);
    expect(raised.map((a) => a.tokenIndex)).toEqual([1, 4]); // 0.5 is not above 0.5: a new episode at 4
    tokens(mon, 5, [0.95, 0.99, 0.2, 0.8]);
    expect(raised.map((a) => a.tokenIndex)).toEqual([1, 4, 8]);
    const v = mon.finish();
    expect(v.probes.p).toMatchObject({ maxScore: 0.99, finalScore: 0.8, fired: true, firstFiredAt: 1, alertIds: raised.map((a) => a.id), threshold: 0.5 });
    expect(raised[0]).toMatchObject({ requestId: 'req-1', model: 'tiny', probeId: 'p', probeLabel: 'label p', severity: 'warning', kind: 'detection', threshold: 0.5 });
    expect(raised[0].score).toBeCloseTo(0.6);
  });

  it('minConsecutive and cooldown (tokens), with a suppressed episode alerting once the cooldown ends', () => {
    const { mon, raised } = setup({ rules: { p: rule({ minConsecutive: 2, cooldownTokens: 4 }) } });
    //            pos: 0    1    2    3    4    5    6    7    8    9    10   11
    tokens(mon, 0, [0.9, 0.2, 0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.1, 0.9]);
    // 0: run 1 (<2). 2-3: run 2 → alert at 3. 5: ends. 6-7: run 2 at 7, but 7-3 = 4 ≤ cooldown → held back;
    // 8: 8-3 = 5 > 4 → alert at 8 (same episode). 11: run 1 only.
    expect(raised.map((a) => a.tokenIndex)).toEqual([3, 8]);
    expect(mon.finish().probes.p.alertIds).toHaveLength(2);
  });

  it('cooldown in seconds, on the monitor clock', () => {
    let now = 1_000_000;
    const { mon, raised } = setup({ rules: { p: rule({ cooldownSeconds: 10 }) }, now: () => now });
    tokens(mon, 0, [0.9, 0.1, 0.9, 0.1]);
    expect(raised.map((a) => a.tokenIndex)).toEqual([0]);
    now += 10_000;
    tokens(mon, 4, [0.9]);
    expect(raised.map((a) => a.tokenIndex)).toEqual([0, 4]);
    expect(raised[1].ts).toBe(new Date(now).toISOString());
  });

  it('a fired rule in cooldown for the whole request still counts as fired', () => {
    const { mon, raised } = setup({ rules: { p: rule({ cooldownSeconds: 3600 }) } });
    tokens(mon, 0, [0.9, 0.1, 0.9]);
    expect(raised).toHaveLength(1);
    expect(mon.finish().probes.p.fired).toBe(true);
  });

  it('applies the probe aggregator (real rolling mean) before the rule, and reports aggregated scores', () => {
    const { mon, raised, scores } = setup({ specs: { p: { kind: 'rolling-mean', window: 3 } } });
    tokens(mon, 0, [0.9, 0.0, 0.0, 0.9, 0.9, 0.9]);
    // means: .9, .45, .3, .3, .6, .9 → episodes at 0 and at 4
    expect(raised.map((a) => a.tokenIndex)).toEqual([0, 4]);
    expect(scores.map(([, s]) => Number(s.toFixed(2)))).toEqual([0.9, 0.45, 0.3, 0.3, 0.6, 0.9]);
    const v = mon.finish().probes.p;
    expect(v.maxScore).toBeCloseTo(0.9);
    expect(v.finalScore).toBeCloseTo(0.9);
  });

  it('several probes with their own rules; NaN is never above; nothing raised without signal', () => {
    const { mon, raised } = setup({ rules: { a: rule({ severity: 'critical' }), b: rule({ threshold: 0.95 }) } });
    mon.step({ position: 2, text: '' }, [
      { probeId: 'a', scores: [Number.NaN, 0.7, 0.1] },
      { probeId: 'b', scores: [0.9, 0.9, 0.9] },
      { probeId: 'unknown', scores: [1, 1, 1] },
    ]);
    expect(raised.map((x) => [x.probeId, x.tokenIndex, x.severity])).toEqual([['a', 1, 'critical']]);
    const v = mon.finish();
    expect(v.probes.a.fired).toBe(true);
    expect(v.probes.b).toMatchObject({ fired: false, alertIds: [], silent: false, maxScore: 0.9, threshold: 0.95 });
    const quiet = setup();
    tokens(quiet.mon, 0, [0.1, 0.2]);
    expect(quiet.mon.finish().probes.p).toMatchObject({ fired: false, silent: false, alertIds: [], firstFiredAt: null });
    expect(quiet.raised).toEqual([]);
    const empty = setup();
    expect(empty.mon.finish().probes.p).toMatchObject({ maxScore: null, finalScore: null });
  });

  it("one step's alerts of several probes go to the log in one call (one transaction), ids in order", () => {
    const { mon, raised, calls, log } = setup({ rules: { a: rule(), b: rule(), c: rule() } });
    const ids = mon.step({ position: 0, text: '' }, [
      { probeId: 'a', scores: [0.9] },
      { probeId: 'b', scores: [0.1] },
      { probeId: 'c', scores: [0.8] },
    ]);
    expect(calls).toEqual([2]);
    expect(ids).toEqual([1, 2]);
    expect(raised.map((x) => x.probeId)).toEqual(['a', 'c']);
    expect(log.since(0).map((x) => x.id)).toEqual([1, 2]);
    // A step that raises nothing makes no call.
    mon.step({ position: 1, text: '' }, [{ probeId: 'a', scores: [0.9] }]);
    expect(calls).toEqual([2]);
    const v = mon.finish();
    expect(v.probes.a.alertIds).toEqual([1]);
    expect(v.probes.c.alertIds).toEqual([2]);
  });
});

describe('request monitor: verbalization and silent', () => {
  it("immediate: alerts carry the text so far; the verdict carries the end status", () => {
    const { mon, raised, log } = setup({ excerptChars: 12 });
    mon.step({ position: 2, text: '' }, [{ probeId: 'p', scores: [0.1, 0.9, 0.9] }]); // fires in the prompt
    tokens(mon, 3, [0.1, 0.1, 0.1, 0.9], ['Hmm, ', 'I detect an inj', 'ected thought', '.']);
    expect(raised.map((a) => [a.tokenIndex, a.silent, a.verbalized])).toEqual([
      [1, true, false], // raised during the prompt: nothing said yet
      [6, false, true], // after the text verbalised
    ]);
    expect(raised[0].textExcerpt).toBeUndefined();
    expect(raised[1].textExcerpt).toBe('ted thought.'); // the last 12 characters
    const v = mon.finish();
    expect(v.verbalized).toBe(true);
    expect(v.verbalizedAt).toBe(4); // 'i detect' is a default phrase
    expect(v.probes.p).toMatchObject({ fired: true, verbalized: true, silent: false });
    expect(log.since(0).map((a) => a.silent)).toEqual([true, false]);
  });

  it('immediate: a response that never verbalises is silent in the verdict', () => {
    const { mon, raised } = setup();
    tokens(mon, 0, [0.9, 0.1], ['The weather ', 'is nice.']);
    expect(raised[0]).toMatchObject({ silent: true, verbalized: false, textExcerpt: 'The weather ' });
    expect(mon.finish().probes.p).toMatchObject({ fired: true, verbalized: false, silent: true });
  });

  it('settled: held until the text verbalises, or raised silent at the end', () => {
    let now = 5_000_000;
    const a = setup({ emit: 'settled', now: () => now });
    tokens(a.mon, 0, [0.9, 0.1], ['So ', 'far nothing. ']);
    expect(a.raised).toEqual([]);
    const detectedAt = new Date(now).toISOString();
    now += 2000;
    tokens(a.mon, 2, [0.1], ['I notice an intrusive thought about dust.']);
    expect(a.raised.map((x) => [x.tokenIndex, x.silent, x.verbalized, x.ts])).toEqual([[0, false, true, detectedAt]]);
    expect(a.mon.finish().probes.p.alertIds).toEqual([a.raised[0].id]);

    const b = setup({ emit: 'settled' });
    tokens(b.mon, 0, [0.9, 0.1, 0.9], ['a', 'b', 'c']);
    expect(b.raised).toEqual([]);
    const v = b.mon.finish();
    expect(b.raised.map((x) => [x.tokenIndex, x.silent])).toEqual([
      [0, true],
      [2, true],
    ]);
    expect(v.probes.p).toMatchObject({ silent: true, alertIds: b.raised.map((x) => x.id) });
    expect(b.mon.finish()).toBe(v); // idempotent
    expect(b.mon.observe(9, [{ probeId: 'p', scores: [0.9] }])).toEqual([]);
  });

  it('concept words count as whole words, across chunks, including at the very end', () => {
    const words = (texts: string[], concept = 'dust'): boolean => {
      const { mon } = setup({ conceptWords: [concept] });
      texts.forEach((t, i) => mon.pushText(t, i));
      return mon.finish().verbalized;
    };
    expect(words(['I keep thinking of D', 'UST everywhere'])).toBe(true);
    expect(words(['dusty roads'])).toBe(false);
    expect(words(['sand', 'dust is fine'])).toBe(false); // "sanddust": not a whole word
    expect(words(['the ', 'dust'])).toBe(true); // at the very end
    expect(words(['some dus', 'ts here'])).toBe(true); // plural
    expect(words(['ice   cream!'], 'ice cream')).toBe(true); // whitespace-normalised
    const { mon } = setup({ conceptWords: ['dust'], verbalization: { phrases: [], matchConceptWord: false } });
    mon.pushText('dust everywhere');
    expect(mon.finish().verbalized).toBe(false);
  });

  it('phrases match case-insensitively across token boundaries, with curly quotes normalised', () => {
    const d = new VerbalizationDetector(['injected thought', "i'm sensing"]);
    expect(d.push('Yes, I DETECT an INJECTED')).toBe(false);
    expect(d.push(' thought.')).toBe(true);
    expect(d.matched).toBe('injected thought');
    const q = new VerbalizationDetector(["i'm sensing"]);
    expect(q.push('I\u2019m sens')).toBe(false);
    expect(q.push('ing something')).toBe(true);
    const long = new VerbalizationDetector(['injected thought']);
    for (let i = 0; i < 2000; i++) long.push('blah ');
    expect(long.push('injected thou')).toBe(false);
    expect(long.push('ght')).toBe(true);
  });
});
