/**
 * Proxy mode (`serve --upstream URL`, docs/daemon.md "Proxy mode"): chat and completion requests
 * are forwarded to an OpenAI-compatible upstream that generates; its answer goes back unchanged
 * with the `latentwatch` verdict added (the last chunk before `[DONE]` when streamed). The local
 * replica of the same checkpoint scores the prompt and the upstream's tokens teacher-forced, never
 * waiting for the whole answer: what has arrived goes a token per pass through the engine's decode
 * batch, shared with other requests' steps, or in one prefill-shaped pass of its own (scoringPlan).
 * The steps go through the same InferenceService.run as local serving (inference.ts StepSource), so
 * alerts, metrics, traces and the verdict are those of local serving. A chunk reaches the client
 * once its tokens are scored and their alerts stored, as a generated token does in local serving.
 * Parameters the daemon cannot honour itself (tools, response_format, n...) go to the upstream
 * unchanged; tool schemas are scored where the checkpoint's chat template renders them.
 *
 * Token alignment: the upstream's own token ids (`return_token_ids`, vLLM and latentwatch; or
 * logprobs tokens rendered `token_id:NNN`), else the chunk's text re-tokenised with the checkpoint's
 * tokenizer (a stop token it does not show is then not scored, and token boundaries may differ from
 * what the upstream generated).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Engine } from '../engine/engine.js';
import type { ChatMessage, Tokenizer } from '../engine/tokenizer.js';
import type { Step, TapValues } from '../engine/types.js';
import { lwError } from '../errors.js';
import type { Principal } from './auth.js';
import type { FrozenConfig } from './config.js';
import { toHttpError } from './http-errors.js';
import type { InferenceService, PreparedRequest, StepSource, VerdictBody } from './inference.js';
import { toJob, type ApiKind, type ChatBody, type CompletionBody, type FinishReason } from './openai.js';
import type { UpstreamClient } from './upstream.js';

/** Prompt positions per prefill pass (the engine's default chunk). */
const PREFILL_CHUNK = 512;

/** Tokens that arrived together from the upstream: one stream chunk, or a whole answer. */
interface Arrival {
  ids: number[];
  /** The text those tokens carry (the monitor's verbalization reads it). */
  text: string;
  finish?: FinishReason;
  /** Called once the tokens are scored and their alerts stored (streams: send the chunk on). */
  onScored?: () => void;
}

/** Arrivals between the upstream reader and the scorer: the scorer takes all that has come in. */
export class TokenFeed {
  private items: Arrival[] = [];
  private ended = false;
  private failure: { error: unknown } | undefined;
  private wake: (() => void) | undefined;

  push(a: Arrival): void {
    this.items.push(a);
    this.notify();
  }

  end(): void {
    this.ended = true;
    this.notify();
  }

  /** Scoring stops with `error` once what already arrived is scored. */
  fail(error: unknown): void {
    this.failure ??= { error };
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Everything that arrived since the last call; null once ended and empty. */
  async take(signal: AbortSignal | undefined): Promise<Arrival[] | null> {
    for (;;) {
      if (signal?.aborted) throw lwError('LW_ERR_ENGINE_ABORTED');
      if (this.items.length > 0) return this.items.splice(0);
      if (this.failure) throw this.failure.error;
      if (this.ended) return null;
      await new Promise<void>((resolve) => {
        const onAbort = () => resolve();
        signal?.addEventListener('abort', onAbort, { once: true });
        this.wake = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
      });
    }
  }
}

/** Row `row` of every tap of a multi-position pass. */
function tapRow(taps: ReadonlyMap<string, TapValues>, row: number): Map<string, TapValues> {
  const out = new Map<string, TapValues>();
  for (const [k, t] of taps) out.set(k, { positions: 1, dModel: t.dModel, data: t.data.subarray(row * t.dModel, (row + 1) * t.dModel) });
  return out;
}

function concat(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * How a stream's newly arrived tokens are scored. onnxruntime's CPU attention (GroupQueryAttention)
 * takes several new positions per row only in a batch of one ("batch_size must be 1 when
 * sequence_length > 1 and past context is given"), so a multi-token pass cannot be shared across
 * requests; a one-token step can: the engine's decode batcher runs concurrent streams' steps in one
 * pass. k tokens of one stream then cost k shared passes or one pass of their own; with B streams
 * scoring together the shared passes come out ahead while k ≤ B/2 (on the 2-core bench machine a
 * shared pass of 8 rows cost about 1.6 lone passes of a few tokens). 'shared': a token per shared
 * pass; 'alone': one pass of their own (always for a sequence outside the pool, which decodes alone).
 */
export function scoringPlan(tokens: number, pooled: boolean, streams: number, batchSteps: boolean): 'shared' | 'alone' {
  if (!pooled) return 'alone';
  if (tokens === 1) return 'shared';
  return batchSteps && tokens <= Math.ceil(streams / 2) ? 'shared' : 'alone';
}

export interface TeacherForcedOptions {
  /** Called with the number of arrived tokens past the sequence's room (not scored). */
  onTruncated(dropped: number): void;
  /** Streams being scored now, this one included (the batch its steps would share). */
  streams(): number;
  /** Whether a few tokens may be scored as shared one-token steps (config upstream.batchSteps). */
  batchSteps: boolean;
}

/**
 * Teacher-forced steps shaped like the engine's: the prompt step (every prompt position's taps),
 * then one token step per arrived token, each with its own position's taps.
 */
export function teacherForced(engine: Engine, feed: TokenFeed, o: TeacherForcedOptions): StepSource {
  return async function* (req) {
    const promptLength = req.promptIds.length;
    const seq = engine.newSequence(promptLength + req.maxTokens);
    const fwd = { taps: req.taps ?? [], injections: req.injections, promptLength, logits: 'none' as const };
    try {
      const promptTaps = new Map<string, Float32Array[]>();
      for (let i = 0; i < promptLength; i += PREFILL_CHUNK) {
        if (req.signal?.aborted) throw lwError('LW_ERR_ENGINE_ABORTED');
        const r = await seq.forward(req.promptIds.slice(i, i + PREFILL_CHUNK), fwd);
        for (const [k, v] of r.taps) promptTaps.set(k, [...(promptTaps.get(k) ?? []), v.data]);
      }
      const D = engine.config.hiddenSize;
      yield { kind: 'prompt', tokenId: -1, text: '', position: promptLength - 1, taps: new Map([...promptTaps].map(([k, parts]) => [k, { positions: promptLength, dModel: D, data: concat(parts) }])) } satisfies Step;
      for (;;) {
        const batch = await feed.take(req.signal);
        if (batch === null) return;
        const arrived = batch.flatMap((a) => a.ids);
        // Tokens past the sequence's room (an upstream that ignored max_tokens) are not scored.
        const room = seq.capacity - seq.length;
        const ids = arrived.slice(0, room);
        if (arrived.length > ids.length) o.onTruncated(arrived.length - ids.length);
        const start = seq.length;
        const rows: Map<string, TapValues>[] = [];
        if (ids.length > 0 && scoringPlan(ids.length, seq.storage.slot >= 0, o.streams(), o.batchSteps) === 'shared') {
          for (const id of ids) rows.push((await engine.batcher.step(seq, id, fwd)).taps);
        } else if (ids.length > 0) {
          const r = await seq.forward(ids, fwd);
          for (let row = 0; row < ids.length; row++) rows.push(tapRow(r.taps, row));
        }
        let row = 0;
        for (const a of batch) {
          const n = Math.min(a.ids.length, ids.length - row);
          for (let j = 0; j < n; j++, row++) {
            const last = j === n - 1;
            const step: Step = { kind: 'token', tokenId: a.ids[j], text: last ? a.text : '', position: start + row, taps: rows[row] };
            if (last && a.finish) step.finishReason = a.finish;
            yield step;
          }
          // run() has monitored every step yielded so far (and stored their alerts) before asking for the next.
          a.onScored?.();
        }
      }
    } finally {
      seq.release();
    }
  };
}

export interface UpstreamChoice {
  index?: unknown;
  text?: unknown;
  message?: { content?: unknown };
  delta?: { content?: unknown };
  token_ids?: unknown;
  logprobs?: unknown;
  /** vLLM's completions put the prompt's ids on the choice; its chat on the body. */
  prompt_token_ids?: unknown;
  finish_reason?: unknown;
}

interface UpstreamBody {
  id?: unknown;
  object?: unknown;
  created?: unknown;
  model?: unknown;
  choices?: UpstreamChoice[];
  prompt_token_ids?: unknown;
  latentwatch?: unknown;
  error?: unknown;
}

export interface ProxyDeps {
  upstream: UpstreamClient;
  engine: Engine;
  inference: InferenceService;
  config: FrozenConfig;
  /** The model id the upstream serves this checkpoint under. */
  upstreamModel: string;
  log?: { warn(o: object, msg: string): void };
}

/** How the scored tokens were matched to the upstream's: its token ids, or its text re-tokenised. */
export type Alignment = 'token_ids' | 'text';
/** Whether the upstream's prompt ids (when it returns them) are the replica's: same, different, or unknown. */
export type PromptCheck = 'same' | 'different' | 'unknown';

export class ProxyService {
  /** Requests being scored now (the streams whose one-token steps may share a pass). */
  private scoring = 0;

  constructor(private readonly d: ProxyDeps) {}

  /**
   * Start-up check: the upstream's /v1/models must list the model (and, when it says, the same
   * checkpoint fingerprint: another latentwatch does); else LW_ERR_UPSTREAM_MODEL_MISMATCH.
   */
  static async checkIdentity(upstream: UpstreamClient, upstreamModel: string, fingerprint: string): Promise<void> {
    const models = await upstream.models();
    const entry = models.find((m) => m.id === upstreamModel);
    if (!entry) {
      throw lwError('LW_ERR_UPSTREAM_MODEL_MISMATCH', `${upstream.url} serves ${models.map((m) => JSON.stringify(m.id)).join(', ') || 'no model'}, not ${JSON.stringify(upstreamModel)} (set upstream.model / --upstream-model to the upstream's id of this checkpoint)`, {
        upstream: upstream.url,
        expected: upstreamModel,
        served: models.map((m) => m.id),
      });
    }
    if (typeof entry.fingerprint === 'string' && entry.fingerprint !== fingerprint) {
      throw lwError('LW_ERR_UPSTREAM_MODEL_MISMATCH', `${upstream.url} serves ${upstreamModel} with checkpoint fingerprint ${entry.fingerprint}; the local replica is ${fingerprint}`, {
        upstream: upstream.url,
        expected: fingerprint,
        served: entry.fingerprint,
      });
    }
  }

  /** The completion routes in proxy mode (server.ts calls this instead of local generation). */
  async complete(kind: ApiKind, req: FastifyRequest, reply: FastifyReply, principal: Principal): Promise<unknown> {
    const body = req.body as ChatBody | CompletionBody;
    // What the daemon could not honour itself (tools, response_format, n, vLLM's extras...) is the
    // upstream's to answer: forwarded unchanged, and the prompt scored as far as the template renders it.
    const job = toJob(kind, body, { checkSupported: false });
    const prepared = this.d.inference.prepare(job, principal);
    const tools = kind === 'chat' ? this.scoreToolsPrompt(body as ChatBody, prepared) : undefined;
    const proxyInfo = () => ({ alignment, prompt, ...(tools ? { tools } : {}) });
    const ac = new AbortController();
    let clientGone = false;
    reply.raw.on('close', () => {
      if (reply.raw.writableFinished) return;
      clientGone = true;
      ac.abort();
    });
    const feed = new TokenFeed();
    let alignment: Alignment = 'token_ids';
    const align = (choice: UpstreamChoice | undefined, text: string): number[] => {
      const ids = upstreamTokenIds(choice, this.d.engine.config.vocabSize, this.d.config.upstream.tokenIds);
      if (ids) return ids;
      if (text === '') return [];
      alignment = 'text';
      return this.d.engine.tokenizer!.encode(text, { addSpecialTokens: false });
    };
    // The upstream's prompt ids, where it returns them: a different chat template or tokenizer shows here.
    let prompt: PromptCheck = 'unknown';
    const checkPrompt = (ids: unknown) => {
      if (prompt !== 'unknown' || !Array.isArray(ids)) return;
      prompt = ids.length === prepared.promptIds.length && ids.every((x, i) => x === prepared.promptIds[i]) ? 'same' : 'different';
      if (prompt === 'different') {
        req.log.warn({ requestId: prepared.requestId, upstreamPromptTokens: ids.length, localPromptTokens: prepared.promptIds.length }, 'the upstream tokenised the prompt differently (chat template or tokenizer): the replica scored its own tokenisation');
      }
    };
    const scoring = this.score(prepared, feed, ac.signal);
    // Scoring that fails (queue full, draining, an engine error) stops the upstream request too: the
    // client gets scoring's error, not an answer that nothing watched.
    let scoringError: unknown;
    scoring.catch((e: unknown) => {
      scoringError ??= e;
      ac.abort();
    });
    const path = kind === 'chat' ? '/chat/completions' : '/completions';
    let answer;
    try {
      answer = await this.d.upstream.post(path, this.forwardBody(body, prepared), ac.signal);
    } catch (e) {
      feed.fail(e);
      ac.abort();
      throw scoringError ?? e;
    }
    if (answer.kind === 'json') {
      const out = answer.body as UpstreamBody;
      if (answer.status !== 200) {
        // The upstream's own refusal (4xx), unchanged; nothing was generated to score.
        ac.abort();
        feed.fail(lwError('LW_ERR_ENGINE_ABORTED'));
        return reply.code(answer.status).send(answer.body);
      }
      const choice = firstChoice(out.choices);
      if (!choice) {
        feed.fail(lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', 'the answer has no choices'));
        ac.abort();
        throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.d.upstream.url}${path}: the answer has no choices`);
      }
      checkPrompt(out.prompt_token_ids ?? choice.prompt_token_ids);
      const text = textOf(kind, choice, false);
      feed.push({ ids: align(choice, text), text, finish: finishOf(choice.finish_reason) });
      feed.end();
      const verdict = await scoring;
      if (!job.returnTokenIds) stripTokenIds(out);
      out.latentwatch = { ...verdict, proxy: proxyInfo() };
      return out;
    }

    // A stream: chunks go on as they are scored; the verdict is the last chunk before [DONE].
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const send = (obj: unknown) => {
      if (!res.writableEnded) res.write(`data: ${JSON.stringify(obj)}\n\n`);
    };
    let meta: Record<string, unknown> = { id: job.id, object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: this.d.upstreamModel };
    let first = true;
    const passThrough = this.d.config.upstream.passThrough;
    try {
      for await (const data of answer.events) {
        let chunk: UpstreamBody;
        try {
          chunk = JSON.parse(data) as UpstreamBody;
        } catch {
          throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.d.upstream.url}${path}: a stream chunk is not JSON`);
        }
        if (chunk.error !== undefined) {
          const inner = chunk.error as { message?: unknown; code?: unknown };
          throw lwError('LW_ERR_UPSTREAM_BAD_GATEWAY', `${this.d.upstream.url}${path}: the upstream failed mid-stream: ${String(inner.message ?? '').slice(0, 300)}`, { upstreamCode: typeof inner.code === 'string' ? inner.code : null });
        }
        const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
        // The upstream's own verdict (another latentwatch) is replaced by this replica's.
        if (choices.length === 0 && chunk.latentwatch !== undefined) continue;
        if (first) {
          meta = { id: chunk.id ?? meta.id, object: chunk.object ?? meta.object, created: chunk.created ?? meta.created, model: chunk.model ?? meta.model };
          first = false;
        }
        // n > 1: the first choice (index 0) is the one scored; the others pass through unscored.
        const choice = firstChoice(choices);
        checkPrompt(chunk.prompt_token_ids ?? choice?.prompt_token_ids);
        const text = choice ? textOf(kind, choice, true) : '';
        const ids = choice ? align(choice, text) : [];
        if (!job.returnTokenIds) stripTokenIds(chunk);
        // Pass-through: the chunk goes on at once and its alerts may trail its text; else once scored.
        if (passThrough) send(chunk);
        feed.push({ ids, text, finish: choice ? finishOf(choice.finish_reason) : undefined, onScored: passThrough ? undefined : () => send(chunk) });
      }
      feed.end();
      const verdict = await scoring;
      send({ ...meta, choices: [], latentwatch: { ...verdict, proxy: proxyInfo() } });
    } catch (e) {
      feed.fail(e);
      if (clientGone) return;
      // What was scored before the failure has gone out; then the coded error, as local serving does.
      await scoring.catch(() => undefined);
      const err = scoringError ?? e;
      req.log.error({ err }, 'proxied stream failed');
      send(toHttpError(err).body);
    }
    res.end('data: [DONE]\n\n');
  }

  /**
   * A chat request with tool schemas: the prompt the upstream renders has them, so the replica scores
   * the same rendering where the checkpoint's chat template can give it ('scored', replacing the
   * prepared prompt); a checkpoint without one, or whose template fails on them, scores the messages
   * alone ('not_scored', said in the verdict). Undefined when the request has no tools.
   */
  private scoreToolsPrompt(body: ChatBody, p: PreparedRequest): ToolsScoring | undefined {
    const tools = (body as { tools?: unknown }).tools;
    if (!Array.isArray(tools) || tools.length === 0) return undefined;
    const tok = this.d.engine.tokenizer!;
    if (!tok.hasChatTemplate) return 'not_scored';
    let ids: number[];
    try {
      ids = chatPromptIds(tok, body);
    } catch (e) {
      // A template that cannot render these tools: the upstream answers for itself; the messages are scored.
      if ((e as { code?: unknown }).code === 'LW_ERR_TOKENIZER_TEMPLATE') return 'not_scored';
      throw e;
    }
    const context = this.d.engine.contextLength;
    const maxTokens = p.job.maxTokens ?? Math.min(this.d.config.limits.maxTokens, context - ids.length);
    if (maxTokens < 1 || ids.length + maxTokens > context) {
      throw lwError('LW_ERR_ENGINE_CONTEXT_LENGTH', `${ids.length} prompt tokens (with the tool schemas) + max_tokens ${maxTokens} > context ${context}`, { param: 'tools' });
    }
    p.promptIds = ids;
    p.maxTokens = maxTokens;
    return 'scored';
  }

  /** Runs the monitor over the teacher-forced steps; resolves to the verdict. */
  private async score(p: PreparedRequest, feed: TokenFeed, signal: AbortSignal): Promise<VerdictBody> {
    const source = teacherForced(this.d.engine, feed, {
      onTruncated: (dropped) => this.d.log?.warn({ requestId: p.requestId, dropped }, 'the upstream sent more tokens than the request has room for: those are not scored'),
      streams: () => this.scoring,
      batchSteps: this.d.config.upstream.batchSteps,
    });
    this.scoring++;
    try {
      for await (const ev of this.d.inference.run(p, signal, source)) if (ev.type === 'done') return ev.verdict;
    } finally {
      this.scoring--;
    }
    throw lwError('LW_ERR_API_INTERNAL', 'scoring ended without a verdict');
  }

  /**
   * The client's request as the upstream gets it: the upstream's model id, token ids asked for, no
   * `latentwatch` field (admin injection applies to the local replica only), and max_tokens set to
   * what the local replica has room to score when the client set none.
   */
  private forwardBody(body: ChatBody | CompletionBody, p: PreparedRequest): Record<string, unknown> {
    const out: Record<string, unknown> = { ...body, model: this.d.upstreamModel };
    delete out.latentwatch;
    if (this.d.config.upstream.tokenIds) out.return_token_ids = true;
    if (body.max_tokens == null && body.max_completion_tokens == null) out.max_tokens = p.maxTokens;
    return out;
  }
}

/** How a request's tool schemas were scored (verdict `proxy.tools`): rendered into the prompt, or not. */
export type ToolsScoring = 'scored' | 'not_scored';

/**
 * The prompt ids of a chat request with tools, rendered as vLLM renders it for a Hugging Face chat
 * template: the messages as sent (developer as system, text parts joined), tool calls' JSON
 * `arguments` parsed into objects (vLLM does the same before rendering), and `tools` passed to the
 * template.
 */
export function chatPromptIds(tok: Tokenizer, body: ChatBody): number[] {
  const messages = body.messages.map((m) => {
    const out: Record<string, unknown> = { ...m, role: m.role === 'developer' ? 'system' : m.role };
    if (Array.isArray(m.content)) out.content = m.content.map((part) => (part.type === 'text' ? (part.text ?? '') : '')).join('');
    const calls = (m as { tool_calls?: unknown }).tool_calls;
    if (Array.isArray(calls)) {
      out.tool_calls = calls.map((c: { function?: { arguments?: unknown } }) => {
        const args = c?.function?.arguments;
        if (typeof args !== 'string') return c;
        try {
          return { ...c, function: { ...c.function, arguments: JSON.parse(args) as unknown } };
        } catch {
          return c;
        }
      });
    }
    return out as ChatMessage;
  });
  const tools = (body as { tools?: Record<string, unknown>[] }).tools;
  return tok.encodeChat(messages, { addGenerationPrompt: true, tools });
}

/** The choice a stream chunk or answer carries for index 0 (the one scored), if any. */
function firstChoice(choices: unknown): UpstreamChoice | undefined {
  if (!Array.isArray(choices)) return undefined;
  return (choices as UpstreamChoice[]).find((c) => c != null && typeof c === 'object' && (c.index === undefined || c.index === 0));
}

/** vLLM's `return_tokens_as_token_ids` renders a logprobs token as `token_id:NNN`. */
const TOKEN_ID_TOKEN = /^token_id:(\d+)$/;

/**
 * The upstream's token ids for a choice's tokens: its `token_ids` (vLLM's and latentwatch's
 * `return_token_ids`), else its logprobs tokens where they are rendered as `token_id:NNN` (vLLM's
 * `return_tokens_as_token_ids`, when the client asked for it); undefined when it gives neither.
 */
export function upstreamTokenIds(choice: UpstreamChoice | undefined, vocabSize: number, useTokenIds: boolean): number[] | undefined {
  if (!choice || !useTokenIds) return undefined;
  const valid = (ids: unknown[]): ids is number[] => ids.every((x) => Number.isInteger(x) && (x as number) >= 0 && (x as number) < vocabSize);
  if (Array.isArray(choice.token_ids)) return valid(choice.token_ids) ? choice.token_ids : undefined;
  const lp = choice.logprobs as { content?: { token?: unknown }[]; tokens?: unknown[] } | null | undefined;
  const tokens = Array.isArray(lp?.content) ? lp.content.map((e) => e?.token) : Array.isArray(lp?.tokens) ? lp.tokens : undefined;
  if (!tokens || tokens.length === 0) return undefined;
  const ids = tokens.map((t) => (typeof t === 'string' ? TOKEN_ID_TOKEN.exec(t)?.[1] : undefined));
  if (ids.some((x) => x === undefined)) return undefined;
  const parsed = ids.map(Number);
  return valid(parsed) ? parsed : undefined;
}

function textOf(kind: ApiKind, choice: UpstreamChoice, delta: boolean): string {
  const t = kind === 'completion' ? choice.text : delta ? choice.delta?.content : choice.message?.content;
  return typeof t === 'string' ? t : '';
}

function finishOf(reason: unknown): FinishReason | undefined {
  if (reason === 'length') return 'length';
  return typeof reason === 'string' ? 'stop' : undefined;
}

function stripTokenIds(body: UpstreamBody): void {
  delete body.prompt_token_ids;
  for (const c of body.choices ?? []) {
    delete c.token_ids;
    delete c.prompt_token_ids;
  }
}
