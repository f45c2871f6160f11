/**
 * Token sampling: greedy, temperature, top-k, top-p, logit bias and OpenAI's frequency and presence
 * penalties, with a seeded generator so a seed reproduces a generation exactly. Also the log-softmax
 * behind logprobs.
 */
import { lwError } from '../errors.js';
import { createRng } from '../rng.js';
import type { SamplingOptions } from './types.js';

export function validateSampling(o: SamplingOptions): void {
  const bad = (why: string) => {
    throw lwError('LW_ERR_ENGINE_BAD_REQUEST', why);
  };
  if (o.temperature !== undefined && !(o.temperature >= 0 && o.temperature <= 100)) bad('temperature must be in [0, 100]');
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) bad('top_p must be in (0, 1]');
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) bad('top_k must be a non-negative integer');
  if (o.seed !== undefined && !Number.isInteger(o.seed)) bad('seed must be an integer');
  for (const [name, v] of [['frequency_penalty', o.frequencyPenalty], ['presence_penalty', o.presencePenalty]] as const) {
    if (v !== undefined && !(v >= -2 && v <= 2)) bad(`${name} must be in [-2, 2]`);
  }
  for (const [id, b] of o.logitBias ?? []) {
    if (!(Number.isInteger(id) && id >= 0)) bad(`logit_bias key ${id} is not a token id`);
    if (!(b >= -100 && b <= 100)) bad(`logit_bias value for ${id} must be in [-100, 100]`);
  }
}

export class Sampler {
  private readonly random: () => number;
  private readonly temperature: number;
  private readonly topK: number;
  private readonly topP: number;
  private readonly frequencyPenalty: number;
  private readonly presencePenalty: number;
  private readonly logitBias: ReadonlyMap<number, number>;
  /** How often each token id has been sampled so far (the generated tokens), for the penalties. */
  private readonly counts = new Map<number, number>();

  constructor(o: SamplingOptions = {}) {
    validateSampling(o);
    this.temperature = o.temperature ?? 0;
    this.topK = o.topK ?? 0;
    this.topP = o.topP ?? 1;
    this.frequencyPenalty = o.frequencyPenalty ?? 0;
    this.presencePenalty = o.presencePenalty ?? 0;
    this.logitBias = new Map([...(o.logitBias ?? [])].filter(([, b]) => b !== 0));
    this.random = createRng(o.seed ?? Math.floor(Math.random() * 2 ** 32)).next;
  }

  /**
   * Whether the pick is the argmax of the model's own logits (temperature 0, no bias, no penalties):
   * then the graph's greedy output (graph.ts GRAPH_NAMES.greedy) may stand in for the logits row.
   */
  get greedy(): boolean {
    return this.temperature === 0 && this.logitBias.size === 0 && this.frequencyPenalty === 0 && this.presencePenalty === 0;
  }

  /** Samples the next token and counts it as generated (the penalties look at every earlier pick). */
  sample(raw: Float32Array): number {
    return this.count(this.pick(this.adjust(raw)));
  }

  /**
   * The token of a greedy sampler from the graph's argmax and its logit, for a pass that brought no
   * logits back: what sample() picks from the whole row (the same non-finite check).
   */
  sampleGreedy(choice: GreedyChoice): number {
    if (!this.greedy) throw lwError('LW_ERR_ENGINE_BAD_REQUEST', 'the graph’s greedy choice stands in only for a greedy sampler');
    checkFinite(choice.logit);
    return this.count(choice.tokenId);
  }

  private count(token: number): number {
    this.counts.set(token, (this.counts.get(token) ?? 0) + 1);
    return token;
  }

  /**
   * The logits after logit bias and OpenAI's penalties, `logit[j] += bias[j] - count[j] ×
   * frequency_penalty - (count[j] > 0) × presence_penalty`, applied before temperature as OpenAI
   * documents. A copy when anything changes: the caller's row stays the model's own.
   */
  private adjust(raw: Float32Array): Float32Array {
    const penalise = (this.frequencyPenalty !== 0 || this.presencePenalty !== 0) && this.counts.size > 0;
    if (!penalise && this.logitBias.size === 0) return raw;
    const logits = Float32Array.from(raw);
    for (const [id, b] of this.logitBias) if (id < logits.length) logits[id] += b;
    if (penalise) for (const [id, c] of this.counts) logits[id] -= c * this.frequencyPenalty + this.presencePenalty;
    return logits;
  }

  private pick(logits: Float32Array): number {
    const best = argmax(logits);
    const max = logits[best];
    checkFinite(max);
    if (this.temperature === 0) return best;
    const n = logits.length;
    const inv = 1 / this.temperature;
    const probs = new Float32Array(n);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += probs[i] = Math.exp((logits[i] - max) * inv);
    if (!Number.isFinite(sum) || sum <= 0) return best;
    for (let i = 0; i < n; i++) probs[i] /= sum;
    const candidates = this.candidates(probs);
    let total = 0;
    for (const i of candidates) total += probs[i];
    let r = this.random() * total;
    for (const i of candidates) {
      r -= probs[i];
      if (r <= 0) return i;
    }
    return candidates[candidates.length - 1];
  }

  /**
   * Token ids allowed by top-k and top-p, most probable first. Sorting the whole vocabulary each
   * step is slow (150k ids), so only ids above a falling probability floor are sorted: every id of
   * the nucleus is at least as probable as the floor once the ids above it hold top_p of the mass.
   */
  private candidates(probs: Float32Array): number[] {
    const n = probs.length;
    const limitK = this.topK > 0 ? Math.min(this.topK, n) : n;
    let floor = probs[argmax(probs)] / 64;
    let ids: number[] = [];
    for (;;) {
      ids = [];
      let mass = 0;
      for (let i = 0; i < n; i++) {
        if (probs[i] >= floor) {
          ids.push(i);
          mass += probs[i];
        }
      }
      if ((mass >= this.topP && ids.length >= limitK) || floor === 0 || ids.length === n) break;
      floor = floor < 1e-30 ? 0 : floor / 64;
    }
    ids.sort((a, b) => probs[b] - probs[a] || a - b);
    ids = ids.slice(0, limitK);
    if (this.topP < 1) {
      let cum = 0;
      for (let j = 0; j < ids.length; j++) {
        cum += probs[ids[j]];
        if (cum >= this.topP) return ids.slice(0, j + 1);
      }
    }
    return ids;
  }
}

/** The argmax of a logits row and its logit (the graph's greedy output). */
export interface GreedyChoice {
  tokenId: number;
  logit: number;
}

/**
 * NaN or infinite logits (the row's largest) mean a broken forward pass (e.g. an overflowing
 * injection): fail the request with a code rather than emit garbage or spin in the nucleus search.
 */
function checkFinite(maxLogit: number): void {
  if (!Number.isFinite(maxLogit)) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', 'the forward pass produced non-finite logits');
}

export interface Logprob {
  tokenId: number;
  logprob: number;
}

/**
 * Log-softmax of a logits row, in float64: the chosen token's log-probability and the `k` most
 * probable tokens (most probable first; ties by lower id). Callers pass the model's own logits.
 */
export function logprobsOf(logits: Float32Array, tokenId: number, k: number): { logprob: number; top: Logprob[] } {
  const max = logits[argmax(logits)];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  // Top k by insertion into a short sorted list: k is at most 20, the row up to ~150k ids.
  const top: number[] = [];
  const before = (a: number, b: number) => logits[a] > logits[b] || (logits[a] === logits[b] && a < b);
  if (k > 0) {
    for (let i = 0; i < logits.length; i++) {
      if (top.length === k && !before(i, top[k - 1])) continue;
      let j = Math.min(top.length, k - 1);
      top[j] = i;
      while (j > 0 && before(i, top[j - 1])) {
        top[j] = top[j - 1];
        top[--j] = i;
      }
    }
  }
  return { logprob: logits[tokenId] - lse, top: top.map((id) => ({ tokenId: id, logprob: logits[id] - lse })) };
}

/** Index of the largest value; a NaN anywhere wins, so callers see it. */
export function argmax(a: Float32Array): number {
  let best = 0;
  let bv = a[0];
  for (let i = 1; i < a.length; i++) {
    if (a[i] > bv || (a[i] !== a[i] && bv === bv)) {
      bv = a[i];
      best = i;
    }
  }
  return best;
}

/**
 * Holds back streamed text that could be the start of a stop string, so a stop string split across
 * tokens is never half-emitted.
 */
export class StopStringMatcher {
  private pending = '';
  constructor(private readonly stops: readonly string[]) {}

  /** Returns the text safe to emit and whether a stop string was hit (text after it is dropped). */
  push(delta: string): { text: string; stopped: boolean } {
    if (this.stops.length === 0) return { text: delta, stopped: false };
    this.pending += delta;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      const text = this.pending.slice(0, cut);
      this.pending = '';
      return { text, stopped: true };
    }
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.pending.length); k > hold; k--) {
        if (this.pending.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    const text = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text, stopped: false };
  }

  flush(): string {
    const t = this.pending;
    this.pending = '';
    return t;
  }
}
