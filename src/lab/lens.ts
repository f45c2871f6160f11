/**
 * Yes/no readouts: the answer-token probabilities after the answer prefix, read directly from the
 * model's logits, and the same read through every layer with the logit lens (the layer's residual
 * stream → final RMSNorm → the lm_head rows of the answer tokens). Only the answer rows of lm_head
 * are read, so the lens costs 2·(answer ids)·d per layer, whatever the vocabulary size. The lens
 * reports logits (logsumexp over the answer ids), not probabilities: a full softmax would need every
 * lm_head row at every layer.
 */
import type { Engine } from '../engine/engine.js';
import type { Tokenizer } from '../engine/tokenizer.js';
import { lwError } from '../errors.js';

export interface AnswerIds {
  yes: number[];
  no: number[];
}

/** Ids of the answer strings; each must be exactly one token (LW_ERR_TRIALS_ANSWER_TOKEN otherwise). */
export function answerTokenIds(tok: Tokenizer, answer: { yes: readonly string[]; no: readonly string[] }): AnswerIds {
  const one = (s: string, which: string): number => {
    const ids = tok.encode(s, { addSpecialTokens: false });
    if (ids.length !== 1) {
      throw lwError('LW_ERR_TRIALS_ANSWER_TOKEN', `answer.${which} ${JSON.stringify(s)} encodes to ${ids.length} tokens [${ids.join(', ')}]; pick strings that are one token (e.g. " True"/" False" for code models)`, { answer: s, ids });
    }
    return ids[0];
  };
  const yes = [...new Set(answer.yes.map((s) => one(s, 'yes')))];
  const no = [...new Set(answer.no.map((s) => one(s, 'no')))];
  const both = yes.filter((i) => no.includes(i));
  if (both.length > 0) throw lwError('LW_ERR_TRIALS_ANSWER_TOKEN', `token ${both[0]} is both a yes and a no answer`);
  return { yes, no };
}

export interface Readout {
  pYes: number;
  pNo: number;
  logitYes: number;
  logitNo: number;
}

function logSumExp(xs: readonly number[]): number {
  const m = Math.max(...xs);
  let s = 0;
  for (const x of xs) s += Math.exp(x - m);
  return m + Math.log(s);
}

/** Direct readout from one row of logits (full softmax, float64). */
export function readoutFromLogits(logits: Float32Array, ids: AnswerIds): Readout {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let z = 0;
  for (let i = 0; i < logits.length; i++) z += Math.exp(logits[i] - max);
  const p = (list: number[]) => list.reduce((a, i) => a + Math.exp(logits[i] - max) / z, 0);
  return {
    pYes: p(ids.yes),
    pNo: p(ids.no),
    logitYes: logSumExp(ids.yes.map((i) => logits[i])),
    logitNo: logSumExp(ids.no.map((i) => logits[i])),
  };
}

export class LogitLens {
  private readonly norm: Float32Array;
  private readonly eps: number;
  private readonly yesRows: Float32Array[];
  private readonly noRows: Float32Array[];

  constructor(
    engine: Engine,
    readonly ids: AnswerIds,
  ) {
    const ck = engine.checkpoint;
    this.norm = ck.read('model.norm.weight');
    this.eps = engine.config.rmsEps;
    this.yesRows = ck.readRows(ck.lmHeadName, ids.yes);
    this.noRows = ck.readRows(ck.lmHeadName, ids.no);
  }

  /** Lens logits (logsumexp over the answer ids) for one residual row `h` (d floats at `offset`). */
  read(h: Float32Array, offset = 0): { logitYes: number; logitNo: number } {
    const d = this.norm.length;
    let ss = 0;
    for (let i = 0; i < d; i++) ss += h[offset + i] * h[offset + i];
    const inv = 1 / Math.sqrt(ss / d + this.eps);
    const dot = (row: Float32Array) => {
      let s = 0;
      for (let i = 0; i < d; i++) s += h[offset + i] * inv * this.norm[i] * row[i];
      return s;
    };
    return { logitYes: logSumExp(this.yesRows.map(dot)), logitNo: logSumExp(this.noRows.map(dot)) };
  }
}
