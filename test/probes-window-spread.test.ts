/**
 * The windowed members' spread discount (issue 12, probes/window.ts) against numpy on fixed data
 * (scripts/window-spread-reference.py wrote test/fixtures/window-spread-reference.json): the fit's
 * scale and reference, the daemon's per-position scores over passes, and what the discount is for:
 * a window whose rows spread wider than clean ones (a kind of text the fit never held) scores lower
 * than without it, while a window moved by an added vector keeps its score.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createProbe, ProbeBank, type TapTensor } from '../src/probes/probe.js';
import { parseProbeFile, serializeProbeFile, validateProbeFile, type ProbeFile } from '../src/probes/probe-file.js';
import { fitAnomalyMembers, type Seq } from '../src/lab/generic.js';
import { novelPositions, spreadDiscount } from '../src/probes/window.js';

interface Reference {
  fit: { ids: number[]; h0: number[]; h1: number[] }[];
  skip: number;
  scale: number[];
  reference: number;
  probe: ProbeFile & { window: { size: number } };
  ids: number[];
  h0: number[];
  h1: number[];
  plain: number[];
  discounted: number[];
}
const REF = JSON.parse(readFileSync(new URL('./fixtures/window-spread-reference.json', import.meta.url), 'utf8')) as Reference;
const D = REF.probe.dModel;
const HOOKS = ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'];
// The cholesky scorer whitens with L⁻¹ stored as int16 with per-row scales: ~1e-4 relative.
const TOLERANCE = 2e-3;

function scores(file: ProbeFile, ends: number[]): number[] {
  const request = new ProbeBank([createProbe(validateProbeFile(file))]).snapshot();
  const out: number[] = [];
  let from = 0;
  for (const to of ends) {
    const rows = (h: number[]) => Float32Array.from(h.slice(from * D, to * D));
    const taps = new Map<string, TapTensor>([
      [HOOKS[0], { positions: to - from, dModel: D, data: rows(REF.h0) }],
      [HOOKS[1], { positions: to - from, dModel: D, data: rows(REF.h1) }],
    ]);
    out.push(...request.score(taps, REF.ids.slice(from, to))[0].scores);
    from = to;
  }
  return out;
}

describe('window spread discount', () => {
  it("fits scale (1/σ of the per-token update) and reference (clean windows' mean scaled spread) as numpy does", () => {
    const seqs: Seq[] = REF.fit.map((r, k) => ({
      id: `fit/${k}`,
      source: 'corpus',
      start: 0,
      positions: r.ids.length,
      ids: r.ids,
      rows: (l: number) => Float32Array.from(l === 0 ? r.h0 : r.h1),
    }));
    const m = fitAnomalyMembers(seqs, D, { layers: [1], window: REF.probe.window.size, skip: REF.skip }).find((x) => x.id === `update-L1-w${REF.probe.window.size}`)!;
    const spread = m.body.kind === 'mahalanobis' ? m.body.window?.spread : undefined;
    expect(spread).toBeDefined();
    // float32 rows here against float64 in numpy, then 7 significant digits: 1e-5 relative.
    spread!.scale.forEach((s, j) => expect(Math.abs(s - REF.scale[j]) / REF.scale[j]).toBeLessThan(1e-5));
    expect(Math.abs(spread!.reference - REF.reference) / REF.reference).toBeLessThan(1e-5);
    // Off on request: the plain windowed member, named apart so score caches never mix the two.
    const plain = fitAnomalyMembers(seqs, D, { layers: [1], window: REF.probe.window.size, skip: REF.skip, windowSpread: false });
    expect(plain.map((x) => x.id)).toEqual(['update-L1', `update-L1-w${REF.probe.window.size}-plain`]);
    expect(plain[1].body.kind === 'mahalanobis' && plain[1].body.window?.spread).toBeFalsy();
  });

  it("scores every position as numpy does, whichever passes the request arrives in", () => {
    for (const ends of [[REF.ids.length], [7, 13, 21, REF.ids.length], Array.from({ length: REF.ids.length }, (_, i) => i + 1)]) {
      const got = scores(REF.probe, ends);
      got.forEach((x, p) => expect(Math.abs(x - REF.discounted[p])).toBeLessThan(TOLERANCE * Math.max(1, REF.discounted[p])));
    }
  });

  it('discounts windows that spread wider than clean ones, and leaves a shifted window with a clean spread as it was', () => {
    const { spread: _drop, ...window } = REF.probe.window as { size: number; positions: 'novel-bigram'; spread: unknown };
    const plain = scores({ ...REF.probe, window } as ProbeFile, [REF.ids.length]);
    const discounted = scores(REF.probe, [REF.ids.length]);
    plain.forEach((x, p) => expect(Math.abs(x - REF.plain[p])).toBeLessThan(TOLERANCE * Math.max(1, REF.plain[p])));
    // Positions 10–17 spread 3× wider: their windows (novel positions 11–19) lose at least a third.
    for (let p = 11; p <= 19; p++) expect(discounted[p]).toBeLessThan(0.67 * plain[p]);
    // From position 24 the window holds shifted rows with a clean spread: the score stands.
    for (let p = 24; p < REF.ids.length; p++) expect(discounted[p]).toBeCloseTo(plain[p], 6);
    expect(Math.min(...discounted.slice(24))).toBeGreaterThan(Math.max(...discounted.slice(11, 20)));
  });

  it('scores 0 until minCount positions are counted, then as without it (repeated junk never fills a window)', () => {
    const minCount = 3;
    const got = scores({ ...REF.probe, window: { ...REF.probe.window, minCount } } as ProbeFile, [5, REF.ids.length]);
    const novel = novelPositions(REF.ids);
    let counted = 0;
    got.forEach((x, p) => {
      counted += novel[p];
      if (counted < minCount) expect(x).toBe(0);
      else expect(Math.abs(x - REF.discounted[p])).toBeLessThan(TOLERANCE * Math.max(1, REF.discounted[p]));
    });
    expect(novel.slice(0, 3).reduce((a, b) => a + b, 0)).toBeLessThan(minCount + 1);
    expect(() => validateProbeFile({ ...REF.probe, window: { ...REF.probe.window, minCount: 5 } })).toThrow(/minCount/);
  });

  it('is never a boost: a window that spreads less than the reference, or has one row, keeps its distance', () => {
    expect(spreadDiscount(0.5, 2)).toBe(1);
    expect(spreadDiscount(Number.NaN, 2)).toBe(1);
    expect(spreadDiscount(8, 2)).toBe(2);
  });

  it('survives the probe file round trip', () => {
    const back = parseProbeFile(serializeProbeFile(validateProbeFile(REF.probe)), 'lw1-reference');
    expect(back.kind === 'mahalanobis' && back.window?.spread).toEqual({ scale: REF.scale, reference: REF.reference });
  });

  it('refuses a scale of the wrong length with a coded error', () => {
    const bad = { ...REF.probe, window: { ...REF.probe.window, spread: { scale: REF.scale.slice(1), reference: REF.reference } } };
    expect(() => validateProbeFile(bad)).toThrow(/window\.spread\.scale/);
  });
});
