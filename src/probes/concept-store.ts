/**
 * Concept vectors and contrast directions on disk (written by the lab's `concepts` command), bound
 * to one model and resolved by name: the daemon's admin injection and the canary use `ConceptStore`.
 *
 * On disk (a directory): `concepts.json` (manifest: format, model fingerprint, template, words,
 * per-layer norms, mean residual norms) and `concepts.safetensors` (F32 tensors `concepts`
 * [C, layers, d], `contrast` [K, layers, d] when K > 0, `baseline_mean` [layers, d],
 * `mean_resid_norm` [layers]; metadata repeats the fingerprint).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import { readSafetensorsHeader, readTensorF32 } from '../model/safetensors.js';

export const CONCEPTS_FORMAT_VERSION = 1;
export const CONCEPTS_MANIFEST = 'concepts.json';
export const CONCEPTS_TENSORS = 'concepts.safetensors';

/** How a strength value is read: relative to the layer's mean residual norm, absolute, or on the raw vector. */
export type StrengthMode = 'relative' | 'absolute' | 'vector';

export function l2norm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  return Math.sqrt(s);
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
   * Open a concepts directory. Throws LW_ERR_CONCEPTS_NOT_FOUND / _INVALID, and
   * LW_ERR_CONCEPTS_MODEL_MISMATCH when `expectedFingerprint` (null: skip the check) differs.
   */
  static open(dir: string, expectedFingerprint: string | null): ConceptStore {
    const manifestPath = join(dir, CONCEPTS_MANIFEST);
    let text: string;
    try {
      text = readFileSync(manifestPath, 'utf8');
    } catch (e) {
      throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', manifestPath, { path: manifestPath }, e);
    }
    let m: ConceptManifest;
    try {
      m = JSON.parse(text) as ConceptManifest;
    } catch (e) {
      throw lwError('LW_ERR_CONCEPTS_INVALID', `${manifestPath} is not JSON`, undefined, e);
    }
    const bad = (what: string): never => {
      throw lwError('LW_ERR_CONCEPTS_INVALID', `${manifestPath}: ${what}`);
    };
    if (m?.kind !== 'latentwatch-concepts' || m.formatVersion !== CONCEPTS_FORMAT_VERSION) bad('not a version-1 latentwatch concepts manifest');
    if (!Number.isInteger(m.dModel) || !Number.isInteger(m.numLayers) || !Array.isArray(m.concepts) || !Array.isArray(m.contrast) || !Array.isArray(m.meanResidNorm)) bad('missing fields');
    if (m.meanResidNorm.length !== m.numLayers) bad('meanResidNorm length differs from numLayers');
    if (expectedFingerprint !== null && m.modelFingerprint !== expectedFingerprint) {
      throw lwError('LW_ERR_CONCEPTS_MODEL_MISMATCH', `${dir} holds concept vectors of model ${m.modelFingerprint}, the loaded model is ${expectedFingerprint}`, {
        conceptsModelFingerprint: m.modelFingerprint,
        expectedModelFingerprint: expectedFingerprint,
      });
    }
    const tensorPath = join(dir, m.tensors ?? CONCEPTS_TENSORS);
    let header;
    try {
      header = readSafetensorsHeader(tensorPath);
    } catch (e) {
      if ((e as { code?: string }).code === 'LW_ERR_MODEL_SHARD_MISSING') throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', tensorPath, undefined, e);
      throw lwError('LW_ERR_CONCEPTS_INVALID', `${tensorPath}: ${(e as Error).message}`, undefined, e);
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
    if (!hit) throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', `no ${kind ?? 'concept or contrast'} vector named ${JSON.stringify(name)} in ${this.dir}`, { name });
    return hit;
  }

  private checkLayer(layer: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.manifest.numLayers) {
      throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', `layer ${layer} is outside 0..${this.manifest.numLayers - 1}`, { layer });
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
