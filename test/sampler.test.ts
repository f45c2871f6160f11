/** The sampler on its own: distributions, filters and broken inputs. */
import { describe, expect, it } from 'vitest';
import { Sampler, StopStringMatcher, argmax, logprobsOf } from '../src/engine/sampler.js';

describe('Sampler', () => {
  it('greedy picks the largest logit; NaN or infinite logits are a coded error, never a hang', () => {
    expect(new Sampler().sample(Float32Array.from([0, 3, 1]))).toBe(1);
    for (const bad of [NaN, Infinity]) {
      expect(() => new Sampler().sample(Float32Array.from([0, bad, 1]))).toThrow(expect.objectContaining({ code: 'LW_ERR_ENGINE_SESSION_FAILED' }));
      expect(() => new Sampler({ temperature: 0.7, topP: 0.9, seed: 1 }).sample(Float32Array.from([0, bad, 1]))).toThrow(expect.objectContaining({ code: 'LW_ERR_ENGINE_SESSION_FAILED' }));
    }
    expect(argmax(Float32Array.from([5, NaN, 1]))).toBe(1);
  });

  it('top-k 1 and a tiny top-p reduce to greedy; frequencies follow the softmax', () => {
    const logits = Float32Array.from([1, 2, 0.5, 2.2]);
    for (let s = 0; s < 20; s++) {
      expect(new Sampler({ temperature: 1, topK: 1, seed: s }).sample(logits)).toBe(3);
      expect(new Sampler({ temperature: 1, topP: 0.01, seed: s }).sample(logits)).toBe(3);
    }
    const sampler = new Sampler({ temperature: 1, seed: 42 });
    const counts = [0, 0, 0, 0];
    const N = 20000;
    for (let i = 0; i < N; i++) counts[sampler.sample(logits)]++;
    const z = [...logits].reduce((a, l) => a + Math.exp(l), 0);
    // Binomial standard error at N=20000 is under 0.0036; allow 5 of them.
    counts.forEach((c, i) => expect(Math.abs(c / N - Math.exp(logits[i]) / z)).toBeLessThan(0.018));
  });

  it('top-p keeps the smallest most-probable set reaching p', () => {
    // probabilities ~ [0.5, 0.3, 0.2]: top_p 0.75 allows ids 0 and 1 only.
    const logits = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
    const sampler = new Sampler({ temperature: 1, topP: 0.75, seed: 3 });
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(sampler.sample(logits));
    expect([...seen].sort()).toEqual([0, 1]);
  });

  it('stop strings split across deltas are never half-emitted', () => {
    const m = new StopStringMatcher(['</end>']);
    const out = ['abc<', '/en', 'd>tail'].map((d) => m.push(d));
    expect(out.map((o) => o.text).join('')).toBe('abc');
    expect(out.at(-1)!.stopped).toBe(true);
    const m2 = new StopStringMatcher(['</end>']);
    expect(m2.push('a<').text).toBe('a');
    expect(m2.push('b').text).toBe('<b');
  });

  it('frequency penalty: count × penalty off each generated token, so greedy moves on from a repeated token', () => {
    // Logit gaps: id 0 leads id 1 by 1.0 and id 2 by 2.0.
    const logits = Float32Array.from([3, 2, 1]);
    const plain = new Sampler();
    expect([0, 1, 2, 3].map(() => plain.sample(logits))).toEqual([0, 0, 0, 0]);
    // 0.6 per pick: after one pick id 0 is at 2.4 (still first), after two at 1.8 (< 2): id 1 next.
    const freq = new Sampler({ frequencyPenalty: 0.6 });
    expect([0, 1, 2, 3].map(() => freq.sample(logits))).toEqual([0, 0, 1, 0]);
    // Presence: a flat 1.5 once a token has appeared; 0 → 1.5 < 2 → id 1; then id 1 at 0.5, id 0 at 1.5, id 2 at 1.
    const pres = new Sampler({ presencePenalty: 1.5 });
    expect([0, 1, 2, 3].map(() => pres.sample(logits))).toEqual([0, 1, 0, 0]);
    // Negative penalties reward repetition; 0 changes nothing.
    expect([0, 1, 2].map(() => new Sampler({ frequencyPenalty: -2 }).sample(logits))).toEqual([0, 0, 0]);
    const zero = new Sampler({ frequencyPenalty: 0, presencePenalty: 0, logitBias: new Map() });
    expect([0, 1, 2, 3].map(() => zero.sample(logits))).toEqual([0, 0, 0, 0]);
    // The caller's row is never modified.
    expect([...logits]).toEqual([3, 2, 1]);
  });

  it('logit bias moves a token; out-of-range penalties and biases are coded errors', () => {
    const logits = Float32Array.from([3, 2, 1]);
    expect(new Sampler({ logitBias: new Map([[2, 2.5]]) }).sample(logits)).toBe(2);
    expect(new Sampler({ logitBias: new Map([[0, -100]]) }).sample(logits)).toBe(1);
    for (const o of [{ frequencyPenalty: 2.5 }, { presencePenalty: -3 }, { frequencyPenalty: NaN }, { logitBias: new Map([[1, 101]]) }, { logitBias: new Map([[-1, 1]]) }]) {
      expect(() => new Sampler(o)).toThrow(expect.objectContaining({ code: 'LW_ERR_ENGINE_BAD_REQUEST' }));
    }
  });

  it('sampled with a seed, penalties still reproduce exactly', () => {
    const logits = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i));
    const draw = () => {
      const s = new Sampler({ temperature: 1, seed: 7, frequencyPenalty: 1, presencePenalty: 0.5 });
      return Array.from({ length: 40 }, () => s.sample(logits));
    };
    expect(draw()).toEqual(draw());
  });

  it('logprobsOf: log-softmax of the row, top k most probable first, ties by id', () => {
    const logits = Float32Array.from([1, 3, 3, -2, 0.5]);
    const z = Math.log([...logits].reduce((a, x) => a + Math.exp(x), 0));
    const r = logprobsOf(logits, 4, 3);
    // float64 arithmetic on float32 inputs: exact to rounding.
    expect(r.logprob).toBeCloseTo(0.5 - z, 12);
    expect(r.top.map((t) => t.tokenId)).toEqual([1, 2, 0]);
    r.top.forEach((t) => expect(t.logprob).toBeCloseTo(logits[t.tokenId] - z, 12));
    expect(logprobsOf(logits, 0, 0).top).toEqual([]);
    expect(logprobsOf(logits, 0, 10).top.map((t) => t.tokenId)).toEqual([1, 2, 0, 4, 3]);
  });
});
