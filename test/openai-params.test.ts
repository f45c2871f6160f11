/**
 * OpenAI request parameters beyond the basics (issue 13, point 7), through the real `openai` SDK
 * against a real daemon on qwen2-code-16m: logprobs (chat and legacy completions, streamed and
 * not) against a log-softmax of the engine's own logits, echo, frequency and presence penalties,
 * logit bias, and a coded 400 naming each parameter the daemon cannot honour.
 */
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../src/daemon/daemon.js';
import { Engine } from '../src/engine/engine.js';
import type { SamplingOptions, Step } from '../src/engine/types.js';
import { API_KEY, startTestDaemon, trainTestProbe } from './daemon-fixture.js';
import { CODE16M, TEST_CACHE, logSoftmax } from './helpers.js';

const MODEL = 'qwen2-code-16m';
let daemon: Daemon;
let client: OpenAI;
let engine: Engine;

beforeAll(async () => {
  daemon = await startTestDaemon(await trainTestProbe());
  client = new OpenAI({ baseURL: `${daemon.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
  engine = await Engine.load(CODE16M, { cacheDir: TEST_CACHE });
});
afterAll(async () => {
  await daemon?.close();
  await engine?.close();
});

/** The engine's own greedy run: each text token with its logits row. */
async function reference(promptIds: number[], maxTokens: number, sampling: SamplingOptions = {}): Promise<Step[]> {
  const steps: Step[] = [];
  for await (const s of engine.generate({ promptIds, maxTokens, sampling, returnLogits: true })) {
    if (s.kind === 'token' && !engine.eosTokenIds.includes(s.tokenId)) steps.push(s);
  }
  return steps;
}

// The daemon and this process run the same fp32 build; separate sessions, one float32 pass each.
const TOL = 1e-4;
const PROMPT = 'class Config:\n    def __init__(self, path):\n        self.';

describe('logprobs', () => {
  it('chat: each token log-softmax of the engine logits, top_logprobs sorted and led by the greedy pick; the stream carries the same', async () => {
    const messages = [{ role: 'user' as const, content: 'def add(a, b):' }];
    const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0].logprobs!.content!;
    const ref = await reference(engine.tokenizer!.encodeChat(messages, { addGenerationPrompt: true }), 12);
    expect(content).toHaveLength(ref.length);
    expect(content.map((c) => c.token).join('')).toBe(r.choices[0].message.content);
    content.forEach((c, i) => {
      const lp = logSoftmax(ref[i].logits!);
      expect(c.token).toBe(engine.tokenizer!.decode([ref[i].tokenId]));
      expect(Math.abs(c.logprob - lp[ref[i].tokenId])).toBeLessThan(TOL);
      expect(Buffer.from(c.bytes!).toString('utf8')).toBe(c.token);
      expect(c.top_logprobs).toHaveLength(3);
      expect(c.top_logprobs[0].token).toBe(c.token);
      expect(c.top_logprobs[0].logprob).toBeCloseTo(c.logprob, 12);
      for (let j = 1; j < 3; j++) expect(c.top_logprobs[j].logprob).toBeLessThanOrEqual(c.top_logprobs[j - 1].logprob);
      const sorted = [...lp].sort((a, b) => b - a);
      c.top_logprobs.forEach((t, j) => expect(Math.abs(t.logprob - sorted[j])).toBeLessThan(TOL));
    });

    const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 3, stream: true });
    const streamed: typeof content = [];
    let text = '';
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (!c) continue;
      text += c.delta.content ?? '';
      streamed.push(...(c.logprobs?.content ?? []));
      // A chunk's logprobs are those of the tokens whose text it carries.
      expect((c.logprobs?.content ?? []).map((x) => x.token).join('')).toBe(c.delta.content ?? '');
    }
    expect(text).toBe(r.choices[0].message.content);
    expect(streamed.map((c) => c.token)).toEqual(content.map((c) => c.token));
    streamed.forEach((c, i) => expect(Math.abs(c.logprob - content[i].logprob)).toBeLessThan(TOL));
  });

  it('completions: tokens, token_logprobs, top_logprobs (the top k plus the sampled token), text_offset', async () => {
    const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 10, temperature: 0, logprobs: 2 });
    const lp = r.choices[0].logprobs!;
    const ref = await reference(engine.tokenizer!.encode(PROMPT), 10);
    expect(lp.tokens).toHaveLength(ref.length);
    expect(lp.tokens!.join('')).toBe(r.choices[0].text);
    lp.token_logprobs!.forEach((l, i) => expect(Math.abs(l - logSoftmax(ref[i].logits!)[ref[i].tokenId])).toBeLessThan(TOL));
    lp.top_logprobs!.forEach((top, i) => {
      const entries = Object.entries(top);
      expect(entries.length).toBeGreaterThanOrEqual(2);
      expect(entries.length).toBeLessThanOrEqual(3);
      expect(top[lp.tokens![i]]).toBeCloseTo(lp.token_logprobs![i], 12);
    });
    let at = 0;
    lp.text_offset!.forEach((o, i) => {
      expect(o).toBe(at);
      at += lp.tokens![i].length;
    });
    // logprobs: 0 still reports the sampled tokens.
    const zero = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 4, temperature: 0, logprobs: 0 });
    expect(zero.choices[0].logprobs!.tokens).toEqual(lp.tokens!.slice(0, 4));
    expect(zero.choices[0].logprobs!.top_logprobs!.map((t) => Object.keys(t))).toEqual(lp.tokens!.slice(0, 4).map((t) => [t]));
  });

  it('no logprobs unless asked for', async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x = ' }], max_tokens: 3, temperature: 0 });
    expect(r.choices[0].logprobs).toBeNull();
  });
});

describe('echo', () => {
  it('returns the prompt before the text, streamed or not; with logprobs, the prompt tokens too (the first without one)', async () => {
    const plain = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 6, temperature: 0 });
    const echoed = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 6, temperature: 0, echo: true });
    expect(echoed.choices[0].text).toBe(PROMPT + plain.choices[0].text);
    let streamed = '';
    for await (const c of await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 6, temperature: 0, echo: true, stream: true })) streamed += c.choices[0]?.text ?? '';
    expect(streamed).toBe(PROMPT + plain.choices[0].text);
    // A token-id prompt echoes its text.
    const ids = engine.tokenizer!.encode(PROMPT);
    const byIds = await client.completions.create({ model: MODEL, prompt: ids, max_tokens: 6, temperature: 0, echo: true });
    expect(byIds.choices[0].text).toBe(PROMPT + plain.choices[0].text);

    // max_tokens 0: score the prompt. Row i of a full forward pass predicts prompt token i + 1.
    const scored = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 0, echo: true, logprobs: 1 });
    const lp = scored.choices[0].logprobs!;
    expect(scored.choices[0].text).toBe(PROMPT);
    expect(lp.tokens!.join('')).toBe(PROMPT);
    expect(lp.token_logprobs![0]).toBeNull();
    expect(lp.top_logprobs![0]).toBeNull();
    const all = await engine.newSequence(ids.length).forward(ids, { logits: 'all' });
    const V = engine.config.vocabSize;
    for (let i = 1; i < ids.length; i++) {
      expect(Math.abs(lp.token_logprobs![i] - logSoftmax(all.logits.subarray((i - 1) * V, i * V))[ids[i]])).toBeLessThan(TOL);
    }
    const both = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 6, temperature: 0, echo: true, logprobs: 1 });
    expect(both.choices[0].logprobs!.tokens).toEqual([...lp.tokens!, ...(await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 6, temperature: 0, logprobs: 1 })).choices[0].logprobs!.tokens!]);
    expect(both.choices[0].logprobs!.text_offset!.at(ids.length)).toBe(PROMPT.length);
  });
});

describe('frequency and presence penalties', () => {
  const maxRepeats = (tokens: string[]) => Math.max(...[...new Set(tokens)].map((t) => tokens.filter((x) => x === t).length));
  const tokensOf = async (extra: Record<string, number>) =>
    (await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 24, temperature: 0, logprobs: 0, ...extra })).choices[0].logprobs!.tokens!;

  it('0 leaves the greedy continuation as it is; strong penalties stop it repeating, as the engine does', async () => {
    const base = await tokensOf({});
    // The premise: the greedy continuation repeats itself ("path = path\n        self.path ...").
    expect(maxRepeats(base)).toBeGreaterThanOrEqual(4);
    expect(await tokensOf({ frequency_penalty: 0, presence_penalty: 0 })).toEqual(base);
    for (const extra of [{ frequency_penalty: 2 }, { presence_penalty: 2 }] as Record<string, number>[]) {
      const penalised = await tokensOf(extra);
      expect(penalised).not.toEqual(base);
      expect(maxRepeats(penalised)).toBeLessThan(maxRepeats(base));
      const samplingOf = { frequencyPenalty: extra.frequency_penalty, presencePenalty: extra.presence_penalty };
      const ref = await reference(engine.tokenizer!.encode(PROMPT), 24, samplingOf);
      expect(penalised).toEqual(ref.map((s) => engine.tokenizer!.decode([s.tokenId])));
    }
    // A negative penalty rewards repetition.
    expect(maxRepeats(await tokensOf({ frequency_penalty: -2 }))).toBeGreaterThanOrEqual(maxRepeats(base));
  });

  it('with a seed, a penalised sample reproduces', async () => {
    const a = await tokensOf({ temperature: 1, seed: 5, frequency_penalty: 1.5 });
    expect(await tokensOf({ temperature: 1, seed: 5, frequency_penalty: 1.5 })).toEqual(a);
  });

  it('logit_bias +100 forces a token; out-of-vocabulary ids are refused', async () => {
    const id = engine.tokenizer!.encode(' pass')[0];
    const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 3, temperature: 0, logit_bias: { [id]: 100 } });
    expect(r.choices[0].text).toBe(engine.tokenizer!.decode([id, id, id]));
    await expect(client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 3, logit_bias: { 99999: 5 } })).rejects.toMatchObject({ status: 400, param: 'logit_bias' });
  });
});

describe('parameters the daemon cannot honour', () => {
  const chat = (extra: Record<string, unknown>) => client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 2, ...extra } as never);
  const completion = (extra: Record<string, unknown>) => client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 2, ...extra } as never);

  it('answer a coded 400 naming the parameter', async () => {
    const cases: [string, () => Promise<unknown>, string][] = [
      ['n: 2', () => chat({ n: 2 }), 'n'],
      ['tools', () => chat({ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }] }), 'tools'],
      ['tool_choice: required', () => chat({ tool_choice: 'required' }), 'tool_choice'],
      ['response_format json', () => chat({ response_format: { type: 'json_object' } }), 'response_format'],
      ['audio output', () => chat({ modalities: ['text', 'audio'] }), 'modalities'],
      ['an unknown parameter', () => chat({ min_p: 0.1 }), 'min_p'],
      ['an image part', () => chat({ messages: [{ role: 'user', content: [{ type: 'text', text: 'what is this?' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,AA==' } }] }] }), 'messages[0].content[1]'],
      ['an assistant tool call', () => chat({ messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }] }] }), 'messages[0].tool_calls'],
      ['suffix', () => completion({ suffix: '\n    return x' }), 'suffix'],
      ['best_of: 2', () => completion({ best_of: 2 }), 'best_of'],
      ['n: 3 (completions)', () => completion({ n: 3 }), 'n'],
      ['a chat parameter on completions', () => completion({ tools: [] }), 'tools'],
    ];
    for (const [what, call, param] of cases) {
      await expect(call(), what).rejects.toMatchObject({ status: 400, code: 'LW_ERR_API_UNSUPPORTED_PARAMETER', param });
    }
    // Out of range or inconsistent: the ordinary bad-request code, with the parameter.
    await expect(chat({ top_logprobs: 2 })).rejects.toMatchObject({ status: 400, code: 'LW_ERR_API_BAD_REQUEST', param: 'top_logprobs' });
    await expect(chat({ frequency_penalty: 2.5 })).rejects.toMatchObject({ status: 400, code: 'LW_ERR_API_BAD_REQUEST' });
  });

  it('are accepted at their no-op values, with the same output as without them', async () => {
    const plain = (await chat({ temperature: 0, max_tokens: 6 })) as OpenAI.Chat.ChatCompletion;
    const noop = (await chat({
      temperature: 0,
      max_tokens: 6,
      n: 1,
      tools: [],
      tool_choice: 'none',
      parallel_tool_calls: false,
      response_format: { type: 'text' },
      logit_bias: {},
      frequency_penalty: 0,
      presence_penalty: 0,
      logprobs: false,
      top_logprobs: 0,
      modalities: ['text'],
      store: false,
      user: 'u1',
      metadata: { team: 'a' },
    })) as OpenAI.Chat.ChatCompletion;
    expect(noop.choices[0].message.content).toBe(plain.choices[0].message.content);
    const c = (await completion({ temperature: 0, max_tokens: 6, n: 1, best_of: 1, suffix: null, echo: false })) as OpenAI.Completion;
    expect(c.choices[0].text).toBe(((await completion({ temperature: 0, max_tokens: 6 })) as OpenAI.Completion).choices[0].text);
  });
});
