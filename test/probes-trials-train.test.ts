/** Training, evaluation and reports on a real (tiny) trial dataset of qwen2-code-16m. */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { computeConceptVectors, writeConceptVectors } from '../src/lab/concepts.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { Dataset } from '../src/lab/dataset.js';
import { evaluateProbe, evaluateProbeFile, selectPositions } from '../src/lab/eval.js';
import { createProbe, loadProbe, ProbeBank } from '../src/probes/probe.js';
import { readProbeFile, serializeProbeFile, writeProbeFile } from '../src/probes/probe-file.js';
import { writeReport } from '../src/lab/report.js';
import { trainProbe } from '../src/lab/train.js';
import { runTrials } from '../src/lab/trials.js';
import { CODE16M, QWEN2_TINY, TEST_CACHE, tempDir } from './helpers.js';
import { tinyConfig } from './probes-trials-helpers.js';

describe('probe training on trial data', () => {
  let data: string;
  let tinyFingerprint: string;

  beforeAll(async () => {
    const engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, taps: 'all', ports: 'all' });
    const cfg = tinyConfig();
    data = tempDir('lw-train-');
    const v = await computeConceptVectors(engine, { template: cfg.vectors.template, chat: cfg.chat, concepts: cfg.vectors.words.concepts, baseline: cfg.vectors.words.baseline });
    writeConceptVectors(join(data, 'concepts'), v);
    await runTrials({ engine, config: cfg, store: ConceptStore.open(join(data, 'concepts'), engine.fingerprint), outDir: data });
    await engine.close();
    const tiny = await Engine.load(QWEN2_TINY, { cacheDir: TEST_CACHE });
    tinyFingerprint = tiny.fingerprint;
    await tiny.close();
  });

  it('same data, same probe bytes; held-out concepts never reach training', () => {
    const a = trainProbe(Dataset.open(data));
    const b = trainProbe(Dataset.open(data));
    const text = serializeProbeFile(a.probe);
    expect(serializeProbeFile(b.probe)).toBe(text);
    const ds = Dataset.open(data);
    const evalConcepts = ds.manifest.split.evalConcepts;
    expect(a.probe.training.concepts.filter((c) => evalConcepts.includes(c))).toEqual([]);
    expect(a.probe.evaluation.concepts).toEqual([...evalConcepts].sort());
    expect(a.probe.modelFingerprint).toBe(ds.manifest.modelFingerprint);
    expect(a.probe.hook).toBe(`blocks.${a.chosen.layer}.hook_resid_post`);
    expect(a.layers.map((l) => l.layer)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(Object.keys(a.probe.evaluation.fprOnControls ?? {}).sort()).toEqual(['generation-only', 'none', 'random', 'unrelated-question']);
    // A fixed layer and the difference-of-means kind work too.
    const dm = trainProbe(ds, { layer: 6, kind: 'diff-means' });
    expect(dm.probe.kind).toBe('direction');
    expect(dm.chosen.layer).toBe(6);
  });

  it('eval-probe scores with the daemon scorer and agrees with the figures training stored', async () => {
    const file = join(tempDir(), 'p.probe.json');
    const r = trainProbe(Dataset.open(data));
    await writeProbeFile(file, r.probe);
    const ds = Dataset.open(data);
    const e = await evaluateProbeFile(file, ds);
    expect(e.auroc).toBe(r.probe.evaluation.auroc);
    expect(e['tpr_at_fpr_0.01']).toBe(r.probe.evaluation['tpr_at_fpr_0.01']);
    expect(e['tpr_at_fpr_0.05']).toBe(r.probe.evaluation['tpr_at_fpr_0.05']);
    expect(e.fpr_on_controls.none).toBe(r.probe.evaluation.fprOnControls!.none);
    expect(e.overlapWithTraining).toEqual([]);
    expect(e.positives).toBeGreaterThan(0);
    expect(e.negatives).toBeGreaterThan(0);
    // The probe scores one trial's rows exactly as ProbeBank would see them.
    const probe = createProbe(r.probe);
    const rec = ds.records.find((x) => x.condition === 'inject')!;
    const sel = selectPositions(rec, 'watch')!;
    const rows = ds.traceRows(rec, r.chosen.layer);
    const d = ds.manifest.dModel;
    const score = probe.scoreRow(rows, sel[0] * d);
    // The logistic probe's score, σ(bias + w · (x − mean)/std), in float64 from the file's numbers.
    expect(r.probe.kind).toBe('linear');
    if (r.probe.kind !== 'linear') throw new Error('unreachable');
    const { bias, weights, normalisation } = r.probe;
    let z = bias;
    for (let j = 0; j < d; j++) z += (weights[j] * (rows[sel[0] * d + j] - normalisation.mean[j])) / normalisation.std[j];
    expect(score).toBeCloseTo(1 / (1 + Math.exp(-z)), 5);
    // ProbeBank, given the trial's rows as a tap, scores that position the same.
    const tap = { positions: rows.length / d, dModel: d, data: rows };
    const [bank] = new ProbeBank([probe]).score(new Map([[probe.hooks[0], tap]]));
    expect(bank.scores[sel[0]]).toBe(Math.fround(score));
    expect(evaluateProbe(probe, ds).auroc).toBe(e.auroc);
  });

  it('a probe made for another model is refused with a coded error', async () => {
    const file = join(tempDir(), 'p.probe.json');
    await writeProbeFile(file, trainProbe(Dataset.open(data)).probe);
    await expect(loadProbe(file, tinyFingerprint)).rejects.toMatchObject({ code: 'LW_ERR_PROBE_MODEL_MISMATCH' });
    await expect(readProbeFile(file, tinyFingerprint)).rejects.toMatchObject({ code: 'LW_ERR_PROBE_MODEL_MISMATCH' });
    // eval-probe against a dataset of another model: the dataset's fingerprint decides.
    const other = tempDir('lw-other-');
    const m = JSON.parse(readFileSync(join(data, 'dataset.json'), 'utf8'));
    writeFileSync(join(other, 'dataset.json'), JSON.stringify({ ...m, modelFingerprint: tinyFingerprint }));
    writeFileSync(join(other, 'index.jsonl'), '');
    await expect(evaluateProbeFile(file, Dataset.open(other))).rejects.toMatchObject({ code: 'LW_ERR_PROBE_MODEL_MISMATCH' });
  });

  it('the report is deterministic and holds every figure it plots', () => {
    const a = tempDir('lw-rep-a-');
    const b = tempDir('lw-rep-b-');
    const r = writeReport(Dataset.open(data), a);
    writeReport(Dataset.open(data), b);
    for (const f of ['report.md', 'report.json', 'auroc-per-layer.svg', 'tpr1-per-layer.svg', 'tpr5-per-layer.svg', 'controls-per-layer.svg', 'controls-auroc-per-layer.svg', 'logit-shift-inject-then-ask.svg', 'logit-shift-continuous.svg', 'verbal-vs-probe.svg']) {
      expect(readFileSync(join(b, f)).equals(readFileSync(join(a, f))), f).toBe(true);
    }
    expect(r.layers).toHaveLength(16);
    expect(r.logitShift.every((s) => s.paired)).toBe(true);
    // inject-then-ask at layer 4: the lens shift is exactly 0 up to the injection layer.
    const ita = r.logitShift.find((s) => s.protocol === 'inject-then-ask')!;
    expect(ita.lensShift.slice(0, ita.injectionLayer + 1)).toEqual(Array(ita.injectionLayer + 1).fill(0));
    const md = readFileSync(join(a, 'report.md'), 'utf8');
    expect(md).toContain('## Held-out concepts, per probe layer (logistic)');
    expect(md).toContain('![Verbal vs probe](verbal-vs-probe.svg)');
  });
});
