/**
 * Concept vectors (Lindsey 2025) and contrast-pair directions, computed on a loaded engine and
 * written to disk; the runtime reads them back with `ConceptStore` (probes/concept-store.ts).
 *
 * - Concept vector of word w at layer L: resid_post L at the LAST token of the concept prompt
 *   (`vectors.template` with {word}; chat-formatted with a generation prompt when the model has a
 *   template and the config allows it) minus the mean of the same over the baseline words.
 * - Contrast direction: mean over its prompt pairs of resid_post(positive) − resid_post(negative)
 *   at the last token (difference of means, as refusal_direction and steering libraries do).
 * - Mean residual norm per layer: mean ‖resid_post L‖ over every baseline-prompt position except
 *   the first (the attention-sink position has an outsized norm); the unit of "relative" strength.
 *
 * On disk (a directory): `concepts.json` (manifest: format, model fingerprint, template, words,
 * per-layer norms, mean residual norms) and `concepts.safetensors` (F32 tensors `concepts`
 * [C, layers, d], `contrast` [K, layers, d] when K > 0, `baseline_mean` [layers, d],
 * `mean_resid_norm` [layers]; metadata repeats the fingerprint). Same inputs, same bytes.
 */
import { lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync } from '../atomic-write.js';
import type { Engine } from '../engine/engine.js';
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import { encodeSafetensors } from '../model/safetensors.js';
import { CONCEPTS_FORMAT_VERSION, CONCEPTS_MANIFEST, CONCEPTS_TENSORS, l2norm, type ConceptManifest } from '../probes/concept-store.js';
import { fillTemplate, type ContrastSet } from './trial-config.js';

export interface ConceptOptions {
  /** Prompt template with {word} or {word_lower}. */
  template: string;
  /** 'auto': chat-format when the tokenizer has a chat template. */
  chat: 'auto' | 'always' | 'never';
  concepts: readonly string[];
  baseline: readonly string[];
  contrast?: readonly ContrastSet[];
  progress?: (done: number, total: number, what: string) => void;
}

export interface ConceptVectors {
  modelFingerprint: string;
  dModel: number;
  numLayers: number;
  template: string;
  chat: boolean;
  concepts: string[];
  baseline: string[];
  contrastNames: string[];
  contrastPairs: number[];
  /** [C][layer] → d floats. */
  conceptVectors: Float32Array[][];
  contrastVectors: Float32Array[][];
  baselineMean: Float32Array[];
  meanResidNorm: number[];
}

/** Token ids of a single-prompt text as the concept step feeds it (chat-formatted or plain). */
export function conceptPromptIds(engine: Engine, text: string, chat: 'auto' | 'always' | 'never'): { ids: number[]; chat: boolean } {
  const tok = engine.tokenizer;
  if (!tok) throw lwError('LW_ERR_TRIALS_TEMPLATE', `${engine.checkpoint.dir} has no tokenizer.json, so text prompts cannot be built`);
  const useChat = useChatTemplate(engine, chat);
  const ids = useChat ? tok.encodeChat([{ role: 'user', content: text }], { addGenerationPrompt: true }) : tok.encode(text);
  if (ids.length === 0) throw lwError('LW_ERR_TRIALS_TEMPLATE', `prompt ${JSON.stringify(text)} encodes to no tokens`);
  return { ids, chat: useChat };
}

/** Whether prompts are chat-formatted on this engine under the config's `chat` setting. */
export function useChatTemplate(engine: Engine, chat: 'auto' | 'always' | 'never'): boolean {
  const has = engine.tokenizer?.hasChatTemplate ?? false;
  if (chat === 'always' && !has) throw lwError('LW_ERR_TRIALS_TEMPLATE', `chat is "always" but ${engine.checkpoint.dir} has no chat template`);
  return chat === 'never' ? false : has;
}

/** resid_post at every layer for every position of one prompt: [layer] → [positions × d]. */
export async function residAllLayers(engine: Engine, ids: readonly number[]): Promise<Float32Array[]> {
  const hooks = Array.from({ length: engine.config.numLayers }, (_, l) => residPost(l));
  const seq = engine.newSequence(ids.length);
  try {
    const r = await seq.forward(ids, { taps: hooks, logits: 'last' });
    return hooks.map((h) => r.taps.get(h)!.data);
  } finally {
    seq.release();
  }
}

function lastRow(rows: Float32Array, d: number): Float64Array {
  const n = rows.length / d;
  return Float64Array.from(rows.subarray((n - 1) * d, n * d));
}

/** Compute concept vectors, contrast directions, baseline mean and mean residual norms. */
export async function computeConceptVectors(engine: Engine, o: ConceptOptions): Promise<ConceptVectors> {
  const L = engine.config.numLayers;
  const d = engine.config.hiddenSize;
  const contrast = o.contrast ?? [];
  const total = o.concepts.length + o.baseline.length + contrast.reduce((a, c) => a + 2 * c.pairs.length, 0);
  let done = 0;
  const tick = (what: string) => o.progress?.(++done, total, what);
  let chat = false;

  const lastAt = async (text: string): Promise<{ last: Float64Array[]; all: Float32Array[] }> => {
    const p = conceptPromptIds(engine, text, o.chat);
    chat = p.chat;
    const all = await residAllLayers(engine, p.ids);
    return { last: all.map((rows) => lastRow(rows, d)), all };
  };

  // Baseline: mean of last-token activations, and mean norm over positions ≥ 1.
  const baseSum = Array.from({ length: L }, () => new Float64Array(d));
  const normSum = new Float64Array(L);
  let normCount = 0;
  for (const w of o.baseline) {
    const { last, all } = await lastAt(fillTemplate(o.template, 'word', w));
    for (let l = 0; l < L; l++) for (let i = 0; i < d; i++) baseSum[l][i] += last[l][i];
    const n = all[0].length / d;
    for (let p = 1; p < n; p++) {
      for (let l = 0; l < L; l++) {
        let s = 0;
        for (let i = 0; i < d; i++) s += all[l][p * d + i] ** 2;
        normSum[l] += Math.sqrt(s);
      }
      normCount++;
    }
    tick(w);
  }
  const baseMean = baseSum.map((s) => s.map((x) => x / o.baseline.length));
  const meanResidNorm = Array.from(normSum, (s) => Math.fround(normCount > 0 ? s / normCount : 0));

  const conceptVectors: Float32Array[][] = [];
  for (const w of o.concepts) {
    const { last } = await lastAt(fillTemplate(o.template, 'word', w));
    conceptVectors.push(last.map((row, l) => Float32Array.from(row, (x, i) => x - baseMean[l][i])));
    tick(w);
  }

  const contrastVectors: Float32Array[][] = [];
  for (const set of contrast) {
    const acc = Array.from({ length: L }, () => new Float64Array(d));
    for (const [pos, neg] of set.pairs) {
      const a = (await lastAt(pos)).last;
      tick(`${set.name}+`);
      const b = (await lastAt(neg)).last;
      tick(`${set.name}-`);
      for (let l = 0; l < L; l++) for (let i = 0; i < d; i++) acc[l][i] += a[l][i] - b[l][i];
    }
    contrastVectors.push(acc.map((row) => Float32Array.from(row, (x) => x / set.pairs.length)));
  }

  return {
    modelFingerprint: engine.fingerprint,
    dModel: d,
    numLayers: L,
    template: o.template,
    chat,
    concepts: [...o.concepts],
    baseline: [...o.baseline],
    contrastNames: contrast.map((c) => c.name),
    contrastPairs: contrast.map((c) => c.pairs.length),
    conceptVectors,
    contrastVectors,
    baselineMean: baseMean.map((r) => Float32Array.from(r)),
    meanResidNorm,
  };
}

function stack(rows: Float32Array[][], L: number, d: number): Float32Array {
  const out = new Float32Array(rows.length * L * d);
  rows.forEach((perLayer, c) => perLayer.forEach((v, l) => out.set(v, (c * L + l) * d)));
  return out;
}

/**
 * Write concepts.json + concepts.safetensors into `dir` (atomic per file; deterministic bytes).
 * When `dir` is a symbolic link (a model directory copied as links to its entries), the link is
 * replaced by a fresh directory: the vectors of the linked model are never overwritten through it.
 */
export function writeConceptVectors(dir: string, v: ConceptVectors): void {
  let link = false;
  try {
    link = lstatSync(dir).isSymbolicLink();
  } catch {
    // absent: created below
  }
  if (link) unlinkSync(dir);
  mkdirSync(dir, { recursive: true });
  const { numLayers: L, dModel: d } = v;
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {
    concepts: { shape: [v.concepts.length, L, d], data: stack(v.conceptVectors, L, d) },
  };
  if (v.contrastNames.length > 0) tensors.contrast = { shape: [v.contrastNames.length, L, d], data: stack(v.contrastVectors, L, d) };
  tensors.baseline_mean = { shape: [L, d], data: stack([v.baselineMean], L, d) };
  tensors.mean_resid_norm = { shape: [L], data: Float32Array.from(v.meanResidNorm) };
  const bytes = encodeSafetensors(tensors, { format: 'latentwatch-concepts', formatVersion: String(CONCEPTS_FORMAT_VERSION), modelFingerprint: v.modelFingerprint });
  const manifest: ConceptManifest = {
    formatVersion: CONCEPTS_FORMAT_VERSION,
    kind: 'latentwatch-concepts',
    modelFingerprint: v.modelFingerprint,
    dModel: d,
    numLayers: L,
    template: v.template,
    chat: v.chat,
    position: 'last',
    tensors: CONCEPTS_TENSORS,
    meanResidNorm: v.meanResidNorm.map((x) => Math.fround(x)),
    concepts: v.concepts.map((name, c) => ({ name, norms: v.conceptVectors[c].map((x) => Math.fround(l2norm(x))) })),
    contrast: v.contrastNames.map((name, k) => ({ name, pairs: v.contrastPairs[k], norms: v.contrastVectors[k].map((x) => Math.fround(l2norm(x))) })),
    baseline: v.baseline,
  };
  writeFileAtomicSync(join(dir, CONCEPTS_TENSORS), bytes);
  writeFileAtomicSync(join(dir, CONCEPTS_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
}

// ---- how far training concepts say anything about held-out ones (issue 12) ------------------------

/** Per layer: how held-out concept directions relate to the training concepts' directions. */
export interface HeldOutAlignment {
  layer: number;
  train: number;
  heldOut: number;
  /**
   * cos(held-out unit vector, mean of the training unit vectors): what a linear score gets from a
   * held-out injection when its weight is the training concepts' shared direction. A random
   * direction gives mean 0, spread 1/√d (`randomCosSpread`).
   */
  cosWithTrainMean: { mean: number; std: number; min: number; max: number };
  /** Mean |cos| between two different training unit vectors. */
  meanAbsPairCos: number;
  /** Mean norm of a held-out unit vector's projection on the span of the training vectors (random: √(train/d)). */
  inTrainSpan: number;
  randomCosSpread: number;
  randomInSpan: number;
}

/**
 * `HeldOutAlignment` of the given vectors at one layer. A linear probe w scores an injection of
 * unit direction u at strength s by s·(w·u): it can only catch held-out concepts the training
 * concepts' directions share, so these figures bound what any linear probe can generalise to.
 * The span uses modified Gram–Schmidt in float64 (vectors within 1e-9 of the span so far are dropped).
 */
export function heldOutAlignment(layer: number, train: readonly ArrayLike<number>[], heldOut: readonly ArrayLike<number>[]): HeldOutAlignment {
  if (train.length < 2 || heldOut.length === 0) throw lwError('LW_ERR_CONCEPTS_INVALID', `held-out alignment needs at least 2 training and 1 held-out vector (got ${train.length}, ${heldOut.length})`);
  const d = train[0].length;
  for (const v of [...train, ...heldOut]) if (v.length !== d) throw lwError('LW_ERR_CONCEPTS_INVALID', `vectors of different widths (${v.length} vs ${d})`);
  const unit = (v: ArrayLike<number>): Float64Array => {
    const n = l2norm(v);
    if (!(n > 0)) throw lwError('LW_ERR_CONCEPTS_INVALID', 'a concept vector is zero');
    return Float64Array.from(v, (x) => x / n);
  };
  const dot = (a: Float64Array, b: Float64Array): number => {
    let s = 0;
    for (let i = 0; i < d; i++) s += a[i] * b[i];
    return s;
  };
  const tr = train.map(unit);
  const ho = heldOut.map(unit);
  const mean = new Float64Array(d);
  for (const u of tr) for (let i = 0; i < d; i++) mean[i] += u[i] / tr.length;
  const meanDir = unit(mean);
  const cos = ho.map((u) => dot(u, meanDir));
  const avg = cos.reduce((a, b) => a + b, 0) / cos.length;
  const std = Math.sqrt(cos.reduce((a, b) => a + (b - avg) ** 2, 0) / cos.length);
  let pairs = 0;
  let pairSum = 0;
  for (let i = 0; i < tr.length; i++) for (let j = i + 1; j < tr.length; j++, pairs++) pairSum += Math.abs(dot(tr[i], tr[j]));
  const basis: Float64Array[] = [];
  for (const u of tr) {
    const r = Float64Array.from(u);
    for (const b of basis) {
      const c = dot(r, b);
      for (let i = 0; i < d; i++) r[i] -= c * b[i];
    }
    const n = Math.sqrt(dot(r, r));
    if (n > 1e-9) basis.push(r.map((x) => x / n));
  }
  const inSpan = ho.map((u) => Math.sqrt(basis.reduce((a, b) => a + dot(u, b) ** 2, 0)));
  return {
    layer,
    train: tr.length,
    heldOut: ho.length,
    cosWithTrainMean: { mean: avg, std, min: Math.min(...cos), max: Math.max(...cos) },
    meanAbsPairCos: pairSum / pairs,
    inTrainSpan: inSpan.reduce((a, b) => a + b, 0) / inSpan.length,
    randomCosSpread: 1 / Math.sqrt(d),
    randomInSpan: Math.sqrt(Math.min(basis.length, d) / d),
  };
}
