/**
 * fit-anomaly's held-out-style calibration (issue 12) fits every member once per style left out.
 * Those fits now come from per-style moments added up (src/lab/generic.ts leaveOneStyleOutMembers)
 * instead of a pass over the rows per style; they must be the members a fit on the rows without
 * the style gives (fitAnomalyMembers), window spread sums included. Tolerance: every number of a
 * member's body within 1e-6 of the largest of its kind (both are rounded to 7 significant digits).
 */
import { describe, expect, it } from 'vitest';
import type { CorpusRun } from '../src/lab/corpus.js';
import { fitAnomalyMembers, leaveOneStyleOutMembers, type AnomalyMemberOptions, type Seq } from '../src/lab/generic.js';
import { createRng } from '../src/rng.js';

const d = 12;
const LAYERS = 3;

function seq(id: string, style: string, alwaysFitted: boolean, n: number, offset: number, rng: ReturnType<typeof createRng>): Seq {
  const rows = Array.from({ length: LAYERS }, (_, l) => Float32Array.from({ length: n * d }, (_, i) => rng.gaussian() * (1 + (i % d) / d) + offset * (l + 1) + (i % 3)));
  // Token ids with repeats, so some positions are not novel.
  const ids = Array.from({ length: n }, (_, i) => rng.int(7) + (i % 5 === 0 ? 0 : 10));
  return { id, source: 'corpus', run: { style, alwaysFitted } as unknown as CorpusRun, start: 0, positions: n, ids, rows: (l) => rows[l] };
}

function numbers(x: unknown, out: number[] = []): number[] {
  if (typeof x === 'number') out.push(x);
  else if (Array.isArray(x) || ArrayBuffer.isView(x)) for (const v of Array.from(x as ArrayLike<unknown>)) numbers(v, out);
  else if (x && typeof x === 'object') for (const k of Object.keys(x).sort()) numbers((x as Record<string, unknown>)[k], out);
  return out;
}

describe('leave-one-style-out members from per-style moments', () => {
  const rng = createRng(11);
  const fit: Seq[] = [];
  ['code', 'prose', 'chat'].forEach((style, k) => {
    for (let i = 0; i < 4; i++) fit.push(seq(`${style}/${i}`, style, false, 30 + 7 * i, k * 0.8, rng));
  });
  for (let i = 0; i < 3; i++) fit.push(seq(`junk/${i}`, 'degenerate', true, 25, 3, rng));
  const options: AnomalyMemberOptions = { layers: [0, 1, 2], skip: 4, window: 4, windowFrom: 1 };

  it('equal fitAnomalyMembers on the rows without each style, windowed members and spread included', () => {
    const styles = ['code', 'prose', 'chat'];
    const fast = leaveOneStyleOutMembers(fit, d, options, styles)!;
    expect(fast).not.toBeNull();
    for (const g of styles) {
      const slow = fitAnomalyMembers(
        fit.filter((s) => s.run!.alwaysFitted || s.run!.style !== g),
        d,
        options,
      );
      const got = fast.get(g)!;
      expect(got.map((m) => m.id).sort()).toEqual(slow.map((m) => m.id).sort());
      expect(got.some((m) => m.body.kind === 'mahalanobis' && m.body.window?.spread)).toBe(true);
      for (const m of slow) {
        const a = numbers(m.body);
        const b = numbers(got.find((x) => x.id === m.id)!.body);
        expect(b.length, `${g} ${m.id}`).toBe(a.length);
        const scale = Math.max(...a.map(Math.abs));
        const worst = Math.max(...a.map((v, i) => Math.abs(v - b[i])));
        expect(worst / scale, `${g} ${m.id}`).toBeLessThan(1e-6);
      }
    }
  });

  it('leaves other covariance forms to the row fits', () => {
    expect(leaveOneStyleOutMembers(fit, d, { ...options, covariance: 'diagonal' }, ['code'])).toBeNull();
  });
});
