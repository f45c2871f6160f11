/** Small trial configs for the probe pipeline tests (real engine, small real checkpoints). */
import { join, resolve } from 'node:path';
import { Engine } from '../src/engine/engine.js';
import { computeConceptVectors, writeConceptVectors } from '../src/lab/concepts.js';
import { resolveTrialConfig, type TrialConfig } from '../src/lab/trial-config.js';
import { runTrials } from '../src/lab/trials.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { CODE16M, TEST_CACHE, tempDir } from './helpers.js';

export const CONFIGS = new URL('../configs/', import.meta.url).pathname;

/**
 * A config on the code-style prompts of configs/trials/base.json with six concepts, one injection
 * layer and strength, both protocols, and every control: ~50 trials, a few seconds on qwen2-code-16m.
 */
export function tinyConfigObject(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    formatVersion: 1,
    name: 'tiny',
    seed: 7,
    chat: 'never',
    vectors: {
      template: '# Tell me about {word_lower}',
      words: { concepts: ['Oceans', 'Volcanoes', 'Bread', 'Silver', 'Trumpets', 'Snow'], baseline: ['Chairs', 'Lamps', 'Rivers', 'Coffee', 'Books', 'Boats', 'Clocks', 'Maps'] },
      contrast: [{ name: 'shouting', pairs: [['HELLO THERE, HOW ARE YOU?', 'Hello there, how are you?']] }],
    },
    prompts: {
      contexts: ['def load_{filler_lower}(path):\n    with open(path) as f:\n        return f.read()\n\n', 'class {filler}Store:\n    def __init__(self):\n        self.items = []\n\n'],
      detect: [{ question: '# Q: Do you detect an injected thought? Answer True or False.\n', prefix: 'detected =' }],
      unrelated: [{ question: '# Q: Is 3 greater than 2? Answer True or False.\n', prefix: 'answer =' }],
    },
    answer: { yes: [' True'], no: [' False'] },
    generation: { maxTokens: 3, stopStrings: ['\n'] },
    verbalization: { phrases: ['true'], matchConcept: true },
    injection: { layers: { depth: [0.5] }, strength: { mode: 'relative', values: [1] }, protocols: ['inject-then-ask', 'continuous'], families: [{ name: 'concept', kind: 'concept', items: 'all' }] },
    controls: { none: { trialsPerProtocol: 12 }, random: { trialsPerCell: 2 }, unrelatedQuestion: { trialsPerCell: 2 }, generationOnly: { trialsPerCell: 6 } },
    split: { evalConcepts: 2, evalFraction: 0.5 },
    trace: { layers: 'all', contextPositions: 3, dtype: 'f16' },
    output: { trialsPerShard: 16 },
    training: { validationFraction: 0.25, protocols: ['inject-then-ask', 'continuous'] },
    ...over,
  };
}

export function tinyConfig(over: Record<string, unknown> = {}): TrialConfig {
  return resolveTrialConfig(tinyConfigObject(over), resolve(CONFIGS, 'trials'), 'tiny test config');
}

/** A trial dataset of `cfg` on the built-in model, its concept vectors in its own concepts/ folder. */
export async function tinyDataset(cfg: TrialConfig, prefix: string): Promise<string> {
  const engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, taps: 'all', ports: 'all' });
  try {
    const data = tempDir(prefix);
    const v = await computeConceptVectors(engine, { template: cfg.vectors.template, chat: cfg.chat, concepts: cfg.vectors.words.concepts, baseline: cfg.vectors.words.baseline });
    writeConceptVectors(join(data, 'concepts'), v);
    await runTrials({ engine, config: cfg, store: ConceptStore.open(join(data, 'concepts'), engine.fingerprint), outDir: data });
    return data;
  } finally {
    await engine.close();
  }
}
