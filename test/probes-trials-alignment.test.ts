/**
 * heldOutAlignment (src/lab/concepts.ts): how held-out concept directions relate to the training
 * concepts', which bounds what a linear probe can generalise to (issue 12). Checked on vectors whose
 * answer is known in closed form, and on random vectors against an independent computation (the
 * span projection by the normal equations instead of Gram–Schmidt).
 */
import { describe, expect, it } from 'vitest';
import { heldOutAlignment } from '../src/lab/concepts.js';
import { createRng } from '../src/rng.js';
import { thrown } from './helpers.js';

const basis = (d: number, i: number, scale = 1): Float32Array => {
  const v = new Float32Array(d);
  v[i] = scale;
  return v;
};

/** ‖projection of u on span(rows)‖ by solving (T Tᵀ) c = T u (Gaussian elimination, partial pivoting). */
function spanNormBySolve(rows: Float64Array[], u: Float64Array): number {
  const k = rows.length;
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + x * b[i], 0);
  const m = rows.map((r) => [...rows.map((q) => dot(r, q)), dot(r, u)]);
  for (let c = 0; c < k; c++) {
    let p = c;
    for (let r = c + 1; r < k; r++) if (Math.abs(m[r][c]) > Math.abs(m[p][c])) p = r;
    [m[c], m[p]] = [m[p], m[c]];
    for (let r = 0; r < k; r++) {
      if (r === c) continue;
      const f = m[r][c] / m[c][c];
      for (let j = c; j <= k; j++) m[r][j] -= f * m[c][j];
    }
  }
  const coef = m.map((row, i) => row[k] / row[i]);
  return Math.sqrt(coef.reduce((s, c, i) => s + c * dot(rows[i], u), 0));
}

describe('heldOutAlignment', () => {
  it('gives the closed-form figures on basis vectors (norms do not matter)', () => {
    const d = 16;
    const train = [basis(d, 0, 3), basis(d, 1, 0.5), basis(d, 2, 7), basis(d, 3, 1)];
    const inside = new Float32Array(d);
    inside[0] = 5;
    inside[1] = 5; // (e0 + e1)/√2: cos with the mean direction (e0+e1+e2+e3)/2 is 1/√2, wholly in the span
    const a = heldOutAlignment(4, train, [inside, basis(d, 9, 2)]);
    expect(a.layer).toBe(4);
    expect(a.train).toBe(4);
    expect(a.heldOut).toBe(2);
    expect(a.cosWithTrainMean.max).toBeCloseTo(Math.SQRT1_2, 6);
    expect(a.cosWithTrainMean.min).toBeCloseTo(0, 12);
    expect(a.cosWithTrainMean.mean).toBeCloseTo(Math.SQRT1_2 / 2, 6);
    expect(a.cosWithTrainMean.std).toBeCloseTo(Math.SQRT1_2 / 2, 6);
    expect(a.meanAbsPairCos).toBe(0);
    expect(a.inTrainSpan).toBeCloseTo(0.5, 6); // 1 and 0
    expect(a.randomCosSpread).toBeCloseTo(1 / 4, 12);
    expect(a.randomInSpan).toBeCloseTo(Math.sqrt(4 / 16), 12);
  });

  it('matches an independent computation on random vectors with a shared component', () => {
    const rng = createRng(7);
    const d = 24;
    const shared = Float64Array.from({ length: d }, () => rng.gaussian());
    const draw = () => Float32Array.from(shared, (s) => s + rng.gaussian());
    const train = Array.from({ length: 6 }, draw);
    const held = Array.from({ length: 5 }, draw);
    const a = heldOutAlignment(0, train, held);
    const unit = (v: ArrayLike<number>) => {
      const n = Math.hypot(...Array.from(v));
      return Float64Array.from(v, (x) => x / n);
    };
    const tr = train.map(unit);
    const ho = held.map(unit);
    const mean = tr.reduce((acc, u) => acc.map((x, i) => x + u[i]), new Float64Array(d));
    const meanUnit = unit(mean);
    const cos = ho.map((u) => u.reduce((s, x, i) => s + x * meanUnit[i], 0));
    expect(a.cosWithTrainMean.mean).toBeCloseTo(cos.reduce((s, x) => s + x, 0) / cos.length, 9);
    expect(a.cosWithTrainMean.max).toBeCloseTo(Math.max(...cos), 9);
    const span = ho.map((u) => spanNormBySolve(tr, u));
    expect(a.inTrainSpan).toBeCloseTo(span.reduce((s, x) => s + x, 0) / span.length, 9);
    // The shared component shows: held-out directions lean toward the training mean, more than chance.
    expect(a.cosWithTrainMean.mean).toBeGreaterThan(2 * a.randomCosSpread);
    expect(a.inTrainSpan).toBeGreaterThan(a.randomInSpan);
  });

  it('refuses too few vectors, a zero vector and mixed widths with a coded error', () => {
    expect(thrown(() => heldOutAlignment(0, [basis(4, 0)], [basis(4, 1)])).code).toBe('LW_ERR_CONCEPTS_INVALID');
    expect(thrown(() => heldOutAlignment(0, [basis(4, 0), basis(4, 1)], [])).code).toBe('LW_ERR_CONCEPTS_INVALID');
    expect(thrown(() => heldOutAlignment(0, [basis(4, 0), new Float32Array(4)], [basis(4, 1)])).code).toBe('LW_ERR_CONCEPTS_INVALID');
    expect(thrown(() => heldOutAlignment(0, [basis(4, 0), basis(5, 1)], [basis(4, 1)])).code).toBe('LW_ERR_CONCEPTS_INVALID');
  });
});
