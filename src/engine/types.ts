/**
 * The engine's public contract. The daemon and the probes depend on these types only,
 * never on onnxruntime (DESIGN.md: data moves one way).
 */

/** Where an injection vector is added, in positions of the whole sequence (prompt + generated). */
export type InjectionWindow =
  | { kind: 'prompt' } // every prompt position
  | { kind: 'generation' } // every generated position (the positions fed during decode)
  | { kind: 'all' }
  | { kind: 'range'; start: number; end?: number }; // positions start..end-1; no end: through generation

export interface Injection {
  /** Hook point to add into, e.g. `blocks.3.hook_resid_post`. */
  hook: string;
  /** d_model floats. */
  vector: Float32Array;
  scale: number;
  window: InjectionWindow;
}

export interface SamplingOptions {
  /** 0 = greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
}

export interface GenerateRequest {
  /** Token ids of the prompt (already templated). */
  promptIds: number[];
  maxTokens: number;
  sampling?: SamplingOptions;
  /** Extra stop token ids; the model's own EOS ids are added unless ignoreEos. */
  stopTokenIds?: number[];
  stopStrings?: string[];
  ignoreEos?: boolean;
  /** Hooks whose activations each step should carry; default: none. */
  taps?: string[];
  injections?: Injection[];
  /** Return the full logits row of each step. */
  returnLogits?: boolean;
  signal?: AbortSignal;
}

/** Activations for the positions processed in one forward pass: [positions, d_model] row-major. */
export interface TapValues {
  positions: number;
  dModel: number;
  data: Float32Array;
}

export interface Step {
  /** 'prompt' for the prefill pass (carries prompt taps, no token), 'token' for each generated token. */
  kind: 'prompt' | 'token';
  /** Generated token id (kind 'token'). */
  tokenId: number;
  /** Text this token completes (never half a UTF-8 character; may be ''). */
  text: string;
  /** Index of this position in the full sequence. */
  position: number;
  taps: Map<string, TapValues>;
  logits?: Float32Array;
  /** Set on the last step: why generation ended. */
  finishReason?: 'stop' | 'length';
}
