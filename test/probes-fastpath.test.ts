/**
 * The shipped generic detector scored by the daemon's fast path (int16 SIMD whitening by L⁻¹,
 * probes/probe.ts) against the float64 forward substitution of probes/gaussian.ts, on real
 * activations of the bundled model: the two must agree closely enough that thresholds fitted with
 * one hold for the other.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { mahalanobis } from '../src/probes/gaussian.js';
import { hookList, readProbeFile, type ProbeFile } from '../src/probes/probe-file.js';
import { createProbe, ProbeBank } from '../src/probes/probe.js';
import { CODE16M, TEST_CACHE } from './helpers.js';

describe('generic detector fast path vs float64 on real activations', () => {
  let engine: Engine;
  let file: ProbeFile;
  beforeAll(async () => {
    file = await readProbeFile(join(CODE16M, 'probes', 'generic-injection.probe.json'), null);
    engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, taps: 'all', ports: 'none' });
  });
  afterAll(() => engine.close());

  it('every position of a code prompt: ensemble scores within 2e-3 relative', async () => {
    if (file.kind !== 'ensemble-max') throw new Error('expected an ensemble');
    const ids = [...'def parse(text):\n    out = {}\n    for line in text.splitlines():\n        k, v = line.split("=")\n'].map((c) => c.charCodeAt(0) % 8000);
    const r = await engine.newSequence(ids.length).forward(ids, { taps: hookList(file.hook), logits: 'none' });
    const fast = new ProbeBank([createProbe(file)]).snapshot().score(r.taps, ids)[0].scores;
    const d = file.dModel;
    // Float64 reference: a windowed member scores the mean update over the last `size` positions
    // whose token pair is new in the request (the missing ones at the Gaussian's mean).
    const seen = new Set<string>();
    const novel = ids.map((id, p) => {
      const key = `${p === 0 ? 'none' : ids[p - 1]}>${id}`;
      const isNew = !seen.has(key);
      seen.add(key);
      return isNew;
    });
    const windows = file.members.map(() => [] as Float64Array[]);
    const last = file.members.map(() => 0);
    let worst = 0;
    let windowed = 0;
    for (let p = 0; p < ids.length; p++) {
      let want = -Infinity;
      file.members.forEach((m, k) => {
        if (m.kind !== 'mahalanobis' || m.gaussian.form !== 'cholesky') throw new Error('expected full-covariance members');
        const rows = hookList(m.hook).map((h) => r.taps.get(h)!.data.subarray(p * d, (p + 1) * d));
        const x = m.input === 'difference' ? Float64Array.from(rows[1], (v, j) => v - rows[0][j]) : Float64Array.from(rows[0]);
        const g = { form: 'cholesky' as const, shrinkage: m.gaussian.shrinkage, mean: Float64Array.from(m.gaussian.mean), factor: Float64Array.from(m.gaussian.factor) };
        let distance: number;
        if (m.window === undefined) distance = mahalanobis(g, x, 0, new Float64Array(d));
        else {
          windowed++;
          if (novel[p]) {
            const w = m.window;
            windows[k] = [...windows[k], x].slice(-w.size);
            const rows = windows[k];
            const mean = Float64Array.from(g.mean, (mu, j) => (rows.reduce((a, r) => a + r[j], 0) + (w.size - rows.length) * mu) / w.size);
            last[k] = w.minCount !== undefined && rows.length < w.minCount ? 0 : mahalanobis(g, mean, 0, new Float64Array(d));
            if (w.spread && rows.length >= 2 && last[k] > 0) {
              // The spread discount: mean scaled squared distance of the rows from their own mean.
              const own = Float64Array.from(g.mean, (_, j) => rows.reduce((a, r) => a + r[j], 0) / rows.length);
              const spread = rows.reduce((a, r) => a + r.reduce((b, v, j) => b + ((v - own[j]) * w.spread!.scale[j]) ** 2, 0), 0) / rows.length;
              if (spread > w.spread.reference) last[k] /= Math.sqrt(spread / w.spread.reference);
            }
          }
          distance = last[k];
        }
        want = Math.max(want, (distance - m.calibration.center) / m.calibration.scale);
      });
      worst = Math.max(worst, Math.abs(fast[p] - want) / Math.max(1, Math.abs(want)));
    }
    expect(windowed).toBeGreaterThan(0);
    expect(novel.some((x) => !x)).toBe(true);
    expect(worst).toBeLessThan(2e-3);
  });
});
