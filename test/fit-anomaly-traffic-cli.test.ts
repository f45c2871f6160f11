/**
 * fit-anomaly on a deployment's own traffic (issue 12): JSONL traffic gets a held-out false-alert
 * estimate, lines carry their own generation length (or --max-tokens), and --prompts merges a
 * corpus config with traffic. Real CLI on the built-in model, few short prompts.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { corpusRequests, loadCorpora } from '../src/lab/corpus.js';
import { CODE16M, TEST_CACHE, tempDir } from './helpers.js';

const run = promisify(execFile);
const MAIN = new URL('../src/cli/main.ts', import.meta.url).pathname;
const cli = (...args: string[]) => run('node', ['--import', 'tsx', MAIN, ...args], { maxBuffer: 1 << 26 });

const code = ['def add(a, b):\n    return a + b\n', 'x = [i * i for i in range(5)]\n', 'import os\nprint(os.getcwd())\n', 'class A:\n    pass\n', 'for i in range(3):\n    print(i)\n', 'y = {"a": 1}\n'];
const chat = ['Hi, can you help me?', 'What time is it in Paris?', 'Thanks, that works.', 'Please summarize this.', 'How do I reset my password?', 'Is the store open today?'];
const prose = ['The river ran quiet under the bridge.', 'Sales rose in the third quarter.', 'She opened the window and listened.', 'Rain is expected tomorrow.', 'The meeting moved to Tuesday.', 'He read the letter twice.'];

describe('latentwatch fit-anomaly on traffic', () => {
  it('merges a corpus config and JSONL traffic; the traffic gets held-out FPRs per style', async () => {
    const dir = tempDir('lw-traffic-cli-');
    const config = join(dir, 'small.json');
    writeFileSync(config, JSON.stringify({ formatVersion: 1, name: 'small', seed: 7, generation: { maxTokens: 2 }, styles: [{ name: 'code', prompts: code }] }));
    const traffic = join(dir, 'traffic.jsonl');
    writeFileSync(traffic, [...chat.map((p) => JSON.stringify({ prompt: p, style: 'chat', max_tokens: 3 })), ...prose.map((p) => JSON.stringify(p))].join('\n') + '\n');
    const out = join(dir, 'a.probe.json');
    const { stdout } = await cli('fit-anomaly', '--model', CODE16M, '--cache-dir', TEST_CACHE, '--layers', '2', '--covariance', 'diagonal', '--prompts', config, '--prompts', traffic, '--max-tokens', '1', '--out', out);
    const r = JSON.parse(stdout) as { fitRequests: number; calibrationRequests: number; testRequests: number; fprOnHeldOut: Record<string, number> };
    const reqs = corpusRequests(loadCorpora([config, traffic], { maxTokens: 1 }));
    const test = reqs.filter((q) => q.split === 'test');
    expect(r.testRequests).toBe(test.length);
    expect(r.fitRequests + r.calibrationRequests).toBe(reqs.length - test.length);
    const styles = [...new Set(test.map((q) => q.style))];
    expect(styles).toEqual(expect.arrayContaining(['traffic']));
    expect(Object.keys(r.fprOnHeldOut).sort()).toEqual(['corpus: all test requests', ...styles.map((s) => `corpus: ${s}`)].sort());
    for (const v of Object.values(r.fprOnHeldOut)) expect(v).toBeGreaterThanOrEqual(0);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toMatchObject({ formatVersion: 1, id: 'generic-injection' });
    // Each request's length: the config's own; the chat lines' max_tokens; --max-tokens for the rest.
    expect(reqs.map((q) => q.maxTokens)).toEqual([...code.map(() => 2), ...chat.map(() => 3), ...prose.map(() => 1)]);
  }, 180_000);

  it('refuses a bad --max-tokens and a bad max_tokens line with coded errors', async () => {
    const dir = tempDir('lw-traffic-cli-');
    const traffic = join(dir, 'bad.jsonl');
    writeFileSync(traffic, '"fine"\n{"prompt": "x", "max_tokens": -3}\n');
    const args = ['fit-anomaly', '--model', CODE16M, '--out', join(dir, 'x.probe.json')];
    await expect(cli(...args, '--prompts', traffic)).rejects.toMatchObject({ stderr: expect.stringMatching(/LW_ERR_CORPUS_INVALID[\s\S]*line 2/) });
    await expect(cli(...args, '--prompts', traffic, '--max-tokens', '1.5')).rejects.toMatchObject({ stderr: expect.stringContaining('LW_ERR_CLI_USAGE') });
    await expect(cli(...args, '--window-spread', 'maybe')).rejects.toMatchObject({ stderr: expect.stringMatching(/LW_ERR_CLI_USAGE[\s\S]*--window-spread/) });
    const { stdout } = await cli('fit-anomaly', '--help');
    expect(stdout).toContain('--max-tokens');
    expect(stdout).toContain('max_tokens');
    expect(stdout).toContain('--window-spread');
  }, 60_000);
});
