/**
 * The OpenAI wire format: request schemas (validated by fastify/ajv), their normalisation into one
 * internal job shape, and the response and stream-chunk bodies. No model or HTTP state here.
 */
import { randomUUID } from 'node:crypto';
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
  n: { type: ['integer', 'null'], minimum: 1, maximum: 1 },
  stop: { anyOf: [{ type: 'string', maxLength: 256 }, { type: 'array', items: { type: 'string', maxLength: 256 }, maxItems: 8 }, { type: 'null' }] },
  stream: { type: ['boolean', 'null'] },
  stream_options: { anyOf: [{ type: 'object', properties: { include_usage: { type: 'boolean' } } }, { type: 'null' }] },
  user: { type: 'string' },
  frequency_penalty: { type: ['number', 'null'] },
  presence_penalty: { type: ['number', 'null'] },
  logprobs: { type: ['boolean', 'null'] },
  latentwatch: { type: 'object', additionalProperties: false, properties: { inject: injectSchema } },
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
  },
  required: ['model', 'messages'],
} as const;

export const completionRequestSchema = {
  type: 'object',
  properties: {
    ...common,
    prompt: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 }, { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 1 }] },
    echo: { type: ['boolean', 'null'] },
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
  latentwatch?: { inject?: InjectRequest };
}

export interface ChatBody extends CommonBody {
  messages: { role: string; content?: string | { type: string; text?: string }[] | null; name?: string }[];
}

export interface CompletionBody extends CommonBody {
  prompt: string | number[] | string[];
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

export function toJob(kind: ApiKind, body: ChatBody | CompletionBody): Job {
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
  };
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
  const choice =
    job.kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: finish }
      : { index: 0, text, logprobs: null, finish_reason: finish };
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion' : 'text_completion', created: job.created, model: job.model, choices: [choice], usage: u, latentwatch: verdict };
}

/** A stream chunk carrying a text delta (or the finish reason when `finish` is set). */
export function deltaChunk(job: Job, text: string, finish: FinishReason | null, first = false): Record<string, unknown> {
  const choice =
    job.kind === 'chat'
      ? { index: 0, delta: first ? { role: 'assistant', content: text } : finish && !text ? {} : { content: text }, logprobs: null, finish_reason: finish }
      : { index: 0, text, logprobs: null, finish_reason: finish };
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: job.model, choices: [choice] };
}

export function usageChunk(job: Job, u: Usage): Record<string, unknown> {
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: job.model, choices: [], usage: u };
}

/** The verdict chunk sent last before [DONE]: no choices, so clients that ignore it lose nothing. */
export function verdictChunk(job: Job, verdict: unknown): Record<string, unknown> {
  return { id: job.id, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: job.model, choices: [], latentwatch: verdict };
}
