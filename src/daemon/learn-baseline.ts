/**
 * Learn mode's always-fitted baseline (issue 12). A detector learned from live traffic knows only
 * what that traffic held: measured on the built-in model, one learned from 132 requests of real
 * files fired on 9 of 14 junk prompts and 16 of 35 held-out junk-style corpus requests, so any API
 * user could page the on-call team again. The shipped corpus marks the styles no fit may leave out
 * (`alwaysFitted`: the degenerate style of repeated and random text); learn mode runs their fit-split
 * requests through the served model itself, as the daemon runs a request, and folds them into the
 * fit share's statistics before traffic counts. They are shipped texts, not users' requests.
 *
 * Fit only, not calibration: scored as a calibration population of its own (the threshold holding
 * the target on junk too), the junk windows' tail set the windowed members' weight and the
 * threshold, and ×0.25 injections went from 96–100% flagged to none (built-in model, the same
 * 132 requests learned); fitted only, junk stayed quiet (0 of 14) and sensitivity was kept.
 */
import { corpusRequests, loadCorpus } from '../corpus.js';
import type { Engine } from '../engine/engine.js';
import { lwError } from '../errors.js';
import { learnHooks, type DetectorLearner } from '../probes/learn.js';

/** Folds the baseline into a learner that is still fitting; stops early when `signal` aborts. */
export type LearnBaseline = (learner: DetectorLearner, signal: AbortSignal) => Promise<void>;

/** The fit-split requests of the always-fitted styles of the corpus at `corpusPath`, through `engine`. */
export function alwaysFittedBaseline(engine: Engine, corpusPath: string): LearnBaseline {
  return async (learner, signal) => {
    const requests = corpusRequests(loadCorpus(corpusPath)).filter((r) => r.alwaysFitted && r.split === 'fit');
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
      if (!signal.aborted) learner.addBaseline(rows);
    }
  };
}
