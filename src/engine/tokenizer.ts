/**
 * Tokenizer and chat layer of the engine: Hugging Face tokenizer files in, token ids and chat prompts out.
 *
 * Encoding and decoding are done by `@huggingface/tokenizers` (a pure-JS port of the Rust `tokenizers`
 * crate) from the checkpoint's tokenizer.json; chat prompts are rendered by `@huggingface/jinja` from the
 * checkpoint's chat template, with the variables transformers' `apply_chat_template` passes. Both are
 * checked against what transformers itself produces (test/tokenizer.test.ts,
 * test/fixtures/tokenizer_reference.json).
 *
 * Load time: parsing the Qwen tokenizer.json (7 MB for Qwen2.5, 11 MB for Qwen3) and building the BPE
 * tables takes 0.3–0.5 s on a 2-core machine; the chat template is compiled on first use and cached.
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { isLatentwatchError, lwError } from '../errors.js';

/** One chat message, as the OpenAI API and transformers' chat templates take it. */
export interface ChatMessage {
  role: string;
  /** A string, or a list of content parts (`{type: 'text', text}` ...), or null (assistant tool calls). */
  content?: string | ReadonlyArray<Record<string, unknown>> | null;
  /** Anything else the template may read: `tool_calls`, `reasoning_content`, `name`, `tool_call_id`, ... */
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** End the prompt with the header of a new assistant turn (transformers' `add_generation_prompt`). */
  addGenerationPrompt: boolean;
  /**
   * Qwen3's thinking switch (`enable_thinking`). Passed to the template only when given: templates test
   * `enable_thinking is defined`, so leaving it out and passing `true` can differ.
   */
  enableThinking?: boolean;
  /** Tool schemas (OpenAI `{type: 'function', function: {...}}` objects), passed as `tools`. */
  tools?: ReadonlyArray<Record<string, unknown>>;
  /** Documents for retrieval-augmented templates, passed as `documents`. */
  documents?: ReadonlyArray<Record<string, unknown>>;
  /**
   * Leave the last message open so the model continues it (transformers' `continue_final_message`): the
   * rendered text is cut right after the last message's content. Used for a fixed answer prefix.
   * Cannot be combined with `addGenerationPrompt`.
   */
  continueFinalMessage?: boolean;
  /** Which of several named templates to use; default: `tool_use` when tools are given and it exists, else `default`. */
  templateName?: string;
  /** Further template variables (transformers passes extra `apply_chat_template` kwargs through the same way). */
  variables?: Record<string, unknown>;
}

export interface EncodeOptions {
  /** Let the post-processor add the model's special tokens (BOS/EOS), as transformers does by default. Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (e.g. `<|im_end|>`) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

/** The files of a checkpoint the tokenizer reads, already parsed. */
export interface TokenizerFiles {
  /** tokenizer.json */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json ({} when absent) */
  config?: Record<string, unknown>;
  /** generation_config.json, or config.json when the checkpoint has no generation_config.json */
  generationConfig?: Record<string, unknown>;
  /** chat_template.jinja: where transformers ≥ 4.43 saves the template; takes precedence over tokenizer_config's */
  chatTemplate?: string;
}

/** The special-token variables transformers passes to every chat template (its `special_tokens_map`). */
const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

export class Tokenizer {
  private readonly hf: HfTokenizer;
  private readonly cleanUpSpaces: boolean;
  /** Chat templates by name; a single template is stored as `default`. */
  private readonly templates: ReadonlyMap<string, string>;
  private readonly compiled = new Map<string, Template>();
  private readonly specialTokenVars: Readonly<Record<string, unknown>>;
  /** Whether vocabulary entries are byte-level BPE spellings (GPT-2's byte→character table). */
  private readonly byteLevel: boolean;

  /** Ids that end generation: generation_config's `eos_token_id` (number or list), then tokenizer_config's `eos_token`. */
  readonly eosTokenIds: readonly number[];

  /** Reads tokenizer.json (required), tokenizer_config.json, generation_config.json (or config.json) and chat_template.jinja from `dir`. */
  static async fromDir(dir: string): Promise<Tokenizer> {
    const [tokenizer, config, generationConfig, chatTemplate] = await Promise.all([
      readJson(dir, 'tokenizer.json'),
      readJson(dir, 'tokenizer_config.json'),
      // transformers builds the generation config from config.json when generation_config.json is absent.
      readJson(dir, 'generation_config.json').then((g) => g ?? readJson(dir, 'config.json')),
      readOptional(path.join(dir, 'chat_template.jinja')),
    ]);
    if (tokenizer === undefined) throw lwError('LW_ERR_TOKENIZER_NOT_FOUND', path.join(dir, 'tokenizer.json'));
    return new Tokenizer({ tokenizer, config, generationConfig, chatTemplate });
  }

  constructor(files: TokenizerFiles) {
    const config = files.config ?? {};
    try {
      this.hf = new HfTokenizer(files.tokenizer, config);
    } catch (e) {
      throw lwError('LW_ERR_TOKENIZER_INVALID', `tokenizer.json: ${errorMessage(e)}`, undefined, e);
    }
    // transformers has defaulted clean_up_tokenization_spaces to false since 4.45; the JS port defaults to
    // true, which turns "a , b" into "a, b" (wrong for code). Follow transformers.
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true;
    this.byteLevel = JSON.stringify(files.tokenizer.decoder ?? null).includes('"ByteLevel"');
    this.templates = readTemplates(files.chatTemplate ?? config.chat_template);

    const vars: Record<string, unknown> = {};
    for (const key of SPECIAL_TOKEN_KEYS) {
      const token = tokenContent(config[key]);
      if (token !== undefined) vars[key] = token;
    }
    if (Array.isArray(config.additional_special_tokens)) {
      vars.additional_special_tokens = config.additional_special_tokens.map(tokenContent).filter((t) => t !== undefined);
    }
    this.specialTokenVars = vars;

    const eos: number[] = [];
    const fromGeneration = files.generationConfig?.eos_token_id;
    for (const id of Array.isArray(fromGeneration) ? fromGeneration : [fromGeneration]) {
      if (Number.isInteger(id)) eos.push(id as number);
    }
    const eosToken = tokenContent(config.eos_token);
    const eosFromConfig = eosToken === undefined ? undefined : this.tokenId(eosToken);
    if (eosFromConfig !== undefined) eos.push(eosFromConfig);
    this.eosTokenIds = [...new Set(eos)];
  }

  /** Whether the checkpoint has a chat template; without one, `applyChatTemplate` uses the plain fallback format. */
  get hasChatTemplate(): boolean {
    return this.templates.size > 0;
  }

  /** Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their single ids. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    return this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  /** Text of `ids`. Ids the vocabulary does not have (padding rows of the embedding matrix) are dropped, as the Rust tokenizers do. */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    const known = ids.filter((id) => this.hf.id_to_token(id) !== undefined);
    if (known.length === 0) return ''; // the JS port throws on an empty list
    return this.hf.decode(known, {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.cleanUpSpaces,
    });
  }

  /**
   * The bytes one token stands for (logprobs report them: a token may hold part of a UTF-8
   * character, which its decoded text cannot show). Byte-level vocabularies spell bytes as
   * characters; other tokens are their decoded text's UTF-8. Unknown ids: no bytes.
   */
  tokenBytes(id: number): number[] {
    const spelling = this.hf.id_to_token(id);
    if (spelling === undefined) return [];
    if (this.byteLevel) {
      const table = unicodeToByte();
      const bytes: number[] = [];
      for (const ch of spelling) {
        const b = table.get(ch);
        if (b === undefined) return [...Buffer.from(this.decode([id]), 'utf8')];
        bytes.push(b);
      }
      return bytes;
    }
    return [...Buffer.from(this.decode([id]), 'utf8')];
  }

  /** Id of a vocabulary entry or added token, in the vocabulary's own spelling (byte-level BPE writes a space as `Ġ`). */
  tokenId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /**
   * The prompt text for `messages`, as transformers' `apply_chat_template(..., tokenize=False)` renders it.
   *
   * Template variables, as transformers passes them: `messages`, `tools` (null when not given),
   * `documents` (null when not given), `add_generation_prompt`, the special tokens of tokenizer_config.json
   * that are set (`bos_token`, `eos_token`, `pad_token`, ..., `additional_special_tokens`), `enable_thinking`
   * only when given, and `opts.variables`. `raise_exception` and `strftime_now` are jinja globals.
   *
   * Fallback for base models without a chat template: each message as `"{role}: {content}\n"`, then
   * `"assistant: "` when `addGenerationPrompt`; with `continueFinalMessage` the last message's newline is left
   * off. Content parts are joined by their `text`. Tools need a real template (LW_ERR_TOKENIZER_TEMPLATE).
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions): string {
    if (opts.addGenerationPrompt && opts.continueFinalMessage) {
      throw lwError('LW_ERR_TOKENIZER_TEMPLATE', 'addGenerationPrompt and continueFinalMessage cannot both be set');
    }
    if (opts.continueFinalMessage && messages.length === 0) {
      throw lwError('LW_ERR_TOKENIZER_TEMPLATE', 'continueFinalMessage needs at least one message');
    }
    if (!this.hasChatTemplate) return plainChat(messages, opts);

    const vars: Record<string, unknown> = {
      ...this.specialTokenVars,
      ...opts.variables,
      messages,
      tools: opts.tools ?? null,
      documents: opts.documents ?? null,
      add_generation_prompt: opts.addGenerationPrompt,
    };
    if (opts.enableThinking !== undefined) vars.enable_thinking = opts.enableThinking;

    let text: string;
    try {
      text = this.template(opts).render(vars);
    } catch (e) {
      if (isLatentwatchError(e)) throw e;
      throw lwError('LW_ERR_TOKENIZER_TEMPLATE', errorMessage(e), undefined, e);
    }
    return opts.continueFinalMessage ? cutAfterFinalMessage(text, messages[messages.length - 1]) : text;
  }

  /** `applyChatTemplate` then `encode` without adding special tokens again (the template already wrote them). */
  encodeChat(messages: readonly ChatMessage[], opts: ChatTemplateOptions): number[] {
    return this.encode(this.applyChatTemplate(messages, opts), { addSpecialTokens: false });
  }

  /** The compiled template for these options (transformers' choice among named templates). */
  private template(opts: ChatTemplateOptions): Template {
    let name = opts.templateName;
    if (name === undefined) {
      name = opts.tools !== undefined && this.templates.has('tool_use') ? 'tool_use' : 'default';
    }
    const source = this.templates.get(name);
    if (source === undefined) {
      throw lwError('LW_ERR_TOKENIZER_TEMPLATE', `no chat template named "${name}" (have: ${[...this.templates.keys()].join(', ')})`);
    }
    let compiled = this.compiled.get(name);
    if (compiled === undefined) {
      try {
        compiled = new Template(source);
      } catch (e) {
        throw lwError('LW_ERR_TOKENIZER_TEMPLATE', `template "${name}" does not parse: ${errorMessage(e)}`, undefined, e);
      }
      this.compiled.set(name, compiled);
    }
    return compiled;
  }
}

/** The fallback format of `applyChatTemplate` for checkpoints without a chat template. */
function plainChat(messages: readonly ChatMessage[], opts: ChatTemplateOptions): string {
  if (opts.tools !== undefined && opts.tools.length > 0) {
    throw lwError('LW_ERR_TOKENIZER_TEMPLATE', 'this model has no chat template, so it cannot be given tools');
  }
  let text = messages.map((m) => `${m.role}: ${contentText(m.content)}\n`).join('');
  if (opts.continueFinalMessage) text = text.slice(0, -1);
  if (opts.addGenerationPrompt) text += 'assistant: ';
  return text;
}

/** transformers' `continue_final_message`: cut the rendered chat right after the final message's content. */
function cutAfterFinalMessage(rendered: string, final: ChatMessage): string {
  // Like transformers: with content parts, the last part that has text.
  const content =
    typeof final.content === 'string'
      ? final.content
      : ([...(final.content ?? [])].reverse().find((part) => typeof part.text === 'string')?.text as string | undefined) ?? '';
  const trimmed = content.trim();
  const at = trimmed === '' ? -1 : rendered.lastIndexOf(trimmed);
  if (at < 0) {
    throw lwError('LW_ERR_TOKENIZER_TEMPLATE', 'continueFinalMessage: the final message does not appear in the rendered chat');
  }
  // Where the template kept the message's trailing whitespace, keep it too; else cut after the trimmed content.
  const kept = content.trimStart();
  return rendered.slice(0, rendered.startsWith(kept, at) ? at + kept.length : at + trimmed.length);
}

/** Text of a message's content for the fallback format: the string itself, or the `text` of its parts joined. */
function contentText(content: ChatMessage['content']): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  return content.map((part) => (typeof part.text === 'string' ? part.text : '')).join('');
}

/** tokenizer_config.json `chat_template`: a string, or a list of `{name, template}`. */
function readTemplates(value: unknown): Map<string, string> {
  const templates = new Map<string, string>();
  if (typeof value === 'string') {
    templates.set('default', value);
  } else if (Array.isArray(value)) {
    for (const entry of value as unknown[]) {
      const { name, template } = (entry ?? {}) as { name?: unknown; template?: unknown };
      if (typeof name !== 'string' || typeof template !== 'string') {
        throw lwError('LW_ERR_TOKENIZER_INVALID', 'tokenizer_config.json: chat_template list entries need a name and a template');
      }
      templates.set(name, template);
    }
  } else if (value !== undefined && value !== null) {
    throw lwError('LW_ERR_TOKENIZER_INVALID', 'tokenizer_config.json: chat_template must be a string or a list of named templates');
  }
  return templates;
}

/** A special token in tokenizer_config.json: a string, or an AddedToken object `{content, ...}`. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return undefined;
}

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw lwError('LW_ERR_TOKENIZER_INVALID', `${file}: ${errorMessage(e)}`, undefined, e);
  }
}

/** A JSON object file of the checkpoint, or undefined when the file does not exist. */
async function readJson(dir: string, name: string): Promise<Record<string, unknown> | undefined> {
  const file = path.join(dir, name);
  const text = await readOptional(file);
  if (text === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw lwError('LW_ERR_TOKENIZER_INVALID', `${file}: ${errorMessage(e)}`, undefined, e);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw lwError('LW_ERR_TOKENIZER_INVALID', `${file}: not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

let byteTable: Map<string, number> | undefined;

/** The inverse of GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the rest are shifted to U+0100 and up. */
function unicodeToByte(): Map<string, number> {
  if (byteTable) return byteTable;
  byteTable = new Map();
  let shifted = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    byteTable.set(String.fromCodePoint(printable ? b : 256 + shifted++), b);
  }
  return byteTable;
}
