/**
 * Vector families: where the injected directions of a trial come from. The trial grid draws its
 * positives from each configured family (`injection.families`); the random control uses the
 * `random` kind. Every family answers the same three questions, so the runner, dataset, training
 * and report treat them alike:
 *
 *   items        the directions it offers, in a fixed order (concept words, contrast names, random-k)
 *   vector       the raw direction of an item at a layer; its norm is the family's natural scale
 *                (what strength mode 'vector' multiplies); 'relative'/'absolute' use its unit vector
 *   splitKey     the concept word whose train/eval side the item follows, or null (split by id hash)
 *
 * Adding a family is one case in `createFamily` plus its schema entry in trial-config.ts; nothing
 * downstream changes. Kinds:
 *   concept      concept vectors (Lindsey), split by concept word
 *   contrast     contrast-pair (difference-of-means steering) directions
 *   random       Gaussian directions, norm-matched to the mean concept vector of the layer
 *   cross-layer  the concept vector of another layer L' (fixed, offset or depth) injected at L
 *   subspace     a random combination (Gaussian coefficients) of `rank` unit directions: concept
 *                vectors of the layer (drawn from a pool) or Gaussian directions; norm-matched
 *                like random. `basis(item, layer)` exposes the spanning directions.
 */
import { lwError } from '../errors.js';
import type { ConceptStore } from '../probes/concept-store.js';
import { createRng, hash32, shuffled } from '../rng.js';
import type { CrossLayerSource, FamilySpec } from './trial-config.js';

export interface VectorFamily {
  readonly name: string;
  readonly kind: FamilySpec['kind'];
  readonly items: readonly string[];
  vector(item: string, layer: number): Float32Array;
  /** The concept word whose split this item follows, or null (split by hashing the trial id). */
  splitKey(item: string): string | null;
  /** A word whose mention in the generated text counts as verbalising it, or null. */
  word(item: string): string | null;
  /** subspace: the unit directions the item's vector is a combination of, at a layer. */
  basis?(item: string, layer: number): Float32Array[];
  /** cross-layer: the layer whose concept vector is injected at `layer`. */
  sourceLayer?(layer: number): number;
}

export interface FamilyContext {
  store: ConceptStore;
  /** The config seed: random directions are seeded by (seed, family, item, layer). */
  seed: number;
}

function pick(all: readonly string[], items: 'all' | number | readonly string[]): string[] {
  if (items === 'all') return [...all];
  if (typeof items === 'number') return all.slice(0, items);
  return [...items];
}

export function createFamily(spec: FamilySpec, ctx: FamilyContext): VectorFamily {
  const { store } = ctx;
  switch (spec.kind) {
    case 'concept': {
      const items = pick(store.names('concept'), spec.items);
      for (const it of items) if (!store.find(it)) throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', `concept ${it} is not in ${store.dir}`);
      return {
        name: spec.name,
        kind: 'concept',
        items,
        vector: (item, layer) => store.vector(item, layer, 'concept'),
        splitKey: (item) => item,
        word: (item) => item,
      };
    }
    case 'contrast': {
      const items = pick(store.names('contrast'), spec.items);
      return {
        name: spec.name,
        kind: 'contrast',
        items,
        vector: (item, layer) => store.vector(item, layer, 'contrast'),
        splitKey: () => null,
        word: () => null,
      };
    }
    case 'random':
      return randomFamily(spec.name, Array.from({ length: spec.count }, (_, i) => `random-${i}`), ctx);
    case 'cross-layer': {
      const items = pick(store.names('concept'), spec.items);
      for (const it of items) if (!store.find(it)) throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', `concept ${it} is not in ${store.dir}`);
      const sourceLayer = (layer: number) => crossLayerSource(spec.source, layer, store.numLayers);
      return {
        name: spec.name,
        kind: 'cross-layer',
        items,
        vector: (item, layer) => store.vector(item, sourceLayer(layer), 'concept'),
        splitKey: (item) => item,
        word: (item) => item,
        sourceLayer,
      };
    }
    case 'subspace':
      return subspaceFamily(spec, ctx);
  }
}

/** The source layer of a cross-layer family for injection layer `layer` (clipped to 0..numLayers−1). */
export function crossLayerSource(source: CrossLayerSource, layer: number, numLayers: number): number {
  const raw = 'layer' in source ? source.layer : 'offset' in source ? layer + source.offset : Math.round(source.depth * numLayers);
  return Math.min(numLayers - 1, Math.max(0, raw));
}

function unit(v: Float32Array | Float64Array): Float32Array {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  const n = Math.sqrt(s);
  return Float32Array.from(v, (x) => (n > 0 ? x / n : 0));
}

/**
 * Low-rank subspace injections: item `subspace-i` at a layer is Σₖ cₖ·uₖ with uₖ the unit basis
 * directions (concepts drawn from the pool by a seeded shuffle per item, or Gaussian directions
 * per item and layer) and cₖ standard normal (seeded per item and layer), rescaled to the mean
 * concept-vector norm at the layer, as random directions are.
 */
function subspaceFamily(spec: Extract<FamilySpec, { kind: 'subspace' }>, ctx: FamilyContext): VectorFamily {
  const { store } = ctx;
  const d = store.dModel;
  const items = Array.from({ length: spec.count }, (_, i) => `subspace-${i}`);
  const pool = spec.basis === 'concept' ? pick(store.names('concept'), spec.pool ?? 'all') : [];
  if (spec.basis === 'concept') {
    for (const it of pool) if (!store.find(it)) throw lwError('LW_ERR_CONCEPTS_NOT_FOUND', `concept ${it} is not in ${store.dir}`);
    if (spec.rank > pool.length) throw lwError('LW_ERR_TRIALS_CONFIG_INVALID', `subspace family ${spec.name}: rank ${spec.rank} > ${pool.length} pool concepts`);
  }
  /** Concept names spanning an item (the same at every layer). */
  const members = (item: string): string[] => shuffled(pool, createRng(hash32(`${ctx.seed}|${spec.name}|${item}|members`))).slice(0, spec.rank);
  const basis = (item: string, layer: number): Float32Array[] => {
    if (spec.basis === 'concept') return members(item).map((c) => unit(store.vector(c, layer, 'concept')));
    return Array.from({ length: spec.rank }, (_, k) => {
      const rng = createRng(hash32(`${ctx.seed}|${spec.name}|${item}|${layer}|basis|${k}`));
      return unit(Float64Array.from({ length: d }, () => rng.gaussian()));
    });
  };
  return {
    name: spec.name,
    kind: 'subspace',
    items,
    basis,
    vector: (item, layer) => {
      const b = basis(item, layer);
      const rng = createRng(hash32(`${ctx.seed}|${spec.name}|${item}|${layer}|coefficients`));
      const v = new Float64Array(d);
      for (const u of b) {
        const c = rng.gaussian();
        for (let i = 0; i < d; i++) v[i] += c * u[i];
      }
      let s = 0;
      for (let i = 0; i < d; i++) s += v[i] * v[i];
      const scale = store.meanConceptNorm(layer) / Math.sqrt(s);
      return Float32Array.from(v, (x) => x * scale);
    },
    splitKey: () => null,
    word: () => null,
  };
}

/**
 * Gaussian directions, one per (item, layer), scaled to the mean concept-vector norm at that layer,
 * so 'vector' strengths match concept injections in norm (the other modes use the unit vector).
 * Any item name works, which the random control uses (one fresh direction per control trial).
 */
export function randomFamily(name: string, items: readonly string[], ctx: FamilyContext): VectorFamily {
  const d = ctx.store.dModel;
  return {
    name,
    kind: 'random',
    items,
    vector: (item, layer) => {
      const rng = createRng(hash32(`${ctx.seed}|${name}|${item}|${layer}`));
      const v = new Float64Array(d);
      let s = 0;
      for (let i = 0; i < d; i++) {
        v[i] = rng.gaussian();
        s += v[i] * v[i];
      }
      const scale = ctx.store.meanConceptNorm(layer) / Math.sqrt(s);
      return Float32Array.from(v, (x) => x * scale);
    },
    splitKey: () => null,
    word: () => null,
  };
}
