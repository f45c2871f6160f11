/**
 * A thin graph-building layer over onnx-proto. Large initializers stream straight into an external
 * data file (page-aligned so onnxruntime can map them), so the protobuf stays small and no weight
 * outlives the tensor being converted.
 */
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
export const DT = onnx.TensorProto.DataType;
export type DataType = (typeof DT)[keyof typeof DT];

export type AttrValue = number | string | number[] | { float: number } | { floats: number[] };
export type Dim = number | string;

const PAGE = 4096;
/** Tensors smaller than this stay inline in the protobuf. */
const INLINE_LIMIT = 1024;

export class OnnxGraphWriter {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly dataFd: number;
  private dataOffset = 0;
  private nodeCount = 0;
  readonly dataFileName: string;

  constructor(private readonly modelPath: string) {
    this.dataFileName = `${basename(modelPath)}.data`;
    this.dataFd = openSync(`${modelPath}.data`, 'w');
  }

  /** Adds a node; returns its first output name. Output names default to unique generated ones. */
  node(op: string, inputs: string[], outputs: string[] | number = 1, attrs: Record<string, AttrValue> = {}, domain = ''): string[] {
    const outs = typeof outputs === 'number' ? Array.from({ length: outputs }, (_, i) => `${op}_${this.nodeCount}_${i}`) : outputs;
    this.nodes.push({
      opType: op,
      domain,
      name: `${op}_${this.nodeCount++}`,
      input: inputs,
      output: outs,
      attribute: Object.entries(attrs).map(([name, v]) => attribute(name, v)),
    });
    return outs;
  }

  /** Convenience for single-output nodes. */
  op(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, domain = '', name?: string): string {
    return this.node(op, inputs, name ? [name] : 1, attrs, domain)[0];
  }

  initializer(name: string, dataType: DataType, dims: number[], bytes: Uint8Array): string {
    const t: onnxProto.onnx.ITensorProto = { name, dataType, dims };
    if (bytes.byteLength < INLINE_LIMIT) {
      t.rawData = bytes;
    } else {
      const pad = (PAGE - (this.dataOffset % PAGE)) % PAGE;
      if (pad) {
        writeSync(this.dataFd, new Uint8Array(pad));
        this.dataOffset += pad;
      }
      writeSync(this.dataFd, bytes);
      t.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      t.externalData = [
        { key: 'location', value: this.dataFileName },
        { key: 'offset', value: String(this.dataOffset) },
        { key: 'length', value: String(bytes.byteLength) },
      ];
      this.dataOffset += bytes.byteLength;
    }
    this.initializers.push(t);
    return name;
  }

  f32(name: string, dims: number[], data: Float32Array): string {
    return this.initializer(name, DT.FLOAT, dims, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }

  i64(name: string, values: number[]): string {
    const a = BigInt64Array.from(values.map(BigInt));
    return this.initializer(name, DT.INT64, [values.length], new Uint8Array(a.buffer));
  }

  input(name: string, elemType: DataType, shape: Dim[]): string {
    this.inputs.push(valueInfo(name, elemType, shape));
    return name;
  }

  output(name: string, elemType: DataType, shape: Dim[]): void {
    this.outputs.push(valueInfo(name, elemType, shape));
  }

  /** Writes model.onnx (the data file was written as initializers arrived). */
  finish(graphName: string, metadata: Record<string, string>): { dataBytes: number } {
    closeSync(this.dataFd);
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'latentwatch',
      opsetImport: [
        { domain: '', version: 17 },
        { domain: 'com.microsoft', version: 1 },
      ],
      metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
      graph: {
        name: graphName,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    writeFileSync(this.modelPath, onnx.ModelProto.encode(model).finish());
    return { dataBytes: this.dataOffset };
  }
}

function valueInfo(name: string, elemType: DataType, shape: Dim[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attribute(name: string, v: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'number') return { name, type: T.INT, i: v };
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if ('float' in v) return { name, type: T.FLOAT, f: v.float };
  return { name, type: T.FLOATS, floats: v.floats };
}
