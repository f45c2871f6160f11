/**
 * Clean-prompt corpora: what ordinary traffic looks like, for fitting anomaly detectors and for
 * measuring the false-positive rate of any detector the way the daemon scores (every position of
 * a request, prompt included, from position 0, then the generated tokens). The format lives here,
 * beside the daemon and the lab: the lab fits on it (src/lab/corpus.ts runs it through the engine),
 * and the daemon's learn mode folds the always-fitted styles into what it learns.
 *
 * Two inputs:
 * - a corpus config (configs/corpus/*.json): styles of prompts (code, prose, chat, long context…),
 *   each a list of texts; styles marked `holdout` are never fitted on, and of the others a seeded
 *   share (`split.testFraction`, by hashing seed, style and index) is held out as well;
 * - live traffic: a JSONL file, one prompt per line (a JSON string, or {"prompt", "style"?,
 *   "max_tokens"?}); style "traffic" unless given; the same hashed held-out share as a config
 *   (test fraction 0.3, seed 0, by style and index within the style).
 * Several inputs merge (`loadCorpora`): each request keeps the split, generation length and
 * sampling seed it has alone; a style name already taken by an earlier input gets a suffix (-2…).
 * Errors: LW_ERR_CORPUS_NOT_FOUND, LW_ERR_CORPUS_INVALID (with the JSON pointer or line).
 *
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Ajv } from 'ajv';
import { lwError } from './errors.js';
import { hash32, hashUnit } from './rng.js';

export const CORPUS_FORMAT_VERSION = 1;

export interface CorpusStyle {
  name: string;
  description: string;
  /** Never fitted on: every prompt of the style is a test prompt. */
  holdout: boolean;
  /**
   * Never left out of a fit, also when calibration leaves one style out (`--calibrate-on styles`):
   * for text every detector is fitted on by design (junk), so a fit without it never runs in use.
   */
  alwaysFitted: boolean;
  prompts: string[];
}

export interface Corpus {
  formatVersion: 1;
  name: string;
  description: string;
  seed: number;
  generation: { maxTokens: number; temperature: number };
  split: { testFraction: number };
  styles: CorpusStyle[];
  /**
   * Per style (same order), per prompt: its own generation length (JSONL `max_tokens`), or
   * undefined for `generation.maxTokens`. Not part of the config format.
   */
  maxTokens?: (number | undefined)[][];
  /** A merged corpus (`mergeCorpora`): its requests, each as in its own input. */
  requests?: CorpusRequest[];
}

/** Traffic defaults: 8 greedy tokens, 0.3 held out (hashed with seed 0). */
export const TRAFFIC_DEFAULTS = { seed: 0, generation: { maxTokens: 8, temperature: 0 }, testFraction: 0.3 } as const;

const nonEmpty = { type: 'string', minLength: 1 } as const;
const CORPUS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['formatVersion', 'name', 'styles'],
  properties: {
    $schema: { type: 'string' },
    formatVersion: { const: CORPUS_FORMAT_VERSION },
    name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' },
    description: { type: 'string' },
    seed: { type: 'integer', minimum: 0, maximum: 4294967295 },
    generation: {
      type: 'object',
      additionalProperties: false,
      properties: { maxTokens: { type: 'integer', minimum: 0, maximum: 4096 }, temperature: { type: 'number', minimum: 0, maximum: 100 } },
    },
    split: { type: 'object', additionalProperties: false, properties: { testFraction: { type: 'number', minimum: 0, exclusiveMaximum: 1 } } },
    styles: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'prompts'],
        properties: {
          name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' },
          description: { type: 'string' },
          holdout: { type: 'boolean' },
          alwaysFitted: { type: 'boolean' },
          prompts: { type: 'array', minItems: 1, items: nonEmpty },
        },
      },
    },
  },
} as const;

let validator: ReturnType<Ajv['compile']> | undefined;

function invalid(source: string, where: string, what: string): never {
  throw lwError('LW_ERR_CORPUS_INVALID', `${source}: ${where || '/'}: ${what}`, { path: where || '/', source });
}

/** Validate a parsed corpus config; fills defaults (seed 0, 8 greedy tokens, test fraction 0.3). */
export function resolveCorpus(value: unknown, source = 'corpus'): Corpus {
  validator ??= new Ajv({ allErrors: true, strict: true }).compile(CORPUS_SCHEMA);
  if (!validator(value)) {
    const e = validator.errors![0];
    const extra = e.keyword === 'additionalProperties' ? ` (${String((e.params as { additionalProperty?: string }).additionalProperty)})` : '';
    invalid(source, e.instancePath, `${e.message ?? 'invalid'}${extra}`);
  }
  const v = value as Partial<Corpus> & { styles: (Partial<CorpusStyle> & { name: string; prompts: string[] })[] };
  const names = new Set<string>();
  for (const [i, s] of v.styles.entries()) {
    if (names.has(s.name)) invalid(source, `/styles/${i}/name`, `duplicate style ${s.name}`);
    names.add(s.name);
  }
  return {
    formatVersion: 1,
    name: v.name!,
    description: v.description ?? '',
    seed: v.seed ?? 0,
    generation: { maxTokens: v.generation?.maxTokens ?? 8, temperature: v.generation?.temperature ?? 0 },
    split: { testFraction: v.split?.testFraction ?? 0.3 },
    styles: v.styles.map((s) => ({ name: s.name, description: s.description ?? '', holdout: s.holdout ?? false, alwaysFitted: s.alwaysFitted ?? false, prompts: [...s.prompts] })),
  };
}

export interface LoadCorpusOptions {
  /** Generation length of JSONL lines without their own `max_tokens` (default 8). */
  maxTokens?: number;
  /** Sampling temperature of JSONL lines (default 0: greedy). */
  temperature?: number;
}

const MAX_TOKENS_LIMIT = 4096;

/**
 * Read a corpus: a corpus config (.json) or live traffic (.jsonl: one prompt per line, a JSON
 * string or {"prompt": "...", "style": "...", "max_tokens": N}; 8 greedy tokens per request
 * unless the line or `opts.maxTokens` says otherwise; a hashed 0.3 of each style held out).
 */
export function loadCorpus(path: string, opts: LoadCorpusOptions = {}): Corpus {
  const abs = resolve(path);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    throw lwError('LW_ERR_CORPUS_NOT_FOUND', abs, { path: abs }, e);
  }
  if (abs.endsWith('.jsonl')) {
    const defaultMax = opts.maxTokens ?? TRAFFIC_DEFAULTS.generation.maxTokens;
    if (!Number.isInteger(defaultMax) || defaultMax < 0 || defaultMax > MAX_TOKENS_LIMIT) invalid(abs, '', `max tokens must be an integer in 0..${MAX_TOKENS_LIMIT} (got ${defaultMax})`);
    const byStyle = new Map<string, { prompts: string[]; maxTokens: (number | undefined)[] }>();
    text.split('\n').forEach((line, n) => {
      if (line.trim() === '') return;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch {
        invalid(abs, `line ${n + 1}`, 'not JSON');
      }
      const o = typeof v === 'string' ? { prompt: v } : (v as { prompt?: unknown; style?: unknown; max_tokens?: unknown; maxTokens?: unknown } | null);
      if (o === null || typeof o !== 'object' || typeof o.prompt !== 'string' || o.prompt === '') invalid(abs, `line ${n + 1}`, 'expected a non-empty JSON string or {"prompt": string, "style"?: string, "max_tokens"?: integer}');
      const mt = 'max_tokens' in o ? o.max_tokens : 'maxTokens' in o ? o.maxTokens : undefined;
      if (mt !== undefined && (typeof mt !== 'number' || !Number.isInteger(mt) || mt < 0 || mt > MAX_TOKENS_LIMIT)) invalid(abs, `line ${n + 1}`, `max_tokens must be an integer in 0..${MAX_TOKENS_LIMIT} (got ${JSON.stringify(mt)})`);
      const style = typeof o.style === 'string' && o.style !== '' ? o.style.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]/, 's') : 'traffic';
      const st = byStyle.get(style) ?? { prompts: [], maxTokens: [] };
      st.prompts.push(o.prompt);
      st.maxTokens.push(mt as number | undefined);
      byStyle.set(style, st);
    });
    if (byStyle.size === 0) invalid(abs, '', 'no prompts');
    const c = resolveCorpus(
      {
        formatVersion: 1,
        name: 'traffic',
        description: `prompts of ${abs}`,
        seed: TRAFFIC_DEFAULTS.seed,
        generation: { maxTokens: defaultMax, temperature: opts.temperature ?? TRAFFIC_DEFAULTS.generation.temperature },
        split: { testFraction: TRAFFIC_DEFAULTS.testFraction },
        styles: [...byStyle].map(([name, st]) => ({ name, prompts: st.prompts })),
      },
      abs,
    );
    c.maxTokens = [...byStyle.values()].map((st) => st.maxTokens);
    return c;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    invalid(abs, '', `not JSON: ${(e as Error).message}`);
  }
  return resolveCorpus(value, abs);
}

/**
 * Read one or more corpus files and merge them (`mergeCorpora`). The first file's generation
 * settings are the default of JSONL traffic files after it (`opts.maxTokens` overrides the length);
 * a corpus config keeps its own.
 */
export function loadCorpora(paths: readonly string[], opts: LoadCorpusOptions = {}): Corpus {
  if (paths.length === 0) throw lwError('LW_ERR_CORPUS_INVALID', 'no corpus file given');
  const first = loadCorpus(paths[0], opts);
  const rest = paths.slice(1).map((p) => loadCorpus(p, { maxTokens: opts.maxTokens ?? first.generation.maxTokens, temperature: opts.temperature ?? first.generation.temperature }));
  return rest.length === 0 ? first : mergeCorpora([first, ...rest]);
}

/**
 * One corpus of several: every request keeps the split, generation length and sampling seed it has
 * in its own corpus; a style whose name an earlier corpus already uses is renamed name-2, name-3…,
 * so styles stay distinct and request ids (style/index) unique. Seed and generation are the first's.
 */
export function mergeCorpora(parts: readonly Corpus[]): Corpus {
  const taken = new Set<string>();
  const styles: CorpusStyle[] = [];
  const requests: CorpusRequest[] = [];
  for (const c of parts) {
    const rename = new Map<string, string>();
    for (const s of c.styles) {
      let name = s.name;
      for (let k = 2; taken.has(name); k++) name = `${s.name}-${k}`;
      taken.add(name);
      rename.set(s.name, name);
      styles.push({ ...s, name, prompts: [...s.prompts] });
    }
    for (const r of corpusRequests(c)) {
      const style = rename.get(r.style)!;
      requests.push({ ...r, id: `${style}/${r.index}`, style });
    }
  }
  const [first] = parts;
  return {
    ...first,
    name: parts.map((c) => c.name).join('+'),
    description: parts.map((c) => c.description).join('; '),
    styles,
    maxTokens: undefined,
    requests,
  };
}

export interface CorpusRequest {
  id: string;
  style: string;
  index: number;
  /** 'fit': may be fitted on; 'test': held out (holdout styles, and a seeded share of the rest). */
  split: 'fit' | 'test';
  /** Its style is never left out of a fit (CorpusStyle.alwaysFitted). */
  alwaysFitted: boolean;
  text: string;
  /** Tokens to generate after the prompt. */
  maxTokens: number;
  temperature: number;
  /** Seed of sampled generation (temperature > 0). */
  sampleSeed: number;
}

/** Every request of a corpus, in order, with its split and generation settings. */
export function corpusRequests(c: Corpus): CorpusRequest[] {
  if (c.requests) return c.requests.map((r) => ({ ...r }));
  const out: CorpusRequest[] = [];
  c.styles.forEach((s, k) => {
    s.prompts.forEach((text, index) => {
      const id = `${s.name}/${index}`;
      const test = s.holdout || (c.split.testFraction > 0 && hashUnit(`${c.seed}|corpus|${id}`) < c.split.testFraction);
      const maxTokens = c.maxTokens?.[k]?.[index] ?? c.generation.maxTokens;
      out.push({ id, style: s.name, index, split: test ? 'test' : 'fit', alwaysFitted: s.alwaysFitted, text, maxTokens, temperature: c.generation.temperature, sampleSeed: hash32(`${c.seed}|sample|${id}`) });
    });
  });
  return out;
}
