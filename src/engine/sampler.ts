/**
 * Token sampling: greedy, temperature, top-k, top-p, with a seeded generator so a seed reproduces a
 * generation exactly.
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
}

export class Sampler {
  private readonly random: () => number;
  private readonly temperature: number;
  private readonly topK: number;
  private readonly topP: number;

  constructor(o: SamplingOptions = {}) {
    validateSampling(o);
    this.temperature = o.temperature ?? 0;
    this.topK = o.topK ?? 0;
    this.topP = o.topP ?? 1;
    this.random = createRng(o.seed ?? Math.floor(Math.random() * 2 ** 32)).next;
  }

  sample(logits: Float32Array): number {
    const best = argmax(logits);
    const max = logits[best];
    // NaN or infinite logits mean a broken forward pass (e.g. an overflowing injection): fail the
    // request with a code rather than emit garbage or spin in the nucleus search.
    if (!Number.isFinite(max)) throw lwError('LW_ERR_ENGINE_SESSION_FAILED', 'the forward pass produced non-finite logits');
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
