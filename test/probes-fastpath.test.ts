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
    const fast = new ProbeBank([createProbe(file)]).score(r.taps)[0].scores;
    const d = file.dModel;
    let worst = 0;
    for (let p = 0; p < ids.length; p++) {
      let want = -Infinity;
      for (const m of file.members) {
        if (m.kind !== 'mahalanobis' || m.gaussian.form !== 'cholesky') throw new Error('expected full-covariance members');
        const rows = hookList(m.hook).map((h) => r.taps.get(h)!.data.subarray(p * d, (p + 1) * d));
        const x = m.input === 'difference' ? Float64Array.from(rows[1], (v, j) => v - rows[0][j]) : Float64Array.from(rows[0]);
        const g = { form: 'cholesky' as const, shrinkage: m.gaussian.shrinkage, mean: Float64Array.from(m.gaussian.mean), factor: Float64Array.from(m.gaussian.factor) };
        want = Math.max(want, (mahalanobis(g, x, 0, new Float64Array(d)) - m.calibration.center) / m.calibration.scale);
      }
      worst = Math.max(worst, Math.abs(fast[p] - want) / Math.max(1, Math.abs(want)));
    }
    expect(worst).toBeLessThan(2e-3);
  });
});
