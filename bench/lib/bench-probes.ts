/**
 * Probes for benches and load tests, trained in seconds on any checkpoint: a fixed random unit
 * direction is injected at `injectLayer` (strength = the mean residual norm there), and one
 * difference-of-means probe per layer in `layers` reads the residual stream after that layer. The
 * threshold sits midway between the highest clean score and the lowest injected one, so clean
 * traffic never fires and an injected request always does (checked at training time).
 *
 * The same recipe as test/daemon-fixture.ts, for several layers at once and for any model.
 */
import { join } from 'node:path';
import { Engine } from '../../src/engine/engine.js';
import { residPost } from '../../src/hooks.js';
import { createRng } from '../../src/rng.js';
import { fitDiffMeans } from '../../src/lab/logistic.js';
import { matrix } from '../../src/probes/matrix.js';
import { linearBody, writeProbeFile, type ProbeFile } from '../../src/probes/probe-file.js';
import { createProbe } from '../../src/probes/probe.js';

const PROMPTS = ['import os\n\ndef ', 'class Cache:\n    def ', '# parse the config\nfor line in ', 'def test_add():\n    assert ', 'with open(path) as f:\n    ', 'x = [i * 2 for i in '];

export interface BenchProbe {
  id: string;
  layer: number;
  path: string;
}

export interface BenchProbeSet {
  probes: BenchProbe[];
  /** Unit direction to inject (admin request: `latentwatch.inject.vector`). */
  vector: number[];
  /** Injection strength: the mean residual norm at `injectLayer`. */
  scale: number;
  injectLayer: number;
  fingerprint: string;
}

export interface BenchProbeOptions {
  /** Where the probe files go. */
  dir: string;
  /** Layer the direction is injected at (default 3, or the middle layer if the model is shallower). */
  injectLayer?: number;
  /** Layers read by one probe each (default: every layer after injectLayer). */
  layers?: number[];
  /** Probe ids are `${prefix}-L${layer}` (default 'bench'). */
  prefix?: string;
  /** Alert label of every probe (default 'bench injection probe'). */
  label?: string;
  seed?: number;
  cacheDir?: string;
  /** An engine already loaded for the model (not closed here). */
  engine?: Engine;
}

export async function trainBenchProbes(modelDir: string, o: BenchProbeOptions): Promise<BenchProbeSet> {
  const engine = o.engine ?? (await Engine.load(modelDir, { cacheDir: o.cacheDir, maxBatch: 1 }));
  try {
    const L = engine.config.numLayers;
    const D = engine.config.hiddenSize;
    const injectLayer = o.injectLayer ?? Math.min(3, Math.floor(L / 2));
    const layers = o.layers ?? Array.from({ length: L - injectLayer - 1 }, (_, i) => injectLayer + 1 + i);
    if (layers.length === 0) throw new Error(`no probe layers after injection layer ${injectLayer} (${L} layers)`);
    const rnd = createRng(o.seed ?? 1234).next;
    const v = Float32Array.from({ length: D }, () => rnd() * 2 - 1);
    const n = Math.hypot(...v);
    for (let i = 0; i < D; i++) v[i] /= n;
    const tok = engine.tokenizer;
    if (!tok) throw new Error(`${modelDir} has no tokenizer`);
    const injHook = residPost(injectLayer);
    let normSum = 0;
    let normCount = 0;
    for (const text of PROMPTS) {
      const ids = tok.encode(text);
      const seq = engine.newSequence(ids.length);
      const r = await seq.forward(ids, { taps: [injHook], logits: 'none' });
      seq.release();
      const base = r.taps.get(injHook)!.data;
      for (let p = 0; p < ids.length; p++) {
        normSum += Math.hypot(...base.subarray(p * D, (p + 1) * D));
        normCount++;
      }
    }
    const scale = normSum / normCount;
    const hooks = layers.map(residPost);
    const rows = new Map<string, Float32Array[]>(hooks.map((h) => [h, []]));
    const labels: number[] = [];
    for (const text of PROMPTS) {
      const ids = tok.encode(text);
      for (const inject of [false, true]) {
        const seq = engine.newSequence(ids.length);
        const r = await seq.forward(ids, { taps: hooks, logits: 'none', injections: inject ? [{ hook: injHook, vector: v, scale, window: { kind: 'all' } }] : [] });
        seq.release();
        for (const h of hooks) {
          const data = r.taps.get(h)!.data;
          for (let p = 0; p < ids.length; p++) rows.get(h)!.push(data.slice(p * D, (p + 1) * D));
        }
        for (let p = 0; p < ids.length; p++) labels.push(inject ? 1 : 0);
      }
    }
    const probes: BenchProbe[] = [];
    for (const [k, layer] of layers.entries()) {
      const hook = hooks[k];
      const hr = rows.get(hook)!;
      const flat = new Float32Array(hr.length * D);
      hr.forEach((r, i) => flat.set(r, i * D));
      const body = linearBody(fitDiffMeans(matrix(hr.length, D, flat), labels), 'direction');
      const figures = { trials: hr.length, concepts: ['random-direction'], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };
      const id = `${o.prefix ?? 'bench'}-L${layer}`;
      const draft: ProbeFile = {
        formatVersion: 1,
        id,
        label: o.label ?? 'bench injection probe',
        description: `difference of means: a random direction injected at layer ${injectLayer}, read at layer ${layer} (bench fixture)`,
        modelFingerprint: engine.fingerprint,
        hook,
        dModel: D,
        threshold: 0,
        targetFpr: 0,
        aggregator: { kind: 'max' },
        training: figures,
        evaluation: figures,
        ...body,
      };
      const scorer = createProbe(draft);
      const scores = hr.map((r) => scorer.scoreRow(r, 0));
      const cleanMax = Math.max(...scores.filter((_, i) => labels[i] === 0));
      const injMin = Math.min(...scores.filter((_, i) => labels[i] === 1));
      if (!(injMin > cleanMax)) throw new Error(`probe ${id} does not separate: clean max ${cleanMax}, injected min ${injMin}`);
      const path = join(o.dir, `${id}.probe.json`);
      await writeProbeFile(path, { ...draft, threshold: (cleanMax + injMin) / 2 });
      probes.push({ id, layer, path });
    }
    return { probes, vector: Array.from(v), scale, injectLayer, fingerprint: engine.fingerprint };
  } finally {
    if (!o.engine) await engine.close();
  }
}
