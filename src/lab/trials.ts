/**
 * The trial runner: concept-injection trials (and their controls) on a loaded engine, streamed to a
 * dataset directory (dataset.ts).
 *
 * A trial's sequence is   [context | question | answer prefix | generated]   (absolute positions
 * a = |context|, c = a + |question| + |prefix|, d = c + generated). Protocols differ only in the
 * injection window:
 *   inject-then-ask  [0, a)      the first turn is prefilled with the vector added, then the
 *                                question and prefix are fed WITHOUT any port input: only the
 *                                perturbed KV cache carries the injection (Vogel)
 *   continuous       [a − 1, ∞)  from the token before the question through generation (Lindsey)
 *   generation-only  [c, ∞)      control: generated tokens only (the readout is clean)
 * The readout is P(yes)/P(no) at position c − 1 (after the prefix), directly and by logit lens at
 * every layer; then tokens are generated (greedy by default) and checked for verbalisation.
 * The trace stored per trial is resid_post at the traced layers for positions
 * [max(0, a − contextPositions), d): the tail of the context (inside a first-turn window) and
 * everything after it.
 */
import type { Engine } from '../engine/engine.js';
import type { Tokenizer } from '../engine/tokenizer.js';
import { Sampler } from '../engine/sampler.js';
import type { Injection, SamplingOptions } from '../engine/types.js';
import { lwError } from '../errors.js';
import { residPost } from '../hooks.js';
import { concat } from '../model/graph.js';
import { ConceptStore, scaleVector } from '../probes/concept-store.js';
import { verbalizes } from '../probes/verbalization.js';
import { useChatTemplate } from './concepts.js';
import { CONTROL_CONDITIONS, DatasetWriter, encodeRows, sha256, type Condition, type DatasetManifest, type TrialRecord, type WindowKind } from './dataset.js';
import { answerTokenIds, LogitLens, readoutFromLogits, type AnswerIds, type Readout } from './lens.js';
import { createRng, hash32, hashUnit, shuffled } from '../rng.js';
import { fillTemplate, resolveLayers, type Protocol, type QuestionSpec, type TrialConfig } from './trial-config.js';
import { createFamily, randomFamily, type VectorFamily } from './trial-families.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export { CONTROL_CONDITIONS };

// ---- one trial, at the token level ------------------------------------------------------------

export interface PromptSegments {
  context: number[];
  question: number[];
  prefix: number[];
}

export interface TrialSpec {
  segments: PromptSegments;
  /** The protocol's window (applied only when `injection` is set). */
  window: WindowKind;
  injection: { layer: number; vector: Float32Array; scale: number } | null;
  traceLayers: readonly number[];
  /** Context positions kept in the trace before the question (the tail of the first turn). */
  contextPositions: number;
  answer: AnswerIds;
  /** Also read the same prompt without injection (paired readout and lens); only when injected. */
  pairedClean?: boolean;
  generation: { maxTokens: number; sampling: SamplingOptions; stopStrings: readonly string[]; stopIds: readonly number[] };
}

export interface TrialResult {
  segments: TrialRecord['segments'];
  window: TrialRecord['window'];
  trace: { start: number; end: number; layers: number[]; rows: Float32Array[] };
  readout: Readout;
  lens: TrialRecord['lens'];
  generated: TrialRecord['generated'];
  /** The same prompt's readout and lens without injection (pairedClean), else null. */
  clean: { readout: Readout; lens: TrialRecord['lens'] } | null;
}

/** Absolute [start, end) of a window on a prompt with context length a and readout position c. */
export function windowRange(kind: WindowKind, a: number, c: number): { start: number; end: number | null } {
  switch (kind) {
    case 'first-turn':
      return { start: 0, end: a };
    case 'from-question':
      return { start: a - 1, end: null };
    case 'generation':
      return { start: c, end: null };
  }
}

/** Run one trial (see the module comment). The sequence is released before returning. */
export async function runTrial(engine: Engine, spec: TrialSpec, lens: LogitLens): Promise<TrialResult> {
  const { context, question, prefix } = spec.segments;
  if (context.length === 0 || question.length === 0) throw lwError('LW_ERR_TRIALS_TEMPLATE', 'a trial needs a non-empty context and question');
  const L = engine.config.numLayers;
  const D = engine.config.hiddenSize;
  const a = context.length;
  const c = a + question.length + prefix.length;
  const maxTokens = spec.generation.maxTokens;
  const window = windowRange(spec.window, a, c);
  const injection: Injection | null = spec.injection
    ? { hook: residPost(spec.injection.layer), vector: spec.injection.vector, scale: spec.injection.scale, window: { kind: 'range', start: window.start, end: window.end ?? undefined } }
    : null;
  /** The injection when its window overlaps positions [from, to), else nothing: later passes get no port input. */
  const injectionsFor = (from: number, to: number): Injection[] => (injection && window.start < to && (window.end === null || window.end > from) ? [injection] : []);
  const traceHooks = spec.traceLayers.map(residPost);
  const allHooks = Array.from({ length: L }, (_, l) => residPost(l));
  const traceStart = Math.max(0, a - spec.contextPositions);
  const parts: Float32Array[][] = spec.traceLayers.map(() => []);
  const keep = (taps: Map<string, { data: Float32Array }>, from: number, passStart: number) => {
    traceHooks.forEach((h, k) => {
      const data = taps.get(h)!.data;
      parts[k].push(from > passStart ? data.subarray((from - passStart) * D) : data);
    });
  };

  const seq = engine.newSequence(c + maxTokens);
  try {
    // 1. First turn (the context), with the injection when the window covers it.
    const r1 = await seq.forward(context, { taps: traceHooks, injections: injectionsFor(0, a), logits: 'none' });
    if (traceStart < a) keep(r1.taps, traceStart, 0);
    // 2. Question + answer prefix: every layer tapped for the lens; port input only if the window reaches here.
    const r2 = await seq.forward([...question, ...prefix], { taps: allHooks, injections: injectionsFor(a, c), logits: 'last' });
    keep(r2.taps, Math.max(traceStart, a), a);
    const readout = readoutFromLogits(r2.logits, spec.answer);
    const lensRead = readLens(r2.taps, allHooks, lens, (c - a - 1) * D);
    // 3. Generation: every sampled token is fed (its activations are part of the trace).
    const sampler = new Sampler(spec.generation.sampling);
    const stopIds = new Set(spec.generation.stopIds);
    const ids: number[] = [];
    let logits = r2.logits;
    let text = '';
    let finish: TrialRecord['generated']['finish'] = 'length';
    const decode = (xs: number[]) => engine.tokenizer?.decode(xs, { skipSpecialTokens: true }) ?? '';
    while (ids.length < maxTokens) {
      const tok = sampler.sample(logits);
      if (stopIds.has(tok)) {
        finish = 'eos';
        break;
      }
      const pos = c + ids.length;
      ids.push(tok);
      const r = await seq.forward([tok], { taps: traceHooks, injections: injectionsFor(pos, pos + 1), logits: 'last' });
      keep(r.taps, pos, pos);
      logits = r.logits;
      text = decode(ids);
      const cut = firstStop(text, spec.generation.stopStrings);
      if (cut >= 0) {
        text = text.slice(0, cut);
        finish = 'stop';
        break;
      }
    }
    const end = c + ids.length;
    const traceFloats = (end - traceStart) * D;
    const rows = parts.map((p) => concat(p));
    // Every traced position must have come back exactly once, else the rows are misaligned.
    for (const r of rows) if (r.length !== traceFloats) throw new Error(`trace assembly: ${r.length} floats, expected ${traceFloats}`);
    let clean: TrialResult['clean'] = null;
    if (spec.pairedClean && injection) {
      // The same two passes without any port input, so layers the injection cannot reach read bit-identically.
      const s2 = engine.newSequence(c);
      try {
        await s2.forward(context, { logits: 'none' });
        const q = await s2.forward([...question, ...prefix], { taps: allHooks, logits: 'last' });
        clean = { readout: readoutFromLogits(q.logits, spec.answer), lens: readLens(q.taps, allHooks, lens, (c - a - 1) * D) };
      } finally {
        s2.release();
      }
    }
    return {
      segments: { context: [0, a], question: [a, a + question.length], prefix: [a + question.length, c], generated: [c, end] },
      window: { kind: spec.window, ...window },
      trace: { start: traceStart, end, layers: [...spec.traceLayers], rows },
      readout,
      lens: lensRead,
      generated: { ids, text, finish },
      clean,
    };
  } finally {
    seq.release();
  }
}

function readLens(taps: Map<string, { data: Float32Array }>, hooks: readonly string[], lens: LogitLens, offset: number): TrialRecord['lens'] {
  const out: TrialRecord['lens'] = { logitYes: [], logitNo: [] };
  for (const h of hooks) {
    const x = lens.read(taps.get(h)!.data, offset);
    out.logitYes.push(x.logitYes);
    out.logitNo.push(x.logitNo);
  }
  return out;
}

function firstStop(text: string, stops: readonly string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

// ---- prompts ------------------------------------------------------------------------------------

/**
 * Token segments of (context, question, prefix). Plain (base models): each text is encoded on its
 * own and concatenated. Chat: the conversation [system] user(context) [assistant(contextReply)]
 * user(question) assistant(prefix, left open) is rendered by the model's template and split where
 * the first turn's last message (with its closing tags) ends, and where the generation prompt
 * ends (LW_ERR_TRIALS_TEMPLATE when the template does not allow that).
 */
export class PromptBuilder {
  private readonly cache = new Map<string, PromptSegments>();

  constructor(
    private readonly tok: Tokenizer,
    private readonly prompts: TrialConfig['prompts'],
    readonly chat: boolean,
  ) {}

  build(contextText: string, q: QuestionSpec): PromptSegments {
    const key = JSON.stringify([contextText, q.question, q.prefix]);
    let s = this.cache.get(key);
    if (!s) {
      s = this.chat ? this.buildChat(contextText, q) : this.buildPlain(contextText, q);
      if (s.context.length === 0 || s.question.length === 0) throw lwError('LW_ERR_TRIALS_TEMPLATE', `empty context or question segment for ${key}`);
      this.cache.set(key, s);
    }
    return s;
  }

  private buildPlain(contextText: string, q: QuestionSpec): PromptSegments {
    const tok = this.tok;
    return {
      context: tok.encode(contextText),
      question: tok.encode(q.question, { addSpecialTokens: false }),
      prefix: q.prefix === '' ? [] : tok.encode(q.prefix, { addSpecialTokens: false }),
    };
  }

  private buildChat(contextText: string, q: QuestionSpec): PromptSegments {
    const tok = this.tok;
    const first = [
      ...(this.prompts.system !== null ? [{ role: 'system', content: this.prompts.system }] : []),
      { role: 'user', content: contextText },
      ...(this.prompts.contextReply !== null ? [{ role: 'assistant', content: this.prompts.contextReply }] : []),
    ];
    const asked = [...first, { role: 'user', content: q.question }];
    const firstText = tok.applyChatTemplate(first, { addGenerationPrompt: false });
    const askedText = tok.applyChatTemplate(asked, { addGenerationPrompt: true });
    const fullText = q.prefix === '' ? askedText : tok.applyChatTemplate([...asked, { role: 'assistant', content: q.prefix }], { addGenerationPrompt: false, continueFinalMessage: true });
    const unstable = () => lwError('LW_ERR_TRIALS_TEMPLATE', 'the chat template renders the first turn differently once the question follows, so the injection window cannot be placed');
    // The first turn ends where its last message (and that message's closing tags) end inside the
    // whole conversation. Usually the first turn renders as a prefix; some templates (Qwen3) render
    // the final assistant turn differently (an empty <think> block), so align on the last message.
    const last = first[first.length - 1].content;
    const at = firstText.lastIndexOf(last);
    if (at < 0) throw unstable();
    const needle = firstText.slice(at);
    let lcp = 0;
    while (lcp < firstText.length && firstText[lcp] === askedText[lcp]) lcp++;
    const found = askedText.indexOf(needle, Math.min(lcp, at));
    if (found < 0 || !fullText.startsWith(askedText)) throw unstable();
    const boundary = found + needle.length;
    const enc = (t: string) => (t === '' ? [] : tok.encode(t, { addSpecialTokens: false }));
    return { context: enc(askedText.slice(0, boundary)), question: enc(askedText.slice(boundary)), prefix: enc(fullText.slice(askedText.length)) };
  }
}

/**
 * The token ids of recorded trials from position 0 (prompt segments rebuilt from the record's
 * prompt choices, then what it generated): the dataset stores activations, not prompts, and
 * windowed detectors need the ids to know which positions repeat.
 */
export class TrialTokens {
  private readonly builder: PromptBuilder;

  constructor(
    tok: Tokenizer,
    private readonly manifest: Pick<DatasetManifest, 'config' | 'chat'>,
  ) {
    this.builder = new PromptBuilder(tok, manifest.config.prompts, manifest.chat);
  }

  ids(r: TrialRecord): number[] {
    const p = this.manifest.config.prompts;
    const fill = (t: string) => (r.prompt.filler === null ? t : fillTemplate(t, 'filler', r.prompt.filler));
    const q = (r.prompt.questionKind === 'detect' ? p.detect : p.unrelated)[r.prompt.question];
    const seg = this.builder.build(fill(p.contexts[r.prompt.context]), { question: fill(q.question), prefix: fill(q.prefix) });
    const prompt = seg.context.length + seg.question.length + seg.prefix.length;
    if (prompt !== r.segments.generated[0]) {
      throw lwError('LW_ERR_TRIALS_TEMPLATE', `trial ${r.id}: its prompt rebuilds to ${prompt} tokens, the record has ${r.segments.generated[0]} (another tokenizer or config?)`);
    }
    return [...seg.context, ...seg.question, ...seg.prefix, ...r.generated.ids];
  }
}

// ---- the plan -----------------------------------------------------------------------------------

export interface TrialPlan {
  index: number;
  id: string;
  protocol: Protocol;
  condition: Condition;
  family: VectorFamily | null;
  item: string | null;
  concept: string | null;
  layer: number | null;
  strength: number | null;
  questionKind: 'detect' | 'unrelated';
  window: WindowKind;
  split: 'train' | 'eval';
}

/** Train/eval concepts: a seeded shuffle of the concept words (or the configured eval list). */
export function splitConcepts(config: TrialConfig): { train: string[]; eval: string[] } {
  const all = config.vectors.words.concepts;
  const ev = config.split.evalConcepts;
  let evalSet: string[];
  if (Array.isArray(ev)) evalSet = [...ev];
  else {
    const n = ev < 1 ? Math.min(all.length - 1, Math.max(1, Math.round(ev * all.length))) : ev;
    evalSet = shuffled(all, createRng(hash32(`${config.seed}|split`))).slice(0, n);
  }
  const isEval = new Set(evalSet);
  return { train: all.filter((w) => !isEval.has(w)), eval: all.filter((w) => isEval.has(w)) };
}

const PROTOCOL_WINDOW: Record<Protocol, WindowKind> = { 'inject-then-ask': 'first-turn', continuous: 'from-question' };

export interface PlanContext {
  config: TrialConfig;
  families: VectorFamily[];
  injectionLayers: number[];
  /** Concept words the controls cycle through (unrelated question, generation-only). */
  controlConcepts: string[];
}

/** Every trial of a config, in run order (positives, then none, random, unrelated, generation-only). */
export function planTrials(ctx: PlanContext): TrialPlan[] {
  const { config } = ctx;
  const split = splitConcepts(config);
  const evalConcepts = new Set(split.eval);
  const plans: TrialPlan[] = [];
  const add = (p: Omit<TrialPlan, 'index' | 'split'>) => {
    const key = p.concept ?? (p.family && p.item !== null ? p.family.splitKey(p.item) : null);
    const side = key !== null ? (evalConcepts.has(key) ? 'eval' : 'train') : hashUnit(`${config.seed}|split|${p.id}`) < config.split.evalFraction ? 'eval' : 'train';
    plans.push({ ...p, index: plans.length, split: side });
  };
  const { protocols, strength, repeats } = config.injection;
  const grid = (fn: (layer: number, s: number) => void) => {
    for (const layer of ctx.injectionLayers) for (const s of strength.values) fn(layer, s);
  };
  for (const protocol of protocols) {
    for (const family of ctx.families) {
      for (const item of family.items) {
        grid((layer, s) => {
          for (let r = 0; r < repeats; r++) {
            add({
              id: `${protocol}/inject/${family.name}/${item}/L${layer}/s${s}/r${r}`,
              protocol,
              condition: 'inject',
              family,
              item,
              concept: family.kind === 'concept' ? item : null,
              layer,
              strength: s,
              questionKind: 'detect',
              window: PROTOCOL_WINDOW[protocol],
            });
          }
        });
      }
    }
  }
  const none = { family: null, item: null, concept: null, layer: null, strength: null, questionKind: 'detect' as const };
  for (const protocol of protocols) {
    for (let k = 0; k < config.controls.none.trialsPerProtocol; k++) {
      add({ ...none, id: `${protocol}/none/${k}`, protocol, condition: 'none', window: PROTOCOL_WINDOW[protocol] });
    }
  }
  const cc = ctx.controlConcepts;
  let cycle = 0;
  const nextConcept = () => cc[cycle++ % cc.length];
  for (const protocol of protocols) {
    grid((layer, s) => {
      for (let k = 0; k < config.controls.random.trialsPerCell; k++) {
        const id = `${protocol}/random/L${layer}/s${s}/${k}`;
        add({ id, protocol, condition: 'random', family: null, item: id, concept: null, layer, strength: s, questionKind: 'detect', window: PROTOCOL_WINDOW[protocol] });
      }
    });
  }
  for (const protocol of protocols) {
    grid((layer, s) => {
      for (let k = 0; k < config.controls.unrelatedQuestion.trialsPerCell; k++) {
        const concept = nextConcept();
        add({ id: `${protocol}/unrelated-question/${concept}/L${layer}/s${s}/${k}`, protocol, condition: 'unrelated-question', family: null, item: concept, concept, layer, strength: s, questionKind: 'unrelated', window: PROTOCOL_WINDOW[protocol] });
      }
    });
  }
  grid((layer, s) => {
    for (let k = 0; k < config.controls.generationOnly.trialsPerCell; k++) {
      const concept = nextConcept();
      add({ id: `generation-only/${concept}/L${layer}/s${s}/${k}`, protocol: protocols[0], condition: 'generation-only', family: null, item: concept, concept, layer, strength: s, questionKind: 'detect', window: 'generation' });
    }
  });
  const ids = new Set<string>();
  for (const p of plans) {
    if (ids.has(p.id)) throw lwError('LW_ERR_TRIALS_CONFIG_INVALID', `two trials share the id ${p.id} (duplicate strengths or layers?)`);
    ids.add(p.id);
  }
  return plans;
}

// ---- the whole run -------------------------------------------------------------------------------

export interface RunTrialsOptions {
  engine: Engine;
  config: TrialConfig;
  /** Concept vectors of this engine's model (concepts.ts). */
  store: ConceptStore;
  outDir: string;
  progress?: (done: number, total: number, what: string) => void;
  /** Run at most this many new trials, then stop (the directory stays resumable). */
  limit?: number;
}

export interface RunTrialsSummary {
  outDir: string;
  planned: number;
  /** Trials found finished in outDir and skipped. */
  skipped: number;
  ran: number;
  seconds: number;
  trialsPerMinute: number;
}

/** Hash of the files of a concepts directory: part of a dataset's identity. */
export function conceptStoreHash(store: ConceptStore): string {
  return sha256(Buffer.concat([readFileSync(join(store.dir, 'concepts.json')), readFileSync(join(store.dir, store.manifest.tensors))]));
}

/** Everything a run needs that depends on (engine, config, store) but not on one trial. */
export function prepareRun(engine: Engine, config: TrialConfig, store: ConceptStore) {
  if (store.modelFingerprint !== engine.fingerprint) {
    throw lwError('LW_ERR_CONCEPTS_MODEL_MISMATCH', `concept vectors in ${store.dir} are for model ${store.modelFingerprint}, the engine runs ${engine.fingerprint}`);
  }
  const tok = engine.tokenizer;
  if (!tok) throw lwError('LW_ERR_TRIALS_TEMPLATE', `${engine.checkpoint.dir} has no tokenizer.json`);
  const L = engine.config.numLayers;
  const injectionLayers = resolveLayers(config.injection.layers, L, 'injection.layers');
  const traceLayers = resolveLayers(config.trace.layers, L, 'trace.layers');
  const answer = answerTokenIds(tok, config.answer);
  const chat = useChatTemplate(engine, config.chat);
  const famCtx = { store, seed: config.seed };
  const families = config.injection.families.map((f) => createFamily(f, famCtx));
  const controlConcepts = store.names('concept');
  const plans = planTrials({ config, families, injectionLayers, controlConcepts });
  const split = splitConcepts(config);
  const manifest: DatasetManifest = {
    formatVersion: 1,
    kind: 'latentwatch-trials',
    modelFingerprint: engine.fingerprint,
    dModel: engine.config.hiddenSize,
    numLayers: L,
    chat,
    traceLayers,
    injectionLayers,
    dtype: config.trace.dtype,
    answerIds: answer,
    meanResidNorm: Array.from({ length: L }, (_, l) => store.meanResidNorm(l)),
    conceptsHash: conceptStoreHash(store),
    split: { trainConcepts: split.train, evalConcepts: split.eval },
    plannedTrials: plans.length,
    trialsPerShard: config.output.trialsPerShard,
    configHash: sha256(JSON.stringify(config)),
    config,
  };
  return { manifest, plans, answer, chat, traceLayers, injectionLayers, randomControl: randomFamily('random-control', [], famCtx), builder: new PromptBuilder(tok, config.prompts, chat), lens: new LogitLens(engine, answer) };
}

/** The TrialSpec and prompt choices of a plan (deterministic in the trial id). */
export function specFor(plan: TrialPlan, run: ReturnType<typeof prepareRun>, config: TrialConfig, store: ConceptStore, engine: Engine): { spec: TrialSpec; prompt: TrialRecord['prompt']; injectedNorm: number } {
  const rng = createRng(hash32(`${config.seed}|${plan.id}`));
  const p = config.prompts;
  const contextIdx = rng.int(p.contexts.length);
  const filler = p.fillers[rng.int(p.fillers.length)];
  const questions = plan.questionKind === 'detect' ? p.detect : p.unrelated;
  const questionIdx = rng.int(questions.length);
  const template = p.contexts[contextIdx];
  const q = questions[questionIdx];
  const usesFiller = [template, q.question, q.prefix].some((t) => t.includes('{filler'));
  const fill = (t: string) => fillTemplate(t, 'filler', filler);
  const segments = run.builder.build(fill(template), { question: fill(q.question), prefix: fill(q.prefix) });
  let injection: TrialSpec['injection'] = null;
  let injectedNorm = 0;
  if (plan.condition !== 'none') {
    const layer = plan.layer!;
    const raw =
      plan.condition === 'random'
        ? run.randomControl.vector(plan.item!, layer)
        : plan.condition === 'inject'
          ? plan.family!.vector(plan.item!, layer)
          : store.vector(plan.concept!, layer, 'concept');
    const { vector, scale } = scaleVector(raw, { mode: config.injection.strength.mode, value: plan.strength! }, store.meanResidNorm(layer));
    injection = { layer, vector, scale };
    let s = 0;
    for (let i = 0; i < vector.length; i++) s += (scale * vector[i]) ** 2;
    injectedNorm = Math.sqrt(s);
  }
  const g = config.generation;
  return {
    spec: {
      segments,
      window: plan.window,
      injection,
      traceLayers: run.traceLayers,
      contextPositions: config.trace.contextPositions,
      answer: run.answer,
      pairedClean: config.answer.pairedClean,
      generation: {
        maxTokens: g.maxTokens,
        sampling: { temperature: g.temperature, topK: g.topK, topP: g.topP, seed: hash32(`${config.seed}|sample|${plan.id}`) },
        stopStrings: g.stopStrings,
        stopIds: engine.eosTokenIds,
      },
    },
    prompt: { context: contextIdx, filler: usesFiller ? filler : null, question: questionIdx, questionKind: plan.questionKind },
    injectedNorm,
  };
}

/** Run (or resume) every trial of `config` into `outDir`. */
export async function runTrials(o: RunTrialsOptions): Promise<RunTrialsSummary> {
  const { engine, config, store } = o;
  const run = prepareRun(engine, config, store);
  const writer = DatasetWriter.open(o.outDir, run.manifest);
  const planned = run.plans.length;
  const start = writer.completed;
  const stop = o.limit === undefined ? planned : Math.min(planned, start + o.limit);
  const t0 = performance.now();
  try {
    o.progress?.(start, planned, start > 0 ? `resuming after ${start} finished trials` : 'starting');
    for (let i = start; i < stop; i++) {
      const plan = run.plans[i];
      const { spec, prompt, injectedNorm } = specFor(plan, run, config, store, engine);
      const r = await runTrial(engine, spec, run.lens);
      const word = plan.condition === 'inject' ? (plan.family!.word(plan.item!) ?? null) : plan.concept;
      const record: Omit<TrialRecord, 'trace'> & { trace: Omit<TrialRecord['trace'], 'shard' | 'offset' | 'bytes'> } = {
        index: plan.index,
        id: plan.id,
        protocol: plan.protocol,
        condition: plan.condition,
        label: spec.injection ? 1 : 0,
        family: plan.condition === 'random' ? run.randomControl.name : (plan.family?.name ?? null),
        familyKind: plan.condition === 'random' ? 'random' : (plan.family?.kind ?? (plan.concept !== null ? 'concept' : null)),
        item: plan.item,
        concept: plan.concept,
        split: plan.split,
        layer: plan.layer,
        strength: plan.strength,
        strengthMode: plan.strength === null ? null : config.injection.strength.mode,
        injectedNorm,
        window: r.window,
        prompt,
        segments: r.segments,
        readout: r.readout,
        lens: r.lens,
        clean: r.clean,
        generated: r.generated,
        verbalized: verbalizes(r.generated.text, config.verbalization.phrases, config.verbalization.matchConcept ? word : null),
        saidYes: r.readout.pYes > r.readout.pNo,
        trace: { start: r.trace.start, end: r.trace.end, layers: r.trace.layers },
      };
      writer.append(record, Buffer.concat(r.trace.rows.map((rows) => encodeRows(rows, config.trace.dtype))));
      o.progress?.(i + 1, planned, plan.id);
    }
  } finally {
    writer.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  const ran = stop - start;
  return { outDir: o.outDir, planned, skipped: start, ran, seconds, trialsPerMinute: seconds > 0 ? (ran * 60) / seconds : 0 };
}
