import { describe, expect, it } from 'vitest';
import { barChart, lineChart, niceTicks } from '../src/lab/svg-plot.js';

/**
 * Minimal XML well-formedness check (no dependency): one root, every tag closed in order,
 * attributes quoted, no raw '<' or unescaped '&' in text. Returns the element names seen.
 */
function checkXml(xml: string): string[] {
  const names: string[] = [];
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/y;
  let i = 0;
  let roots = 0;
  while (i < xml.length) {
    if (xml[i] === '<') {
      tag.lastIndex = i;
      const m = tag.exec(xml);
      if (!m) throw new Error(`malformed tag at ${i}: ${xml.slice(i, i + 40)}`);
      const [, close, name, , self] = m;
      if (close) {
        const open = stack.pop();
        if (open !== name) throw new Error(`</${name}> closes <${open}>`);
      } else {
        if (stack.length === 0) roots++;
        names.push(name);
        if (!self) stack.push(name);
      }
      i = tag.lastIndex;
    } else {
      const next = xml.indexOf('<', i);
      const text = xml.slice(i, next === -1 ? xml.length : next);
      if (/&(?!(amp|lt|gt|quot|apos);)/.test(text)) throw new Error(`unescaped & in ${text}`);
      if (stack.length === 0 && text.trim() !== '') throw new Error(`text outside the root: ${text}`);
      i = next === -1 ? xml.length : next;
    }
  }
  if (stack.length) throw new Error(`unclosed ${stack.join(',')}`);
  if (roots !== 1) throw new Error(`${roots} root elements`);
  return names;
}

const auroc = {
  title: 'AUROC per layer <held-out concepts & controls>',
  xLabel: 'layer',
  yLabel: 'AUROC',
  yDomain: [0.4, 1] as const,
  referenceLines: [{ y: 0.5, label: 'chance' }],
  series: [
    { name: 'held-out concepts', points: [[0, 0.52], [1, 0.71], [2, 0.93], [3, 0.98], [4, 0.9]] as Array<[number, number | null]> },
    { name: 'random vector "control"', points: [[0, 0.5], [1, null], [2, 0.55], [3, 0.6], [4, 0.58]] as Array<[number, number | null]> },
  ],
};

describe('svg line chart', () => {
  const svg = lineChart(auroc);

  it('is well-formed XML with an <svg> root', () => {
    const names = checkXml(svg);
    expect(names[0]).toBe('svg');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
  });

  it('contains the series, legend, escaped title, axis labels and reference line', () => {
    expect(svg).toContain('data-series="held-out concepts"');
    expect(svg).toContain('data-series="random vector &quot;control&quot;"');
    expect(svg).toContain('AUROC per layer &lt;held-out concepts &amp; controls&gt;');
    expect(svg).toContain('>layer</text>');
    expect(svg).toContain('>chance</text>');
    expect((svg.match(/<g class="legend">/g) ?? []).length).toBe(1);
    // 5 + 4 markers; the null point splits the second line into two sub-paths.
    expect((svg.match(/<circle /g) ?? []).length).toBe(9);
    const second = svg.slice(svg.indexOf('data-series="random vector'));
    expect((second.match(/d="([^"]*)"/)![1].match(/M/g) ?? []).length).toBe(2);
  });

  it('puts the y ticks inside a fixed domain', () => {
    expect(svg).toContain('>0.4</text>');
    expect(svg).toContain('>1.0</text>');
    expect(svg).not.toContain('>1.2</text>');
  });

  it('is deterministic', () => {
    expect(lineChart(auroc)).toBe(svg);
  });

  it('copes with no data', () => {
    checkXml(lineChart({ title: 'empty', series: [] }));
    checkXml(lineChart({ title: 'flat', series: [{ name: 'a', points: [[1, 2]] }] }));
  });
});

describe('svg bar chart', () => {
  const svg = barChart({
    title: 'TPR at 1% FPR by strength',
    yLabel: 'TPR',
    categories: ['0.25x', '0.5x', '1x'],
    series: [
      { name: 'L2', values: [0.1, 0.6, 0.95] },
      { name: 'L3', values: [0.2, null, -0.1] },
    ],
  });

  it('is well-formed, one bar per non-null value, categories labelled', () => {
    checkXml(svg);
    expect((svg.match(/<rect x=/g) ?? []).length).toBe(5 + 2); // 5 bars + 2 legend swatches
    for (const c of ['0.25x', '0.5x', '1x']) expect(svg).toContain(`>${c}</text>`);
    expect(svg).toContain('data-series="L3"');
  });

  it('refuses a series whose length differs from the categories', () => {
    expect(() => barChart({ title: 't', categories: ['a'], series: [{ name: 's', values: [1, 2] }] })).toThrow(RangeError);
  });
});

describe('niceTicks', () => {
  it('round steps covering the range', () => {
    expect(niceTicks(0, 1).ticks).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(0, 23).ticks).toEqual([0, 5, 10, 15, 20, 25]);
    expect(niceTicks(0.43, 0.97).domain).toEqual([0.4, 1]);
    expect(niceTicks(-3, 3).ticks).toEqual([-4, -2, 0, 2, 4]);
    expect(niceTicks(5, 5).domain).toEqual([2, 8]);
  });
});
