/**
 * The OpenAI wire format: request schemas (validated by fastify/ajv), their normalisation into one
 * internal job shape, and the response and stream-chunk bodies. No model or HTTP state here.
 */
import { randomUUID } from 'node:crypto';
import type { GenerateRequest, PromptTokenLogprob, Step, TokenAlternative } from '../engine/types.js';
import { lwError } from '../errors.js';

const injectSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    concept: { type: 'string', minLength: 1, maxLength: 200 },
    vector: { type: 'array', items: { type: 'number' }, maxItems: 65536 },
    layer: { type: 'integer', minimum: 0 },
    scale: { type: 'number', minimum: -1e6, maximum: 1e6 },
    window: { type: 'string', enum: ['prompt', 'generation', 'all'] },
  },
  required: ['layer'],
} as const;

const common = {
  model: { type: 'string', minLength: 1, maxLength: 256 },
  max_tokens: { type: ['integer', 'null'], minimum: 0 },
  max_completion_tokens: { type: ['integer', 'null'], minimum: 0 },
  temperature: { type: ['number', 'null'], minimum: 0, maximum: 2 },
  top_p: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 1 },
  top_k: { type: ['integer', 'null'], minimum: 0 },
  seed: { type: ['integer', 'null'] },
  // n > 1 is refused in toJob, as an unsupported parameter rather than a schema error.
  n: { type: ['integer', 'null'], minimum: 1 },
  stop: { anyOf: [{ type: 'string', maxLength: 256 }, { type: 'array', items: { type: 'string', maxLength: 256 }, maxItems: 8 }, { type: 'null' }] },
  stream: { type: ['boolean', 'null'] },
  stream_options: { anyOf: [{ type: 'object', properties: { include_usage: { type: 'boolean' } } }, { type: 'null' }] },
  user: { type: 'string' },
  frequency_penalty: { type: ['number', 'null'], minimum: -2, maximum: 2 },
  presence_penalty: { type: ['number', 'null'], minimum: -2, maximum: 2 },
  logit_bias: {
    anyOf: [{ type: 'object', propertyNames: { pattern: '^(0|[1-9][0-9]{0,9})$' }, additionalProperties: { type: 'number', minimum: -100, maximum: 100 }, maxProperties: 1024 }, { type: 'null' }],
  },
  latentwatch: { type: 'object', additionalProperties: false, properties: { inject: injectSchema } },
  // vLLM's extension: the generated token ids beside the text (proxy mode reads them from its upstream).
  return_token_ids: { type: ['boolean', 'null'] },
} as const;

const contentPart = { type: 'object', properties: { type: { type: 'string' }, text: { type: 'string' } }, required: ['type'] } as const;

export const chatRequestSchema = {
  type: 'object',
  properties: {
    ...common,
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 1024,
      items: {
        type: 'object',
        properties: {
          role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant', 'tool'] },
          content: { anyOf: [{ type: 'string' }, { type: 'array', items: contentPart }, { type: 'null' }] },
          name: { type: 'string' },
        },
        required: ['role'],
      },
    },
    logprobs: { type: ['boolean', 'null'] },
    top_logprobs: { type: ['integer', 'null'], minimum: 0, maximum: 20 },
  },
  required: ['model', 'messages'],
} as const;

export const completionRequestSchema = {
  type: 'object',
  properties: {
    ...common,
    prompt: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 }, { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 1 }] },
    echo: { type: ['boolean', 'null'] },
    // The legacy format: the number of alternatives per token (OpenAI allows at most 5).
    logprobs: { type: ['integer', 'null'], minimum: 0, maximum: 5 },
  },
  required: ['model', 'prompt'],
} as const;

export interface InjectRequest {
  concept?: string;
  vector?: number[];
  layer: number;
  scale?: number;
  window?: 'prompt' | 'generation' | 'all';
}

interface CommonBody {
  model: string;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
  latentwatch?: { inject?: InjectRequest };
  return_token_ids?: boolean | null;
}

export interface ChatBody extends CommonBody {
  messages: { role: string; content?: string | { type: string; text?: string }[] | null; name?: string }[];
  logprobs?: boolean | null;
  top_logprobs?: number | null;
}

export interface CompletionBody extends CommonBody {
  prompt: string | number[] | string[];
  echo?: boolean | null;
  logprobs?: number | null;
}

export type ApiKind = 'chat' | 'completion';

/** A request in the engine's terms, whichever route it came through. */
export interface Job {
  kind: ApiKind;
  id: string;
  created: number;
  model: string;
  maxTokens: number | undefined;
  temperature: number;
  topP: number | undefined;
  topK: number | undefined;
  seed: number | undefined;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  inject: InjectRequest | undefined;
  frequencyPenalty: number | undefined;
  presencePenalty: number | undefined;
  logitBias: Map<number, number> | undefined;
  /** Alternatives per token when the request asked for logprobs; undefined: no logprobs. */
  logprobs: number | undefined;
  /** Completions: return the prompt before the generated text. */
  echo: boolean;
  /** Return each choice's generated token ids (`token_ids`, the stop token included), as vLLM does. */
  returnTokenIds: boolean;
  /**
   * Echo text and logprobs on their way from the engine's steps to the response: inference feeds
   * it every step (`record`), the response and chunk builders below take what has arrived. Present
   * only when the request asked for either.
   */
  extras: ResponseExtras | undefined;
  /** Chat messages (kind chat) with content flattened to text. */
  messages?: { role: string; content: string }[];
  /** Prompt text or ids (kind completion). */
  prompt?: string | number[];
}

/**
 * A positive temperature so small that its reciprocal overflows (below ~5.6e-309) turns every
 * logit into NaN or -Infinity in the sampler; such a temperature already means greedy decoding, so
 * it is passed on as 0 (greedy).
 */
export function samplingTemperature(t: number): number {
  return t > 0 && !Number.isFinite(1 / t) ? 0 : t;
}

/**
 * Request parameters accepted without being acted on, each with the test that it is at its no-op
 * value (so ordinary SDK calls keep working); any other value cannot be honoured and is refused.
 */
const NO_OP: Record<string, (v: unknown) => boolean> = {
  n: (v) => v == null || v === 1,
  tools: (v) => v == null || (Array.isArray(v) && v.length === 0),
  functions: (v) => v == null || (Array.isArray(v) && v.length === 0),
  // With no tools the model can call none, whichever of these is chosen.
  tool_choice: (v) => v == null || v === 'none' || v === 'auto',
  function_call: (v) => v == null || v === 'none' || v === 'auto',
  parallel_tool_calls: (v) => v == null || typeof v === 'boolean',
  response_format: (v) => v == null || (typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 1 && (v as { type?: unknown }).type === 'text'),
  modalities: (v) => v == null || (Array.isArray(v) && v.length === 1 && v[0] === 'text'),
  audio: (v) => v == null,
  prediction: (v) => v == null,
  reasoning_effort: (v) => v == null,
  verbosity: (v) => v == null,
  web_search_options: (v) => v == null,
  store: (v) => v == null || v === false,
  service_tier: (v) => v == null || v === 'auto' || v === 'default',
  // Labels for the caller's bookkeeping: they change no output.
  metadata: () => true,
  user: () => true,
  safety_identifier: () => true,
  prompt_cache_key: () => true,
  suffix: (v) => v == null || v === '',
  best_of: (v) => v == null || v === 1,
};

/** Parameters acted on, per route; any other must be one of the route's NO_OP parameters at its no-op value. */
const actedOn = Object.keys(common).filter((k) => !(k in NO_OP));
const HONOURED: Record<ApiKind, ReadonlySet<string>> = {
  chat: new Set([...actedOn, 'messages', 'logprobs', 'top_logprobs']),
  completion: new Set([...actedOn, 'prompt', 'echo', 'logprobs']),
};
const NO_OP_BY_ROUTE: Record<ApiKind, ReadonlySet<string>> = {
  chat: new Set(Object.keys(NO_OP).filter((k) => k !== 'suffix' && k !== 'best_of')),
  completion: new Set(['n', 'user', 'suffix', 'best_of']),
};

function unsupported(param: string, why: string): Error {
  return lwError('LW_ERR_API_UNSUPPORTED_PARAMETER', `${param}: ${why}`, { param });
}

/** Refuses what the daemon cannot honour: unknown parameters, non-default values of no-op ones, non-text content. */
export function checkSupported(kind: ApiKind, body: ChatBody | CompletionBody): void {
  for (const [key, value] of Object.entries(body)) {
    if (HONOURED[kind].has(key)) continue;
    if (!NO_OP_BY_ROUTE[kind].has(key)) throw unsupported(key, `not a parameter of ${kind === 'chat' ? '/v1/chat/completions' : '/v1/completions'} here`);
    if (!NO_OP[key](value)) throw unsupported(key, `${JSON.stringify(value)?.slice(0, 80)} is not supported (docs/daemon.md, "OpenAI compatibility")`);
  }
  if (kind !== 'chat') return;
  (body as ChatBody).messages.forEach((m, i) => {
    const extra = m as Record<string, unknown>;
    for (const key of ['tool_calls', 'function_call', 'audio'] as const) {
      const v = extra[key];
      if (v != null && !(Array.isArray(v) && v.length === 0)) throw unsupported(`messages[${i}].${key}`, 'tool calls and audio are not supported');
    }
    if (Array.isArray(m.content)) {
      m.content.forEach((part, j) => {
        // An image or audio part dropped silently would answer a different question than the one asked.
        if (part.type !== 'text') throw unsupported(`messages[${i}].content[${j}]`, `content part type ${JSON.stringify(part.type)} is not supported (text only)`);
      });
    }
  });
}

/**
 * `checkSupported: false` (proxy mode): parameters the daemon cannot honour are let through, since
 * the upstream, not the daemon, answers the request.
 */
export function toJob(kind: ApiKind, body: ChatBody | CompletionBody, o: { checkSupported?: boolean } = {}): Job {
  if (o.checkSupported !== false) checkSupported(kind, body);
  const logprobs = logprobsOf(kind, body);
  const echo = kind === 'completion' && (body as CompletionBody).echo === true;
  const job: Job = {
    kind,
    id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`,
    created: Math.floor(Date.now() / 1000),
    model: body.model,
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
    // OpenAI's default temperature is 1; a monitor's users mostly want reproducible output, but the
    // API contract wins: absent means 1.
    temperature: samplingTemperature(body.temperature ?? 1),
    topP: body.top_p ?? undefined,
    topK: body.top_k ?? undefined,
    seed: body.seed ?? undefined,
    stop: body.stop == null ? [] : Array.isArray(body.stop) ? body.stop.filter((s) => s.length > 0) : body.stop ? [body.stop] : [],
    stream: body.stream === true,
    includeUsage: body.stream_options?.include_usage === true,
    inject: body.latentwatch?.inject,
    frequencyPenalty: body.frequency_penalty ?? undefined,
    presencePenalty: body.presence_penalty ?? undefined,
    logitBias: body.logit_bias == null ? undefined : new Map(Object.entries(body.logit_bias).map(([id, b]) => [Number(id), b])),
    logprobs,
    echo,
    returnTokenIds: body.return_token_ids === true,
    extras: undefined,
  };
  if (logprobs !== undefined || echo || job.returnTokenIds) job.extras = new ResponseExtras(job);
  if (kind === 'chat') {
    job.messages = (body as ChatBody).messages.map((m) => ({
      role: m.role === 'developer' ? 'system' : m.role,
      content: typeof m.content === 'string' ? m.content : Array.isArray(m.content) ? m.content.map((p) => (p.type === 'text' ? (p.text ?? '') : '')).join('') : '',
    }));
  } else {
    const p = (body as CompletionBody).prompt;
    if (Array.isArray(p) && p.length > 0 && typeof p[0] === 'string') job.prompt = p[0] as string;
    else if (Array.isArray(p)) job.prompt = p as number[];
    else job.prompt = p;
    if (job.prompt === '' || (Array.isArray(job.prompt) && job.prompt.length === 0)) throw lwError('LW_ERR_API_BAD_REQUEST', 'prompt is empty', { param: 'prompt' });
  }
  return job;
}

function logprobsOf(kind: ApiKind, body: ChatBody | CompletionBody): number | undefined {
  if (kind === 'completion') return (body as CompletionBody).logprobs ?? undefined;
  const b = body as ChatBody;
  if (b.logprobs === true) return b.top_logprobs ?? 0;
  if ((b.top_logprobs ?? 0) > 0) throw lwError('LW_ERR_API_BAD_REQUEST', 'top_logprobs needs logprobs: true', { param: 'top_logprobs' });
  return undefined;
}

/** What a job asks of the engine beyond the prompt and the limits: sampling, logprobs, echo. */
export function generateOptions(job: Job): Pick<GenerateRequest, 'sampling' | 'logprobs' | 'promptLogprobs' | 'promptText'> {
  return {
    sampling: {
      temperature: job.temperature,
      topP: job.topP,
      topK: job.topK,
      seed: job.seed,
      frequencyPenalty: job.frequencyPenalty,
      presencePenalty: job.presencePenalty,
      logitBias: job.logitBias,
    },
    logprobs: job.logprobs,
    // Echo with logprobs reports the prompt tokens' logprobs too.
    promptLogprobs: job.echo ? job.logprobs : undefined,
    promptText: job.echo && typeof job.prompt !== 'string',
  };
}

type Entry = Omit<PromptTokenLogprob, 'tokenId'>;

/**
 * A request's echo text and token logprobs between the engine and the response. Steps arrive in
 * order, and a stream's chunk is built before the next step is read, so each chunk takes exactly
 * the logprobs of the tokens whose text it carries (a token whose text is held back, e.g. half a
 * character, goes with the chunk that carries its text).
 */
export class ResponseExtras {
  private pending: Entry[] = [];
  private pendingIds: number[] = [];
  private echoText = '';
  /** Characters (code points) of the returned text so far, for the legacy `text_offset`. */
  private offset = 0;

  constructor(private readonly job: Job) {}

  record(step: Step): void {
    if (step.kind === 'prompt') {
      if (this.job.echo) this.echoText = typeof this.job.prompt === 'string' ? this.job.prompt : step.text;
      if (step.promptLogprobs) this.pending.push(...step.promptLogprobs);
    } else {
      if (step.logprob) this.pending.push(step.logprob);
      if (this.job.returnTokenIds) this.pendingIds.push(step.tokenId);
    }
  }

  /** The token ids recorded since the last call (a stop token goes with the finish chunk); undefined when not asked for. */
  takeTokenIds(): number[] | undefined {
    if (!this.job.returnTokenIds) return undefined;
    const ids = this.pendingIds;
    this.pendingIds = [];
    return ids;
  }

  /** The prompt, the first time a completion's text is built with echo; '' after. */
  takeEcho(): string {
    const t = this.echoText;
    this.echoText = '';
    return t;
  }

  /** The logprobs of the tokens recorded since the last call, in the route's format; null when not asked for. */
  takeLogprobs(kind: ApiKind, chunk: boolean): Record<string, unknown> | null {
    if (this.job.logprobs === undefined) return null;
    const entries = this.pending;
    this.pending = [];
    if (chunk && entries.length === 0) return null;
    if (kind === 'chat') {
      const alt = (t: TokenAlternative) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes });
      return { content: entries.map((e) => ({ token: e.token, logprob: e.logprob, bytes: e.bytes, top_logprobs: e.top.map(alt) })), refusal: null };
    }
    const textOffset = entries.map((e) => {
      const at = this.offset;
      this.offset += [...e.token].length;
      return at;
    });
    return {
      tokens: entries.map((e) => e.token),
      token_logprobs: entries.map((e) => e.logprob),
      // OpenAI's legacy format: the top alternatives plus the sampled token itself; null where a token has no logprob (the first prompt token).
      top_logprobs: entries.map((e) => {
        if (e.logprob === null) return null;
        const top: Record<string, number> = Object.fromEntries(e.top.map((t) => [t.token, t.logprob]));
        if (!(e.token in top)) top[e.token] = e.logprob;
        return top;
      }),
      text_offset: textOffset,
    };
  }
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

export type FinishReason = 'stop' | 'length';

export function fullResponse(job: Job, text: string, finish: FinishReason, u: Usage, verdict: unknown): Record<string, unknown> {
  const logprobs = job.extras?.takeLogprobs(job.kind, false) ?? null;
  const choice =
    job.kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: text }, logprobs, finish_reason: finish }
      : { index: 0, text: (job.extras?.takeEcho() ?? '') + text, logprobs, finish_reason: finish };
  const ids = job.extras?.takeTokenIds();
  if (ids) Object.assign(choice, { token_ids: ids });
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion' : 'text_completion', created: job.created, model: job.model, choices: [choice], usage: u, latentwatch: verdict };
}

/** A stream chunk carrying a text delta (or the finish reason when `finish` is set). */
export function deltaChunk(job: Job, text: string, finish: FinishReason | null, first = false): Record<string, unknown> {
  const logprobs = job.extras?.takeLogprobs(job.kind, true) ?? null;
  const choice =
    job.kind === 'chat'
      ? { index: 0, delta: first ? { role: 'assistant', content: text } : finish && !text ? {} : { content: text }, logprobs, finish_reason: finish }
      : { index: 0, text: (job.extras?.takeEcho() ?? '') + text, logprobs, finish_reason: finish };
  const ids = job.extras?.takeTokenIds();
  if (ids) Object.assign(choice, { token_ids: ids });
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: job.model, choices: [choice] };
}

/**
 * return_token_ids: the prompt's ids where vLLM puts them: on the body of a chat answer or chunk,
 * on the choice of a completion's (CompletionResponseChoice / CompletionResponseStreamChoice).
 */
export function attachPromptIds(kind: ApiKind, body: Record<string, unknown>, ids: readonly number[]): Record<string, unknown> {
  const choice = (body.choices as Record<string, unknown>[] | undefined)?.[0];
  if (kind === 'completion' && choice) choice.prompt_token_ids = ids;
  else body.prompt_token_ids = ids;
  return body;
}

export function usageChunk(job: Job, u: Usage): Record<string, unknown> {
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: job.model, choices: [], usage: u };
}

/** The verdict chunk sent last before [DONE]: no choices, so clients that ignore it lose nothing. */
export function verdictChunk(job: Job, verdict: unknown): Record<string, unknown> {
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: job.model, choices: [], latentwatch: verdict };
}
