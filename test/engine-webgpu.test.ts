/**
 * The engine on onnxruntime's WebGPU provider (Dawn on Vulkan). In CI the device is Mesa's CPU
 * Vulkan driver lavapipe (scripts/test-deps.sh installs it from bookworm-backports); on a GPU host
 * the same code runs on the GPU (docs/gpu.md).
 *
 * Tolerances: the tiny fp32 checkpoints against transformers 1e-4 max abs (as on the CPU provider;
 * measured on lavapipe: 3.5e-6 against the CPU provider); the built-in bf16-trained model in fp32
 * 1e-3 (logits and resid_post), greedy tokens and text identical. The WebGPU path keeps the KV
 * cache on the device (device-kv.ts), so decode runs through a different cache than the CPU's.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon } from '../src/daemon/daemon.js';
import { DeviceKvCache } from '../src/engine/device-kv.js';
import { Engine } from '../src/engine/engine.js';
import { tensorData, type Tensor } from '../src/engine/runtime.js';
import type { Step } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { GRAPH_NAMES } from '../src/model/graph.js';
import { API_KEY } from './daemon-fixture.js';
import { CODE16M, QWEN2_TINY, QWEN3_TINY, TEST_CACHE, fullPass, maxAbsDiff, readReference, referenceTensors, type SubjectReference, type TinyReference, tempDir, thrown } from './helpers.js';

const run = promisify(execFile);

async function steps(engine: Engine, req: Parameters<Engine['generate']>[0]): Promise<Step[]> {
  const out: Step[] = [];
  for await (const s of engine.generate(req)) out.push(s);
  return out;
}

for (const [name, dir] of [
  ['qwen2-tiny', QWEN2_TINY],
  ['qwen3-tiny', QWEN3_TINY],
] as const) {
  describe(`${name} on the WebGPU provider`, () => {
    let gpu: Engine;
    let cpu: Engine;
    const ref = readReference<TinyReference>(dir);
    const tensor = referenceTensors(dir);
    beforeAll(async () => {
      // A small prefill chunk: the prompt goes in over several passes, each on the cache the last left on the device.
      gpu = await Engine.load(dir, { cacheDir: TEST_CACHE, provider: 'webgpu', prefillChunk: 3 });
      cpu = await Engine.load(dir, { cacheDir: TEST_CACHE });
    });
    afterAll(async () => {
      await gpu.close();
      await cpu.close();
    });

    it('keeps the KV cache on the device: a device-kv build, sequences with a device cache and no pool slot', async () => {
      expect(gpu.deviceKv).toBe(true);
      expect(gpu.build.options.interface).toBe('device-kv');
      const seq = gpu.newSequence(8);
      expect(seq.storage).toBeInstanceOf(DeviceKvCache);
      expect(seq.storage.slot).toBe(-1);
      await seq.forward(ref.input_ids.slice(0, 4));
      const cache = seq.storage as DeviceKvCache;
      expect(cache.length).toBe(4);
      expect(cache.locations()).toEqual(['gpu-buffer']);
      // Reading a device tensor on the host aborts onnxruntime-node: tensorData refuses it with a code.
      const feeds: Record<string, Tensor> = {};
      cache.addPast(feeds);
      expect(thrown(() => tensorData(feeds[GRAPH_NAMES.pastKey(0)])).code).toBe('LW_ERR_ENGINE_SESSION_FAILED');
      seq.release();
      expect(cache.length).toBe(0);
    });

    it('logits and every layer resid_post within 1e-4 of transformers, plain and injected', async () => {
      const r = await fullPass(gpu, ref.input_ids);
      expect(maxAbsDiff(r.logits, tensor('logits'))).toBeLessThan(1e-4);
      for (let l = 0; l < gpu.config.numLayers; l++) expect(maxAbsDiff(r.taps.get(residPost(l))!.data, tensor(`resid_post.${l}`)), `layer ${l}`).toBeLessThan(1e-4);
      const ri = await fullPass(gpu, ref.input_ids, { ...ref.injection, vector: tensor('inject_vector') });
      expect(maxAbsDiff(ri.logits, tensor('logits_injected'))).toBeLessThan(1e-4);
      for (let l = 0; l < gpu.config.numLayers; l++) expect(maxAbsDiff(ri.taps.get(residPost(l))!.data, tensor(`resid_post_injected.${l}`)), `layer ${l}`).toBeLessThan(1e-4);
    });

    it('the greedy continuation through the device cache is transformers’ own', async () => {
      const s = await steps(gpu, { promptIds: ref.input_ids, maxTokens: ref.greedy_continuation.length, ignoreEos: true });
      expect(s.filter((x) => x.kind === 'token').map((x) => x.tokenId)).toEqual(ref.greedy_continuation);
    });

    it('generate with taps and an injection port: every step’s logits and taps within 1e-4 of the CPU provider', async () => {
      const layer = ref.injection.layer;
      const req = {
        promptIds: ref.input_ids,
        maxTokens: 10,
        ignoreEos: true,
        returnLogits: true,
        taps: [residPost(0), residPost(layer)],
        injections: [{ hook: residPost(layer), vector: tensor('inject_vector'), scale: ref.injection.alpha, window: { kind: 'generation' as const } }],
      };
      const [a, b] = [await steps(gpu, req), await steps(cpu, req)];
      expect(a.map((s) => s.tokenId)).toEqual(b.map((s) => s.tokenId));
      for (const [i, s] of a.entries()) {
        if (s.logits) expect(maxAbsDiff(s.logits, b[i].logits!), `step ${i} logits`).toBeLessThan(1e-4);
        for (const t of req.taps) expect(maxAbsDiff(s.taps.get(t)!.data, b[i].taps.get(t)!.data), `step ${i} ${t}`).toBeLessThan(1e-4);
      }
      // The injection moved the generated positions (so the comparison above covers the port).
      const plain = await steps(cpu, { ...req, injections: [] });
      expect(maxAbsDiff(plain[2].taps.get(residPost(layer))!.data, b[2].taps.get(residPost(layer))!.data)).toBeGreaterThan(1e-2);
    });

    it('concurrent streams (each decoding alone on its device cache) give what each gives alone', async () => {
      const prompts = [ref.input_ids, ref.input_ids.slice(0, 5), [...ref.input_ids].reverse()];
      const alone = [];
      for (const p of prompts) alone.push((await steps(gpu, { promptIds: p, maxTokens: 6, ignoreEos: true })).map((s) => s.tokenId));
      const together = await Promise.all(prompts.map(async (p) => (await steps(gpu, { promptIds: p, maxTokens: 6, ignoreEos: true })).map((s) => s.tokenId)));
      expect(together).toEqual(alone);
    });
  });
}

/** The built-in model on lavapipe (a CPU emulating a GPU) takes about a minute per test on 2 cores. */
const LAVAPIPE_SLOW_MS = 400_000;

describe('qwen2-code-16m (the built-in model) on the WebGPU provider', () => {
  let engine: Engine;
  const ref = readReference<SubjectReference>(CODE16M);
  const tensor = referenceTensors(CODE16M);
  beforeAll(async () => {
    engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, provider: 'webgpu' });
  });
  afterAll(() => engine.close());

  it('logits and resid_post within 1e-3 of transformers, plain and injected', async () => {
    for (const [i, p] of ref.prompts.entries()) {
      const r = await fullPass(engine, p.input_ids);
      expect(maxAbsDiff(r.logits, tensor(`p${i}.logits`)), `prompt ${i}`).toBeLessThan(1e-3);
      for (let l = 0; l < engine.config.numLayers; l++) expect(maxAbsDiff(r.taps.get(residPost(l))!.data, tensor(`p${i}.resid_post.${l}`))).toBeLessThan(1e-3);
      const ri = await fullPass(engine, p.input_ids, { ...ref.injection, vector: tensor('inject_vector') });
      expect(maxAbsDiff(ri.logits, tensor(`p${i}.logits_injected`)), `prompt ${i} injected`).toBeLessThan(1e-3);
    }
  }, LAVAPIPE_SLOW_MS);

  it('the three 24-token greedy continuations and their text are identical to transformers', async () => {
    for (const p of ref.prompts) {
      const s = (await steps(engine, { promptIds: p.input_ids, maxTokens: 24, ignoreEos: true })).filter((x) => x.kind === 'token');
      expect(s.map((x) => x.tokenId)).toEqual(p.greedy_continuation);
      expect(s.map((x) => x.text).join('')).toBe(p.greedy_text);
    }
  }, LAVAPIPE_SLOW_MS);
});

describe('provider webgpu in the daemon and the CLI', () => {
  it('serve: --provider, the config key and LATENTWATCH_PROVIDER all select webgpu; it serves the reference greedy text', async () => {
    const base = ['--model', CODE16M, '--port', '0', '--log-level', 'silent', '--alert-log', join(tempDir('lw-alerts-'), 'alerts.db')];
    expect(loadConfig({ argv: [...base, '--provider', 'webgpu'] }).config.provider).toBe('webgpu');
    const file = join(tempDir('lw-config-'), 'config.json');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(file, JSON.stringify({ provider: 'webgpu' }));
    expect(loadConfig({ argv: [...base, '--config', file] }).config.provider).toBe('webgpu');
    expect(thrown(() => loadConfig({ argv: [...base, '--provider', 'vulkan'] })).code).toBe('LW_ERR_CONFIG_INVALID');
    const { config } = loadConfig({ env: { LATENTWATCH_PROVIDER: 'webgpu', LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_HOST: '127.0.0.1' }, argv: base });
    expect(config.provider).toBe('webgpu');
    const daemon = await startDaemon(config);
    try {
      const p = readReference<SubjectReference>(CODE16M).prompts[1];
      const r = await fetch(`${daemon.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
        body: JSON.stringify({ model: 'qwen2-code-16m', prompt: p.text, max_tokens: 24, temperature: 0 }),
      });
      expect(r.status).toBe(200);
      expect(((await r.json()) as { choices: { text: string }[] }).choices[0].text).toBe(p.greedy_text);
    } finally {
      await daemon.close();
    }
  });

  it('no Vulkan device: the CLI exits with LW_ERR_ENGINE_PROVIDER_UNAVAILABLE naming the packages to install', async () => {
    const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;
    // A Vulkan loader pointed at no driver: what a host without the GPU's ICD (or lavapipe) sees.
    const e = await run('node', [BIN, 'generate', '--model', CODE16M, '--prompt', 'def', '--max-tokens', '2', '--provider', 'webgpu', '--cache-dir', TEST_CACHE], {
      env: { ...process.env, VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '/nonexistent/icd.json' },
    }).then(
      () => null,
      (err: { code: number; stderr: string }) => err,
    );
    expect(e).not.toBeNull();
    expect(e!.code).not.toBe(0);
    expect(e!.stderr).toContain('LW_ERR_ENGINE_PROVIDER_UNAVAILABLE');
    expect(e!.stderr).toContain('libvulkan1');
    expect(e!.stderr).toContain('mesa-vulkan-drivers');
  });

  it('--provider outside cpu|cuda|webgpu is a usage error naming the three', async () => {
    const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;
    const e = await run('node', [BIN, 'generate', '--prompt', 'x', '--provider', 'vulkan']).then(
      () => null,
      (err: { code: number; stderr: string }) => err,
    );
    expect(e!.code).toBe(2);
    expect(e!.stderr).toContain('cpu|cuda|webgpu');
  });
});
