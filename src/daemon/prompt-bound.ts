/**
 * Bounding a prompt's cost before it is tokenised. Tokenising runs on the event loop (1 MB of
 * text took 1.45 s on the development machine, stalling every stream meanwhile), so a prompt that
 * cannot fit the context is refused by its length alone.
 *
 * Why the bound is exact (never refuses a prompt that fits): every token stands for at most
 * `maxTokenBytes` bytes of UTF-8 (the longest vocabulary entry, special tokens included), and a
 * string's length in UTF-16 units never exceeds its UTF-8 byte count. So a text of more than
 * contextLength × maxTokenBytes characters encodes to more than contextLength tokens. Chat
 * templates only add text around the messages, so the messages' characters are a lower bound of
 * the rendered prompt's.
 */
import type { Tokenizer } from '../engine/tokenizer.js';
import type { Job } from './openai.js';

/** The most UTF-8 bytes any token of the vocabulary stands for (computed once, at start-up). */
export function maxTokenBytes(tok: Pick<Tokenizer, 'tokenBytes'>, vocabSize: number): number {
  let max = 1;
  for (let id = 0; id < vocabSize; id++) max = Math.max(max, tok.tokenBytes(id).length);
  return max;
}

/** Characters the prompt is at least (0 for token-id prompts, which are counted exactly anyway). */
export function promptCharsAtLeast(job: Pick<Job, 'kind' | 'messages' | 'prompt'>): number {
  if (job.kind === 'chat') return (job.messages ?? []).reduce((n, m) => n + (typeof m.content === 'string' ? m.content.length : 0), 0);
  return typeof job.prompt === 'string' ? job.prompt.length : 0;
}
