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
 * Adding a family (issue 7: directions from another layer, low-rank subspaces...) is one case in
 * `createFamily` plus its schema entry in trial-config.ts; nothing downstream changes.
 */
import { lwError } from '../errors.js';
import type { ConceptStore } from './concepts.js';
import { createRng, hash32 } from './rng.js';
import type { FamilySpec } from './trial-config.js';

export interface VectorFamily {
  readonly name: string;
  readonly kind: FamilySpec['kind'];
  readonly items: readonly string[];
  vector(item: string, layer: number): Float32Array;
  /** The concept word whose split this item follows, or null (split by hashing the trial id). */
  splitKey(item: string): string | null;
  /** A word whose mention in the generated text counts as verbalising it, or null. */
  word(item: string): string | null;
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
      for (const it of items) if (!store.find(it)) throw lwError('LW_ERR_TRIALS_CONCEPTS_NOT_FOUND', `concept ${it} is not in ${store.dir}`);
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
  }
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
