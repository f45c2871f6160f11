/**
 * The trial config (configs/trials/*.json, documented field by field in docs/trials.md): concept-vector
 * prompts and word lists, trial prompts, answer tokens, injection grid, vector families, controls,
 * split, what is traced, and training defaults.
 *
 * Loading follows the daemon config's pattern: read once, fill defaults, validate against one JSON
 * schema (closed objects, so typos fail), then semantic checks; failures are LW_ERR_TRIALS_CONFIG_*
 * with the JSON pointer of the problem. File references (`vectors.words`, `vectors.contrast`) are
 * resolved relative to the config file and inlined, so the resolved config, embedded in every
 * dataset manifest, reproduces the dataset without the files.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { lwError } from '../errors.js';
import type { AggregatorSpec } from '../probes/aggregators.js';

export const TRIAL_CONFIG_VERSION = 1;

export type Protocol = 'inject-then-ask' | 'continuous';
export const PROTOCOLS: readonly Protocol[] = ['inject-then-ask', 'continuous'];

/** Layers as indices, or as fractions of depth (round(f × numLayers), clipped), so one config fits any depth. */
export type LayerSpec = number[] | { depth: number[] };

export type StrengthMode = 'relative' | 'absolute' | 'vector';

/**
 * Where injection vectors come from. Positives of the trial grid are drawn from each family; the
 * `random` control reuses the `random` kind. Adding a family = a kind here + a case in
 * trial-families.ts (issue 7: cross-layer, subspace...).
 */
export type FamilySpec =
  | { name: string; kind: 'concept'; items: 'all' | number | string[] }
  | { name: string; kind: 'contrast'; items: 'all' | number | string[] }
  | { name: string; kind: 'random'; count: number }
  | { name: string; kind: 'cross-layer'; items: 'all' | number | string[]; source: CrossLayerSource }
  | { name: string; kind: 'subspace'; basis: 'concept' | 'random'; rank: number; count: number; pool?: 'all' | number | string[] };

/**
 * Where a cross-layer family takes its vectors: a fixed layer, an offset from the injection layer
 * (clipped to the model), or a depth fraction (round(f × numLayers), clipped).
 */
export type CrossLayerSource = { layer: number } | { offset: number } | { depth: number };

export interface QuestionSpec {
  question: string;
  prefix: string;
}

export interface ContrastSet {
  name: string;
  pairs: [string, string][];
}

/** Which positions of a trial a probe reads: see docs/trials.md ("Positions"). */
export type PositionSet = 'watch' | 'after' | 'inside' | 'all';

export interface TrialConfig {
  formatVersion: 1;
  name: string;
  description: string;
  seed: number;
  chat: 'auto' | 'always' | 'never';
  vectors: {
    template: string;
    words: { concepts: string[]; baseline: string[] };
    contrast: ContrastSet[];
  };
  prompts: {
    system: string | null;
    contexts: string[];
    contextReply: string | null;
    fillers: string[];
    detect: QuestionSpec[];
    unrelated: QuestionSpec[];
  };
  answer: { yes: string[]; no: string[]; pairedClean: boolean };
  generation: { maxTokens: number; temperature: number; topK: number; topP: number; stopStrings: string[] };
  verbalization: { phrases: string[]; matchConcept: boolean };
  injection: {
    layers: LayerSpec;
    strength: { mode: StrengthMode; values: number[] };
    protocols: Protocol[];
    families: FamilySpec[];
    repeats: number;
  };
  controls: {
    none: { trialsPerProtocol: number };
    random: { trialsPerCell: number };
    unrelatedQuestion: { trialsPerCell: number };
    generationOnly: { trialsPerCell: number };
  };
  split: { evalConcepts: number | string[]; evalFraction: number };
  trace: { layers: 'all' | LayerSpec; contextPositions: number; dtype: 'f16' | 'f32' };
  output: { trialsPerShard: number };
  training: {
    targetFpr: number;
    positions: PositionSet;
    protocols: Protocol[];
    families: string[];
    l2: number;
    validationFraction: number;
    aggregators: AggregatorSpec[];
  };
}

/** Defaults for every optional field (docs/trials.md lists them). Arrays replace, objects merge. */
export const TRIAL_CONFIG_DEFAULTS = {
  description: '',
  seed: 0,
  chat: 'auto',
  vectors: { template: 'Tell me about {word}', contrast: [] },
  prompts: { system: null, contextReply: null, fillers: 'baseline', unrelated: [] },
  answer: { pairedClean: true },
  generation: { maxTokens: 16, temperature: 0, topK: 0, topP: 1, stopStrings: [] },
  verbalization: { phrases: [], matchConcept: true },
  injection: {
    layers: { depth: [0.5, 0.67] },
    strength: { mode: 'relative', values: [0.5, 1] },
    protocols: ['inject-then-ask'],
    families: [{ name: 'concept', kind: 'concept', items: 'all' }],
    repeats: 1,
  },
  controls: {
    none: { trialsPerProtocol: 100 },
    random: { trialsPerCell: 0 },
    unrelatedQuestion: { trialsPerCell: 0 },
    generationOnly: { trialsPerCell: 0 },
  },
  split: { evalConcepts: 0.3, evalFraction: 0.5 },
  trace: { layers: 'all', contextPositions: 4, dtype: 'f16' },
  output: { trialsPerShard: 256 },
  training: {
    targetFpr: 0.01,
    positions: 'watch',
    protocols: ['inject-then-ask'],
    families: ['concept'],
    l2: 1e-3,
    validationFraction: 0.25,
    aggregators: [{ kind: 'max' }, { kind: 'mean' }, { kind: 'ema', alpha: 0.3 }, { kind: 'rolling-mean', window: 4 }],
  },
} as const;

const str = { type: 'string' } as const;
const nonEmpty = { type: 'string', minLength: 1 } as const;
const nonEmptyStrings = { type: 'array', items: nonEmpty, minItems: 1 } as const;
const layerSpec = {
  oneOf: [
    { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 },
    { type: 'object', additionalProperties: false, required: ['depth'], properties: { depth: { type: 'array', items: { type: 'number', minimum: 0, maximum: 1 }, minItems: 1 } } },
  ],
} as const;
const question = { type: 'object', additionalProperties: false, required: ['question', 'prefix'], properties: { question: nonEmpty, prefix: str } } as const;
const items = { oneOf: [{ const: 'all' }, { type: 'integer', minimum: 1 }, nonEmptyStrings] } as const;
const count = { type: 'integer', minimum: 0 } as const;
const aggregator = {
  oneOf: [
    { type: 'object', additionalProperties: false, required: ['kind'], properties: { kind: { enum: ['last', 'max', 'mean'] } } },
    { type: 'object', additionalProperties: false, required: ['kind', 'alpha'], properties: { kind: { const: 'ema' }, alpha: { type: 'number', exclusiveMinimum: 0, maximum: 1 } } },
    { type: 'object', additionalProperties: false, required: ['kind', 'window'], properties: { kind: { enum: ['rolling-mean', 'rolling-max'] }, window: { type: 'integer', minimum: 1, maximum: 65536 } } },
  ],
} as const;

/** The one schema of a resolved config (after defaults and file references). */
export const TRIAL_CONFIG_SCHEMA = {
  $id: 'https://latentwatch.dev/schemas/trial-config.json',
  type: 'object',
  additionalProperties: false,
  required: ['formatVersion', 'name', 'description', 'seed', 'chat', 'vectors', 'prompts', 'answer', 'generation', 'verbalization', 'injection', 'controls', 'split', 'trace', 'output', 'training'],
  properties: {
    $schema: str,
    formatVersion: { const: TRIAL_CONFIG_VERSION },
    name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' },
    description: str,
    seed: { type: 'integer', minimum: 0, maximum: 4294967295 },
    chat: { enum: ['auto', 'always', 'never'] },
    vectors: {
      type: 'object',
      additionalProperties: false,
      required: ['template', 'words', 'contrast'],
      properties: {
        template: { type: 'string', pattern: '\\{word(_lower)?\\}' },
        words: {
          type: 'object',
          additionalProperties: false,
          required: ['concepts', 'baseline'],
          properties: { description: str, concepts: nonEmptyStrings, baseline: nonEmptyStrings },
        },
        contrast: {
          type: 'array',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['name', 'pairs'],
            properties: {
              name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' },
              pairs: { type: 'array', minItems: 1, items: { type: 'array', minItems: 2, maxItems: 2, items: nonEmpty } },
            },
          },
        },
      },
    },
    prompts: {
      type: 'object',
      additionalProperties: false,
      required: ['system', 'contexts', 'contextReply', 'fillers', 'detect', 'unrelated'],
      properties: {
        system: { type: ['string', 'null'] },
        contexts: nonEmptyStrings,
        contextReply: { type: ['string', 'null'] },
        fillers: nonEmptyStrings,
        detect: { type: 'array', items: question, minItems: 1 },
        unrelated: { type: 'array', items: question },
      },
    },
    answer: { type: 'object', additionalProperties: false, required: ['yes', 'no', 'pairedClean'], properties: { yes: nonEmptyStrings, no: nonEmptyStrings, pairedClean: { type: 'boolean' } } },
    generation: {
      type: 'object',
      additionalProperties: false,
      required: ['maxTokens', 'temperature', 'topK', 'topP', 'stopStrings'],
      properties: {
        maxTokens: { type: 'integer', minimum: 0, maximum: 4096 },
        temperature: { type: 'number', minimum: 0, maximum: 100 },
        topK: { type: 'integer', minimum: 0 },
        topP: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
        stopStrings: { type: 'array', items: nonEmpty },
      },
    },
    verbalization: { type: 'object', additionalProperties: false, required: ['phrases', 'matchConcept'], properties: { phrases: { type: 'array', items: nonEmpty }, matchConcept: { type: 'boolean' } } },
    injection: {
      type: 'object',
      additionalProperties: false,
      required: ['layers', 'strength', 'protocols', 'families', 'repeats'],
      properties: {
        layers: layerSpec,
        strength: {
          type: 'object',
          additionalProperties: false,
          required: ['mode', 'values'],
          properties: { mode: { enum: ['relative', 'absolute', 'vector'] }, values: { type: 'array', items: { type: 'number', exclusiveMinimum: 0 }, minItems: 1 } },
        },
        protocols: { type: 'array', items: { enum: [...PROTOCOLS] }, minItems: 1, uniqueItems: true },
        families: {
          type: 'array',
          minItems: 1,
          items: {
            oneOf: [
              { type: 'object', additionalProperties: false, required: ['name', 'kind', 'items'], properties: { name: nonEmpty, kind: { enum: ['concept', 'contrast'] }, items } },
              { type: 'object', additionalProperties: false, required: ['name', 'kind', 'count'], properties: { name: nonEmpty, kind: { const: 'random' }, count: { type: 'integer', minimum: 1 } } },
              {
                type: 'object',
                additionalProperties: false,
                required: ['name', 'kind', 'items', 'source'],
                properties: {
                  name: nonEmpty,
                  kind: { const: 'cross-layer' },
                  items,
                  source: {
                    oneOf: [
                      { type: 'object', additionalProperties: false, required: ['layer'], properties: { layer: { type: 'integer', minimum: 0 } } },
                      { type: 'object', additionalProperties: false, required: ['offset'], properties: { offset: { type: 'integer' } } },
                      { type: 'object', additionalProperties: false, required: ['depth'], properties: { depth: { type: 'number', minimum: 0, maximum: 1 } } },
                    ],
                  },
                },
              },
              {
                type: 'object',
                additionalProperties: false,
                required: ['name', 'kind', 'basis', 'rank', 'count'],
                properties: {
                  name: nonEmpty,
                  kind: { const: 'subspace' },
                  basis: { enum: ['concept', 'random'] },
                  rank: { type: 'integer', minimum: 1, maximum: 4096 },
                  count: { type: 'integer', minimum: 1 },
                  pool: items,
                },
              },
            ],
          },
        },
        repeats: { type: 'integer', minimum: 1 },
      },
    },
    controls: {
      type: 'object',
      additionalProperties: false,
      required: ['none', 'random', 'unrelatedQuestion', 'generationOnly'],
      properties: {
        none: { type: 'object', additionalProperties: false, required: ['trialsPerProtocol'], properties: { trialsPerProtocol: count } },
        random: { type: 'object', additionalProperties: false, required: ['trialsPerCell'], properties: { trialsPerCell: count } },
        unrelatedQuestion: { type: 'object', additionalProperties: false, required: ['trialsPerCell'], properties: { trialsPerCell: count } },
        generationOnly: { type: 'object', additionalProperties: false, required: ['trialsPerCell'], properties: { trialsPerCell: count } },
      },
    },
    split: {
      type: 'object',
      additionalProperties: false,
      required: ['evalConcepts', 'evalFraction'],
      properties: {
        evalConcepts: { oneOf: [{ type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1 }, { type: 'integer', minimum: 1 }, nonEmptyStrings] },
        evalFraction: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1 },
      },
    },
    trace: {
      type: 'object',
      additionalProperties: false,
      required: ['layers', 'contextPositions', 'dtype'],
      properties: { layers: { oneOf: [{ const: 'all' }, layerSpec] }, contextPositions: count, dtype: { enum: ['f16', 'f32'] } },
    },
    output: { type: 'object', additionalProperties: false, required: ['trialsPerShard'], properties: { trialsPerShard: { type: 'integer', minimum: 1 } } },
    training: {
      type: 'object',
      additionalProperties: false,
      required: ['targetFpr', 'positions', 'protocols', 'families', 'l2', 'validationFraction', 'aggregators'],
      properties: {
        targetFpr: { type: 'number', minimum: 0, exclusiveMaximum: 1 },
        positions: { enum: ['watch', 'after', 'inside', 'all'] },
        protocols: { type: 'array', items: { enum: [...PROTOCOLS] }, minItems: 1, uniqueItems: true },
        families: nonEmptyStrings,
        l2: { type: 'number', exclusiveMinimum: 0 },
        validationFraction: { type: 'number', minimum: 0, exclusiveMaximum: 1 },
        aggregators: { type: 'array', items: aggregator, minItems: 1 },
      },
    },
  },
} as const;

let validator: ReturnType<Ajv['compile']> | undefined;

function schemaErrors(candidate: unknown): ErrorObject[] {
  validator ??= new Ajv({ allErrors: true, strict: true, allowUnionTypes: true }).compile(TRIAL_CONFIG_SCHEMA);
  return validator(candidate) ? [] : [...(validator.errors ?? [])];
}

function invalid(source: string, pointer: string, what: string): never {
  throw lwError('LW_ERR_TRIALS_CONFIG_INVALID', `${source}: ${pointer || '/'}: ${what}`, { path: pointer || '/', source });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Objects merge key by key; arrays and scalars replace. */
function merge(base: unknown, over: unknown): unknown {
  if (!isObject(base) || !isObject(over)) return over === undefined ? structuredClone(base) : structuredClone(over);
  const out: Record<string, unknown> = {};
  for (const k of new Set([...Object.keys(base), ...Object.keys(over)])) out[k] = merge(base[k], over[k]);
  return out;
}

function readJson(path: string, what: string, source: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw lwError('LW_ERR_TRIALS_CONFIG_NOT_FOUND', `${what} ${path}`, { path }, e);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    return invalid(source, '', `${path} is not JSON: ${(e as Error).message}`);
  }
}

/** Inline `vectors.words`, `vectors.contrast` and `prompts.fillers: "baseline"` (paths relative to `baseDir`). */
function resolveReferences(raw: Record<string, unknown>, baseDir: string, source: string): void {
  const vectors = isObject(raw.vectors) ? raw.vectors : undefined;
  if (vectors && typeof vectors.words === 'string') {
    const file = readJson(resolve(baseDir, vectors.words), 'word-list file', source);
    if (!isObject(file)) invalid(source, '/vectors/words', `${vectors.words} must hold an object with concepts and baseline`);
    vectors.words = { concepts: file.concepts, baseline: file.baseline };
  }
  if (vectors && typeof vectors.contrast === 'string') {
    const file = readJson(resolve(baseDir, vectors.contrast), 'contrast-pair file', source);
    vectors.contrast = isObject(file) ? file.contrast : file;
  }
  const prompts = isObject(raw.prompts) ? raw.prompts : undefined;
  if (prompts && prompts.fillers === 'baseline') {
    const words = vectors && isObject(vectors.words) ? vectors.words.baseline : undefined;
    prompts.fillers = words;
  }
}

/**
 * Validate a config object: defaults, references (relative to `baseDir`), schema, semantic checks.
 * Returns a frozen resolved config. `source` names the file in error messages.
 */
export function resolveTrialConfig(value: unknown, baseDir: string, source = 'trial config'): Readonly<TrialConfig> {
  if (!isObject(value)) invalid(source, '', 'expected a JSON object');
  const merged = merge(TRIAL_CONFIG_DEFAULTS, value) as Record<string, unknown>;
  delete merged.$schema;
  resolveReferences(merged, baseDir, source);
  const errors = schemaErrors(merged);
  if (errors.length > 0) {
    const e = errors[0];
    const extra = e.keyword === 'additionalProperties' ? ` (${String((e.params as { additionalProperty?: string }).additionalProperty)})` : '';
    invalid(source, e.instancePath, `${e.message ?? 'invalid'}${extra}${errors.length > 1 ? ` (and ${errors.length - 1} more problems)` : ''}`);
  }
  const config = merged as unknown as TrialConfig;
  semanticChecks(config, source);
  return deepFreeze(config);
}

/** Read, resolve and validate a trial config file. */
export function loadTrialConfig(path: string): Readonly<TrialConfig> {
  const abs = resolve(path);
  return resolveTrialConfig(readJson(abs, 'trial config', abs), dirname(abs), abs);
}

function duplicates(xs: readonly string[]): string[] {
  const seen = new Set<string>();
  const dup = new Set<string>();
  for (const x of xs) {
    const k = x.toLowerCase();
    if (seen.has(k)) dup.add(x);
    seen.add(k);
  }
  return [...dup];
}

function semanticChecks(c: TrialConfig, source: string): void {
  const { concepts, baseline } = c.vectors.words;
  for (const [name, list] of [['concepts', concepts], ['baseline', baseline]] as const) {
    const d = duplicates(list);
    if (d.length > 0) invalid(source, `/vectors/words/${name}`, `duplicate words: ${d.join(', ')}`);
  }
  const overlap = concepts.filter((w) => baseline.some((b) => b.toLowerCase() === w.toLowerCase()));
  if (overlap.length > 0) invalid(source, '/vectors/words', `words in both lists: ${overlap.join(', ')}`);
  const contrastNames = c.vectors.contrast.map((s) => s.name);
  if (duplicates(contrastNames).length > 0) invalid(source, '/vectors/contrast', `duplicate names: ${duplicates(contrastNames).join(', ')}`);
  const familyNames = c.injection.families.map((f) => f.name);
  if (duplicates(familyNames).length > 0) invalid(source, '/injection/families', `duplicate family names: ${duplicates(familyNames).join(', ')}`);
  c.injection.families.forEach((f, i) => {
    if (f.kind === 'random') return;
    if (f.kind === 'subspace') {
      if (f.basis === 'random') return;
      const n = f.pool === undefined || f.pool === 'all' ? concepts.length : typeof f.pool === 'number' ? Math.min(f.pool, concepts.length) : f.pool.length;
      if (Array.isArray(f.pool)) for (const it of f.pool) if (!concepts.includes(it)) invalid(source, `/injection/families/${i}/pool`, `${it} is not a concept word`);
      if (f.rank > n) invalid(source, `/injection/families/${i}/rank`, `rank ${f.rank} > the ${n} concept vectors in the pool`);
      return;
    }
    const pool = f.kind === 'concept' || f.kind === 'cross-layer' ? concepts : contrastNames;
    const what = f.kind === 'cross-layer' ? 'concept' : f.kind;
    if (pool.length === 0) invalid(source, `/injection/families/${i}`, `no ${what} vectors are configured`);
    if (typeof f.items === 'number' && f.items > pool.length) invalid(source, `/injection/families/${i}/items`, `${f.items} > the ${pool.length} ${what} vectors configured`);
    if (Array.isArray(f.items)) {
      for (const it of f.items) if (!pool.includes(it)) invalid(source, `/injection/families/${i}/items`, `${it} is not a configured ${what} name`);
    }
  });
  for (const t of c.training.families) if (!familyNames.includes(t)) invalid(source, '/training/families', `${t} is not a family name (${familyNames.join(', ')})`);
  const ev = c.split.evalConcepts;
  if (typeof ev === 'number' && ev >= 1 && ev >= concepts.length) invalid(source, '/split/evalConcepts', `${ev} leaves no training concepts out of ${concepts.length}`);
  if (Array.isArray(ev)) for (const w of ev) if (!concepts.includes(w)) invalid(source, '/split/evalConcepts', `${w} is not a concept word`);
  if (c.controls.unrelatedQuestion.trialsPerCell > 0 && c.prompts.unrelated.length === 0) {
    invalid(source, '/prompts/unrelated', 'controls.unrelatedQuestion needs at least one unrelated question');
  }
  // Only {word}/{word_lower} (vectors.template) and {filler}/{filler_lower} (contexts, questions,
  // prefixes) are substituted; other braces stay as written (f-strings and dicts in code prompts).
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** Concrete layer indices of a spec on a model with `numLayers` layers (sorted, unique). */
export function resolveLayers(spec: 'all' | LayerSpec, numLayers: number, where = 'layers'): number[] {
  if (spec === 'all') return Array.from({ length: numLayers }, (_, i) => i);
  const raw = Array.isArray(spec) ? spec : spec.depth.map((f) => Math.min(numLayers - 1, Math.max(0, Math.round(f * numLayers))));
  for (const l of raw) {
    if (!Number.isInteger(l) || l < 0 || l >= numLayers) throw lwError('LW_ERR_TRIALS_CONFIG_INVALID', `${where}: layer ${l} is outside this model's 0..${numLayers - 1}`);
  }
  return [...new Set(raw)].sort((a, b) => a - b);
}

/** `{word}` / `{word_lower}` substitution (and {filler}). */
export function fillTemplate(template: string, key: 'word' | 'filler', value: string): string {
  return template.split(`{${key}_lower}`).join(value.toLowerCase()).split(`{${key}}`).join(value);
}
