/**
 * Reads a Hugging Face config.json for the Qwen2/Qwen2.5/Qwen3 decoder into the few numbers the
 * graph builder needs. Anything we cannot run faithfully is refused with a coded error naming it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lwError } from '../errors.js';

export type ModelType = 'qwen2' | 'qwen3';

export interface ModelConfig {
  modelType: ModelType;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  rmsEps: number;
  ropeTheta: number;
  maxPositions: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2). */
  qkvBias: boolean;
  /** Per-head RMSNorm on q and k before rotary (Qwen3). */
  qkNorm: boolean;
  /** EOS ids from generation_config.json (or config.json), deduplicated. */
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

function readJson(path: string): Json {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw lwError('LW_ERR_MODEL_CONFIG_INVALID', `cannot read ${path}`, undefined, e);
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Json;
  } catch (e) {
    throw lwError('LW_ERR_MODEL_CONFIG_INVALID', `${path} is not a JSON object`, undefined, e);
  }
}

function int(cfg: Json, key: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw lwError('LW_ERR_MODEL_CONFIG_INVALID', `config.json: ${key} must be a positive integer (got ${JSON.stringify(v)})`);
  }
  return v;
}

function num(cfg: Json, key: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw lwError('LW_ERR_MODEL_CONFIG_INVALID', `config.json: ${key} must be a positive number (got ${JSON.stringify(v)})`);
  }
  return v;
}

function idList(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

export function parseModelConfig(cfg: Json, generationConfig: Json = {}): ModelConfig {
  const modelType = cfg.model_type;
  if (modelType !== 'qwen2' && modelType !== 'qwen3') {
    throw lwError('LW_ERR_MODEL_UNSUPPORTED', `model_type ${JSON.stringify(modelType)} (supported: qwen2, qwen3)`, { feature: 'model_type', value: modelType });
  }
  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw lwError('LW_ERR_MODEL_UNSUPPORTED', `hidden_act ${JSON.stringify(act)} (supported: silu)`, { feature: 'hidden_act', value: act });

  // transformers 5 writes rope_parameters; transformers 4 checkpoints carry rope_theta / rope_scaling at top level.
  const ropeParams = (cfg.rope_parameters ?? null) as Json | null;
  const scaling = (cfg.rope_scaling ?? null) as Json | null;
  for (const r of [ropeParams, scaling]) {
    const kind = r?.rope_type ?? r?.type;
    if (r && kind !== undefined && kind !== 'default') {
      throw lwError('LW_ERR_MODEL_UNSUPPORTED', `rope scaling ${JSON.stringify(kind)} (supported: default)`, { feature: 'rope_scaling', value: kind });
    }
  }
  const ropeTheta = num(cfg, 'rope_theta', ropeParams?.rope_theta ?? cfg.rope_theta ?? 10000);

  const layerTypes = Array.isArray(cfg.layer_types) ? (cfg.layer_types as unknown[]) : [];
  const sliding = cfg.use_sliding_window === true || layerTypes.some((t) => t !== 'full_attention');
  if (sliding) throw lwError('LW_ERR_MODEL_UNSUPPORTED', 'sliding-window attention layers', { feature: 'sliding_window' });

  const hiddenSize = int(cfg, 'hidden_size');
  const numHeads = int(cfg, 'num_attention_heads');
  const numKvHeads = int(cfg, 'num_key_value_heads', numHeads);
  // Qwen3's head_dim is its own setting (it can differ from hidden/heads).
  const headDim = cfg.head_dim == null ? hiddenSize / numHeads : int(cfg, 'head_dim');
  if (!Number.isInteger(headDim)) throw lwError('LW_ERR_MODEL_CONFIG_INVALID', 'hidden_size is not a multiple of num_attention_heads');
  if (numHeads % numKvHeads !== 0) throw lwError('LW_ERR_MODEL_CONFIG_INVALID', 'num_attention_heads is not a multiple of num_key_value_heads');
  if (headDim % 16 !== 0) {
    // onnxruntime's fused rotary inside GroupQueryAttention needs head_size % 16 == 0 on CPU.
    throw lwError('LW_ERR_MODEL_UNSUPPORTED', `head_dim ${headDim} (must be a multiple of 16)`, { feature: 'head_dim', value: headDim });
  }

  const eos = [...new Set([...idList(generationConfig.eos_token_id), ...idList(cfg.eos_token_id)])];
  return {
    modelType,
    hiddenSize,
    numLayers: int(cfg, 'num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: int(cfg, 'intermediate_size'),
    vocabSize: int(cfg, 'vocab_size'),
    rmsEps: num(cfg, 'rms_norm_eps', cfg.rms_norm_eps ?? 1e-6),
    ropeTheta,
    maxPositions: int(cfg, 'max_position_embeddings'),
    tieWordEmbeddings: cfg.tie_word_embeddings === true,
    qkvBias: modelType === 'qwen2' ? true : cfg.attention_bias === true,
    qkNorm: modelType === 'qwen3',
    eosTokenIds: eos,
  };
}

export function readModelConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(dir)) throw lwError('LW_ERR_MODEL_NOT_FOUND', dir);
  if (!existsSync(path)) throw lwError('LW_ERR_MODEL_CONFIG_INVALID', `no config.json in ${dir}`);
  const genPath = join(dir, 'generation_config.json');
  return parseModelConfig(readJson(path), existsSync(genPath) ? readJson(genPath) : {});
}
