/**
 * A sequence's KV cache held in device memory (GPU providers). The graph's 'device-kv' interface
 * returns the whole cache after each pass (`present_key.L`, `present_value.L`); the session keeps
 * those outputs on the device ('gpu-buffer'), and the next pass takes them as its past: the cache
 * never crosses the bus, and only logits and taps come back to the host.
 *
 * A device cache belongs to one sequence, so such sequences decode one at a time (no continuous
 * batching on this path: the rows of a batch would need their caches side by side in one device
 * tensor, which onnxruntime-node gives no way to assemble without a round trip through the host).
 */
import { GRAPH_NAMES } from '../model/graph.js';
import type { ModelConfig } from '../model/config.js';
import type { Activations } from '../model/graph.js';
import { disposeTensor, emptyTensor, type Tensor } from './runtime.js';

export class DeviceKvCache {
  /** Never a pool slot: the engine decodes these sequences alone. */
  readonly slot = -1;
  private keys: Tensor[] = [];
  private values: Tensor[] = [];
  private held = 0;

  constructor(
    private readonly config: ModelConfig,
    /** The build's activations: the cache's element type. */
    private readonly activations: Activations = 'fp32',
  ) {}

  /** Positions the cache holds (the next pass's past length). */
  get length(): number {
    return this.held;
  }

  /** Adds the past inputs of a pass: the last pass's present outputs, or an empty host cache at first. */
  addPast(feeds: Record<string, Tensor>): void {
    const c = this.config;
    const empty = () => emptyTensor(this.activations === 'fp16' ? 'float16' : 'float32', [1, c.numKvHeads, 0, c.headDim]);
    for (let l = 0; l < c.numLayers; l++) {
      feeds[GRAPH_NAMES.pastKey(l)] = this.keys[l] ?? empty();
      feeds[GRAPH_NAMES.pastValue(l)] = this.values[l] ?? empty();
    }
  }

  /** Takes a pass's present outputs as the cache of `total` positions, freeing the superseded one. */
  replace(out: Record<string, Tensor>, total: number): void {
    const keys: Tensor[] = [];
    const values: Tensor[] = [];
    for (let l = 0; l < this.config.numLayers; l++) {
      keys.push(out[GRAPH_NAMES.presentKey(l)]);
      values.push(out[GRAPH_NAMES.presentValue(l)]);
    }
    this.free();
    this.keys = keys;
    this.values = values;
    this.held = total;
  }

  /** Where the cache's tensors are (distinct values; 'gpu-buffer' on a GPU provider). */
  locations(): string[] {
    return [...new Set([...this.keys, ...this.values].map((t) => t.location))];
  }

  free(): void {
    for (const t of [...this.keys, ...this.values]) disposeTensor(t);
    this.keys = [];
    this.values = [];
    this.held = 0;
  }
}

/** The output names a 'device-kv' session keeps on the device. */
export function deviceKvOutputs(config: ModelConfig): string[] {
  return Array.from({ length: config.numLayers }, (_, l) => [GRAPH_NAMES.presentKey(l), GRAPH_NAMES.presentValue(l)]).flat();
}
