/** The CLI as users run it: the built bin, real processes. Needs `npm run build` (npm test does it). */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { readSafetensorsHeader, readTensorF32 } from '../src/model/safetensors.js';
import { CODE16M, TEST_CACHE, maxAbsDiff, referenceTensors, tempDir } from './helpers.js';

const run = promisify(execFile);
const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;
const cli = (...args: string[]) => run('node', [BIN, ...args, '--cache-dir', TEST_CACHE], { maxBuffer: 1 << 24 });
const ref = JSON.parse(readFileSync(join(CODE16M, 'reference.json'), 'utf8'));

describe('latentwatch CLI', () => {
  it('generate --json prints prompt ids, generated ids and text matching transformers', async () => {
    const p = ref.prompts[1];
    const { stdout } = await cli('generate', '--model', CODE16M, '--prompt', p.text, '--max-tokens', '24', '--ignore-eos', '--json');
    expect(JSON.parse(stdout)).toEqual({ prompt_ids: p.input_ids, ids: p.greedy_continuation, text: p.greedy_text });
  });

  it('generate runs on the built-in default model without --model', async () => {
    const { stdout } = await cli('generate', '--prompt', 'def add(a, b):', '--max-tokens', '8', '--json');
    const out = JSON.parse(stdout);
    expect(out.ids.length).toBeGreaterThan(0);
    expect(typeof out.text).toBe('string');
  });

  it('activations writes [tokens, d_model] fp32 equal to the reference, with and without injection', async () => {
    const dir = tempDir();
    const p = ref.prompts[0];
    const t = referenceTensors(CODE16M);
    const vecPath = join(dir, 'v.json');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(vecPath, JSON.stringify(Array.from(t('inject_vector'))));
    const read = (f: string) => {
      const h = readSafetensorsHeader(f);
      const info = h.tensors.get('activations')!;
      return { shape: info.shape, data: readTensorF32(info) };
    };
    await cli('activations', '--model', CODE16M, '--prompt', p.text, '--hook', 'blocks.5.hook_resid_post', '--out', join(dir, 'a.safetensors'));
    const a = read(join(dir, 'a.safetensors'));
    expect(a.shape).toEqual([p.input_ids.length, 384]);
    expect(maxAbsDiff(a.data, t('p0.resid_post.5'))).toBeLessThan(1e-3);
    await cli('activations', '--model', CODE16M, '--prompt', p.text, '--hook', 'blocks.5.hook_resid_post', '--out', join(dir, 'b.safetensors'), '--inject-hook', 'blocks.3.hook_resid_post', '--inject-vector', vecPath, '--inject-scale', String(ref.injection.alpha));
    expect(maxAbsDiff(read(join(dir, 'b.safetensors')).data, t('p0.resid_post_injected.5'))).toBeLessThan(1e-3);
  });

  it('every command has --help; bad usage exits 2 with a coded message', async () => {
    for (const c of ['build', 'generate', 'activations']) {
      const { stdout } = await run('node', [BIN, c, '--help']);
      expect(stdout).toContain(`latentwatch ${c}`);
    }
    await expect(cli('generate', '--max-tokens', '3')).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('LW_ERR_CLI_USAGE') });
    await expect(cli('generate', '--prompt', 'x', '--provider', 'cuda')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('LW_ERR_ENGINE_PROVIDER_UNAVAILABLE') });
    await expect(cli('generate', '--model', '/nope', '--prompt', 'x')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('LW_ERR_MODEL_NOT_FOUND') });
  });
});
