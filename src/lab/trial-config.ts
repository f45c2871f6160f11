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
import { Type, type Static } from 'typebox';
import { lwError } from '../errors.js';
import { closedObject, nullable, schemaValidator } from '../schema.js';

export const TRIAL_CONFIG_VERSION = 1;

export const PROTOCOLS = ['inject-then-ask', 'continuous'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

const str = Type.String();
const nonEmpty = Type.String({ minLength: 1 });
const nonEmptyStrings = Type.Array(nonEmpty, { minItems: 1 });
const count = Type.Integer({ minimum: 0 });
const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]*$';

/** Layers as indices, or as fractions of depth (round(f × numLayers), clipped), so one config fits any depth. */
const LAYER_SPEC_SCHEMA = Type.Union([
  Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 }),
  closedObject({ depth: Type.Array(Type.Number({ minimum: 0, maximum: 1 }), { minItems: 1 }) }),
]);
export type LayerSpec = Static<typeof LAYER_SPEC_SCHEMA>;

const STRENGTH_MODE_SCHEMA = Type.Enum(['relative', 'absolute', 'vector']);
export type StrengthMode = Static<typeof STRENGTH_MODE_SCHEMA>;

const QUESTION_SCHEMA = closedObject({ question: nonEmpty, prefix: str });
export type QuestionSpec = Static<typeof QUESTION_SCHEMA>;

const CONTRAST_SET_SCHEMA = closedObject({
  name: Type.String({ pattern: NAME_PATTERN }),
  pairs: Type.Array(Type.Tuple([nonEmpty, nonEmpty]), { minItems: 1 }),
});
export type ContrastSet = Static<typeof CONTRAST_SET_SCHEMA>;

/** Which items of a family's pool: all of them, the first N, or these names. */
const ITEMS_SCHEMA = Type.Union([Type.Literal('all'), Type.Integer({ minimum: 1 }), nonEmptyStrings]);

/**
 * Where a cross-layer family takes its vectors: a fixed layer, an offset from the injection layer
 * (clipped to the model), or a depth fraction (round(f × numLayers), clipped).
 */
const CROSS_LAYER_SOURCE_SCHEMA = Type.Union([
  closedObject({ layer: Type.Integer({ minimum: 0 }) }),
  closedObject({ offset: Type.Integer() }),
  closedObject({ depth: Type.Number({ minimum: 0, maximum: 1 }) }),
]);
export type CrossLayerSource = Static<typeof CROSS_LAYER_SOURCE_SCHEMA>;

/**
 * Where injection vectors come from. Positives of the trial grid are drawn from each family; the
 * `random` control reuses the `random` kind. Adding a family = a kind here + a case in
 * trial-families.ts (issue 7: cross-layer, subspace...).
 */
const FAMILY_SPEC_SCHEMA = Type.Union([
  closedObject({ name: nonEmpty, kind: Type.Enum(['concept', 'contrast']), items: ITEMS_SCHEMA }),
  closedObject({ name: nonEmpty, kind: Type.Literal('random'), count: Type.Integer({ minimum: 1 }) }),
  closedObject({ name: nonEmpty, kind: Type.Literal('cross-layer'), items: ITEMS_SCHEMA, source: CROSS_LAYER_SOURCE_SCHEMA }),
  closedObject({
    name: nonEmpty,
    kind: Type.Literal('subspace'),
    basis: Type.Enum(['concept', 'random']),
    rank: Type.Integer({ minimum: 1, maximum: 4096 }),
    count: Type.Integer({ minimum: 1 }),
    pool: Type.Optional(ITEMS_SCHEMA),
  }),
]);
export type FamilySpec = Static<typeof FAMILY_SPEC_SCHEMA>;

/** Which positions of a trial a probe reads: see docs/trials.md ("Positions"). */
const POSITION_SET_SCHEMA = Type.Enum(['watch', 'after', 'inside', 'all']);
export type PositionSet = Static<typeof POSITION_SET_SCHEMA>;

/** Per-token aggregators a trained probe may use (the subset of aggregators.ts's specs a config can name). */
const AGGREGATOR_SCHEMA = Type.Union([
  closedObject({ kind: Type.Enum(['last', 'max', 'mean']) }),
  closedObject({ kind: Type.Literal('ema'), alpha: Type.Number({ exclusiveMinimum: 0, maximum: 1 }) }),
  closedObject({ kind: Type.Enum(['rolling-mean', 'rolling-max']), window: Type.Integer({ minimum: 1, maximum: 65536 }) }),
]);

const protocols = Type.Array(Type.Enum(PROTOCOLS), { minItems: 1, uniqueItems: true });
const trialsPerCell = closedObject({ trialsPerCell: count });

/**
 * The one schema of a resolved config (after defaults and file references); the types above and
 * TrialConfig are derived from it. Alternatives are mutually exclusive, so anyOf means oneOf here.
 */
export const TRIAL_CONFIG_SCHEMA = closedObject(
  {
    $schema: Type.Optional(str),
    formatVersion: Type.Literal(TRIAL_CONFIG_VERSION),
    name: Type.String({ pattern: NAME_PATTERN }),
    description: str,
    seed: Type.Integer({ minimum: 0, maximum: 4294967295 }),
    chat: Type.Enum(['auto', 'always', 'never']),
    vectors: closedObject({
      template: Type.String({ pattern: '\\{word(_lower)?\\}' }),
      words: closedObject({ description: Type.Optional(str), concepts: nonEmptyStrings, baseline: nonEmptyStrings }),
      contrast: Type.Array(CONTRAST_SET_SCHEMA),
    }),
    prompts: closedObject({
      system: nullable(str),
      contexts: nonEmptyStrings,
      contextReply: nullable(str),
      fillers: nonEmptyStrings,
      detect: Type.Array(QUESTION_SCHEMA, { minItems: 1 }),
      unrelated: Type.Array(QUESTION_SCHEMA),
    }),
    answer: closedObject({ yes: nonEmptyStrings, no: nonEmptyStrings, pairedClean: Type.Boolean() }),
    generation: closedObject({
      maxTokens: Type.Integer({ minimum: 0, maximum: 4096 }),
      temperature: Type.Number({ minimum: 0, maximum: 100 }),
      topK: Type.Integer({ minimum: 0 }),
      topP: Type.Number({ exclusiveMinimum: 0, maximum: 1 }),
      stopStrings: Type.Array(nonEmpty),
    }),
    verbalization: closedObject({ phrases: Type.Array(nonEmpty), matchConcept: Type.Boolean() }),
    injection: closedObject({
      layers: LAYER_SPEC_SCHEMA,
      strength: closedObject({ mode: STRENGTH_MODE_SCHEMA, values: Type.Array(Type.Number({ exclusiveMinimum: 0 }), { minItems: 1 }) }),
      protocols,
      families: Type.Array(FAMILY_SPEC_SCHEMA, { minItems: 1 }),
      repeats: Type.Integer({ minimum: 1 }),
    }),
    controls: closedObject({
      none: closedObject({ trialsPerProtocol: count }),
      random: trialsPerCell,
      unrelatedQuestion: trialsPerCell,
      generationOnly: trialsPerCell,
    }),
    split: closedObject({
      evalConcepts: Type.Union([Type.Number({ exclusiveMinimum: 0, exclusiveMaximum: 1 }), Type.Integer({ minimum: 1 }), nonEmptyStrings]),
      evalFraction: Type.Number({ exclusiveMinimum: 0, exclusiveMaximum: 1 }),
    }),
    trace: closedObject({ layers: Type.Union([Type.Literal('all'), LAYER_SPEC_SCHEMA]), contextPositions: count, dtype: Type.Enum(['f16', 'f32']) }),
    output: closedObject({ trialsPerShard: Type.Integer({ minimum: 1 }) }),
    training: closedObject({
      targetFpr: Type.Number({ minimum: 0, exclusiveMaximum: 1 }),
      positions: POSITION_SET_SCHEMA,
      protocols,
      families: nonEmptyStrings,
      l2: Type.Number({ exclusiveMinimum: 0 }),
      validationFraction: Type.Number({ minimum: 0, exclusiveMaximum: 1 }),
      aggregators: Type.Array(AGGREGATOR_SCHEMA, { minItems: 1 }),
      // Optional with no default, so configs that leave them out keep their resolved bytes (and hashes).
      input: Type.Optional(Type.Enum(['resid', 'update'])),
      layer: Type.Optional(Type.Union([Type.Literal('best'), Type.Integer({ minimum: 0 }), Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1, uniqueItems: true })])),
    }),
  },
  { $id: 'https://latentwatch.dev/schemas/trial-config.json' },
);

/** A resolved trial config (`$schema` is dropped while resolving). */
export type TrialConfig = Omit<Static<typeof TRIAL_CONFIG_SCHEMA>, '$schema'>;

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

const schemaErrors = schemaValidator(TRIAL_CONFIG_SCHEMA);

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

/**
 * A word-list file for `trials --words`: one word per line (blank lines ignored), or a JSON list of
 * strings. `path` is resolved against the current directory, like any command-line path.
 */
export function readWordList(path: string): string[] {
  const abs = resolve(path);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    throw lwError('LW_ERR_TRIALS_CONFIG_NOT_FOUND', `word list ${abs}`, { path: abs }, e);
  }
  const trimmed = text.trim();
  let words: unknown;
  if (trimmed.startsWith('[')) {
    try {
      words = JSON.parse(trimmed);
    } catch (e) {
      return invalid(abs, '', `not a JSON list of words: ${(e as Error).message}`);
    }
    if (!Array.isArray(words) || !words.every((w) => typeof w === 'string')) invalid(abs, '', 'expected a JSON list of strings');
  } else {
    words = trimmed.split(/\r?\n/);
  }
  const list = (words as string[]).map((w) => w.trim()).filter((w) => w !== '');
  if (list.length === 0) invalid(abs, '', 'the word list is empty');
  return list;
}

/**
 * The config with `words` added to the concept words (a word already there, in any case, is kept
 * as spelled in the config) and held out: `split.evalConcepts` becomes exactly these words, so
 * every other concept trains and each given word is used only for evaluation. Validated again, so
 * a word that is a baseline word, or given twice, fails as in a config file.
 */
export function withHeldOutWords(config: Readonly<TrialConfig>, words: readonly string[], source = 'trial config with --words'): Readonly<TrialConfig> {
  const c = structuredClone(config) as TrialConfig;
  const dup = duplicates(words);
  if (dup.length > 0) invalid(source, '/split/evalConcepts', `duplicate words: ${dup.join(', ')}`);
  const concepts = [...c.vectors.words.concepts];
  const held = words.map((w) => {
    const known = concepts.find((x) => x.toLowerCase() === w.toLowerCase());
    if (known !== undefined) return known;
    concepts.push(w);
    return w;
  });
  if (held.length >= concepts.length) invalid(source, '/split/evalConcepts', `holding out all ${concepts.length} concept words leaves none to train on`);
  const added = concepts.length - c.vectors.words.concepts.length;
  c.vectors.words = { ...c.vectors.words, concepts };
  // Families that name their concepts (or take the first N) must still run the added words.
  c.injection.families = c.injection.families.map((f) => {
    if ((f.kind !== 'concept' && f.kind !== 'cross-layer') || f.items === 'all') return f;
    const items = f.items;
    return { ...f, items: typeof items === 'number' ? items + added : [...items, ...held.filter((w) => !items.includes(w))] };
  });
  c.split = { ...c.split, evalConcepts: held };
  // Resolved configs hold no file references, so the base directory is never read.
  return resolveTrialConfig(c, process.cwd(), source);
}
