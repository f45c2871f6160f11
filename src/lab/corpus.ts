/**
 * Running a clean-prompt corpus (src/corpus.ts: the format) through the engine: `runCorpus` runs
 * each request through `engine.generate` exactly as the daemon does (tokenizer encode with special
 * tokens, greedy or seeded sampling, the model's stop ids) and keeps the activations of every
 * position at the requested layers.
 */
import type { Corpus, CorpusRequest } from '../corpus.js';
import { corpusRequests } from '../corpus.js';
import type { Engine } from '../engine/engine.js';
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import { concat } from '../model/graph.js';

export * from '../corpus.js';

export interface CorpusRun extends CorpusRequest {
  /** Prompt tokens (positions 0..promptTokens−1); the rest are generated. */
  promptTokens: number;
  ids: number[];
  /** Per requested layer (CorpusActivations.layers order): [positions, dModel] row-major. */
  rows: Float32Array[];
}

export interface CorpusActivations {
  modelFingerprint: string;
  corpus: string;
  dModel: number;
  layers: number[];
  requests: CorpusRun[];
  /**
   * Requests whose prompt and generation do not fit the model's context: the daemon would refuse
   * them (LW_ERR_ENGINE_CONTEXT_LENGTH), so they are skipped and counted rather than failing the run.
   */
  skippedTooLong: { id: string; tokens: number }[];
}

/** Run every request of the corpus as the daemon would, keeping resid_post at `layers` for every position. */
export async function runCorpus(engine: Engine, corpus: Corpus, layers: readonly number[], progress?: (done: number, total: number, what: string) => void): Promise<CorpusActivations> {
  const tok = engine.tokenizer;
  if (!tok) throw lwError('LW_ERR_CORPUS_INVALID', `${engine.checkpoint.dir} has no tokenizer.json`);
  const hooks = layers.map(residPost);
  const d = engine.config.hiddenSize;
  const requests = corpusRequests(corpus);
  const out: CorpusRun[] = [];
  const skippedTooLong: CorpusActivations['skippedTooLong'] = [];
  for (const [k, req] of requests.entries()) {
    const promptIds = tok.encode(req.text);
    const maxTokens = req.maxTokens;
    if (promptIds.length + maxTokens > engine.contextLength) {
      skippedTooLong.push({ id: req.id, tokens: promptIds.length });
      progress?.(k + 1, requests.length, `${req.id} skipped: ${promptIds.length} tokens + ${maxTokens} exceed the context ${engine.contextLength}`);
      continue;
    }
    const parts: Float32Array[][] = hooks.map(() => []);
    const ids = [...promptIds];
    for await (const step of engine.generate({ promptIds, maxTokens, sampling: { temperature: req.temperature, seed: req.sampleSeed }, taps: hooks })) {
      if (step.kind === 'token') ids.push(step.tokenId);
      if (step.taps.size === 0) continue;
      hooks.forEach((h, i) => parts[i].push(step.taps.get(h)!.data.slice()));
    }
    const rows = parts.map((p) => concat(p));
    const positions = rows[0].length / d;
    out.push({ ...req, promptTokens: promptIds.length, ids: ids.slice(0, positions), rows });
    progress?.(k + 1, requests.length, req.id);
  }
  if (out.length === 0) throw lwError('LW_ERR_CORPUS_INVALID', `${corpus.name}: every request exceeds the context length ${engine.contextLength}`);
  return { modelFingerprint: engine.fingerprint, corpus: corpus.name, dModel: d, layers: [...layers], requests: out, skippedTooLong };
}
