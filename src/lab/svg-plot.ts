/**
 * A tiny, dependency-free SVG chart writer for report.md figures (AUROC per layer, TPR per
 * strength, yes/no logit shift per layer). Line charts over numeric x and grouped bar charts over
 * categories; title, axis labels, "nice" ticks, grid, a legend, optional horizontal reference
 * lines (chance, threshold). Output is deterministic: coordinates rounded to 2 decimals, fixed
 * palette (Okabe–Ito, colour-blind safe) and element order, so a regenerated report diffs clean.
 */

export interface LineSeries {
  readonly name: string;
  /** [x, y] pairs in drawing order; y null leaves a gap (e.g. AUROC undefined at that layer). */
  readonly points: ReadonlyArray<readonly [number, number | null]>;
}

export interface ReferenceLine {
  readonly y: number;
  readonly label?: string;
}

interface ChartCommon {
  readonly title: string;
  readonly xLabel?: string;
  readonly yLabel?: string;
  /** Default 640 × 400. */
  readonly width?: number;
  readonly height?: number;
  /** Fixed y range; default: the data range widened to nice ticks (bar charts always include 0). */
  readonly yDomain?: readonly [number, number];
  /** Explicit y ticks instead of the automatic ones. */
  readonly yTicks?: readonly number[];
  readonly referenceLines?: readonly ReferenceLine[];
}

export interface LineChartOptions extends ChartCommon {
  readonly series: readonly LineSeries[];
  readonly xDomain?: readonly [number, number];
  /** Explicit x ticks (e.g. every layer index). */
  readonly xTicks?: readonly number[];
  /** Draw a dot at every point. Default true. */
  readonly markers?: boolean;
}

export interface BarSeries {
  readonly name: string;
  /** One value per category; null draws no bar. */
  readonly values: ReadonlyArray<number | null>;
}

export interface BarChartOptions extends ChartCommon {
  readonly categories: readonly string[];
  readonly series: readonly BarSeries[];
}

export const PALETTE: readonly string[] = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#F0E442', '#000000'];

const MARGIN = { top: 40, right: 150, bottom: 52, left: 64 };

/** Line chart, one polyline (plus markers) per series. */
export function lineChart(o: LineChartOptions): string {
  const frame = layout(o);
  const xs: number[] = [];
  const ys: number[] = [];
  for (const s of o.series) {
    for (const [x, y] of s.points) {
      if (Number.isFinite(x)) xs.push(x);
      if (y !== null && Number.isFinite(y)) ys.push(y);
    }
  }
  const xAxis = axis(o.xDomain ?? extent(xs), o.xTicks, o.xDomain !== undefined);
  const yAxis = axis(o.yDomain ?? extent(ys.concat((o.referenceLines ?? []).map((r) => r.y))), o.yTicks, o.yDomain !== undefined);
  const sx = scale(xAxis.domain, frame.x0, frame.x1);
  const sy = scale(yAxis.domain, frame.y1, frame.y0);
  const parts = [open(frame, o.title), grid(frame, sx, sy, xAxis.ticks, yAxis.ticks), axes(frame, sx, sy, xAxis.ticks, yAxis.ticks, o)];
  parts.push(references(frame, sy, o.referenceLines));
  o.series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    let d = '';
    let pen = false;
    const dots: string[] = [];
    for (const [x, y] of s.points) {
      if (y === null || !Number.isFinite(y) || !Number.isFinite(x)) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${f(sx(x))},${f(sy(y))}`;
      pen = true;
      if (o.markers ?? true) dots.push(`<circle cx="${f(sx(x))}" cy="${f(sy(y))}" r="3" fill="${colour}"/>`);
    }
    parts.push(
      `<g class="series" data-series="${esc(s.name)}"><title>${esc(s.name)}</title>` +
        (d ? `<path d="${d}" fill="none" stroke="${colour}" stroke-width="2"/>` : '') +
        dots.join('') +
        '</g>',
    );
  });
  parts.push(legend(frame, o.series.map((s) => s.name)), '</svg>\n');
  return parts.join('\n');
}

/** Grouped bar chart: one group per category, one bar per series. */
export function barChart(o: BarChartOptions): string {
  const frame = layout(o);
  for (const s of o.series) {
    if (s.values.length !== o.categories.length) {
      throw new RangeError(`barChart: series ${s.name} has ${s.values.length} values for ${o.categories.length} categories`);
    }
  }
  const ys = [0];
  for (const s of o.series) for (const v of s.values) if (v !== null && Number.isFinite(v)) ys.push(v);
  const yAxis = axis(o.yDomain ?? extent(ys.concat((o.referenceLines ?? []).map((r) => r.y))), o.yTicks, o.yDomain !== undefined);
  const sy = scale(yAxis.domain, frame.y1, frame.y0);
  const nCat = Math.max(1, o.categories.length);
  const band = (frame.x1 - frame.x0) / nCat;
  const group = band * 0.8;
  const barW = group / Math.max(1, o.series.length);
  const parts = [open(frame, o.title)];
  const gridLines = yAxis.ticks.map((t) => `<line x1="${f(frame.x0)}" y1="${f(sy(t))}" x2="${f(frame.x1)}" y2="${f(sy(t))}" stroke="#e5e5e5"/>`);
  parts.push(`<g class="grid">${gridLines.join('')}</g>`);
  const catLabels = o.categories.map(
    (c, i) => `<text x="${f(frame.x0 + band * (i + 0.5))}" y="${f(frame.y1 + 16)}" text-anchor="middle" font-size="11">${esc(c)}</text>`,
  );
  parts.push(axisFrame(frame, sy, yAxis.ticks, o, catLabels.join('')));
  const base = sy(Math.min(Math.max(0, yAxis.domain[0]), yAxis.domain[1]));
  o.series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const bars: string[] = [];
    s.values.forEach((v, c) => {
      if (v === null || !Number.isFinite(v)) return;
      const x = frame.x0 + band * c + (band - group) / 2 + barW * i;
      const y = sy(v);
      bars.push(`<rect x="${f(x)}" y="${f(Math.min(y, base))}" width="${f(barW)}" height="${f(Math.abs(base - y))}" fill="${colour}"/>`);
    });
    parts.push(`<g class="series" data-series="${esc(s.name)}"><title>${esc(s.name)}</title>${bars.join('')}</g>`);
  });
  parts.push(references(frame, sy, o.referenceLines));
  parts.push(legend(frame, o.series.map((s) => s.name)), '</svg>\n');
  return parts.join('\n');
}

/**
 * About `target` round ticks (steps of 1, 2 or 5 × 10ᵏ) covering [min, max]; returns the ticks and
 * the domain widened to the outer ticks.
 */
export function niceTicks(min: number, max: number, target = 5): { ticks: number[]; domain: [number, number] } {
  if (!(Number.isFinite(min) && Number.isFinite(max)) || max < min) throw new RangeError(`niceTicks: bad range [${min}, ${max}]`);
  if (max === min) {
    const pad = min === 0 ? 1 : Math.abs(min) / 2;
    min -= pad;
    max += pad;
  }
  const rough = (max - min) / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(rough));
  const norm = rough / mag;
  const step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  const lo = Math.floor(min / step + 1e-9);
  const hi = Math.ceil(max / step - 1e-9);
  const ticks: number[] = [];
  for (let k = lo; k <= hi; k++) ticks.push(roundTo(k * step, step));
  return { ticks, domain: [ticks[0], ticks[ticks.length - 1]] };
}

// ---- internals ----------------------------------------------------------------------------

interface Frame {
  width: number;
  height: number;
  x0: number;
  x1: number;
  y0: number;
  y1: number;
}

function layout(o: ChartCommon): Frame {
  const width = o.width ?? 640;
  const height = o.height ?? 400;
  return { width, height, x0: MARGIN.left, x1: width - MARGIN.right, y0: MARGIN.top, y1: height - MARGIN.bottom };
}

function extent(values: number[]): [number, number] {
  if (values.length === 0) return [0, 1];
  let lo = values[0];
  let hi = values[0];
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

function axis(domain: readonly [number, number], ticks: readonly number[] | undefined, fixed: boolean): { domain: [number, number]; ticks: number[] } {
  if (ticks !== undefined && ticks.length > 0) {
    const lo = fixed ? domain[0] : Math.min(domain[0], ...ticks);
    const hi = fixed ? domain[1] : Math.max(domain[1], ...ticks);
    return { domain: lo === hi ? [lo - 1, hi + 1] : [lo, hi], ticks: [...ticks] };
  }
  const nice = niceTicks(domain[0], domain[1]);
  if (!fixed) return nice;
  return { domain: [domain[0], domain[1]], ticks: nice.ticks.filter((t) => t >= domain[0] - 1e-12 && t <= domain[1] + 1e-12) };
}

function scale(domain: readonly [number, number], r0: number, r1: number): (v: number) => number {
  const [d0, d1] = domain;
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

function open(frame: Frame, title: string): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${frame.width}" height="${frame.height}" viewBox="0 0 ${frame.width} ${frame.height}" font-family="sans-serif">`,
    `<rect width="${frame.width}" height="${frame.height}" fill="#ffffff"/>`,
    `<text class="title" x="${f((frame.x0 + frame.x1) / 2)}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ].join('\n');
}

function grid(frame: Frame, sx: (v: number) => number, sy: (v: number) => number, xt: number[], yt: number[]): string {
  const lines = [
    ...yt.map((t) => `<line x1="${f(frame.x0)}" y1="${f(sy(t))}" x2="${f(frame.x1)}" y2="${f(sy(t))}" stroke="#e5e5e5"/>`),
    ...xt.map((t) => `<line x1="${f(sx(t))}" y1="${f(frame.y0)}" x2="${f(sx(t))}" y2="${f(frame.y1)}" stroke="#f0f0f0"/>`),
  ];
  return `<g class="grid">${lines.join('')}</g>`;
}

function axes(frame: Frame, sx: (v: number) => number, sy: (v: number) => number, xt: number[], yt: number[], o: ChartCommon): string {
  const xDigits = decimals(xt);
  const xTicks = xt.map(
    (t) =>
      `<line x1="${f(sx(t))}" y1="${f(frame.y1)}" x2="${f(sx(t))}" y2="${f(frame.y1 + 5)}" stroke="#333"/>` +
      `<text x="${f(sx(t))}" y="${f(frame.y1 + 18)}" text-anchor="middle" font-size="11">${tickLabel(t, xDigits)}</text>`,
  );
  return axisFrame(frame, sy, yt, o, xTicks.join(''));
}

/** Axis lines, y ticks and labels, axis titles; `xPart` carries the x ticks or category labels. */
function axisFrame(frame: Frame, sy: (v: number) => number, yt: number[], o: ChartCommon, xPart: string): string {
  const yDigits = decimals(yt);
  const yTicks = yt.map(
    (t) =>
      `<line x1="${f(frame.x0 - 5)}" y1="${f(sy(t))}" x2="${f(frame.x0)}" y2="${f(sy(t))}" stroke="#333"/>` +
      `<text x="${f(frame.x0 - 8)}" y="${f(sy(t) + 4)}" text-anchor="end" font-size="11">${tickLabel(t, yDigits)}</text>`,
  );
  const out = [
    `<g class="axes" stroke-width="1">`,
    `<line x1="${f(frame.x0)}" y1="${f(frame.y1)}" x2="${f(frame.x1)}" y2="${f(frame.y1)}" stroke="#333"/>`,
    `<line x1="${f(frame.x0)}" y1="${f(frame.y0)}" x2="${f(frame.x0)}" y2="${f(frame.y1)}" stroke="#333"/>`,
    xPart,
    yTicks.join(''),
  ];
  if (o.xLabel) out.push(`<text class="x-label" x="${f((frame.x0 + frame.x1) / 2)}" y="${f(frame.height - 12)}" text-anchor="middle" font-size="12">${esc(o.xLabel)}</text>`);
  if (o.yLabel) {
    const cy = (frame.y0 + frame.y1) / 2;
    out.push(`<text class="y-label" x="16" y="${f(cy)}" text-anchor="middle" font-size="12" transform="rotate(-90 16 ${f(cy)})">${esc(o.yLabel)}</text>`);
  }
  out.push('</g>');
  return out.join('');
}

function references(frame: Frame, sy: (v: number) => number, lines: readonly ReferenceLine[] | undefined): string {
  if (!lines || lines.length === 0) return '<g class="references"></g>';
  const out = lines.map(
    (r) =>
      `<line x1="${f(frame.x0)}" y1="${f(sy(r.y))}" x2="${f(frame.x1)}" y2="${f(sy(r.y))}" stroke="#777" stroke-dasharray="4 3"/>` +
      (r.label ? `<text x="${f(frame.x1 - 4)}" y="${f(sy(r.y) - 4)}" text-anchor="end" font-size="10" fill="#555">${esc(r.label)}</text>` : ''),
  );
  return `<g class="references">${out.join('')}</g>`;
}

function legend(frame: Frame, names: readonly string[]): string {
  const x = frame.x1 + 14;
  const items = names.map((name, i) => {
    const y = frame.y0 + 8 + i * 18;
    const colour = PALETTE[i % PALETTE.length];
    return `<rect x="${f(x)}" y="${f(y - 9)}" width="12" height="12" fill="${colour}"/><text x="${f(x + 18)}" y="${f(y + 1)}" font-size="11">${esc(name)}</text>`;
  });
  return `<g class="legend">${items.join('')}</g>`;
}

/** Decimals needed to print every tick of an evenly spaced list distinctly (at most 6). */
function decimals(ticks: readonly number[]): number {
  let d = 0;
  for (const t of ticks) {
    while (d < 6 && Math.abs(Number(t.toFixed(d)) - t) > 1e-9 * Math.max(1, Math.abs(t))) d++;
  }
  return d;
}

function tickLabel(t: number, digits: number): string {
  const s = t.toFixed(digits);
  return s === '-0' || /^-0\.0*$/.test(s) ? s.slice(1) : s;
}

function roundTo(v: number, step: number): number {
  const digits = Math.max(0, Math.min(15, -Math.floor(Math.log10(step)) + 1));
  return Number(v.toFixed(digits)) + 0; // + 0 turns -0 into 0
}

/** Coordinate: 2 decimals, no trailing zeros, no "-0". */
function f(v: number): string {
  const r = Math.round(v * 100) / 100;
  return Object.is(r, -0) ? '0' : String(r);
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}
