/**
 * The concept-match probe (issue 12): a bank of per-concept linear probes made from the stored concept
 * vectors. The scorer against an independent float64 computation; the file format; training on real
 * trials of the built-in model, where concepts no trial trained on are detected and random directions
 * are held to the target rate; served by a real daemon, whose alerts name the concept.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { trainConceptMatch, whitenedDirections } from '../src/lab/concept-match.js';
import { Dataset } from '../src/lab/dataset.js';
import { evaluateProbe, probeLayers, scoreSplit, TraceCache, trialRowScorer } from '../src/lab/eval.js';
import { parseProbeFile, serializeProbeFile, validateProbeFile, writeProbeFile, type ProbeFile } from '../src/probes/probe-file.js';
import { createProbe } from '../src/probes/probe.js';
import { createRng } from '../src/rng.js';
import { ADMIN_KEY, completeVerdict, startModelDaemon } from './daemon-fixture.js';
import { CODE16M, tempDir, thrown } from './helpers.js';

function expectLwError(fn: () => unknown, code: string, message: RegExp): void {
  const e = thrown(fn);
  expect(e.code).toBe(code);
  expect(e.message).toMatch(message);
}
import { tinyConfig, tinyDataset } from './probes-trials-helpers.js';

const d = 7;
const rng = createRng(11);
const gauss = () => {
  const u = Math.max(rng.next(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
};
const vec = (n: number) => Float32Array.from({ length: n }, gauss);

/** A well-conditioned packed lower-triangular factor. */
function factor(): number[] {
  const out: number[] = [];
  for (let i = 0; i < d; i++) for (let j = 0; j <= i; j++) out.push(j === i ? 0.5 + rng.next() : 0.4 * gauss());
  return out;
}

/** Reference: solve L z = v by forward substitution in float64, straight from the packed factor. */
function solve(packed: readonly number[], v: ArrayLike<number>): Float64Array {
  const z = new Float64Array(d);
  for (let i = 0; i < d; i++) {
    let s = v[i];
    for (let k = 0; k < i; k++) s -= packed[(i * (i + 1)) / 2 + k] * z[k];
    z[i] = s / packed[(i * (i + 1)) / 2 + i];
  }
  return z;
}

const cosine = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
};

const FIGS = { trials: 0, concepts: [], auroc: null, 'tpr_at_fpr_0.01': null, 'tpr_at_fpr_0.05': null };

function matchFile(window?: number): { file: ProbeFile; packed: number[]; mean: number[]; concepts: Float32Array[] } {
  const packed = factor();
  const mean = Array.from(vec(d));
  const concepts = [vec(d), vec(d), vec(d)];
  const g = { form: 'cholesky' as const, shrinkage: 0.1, mean: Float64Array.from(mean), factor: Float64Array.from(packed) };
  const file = validateProbeFile({
    formatVersion: 1,
    id: 'match',
    kind: 'concept-match',
    label: 'concept injection',
    description: '',
    modelFingerprint: 'm',
    hook: ['blocks.2.hook_resid_post', 'blocks.3.hook_resid_post'],
    dModel: d,
    threshold: 0.5,
    targetFpr: 0.01,
    aggregator: { kind: 'max' },
    training: FIGS,
    evaluation: FIGS,
    input: 'difference',
    ...(window ? { window: { size: window, positions: 'all' } } : {}),
    gaussian: { form: 'cholesky', shrinkage: 0.1, mean, factor: packed },
    concepts: { names: ['Oceans', 'Snow', 'Bread'], directions: whitenedDirections(g, concepts) },
  });
  return { file, packed, mean, concepts };
}

describe('concept-match scorer', () => {
  it('whitenedDirections are the unit solutions of L z = c', () => {
    const { packed, concepts, file } = matchFile();
    const dirs = (file as Extract<ProbeFile, { kind: 'concept-match' }>).concepts.directions;
    concepts.forEach((c, k) => {
      const z = solve(packed, c);
      const unit = Array.from(z, (x) => x / Math.hypot(...z));
      for (let i = 0; i < d; i++) expect(dirs[k * d + i]).toBeCloseTo(unit[i], 12);
    });
  });

  it('scores max_k cos(L⁻¹(x₁ − x₀ − mean), L⁻¹cₖ), as a float64 reference computes it (int16 whitening: within 2e-3)', () => {
    const { file, packed, mean, concepts } = matchFile();
    const probe = createProbe(file);
    expect(probe.ordered).toBe(false);
    for (let t = 0; t < 40; t++) {
      const row = vec(2 * d);
      // Half the rows carry a concept along, so high and low cosines are both checked.
      if (t % 2 === 0) for (let i = 0; i < d; i++) row[d + i] += 3 * concepts[t % 3][i];
      const x = Array.from({ length: d }, (_, i) => row[d + i] - row[i] - mean[i]);
      const z = solve(packed, x);
      const want = Math.max(...concepts.map((c) => cosine(z, solve(packed, c))));
      expect(Math.abs(probe.scoreRow(row, 0) - want)).toBeLessThan(2e-3);
    }
  });

  it('a window scores the mean update of the last W positions, per request, in order', () => {
    const W = 3;
    const { file, packed, mean, concepts } = matchFile(W);
    const probe = createProbe(file);
    expect(probe.ordered).toBe(true);
    const rows = Array.from({ length: 8 }, () => vec(2 * d));
    const scorer = probe.createScorer();
    rows.forEach((row, p) => {
      const from = Math.max(0, p - W + 1);
      const x = Array.from({ length: d }, (_, i) => {
        let s = 0;
        for (let q = from; q <= p; q++) s += rows[q][d + i] - rows[q][i];
        return s / (p - from + 1) - mean[i];
      });
      const z = solve(packed, x);
      const want = Math.max(...concepts.map((c) => cosine(z, solve(packed, c))));
      expect(Math.abs(scorer(row, 0, true) - want)).toBeLessThan(2e-3);
    });
  });

  it('the file round-trips byte for byte; wrong shapes and a non-whitening Gaussian are coded errors', () => {
    const { file } = matchFile(4);
    const text = serializeProbeFile(file);
    expect(serializeProbeFile(parseProbeFile(text, 'm'))).toBe(text);
    const o = JSON.parse(text);
    expectLwError(() => validateProbeFile({ ...o, concepts: { ...o.concepts, directions: o.concepts.directions.slice(1) } }), 'LW_ERR_PROBE_INVALID', /\$\.concepts\.directions: expected 21 numbers/);
    expectLwError(() => validateProbeFile({ ...o, gaussian: { form: 'diagonal', shrinkage: 0, mean: o.gaussian.mean, variance: new Array(d).fill(1) } }), 'LW_ERR_PROBE_INVALID', /cholesky/);
    expectLwError(() => validateProbeFile({ ...o, concepts: { names: ['a', 'a', 'b'], directions: o.concepts.directions } }), 'LW_ERR_PROBE_INVALID', /concepts\.names/);
    expectLwError(() => validateProbeFile({ ...o, window: { ...o.window, spread: { scale: new Array(d).fill(1), reference: 1 } } }), 'LW_ERR_PROBE_INVALID', /window\.spread: a concept-match window has no spread/);
  });
});

describe('train-probe --kind concept-match on trials of the built-in model', () => {
  let data: string;

  beforeAll(async () => {
    data = await tinyDataset(tinyConfig({ controls: { none: { trialsPerProtocol: 16 }, random: { trialsPerCell: 6 }, unrelatedQuestion: { trialsPerCell: 0 }, generationOnly: { trialsPerCell: 0 } } }), 'lw-match-');
  });

  it('detects concepts no trial trained on, holds random directions to the threshold rule, and eval-probe reproduces its figures', () => {
    const ds = Dataset.open(data);
    const heldOut = ds.manifest.split.evalConcepts;
    const r = trainConceptMatch(ds, { positions: 'all', windows: [1, 2] });
    const file = r.probe as Extract<ProbeFile, { kind: 'ensemble-max' }>;
    expect(file.kind).toBe('ensemble-max');
    expect(file.members.every((m) => m.kind === 'concept-match')).toBe(true);
    // By default every traced layer from 2 on has a member, reading its update.
    expect(file.members.map((m) => m.hook)).toEqual(ds.manifest.traceLayers.filter((l) => l >= 2).map((l) => [`blocks.${l - 1}.hook_resid_post`, `blocks.${l}.hook_resid_post`]));
    for (const c of heldOut) {
      expect(r.probe.training.concepts).not.toContain(c);
      for (const m of file.members) expect(m.kind === 'concept-match' && m.concepts.names.includes(c)).toBe(true);
    }
    expect(r.evaluation.heldOutConcepts).toEqual([...heldOut].sort());
    expect(r.evaluation.auroc).toBeGreaterThanOrEqual(0.95);
    expect(r.evaluation.tpr).toBeGreaterThanOrEqual(0.9);
    expect([1, 2]).toContain(r.window);
    const again = evaluateProbe(createProbe(parseProbeFile(serializeProbeFile(r.probe), ds.manifest.modelFingerprint)), Dataset.open(data), { positions: 'all' });
    expect(again.auroc).toBe(r.evaluation.auroc);
    expect(again.fpr_on_controls).toEqual(r.evaluation.fpr_on_controls);
    // Random-direction controls of the training split are held to the target rate, like clean trials.
    const probe = createProbe(r.probe);
    const sel = { protocols: ds.manifest.config.injection.protocols, families: ['concept'], positions: 'all' as const };
    const [sc] = scoreSplit(new TraceCache(Dataset.open(data)), 'train', probeLayers(probe, ds), () => trialRowScorer(probe), [r.probe.aggregator], sel, (x) => x.condition === 'random');
    const random = sc.controls.get('random')!.map((x) => x.score);
    expect(random.length).toBeGreaterThan(0);
    expect(random.filter((x) => x > r.probe.threshold).length / random.length).toBeLessThanOrEqual(r.probe.targetFpr);
  });

  it('--layer picks the members; layer 0 reads its residual (there is no update before it)', () => {
    const r = trainConceptMatch(Dataset.open(data), { positions: 'all', layers: [0, 4], windows: [1] });
    expect(r.probe.kind === 'ensemble-max' && r.probe.members.map((m) => m.hook)).toEqual(['blocks.0.hook_resid_post', ['blocks.3.hook_resid_post', 'blocks.4.hook_resid_post']]);
    expect(r.probe.hook).toEqual(['blocks.0.hook_resid_post', 'blocks.3.hook_resid_post', 'blocks.4.hook_resid_post']);
    expect(r.window).toBe(1);
  });

  it('served by the daemon, an alert names the injected concept from the probe\'s own bank; a random direction is named nothing', async () => {
    // The bank of the model's shipped concept library (50 words), trained on the tiny trials; the first
    // positions unscored and the threshold raised as calibrate-probe leaves it for whole requests
    // (clean traffic scores below 0.35 on this model: docs/trials.md).
    const r = trainConceptMatch(Dataset.open(data), { concepts: join(CODE16M, 'concepts') });
    const path = join(tempDir('lw-match-probe-'), 'concept-match.probe.json');
    await writeProbeFile(path, validateProbeFile({ ...r.probe, threshold: 0.5, aggregator: { kind: 'max', skip: 4 } }));
    const daemon = await startModelDaemon(CODE16M, ['--probe', path]);
    try {
      type Verdict = { probes: { id: string; fired: boolean; closest_concept: { name: string; layer: number; cosine: number } | null }[] };
      const prompt = 'def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n';
      for (const [concept, layer] of [['Oceans', 4], ['Volcanoes', 6]] as const) {
        const v = await completeVerdict<Verdict>(daemon.url, prompt, { latentwatch: { inject: { concept, layer, scale: 0.5, window: 'all' } } }, ADMIN_KEY);
        const p = v.probes.find((x) => x.id === 'concept-match')!;
        expect(p.fired).toBe(true);
        expect(p.closest_concept).toMatchObject({ name: concept, layer });
        expect(p.closest_concept!.cosine).toBeGreaterThanOrEqual(0.5);
      }
      const rng = createRng(42);
      const vector = Array.from({ length: 384 }, () => rng.gaussian());
      const n = Math.hypot(...vector);
      const v = await completeVerdict<Verdict>(daemon.url, prompt, { latentwatch: { inject: { vector: vector.map((x) => x / n), layer: 4, scale: 18, window: 'all' } } }, ADMIN_KEY);
      expect(v.probes.find((x) => x.id === 'concept-match')!.closest_concept).toBeNull();
      const clean = await completeVerdict<Verdict>(daemon.url, prompt);
      expect(clean.probes.find((x) => x.id === 'concept-match')).toMatchObject({ fired: false, closest_concept: null });
    } finally {
      await daemon.close();
    }
  });

  it('refuses a layer the dataset did not trace and a window out of range', () => {
    expectLwError(() => trainConceptMatch(Dataset.open(data), { layers: [99] }), 'LW_ERR_PROBE_FIT', /layer 99 was not traced/);
    expectLwError(() => trainConceptMatch(Dataset.open(data), { windows: [0] }), 'LW_ERR_PROBE_FIT', /window 0/);
  });
});
