/**
 * Concept vectors (Lindsey 2025) and contrast-pair directions, computed on a loaded engine, stored
 * on disk, and resolved by name (the daemon's admin injection and the canary use `ConceptStore`).
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
import { lstatSync, mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Engine } from '../engine/engine.js';
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import { encodeSafetensors, readSafetensorsHeader, readTensorF32 } from '../model/safetensors.js';
import { fillTemplate, type ContrastSet, type StrengthMode } from './trial-config.js';

export const CONCEPTS_FORMAT_VERSION = 1;
export const CONCEPTS_MANIFEST = 'concepts.json';
export const CONCEPTS_TENSORS = 'concepts.safetensors';

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

export function l2norm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  return Math.sqrt(s);
}

function stack(rows: Float32Array[][], L: number, d: number): Float32Array {
  const out = new Float32Array(rows.length * L * d);
  rows.forEach((perLayer, c) => perLayer.forEach((v, l) => out.set(v, (c * L + l) * d)));
  return out;
}

/** Manifest shape of concepts.json. */
export interface ConceptManifest {
  formatVersion: 1;
  kind: 'latentwatch-concepts';
  modelFingerprint: string;
  dModel: number;
  numLayers: number;
  template: string;
  chat: boolean;
  position: 'last';
  tensors: string;
  meanResidNorm: number[];
  concepts: { name: string; norms: number[] }[];
  contrast: { name: string; pairs: number; norms: number[] }[];
  baseline: string[];
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
  atomicWrite(join(dir, CONCEPTS_TENSORS), bytes);
  atomicWrite(join(dir, CONCEPTS_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
}

function atomicWrite(path: string, data: string | Uint8Array): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

export type VectorKind = 'concept' | 'contrast';

/** How strong an injection is: the vector and scale `Injection` takes. */
export interface InjectionStrength {
  mode: StrengthMode;
  value: number;
}

/**
 * Concept vectors loaded from disk, bound to one model. Names match case-insensitively.
 * `injection(name, layer, strength)` gives the (vector, scale) pair an engine Injection takes:
 * - vector:   the raw vector, scale = value (Lindsey's strengths 1/2/4/8 multiply the raw vector)
 * - relative: the unit vector, scale = value × mean residual norm at that layer
 * - absolute: the unit vector, scale = value (the injected norm in activation units)
 */
export class ConceptStore {
  private readonly data = new Map<VectorKind, Float32Array>();

  private constructor(
    readonly dir: string,
    readonly manifest: ConceptManifest,
    tensors: Map<string, Float32Array>,
  ) {
    this.data.set('concept', tensors.get('concepts')!);
    const contrast = tensors.get('contrast');
    if (contrast) this.data.set('contrast', contrast);
  }

  /**
   * Open a concepts directory. Throws LW_ERR_TRIALS_CONCEPTS_NOT_FOUND / _INVALID, and
   * LW_ERR_TRIALS_MODEL_MISMATCH when `expectedFingerprint` (null: skip the check) differs.
   */
  static open(dir: string, expectedFingerprint: string | null): ConceptStore {
    const manifestPath = join(dir, CONCEPTS_MANIFEST);
    let text: string;
    try {
      text = readFileSync(manifestPath, 'utf8');
    } catch (e) {
      throw lwError('LW_ERR_TRIALS_CONCEPTS_NOT_FOUND', manifestPath, { path: manifestPath }, e);
    }
    let m: ConceptManifest;
    try {
      m = JSON.parse(text) as ConceptManifest;
    } catch (e) {
      throw lwError('LW_ERR_TRIALS_CONCEPTS_INVALID', `${manifestPath} is not JSON`, undefined, e);
    }
    const bad = (what: string): never => {
      throw lwError('LW_ERR_TRIALS_CONCEPTS_INVALID', `${manifestPath}: ${what}`);
    };
    if (m?.kind !== 'latentwatch-concepts' || m.formatVersion !== CONCEPTS_FORMAT_VERSION) bad('not a version-1 latentwatch concepts manifest');
    if (!Number.isInteger(m.dModel) || !Number.isInteger(m.numLayers) || !Array.isArray(m.concepts) || !Array.isArray(m.contrast) || !Array.isArray(m.meanResidNorm)) bad('missing fields');
    if (m.meanResidNorm.length !== m.numLayers) bad('meanResidNorm length differs from numLayers');
    if (expectedFingerprint !== null && m.modelFingerprint !== expectedFingerprint) {
      throw lwError('LW_ERR_TRIALS_MODEL_MISMATCH', `${dir} holds concept vectors of model ${m.modelFingerprint}, the loaded model is ${expectedFingerprint}`, {
        conceptsModelFingerprint: m.modelFingerprint,
        expectedModelFingerprint: expectedFingerprint,
      });
    }
    const tensorPath = join(dir, m.tensors ?? CONCEPTS_TENSORS);
    let header;
    try {
      header = readSafetensorsHeader(tensorPath);
    } catch (e) {
      if ((e as { code?: string }).code === 'LW_ERR_MODEL_SHARD_MISSING') throw lwError('LW_ERR_TRIALS_CONCEPTS_NOT_FOUND', tensorPath, undefined, e);
      throw lwError('LW_ERR_TRIALS_CONCEPTS_INVALID', `${tensorPath}: ${(e as Error).message}`, undefined, e);
    }
    const meta = (JSON.parse(header.headerText) as { __metadata__?: Record<string, string> }).__metadata__;
    if (meta?.modelFingerprint !== m.modelFingerprint) bad(`${tensorPath} was written for model ${String(meta?.modelFingerprint)}`);
    const tensors = new Map<string, Float32Array>();
    const expect = (name: string, rows: number): void => {
      const info = header.tensors.get(name);
      if (!info) {
        if (rows === 0) return;
        bad(`${tensorPath} lacks tensor ${name}`);
      }
      const shape = info!.shape;
      if (shape.length !== 3 || shape[0] !== rows || shape[1] !== m.numLayers || shape[2] !== m.dModel) bad(`tensor ${name} has shape [${shape.join(', ')}]`);
      const data = readTensorF32(info!);
      for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) bad(`tensor ${name} holds a non-finite value`);
      tensors.set(name, data);
    };
    expect('concepts', m.concepts.length);
    expect('contrast', m.contrast.length);
    return new ConceptStore(dir, m, tensors);
  }

  get modelFingerprint(): string {
    return this.manifest.modelFingerprint;
  }

  get numLayers(): number {
    return this.manifest.numLayers;
  }

  get dModel(): number {
    return this.manifest.dModel;
  }

  names(kind: VectorKind = 'concept'): string[] {
    return (kind === 'concept' ? this.manifest.concepts : this.manifest.contrast).map((c) => c.name);
  }

  meanResidNorm(layer: number): number {
    this.checkLayer(layer);
    return this.manifest.meanResidNorm[layer];
  }

  /** Canonical spelling and kind of a name (concepts first), or undefined. */
  find(name: string): { kind: VectorKind; name: string; index: number } | undefined {
    const lower = name.toLowerCase();
    for (const kind of ['concept', 'contrast'] as const) {
      const index = this.names(kind).findIndex((n) => n.toLowerCase() === lower);
      if (index >= 0) return { kind, name: this.names(kind)[index], index };
    }
    return undefined;
  }

  has(name: string): boolean {
    return this.find(name) !== undefined;
  }

  /** The raw vector (a copy) of a concept or contrast direction at a layer. */
  vector(name: string, layer: number, kind?: VectorKind): Float32Array {
    const hit = this.resolve(name, kind);
    this.checkLayer(layer);
    const { numLayers: L, dModel: d } = this.manifest;
    return this.data.get(hit.kind)!.slice((hit.index * L + layer) * d, (hit.index * L + layer + 1) * d);
  }

  /** ‖vector(name, layer)‖ as stored in the manifest. */
  norm(name: string, layer: number, kind?: VectorKind): number {
    const hit = this.resolve(name, kind);
    this.checkLayer(layer);
    const list = hit.kind === 'concept' ? this.manifest.concepts : this.manifest.contrast;
    return list[hit.index].norms[layer];
  }

  /** Mean ‖concept vector‖ at a layer (the natural scale of a norm-matched random direction). */
  meanConceptNorm(layer: number): number {
    this.checkLayer(layer);
    const cs = this.manifest.concepts;
    return cs.reduce((a, c) => a + c.norms[layer], 0) / Math.max(1, cs.length);
  }

  /** Vector and scale for injecting `name` at `layer` with a strength (see the class comment). */
  injection(name: string, layer: number, strength: InjectionStrength, kind?: VectorKind): { hook: string; vector: Float32Array; scale: number } {
    const v = this.vector(name, layer, kind);
    return { hook: residPost(layer), ...scaleVector(v, strength, this.meanResidNorm(layer)) };
  }

  private resolve(name: string, kind?: VectorKind): { kind: VectorKind; index: number } {
    const hit = kind === undefined ? this.find(name) : (() => {
      const index = this.names(kind).findIndex((n) => n.toLowerCase() === name.toLowerCase());
      return index >= 0 ? { kind, index } : undefined;
    })();
    if (!hit) throw lwError('LW_ERR_TRIALS_CONCEPTS_NOT_FOUND', `no ${kind ?? 'concept or contrast'} vector named ${JSON.stringify(name)} in ${this.dir}`, { name });
    return hit;
  }

  private checkLayer(layer: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.manifest.numLayers) {
      throw lwError('LW_ERR_TRIALS_CONCEPTS_NOT_FOUND', `layer ${layer} is outside 0..${this.manifest.numLayers - 1}`, { layer });
    }
  }
}

/** (vector, scale) for a raw direction under a strength; relative needs the layer's mean residual norm. */
export function scaleVector(raw: Float32Array, strength: InjectionStrength, meanResidNorm: number): { vector: Float32Array; scale: number } {
  if (strength.mode === 'vector') return { vector: raw, scale: strength.value };
  const n = l2norm(raw);
  const unit = n > 0 ? Float32Array.from(raw, (x) => x / n) : new Float32Array(raw.length);
  return { vector: unit, scale: strength.mode === 'relative' ? strength.value * meanResidNorm : strength.value };
}
