/**
 * int4 builds on the WebGPU provider (lavapipe in CI). A quantized device-kv build gives the gate
 * and up projections (and, without q/k/v biases, the q, k and v projections) as separate
 * MatMulNBits, which onnxruntime's WebGPU provider fuses with the RMSNorm before them (and the SiLU
 * after) into one kernel each: fewer dispatches per layer, which is what decode on a GPU is bound by.
 *
 * Prefill and decode at their own accuracy levels (decodeAccuracyLevel 0): a quantized WebGPU engine
 * runs prompt passes on its accuracy-level-4 build (int8 activations, DP4A) and one-token passes on
 * a level-0 build (fp32 activations; the provider's one-kernel MLP), on the same device cache. Checked
 * on the built-in model, whose widths (multiples of 128) take the DP4A path; the tiny checkpoints'
 * do not, so there levels 4 and 0 compute alike.
 *
 * Tolerance: with accuracy level 0 both providers dequantize to fp32, so the device-kv build on
 * WebGPU and the CPU provider's own int4 build agree within 1e-4 (measured on lavapipe: 2.4e-6 for
 * the tiny checkpoints' logits, 1.3e-5 for the built-in model's). At accuracy level 4 both compute
 * with int8 activations, each its own way (0.15–0.45 on the built-in model's logits, fused or not).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { RuntimeSession } from '../src/engine/runtime.js';
import type { Step } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { CODE16M, QWEN2_TINY, QWEN3_TINY, TEST_CACHE, maxAbsDiff, readReference, referenceTensors, tempDir, type SubjectReference, type TinyReference } from './helpers.js';

async function steps(engine: Engine, req: Parameters<Engine['generate']>[0]): Promise<Step[]> {
  const out: Step[] = [];
  for await (const s of engine.generate(req)) out.push(s);
  return out;
}

/** Op types of the graph onnxruntime runs on the WebGPU provider, with their counts. */
async function providerOps(modelPath: string): Promise<Map<string, number>> {
  const optimized = join(tempDir('lw-webgpu-opt-'), 'model.onnx');
  const session = await RuntimeSession.load(modelPath, { provider: 'webgpu', optimizedModelPath: optimized });
  await session.release();
  const model = onnxProto.onnx.ModelProto.decode(readFileSync(optimized));
  const ops = new Map<string, number>();
  for (const n of model.graph?.node ?? []) ops.set(n.opType ?? '', (ops.get(n.opType ?? '') ?? 0) + 1);
  return ops;
}

for (const [name, dir, qkvFused] of [
  ['qwen2-tiny', QWEN2_TINY, false],
  ['qwen3-tiny', QWEN3_TINY, true],
] as const) {
  describe(`${name} int4 on the WebGPU provider`, () => {
    let gpu: Engine;
    let cpu: Engine;
    const ref = readReference<TinyReference>(dir);
    const tensor = referenceTensors(dir);
    const build = { precision: 'int4' as const, accuracyLevel: 0, cacheDir: TEST_CACHE };
    beforeAll(async () => {
      // fp32 activations (webgpu's default for int4 is fp16: test/engine-webgpu-fp16.test.ts), to compare at 1e-4.
      gpu = await Engine.load(dir, { ...build, provider: 'webgpu', activations: 'fp32', prefillChunk: 3 });
      cpu = await Engine.load(dir, build);
    });
    afterAll(async () => {
      await gpu.close();
      await cpu.close();
    });

    it(`the provider fuses each layer's norm and MLP into one kernel${qkvFused ? ', and its norm and q/k/v projections into another' : ''}`, async () => {
      const layers = gpu.config.numLayers;
      const ops = await providerOps(gpu.build.modelPath);
      expect(ops.get('MatMulNBitsMlp')).toBe(layers);
      expect(ops.get('Sigmoid') ?? 0).toBe(0);
      expect(ops.get('Split') ?? 0).toBe(0);
      // Qwen2's q/k/v biases sit in the one fused q|k|v MatMulNBits (no Add); Qwen3 has none and gets MatMulNBitsQkv.
      expect(ops.get('MatMulNBitsQkv') ?? 0).toBe(qkvFused ? layers : 0);
      expect(ops.get('Add') ?? 0).toBe(gpu.build.options.ports.length); // the injection ports' adds only
      // Per layer: o and down projections, plus the fused q|k|v where it is not fused with its norm; and lm_head.
      expect(ops.get('MatMulNBits')).toBe(layers * (qkvFused ? 2 : 3) + 1);
    });

    it('generate with taps and an injection port: every step’s tokens, logits and taps within 1e-4 of the CPU provider', async () => {
      const layer = ref.injection.layer;
      const req = {
        promptIds: ref.input_ids,
        maxTokens: 8,
        ignoreEos: true,
        returnLogits: true,
        taps: [residPost(0), residPost(layer), residPost(gpu.config.numLayers - 1)],
        injections: [{ hook: residPost(layer), vector: tensor('inject_vector'), scale: ref.injection.alpha, window: { kind: 'all' as const } }],
      };
      const [a, b] = [await steps(gpu, req), await steps(cpu, req)];
      expect(a.map((s) => s.tokenId)).toEqual(b.map((s) => s.tokenId));
      let compared = 0;
      for (const [i, s] of a.entries()) {
        if (s.kind === 'token') {
          expect(maxAbsDiff(s.logits!, b[i].logits!), `step ${i} logits`).toBeLessThan(1e-4);
          compared++;
        }
        for (const t of req.taps) if (s.kind === 'token') expect(maxAbsDiff(s.taps.get(t)!.data, b[i].taps.get(t)!.data), `step ${i} ${t}`).toBeLessThan(1e-4);
      }
      expect(compared).toBe(8);
      // int4 moved the logits away from the fp32 reference (so the comparison is of the int4 path).
      const fp32 = tensor('logits');
      const first = b.find((s) => s.kind === 'token' && s.logits)!.logits!;
      const plain = (await steps(cpu, { ...req, maxTokens: 1, injections: [] })).find((s) => s.kind === 'token')!.logits!;
      expect(maxAbsDiff(plain, fp32.subarray(fp32.length - plain.length))).toBeGreaterThan(1e-3);
      // and the injection moved them (so the comparison covers the port).
      expect(maxAbsDiff(plain, first)).toBeGreaterThan(1e-2);
    });
  });
}

describe('qwen2-code-16m int4 on the WebGPU provider: prefill at accuracy level 4, decode at 0', () => {
  const ref = readReference<SubjectReference>(CODE16M);
  const prompt = ref.prompts[0].input_ids.slice(0, 8);
  const tail = ref.prompts[1].input_ids.slice(0, 6);
  let split: Engine;
  let level4: Engine;
  let cpu0: Engine;
  beforeAll(async () => {
    split = await Engine.load(CODE16M, { precision: 'int4', provider: 'webgpu', activations: 'fp32', decodeAccuracyLevel: 0, cacheDir: TEST_CACHE });
    level4 = await Engine.load(CODE16M, { precision: 'int4', provider: 'webgpu', activations: 'fp32', cacheDir: TEST_CACHE });
    cpu0 = await Engine.load(CODE16M, { precision: 'int4', accuracyLevel: 0, cacheDir: TEST_CACHE });
  });
  afterAll(async () => {
    await split.close();
    await level4.close();
    await cpu0.close();
  });

  /** Logits of a prompt pass, then of one-token passes over `tail`, on one sequence. */
  async function passes(engine: Engine, first: number[]): Promise<Float32Array[]> {
    const seq = engine.newSequence(first.length + tail.length);
    const out = [(await seq.forward(first)).logits];
    for (const t of tail) out.push((await seq.forward([t])).logits);
    seq.release();
    return out;
  }

  it('builds: level 4 for prompt passes, a second device-kv build at level 0 for one-token passes (none by default)', () => {
    expect(split.build.options.accuracyLevel).toBe(4);
    expect(split.decodeGraph?.build.options).toEqual({ ...split.build.options, accuracyLevel: 0 });
    expect(split.decodeSession).toBeDefined();
    expect(level4.decodeGraph).toBeUndefined();
    expect(cpu0.decodeGraph).toBeUndefined();
  });

  it('a prompt pass runs the level-4 build; one-token passes on its device cache run the level-0 build', async () => {
    const [a, b] = [await passes(split, prompt), await passes(level4, prompt)];
    expect(maxAbsDiff(a[0], b[0])).toBeLessThan(1e-6);
    // One token at a time from the start, every pass is the level-0 build's: the CPU provider's level 0 within 1e-4 ...
    const [s1, c1, l1] = [await passes(split, [prompt[0]]), await passes(cpu0, [prompt[0]]), await passes(level4, [prompt[0]])];
    for (const [i, x] of s1.entries()) expect(maxAbsDiff(x, c1[i]), `pass ${i}`).toBeLessThan(1e-4);
    // ... where level 4's int8 activations part from it.
    expect(Math.max(...l1.map((x, i) => maxAbsDiff(x, c1[i])))).toBeGreaterThan(1e-2);
    // After a level-4 prompt pass, the level-0 decode passes read the cache it left (they differ from level 4's own).
    expect(Math.max(...a.slice(1).map((x, i) => maxAbsDiff(x, b[i + 1])))).toBeGreaterThan(1e-3);
  }, 400_000);
});
