/**
 * int4 builds on the WebGPU provider (lavapipe in CI). A quantized device-kv build gives the gate
 * and up projections (and, without q/k/v biases, the q, k and v projections) as separate
 * MatMulNBits, which onnxruntime's WebGPU provider fuses with the RMSNorm before them (and the SiLU
 * after) into one kernel each: fewer dispatches per layer, which is what decode on a GPU is bound by.
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
import { QWEN2_TINY, QWEN3_TINY, TEST_CACHE, maxAbsDiff, readReference, referenceTensors, tempDir, type TinyReference } from './helpers.js';

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
      gpu = await Engine.load(dir, { ...build, provider: 'webgpu', prefillChunk: 3 });
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
