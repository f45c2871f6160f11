/**
 * Formatting shared by the lab's two reports, `latentwatch report` (report.ts) and
 * `latentwatch generic-report` (generic-report.ts): figures, aggregator names, markdown tables, the
 * [0, 1] chart axis and the files a report writes. One copy, so the two reports cannot drift apart
 * in how they print the same thing. Everything here is deterministic (same data, same bytes).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AggregatorSpec } from '../probes/aggregators.js';

/** A figure with `digits` decimals; '–' where there is none (null, undefined, NaN, ±∞), so no cell is blank. */
export function fmt(x: number | null | undefined, digits = 3): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(digits);
}

/**
 * An aggregator as the reports name it: `last`, `ema(0.3)`, `rolling-max(8)`, plus `, skip k` when
 * leading positions are not scored (the skip changes what a request's score is, so it is part of
 * the name).
 */
export function aggregatorName(a: AggregatorSpec): string {
  const base = a.kind === 'ema' ? `ema(${a.alpha})` : a.kind === 'rolling-mean' || a.kind === 'rolling-max' ? `${a.kind}(${a.window})` : a.kind;
  return a.skip ? `${base}, skip ${a.skip}` : base;
}

/** One markdown table row. */
export function tableRow(cells: readonly (string | number)[]): string {
  return `| ${cells.join(' | ')} |`;
}

/** A markdown table's header row and the separator row under it. */
export function tableHeader(columns: readonly string[]): [string, string] {
  return [tableRow(columns), `|${columns.map(() => '---|').join('')}`];
}

/** Report lines as one markdown text ending in exactly one newline. */
export function markdownText(lines: readonly string[]): string {
  return `${lines.join('\n').replace(/\n+$/, '')}\n`;
}

/** The y axis of a chart of figures in [0, 1] (AUROC, TPR, flagged fractions). */
export const UNIT_Y_AXIS = { yDomain: [0, 1] as const, yTicks: [0, 0.2, 0.4, 0.6, 0.8, 1] };

/** Write a report into `outDir`: each chart (file name → SVG text), report.md and report.json. */
export function writeReportFiles(outDir: string, charts: ReadonlyMap<string, string>, markdown: string, data: unknown): void {
  mkdirSync(outDir, { recursive: true });
  for (const [name, svg] of charts) writeFileSync(join(outDir, name), svg);
  writeFileSync(join(outDir, 'report.md'), markdown);
  writeFileSync(join(outDir, 'report.json'), `${JSON.stringify(data, null, 2)}\n`);
}
