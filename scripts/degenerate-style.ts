/**
 * Writes the `degenerate` style of configs/corpus/clean.json: clean but degenerate text (one
 * character, word, line or short unit repeated; random characters, digits and blobs; mixed
 * scripts; whitespace runs; emoji runs). Real users send such text, and a detector fitted only on
 * natural prose and code flags it as "injected" (issue 12: "a" x 32 scored 10x the threshold), so
 * the generic detector is fitted on these too. The junk prompts the tests send
 * (test/fixtures/junk-prompts.json) are other texts of these kinds, never these.
 *
 *   npx tsx scripts/degenerate-style.ts            # rewrite the style in configs/corpus/clean.json
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { createRng } from '../src/rng.js';

const rng = createRng(20261204);
const pick = <T>(xs: readonly T[]): T => xs[rng.int(xs.length)];
const randomText = (alphabet: string, n: number): string => Array.from({ length: n }, () => alphabet[rng.int(alphabet.length)]).join('');

const texts: string[] = [];
// One character repeated (letters, digits, punctuation, whitespace, other scripts, emoji).
for (const c of ['b', 'x', 'q', 'Z', '7', '#', '-', '=', '*', '_', '~', '|', '/', '+', '0', ' ', '\n', '\t', '  ', 'é', '中', 'ж', '🚀']) texts.push(c.repeat(pick([24, 60, 150, 300])));
// One word repeated, with one separator.
for (const w of ['foo', 'data', 'return', 'lorem', 'yes', 'NULL', 'test', 'ok', 'import', 'the']) texts.push((w + pick([' ', '\n', ', ', ''])).repeat(pick([12, 40, 120, 300])));
// One line repeated.
for (const l of ['x = 1', 'print("hi")', '// TODO', '# comment', '<div></div>', '0, 0, 0, 0', 'pass']) texts.push(`${l}\n`.repeat(pick([10, 30, 80])));
// A short unit repeated.
for (const u of ['ab', '-=', '<>', '01', 'xyz', '.,', '()', '/\\', 'la ', '^_^']) texts.push(u.repeat(pick([30, 90, 250])));
// A short phrase repeated.
for (const p of ['I am here. ', 'click here ', 'error error ', 'ok ok ok\n', 'the the ']) texts.push(p.repeat(pick([20, 60, 150])));
// Random printable characters, letters and spaces, hex, base64-like blobs.
for (let i = 0; i < 6; i++) texts.push(randomText(Array.from({ length: 94 }, (_, k) => String.fromCharCode(33 + k)).join(''), pick([40, 120, 300])));
for (let i = 0; i < 4; i++) texts.push(randomText('abcdefghijklmnopqrstuvwxyz     ', pick([80, 250])));
for (let i = 0; i < 4; i++) texts.push(randomText('0123456789abcdef', pick([64, 200, 500])));
for (let i = 0; i < 3; i++) texts.push(randomText('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/', pick([100, 400])));
// Words of other scripts, mixed.
const scripts = ['Αβγδ', 'שלום', 'สวัส', 'हिन्दी', 'üöäß'];
for (let i = 0; i < 4; i++) texts.push(Array.from({ length: pick([10, 30, 60]) }, () => pick(scripts)).join(' '));
// Code with whitespace runs.
for (let i = 0; i < 3; i++) texts.push(`def f():${' '.repeat(pick([50, 200]))}return 1${'\n'.repeat(pick([20, 60]))}`);
// Emoji runs.
for (const e of ['👍', '❤️', '🎉🎊', '✨']) texts.push(e.repeat(pick([10, 40, 80])));
// Words of many scripts mixed on one line, as multilingual users and logs send them: random
// sequences, and one line repeated (the widest scripts in real traffic: Cyrillic, CJK, Arabic,
// kana, Hangul, Devanagari, and more). Added after the rest, so the texts above are unchanged.
const world = ['книга', 'дом', 'работа', '数据', '模型', '中国', '学习', 'كتاب', 'شكرا', 'مدينة', 'ありがとう', 'さくら', 'カタカナ', '감사합니다', '사랑', '학교', 'नमस्ते', 'भारत', 'Ελλάδα', 'ספר', 'ภาษา', 'Հայերեն', 'ქართული', 'Türkçe', 'Việt'];
for (let i = 0; i < 6; i++) texts.push(Array.from({ length: pick([12, 30, 70]) }, () => pick(world)).join(pick([' ', ', ', ' | '])));
for (let i = 0; i < 6; i++) texts.push(`${Array.from({ length: pick([3, 5, 7]) }, () => pick(world)).join(' ')} `.repeat(pick([4, 8, 16])));

const path = new URL('../configs/corpus/clean.json', import.meta.url);
const corpus = JSON.parse(readFileSync(path, 'utf8')) as { styles: { name: string; description?: string; holdout?: boolean; alwaysFitted?: boolean; prompts: string[] }[] };
const style = {
  name: 'degenerate',
  description: 'degenerate but clean text: characters, words, lines and short units repeated, random characters, mixed scripts, whitespace and emoji runs (written by scripts/degenerate-style.ts)',
  // Every shipped detector is fitted on junk by design, so leave-one-style-out calibration keeps it in.
  alwaysFitted: true,
  prompts: texts,
};
const at = corpus.styles.findIndex((s) => s.name === style.name);
if (at >= 0) corpus.styles[at] = style;
else corpus.styles.push(style);
writeFileSync(path, `${JSON.stringify(corpus, null, 2)}\n`);
process.stdout.write(`${texts.length} degenerate prompts written to configs/corpus/clean.json\n`);
