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
