/**
 * fp16 activations on a WebGPU device without `shader-f16`. Such a device is made from lavapipe
 * itself: test/fixtures/vulkan-no-f16/icd.c is a Vulkan driver that forwards every call to lavapipe
 * but reports shaderFloat16 unsupported, so Dawn exposes no shader-f16 (as on GPUs without fp16
 * shaders). The engine must refuse graphs with fp16 tensors there (fp16 activations; int4/int8/fp16
 * builds, whose embedding table is fp16) with a coded error naming the feature, before any build, and
 * serve fp32 on the same device.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { CODE16M, TEST_CACHE, readReference, tempDir, type SubjectReference } from './helpers.js';

const run = promisify(execFile);
const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;
const SOURCE = new URL('./fixtures/vulkan-no-f16/icd.c', import.meta.url).pathname;
const LAVAPIPE = '/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so';

describe('a WebGPU device without shader-f16 (lavapipe with shaderFloat16 hidden)', () => {
  let env: NodeJS.ProcessEnv;
  beforeAll(async () => {
    expect(existsSync(LAVAPIPE), `${LAVAPIPE} (scripts/test-deps.sh installs lavapipe)`).toBe(true);
    const dir = tempDir('lw-vk-no-f16-');
    const lib = join(dir, 'libvk_no_f16.so');
    await run('cc', ['-shared', '-fPIC', '-O1', `-DLVP_PATH="${LAVAPIPE}"`, '-o', lib, SOURCE, '-ldl']);
    const icd = join(dir, 'icd.json');
    writeFileSync(icd, JSON.stringify({ file_format_version: '1.0.0', ICD: { library_path: lib, api_version: '1.4.305' } }));
    // The Vulkan loader sees this driver only (both variables: older loaders read the second).
    env = { ...process.env, VK_DRIVER_FILES: icd, VK_ICD_FILENAMES: icd, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? dir };
  });

  it('fp16 activations, and int4 weights (their embedding table is fp16): the CLI stops with LW_ERR_ENGINE_DEVICE_FEATURE_MISSING naming shader-f16, and builds nothing', async () => {
    for (const flags of [['--activations', 'fp16'], ['--precision', 'int4']]) {
      const cache = tempDir('lw-no-f16-cache-');
      const e = await run('node', [BIN, 'generate', '--model', CODE16M, '--prompt', 'def', '--max-tokens', '2', '--provider', 'webgpu', ...flags, '--cache-dir', cache], { env }).then(
        () => null,
        (err: { code: number; stderr: string }) => err,
      );
      expect(e, flags.join(' ')).not.toBeNull();
      expect(e!.code).not.toBe(0);
      expect(e!.stderr).toContain('LW_ERR_ENGINE_DEVICE_FEATURE_MISSING');
      expect(e!.stderr).toContain('shader-f16');
      expect(readdirSync(cache)).toEqual([]);
    }
  });

  it('fp32 activations on the same device serve the reference greedy text', async () => {
    const p = readReference<SubjectReference>(CODE16M).prompts[1];
    const r = await run('node', [BIN, 'generate', '--model', CODE16M, '--prompt', p.text, '--max-tokens', '24', '--provider', 'webgpu', '--cache-dir', TEST_CACHE, '--json'], { env });
    expect((JSON.parse(r.stdout) as { text: string }).text).toBe(p.greedy_text);
  }, 400_000);
});
