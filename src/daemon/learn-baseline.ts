/**
 * Learn mode's always-fitted baseline (issue 12). A detector learned from live traffic knows only
 * what that traffic held: measured on the built-in model, one learned from 132 requests of real
 * files fired on 9 of 14 junk prompts and 16 of 35 held-out junk-style corpus requests, so any API
 * user could page the on-call team again. The shipped corpus marks the styles no fit may leave out
 * (`alwaysFitted`: the degenerate style of repeated and random text); learn mode runs their fit-split
 * requests through the served model itself, as the daemon runs a request: a hashed share folds into
 * the fit share's statistics before traffic counts, the rest is scored after the fit as a
 * calibration population of its own (the lab splits its corpus the same way). They are shipped
 * texts, not users' requests.
 */
import { corpusRequests, loadCorpus, type CorpusRequest } from '../corpus.js';
import type { Engine } from '../engine/engine.js';
import { lwError } from '../errors.js';
import { learnHooks, type DetectorLearner, type RequestRows } from '../probes/learn.js';
import { hashUnit } from '../rng.js';

export interface LearnBaseline {
  /** Fold the fit part into a learner that is still fitting. */
  fit(learner: DetectorLearner, signal: AbortSignal): Promise<void>;
  /** Score the calibration part with the learner's fitted members. */
  calibrate(learner: DetectorLearner, signal: AbortSignal): Promise<void>;
}

/** The fit-split requests of the corpus's always-fitted styles, through `engine`; `calibrationFraction` of them calibrate. */
export function alwaysFittedBaseline(engine: Engine, corpusPath: string, calibrationFraction: number): LearnBaseline {
  let parts: { fit: CorpusRequest[]; calibrate: CorpusRequest[] } | null = null;
  const split = () => {
    if (parts) return parts;
    const all = corpusRequests(loadCorpus(corpusPath)).filter((r) => r.alwaysFitted && r.split === 'fit');
    const calibrates = (r: CorpusRequest) => hashUnit(`learn-baseline|${r.id}`) < calibrationFraction;
    return (parts = { fit: all.filter((r) => !calibrates(r)), calibrate: all.filter(calibrates) });
  };
  const run = async (requests: readonly CorpusRequest[], learner: DetectorLearner, signal: AbortSignal, fold: (rows: RequestRows) => void) => {
    const tokenizer = engine.tokenizer;
    if (!tokenizer) throw lwError('LW_ERR_PROBE_FIT', `${engine.checkpoint.dir} has no tokenizer.json: the learn baseline cannot be tokenised`);
    const taps = learnHooks(learner.spec.members);
    for (const req of requests) {
      if (signal.aborted) return;
      const promptIds = tokenizer.encode(req.text);
      if (promptIds.length + req.maxTokens > engine.contextLength) continue; // the daemon would refuse it too
      const rows = learner.newRequest();
      const sampling = { temperature: req.temperature, seed: req.sampleSeed };
      for await (const step of engine.generate({ promptIds, maxTokens: req.maxTokens, sampling, taps, signal })) {
        // The ids beside each pass's taps, as inference.ts hands them to a learn tap.
        rows.observe(step.taps, step.kind === 'prompt' ? promptIds : [step.tokenId]);
      }
      if (!signal.aborted) fold(rows);
    }
  };
  return {
    fit: (learner, signal) => run(split().fit, learner, signal, (rows) => learner.addBaseline(rows)),
    calibrate: (learner, signal) => run(split().calibrate, learner, signal, (rows) => learner.addBaselineCalibration(rows)),
  };
}
