/**
 * Bytes of an ONNX graph's initializers, for "weight bytes read per decoded token": decode reads
 * every matmul weight (and its scales) once per token, while a Gather reads one row of the
 * embedding table and GroupQueryAttention reads a few rows of the rotary tables.
 */
import { readFileSync } from 'node:fs';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

export interface GraphBytes {
  /** Every initializer. */
  totalBytes: number;
  /** What one decode step reads: everything but the excluded tables. */
  perTokenBytes: number;
  /** Excluded initializers (name → bytes). */
  excluded: Record<string, number>;
  /** Bytes by the op type that consumes each initializer (MatMulNBits, MatMul, ...). */
  byConsumer: Record<string, number>;
  initializers: number;
}

const ELEMENT_BYTES: Record<number, number> = { 1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2 };

function tensorBytes(t: onnxProto.onnx.ITensorProto): number {
  const ext = t.externalData?.find((e) => e.key === 'length');
  if (ext?.value) return Number(ext.value);
  if (t.rawData && t.rawData.length) return t.rawData.length;
  const n = (t.dims ?? []).reduce<number>((a, d) => a * Number(d), 1);
  return n * (ELEMENT_BYTES[t.dataType ?? 1] ?? 4);
}

/**
 * Reads `modelPath` (the protobuf only: external data is not touched). `exclude` decides which
 * initializers a decode step does not read in full; default: names starting `embed.` (the
 * gather table) or `rotary.` (GroupQueryAttention's cos/sin caches).
 */
export function graphBytes(modelPath: string, exclude: (name: string) => boolean = (n) => n.startsWith('embed.') || n.startsWith('rotary.')): GraphBytes {
  const model = onnx.ModelProto.decode(readFileSync(modelPath));
  const graph = model.graph;
  if (!graph) throw new Error(`${modelPath} has no graph`);
  const consumer = new Map<string, string>();
  for (const n of graph.node ?? []) for (const i of n.input ?? []) if (!consumer.has(i)) consumer.set(i, n.opType ?? '?');
  let totalBytes = 0;
  let perTokenBytes = 0;
  const excluded: Record<string, number> = {};
  const byConsumer: Record<string, number> = {};
  for (const t of graph.initializer ?? []) {
    const name = t.name ?? '';
    const b = tensorBytes(t);
    totalBytes += b;
    if (exclude(name)) {
      excluded[name] = b;
      continue;
    }
    perTokenBytes += b;
    const op = consumer.get(name) ?? 'unused';
    byConsumer[op] = (byConsumer[op] ?? 0) + b;
  }
  return { totalBytes, perTokenBytes, excluded, byConsumer, initializers: graph.initializer?.length ?? 0 };
}
