/**
 * Issue 12 usability: `trials --words FILE` (new concept words held out without editing the config)
 * and eval-probe's figures per strength pooled over protocols.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { TrialRecord } from '../src/lab/dataset.js';
import { figures, summarise, type ScoredSplit } from '../src/lab/eval.js';
import { tprAtThreshold } from '../src/lab/metrics.js';
import { readWordList, withHeldOutWords } from '../src/lab/trial-config.js';
import { CODE16M, TEST_CACHE, tempDir } from './helpers.js';
import { tinyConfig, tinyConfigObject } from './probes-trials-helpers.js';

const run = promisify(execFile);
const MAIN = new URL('../src/cli/main.ts', import.meta.url).pathname;
// The CLI runs from another directory here, where a bare `--import tsx` would not resolve.
const TSX = new URL('../node_modules/tsx/dist/loader.mjs', import.meta.url).href;

describe('trials --words', () => {
  it('reads one word per line or a JSON list, relative to the current directory', () => {
    const dir = tempDir('lw-words-');
    writeFileSync(join(dir, 'a.txt'), 'Glaciers\n\n  Lanterns  \r\nOrchids\n');
    writeFileSync(join(dir, 'b.json'), '["Glaciers", "Lanterns"]');
    writeFileSync(join(dir, 'empty.txt'), '\n \n');
    writeFileSync(join(dir, 'bad.json'), '[1, 2]');
    const cwd = process.cwd();
    try {
      process.chdir(dir);
      expect(readWordList('a.txt')).toEqual(['Glaciers', 'Lanterns', 'Orchids']);
      expect(readWordList('b.json')).toEqual(['Glaciers', 'Lanterns']);
      expect(() => readWordList('empty.txt')).toThrow(/LW_ERR_TRIALS_CONFIG_INVALID|empty/);
      expect(() => readWordList('bad.json')).toThrow(/list of strings/);
      expect(() => readWordList('nope.txt')).toThrow(expect.objectContaining({ code: 'LW_ERR_TRIALS_CONFIG_NOT_FOUND' }));
    } finally {
      process.chdir(cwd);
    }
  });

  it('adds the words to the concepts and holds out exactly them', () => {
    const base = tinyConfig();
    const c = withHeldOutWords(base, ['Glaciers', 'snow']);
    // 'snow' is the configured 'Snow': kept as spelled, not added twice.
    expect(c.vectors.words.concepts).toEqual([...base.vectors.words.concepts, 'Glaciers']);
    expect(c.split.evalConcepts).toEqual(['Glaciers', 'Snow']);
    // A family naming its items still runs the added word.
    const named = tinyConfig({ injection: { ...(tinyConfigObject().injection as object), families: [{ name: 'concept', kind: 'concept', items: ['Oceans', 'Bread'] }] } });
    expect(withHeldOutWords(named, ['Glaciers']).injection.families[0]).toMatchObject({ items: ['Oceans', 'Bread', 'Glaciers'] });
    // Baseline words, duplicates and holding out everything fail like a config would.
    expect(() => withHeldOutWords(base, ['Chairs'])).toThrow(expect.objectContaining({ code: 'LW_ERR_TRIALS_CONFIG_INVALID' }));
    expect(() => withHeldOutWords(base, ['Glaciers', 'glaciers'])).toThrow(/duplicate/);
    expect(() => withHeldOutWords(base, base.vectors.words.concepts)).toThrow(/none to train on/);
  });

  it('runs the new words as held-out trials from the command line; eval-probe pools strengths over protocols', async () => {
    const dir = tempDir('lw-words-cli-');
    const config = join(dir, 'tiny.json');
    writeFileSync(config, JSON.stringify(tinyConfigObject({ injection: { ...(tinyConfigObject().injection as object), strength: { mode: 'relative', values: [0.5, 1] } }, controls: { none: { trialsPerProtocol: 10 }, random: { trialsPerCell: 0 }, unrelatedQuestion: { trialsPerCell: 0 }, generationOnly: { trialsPerCell: 0 } } })));
    writeFileSync(join(dir, 'new-words.txt'), 'Glaciers\nLanterns\n');
    const cli = (...args: string[]) => run('node', ['--import', TSX, MAIN, ...args], { maxBuffer: 1 << 26, cwd: dir });
    const data = join(dir, 'data');
    // A relative --words path is read from the command's working directory.
    await cli('trials', '--model', CODE16M, '--config', config, '--out', data, '--words', 'new-words.txt', '--cache-dir', TEST_CACHE);
    const manifest = JSON.parse(readFileSync(join(data, 'dataset.json'), 'utf8')) as { split: { evalConcepts: string[]; trainConcepts: string[] } };
    expect(manifest.split.evalConcepts.sort()).toEqual(['Glaciers', 'Lanterns']);
    expect(manifest.split.trainConcepts.sort()).toEqual(['Bread', 'Oceans', 'Silver', 'Snow', 'Trumpets', 'Volcanoes']);
    const records = readFileSync(join(data, 'index.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as TrialRecord);
    const injected = records.filter((r) => r.condition === 'inject');
    expect(new Set(injected.filter((r) => r.split === 'eval').map((r) => r.concept))).toEqual(new Set(['Glaciers', 'Lanterns']));
    expect(injected.filter((r) => r.concept === 'Glaciers' || r.concept === 'Lanterns').every((r) => r.split === 'eval')).toBe(true);

    // Stored vectors without the new word are refused, not silently run without it.
    writeFileSync(join(dir, 'more.json'), '["Orchids"]');
    await expect(cli('trials', '--model', CODE16M, '--config', config, '--out', join(dir, 'more'), '--words', 'more.json', '--concepts', join(data, 'concepts'), '--cache-dir', TEST_CACHE)).rejects.toMatchObject({
      stderr: expect.stringMatching(/LW_ERR_CLI_USAGE.*Orchids/),
    });

    const probe = join(dir, 'p.probe.json');
    await cli('train-probe', '--data', data, '--out', probe);
    const ev = JSON.parse((await cli('eval-probe', '--probe', probe, '--data', data, '--json')).stdout) as { pooledByStrength: { strength: number; positives: number }[]; byStrength: { strength: number; positives: number }[] };
    expect(ev.pooledByStrength.map((b) => b.strength)).toEqual([0.5, 1]);
    for (const b of ev.pooledByStrength) {
      // Pooled over both protocols: the per-protocol rows of that strength add up.
      expect(b.positives).toBe(ev.byStrength.filter((x) => x.strength === b.strength).reduce((a, x) => a + x.positives, 0));
      expect(b.positives).toBe(2 * 2); // 2 held-out words × 2 protocols × 1 layer
    }
    expect((await cli('eval-probe', '--probe', probe, '--data', data)).stdout).toMatch(/per strength, pooled over protocols[^\n]*\n\s+×0\.5\s/);
  });
});

describe('eval figures pooled per strength', () => {
  it('pool every protocol of a strength against every clean trial', () => {
    const rec = (protocol: string, strength: number | null) => ({ protocol, strength }) as TrialRecord;
    const sc: ScoredSplit = {
      positives: [
        { r: rec('inject-then-ask', 0.5), score: 0.9 },
        { r: rec('continuous', 0.5), score: 0.2 },
        { r: rec('continuous', 0.5), score: 0.7 },
        { r: rec('inject-then-ask', 1), score: 0.95 },
      ],
      negatives: [
        { r: rec('inject-then-ask', null), score: 0.1 },
        { r: rec('inject-then-ask', null), score: 0.3 },
        { r: rec('continuous', null), score: 0.6 },
      ],
      controls: new Map(),
      skipped: 0,
    };
    const s = summarise(sc, 0.5);
    expect(s.pooledByStrength.map((b) => b.strength)).toEqual([0.5, 1]);
    const half = s.pooledByStrength[0];
    expect(half).toMatchObject({ ...figures([0.9, 0.2, 0.7], [0.1, 0.3, 0.6]), tprAtThreshold: tprAtThreshold([0.9, 0.2, 0.7], 0.5) });
    // Not the per-protocol rows: continuous ×0.5 alone is judged against continuous clean trials only.
    expect(half.auroc).not.toBe(s.byStrength.find((b) => b.protocol === 'continuous' && b.strength === 0.5)!.auroc);
  });
});
