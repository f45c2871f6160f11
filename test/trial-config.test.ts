/** The trial config schema (TypeBox, validated by ajv): defaults, coded errors with JSON pointers, frozen results. */
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadTrialConfig, resolveTrialConfig, TRIAL_CONFIG_DEFAULTS, TRIAL_CONFIG_SCHEMA } from '../src/lab/trial-config.js';
import { CONFIGS, tinyConfigObject } from './probes-trials-helpers.js';
import { thrown } from './helpers.js';

const resolveTiny = (over: Record<string, unknown>) => resolveTrialConfig(tinyConfigObject(over), resolve(CONFIGS, 'trials'), 'tiny');

describe('trial config', () => {
  it('every shipped config loads, deeply frozen', () => {
    const files = readdirSync(join(CONFIGS, 'trials')).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      const c = loadTrialConfig(join(CONFIGS, 'trials', f));
      expect(Object.isFrozen(c)).toBe(true);
      expect(Object.isFrozen(c.injection.families[0])).toBe(true);
      expect(c.vectors.words.concepts.length).toBeGreaterThan(0); // the word-list file was inlined
    }
  });

  it('fills defaults: objects merge, arrays replace', () => {
    const c = resolveTiny({ generation: { maxTokens: 5 } });
    expect(c.generation).toEqual({ ...TRIAL_CONFIG_DEFAULTS.generation, maxTokens: 5 });
    expect(c.training.aggregators).toEqual(TRIAL_CONFIG_DEFAULTS.training.aggregators);
    expect(c.prompts.fillers).toEqual(c.vectors.words.baseline); // "baseline" resolves to the baseline words
  });

  it('schema problems are LW_ERR_TRIALS_CONFIG_INVALID with the JSON pointer and the source', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ injection: { strength: { mode: 'loud', values: [1] } } }, '/injection/strength/mode'],
      [{ seed: -1 }, '/seed'],
      [{ chat: 'sometimes' }, '/chat'],
      [{ split: { evalConcepts: 0, evalFraction: 0.5 } }, '/split/evalConcepts'],
      [{ trace: { layers: [], contextPositions: 3, dtype: 'f16' } }, '/trace/layers'],
      [{ training: { aggregators: [{ kind: 'ema', alpha: 2 }] } }, '/training/aggregators/0'],
      [{ vectors: { ...(tinyConfigObject().vectors as object), contrast: [{ name: 'x', pairs: [['a', 'b', 'c']] }] } }, '/vectors/contrast/0/pairs/0'],
    ];
    for (const [over, path] of cases) {
      const e = thrown(() => resolveTiny(over));
      expect(e.code).toBe('LW_ERR_TRIALS_CONFIG_INVALID');
      expect(String(e.details?.path).startsWith(path), `${JSON.stringify(over)} → ${String(e.details?.path)}`).toBe(true);
      expect(e.details?.source).toBe('tiny');
    }
    const unknown = thrown(() => resolveTiny({ outptu: {} }));
    expect(unknown.message).toMatch(/\(outptu\)/);
  });

  it('the schema is closed at the top and requires every resolved section', () => {
    expect(TRIAL_CONFIG_SCHEMA.additionalProperties).toBe(false);
    expect([...TRIAL_CONFIG_SCHEMA.required].sort()).toEqual(['formatVersion', 'name', ...Object.keys(TRIAL_CONFIG_DEFAULTS)].sort());
  });
});
