/**
 * Learning a Gaussian ensemble detector (the generic-injection kind: per member a Mahalanobis
 * distance of a layer's update or residual) from a stream of clean requests, keeping statistics,
 * never rows or text. The daemon drives it (src/daemon/learning.ts); the rules are the lab's
 * (fitGaussian's Ledoit–Wolf fit through probes/moments.ts, calibration through
 * probes/calibration.ts), so a learned file means what a lab file means.
 *
 * Two shares of requests, in the order they finish:
 * - the first `fitRequests` feed each member's moments (positions ≥ skip), and when the share is
 *   full each member's Gaussian is fitted from its moments (the candidate);
 * - the rest are scored by the candidate's members; only those per-position scores are kept, to
 *   calibrate the members (median, 99th percentile) and set the threshold at the target false-alert
 *   rate per request, as the lab's buildDetector does.
 * A request's rows stay in memory only until it is folded in (RequestRows): only numbers derived
 * from many rows (moments) or one number per position and member (scores) are kept or persisted.
 */
import { lwError } from '../errors.js';
import { parseResidPost } from '../hooks.js';
import type { AggregatorSpec } from './aggregators.js';
import { calibrate, ensembleFile, memberFile, NO_FIGURES, onsetFits, onsetScores, round, roundedGaussian, roundUp, setEnsembleThreshold, type CleanRequestScores, type MemberFit } from './calibration.js';
import { fitGaussianFromMoments, MomentAccumulator, momentLength } from './moments.js';
import { createProbe, type Probe, type TapTensor } from './probe.js';
import { hookList, mahalanobisBody, type ProbeFile, type WindowSpec } from './probe-file.js';
import { forEachFullWindowMean, novelPositions, SpreadMoments, windowSpec } from './window.js';

/** One member to learn: a single hook (its residual) or two (the update hook[1] − hook[0]). */
export interface LearnMember {
  readonly id: string;
  readonly hooks: readonly string[];
  readonly difference: boolean;
  /** A windowed member (probes/window.ts): its Gaussian is of window means, fitted from their moments. */
  readonly window?: WindowSpec;
  /** A per-token member scored at novel token pairs only (probe-file.ts, member `positions`). */
  readonly positions?: 'novel-bigram';
}

export interface LearnSpec {
  readonly probeId: string;
  readonly label: string;
  readonly modelFingerprint: string;
  readonly dModel: number;
  readonly aggregator: AggregatorSpec;
  readonly targetFpr: number;
  /** Requests in all; the first `fitRequests` of them feed the fit. */
  readonly requests: number;
  readonly fitRequests: number;
  readonly members: readonly LearnMember[];
  /** Positions of a request kept at most (later ones are neither fitted nor scored). */
  readonly maxPositions: number;
}

/** Positions skipped by an aggregator (and left out of the fit), as the lab's GENERIC_SKIP. */
export function skipOf(spec: Pick<LearnSpec, 'aggregator'>): number {
  return spec.aggregator.skip ?? 0;
}

/**
 * The members of a loaded probe that can be relearned: an ensemble-max of full-covariance
 * Mahalanobis members, each on one hook or on the difference of two. Anything else (a linear
 * member, a low-rank or diagonal Gaussian) is refused with LW_ERR_LEARN_UNSUPPORTED.
 *
 * Learned per-token members score novel token pairs only (`positions: 'novel-bigram'`), whatever
 * the loaded file did. Measured (issue 12): learned from 330 requests, the built-in model's
 * detector fired on "!?" × 150 (1.14 × its threshold) through layer 1's per-token update at a
 * repeated pair; learned so, junk fired 0 of 56 times over four runs per model (3 before) with the
 * same false alerts on new traffic and the same ×0.25/×0.5 sensitivity on both models. A learned
 * detector knows only the traffic's text and the junk baseline, not every kind of repetition the
 * shipped corpus's calibration covered.
 */
export function learnableMembers(file: ProbeFile): LearnMember[] {
  if (file.kind !== 'ensemble-max') throw lwError('LW_ERR_LEARN_UNSUPPORTED', `probe ${file.id} is ${file.kind}, not an ensemble of Gaussian members`, { probe: file.id });
  // Onset members are not fitted: finish() makes them anew from the windowed members it learns.
  return file.members.filter((m) => m.kind !== 'onset').map((m) => {
    if (m.kind !== 'mahalanobis' || m.gaussian.form !== 'cholesky') {
      throw lwError('LW_ERR_LEARN_UNSUPPORTED', `probe ${file.id}: member ${m.id} is not a full-covariance Gaussian`, { probe: file.id, member: m.id });
    }
    const hooks = [...hookList(m.hook)];
    const difference = m.input === 'difference';
    if (hooks.length !== (difference ? 2 : 1)) throw lwError('LW_ERR_LEARN_UNSUPPORTED', `probe ${file.id}: member ${m.id} reads ${hooks.length} hooks`, { probe: file.id, member: m.id });
    // A window's spread discount is relearned too (its presence is what carries over, not its values).
    if (!m.window) return { id: m.id, hooks, difference, positions: 'novel-bigram' as const };
    return { id: m.id, hooks, difference, window: { size: m.window.size, positions: m.window.positions, ...(m.window.minCount === undefined ? {} : { minCount: m.window.minCount }), ...(m.window.spread ? { spread: m.window.spread } : {}) } };
  });
}

/** Every hook the members read, each once. */
export function learnHooks(members: readonly LearnMember[]): string[] {
  return [...new Set(members.flatMap((m) => m.hooks))];
}

/** One request's tapped rows, held until the request ends (then folded in or dropped). */
export class RequestRows {
  positions = 0;
  /** Token id of each kept position (windowed members need them). */
  readonly ids: number[] = [];
  private readonly rows: Float32Array[][];

  constructor(
    readonly hooks: readonly string[],
    readonly dModel: number,
    readonly maxPositions: number,
  ) {
    this.rows = hooks.map(() => []);
  }

  /** The taps of one forward pass (a prompt or one generated position) and its positions' token ids. */
  observe(taps: ReadonlyMap<string, TapTensor>, tokenIds: ArrayLike<number>): void {
    const first = taps.get(this.hooks[0]);
    if (!first) return;
    const take = Math.min(first.positions, this.maxPositions - this.positions);
    if (take <= 0) return;
    if (tokenIds.length !== first.positions) throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `learning needs the token id of each of the ${first.positions} positions, got ${tokenIds.length}`);
    for (let p = 0; p < take; p++) this.ids.push(tokenIds[p]);
    const d = this.dModel;
    this.hooks.forEach((h, k) => {
      const t = taps.get(h);
      if (!t || t.dModel !== d || t.positions !== first.positions) throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `learning needs ${h} with ${first.positions}×${d} rows`);
      this.rows[k].push(t.data.slice(0, take * d));
    });
    this.positions += take;
  }

  /** Rows of hook k, [positions, d], contiguous. */
  hookRows(k: number): Float32Array {
    const parts = this.rows[k];
    if (parts.length === 1) return parts[0];
    const out = new Float32Array(this.positions * this.dModel);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    this.rows[k] = [out];
    return out;
  }
}

export type LearnPhase = 'fit' | 'calibrate' | 'complete';

/** The least share of the fit's positions the always-fitted baseline is weighed to (baselineWeight). */
export const BASELINE_FIT_SHARE = 0.25;

/**
 * The threshold at the target rate when the calibration share is too small to hold it. With n
 * clean requests and (n + 1) · targetFpr < 1 the conformal threshold (calibration.ts) is their
 * maximum, and a new request like them exceeds the maximum of n with probability 1 / (n + 1), not
 * targetFpr: 1.9% for the 53 calibration requests of a 132-request run (measured: 2 of 132 unseen
 * requests on the second architecture). The request score's tail is extrapolated instead: a request's score is a
 * maximum over positions, whose tail is exponential with the per-position aggregate's tail scale
 * (`perLog`, the length allowance's slope, fitted on thousands of positions), so the rate falls by
 * e per perLog above the maximum, and the threshold rises by perLog · ln(1 / ((n + 1) · targetFpr)).
 * Unchanged when the share holds the rate or there is no allowance (too few positions to say).
 */
export function smallShareThreshold(empirical: number, calibrationRequests: number, targetFpr: number, perLog: number | undefined): number {
  const shortfall = 1 / ((calibrationRequests + 1) * targetFpr);
  if (!(shortfall > 1) || perLog === undefined || !(perLog > 0)) return empirical;
  return roundUp(empirical + perLog * Math.log(shortfall)); // empirical already sits above its score (roundThreshold)
}

export interface LearnResult {
  file: ProbeFile;
  threshold: number;
  /** The threshold the calibration share gives alone (its maximum when it is too small: smallShareThreshold). */
  empiricalThreshold: number;
  achievedFpr: number;
  /** How many times each baseline position counted in the fit (DetectorLearner.baselineWeight). */
  baselineWeight: number;
  fitRequests: number;
  fitPositions: number;
  calibrationRequests: number;
  calibrationPositions: number;
}

/** The learning state: moments of the fit share, the candidate, the calibration share's scores. */
export class DetectorLearner {
  fitRequests = 0;
  fitPositions = 0;
  calibrationPositions = 0;
  /** Requests and positions of the always-fitted baseline (addBaseline): in the fit, not in the plan's counts. */
  baselineRequests = 0;
  baselinePositions = 0;
  readonly moments: MomentAccumulator[];
  /** Per member: the spread discount's sums (windowed members that have one), else null. */
  readonly spreads: (SpreadMoments | null)[];
  /** The baseline's moments and spread sums, apart: weighed into the fit (baselineWeight). */
  readonly baselineMoments: MomentAccumulator[];
  readonly baselineSpreads: (SpreadMoments | null)[];
  /** Per calibration request: one Float32Array of per-position scores per member. */
  readonly calibration: Float32Array[][] = [];
  private candidate: { fits: MemberFit[]; probes: Probe[] } | null = null;
  private readonly hookIndex: Map<string, number>;
  private readonly scratch: Float32Array;

  constructor(readonly spec: LearnSpec) {
    if (spec.fitRequests < 1 || spec.fitRequests >= spec.requests) throw lwError('LW_ERR_PROBE_FIT', `fit share ${spec.fitRequests} of ${spec.requests} requests leaves no calibration share`);
    this.moments = spec.members.map(() => new MomentAccumulator(spec.dModel));
    this.spreads = spec.members.map((m) => (m.window?.spread ? new SpreadMoments(spec.dModel) : null));
    this.baselineMoments = spec.members.map(() => new MomentAccumulator(spec.dModel));
    this.baselineSpreads = spec.members.map((m) => (m.window?.spread ? new SpreadMoments(spec.dModel) : null));
    this.hookIndex = new Map(learnHooks(spec.members).map((h, i) => [h, i]));
    this.scratch = new Float32Array(2 * spec.dModel);
  }

  get phase(): LearnPhase {
    if (this.fitRequests < this.spec.fitRequests) return 'fit';
    return this.calibration.length < this.spec.requests - this.spec.fitRequests ? 'calibrate' : 'complete';
  }

  get requestsSeen(): number {
    return this.fitRequests + this.calibration.length;
  }

  /** Fresh row buffers for a request (the hooks this learner reads). */
  newRequest(): RequestRows {
    return new RequestRows([...this.hookIndex.keys()], this.spec.dModel, this.spec.maxPositions);
  }

  /**
   * Fold one finished clean request in. Returns the share it went to; a request with no position
   * past `skip` counts for nothing ('empty'). Fits the candidate when the fit share fills.
   */
  add(r: RequestRows): 'fit' | 'calibrate' | 'empty' | 'complete' {
    const phase = this.phase;
    if (phase === 'complete') return 'complete';
    const skip = skipOf(this.spec);
    if (r.positions <= skip) return 'empty';
    if (phase === 'fit') {
      this.foldFit(r, this.moments, this.spreads);
      this.fitRequests++;
      this.fitPositions += r.positions - skip;
      return 'fit';
    }
    return this.foldCalibration(r);
  }

  /**
   * Fold a request of the always-fitted baseline (the shipped corpus's junk style: repeated and
   * random text that traffic seldom holds, which the fitted members must know so that junk raises no
   * alert) into the fit share's statistics, outside the plan's request counts. Only while fitting.
   */
  addBaseline(r: RequestRows): void {
    if (this.phase !== 'fit') throw lwError('LW_ERR_PROBE_FIT', 'the baseline folds into the fit share, which is already fitted');
    const skip = skipOf(this.spec);
    if (r.positions <= skip) return;
    this.foldFit(r, this.baselineMoments, this.baselineSpreads);
    this.baselineRequests++;
    this.baselinePositions += r.positions - skip;
  }

  /**
   * How many times each baseline position counts in the fit: enough for the baseline to be at least
   * BASELINE_FIT_SHARE of the fit's positions, never less than once. Folded once, its share falls as
   * the traffic grows, and junk fires again: on the built-in model, learned from 132 requests (the
   * baseline ~22% of the fit) 0–1 of 14 junk prompts fired, from 330 (~10%) 3 of 14.
   */
  get baselineWeight(): number {
    if (this.baselinePositions === 0 || this.fitPositions === 0) return 1;
    return Math.max(1, ((BASELINE_FIT_SHARE / (1 - BASELINE_FIT_SHARE)) * this.fitPositions) / this.baselinePositions);
  }

  private foldFit(r: RequestRows, moments: MomentAccumulator[], spreads: (SpreadMoments | null)[]): void {
    const skip = skipOf(this.spec);
    const d = this.spec.dModel;
    const novel = novelPositions(r.ids);
    this.spec.members.forEach((m, i) => {
      const a = r.hookRows(this.hookIndex.get(m.hooks[0])!);
      const b = m.difference ? r.hookRows(this.hookIndex.get(m.hooks[1])!) : null;
      const x = this.scratch;
      if (m.window) {
        // A windowed member fits the means of full windows of counted positions, as the lab does.
        const all = m.window.positions === 'all';
        const spread = spreads[i];
        forEachFullWindowMean(b ?? a, b ? a : null, (p) => all || novel[p] === 1, skip, r.positions, d, m.window.size, (mean, v) => {
          moments[i].add(mean, 0);
          if (spread) spread.addWindow(v!);
        }, spread !== null);
        spread?.addRows(b ?? a, b ? a : null, skip, r.positions);
        return;
      }
      for (let p = skip; p < r.positions; p++) {
        const o = p * d;
        // float32 differences, as the lab's anomalyRows forms them
        if (b) for (let j = 0; j < d; j++) x[j] = b[o + j] - a[o + j];
        moments[i].add(b ? x : a, b ? 0 : o);
      }
    });
  }

  private foldCalibration(r: RequestRows): 'calibrate' {
    this.calibration.push(this.memberScores(r));
    this.calibrationPositions += r.positions - skipOf(this.spec);
    return 'calibrate';
  }

  /** Per member, the per-position scores of a request by the fitted members (NaN where a novel-only member does not score). */
  private memberScores(r: RequestRows): Float32Array[] {
    const d = this.spec.dModel;
    const novel = novelPositions(r.ids);
    const probes = this.candidateProbes();
    return this.spec.members.map((m, i) => {
      const a = r.hookRows(this.hookIndex.get(m.hooks[0])!);
      const b = m.difference ? r.hookRows(this.hookIndex.get(m.hooks[1])!) : null;
      const out = new Float32Array(r.positions);
      const x = this.scratch;
      const score = probes[i].createScorer();
      const novelOnly = m.positions === 'novel-bigram';
      for (let p = 0; p < r.positions; p++) {
        const o = p * d;
        if (novelOnly && novel[p] !== 1) out[p] = Number.NaN;
        else if (b) {
          x.set(a.subarray(o, o + d), 0);
          x.set(b.subarray(o, o + d), d);
          out[p] = score(x, 0, novel[p] === 1);
        } else out[p] = score(a, o, novel[p] === 1);
      }
      return out;
    });
  }

  /** The fitted (uncalibrated) members; fitted on first use once the fit share is full. */
  members(): MemberFit[] {
    if (this.candidate) return this.candidate.fits;
    if (this.phase === 'fit') throw lwError('LW_ERR_PROBE_FIT', `the fit share has ${this.fitRequests} of ${this.spec.fitRequests} requests`);
    const w = this.baselineWeight;
    const fits: MemberFit[] = this.spec.members.map((m, i) => {
      const moments = this.baselineMoments[i].n > 0 ? this.moments[i].plus(this.baselineMoments[i], w) : this.moments[i];
      const own = this.spreads[i];
      const base = this.baselineSpreads[i];
      const spread = own && base ? own.plus(base, w) : own;
      if (moments.n < 2) throw lwError('LW_ERR_PROBE_FIT', `member ${m.id}: ${moments.n} positions to fit on`);
      const g = roundedGaussian(fitGaussianFromMoments(moments), 7);
      const window = m.window && windowSpec(m.window.size, spread, 7, m.window.positions, m.window.minCount);
      return { id: m.id, hook: [...m.hooks], ...(m.positions ? { positions: m.positions } : {}), body: mahalanobisBody(g, m.difference ? 'difference' : undefined, window) };
    });
    const meta = { modelFingerprint: this.spec.modelFingerprint, dModel: this.spec.dModel };
    this.candidate = { fits, probes: fits.map((f) => createProbe(memberFile(f, meta))) };
    return fits;
  }

  private candidateProbes(): Probe[] {
    this.members();
    return this.candidate!.probes;
  }

  /** Calibrate the members, set the threshold and write the file (the lab's buildDetector rules). */
  finish(extraDescription = ''): LearnResult {
    if (this.phase !== 'complete') throw lwError('LW_ERR_PROBE_FIT', `learning is not complete (${this.requestsSeen} of ${this.spec.requests} requests)`);
    const { spec } = this;
    const skip = skipOf(spec);
    const fits = this.members();
    const members = fits.map((m, i) => {
      const toks: number[] = [];
      // A novel-only member is calibrated on the positions it scores (NaN marks the others).
      const novelOnly = m.positions === 'novel-bigram';
      for (const req of this.calibration) for (let p = skip; p < req[i].length; p++) if (!(novelOnly && Number.isNaN(req[i][p]))) toks.push(req[i][p]);
      return { ...m, calibration: calibrate(toks) };
    });
    // The onset member (calibration.ts onsetFits): scored from its two members' scores, calibrated
    // on the same tokens, appended after the members it reads.
    const calibrationScores = this.calibration.map((req) => [...req] as ArrayLike<number>[]);
    const indexOf = new Map(members.map((m, i) => [m.id, i]));
    const onsets = onsetFits(members).map((o) => {
      const toks: number[] = [];
      for (const req of calibrationScores) {
        const x = onsetScores(o.body, req[indexOf.get(o.body.upper.member)!], req[indexOf.get(o.body.lower.member)!]);
        req.push(x);
        for (let p = skip; p < x.length; p++) toks.push(x[p]);
      }
      indexOf.set(o.id, indexOf.size);
      return { ...o, calibration: calibrate(toks) };
    });
    const all = [...members, ...onsets];
    const requestsOf = (subset: readonly (typeof all)[number][]): CleanRequestScores[] =>
      calibrationScores.map((scores) => {
        const tok = new Float64Array(scores[0].length).fill(-Infinity);
        for (const m of subset) {
          const inv = 1 / m.calibration.scale;
          const s = scores[indexOf.get(m.id)!];
          const novelOnly = 'positions' in m && m.positions === 'novel-bigram';
          for (let p = 0; p < s.length; p++) {
            // Where a novel-only member does not score it reports its clean median, 0 (probe.ts).
            const v = novelOnly && Number.isNaN(s[p]) ? 0 : (s[p] - m.calibration.center) * inv;
            if (v > tok[p] || Number.isNaN(v)) tok[p] = v;
          }
        }
        return { scores: tok, start: 0, population: 'traffic' };
      });
    // Each kind of member (per token, windowed, onset) weighed by its own tail, the length allowance and
    // the threshold: the lab's buildDetector rules (calibration.ts).
    const { members: balanced, aggregator, threshold: empirical, requestScores: req } = setEnsembleThreshold(all, requestsOf, spec.aggregator, spec.targetFpr);
    const threshold = smallShareThreshold(empirical, req.length, spec.targetFpr, aggregator.lengthAllowance?.perLog);
    const achievedFpr = req.filter((x) => x > threshold).length / req.length;
    const layers = [...new Set(spec.members.flatMap((m) => m.hooks.map(parseResidPost)))].sort((a, b) => a - b);
    const description =
      `Unsupervised anomaly detector learned from live clean traffic: Mahalanobis distance of each member's input (layer update or residual) from a Gaussian (Ledoit–Wolf shrunk full covariance, from sufficient statistics) fitted on ${this.fitRequests} clean requests (${this.fitPositions} positions), layers ${layers.join(', ')}; ` +
      `members calibrated to their clean median and 99th percentile, with an onset member at the deepest windowed layer (its calibrated score less the layer below's: an added vector moves its own layer, unusual text every layer), combined by max; a request's score is the maximum over positions of the running aggregate less a length allowance (aggregator.lengthAllowance); threshold at ${spec.targetFpr} FPR per request on ${this.calibration.length} other clean requests (${this.calibrationPositions} positions; achieved ${round(achievedFpr, 6)}${threshold !== empirical ? `; raised from their maximum ${empirical} by the tail's slope, too few requests to hold the rate` : ''})${this.baselineRequests > 0 ? `; the shipped corpus's always-fitted (junk) style folded into the fit (${this.baselineRequests} requests, ${this.baselinePositions} positions, each counted ${round(this.baselineWeight, 4)} times: at least ${BASELINE_FIT_SHARE * 100}% of the fit)` : ''}; positions 0–${skip - 1} not scored.${extraDescription}`;
    const file = ensembleFile(balanced, {
      id: spec.probeId,
      label: spec.label,
      description,
      modelFingerprint: spec.modelFingerprint,
      dModel: spec.dModel,
      targetFpr: spec.targetFpr,
      aggregator,
      training: { ...NO_FIGURES, trials: this.fitRequests },
      evaluation: { ...NO_FIGURES, trials: this.calibration.length, fprOnControls: { 'clean-traffic': achievedFpr } },
    }, threshold);
    return { file, threshold, empiricalThreshold: empirical, achievedFpr, baselineWeight: round(this.baselineWeight, 6), fitRequests: this.fitRequests, fitPositions: this.fitPositions, calibrationRequests: this.calibration.length, calibrationPositions: this.calibrationPositions };
  }

  // ---- persistence ------------------------------------------------------------------------------

  /** The moments and spread sums as the state file holds them: the traffic's, then the baseline's. */
  private statisticsBlocks(): [MomentAccumulator[], (SpreadMoments | null)[]][] {
    return [
      [this.moments, this.spreads],
      [this.baselineMoments, this.baselineSpreads],
    ];
  }

  /**
   * The state as bytes: a magic line, a JSON header line (the spec, counts, layout), then the
   * members' moments (float64) and the calibration scores (float32). Numbers only: no rows, no text.
   */
  serialize(extra: Record<string, unknown> = {}): Uint8Array {
    const d = this.spec.dModel;
    const header = {
      format: LEARN_STATE_FORMAT,
      ...extra,
      spec: this.spec,
      fitRequests: this.fitRequests,
      fitPositions: this.fitPositions,
      calibrationPositions: this.calibrationPositions,
      baselineRequests: this.baselineRequests,
      baselinePositions: this.baselinePositions,
      calibration: this.calibration.map((r) => r[0].length),
    };
    const head = Buffer.from(`${LEARN_STATE_MAGIC}\n${JSON.stringify(header)}\n`, 'utf8');
    // Traffic's moments and spread sums, then the baseline's, in the same layout.
    const sBytes = this.spreads.filter((x) => x !== null).length * SpreadMoments.length(d) * 8;
    const mBytes = 2 * (this.moments.length * momentLength(d) * 8 + sBytes);
    const cBytes = this.calibration.reduce((a, r) => a + r.length * r[0].length * 4, 0);
    const out = new Uint8Array(head.length + mBytes + cBytes);
    out.set(head, 0);
    let o = head.length;
    for (const [moments, spreads] of this.statisticsBlocks()) {
      for (const m of moments) {
        const a = m.toArray();
        out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), o);
        o += a.byteLength;
      }
      // The spread discounts' sums after the moments, for the windowed members that have one.
      for (const x of spreads) {
        if (!x) continue;
        const a = x.toArray();
        out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), o);
        o += a.byteLength;
      }
    }
    for (const r of this.calibration) {
      for (const s of r) {
        out.set(new Uint8Array(s.buffer, s.byteOffset, s.byteLength), o);
        o += s.byteLength;
      }
    }
    return out;
  }

  /**
   * Read a state written by serialize. Throws LW_ERR_LEARN_STATE_INVALID for anything malformed and
   * LW_ERR_LEARN_MODEL_MISMATCH when it was collected on another model than `expectedFingerprint`.
   */
  static deserialize(bytes: Uint8Array, expectedFingerprint: string, source = 'learning state'): { learner: DetectorLearner; header: Record<string, unknown> } {
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const nl1 = buf.indexOf(10);
    const nl2 = nl1 < 0 ? -1 : buf.indexOf(10, nl1 + 1);
    if (nl1 < 0 || nl2 < 0 || buf.subarray(0, nl1).toString('utf8') !== LEARN_STATE_MAGIC) throw bad(source, 'not a latentwatch learning state');
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(buf.subarray(nl1 + 1, nl2).toString('utf8')) as Record<string, unknown>;
    } catch (e) {
      throw bad(source, `header is not JSON: ${(e as Error).message}`);
    }
    const spec = header.spec as LearnSpec | undefined;
    // Format 1 (before the baseline was weighed) folded the baseline into the traffic's moments.
    const baselineApart = header.format === LEARN_STATE_FORMAT;
    if ((!baselineApart && header.format !== LEARN_STATE_FORMAT_1) || typeof spec !== 'object' || spec === null || typeof spec.modelFingerprint !== 'string') throw bad(source, 'unknown format');
    if (spec.modelFingerprint !== expectedFingerprint) {
      throw lwError('LW_ERR_LEARN_MODEL_MISMATCH', `${source}: collected on model ${spec.modelFingerprint}, the loaded model is ${expectedFingerprint}`, {
        stateModelFingerprint: spec.modelFingerprint,
        expectedModelFingerprint: expectedFingerprint,
      });
    }
    let learner: DetectorLearner;
    try {
      learner = new DetectorLearner(spec);
    } catch (e) {
      throw bad(source, (e as Error).message);
    }
    const cal = header.calibration;
    // States written before the baseline existed have no baseline counts: 0.
    header.baselineRequests ??= 0;
    header.baselinePositions ??= 0;
    const counts = [header.fitRequests, header.fitPositions, header.calibrationPositions, header.baselineRequests, header.baselinePositions];
    if (!Array.isArray(cal) || !cal.every((n) => Number.isInteger(n) && n > 0) || !counts.every((n) => Number.isInteger(n) && (n as number) >= 0)) throw bad(source, 'bad counts');
    const d = spec.dModel;
    const mLen = momentLength(d) * 8;
    const sLen = SpreadMoments.length(d) * 8;
    const need = nl2 + 1 + (baselineApart ? 2 : 1) * (spec.members.length * mLen + learner.spreads.filter((x) => x !== null).length * sLen) + (cal as number[]).reduce((a, n) => a + n * spec.members.length * 4, 0);
    if (buf.length !== need) throw bad(source, `expected ${need} bytes, found ${buf.length}`);
    // Copies (ArrayBuffer.slice), aligned for the typed arrays whatever the header's length.
    const copy = (from: number, bytes: number) => buf.buffer.slice(buf.byteOffset + from, buf.byteOffset + from + bytes);
    let o = nl2 + 1;
    for (const [moments, spreads] of learner.statisticsBlocks().slice(0, baselineApart ? 2 : 1)) {
      spec.members.forEach((_, i) => {
        moments[i] = MomentAccumulator.fromArray(d, new Float64Array(copy(o, mLen)));
        o += mLen;
      });
      spreads.forEach((x, i) => {
        if (!x) return;
        spreads[i] = SpreadMoments.fromArray(d, new Float64Array(copy(o, sLen)));
        o += sLen;
      });
    }
    for (const n of cal as number[]) {
      learner.calibration.push(
        spec.members.map(() => {
          const s = new Float32Array(copy(o, n * 4));
          o += n * 4;
          return s;
        }),
      );
    }
    learner.fitRequests = header.fitRequests as number;
    learner.fitPositions = header.fitPositions as number;
    learner.calibrationPositions = header.calibrationPositions as number;
    learner.baselineRequests = header.baselineRequests as number;
    learner.baselinePositions = header.baselinePositions as number;
    if (learner.fitRequests > spec.fitRequests || learner.calibration.length > spec.requests - spec.fitRequests) throw bad(source, 'more requests than the plan');
    return { learner, header };
  }
}

const LEARN_STATE_MAGIC = 'LWLEARN1';
const LEARN_STATE_FORMAT = 'latentwatch-learning-state/2';
const LEARN_STATE_FORMAT_1 = 'latentwatch-learning-state/1';

function bad(source: string, what: string) {
  return lwError('LW_ERR_LEARN_STATE_INVALID', `${source}: ${what}`);
}
