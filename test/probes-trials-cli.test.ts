/** The probe pipeline from the command line, end to end on qwen2-code-16m with a tiny config. */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { CODE16M, TEST_CACHE, tempDir } from './helpers.js';
import { tinyConfigObject } from './probes-trials-helpers.js';

const run = promisify(execFile);
const MAIN = new URL('../src/cli/main.ts', import.meta.url).pathname;
const cli = (...args: string[]) => run('node', ['--import', 'tsx', MAIN, ...args], { maxBuffer: 1 << 26 });
const json = (s: string) => JSON.parse(s) as Record<string, unknown>;

describe('latentwatch concepts | trials | train-probe | eval-probe | report', () => {
  it('every probe command has --help', async () => {
    for (const c of ['concepts', 'trials', 'train-probe', 'eval-probe', 'report']) {
      const { stdout } = await cli(c, '--help');
      expect(stdout).toContain(`latentwatch ${c}`);
    }
  });

  it('runs the pipeline end to end and refuses other models and bad configs with coded errors', async () => {
    const dir = tempDir('lw-cli-');
    const config = join(dir, 'tiny.json');
    writeFileSync(config, JSON.stringify(tinyConfigObject({ controls: { none: { trialsPerProtocol: 10 }, random: { trialsPerCell: 2 }, unrelatedQuestion: { trialsPerCell: 2 }, generationOnly: { trialsPerCell: 6 } } })));
    const cache = ['--cache-dir', TEST_CACHE];

    const c = json((await cli('concepts', '--model', CODE16M, '--config', config, '--out', join(dir, 'concepts'), ...cache)).stdout);
    expect(c.concepts).toBe(6);
    expect(existsSync(join(dir, 'concepts', 'concepts.safetensors'))).toBe(true);

    const data = join(dir, 'data');
    const t1 = json((await cli('trials', '--model', CODE16M, '--config', config, '--out', data, '--concepts', join(dir, 'concepts'), '--limit', '20', ...cache)).stdout);
    expect(t1).toMatchObject({ skipped: 0, ran: 20 });
    const t2 = json((await cli('trials', '--model', CODE16M, '--config', config, '--out', data, '--concepts', join(dir, 'concepts'), ...cache)).stdout);
    expect(t2).toMatchObject({ skipped: 20, ran: (t2.planned as number) - 20 });
    expect(t2.trialsPerMinute).toBeGreaterThan(0);

    const probe = join(dir, 'concept-injection.probe.json');
    const tr = json((await cli('train-probe', '--data', data, '--out', probe, '--kind', 'logistic', '--target-fpr', '0.05')).stdout);
    expect(tr.targetFpr).toBe(0.05);
    const file = json(readFileSync(probe, 'utf8'));
    expect(file).toMatchObject({ formatVersion: 1, id: 'concept-injection', kind: 'linear', targetFpr: 0.05, positions: 'watch' });

    const ev = json((await cli('eval-probe', '--probe', probe, '--data', data, '--json')).stdout);
    for (const k of ['auroc', 'tpr_at_fpr_0.01', 'tpr_at_fpr_0.05']) expect(typeof ev[k]).toBe('number');
    expect(Object.keys(ev.fpr_on_controls as object).sort()).toEqual(['generation-only', 'none', 'random', 'unrelated-question']);
    expect(ev.auroc).toBe((file.evaluation as Record<string, unknown>).auroc);
    const table = (await cli('eval-probe', '--probe', probe, '--data', data)).stdout;
    expect(table).toContain('AUROC');

    // The default kind, concept-match: an ensemble of per-layer banks on every stored position,
    // read back by eval-probe at the positions the file records.
    const match = join(dir, 'concept-match.probe.json');
    await expect(cli('train-probe', '--data', data, '--out', match)).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('--concepts DIR') });
    const cm = json((await cli('train-probe', '--data', data, '--out', match, '--windows', '1,2', '--concepts', join(dir, 'concepts'))).stdout);
    expect([1, 2]).toContain(cm.window);
    expect(json(readFileSync(match, 'utf8'))).toMatchObject({ id: 'concept-match', kind: 'ensemble-max', positions: 'all' });
    const cmEval = json((await cli('eval-probe', '--probe', match, '--data', data, '--json')).stdout);
    expect(cmEval.positions).toBe('all');
    expect(cmEval.auroc).toBe((cm.evaluation as Record<string, unknown>).auroc);
    await expect(cli('train-probe', '--data', data, '--out', match, '--input', 'update')).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('apply to --kind logistic|diff-means') });
    await expect(cli('train-probe', '--data', data, '--out', match, '--kind', 'logistic', '--windows', '4')).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('--windows and --concepts apply to --kind concept-match only') });
    await expect(cli('train-probe', '--data', data, '--out', match, '--kind', 'concept-match', '--windows', '0')).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('LW_ERR_CLI_USAGE') });

    const rep = join(dir, 'report');
    json((await cli('report', '--data', data, '--out', rep, '--no-diff-means')).stdout);
    expect(readFileSync(join(rep, 'report.md'), 'utf8')).toContain('# Concept-injection probes: tiny trials');
    expect(readFileSync(join(rep, 'auroc-per-layer.svg'), 'utf8')).toMatch(/^<svg/);

    // Another model's dataset: the probe is refused.
    const other = join(dir, 'other');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(other);
    const m = json(readFileSync(join(data, 'dataset.json'), 'utf8'));
    writeFileSync(join(other, 'dataset.json'), JSON.stringify({ ...m, modelFingerprint: 'lw1-00000000000000000000000000000000' }));
    writeFileSync(join(other, 'index.jsonl'), '');
    await expect(cli('eval-probe', '--probe', probe, '--data', other, '--json')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('LW_ERR_PROBE_MODEL_MISMATCH') });
    // A changed config cannot resume into the same directory.
    writeFileSync(config, JSON.stringify(tinyConfigObject({ seed: 99 })));
    await expect(cli('trials', '--model', CODE16M, '--config', config, '--out', data, '--concepts', join(dir, 'concepts'), ...cache)).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('LW_ERR_TRIALS_DATASET_CONFLICT'),
    });
    // Invalid configs fail with the JSON pointer of the problem.
    writeFileSync(config, JSON.stringify(tinyConfigObject({ injection: { strength: { mode: 'loud', values: [1] } } })));
    await expect(cli('concepts', '--model', CODE16M, '--config', config, '--out', join(dir, 'x'))).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/LW_ERR_TRIALS_CONFIG_INVALID: .*\/injection\/strength\/mode/),
    });
    await expect(cli('trials', '--model', CODE16M, '--config', join(dir, 'nope.json'), '--out', join(dir, 'x'))).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('LW_ERR_TRIALS_CONFIG_NOT_FOUND') });
    await expect(cli('train-probe', '--data', data)).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('LW_ERR_CLI_USAGE') });
  });
});
