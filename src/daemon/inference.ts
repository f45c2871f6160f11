/**
 * One request through the model and the monitor: admission (concurrency and queue limits),
 * tokenisation, admin injection, generation with every loaded probe's hooks tapped, per-token
 * scores into the request monitor (alerts are raised before the token's text is released), and the
 * verdict, metrics and trace at the end.
 */
import { randomUUID } from 'node:crypto';
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import type { Engine } from '../engine/engine.js';
import type { GenerateRequest, Injection, Step } from '../engine/types.js';
import type { ProbeBank, Probe, TapTensor } from '../probes/probe.js';
import type { ConceptStore } from '../probes/concept-store.js';
import { ConceptMatchNamer, ConceptNamer, type Namer } from '../probes/concept-naming.js';
import type { AlertConcept } from './alert-log.js';
import type { AlertHub } from './alert-hub.js';
import { requireInjection, type Principal } from './auth.js';
import { ruleForProbe, type FrozenConfig } from './config.js';
import type { DaemonMetrics } from './metrics.js';
import { RequestMonitor, type RequestVerdict } from './monitor.js';
import { generateOptions, usage, type FinishReason, type Job, type Usage } from './openai.js';
import { maxTokenBytes, promptCharsAtLeast } from './prompt-bound.js';
import { startRequestSpan } from './tracing.js';
import type { LearnTap } from './learning.js';

export interface InferenceDeps {
  engine: Engine;
  bank: ProbeBank;
  config: FrozenConfig;
  hub: AlertHub;
  metrics: DaemonMetrics;
  concepts: ConceptStore | null;
  modelName: string;
  /** Learning from clean traffic (learning.ts); absent: nothing is learned. */
  learning?: { tap(): LearnTap | null };
}

/** The `latentwatch` object of a response. */
export interface VerdictBody {
  request_id: string;
  verbalized: boolean;
  /** Some probe fired and the text never said so. */
  silent: boolean;
  probes: {
    id: string;
    label: string;
    max_score: number | null;
    final_score: number | null;
    threshold: number;
    fired: boolean;
    /** Ids of this probe's alerts the alert store acknowledged (alert-store.ts). */
    alert_ids: number[];
    /** Alerts waiting in the local outbox for the shared stream (`serve --nats`, NATS unreachable): ids come when published. */
    alerts_queued?: number;
    verbalized: boolean;
    silent: boolean;
    /** The first clear concept match among this probe's alerts (concept-naming.ts); null: none. */
    closest_concept: AlertConcept | null;
  }[];
  injection?: { layer: number; scale: number; window: string; concept?: string };
}

export type InferenceEvent = { type: 'text'; text: string } | { type: 'done'; finishReason: FinishReason; usage: Usage; verdict: VerdictBody };

/**
 * Where a request's steps come from: the engine's generation (local serving), or proxy mode's
 * teacher-forced passes over an upstream's tokens (proxy.ts), which the monitor treats alike.
 */
export type StepSource = (req: GenerateRequest) => AsyncIterable<Step>;

export interface PreparedRequest {
  job: Job;
  requestId: string;
  promptIds: number[];
  maxTokens: number;
  injection?: Injection;
  injectionInfo?: VerdictBody['injection'];
  conceptWords: string[];
  /** The requesting key's name (auth.ts): its alerts carry it. */
  tenant: string;
  /**
   * A canary self-test: its detections are expected, so they raise no alerts and count in no
   * request or detection metric (the canary reports through its own metric and failure alert).
   */
  canary?: boolean;
}

export class InferenceService {
  private running = 0;
  private readonly waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private draining = false;
  /** Longest token in UTF-8 bytes (prompt-bound.ts); computed on the first request or by `warm()`. */
  private maxTokenBytes: number | undefined;
  /** Concept namer per loaded probe (a learned probe swapped in gets its own), made on its first alert. */
  private readonly namers = new WeakMap<Probe, Namer | null>();

  constructor(private readonly d: InferenceDeps) {}

  get load(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.waiters.length };
  }

  /** Work done once before serving (the prompt bound's vocabulary scan), so no request pays for it. */
  warm(): void {
    const tok = this.d.engine.tokenizer;
    if (tok) this.maxTokenBytes ??= maxTokenBytes(tok, this.d.engine.config.vocabSize);
  }

  /** Stop admitting; queued requests are refused with 503. */
  drain(): void {
    this.draining = true;
    for (const w of this.waiters.splice(0)) w.reject(lwError('LW_ERR_API_SHUTTING_DOWN'));
    this.publishLoad();
  }

  /** Validates and tokenises; every client error is thrown here, before any byte is streamed. */
  prepare(job: Job, principal: Principal, origin: 'client' | 'canary' = 'client'): PreparedRequest {
    const { engine, config } = this.d;
    if (job.model !== this.d.modelName) throw lwError('LW_ERR_API_MODEL_NOT_FOUND', `${job.model} (this daemon serves ${this.d.modelName})`, { param: 'model' });
    const tok = engine.tokenizer;
    if (!tok) throw lwError('LW_ERR_TOKENIZER_NOT_FOUND', 'the served model has no tokenizer');
    const promptParam = job.kind === 'chat' ? 'messages' : 'prompt';
    // Refuse a prompt too long for the context by its length, before tokenising it on the event loop (prompt-bound.ts).
    this.maxTokenBytes ??= maxTokenBytes(tok, engine.config.vocabSize);
    const chars = promptCharsAtLeast(job);
    if (chars > engine.contextLength * this.maxTokenBytes) {
      throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `the prompt has ${chars} characters, more than ${engine.contextLength} tokens of at most ${this.maxTokenBytes} bytes each (the context holds ${engine.contextLength})`, { param: promptParam });
    }
    let promptIds: number[];
    if (job.kind === 'chat') {
      promptIds = tok.encodeChat(job.messages ?? [], { addGenerationPrompt: true });
    } else if (Array.isArray(job.prompt)) {
      promptIds = job.prompt;
      const bad = promptIds.find((id) => id >= engine.config.vocabSize);
      if (bad !== undefined) throw lwError('LW_ERR_API_BAD_REQUEST', `token id ${bad} outside the vocabulary`, { param: 'prompt' });
    } else {
      promptIds = tok.encode(job.prompt ?? '');
    }
    if (promptIds.length === 0) throw lwError('LW_ERR_API_BAD_REQUEST', 'the prompt encodes to no tokens', { param: 'prompt' });
    const room = engine.contextLength - promptIds.length;
    if (room < 1) {
      throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `the prompt has ${promptIds.length} tokens; the context holds ${engine.contextLength}`, { param: promptParam });
    }
    if (job.maxTokens !== undefined && job.maxTokens > config.limits.maxTokens) {
      throw lwError('LW_ERR_API_MAX_TOKENS', `max_tokens ${job.maxTokens} > ${config.limits.maxTokens}`, { param: 'max_tokens' });
    }
    const maxTokens = job.maxTokens ?? Math.min(config.limits.maxTokens, room);
    if (promptIds.length + maxTokens > engine.contextLength) {
      throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `${promptIds.length} prompt tokens + max_tokens ${maxTokens} > context ${engine.contextLength}`, { param: 'max_tokens' });
    }
    const prepared: PreparedRequest = { job, requestId: randomUUID(), promptIds, maxTokens, conceptWords: [], tenant: principal.tenant };
    if (origin === 'canary') prepared.canary = true;
    if (job.inject) this.resolveInjection(prepared, principal);
    return prepared;
  }

  private resolveInjection(p: PreparedRequest, principal: Principal): void {
    const inj = p.job.inject!;
    // The canary is the daemon's own, enabled in its config: it needs neither key nor the switch.
    if (!p.canary) requireInjection(principal, this.d.config.allowInjection);
    const hook = residPost(inj.layer);
    if (!this.d.engine.ports.has(hook)) throw lwError('LW_ERR_API_BAD_REQUEST', `layer ${inj.layer} has no injection port (0..${this.d.engine.config.numLayers - 1})`, { param: 'latentwatch.inject.layer' });
    const scale = inj.scale ?? 1;
    const windowKind = inj.window ?? 'all';
    if ((inj.concept === undefined) === (inj.vector === undefined)) {
      throw lwError('LW_ERR_API_BAD_REQUEST', 'give exactly one of concept or vector', { param: 'latentwatch.inject' });
    }
    if (inj.vector !== undefined) {
      if (inj.vector.length !== this.d.engine.config.hiddenSize) {
        throw lwError('LW_ERR_API_BAD_REQUEST', `vector has ${inj.vector.length} values; d_model is ${this.d.engine.config.hiddenSize}`, { param: 'latentwatch.inject.vector' });
      }
    } else {
      const store = this.d.concepts;
      if (!store) throw lwError('LW_ERR_API_BAD_REQUEST', 'no concept vectors are stored for the served model', { param: 'latentwatch.inject.concept' });
      if (!store.has(inj.concept!)) throw lwError('LW_ERR_API_BAD_REQUEST', `unknown concept ${JSON.stringify(inj.concept)}`, { param: 'latentwatch.inject.concept' });
      // A concept's scale is relative to the layer's mean residual norm, as in the trials.
      const r = store.injection(inj.concept!, inj.layer, { mode: 'relative', value: scale });
      checkFinite(r.vector, r.scale);
      p.conceptWords.push(inj.concept!);
      p.injection = { hook, vector: r.vector, scale: r.scale, window: { kind: windowKind } };
      p.injectionInfo = { layer: inj.layer, scale, window: windowKind, concept: inj.concept! };
      return;
    }
    const vector = Float32Array.from(inj.vector!);
    checkFinite(vector, scale);
    p.injection = { hook, vector, scale, window: { kind: windowKind } };
    p.injectionInfo = { layer: inj.layer, scale, window: windowKind };
  }

  /** Waits for a generation slot; 429 when the queue is full, 503 when draining. */
  private async admit(signal: AbortSignal): Promise<void> {
    const { maxConcurrent, maxQueue } = this.d.config.limits;
    if (this.draining) throw lwError('LW_ERR_API_SHUTTING_DOWN');
    if (this.running < maxConcurrent) {
      this.running++;
      this.publishLoad();
      return;
    }
    if (this.waiters.length >= maxQueue) throw lwError('LW_ERR_API_QUEUE_FULL', `${this.running} running, ${this.waiters.length} queued`, { retryAfterSeconds: 1 });
    await new Promise<void>((resolve, reject) => {
      const w = {
        resolve: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
        reject,
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        this.publishLoad();
        reject(lwError('LW_ERR_ENGINE_ABORTED'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
      this.publishLoad();
    });
    this.running++;
    this.publishLoad();
  }

  private release(): void {
    this.running--;
    const next = this.waiters.shift();
    next?.resolve();
    this.publishLoad();
  }

  /**
   * The closest stored concept of a detection at `position`, from the taps of the forward pass that
   * raised it; null for a probe no rule can read (an update detector needs the concept store; a
   * concept-match probe carries its concepts), or below the floor.
   */
  private nameConcept(probe: Probe | undefined, taps: ReadonlyMap<string, TapTensor> | null, firstPosition: number, position: number): AlertConcept | null {
    const store = this.d.concepts;
    if (!probe || !taps) return null;
    let namer = this.namers.get(probe);
    if (namer === undefined) {
      namer = (store ? ConceptNamer.create(probe, store) : null) ?? ConceptMatchNamer.create(probe);
      this.namers.set(probe, namer);
    }
    const m = namer?.name(taps, firstPosition, position) ?? null;
    if (m === null) return null;
    const r4 = (x: number) => Math.round(x * 1e4) / 1e4;
    return { name: m.name, layer: m.layer, cosine: r4(m.cosine), margin: r4(m.margin) };
  }

  private publishLoad(): void {
    this.d.metrics.setQueue(this.d.modelName, this.running, this.waiters.length);
  }

  /** Runs a prepared request: text events as tokens pass the monitor, then one done event. */
  async *run(p: PreparedRequest, signal: AbortSignal, source: StepSource = (req) => this.d.engine.generate(req)): AsyncGenerator<InferenceEvent> {
    const arrival = performance.now();
    await this.admit(signal);
    const { config, metrics, hub } = this.d;
    // The probes this request started with, to its end, whatever a learned probe swaps in meanwhile.
    const bank = this.d.bank.snapshot();
    // Canary and injected requests are not clean traffic: never learned from.
    const learn = p.canary || p.injection !== undefined || p.job.inject !== undefined ? null : (this.d.learning?.tap() ?? null);
    const job = p.job;
    const trace = startRequestSpan({
      operation: job.kind === 'chat' ? 'chat' : 'text_completion',
      model: this.d.modelName,
      responseId: job.id,
      maxTokens: p.maxTokens,
      temperature: job.temperature,
      topP: job.topP,
      topK: job.topK,
      seed: job.seed,
      stream: job.stream,
    });
    // When the current step's forward pass returned (epoch µs, monotonic): live alerts carry it.
    let forwardAtUs = 0;
    // The current forward pass's taps and the absolute position of their first row (concept naming).
    let stepTaps: ReadonlyMap<string, TapTensor> | null = null;
    let stepFirst = 0;
    // The store gives ids asynchronously (a JetStream ack): the monitor holds placeholders (-1, -2, …)
    // that the verdict maps to the ids (0: queued in the outbox), and a token's text waits for its alerts.
    const raising: Promise<void>[] = [];
    const storedIds = new Map<number, number>();
    let placeholder = 0;
    const monitor = new RequestMonitor({
      requestId: p.requestId,
      model: this.d.modelName,
      tenant: p.tenant,
      probes: bank.probes.map((probe: Probe) => ({ probe, rule: ruleForProbe(config, probe.id, probe.threshold) })),
      verbalization: config.verbalization,
      conceptWords: p.conceptWords,
      emit: config.alerts.emit,
      excerptChars: config.alerts.excerptChars,
      raise: (drafts) => {
        if (p.canary) return drafts.map(() => 0);
        const marks = drafts.map(() => --placeholder);
        raising.push(
          hub.raiseMany(drafts, { forwardAtUs }).then((results) =>
            results.forEach((r, i) => {
              metrics.recordAlert(r.alert);
              storedIds.set(marks[i], r.alert.id);
            }),
          ),
        );
        return marks;
      },
      nameConcept: (probeId, position) => this.nameConcept(bank.probes.find((x) => x.id === probeId), stepTaps, stepFirst, position),
      onScore: (probeId, score) => {
        if (!p.canary) metrics.observeProbeScore(probeId, score);
      },
    });
    let generated = 0;
    let firstTokenAt: number | undefined;
    let lastTokenAt = 0;
    const gaps: number[] = [];
    let finishReason: FinishReason = 'length';
    let error: unknown;
    let verdict: VerdictBody | undefined;
    try {
      trace.startPrefill(p.promptIds.length);
      for await (const step of source({
        promptIds: p.promptIds,
        maxTokens: p.maxTokens,
        ...generateOptions(job),
        stopStrings: job.stop,
        taps: bank.hooks(),
        injections: p.injection ? [p.injection] : [],
        signal,
      })) {
        const scoringFrom = performance.now();
        forwardAtUs = Math.round((performance.timeOrigin + scoringFrom) * 1000);
        const stepIds = step.kind === 'prompt' ? p.promptIds : [step.tokenId];
        const scores = bank.score(step.taps, stepIds);
        stepTaps = step.taps;
        const firstTap = step.taps.values().next().value;
        stepFirst = firstTap === undefined ? step.position : step.position - firstTap.positions + 1;
        learn?.observe(step.taps, stepIds);
        job.extras?.record(step);
        if (step.kind === 'prompt') {
          monitor.step({ position: step.position, text: '' }, scores);
          if (raising.length > 0) await Promise.all(raising.splice(0));
          trace.endPrefill();
          trace.startDecode();
          continue;
        }
        monitor.step(step, scores);
        // An alert is stored (acknowledged) before the token that raised it is released.
        if (raising.length > 0) await Promise.all(raising.splice(0));
        const now = performance.now();
        if (!p.canary && bank.probes.length > 0) metrics.observeMonitorSeconds(this.d.modelName, (now - scoringFrom) / 1000);
        if (firstTokenAt === undefined) firstTokenAt = now;
        else gaps.push((now - lastTokenAt) / 1000);
        lastTokenAt = now;
        generated++;
        if (step.finishReason) finishReason = step.finishReason;
        if (step.text) yield { type: 'text', text: step.text };
      }
    } catch (e) {
      error = e;
      throw e;
    } finally {
      this.release();
      const final = monitor.finish();
      // Held alerts (settled mode) are raised by finish; a failed store write fails the request above.
      if (raising.length > 0) await Promise.allSettled(raising.splice(0));
      const queued = resolveAlertIds(final, storedIds);
      if (!p.canary) for (const v of Object.values(final.probes)) if (v.fired) metrics.recordDetection(v.probeId, v.verbalized);
      if (!p.canary) metrics.recordRequest({
        model: this.d.modelName,
        promptTokens: p.promptIds.length,
        generationTokens: generated,
        timeToFirstTokenSeconds: firstTokenAt === undefined ? undefined : (firstTokenAt - arrival) / 1000,
        interTokenLatenciesSeconds: gaps,
        e2eSeconds: (performance.now() - arrival) / 1000,
      });
      trace.endDecode(generated);
      trace.setUsage(p.promptIds.length, generated);
      trace.setFinishReasons([finishReason]);
      trace.recordVerdict(final);
      trace.end(error);
      verdict = verdictBody(final, p, queued);
    }
    // Only a request that completed counts (errors threw above; a cancelled one has its signal aborted).
    if (learn && !signal.aborted) learn.commit();
    yield { type: 'done', finishReason, usage: usage(p.promptIds.length, generated), verdict };
  }
}

/**
 * The engine adds `scale × vector` in float32. A value that overflows makes the residual stream
 * infinite and every logit NaN; refuse it as a client error before anything runs.
 */
function checkFinite(vector: Float32Array, scale: number): void {
  for (let i = 0; i < vector.length; i++) {
    if (!Number.isFinite(Math.fround(scale * vector[i]))) {
      throw lwError('LW_ERR_API_BAD_REQUEST', `scale × vector[${i}] overflows float32 (|value| must stay below 3.4e38)`, { param: 'latentwatch.inject.vector' });
    }
  }
}

/**
 * Replace the monitor's placeholders (negative) in the verdict by the store's ids; an alert queued in
 * the outbox (id 0) leaves alert_ids and is counted. Returns the count per probe.
 */
function resolveAlertIds(v: RequestVerdict, storedIds: ReadonlyMap<number, number>): Map<string, number> {
  const queued = new Map<string, number>();
  for (const x of Object.values(v.probes)) {
    const ids: number[] = [];
    for (const mark of x.alertIds) {
      const id = mark < 0 ? (storedIds.get(mark) ?? 0) : mark;
      if (mark < 0 && id === 0) queued.set(x.probeId, (queued.get(x.probeId) ?? 0) + 1);
      else ids.push(id);
    }
    x.alertIds = ids;
  }
  return queued;
}

function verdictBody(v: RequestVerdict, p: PreparedRequest, queuedByProbe: ReadonlyMap<string, number>): VerdictBody {
  const probes = Object.values(v.probes).map((x) => {
    const queued = queuedByProbe.get(x.probeId) ?? 0;
    return {
      id: x.probeId,
      label: x.probeLabel,
      max_score: x.maxScore,
      final_score: x.finalScore,
      threshold: x.threshold,
      fired: x.fired,
      alert_ids: x.alertIds,
      ...(queued > 0 ? { alerts_queued: queued } : {}),
      verbalized: x.verbalized,
      silent: x.silent,
      closest_concept: x.closestConcept ?? null,
    };
  });
  const body: VerdictBody = { request_id: v.requestId, verbalized: v.verbalized, silent: probes.some((x) => x.silent), probes };
  if (p.injectionInfo) body.injection = p.injectionInfo;
  return body;
}
