/**
 * Incremental detokenization for streaming: one token id in, the text it completes out.
 *
 * Byte-level BPE tokens are byte strings, so a token can end in the middle of a UTF-8 character (an emoji
 * or a rare CJK character is often two or three tokens). Decoding such a prefix gives U+FFFD at the end.
 * The detokenizer holds those tokens back until the character is complete, so no delta ever carries half
 * a character, and the deltas concatenate to `decode(allIds)`.
 *
 * It keeps a small window instead of the whole sequence (the prefix/read offsets of Hugging Face's
 * TextStreamer and text-generation-inference's `decode_token`): the window holds the tokens already
 * emitted in the previous step (`prefix`, kept as context, since some decoders' output for a token
 * depends on what precedes it) and the tokens not yet emitted (`pending`). Each push decodes only the
 * window, so the cost per token is constant, not proportional to the length of the text.
 */

import type { DecodeOptions } from './tokenizer.js';

/** Decodes ids to text, e.g. `(ids) => tokenizer.decode(ids)`. */
export type DecodeFn = (ids: readonly number[]) => string;

/** Anything with a `decode(ids, opts)`: the engine's Tokenizer. */
export interface Decoder {
  decode(ids: readonly number[], opts?: DecodeOptions): string;
}

export interface StreamingDetokenizerOptions {
  /** Passed to `Decoder.decode` (ignored for a plain function). Default false. */
  skipSpecialTokens?: boolean;
  /**
   * Most tokens held back before the text is emitted as it stands. A valid UTF-8 character is at most
   * 4 bytes, so legitimate text completes a character within 4 tokens; more means invalid bytes (which
   * decode to U+FFFD for good) or many tokens that decode to nothing (skipped special tokens). The bound
   * keeps the window, and so the cost per token, constant whatever the model emits. Default 16.
   */
  maxPendingTokens?: number;
}

const REPLACEMENT = '\uFFFD';

export class StreamingDetokenizer {
  private readonly decodeIds: DecodeFn;
  private readonly maxPending: number;
  /** prefix ids (already emitted, kept as context) followed by pending ids. */
  private window: number[] = [];
  /** Number of prefix ids at the start of `window`. */
  private prefixLength = 0;
  /** decode(prefix), computed once per window shift. */
  private prefixText = '';

  constructor(source: Decoder | DecodeFn, opts: StreamingDetokenizerOptions = {}) {
    const skipSpecialTokens = opts.skipSpecialTokens ?? false;
    this.decodeIds = typeof source === 'function' ? source : (ids) => source.decode(ids, { skipSpecialTokens });
    this.maxPending = opts.maxPendingTokens ?? 16;
  }

  /** Adds one token; returns the text it completes ('' while a character is still incomplete). */
  push(id: number): string {
    this.window.push(id);
    const text = this.decodeIds(this.window);
    const pendingFull = this.window.length - this.prefixLength >= this.maxPending;
    if (text.endsWith(REPLACEMENT)) {
      if (!pendingFull) return '';
      // Invalid bytes: give the text as it stands and start a fresh window, since a prefix that ends
      // inside a character would throw off the length of the next delta.
      const delta = text.slice(this.prefixText.length);
      this.reset();
      return delta;
    }
    return text.length > this.prefixText.length || pendingFull ? this.emit(text) : '';
  }

  /** Returns whatever is still held back (an incomplete character decodes to U+FFFD) and starts afresh. */
  flush(): string {
    const rest = this.window.length > this.prefixLength ? this.decodeIds(this.window).slice(this.prefixText.length) : '';
    this.reset();
    return rest;
  }

  private reset(): void {
    this.window = [];
    this.prefixLength = 0;
    this.prefixText = '';
  }

  /** Emits the text after the prefix; the pending ids become the next prefix. */
  private emit(text: string): string {
    const delta = text.slice(this.prefixText.length);
    this.window = this.window.slice(this.prefixLength);
    this.prefixLength = this.window.length;
    this.prefixText = this.decodeIds(this.window);
    return delta;
  }
}
