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
  /** OpenAI's penalties over the generated tokens, in [-2, 2]; 0 (default) changes nothing. */
  frequencyPenalty?: number;
  presencePenalty?: number;
  /** Added to a token id's logit before sampling, each in [-100, 100]. */
  logitBias?: ReadonlyMap<number, number>;
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
  /**
   * Give each generated token (stop tokens excepted) a `logprob` with this many alternatives
   * (0..20); absent: none.
   */
  logprobs?: number;
  /** Give the prompt step `promptLogprobs` with this many alternatives (logits at every prompt position). */
  promptLogprobs?: number;
  /** Give the prompt step the prompt's text (decoded, special tokens kept). */
  promptText?: boolean;
  signal?: AbortSignal;
}

/** One token with its log-probability, as the API reports it. */
export interface TokenAlternative {
  tokenId: number;
  /** The token's own text (U+FFFD where it holds part of a UTF-8 character). */
  token: string;
  /** The token's bytes. */
  bytes: number[];
  logprob: number;
}

/**
 * A token's log-probability under the model's distribution at its position: log-softmax of the raw
 * logits, before logit bias, penalties, temperature, top-k and top-p (what OpenAI reports).
 */
export interface TokenLogprob extends TokenAlternative {
  /** The most probable tokens at that position, most probable first. */
  top: TokenAlternative[];
}

/** A prompt token's log-probability given the tokens before it: null for the first (nothing precedes it; `top` is then empty). */
export interface PromptTokenLogprob extends Omit<TokenLogprob, 'logprob'> {
  logprob: number | null;
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
  /** Text this token completes (never half a UTF-8 character; may be ''); the prompt step: the prompt's text when `promptText`. */
  text: string;
  /** Index of this position in the full sequence. */
  position: number;
  taps: Map<string, TapValues>;
  logits?: Float32Array;
  /** Kind 'token', when `logprobs` was asked for and the token is not a stop token. */
  logprob?: TokenLogprob;
  /** Kind 'prompt', when `promptLogprobs` was asked for: one per prompt token. */
  promptLogprobs?: PromptTokenLogprob[];
  /** Set on the last step: why generation ended. */
  finishReason?: 'stop' | 'length';
}
