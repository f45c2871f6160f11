/**
 * Trial datasets on disk: one directory per run.
 *
 *   dataset.json          manifest: model fingerprint, shapes, traced layers, dtype, answer ids, the
 *                         resolved config (and its hash), concept-vector hash, planned trial count
 *   index.jsonl           one TrialRecord per finished trial, in plan order
 *   shards/NNNNN.bin      trace activations, trials concatenated; a trial's block is, for each
 *                         traced layer in order, its rows [positions, d] as little-endian f16 or f32
 *   concepts/             the concept vectors the trials used (concepts.ts format)
 *
 * Writing order per trial: shard bytes, then the index line. Resuming trusts only complete index
 * lines whose shard bytes exist, truncates anything after them, and continues the plan from there;
 * since every trial is a pure function of (config, model, concept vectors, trial id), a resumed run
 * writes the same bytes as an uninterrupted one. No timestamps or paths are stored.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { lwError } from '../errors.js';
import { floatToHalf } from '../model/quantize.js';
import { halfToFloat } from '../model/safetensors.js';
import type { Protocol, TrialConfig } from './trial-config.js';

export const DATASET_FORMAT_VERSION = 1;
export const DATASET_MANIFEST = 'dataset.json';
export const DATASET_INDEX = 'index.jsonl';

export type Condition = 'inject' | 'none' | 'random' | 'unrelated-question' | 'generation-only';
export const CONTROL_CONDITIONS: readonly Condition[] = ['none', 'random', 'unrelated-question', 'generation-only'];
export type WindowKind = 'first-turn' | 'from-question' | 'generation';

export interface DatasetManifest {
  formatVersion: 1;
  kind: 'latentwatch-trials';
  modelFingerprint: string;
  dModel: number;
  numLayers: number;
  chat: boolean;
  traceLayers: number[];
  injectionLayers: number[];
  dtype: 'f16' | 'f32';
  answerIds: { yes: number[]; no: number[] };
  meanResidNorm: number[];
  conceptsHash: string;
  split: { trainConcepts: string[]; evalConcepts: string[] };
  plannedTrials: number;
  trialsPerShard: number;
  configHash: string;
  config: TrialConfig;
}

/** One finished trial (a line of index.jsonl). Positions are absolute; ranges are [start, end). */
export interface TrialRecord {
  index: number;
  id: string;
  protocol: Protocol;
  condition: Condition;
  /** 1 when a vector was added anywhere in the trial, else 0. */
  label: 0 | 1;
  family: string | null;
  familyKind: string | null;
  item: string | null;
  /** The concept word (concept family, and controls that inject a concept), else null. */
  concept: string | null;
  split: 'train' | 'eval';
  layer: number | null;
  strength: number | null;
  strengthMode: string | null;
  /** ‖scale · vector‖ actually added per position (0 when nothing was). */
  injectedNorm: number;
  /** The protocol's window (nominal for trials without injection); end null = through generation. */
  window: { kind: WindowKind; start: number; end: number | null };
  prompt: { context: number; filler: string | null; question: number; questionKind: 'detect' | 'unrelated' };
  segments: { context: [number, number]; question: [number, number]; prefix: [number, number]; generated: [number, number] };
  /** After the answer prefix: probabilities from the full softmax, logits as logsumexp over the answer ids. */
  readout: { pYes: number; pNo: number; logitYes: number; logitNo: number };
  /** Logit lens at the last prefix position, per layer 0..numLayers-1 (final RMSNorm, then the lm_head rows). */
  lens: { logitYes: number[]; logitNo: number[] };
  /** Readout and lens of the same prompt without injection (answer.pairedClean), else null. */
  clean: { readout: TrialRecord['readout']; lens: TrialRecord['lens'] } | null;
  generated: { ids: number[]; text: string; finish: 'eos' | 'stop' | 'length' };
  /** Generated text names the detection (configured phrases) or the concept word. */
  verbalized: boolean;
  /** pYes > pNo. */
  saidYes: boolean;
  trace: { start: number; end: number; layers: number[]; shard: number; offset: number; bytes: number };
}

export function shardName(shard: number): string {
  return join('shards', `${String(shard).padStart(5, '0')}.bin`);
}

export function sha256(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

// ---- f16 ---------------------------------------------------------------------------------

let halfTable: Float32Array | undefined;
function halfLookup(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloat(h);
  }
  return halfTable;
}

export function encodeRows(data: Float32Array, dtype: 'f16' | 'f32'): Buffer {
  if (dtype === 'f32') {
    const out = Buffer.alloc(data.length * 4);
    for (let i = 0; i < data.length; i++) out.writeFloatLE(data[i], i * 4);
    return out;
  }
  const out = Buffer.alloc(data.length * 2);
  for (let i = 0; i < data.length; i++) out.writeUInt16LE(floatToHalf(data[i]), i * 2);
  return out;
}

export function decodeRows(buf: Buffer, dtype: 'f16' | 'f32'): Float32Array {
  if (dtype === 'f32') {
    const out = new Float32Array(buf.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = buf.readFloatLE(i * 4);
    return out;
  }
  const table = halfLookup();
  const out = new Float32Array(buf.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = table[buf[2 * i] | (buf[2 * i + 1] << 8)];
  return out;
}

// ---- writer ------------------------------------------------------------------------------

function manifestText(m: DatasetManifest): string {
  return `${JSON.stringify(m, null, 2)}\n`;
}

/** Appends trials to a dataset directory, resuming a compatible one. */
export class DatasetWriter {
  private indexFd = -1;
  private shardFd = -1;
  private shard = -1;
  private shardBytes = 0;
  /** Trials already in the directory (the plan continues at this index). */
  readonly completed: number;

  private constructor(
    readonly dir: string,
    readonly manifest: DatasetManifest,
    completed: number,
  ) {
    this.completed = completed;
  }

  /**
   * Open `dir` for `manifest`. A fresh directory gets the manifest; an existing one must hold the
   * same manifest (else LW_ERR_TRIALS_DATASET_CONFLICT), and its finished trials are kept.
   */
  static open(dir: string, manifest: DatasetManifest): DatasetWriter {
    mkdirSync(join(dir, 'shards'), { recursive: true });
    const mPath = join(dir, DATASET_MANIFEST);
    const text = manifestText(manifest);
    if (existsSync(mPath)) {
      const old = readFileSync(mPath, 'utf8');
      if (old !== text) {
        let why = 'a different config, model or concept vectors';
        try {
          const o = JSON.parse(old) as DatasetManifest;
          if (o.modelFingerprint !== manifest.modelFingerprint) why = `model ${o.modelFingerprint} (this run: ${manifest.modelFingerprint})`;
          else if (o.configHash !== manifest.configHash) why = 'a different trial config';
          else if (o.conceptsHash !== manifest.conceptsHash) why = 'different concept vectors';
        } catch {
          why = 'an unreadable dataset.json';
        }
        throw lwError('LW_ERR_TRIALS_DATASET_CONFLICT', `${dir} holds trials from ${why}; use another --out or delete it`, { dir });
      }
    } else {
      writeFileSync(mPath, text);
    }
    const completed = recoverIndex(dir, manifest);
    const w = new DatasetWriter(dir, manifest, completed);
    w.indexFd = openSync(join(dir, DATASET_INDEX), 'a');
    return w;
  }

  /** Append one trial: its trace bytes (layer blocks in manifest.traceLayers order) and record. */
  append(record: Omit<TrialRecord, 'trace'> & { trace: Omit<TrialRecord['trace'], 'shard' | 'offset' | 'bytes'> }, traceBytes: Buffer): TrialRecord {
    const shard = Math.floor(record.index / this.manifest.trialsPerShard);
    if (shard !== this.shard) {
      if (this.shardFd >= 0) closeSync(this.shardFd);
      const path = join(this.dir, shardName(shard));
      this.shardFd = openSync(path, 'a');
      this.shardBytes = fstatSync(this.shardFd).size;
      this.shard = shard;
    }
    const full: TrialRecord = { ...record, trace: { ...record.trace, shard, offset: this.shardBytes, bytes: traceBytes.length } };
    writeAll(this.shardFd, traceBytes);
    this.shardBytes += traceBytes.length;
    writeAll(this.indexFd, Buffer.from(`${JSON.stringify(full)}\n`, 'utf8'));
    return full;
  }

  close(): void {
    if (this.shardFd >= 0) closeSync(this.shardFd);
    if (this.indexFd >= 0) closeSync(this.indexFd);
    this.shardFd = this.indexFd = -1;
  }
}

function writeAll(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/**
 * Keep the longest prefix of index lines that parse, run 0,1,2,… and whose shard bytes exist;
 * truncate the index and shards to it and delete later shards. Returns the trial count kept.
 */
function recoverIndex(dir: string, manifest: DatasetManifest): number {
  const indexPath = join(dir, DATASET_INDEX);
  if (!existsSync(indexPath)) return 0;
  const text = readFileSync(indexPath, 'utf8');
  const records: TrialRecord[] = [];
  let keptChars = 0;
  const shardSizes = new Map<number, number>();
  const sizeOf = (shard: number): number => {
    if (!shardSizes.has(shard)) {
      const p = join(dir, shardName(shard));
      shardSizes.set(shard, existsSync(p) ? fstatSize(p) : -1);
    }
    return shardSizes.get(shard)!;
  };
  let pos = 0;
  while (pos < text.length) {
    const nl = text.indexOf('\n', pos);
    if (nl < 0) break;
    let r: TrialRecord;
    try {
      r = JSON.parse(text.slice(pos, nl)) as TrialRecord;
    } catch {
      break;
    }
    if (r.index !== records.length || r.trace?.shard !== Math.floor(r.index / manifest.trialsPerShard)) break;
    if (sizeOf(r.trace.shard) < r.trace.offset + r.trace.bytes) break;
    records.push(r);
    pos = nl + 1;
    keptChars = pos;
  }
  const keptText = text.slice(0, keptChars);
  if (keptText.length !== text.length) writeFileSync(indexPath, keptText);
  // Truncate shards to the kept trials; delete shards after the last one.
  const ends = new Map<number, number>();
  for (const r of records) ends.set(r.trace.shard, r.trace.offset + r.trace.bytes);
  for (const f of readdirSync(join(dir, 'shards'))) {
    const m = /^(\d{5})\.bin$/.exec(f);
    if (!m) continue;
    const shard = Number(m[1]);
    const end = ends.get(shard);
    const p = join(dir, 'shards', f);
    if (end === undefined) rmSync(p);
    else if (fstatSize(p) !== end) truncateFile(p, end);
  }
  return records.length;
}

function fstatSize(path: string): number {
  const fd = openSync(path, 'r');
  try {
    return fstatSync(fd).size;
  } finally {
    closeSync(fd);
  }
}

function truncateFile(path: string, size: number): void {
  const fd = openSync(path, 'r+');
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

// ---- reader ------------------------------------------------------------------------------

/** A finished (or partial) dataset, read back for training, evaluation and reports. */
export class Dataset {
  private constructor(
    readonly dir: string,
    readonly manifest: DatasetManifest,
    readonly records: readonly TrialRecord[],
  ) {}

  static open(dir: string): Dataset {
    const mPath = join(dir, DATASET_MANIFEST);
    let manifest: DatasetManifest;
    try {
      manifest = JSON.parse(readFileSync(mPath, 'utf8')) as DatasetManifest;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw lwError('LW_ERR_TRIALS_DATASET_NOT_FOUND', mPath, { path: mPath }, e);
      throw lwError('LW_ERR_TRIALS_DATASET_INVALID', `${mPath} is not JSON`, undefined, e);
    }
    if (manifest?.kind !== 'latentwatch-trials' || manifest.formatVersion !== DATASET_FORMAT_VERSION) {
      throw lwError('LW_ERR_TRIALS_DATASET_INVALID', `${mPath} is not a version-${DATASET_FORMAT_VERSION} latentwatch trial manifest`);
    }
    const iPath = join(dir, DATASET_INDEX);
    if (!existsSync(iPath)) throw lwError('LW_ERR_TRIALS_DATASET_NOT_FOUND', iPath, { path: iPath });
    const records: TrialRecord[] = [];
    for (const [n, line] of readFileSync(iPath, 'utf8').split('\n').entries()) {
      if (line === '') continue;
      try {
        records.push(JSON.parse(line) as TrialRecord);
      } catch (e) {
        throw lwError('LW_ERR_TRIALS_DATASET_INVALID', `${iPath}:${n + 1} is not JSON`, undefined, e);
      }
    }
    return new Dataset(dir, manifest, records);
  }

  /** Trace rows of one trial at one traced layer: [end − start, d] row-major. */
  traceRows(record: TrialRecord, layer: number): Float32Array {
    const k = record.trace.layers.indexOf(layer);
    if (k < 0) throw lwError('LW_ERR_TRIALS_DATASET_INVALID', `trial ${record.id} has no trace at layer ${layer} (traced: ${record.trace.layers.join(', ')})`);
    const rows = record.trace.end - record.trace.start;
    const width = this.manifest.dtype === 'f16' ? 2 : 4;
    const blockBytes = rows * this.manifest.dModel * width;
    if (blockBytes * record.trace.layers.length !== record.trace.bytes) throw lwError('LW_ERR_TRIALS_DATASET_INVALID', `trial ${record.id}: trace size ${record.trace.bytes} does not match its shape`);
    const buf = Buffer.alloc(blockBytes);
    const fd = this.shardFd(record.trace.shard);
    const n = readSync(fd, buf, 0, blockBytes, record.trace.offset + k * blockBytes);
    if (n !== blockBytes) throw lwError('LW_ERR_TRIALS_DATASET_INVALID', `shard ${record.trace.shard} is truncated at trial ${record.id}`);
    return decodeRows(buf, this.manifest.dtype);
  }

  private fds = new Map<number, number>();
  private shardFd(shard: number): number {
    let fd = this.fds.get(shard);
    if (fd === undefined) {
      const p = join(this.dir, shardName(shard));
      try {
        fd = openSync(p, 'r');
      } catch (e) {
        throw lwError('LW_ERR_TRIALS_DATASET_INVALID', `missing shard ${p}`, undefined, e);
      }
      this.fds.set(shard, fd);
    }
    return fd;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
