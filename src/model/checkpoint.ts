/**
 * A Hugging Face checkpoint directory: config, the safetensors shards (single file or index), and a
 * fingerprint that keys build caches and binds probe files to their model.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { lwError } from '../errors.js';
import { readModelConfig, type ModelConfig } from './config.js';
import { readSafetensorsHeader, readTensorF32, type SafetensorsFile, type TensorInfo } from './safetensors.js';

export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  files: SafetensorsFile[];
  tensors: Map<string, TensorInfo>;
  fingerprint: string;
  has(name: string): boolean;
  /** Reads one tensor as float32; coded error when absent. */
  read(name: string): Float32Array;
  /** Reads chosen rows of a 2-D tensor as float32 (e.g. a few lm_head rows for the logit lens). */
  readRows(name: string, rows: readonly number[]): Float32Array[];
  /** The output projection's name: lm_head.weight, or the embedding when tied. */
  lmHeadName: string;
  info(name: string): TensorInfo;
}

function shardPaths(dir: string): string[] {
  const indexPath = join(dir, 'model.safetensors.index.json');
  if (existsSync(indexPath)) {
    let index: { weight_map?: Record<string, string> };
    try {
      index = JSON.parse(readFileSync(indexPath, 'utf8')) as typeof index;
    } catch (e) {
      throw lwError('LW_ERR_MODEL_SAFETENSORS_CORRUPT', `${indexPath} is not valid JSON`, undefined, e);
    }
    if (!index.weight_map || typeof index.weight_map !== 'object') {
      throw lwError('LW_ERR_MODEL_SAFETENSORS_CORRUPT', `${indexPath} has no weight_map`);
    }
    const shards = [...new Set(Object.values(index.weight_map))].sort();
    for (const s of shards) {
      if (!existsSync(join(dir, s))) throw lwError('LW_ERR_MODEL_SHARD_MISSING', `${s} (named by model.safetensors.index.json)`, { shard: s });
    }
    return shards.map((s) => join(dir, s));
  }
  const single = join(dir, 'model.safetensors');
  if (!existsSync(single)) throw lwError('LW_ERR_MODEL_NOT_FOUND', `no model.safetensors or model.safetensors.index.json in ${dir}`);
  return [single];
}

/**
 * Hashes config.json, every shard's header and size, and 16 evenly spaced 64 KiB samples of each
 * shard's data. Reading all 64 GB of a 32B checkpoint to key a cache would take minutes; headers
 * pin names, shapes and layout, and the samples catch re-trained weights of the same shape.
 */
function fingerprintOf(dir: string, files: SafetensorsFile[]): string {
  const h = createHash('sha256');
  h.update(readFileSync(join(dir, 'config.json')));
  const sample = Buffer.alloc(64 * 1024);
  for (const f of files) {
    h.update(f.headerText);
    h.update(String(f.size));
    const fd = openSync(f.path, 'r');
    try {
      for (let i = 0; i < 16; i++) {
        const pos = Math.floor(((f.size - sample.length) * i) / 15);
        const n = readSync(fd, sample, 0, sample.length, Math.max(0, pos));
        h.update(sample.subarray(0, n));
      }
    } finally {
      closeSync(fd);
    }
  }
  return `lw1-${h.digest('hex').slice(0, 32)}`;
}

export function openCheckpoint(dir: string): Checkpoint {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw lwError('LW_ERR_MODEL_NOT_FOUND', dir);
  const config = readModelConfig(dir);
  const files = shardPaths(dir).map(readSafetensorsHeader);
  const tensors = new Map<string, TensorInfo>();
  for (const f of files) for (const [k, v] of f.tensors) tensors.set(k, v);
  const fingerprint = fingerprintOf(dir, files);
  const info = (name: string): TensorInfo => {
    const t = tensors.get(name);
    if (!t) throw lwError('LW_ERR_MODEL_TENSOR_MISSING', `${name} in ${dir}`, { tensor: name });
    return t;
  };
  return {
    dir,
    config,
    files,
    tensors,
    fingerprint,
    has: (name) => tensors.has(name),
    info,
    read: (name) => readTensorF32(info(name)),
    readRows: (name, rows) => {
      const t = info(name);
      const cols = t.shape[1];
      const bytes = t.byteLength / (t.shape[0] * cols);
      return rows.map((r) => {
        if (!Number.isInteger(r) || r < 0 || r >= t.shape[0]) throw lwError('LW_ERR_MODEL_TENSOR_MISSING', `${name} row ${r}`);
        return readTensorF32({ ...t, shape: [cols], offset: t.offset + r * cols * bytes, byteLength: cols * bytes });
      });
    },
    lmHeadName: config.tieWordEmbeddings || !tensors.has('lm_head.weight') ? 'model.embed_tokens.weight' : 'lm_head.weight',
  };
}
