/** train-probe features (issue 12): layer updates and several layers, stored as plain linear probes on resid_post hooks. */
import { beforeAll, describe, expect, it } from 'vitest';
import { Dataset } from '../src/lab/dataset.js';
import { evaluateProbe } from '../src/lab/eval.js';
import { foldFeatures, trainProbe, type FeatureSet } from '../src/lab/train.js';
import type { LinearModel } from '../src/probes/linear.js';
import { createProbe } from '../src/probes/probe.js';
import { createRng } from '../src/rng.js';
import { tinyConfig, tinyDataset } from './probes-trials-helpers.js';

describe('foldFeatures', () => {
  const d = 5;
  const rng = createRng(3);
  const vec = (n: number) => Float64Array.from({ length: n }, () => rng.next() * 2 - 1);

  /** The fitted model applied to feature rows built by hand from per-layer residual rows. */
  function direct(m: LinearModel, f: FeatureSet, resid: Map<number, Float64Array>): number {
    let z = m.bias;
    f.layers.forEach((l, j) => {
      for (let i = 0; i < d; i++) {
        const x = resid.get(l)![i] - (f.input === 'update' && l > 0 ? resid.get(l - 1)![i] : 0);
        z += (m.weights[j * d + i] * (x - m.mean[j * d + i])) / m.std[j * d + i];
      }
    });
    return z;
  }

  for (const f of [
    { layers: [3], input: 'update' },
    { layers: [0, 2, 3], input: 'update' },
    { layers: [1, 4], input: 'resid' },
  ] as FeatureSet[]) {
    it(`scores ${f.input} of layers ${f.layers.join(',')} on the raw hook rows exactly as on the features`, () => {
      const n = f.layers.length * d;
      const m: LinearModel = { weights: vec(n), mean: vec(n), std: vec(n).map((x) => 0.5 + Math.abs(x)), bias: 0.3 };
      const { hooks, model } = foldFeatures(m, f, d);
      expect(hooks).toEqual(f.input === 'update' ? [...new Set(f.layers.flatMap((l) => (l > 0 ? [l - 1, l] : [l])))].sort((a, b) => a - b) : f.layers);
      for (let t = 0; t < 5; t++) {
        const resid = new Map(Array.from({ length: 5 }, (_, l) => [l, vec(d)] as const));
        const row = hooks.flatMap((l) => [...resid.get(l)!]);
        let z = model.bias;
        for (let i = 0; i < row.length; i++) z += (model.weights[i] * (row[i] - model.mean[i])) / model.std[i];
        expect(z).toBeCloseTo(direct(m, f, resid), 10);
      }
    });
  }
});

describe('train-probe on update features and several layers', () => {
  let data: string;

  beforeAll(async () => {
    data = await tinyDataset(tinyConfig({ controls: { none: { trialsPerProtocol: 12 }, random: { trialsPerCell: 0 }, unrelatedQuestion: { trialsPerCell: 0 }, generationOnly: { trialsPerCell: 0 } } }), 'lw-features-');
  });

  it('an update probe reads hooks L−1 and L, and the daemon scorer reproduces the figures training stored', () => {
    const r = trainProbe(Dataset.open(data), { input: 'update', layer: 4 });
    expect(r.probe.hook).toEqual(['blocks.3.hook_resid_post', 'blocks.4.hook_resid_post']);
    expect(r.chosen.features).toEqual({ layers: [4], input: 'update' });
    expect(r.probe.description).toContain('update');
    const e = evaluateProbe(createProbe(r.probe), Dataset.open(data));
    expect(e.auroc).toBe(r.probe.evaluation.auroc);
    expect(e['tpr_at_fpr_0.01']).toBe(r.probe.evaluation['tpr_at_fpr_0.01']);
    expect(e.fpr_on_controls.none).toBe(r.probe.evaluation.fprOnControls?.none);
  });

  it('several layers make one concatenated probe; best picks among single layers', () => {
    const multi = trainProbe(Dataset.open(data), { input: 'update', layer: [2, 5] });
    expect(multi.layers).toHaveLength(1);
    expect(multi.probe.hook).toEqual([1, 2, 4, 5].map((l) => `blocks.${l}.hook_resid_post`));
    const e = evaluateProbe(createProbe(multi.probe), Dataset.open(data));
    expect(e.auroc).toBe(multi.probe.evaluation.auroc);
    const best = trainProbe(Dataset.open(data), { input: 'update' });
    expect(best.layers.map((l) => l.hooks)).toEqual([[0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 7]]);
  });
});
