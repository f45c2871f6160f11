/**
 * Per-request monitor: probe scores per position → aggregator → alert rule → alerts → verdict.
 *
 * Feed it, in sequence order, the scores of every forward pass (prompt positions in one call,
 * then one call per generated token) and the generated text as it streams (`step()` does both for
 * an engine Step); call `finish()` when the request ends (stop, length, error or client gone).
 *
 * Alert rule, per probe (config.ts AlertRuleConfig; `score > threshold` fires, as the probes
 * module calibrates it):
 *   - the probe's aggregator turns each position's score into the aggregated score;
 *   - an episode begins when `minConsecutive` consecutive positions are above the threshold and
 *     ends at the first position that is not (NaN counts as not above);
 *   - one alert per episode, raised at the position where the episode begins, unless the probe is
 *     in cooldown: fewer than `cooldownTokens` positions or `cooldownSeconds` seconds since its
 *     last alert in this request. An episode that begins in cooldown raises its alert at the first
 *     position after the cooldown, if the episode is still going on.
 *   So a score that stays high raises one alert, not one per token; a flapping score raises at most
 *   one alert per cooldown.
 *
 * Verbalization: the generated text (never the prompt) verbalises the detection when it contains
 * one of the configured phrases, or, when known (admin injection, canary), a concept word as a
 * whole word (plural -s/-es accepted); case-insensitive, whitespace-normalised, across token
 * boundaries. It is monotonic: once verbalised, a request stays verbalised.
 *
 * When `silent` is decided (config `alerts.emit`):
 *   - 'immediate' (default): an alert is raised at the token where its rule fires, so a WebSocket
 *     subscriber learns of a detection within milliseconds of the forward pass that produced it
 *     (what a watcher needs to act, and what the alert-latency benchmark measures). The alert's
 *     `verbalized` and `silent` describe the text generated up to and including that token:
 *     `silent: true` reads "the model had not said so when its activations showed it". An alert
 *     raised during the prompt is therefore always silent. Verbalised is final (monotonic);
 *     silent is provisional. The verdict (response `latentwatch` object, trace event, and
 *     `latentwatch_latent_detections_total{verbalized}`) carries the end-of-request status, so
 *     "silent" in aggregate always means the whole response stayed silent.
 *   - 'settled': an alert whose text has not verbalised yet is held until the text verbalises
 *     (raised then, silent: false) or the request ends (raised then, silent: true), so every
 *     alert's `silent` is final, at the cost of silent alerts arriving at the end of the request.
 *     The alert keeps the time (`ts`), position and score of the detection.
 */
import { VerbalizationDetector } from '../probes/verbalization.js';
import type { AlertConcept, AlertDraft } from './alert-log.js';
import type { AlertEmitMode, Severity } from './config.js';

/** What the probes module's aggregators provide (src/probes/aggregators.ts satisfies it). */
export interface Aggregator {
  push(score: number): number;
}
export type AggregatorFactory = () => Aggregator;

export interface MonitoredProbe {
  id: string;
  label: string;
  createAggregator: AggregatorFactory;
}

export interface AlertRule {
  threshold: number;
  minConsecutive: number;
  cooldownTokens: number;
  cooldownSeconds: number;
  severity: Severity;
}

export interface MonitorOptions {
  requestId: string;
  model: string;
  /** Name of the key that made the request (auth.ts); every alert carries it. */
  tenant?: string;
  probes: readonly { probe: MonitoredProbe; rule: AlertRule }[];
  verbalization: { phrases: readonly string[]; matchConceptWord: boolean };
  /** Concept words of this request (the injected concept, the canary's concept). */
  conceptWords?: readonly string[];
  emit?: AlertEmitMode;
  /** Characters of generated text up to the alert in `textExcerpt` (default 200; 0 = none). */
  excerptChars?: number;
  /**
   * Append + fan out the alerts of one step, in order; returns their ids (alert-hub.ts
   * `raiseMany`). One call per step, so the log commits a token's alerts in one transaction.
   */
  raise: (drafts: readonly AlertDraft[]) => number[];
  /**
   * Names the closest stored concept of a detection of `probeId` at `position` (concept-naming.ts),
   * called once per alert (never per token); null: no clear match. Absent: alerts carry no `concept`.
   */
  nameConcept?: (probeId: string, position: number) => AlertConcept | null;
  /** Every aggregated score (metrics: latentwatch_probe_score). */
  onScore?: (probeId: string, score: number) => void;
  /** Clock in epoch ms (tests). */
  now?: () => number;
}

export interface ProbeVerdict {
  probeId: string;
  probeLabel: string;
  /** Highest aggregated score over the request; null if no position was scored. */
  maxScore: number | null;
  /** Aggregated score at the last scored position. */
  finalScore: number | null;
  threshold: number;
  /** The rule's condition held at least once (even if cooldown suppressed the alert). */
  fired: boolean;
  alertIds: number[];
  /** The generated text verbalised (end of request). */
  verbalized: boolean;
  /** fired && !verbalized, at the end of the request. */
  silent: boolean;
  /** Position where the rule first held. */
  firstFiredAt: number | null;
  /**
   * The first clear concept match among this probe's alerts in the request; null when none was
   * named (or no alert was raised); undefined when the monitor has no `nameConcept`.
   */
  closestConcept?: AlertConcept | null;
}

export interface RequestVerdict {
  requestId: string;
  model: string;
  verbalized: boolean;
  /** Position of the token that completed the verbalization. */
  verbalizedAt: number | null;
  probes: Record<string, ProbeVerdict>;
}

/** One forward pass's scores for one probe (the shape ProbeBank.score returns). */
export interface PositionScores {
  probeId: string;
  scores: ArrayLike<number>;
}

interface ProbeState {
  probe: MonitoredProbe;
  rule: AlertRule;
  agg: Aggregator;
  max: number;
  last: number;
  run: number;
  episodeAlerted: boolean;
  lastAlertPos: number;
  lastAlertMs: number;
  fired: boolean;
  firstFiredAt: number | null;
  alertIds: number[];
  held: AlertDraft[];
  concept: AlertConcept | null;
}

export class RequestMonitor {
  private readonly opts: MonitorOptions;
  private readonly states = new Map<string, ProbeState>();
  private readonly detector: VerbalizationDetector;
  private readonly now: () => number;
  private readonly excerptChars: number;
  private readonly emit: AlertEmitMode;
  private text = '';
  private position = -1;
  private verbalizedAt: number | null = null;
  private verdict: RequestVerdict | undefined;

  constructor(options: MonitorOptions) {
    this.opts = options;
    this.now = options.now ?? Date.now;
    this.excerptChars = options.excerptChars ?? 200;
    this.emit = options.emit ?? 'immediate';
    for (const { probe, rule } of options.probes) {
      this.states.set(probe.id, {
        probe,
        rule,
        agg: probe.createAggregator(),
        max: Number.NaN,
        last: Number.NaN,
        run: 0,
        episodeAlerted: false,
        lastAlertPos: Number.NEGATIVE_INFINITY,
        lastAlertMs: Number.NEGATIVE_INFINITY,
        fired: false,
        firstFiredAt: null,
        alertIds: [],
        held: [],
        concept: null,
      });
    }
    this.detector = new VerbalizationDetector(options.verbalization.phrases, options.verbalization.matchConceptWord ? (options.conceptWords ?? []) : []);
  }

  get verbalized(): boolean {
    return this.detector.verbalized;
  }

  /**
   * An engine step: its text first (the alert of a token sees the text through that token), then
   * its scores. `scores` holds the step's positions, ending at `step.position`.
   */
  step(step: { position: number; text: string }, scores: readonly PositionScores[]): number[] {
    if (step.text !== '') this.pushText(step.text, step.position);
    const n = scores.length > 0 ? scores[0].scores.length : 0;
    return this.observe(step.position - n + 1, scores);
  }

  /** Generated text as it streams (`position` = the token that completed it, for verbalizedAt). */
  pushText(text: string, position?: number): void {
    if (this.verdict) return;
    if (position !== undefined) this.position = Math.max(this.position, position);
    this.text += text;
    if (this.text.length > 8192) this.text = this.text.slice(-4096); // only excerpts need it
    const was = this.detector.verbalized;
    if (this.detector.push(text) && !was) {
      this.verbalizedAt = this.position >= 0 ? this.position : null;
      this.releaseHeld();
    }
  }

  /**
   * Scores of consecutive positions starting at `startPosition`, per probe (probes not monitored
   * are ignored). Returns the ids of alerts raised.
   */
  observe(startPosition: number, scores: readonly PositionScores[]): number[] {
    if (this.verdict) return [];
    const batch: { s: ProbeState; draft: AlertDraft }[] = [];
    for (const { probeId, scores: row } of scores) {
      const s = this.states.get(probeId);
      if (!s) continue;
      for (let i = 0; i < row.length; i++) {
        const draft = this.score(s, startPosition + i, row[i]);
        if (draft !== undefined) batch.push({ s, draft });
      }
    }
    const end = startPosition + (scores.length > 0 ? scores[0].scores.length : 0) - 1;
    this.position = Math.max(this.position, end);
    return this.raise(batch);
  }

  /** End of request: release held alerts (settled mode) and return the verdict. Idempotent. */
  finish(): RequestVerdict {
    if (this.verdict) return this.verdict;
    this.detector.finish();
    if (this.detector.verbalized && this.verbalizedAt === null) this.verbalizedAt = this.position >= 0 ? this.position : null;
    this.releaseHeld();
    const verbalized = this.detector.verbalized;
    const probes: Record<string, ProbeVerdict> = {};
    for (const [id, s] of this.states) {
      probes[id] = {
        probeId: id,
        probeLabel: s.probe.label,
        maxScore: Number.isNaN(s.max) ? null : s.max,
        finalScore: Number.isNaN(s.last) ? null : s.last,
        threshold: s.rule.threshold,
        fired: s.fired,
        alertIds: [...s.alertIds],
        verbalized,
        silent: s.fired && !verbalized,
        firstFiredAt: s.firstFiredAt,
      };
      if (this.opts.nameConcept) probes[id].closestConcept = s.concept;
    }
    this.verdict = { requestId: this.opts.requestId, model: this.opts.model, verbalized, verbalizedAt: this.verbalizedAt, probes };
    return this.verdict;
  }

  /** Feeds one score to the probe's rule; returns the alert to raise now, if any. */
  private score(s: ProbeState, pos: number, raw: number): AlertDraft | undefined {
    const v = s.agg.push(raw);
    this.opts.onScore?.(s.probe.id, v);
    if (!Number.isNaN(v)) {
      if (Number.isNaN(s.max) || v > s.max) s.max = v;
    }
    s.last = v;
    if (v > s.rule.threshold) s.run++;
    else {
      s.run = 0;
      s.episodeAlerted = false;
      return undefined;
    }
    if (s.run < s.rule.minConsecutive || s.episodeAlerted) return undefined;
    if (!s.fired) {
      s.fired = true;
      s.firstFiredAt = pos;
    }
    const nowMs = this.now();
    if (pos - s.lastAlertPos <= s.rule.cooldownTokens || nowMs - s.lastAlertMs < s.rule.cooldownSeconds * 1000) return undefined;
    s.episodeAlerted = true;
    s.lastAlertPos = pos;
    s.lastAlertMs = nowMs;
    const draft = this.draft(s, pos, v, nowMs);
    if (this.emit === 'settled' && !this.detector.verbalized) {
      s.held.push(draft);
      return undefined;
    }
    return draft;
  }

  private draft(s: ProbeState, pos: number, score: number, nowMs: number): AlertDraft {
    const verbalized = this.detector.verbalized;
    const d: AlertDraft = {
      ts: new Date(nowMs).toISOString(),
      requestId: this.opts.requestId,
      model: this.opts.model,
      probeId: s.probe.id,
      probeLabel: s.probe.label,
      severity: s.rule.severity,
      score,
      threshold: s.rule.threshold,
      tokenIndex: pos,
      silent: !verbalized,
      verbalized,
      kind: 'detection',
    };
    if (this.opts.tenant !== undefined) d.tenant = this.opts.tenant;
    if (this.opts.nameConcept) {
      const c = this.opts.nameConcept(s.probe.id, pos);
      d.concept = c;
      if (c !== null && s.concept === null) s.concept = c;
    }
    const excerpt = this.excerpt();
    if (excerpt !== undefined) d.textExcerpt = excerpt;
    return d;
  }

  private excerpt(): string | undefined {
    if (this.excerptChars <= 0 || this.text === '') return undefined;
    return this.text.length > this.excerptChars ? this.text.slice(-this.excerptChars) : this.text;
  }

  private raise(batch: readonly { s: ProbeState; draft: AlertDraft }[]): number[] {
    if (batch.length === 0) return [];
    const ids = this.opts.raise(batch.map((b) => b.draft));
    batch.forEach((b, i) => b.s.alertIds.push(ids[i]));
    return ids;
  }

  /** Settled mode: raise held alerts with the verbalization status now known. */
  private releaseHeld(): void {
    const verbalized = this.detector.verbalized;
    const excerpt = this.excerpt();
    const batch: { s: ProbeState; draft: AlertDraft }[] = [];
    for (const s of this.states.values()) {
      for (const d of s.held.splice(0)) {
        const draft: AlertDraft = { ...d, verbalized, silent: !verbalized };
        if (excerpt !== undefined) draft.textExcerpt = excerpt;
        batch.push({ s, draft });
      }
    }
    this.raise(batch);
  }
}
