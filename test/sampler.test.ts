/** The sampler on its own: distributions, filters and broken inputs. */
import { describe, expect, it } from 'vitest';
import { Sampler, StopStringMatcher, argmax } from '../src/engine/sampler.js';

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
});
