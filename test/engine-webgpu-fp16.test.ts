/**
 * fp16 activations on the WebGPU provider (lavapipe in CI: Mesa 25's lavapipe has shaderFloat16 and
 * 16-bit storage, so Dawn gives it WebGPU's shader-f16). The residual stream, the KV cache (on the
 * device) and every product's input are fp16; the norms accumulate in fp32; logits and taps come back
 * as fp32. Compared with the CPU provider's fp32 engine on the same checkpoint.
 *
 * Tolerances (max abs, every step of a 10-token generation with an injection port): the tiny
 * checkpoints' logits 0.05 and resid_post 0.03 (measured on lavapipe: 0.021 and 0.010; fp16 has
 * 11 bits of mantissa, ~5e-4 relative per rounding); the built-in model's logits 0.3 (of ~12) and
 * resid_post 1% of the stream's largest |value| (measured 0.154, and 0.184 of 64.6: 0.28%). Greedy
 * tokens identical where fp32's top-2 margin exceeds fp16's error (one of the reference's 72 steps is
 * a near-tie: 0.003). int4 weights at accuracy level 0: logits 0.1 and taps 0.03 of the CPU's int4
 * level-0 build (measured 0.038 and 0.016).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon } from '../src/daemon/daemon.js';
import { DeviceKvCache } from '../src/engine/device-kv.js';
import { Engine } from '../src/engine/engine.js';
import { RuntimeSession, webgpuShaderF16, type Tensor } from '../src/engine/runtime.js';
import type { GenerateRequest, Step } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { buildKey, resolveBuildOptions, type BuildRequest } from '../src/model/build.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { GRAPH_NAMES } from '../src/model/graph.js';
import { API_KEY } from './daemon-fixture.js';
import { CODE16M, QWEN2_TINY, QWEN3_TINY, TEST_CACHE, maxAbsDiff, readReference, referenceTensors, tempDir, thrown, type SubjectReference, type TinyReference } from './helpers.js';

const run = promisify(execFile);

async function steps(engine: Engine, req: GenerateRequest): Promise<Step[]> {
  const out: Step[] = [];
  for await (const s of engine.generate(req)) out.push(s);
  return out;
}

/** The built-in model on lavapipe is slow: the first pass of each build compiles every shader. */
const LAVAPIPE_SLOW_MS = 600_000;

/**
 * Largest gap over every step's logits and taps between two generations of the same request, and
 * the largest |value| of the second's taps (the residual stream's scale).
 */
function gaps(a: Step[], b: Step[], taps: readonly string[]): { logits: number; taps: number; tapScale: number } {
  let logits = 0;
  let tap = 0;
  let tapScale = 0;
  for (const [i, s] of a.entries()) {
    if (s.logits) logits = Math.max(logits, maxAbsDiff(s.logits, b[i].logits!));
    for (const t of taps) {
      tap = Math.max(tap, maxAbsDiff(s.taps.get(t)!.data, b[i].taps.get(t)!.data));
      for (const v of b[i].taps.get(t)!.data) tapScale = Math.max(tapScale, Math.abs(v));
    }
  }
  return { logits, taps: tap, tapScale };
}

it('the device (lavapipe here) has shader-f16, and the CPU provider refuses fp16 activations with a coded error', async () => {
  expect(await webgpuShaderF16()).toBe(true);
  const e = await Engine.load(QWEN2_TINY, { cacheDir: TEST_CACHE, activations: 'fp16' }).then(
    () => null,
    (err: { code?: string; message?: string }) => err,
  );
  expect(e?.code).toBe('LW_ERR_MODEL_BUILD_OPTIONS');
  expect(e?.message).toMatch(/fp16 activations run on a GPU provider only/);
});

for (const [name, dir] of [
  ['qwen2-tiny', QWEN2_TINY],
  ['qwen3-tiny', QWEN3_TINY],
] as const) {
  describe(`${name} with fp16 activations on the WebGPU provider`, () => {
    let gpu: Engine;
    let cpu: Engine;
    const ref = readReference<TinyReference>(dir);
    const tensor = referenceTensors(dir);
    beforeAll(async () => {
      gpu = await Engine.load(dir, { cacheDir: TEST_CACHE, provider: 'webgpu', activations: 'fp16', prefillChunk: 3 });
      cpu = await Engine.load(dir, { cacheDir: TEST_CACHE });
    });
    afterAll(async () => {
      await gpu.close();
      await cpu.close();
    });

    it('keeps an fp16 KV cache on the device', async () => {
      expect(gpu.build.options.activations).toBe('fp16');
      const seq = gpu.newSequence(8);
      await seq.forward(ref.input_ids.slice(0, 4));
      const feeds: Record<string, Tensor> = {};
      (seq.storage as DeviceKvCache).addPast(feeds);
      expect(feeds[GRAPH_NAMES.pastKey(0)].type).toBe('float16');
      expect(feeds[GRAPH_NAMES.pastKey(0)].location).toBe('gpu-buffer');
      seq.release();
    });

    it('generate with taps and an injection port: tokens identical, every step’s logits within 0.05 and taps within 0.03 of the CPU provider’s fp32', async () => {
      const layer = ref.injection.layer;
      const req: GenerateRequest = {
        promptIds: ref.input_ids,
        maxTokens: 10,
        ignoreEos: true,
        returnLogits: true,
        taps: [residPost(0), residPost(layer)],
        injections: [{ hook: residPost(layer), vector: tensor('inject_vector'), scale: ref.injection.alpha, window: { kind: 'all' } }],
      };
      const [a, b] = [await steps(gpu, req), await steps(cpu, req)];
      expect(a.map((s) => s.tokenId)).toEqual(b.map((s) => s.tokenId));
      const g = gaps(a, b, req.taps!);
      expect(g.logits).toBeLessThan(0.05);
      expect(g.taps).toBeLessThan(0.03);
      // The greedy path (the graph's argmax, no logits back) gives the reference continuation.
      const greedy = await steps(gpu, { promptIds: ref.input_ids, maxTokens: ref.greedy_continuation.length, ignoreEos: true });
      expect(greedy.filter((s) => s.kind === 'token').map((s) => s.tokenId)).toEqual(ref.greedy_continuation);
    });
  });
}

describe('qwen2-code-16m (the built-in model) with fp16 activations on the WebGPU provider', () => {
  let engine: Engine;
  let cpu: Engine;
  const ref = readReference<SubjectReference>(CODE16M);
  beforeAll(async () => {
    engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, provider: 'webgpu', activations: 'fp16', taps: [0, 3], ports: [] });
    cpu = await Engine.load(CODE16M, { cacheDir: TEST_CACHE, taps: [0, 3], ports: [] });
  });
  afterAll(async () => {
    await engine.close();
    await cpu.close();
  });

  it(
    'greedy continuations and text are transformers’ own past fp32 near-ties; logits within 0.3 and taps within 1% of their scale of the CPU provider’s fp32',
    async () => {
      // Prompts 1 and 2: every step's top-2 margin in fp32 is 0.089 or more; 24 tokens identical.
      for (const p of ref.prompts.slice(1)) {
        const s = (await steps(engine, { promptIds: p.input_ids, maxTokens: 24, ignoreEos: true })).filter((x) => x.kind === 'token');
        expect(s.map((x) => x.tokenId)).toEqual(p.greedy_continuation);
        expect(s.map((x) => x.text).join('')).toBe(p.greedy_text);
      }
      // Prompt 0's first token is a near-tie in fp32 (top-2 margin 0.003, under fp16's error): fp16
      // picks one of the two; the logits stay within the tolerance all the same.
      const req: GenerateRequest = { promptIds: ref.prompts[0].input_ids, maxTokens: 8, ignoreEos: true, returnLogits: true, taps: [residPost(0), residPost(3)] };
      const [a, b] = [await steps(engine, req), await steps(cpu, req)];
      const first = b.find((s) => s.kind === 'token')!.logits!;
      const top2 = [...first.keys()].sort((x, y) => first[y] - first[x]).slice(0, 2);
      expect(top2).toContain(a.find((s) => s.kind === 'token')!.tokenId);
      // Teacher-forced on the CPU's tokens, so both read the same positions: the prompt pass's taps at
      // every position and the next token's logits.
      const forcedReq = { ...req, maxTokens: 1, promptIds: [...req.promptIds, ...b.filter((s) => s.kind === 'token').map((s) => s.tokenId)] };
      const [forced, cpuForced] = [await steps(engine, forcedReq), await steps(cpu, forcedReq)];
      const g = gaps(forced, cpuForced, req.taps!);
      expect(g.logits).toBeLessThan(0.3);
      expect(g.taps / g.tapScale).toBeLessThan(0.01);
    },
    LAVAPIPE_SLOW_MS,
  );

  it(
    'int4 weights with fp16 activations (accuracy level 0): greedy tokens and per-step logits within 0.1 of the CPU provider’s int4 level-0 build',
    async () => {
      const build = { cacheDir: TEST_CACHE, precision: 'int4' as const, accuracyLevel: 0, taps: [0], ports: [] };
      const gpu4 = await Engine.load(CODE16M, { ...build, provider: 'webgpu', activations: 'fp16' });
      const cpu4 = await Engine.load(CODE16M, build);
      try {
        const req: GenerateRequest = { promptIds: ref.prompts[1].input_ids, maxTokens: 12, ignoreEos: true, returnLogits: true, taps: [residPost(0)] };
        const [a, b] = [await steps(gpu4, req), await steps(cpu4, req)];
        expect(a.map((s) => s.tokenId)).toEqual(b.map((s) => s.tokenId));
        const g = gaps(a, b, req.taps!);
          expect(g.logits).toBeLessThan(0.1);
        expect(g.taps).toBeLessThan(0.03);
      } finally {
        await gpu4.close();
        await cpu4.close();
      }
    },
    LAVAPIPE_SLOW_MS,
  );

  it(
    'int4 weights at the webgpu defaults (fp16 activations, accuracy level 4: DP4A): tokens of the fp32-activation build on the same provider, logits within 0.5',
    async () => {
      const build = { cacheDir: TEST_CACHE, precision: 'int4' as const, provider: 'webgpu' as const, taps: [0], ports: [] };
      const [half, full] = [await Engine.load(CODE16M, build), await Engine.load(CODE16M, { ...build, activations: 'fp32' })];
      // fp16 is the default activations of a webgpu int4 build.
      expect(half.build.options.activations).toBe('fp16');
      expect(full.build.options.activations).toBeUndefined();
      try {
        const req: GenerateRequest = { promptIds: ref.prompts[1].input_ids, maxTokens: 12, ignoreEos: true, returnLogits: true };
        const [a, b] = [await steps(half, req), await steps(full, req)];
        expect(a.map((s) => s.tokenId)).toEqual(b.map((s) => s.tokenId));
        // Level 4 quantizes each product's input to int8 (from fp16 here, fp32 there): measured 0.24.
        expect(gaps(a, b, []).logits).toBeLessThan(0.5);
      } finally {
        await half.close();
        await full.close();
      }
    },
    LAVAPIPE_SLOW_MS,
  );
});

describe('the provider’s fused kernels with fp16 activations', () => {
  it('an int4 fp16 build of Qwen3 becomes one MatMulNBitsMlp and one MatMulNBitsQkv per layer on the WebGPU provider', async () => {
    const engine = await Engine.load(QWEN3_TINY, { cacheDir: TEST_CACHE, provider: 'webgpu', precision: 'int4', accuracyLevel: 0, activations: 'fp16' });
    try {
      const optimized = join(tempDir('lw-webgpu-opt-'), 'model.onnx');
      const session = await RuntimeSession.load(engine.build.modelPath, { provider: 'webgpu', optimizedModelPath: optimized });
      await session.release();
      const ops = new Map<string, number>();
      for (const n of onnxProto.onnx.ModelProto.decode(readFileSync(optimized)).graph?.node ?? []) ops.set(n.opType ?? '', (ops.get(n.opType ?? '') ?? 0) + 1);
      expect(ops.get('MatMulNBitsMlp')).toBe(engine.config.numLayers);
      expect(ops.get('MatMulNBitsQkv')).toBe(engine.config.numLayers);
      expect(ops.get('Sigmoid') ?? 0).toBe(0);
    } finally {
      await engine.close();
    }
  });
});

describe('--activations in the CLI and the daemon', () => {
  it('generate --provider webgpu --activations fp16 gives the reference text; a value outside fp32|fp16 is a usage error', async () => {
    const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;
    const p = readReference<SubjectReference>(CODE16M).prompts[1];
    const ok = await run('node', [BIN, 'generate', '--model', CODE16M, '--prompt', p.text, '--max-tokens', '24', '--provider', 'webgpu', '--activations', 'fp16', '--cache-dir', TEST_CACHE, '--json']);
    expect((JSON.parse(ok.stdout) as { text: string }).text).toBe(p.greedy_text);
    const e = await run('node', [BIN, 'generate', '--prompt', 'x', '--activations', 'bf16']).then(
      () => null,
      (err: { code: number; stderr: string }) => err,
    );
    expect(e!.code).toBe(2);
    expect(e!.stderr).toContain('fp32|fp16');
  }, LAVAPIPE_SLOW_MS);

  it('serve: --activations and LATENTWATCH_ACTIVATIONS set it; fp16 on the CPU provider stops start-up with a coded error', async () => {
    const base = ['--model', CODE16M, '--port', '0', '--log-level', 'silent', '--alert-log', join(tempDir('lw-alerts-'), 'alerts.db')];
    expect(loadConfig({ argv: [...base, '--activations', 'fp16', '--provider', 'webgpu'] }).config.activations).toBe('fp16');
    expect(loadConfig({ argv: base, env: { LATENTWATCH_ACTIVATIONS: 'fp16' } }).config.activations).toBe('fp16');
    expect(loadConfig({ argv: base }).config.activations).toBe('auto');
    expect(loadConfig({ argv: [...base, '--activations', 'fp32'] }).config.activations).toBe('fp32');
    expect(thrown(() => loadConfig({ argv: [...base, '--activations', 'bf16'] })).code).toBe('LW_ERR_CONFIG_INVALID');
    const { config } = loadConfig({ argv: [...base, '--activations', 'fp16'], env: { LATENTWATCH_API_KEY: API_KEY, LATENTWATCH_HOST: '127.0.0.1' } });
    const e = await startDaemon(config).then(
      async (d) => {
        await d.close();
        return null;
      },
      (err: { code?: string }) => err,
    );
    expect(e?.code).toBe('LW_ERR_MODEL_BUILD_OPTIONS');
  });
});

describe('default activations', () => {
  it('fp16 for a webgpu (device-kv) build of int4/int8/fp16 weights; fp32 for fp32 weights, for the CPU provider, and when asked', () => {
    const ckpt = openCheckpoint(QWEN2_TINY);
    const resolved = (r: BuildRequest) => resolveBuildOptions(ckpt, r).activations ?? 'fp32';
    for (const precision of ['int4', 'int8', 'fp16'] as const) {
      expect(resolved({ precision, interface: 'device-kv' })).toBe('fp16');
      expect(resolved({ precision, interface: 'device-kv', activations: 'fp32' })).toBe('fp32');
      expect(resolved({ precision })).toBe('fp32');
    }
    expect(resolved({ precision: 'fp32', interface: 'device-kv' })).toBe('fp32');
    expect(resolved({ interface: 'device-kv' })).toBe('fp32');
    // The default and the explicit fp16 are one build (one cache key).
    const key = (r: BuildRequest) => buildKey('f', resolveBuildOptions(ckpt, r));
    expect(key({ precision: 'int4', interface: 'device-kv' })).toBe(key({ precision: 'int4', interface: 'device-kv', activations: 'fp16' }));
    expect(key({ precision: 'int4' })).toBe(key({ precision: 'int4', activations: 'fp32' }));
  });
});

describe('the device-kv fp16 build refuses what does not fit', () => {
  it('activations outside fp32|fp16 are a build-options error', async () => {
    const e = await Engine.load(QWEN2_TINY, { cacheDir: TEST_CACHE, provider: 'webgpu', activations: 'bf16' as 'fp16' }).then(
      () => null,
      (err: { code?: string }) => err,
    );
    expect(e?.code).toBe('LW_ERR_MODEL_BUILD_OPTIONS');
  });
});
