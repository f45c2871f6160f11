/** Checkpoint reading: configs of both families, fingerprints, and broken checkpoints as coded errors. */
import { copyFileSync, cpSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { parseModelConfig } from '../src/model/config.js';
import { ensureBuild } from '../src/model/build.js';
import { CODE16M, QWEN2_TINY, QWEN3_TINY, tempDir } from './helpers.js';

function brokenCopy(mutate: (dir: string) => void): string {
  const dir = tempDir('lw-broken-');
  cpSync(CODE16M, dir, { recursive: true });
  mutate(dir);
  return dir;
}

function expectCode(fn: () => unknown, code: string): void {
  expect(fn).toThrow(expect.objectContaining({ code }));
}

describe('config.json', () => {
  const base = JSON.parse(readFileSync(join(QWEN3_TINY, 'config.json'), 'utf8')) as Record<string, unknown>;

  it('reads qwen2 (tied, biased q/k/v) and qwen3 (own head_dim, q/k norm, untied)', () => {
    const q2 = openCheckpoint(QWEN2_TINY).config;
    expect(q2).toMatchObject({ modelType: 'qwen2', hiddenSize: 64, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 16, qkvBias: true, qkNorm: false, tieWordEmbeddings: true, ropeTheta: 1e6 });
    const q3 = openCheckpoint(QWEN3_TINY).config;
    expect(q3).toMatchObject({ modelType: 'qwen3', headDim: 32, qkvBias: false, qkNorm: true, tieWordEmbeddings: false });
  });

  it('reads rope_theta at top level (transformers 4) as well as in rope_parameters', () => {
    const { rope_parameters: _, ...v4 } = base;
    expect(parseModelConfig({ ...v4, rope_theta: 5e5 }).ropeTheta).toBe(5e5);
    expect(parseModelConfig(base).ropeTheta).toBe(1e6);
  });

  it('names what is unsupported', () => {
    expectCode(() => parseModelConfig({ ...base, model_type: 'llama' }), 'LW_ERR_MODEL_UNSUPPORTED');
    expect(() => parseModelConfig({ ...base, rope_parameters: { rope_type: 'yarn', rope_theta: 1e6 } })).toThrow(/yarn/);
    expect(() => parseModelConfig({ ...base, rope_scaling: { type: 'dynamic', factor: 2 } })).toThrow(/dynamic/);
    expect(() => parseModelConfig({ ...base, use_sliding_window: true })).toThrow(/sliding/);
    expect(() => parseModelConfig({ ...base, layer_types: ['full_attention', 'sliding_attention'] })).toThrow(/sliding/);
    expectCode(() => parseModelConfig({ ...base, hidden_size: 'x' }), 'LW_ERR_MODEL_CONFIG_INVALID');
  });
});

describe('broken checkpoints give coded errors, never a crash or a hang', () => {
  it('missing directory', () => expectCode(() => openCheckpoint('/nonexistent/model'), 'LW_ERR_MODEL_NOT_FOUND'));

  it('missing shard', () => {
    const dir = brokenCopy((d) => rmSync(join(d, 'model-00002-of-00003.safetensors')));
    expectCode(() => openCheckpoint(dir), 'LW_ERR_MODEL_SHARD_MISSING');
  });

  it('corrupt header', () => {
    const dir = brokenCopy((d) => {
      const p = join(d, 'model-00001-of-00003.safetensors');
      const b = readFileSync(p);
      b.write('\u0000{garbage', 8);
      writeFileSync(p, b);
    });
    expectCode(() => openCheckpoint(dir), 'LW_ERR_MODEL_SAFETENSORS_CORRUPT');
  });

  it('a header entry that is not a tensor', () => {
    const dir = brokenCopy((d) => {
      const p = join(d, 'model-00001-of-00003.safetensors');
      const b = readFileSync(p);
      b.write('{"garbage', 8);
      writeFileSync(p, b);
    });
    expectCode(() => openCheckpoint(dir), 'LW_ERR_MODEL_SAFETENSORS_CORRUPT');
  });

  it('absurd header length', () => {
    const dir = brokenCopy((d) => {
      const p = join(d, 'model-00003-of-00003.safetensors');
      const b = readFileSync(p);
      b.writeBigUInt64LE(2n ** 60n, 0);
      writeFileSync(p, b);
    });
    expectCode(() => openCheckpoint(dir), 'LW_ERR_MODEL_SAFETENSORS_CORRUPT');
  });

  it('truncated file', () => {
    const dir = brokenCopy((d) => {
      const p = join(d, 'model-00002-of-00003.safetensors');
      truncateSync(p, Math.floor(readFileSync(p).length / 2));
    });
    expect(() => openCheckpoint(dir)).toThrow(expect.objectContaining({ code: 'LW_ERR_MODEL_SAFETENSORS_CORRUPT', message: expect.stringMatching(/truncated/) }));
  });

  it('unsupported model_type', () => {
    const dir = brokenCopy((d) => {
      const cfg = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...cfg, model_type: 'mistral' }));
    });
    expectCode(() => openCheckpoint(dir), 'LW_ERR_MODEL_UNSUPPORTED');
  });

  it('a tensor the architecture needs is missing from the index', () => {
    const dir = tempDir('lw-broken-');
    for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(QWEN3_TINY, f), join(dir, f));
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 5 }));
    expectCode(() => ensureBuild(dir, {}, { cacheDir: tempDir() }), 'LW_ERR_MODEL_TENSOR_MISSING');
  });
});

describe('fingerprints and build cache', () => {
  it('a fingerprint is stable and changes with the weights', () => {
    const a = openCheckpoint(CODE16M).fingerprint;
    expect(openCheckpoint(CODE16M).fingerprint).toBe(a);
    const dir = brokenCopy((d) => {
      const p = join(d, 'model-00001-of-00003.safetensors');
      const b = readFileSync(p);
      b[b.length - 1] ^= 0xff;
      writeFileSync(p, b);
    });
    expect(openCheckpoint(dir).fingerprint).not.toBe(a);
  });

  it('builds are cached by fingerprint and options; bad options are refused', () => {
    const cache = tempDir();
    const first = ensureBuild(QWEN2_TINY, { precision: 'int8' }, { cacheDir: cache });
    expect(first.cached).toBe(false);
    expect(ensureBuild(QWEN2_TINY, { precision: 'int8' }, { cacheDir: cache })).toMatchObject({ cached: true, modelPath: first.modelPath });
    expect(ensureBuild(QWEN2_TINY, { precision: 'int8', ports: 'none' }, { cacheDir: cache }).modelPath).not.toBe(first.modelPath);
    expectCode(() => ensureBuild(QWEN2_TINY, { taps: [9] }, { cacheDir: cache }), 'LW_ERR_MODEL_BUILD_OPTIONS');
    expectCode(() => ensureBuild(QWEN2_TINY, { precision: 'int3' as 'int4' }, { cacheDir: cache }), 'LW_ERR_MODEL_BUILD_OPTIONS');
  });
});
