/**
 * Naming the injected concept when the generic detector fires (issue 12), measured offline on the
 * trial dataset with the daemon's own code: the shipped probe scores every traced position
 * (ProbeBank, aggregator, `score > threshold`, first firing position), then `ConceptNamer`
 * (src/probes/concept-naming.ts) names the closest stored concept at that position. Positions in
 * the prompt see the prompt's window (the daemon's prefill pass); a firing position in the generated
 * tokens sees that one position only (a decode pass holds one row).
 *
 *   npx tsx bench/concept-naming.ts [--model DIR] [--data DIR] [--probe FILE]
 *                                   [--out docs/reports/concept-naming/concept-naming.json]
 *
 * The floor (min cosine, min margin: DEFAULT_CONCEPT_NAMING) was chosen from the TRAIN split's
 * distributions (training concepts, train random directions), printed here; the tables report the
 * EVAL split (the 20 held-out concepts, random directions of the eval split and the held-out family).
 */
import { join } from 'node:path';
import { Dataset, type TrialRecord } from '../src/lab/dataset.js';
import { residPost } from '../src/hooks.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { ConceptNamer, DEFAULT_CONCEPT_NAMING, type ConceptNamingOptions } from '../src/probes/concept-naming.js';
import { loadProbe, ProbeBank, type TapTensor } from '../src/probes/probe.js';
import { DEFAULT_MODEL_DIR } from '../src/paths.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { TrialTokens } from '../src/lab/trials.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult } from './lib/report.js';

type Variant = Required<Pick<ConceptNamingOptions, 'space' | 'positions'>>;
const VARIANTS: Variant[] = [
  { space: 'whitened', positions: 'window' },
  { space: 'raw', positions: 'window' },
  { space: 'whitened', positions: 'single' },
  { space: 'raw', positions: 'single' },
];
const vkey = (v: Variant) => `${v.space}/${v.positions}`;

interface TrialResult {
  id: string;
  group: string; // concept | clean | random | random-heldout
  split: 'train' | 'eval';
  strength: number | null;
  layer: number | null;
  concept: string | null;
  fired: boolean;
  firePos: number | null;
  inPrompt: boolean | null;
  cand: Record<string, { name: string; layer: number; cosine: number; margin: number } | null>;
}


async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['model', 'data', 'probe', 'out', 'md']);
  const modelDir = a.get('model', DEFAULT_MODEL_DIR)!;
  const dataDir = a.get('data', '/tmp/lw-generic')!;
  const probePath = a.get('probe', join(modelDir, 'probes', 'generic-injection.probe.json'))!;
  const ds = Dataset.open(dataDir);
  const probe = await loadProbe(probePath, ds.manifest.modelFingerprint);
  const store = ConceptStore.open(join(modelDir, 'concepts'), ds.manifest.modelFingerprint);
  const bank = new ProbeBank([probe]);
  // Windowed members need each position's token id; the dataset stores activations, so rebuild them.
  const tokens = new TrialTokens(await Tokenizer.fromDir(modelDir), ds.manifest);
  const namers = new Map(VARIANTS.map((v) => [vkey(v), ConceptNamer.create(probe, store, { minCosine: -1, minMargin: -1, ...v })!]));
  const groups = (r: TrialRecord): string | null => {
    if (r.condition === 'none') return 'clean';
    if (r.condition !== 'inject') return null;
    if (r.family === 'concept' || r.family === 'random' || r.family === 'random-heldout') return r.family;
    return null;
  };
  const picked = ds.records.filter((r) => groups(r) !== null);
  const results: TrialResult[] = [];
  const t0 = Date.now();
  for (const [i, r] of picked.entries()) {
    const taps = new Map<string, TapTensor>();
    const positions = r.trace.end - r.trace.start;
    for (const l of r.trace.layers) taps.set(residPost(l), { positions, dModel: ds.manifest.dModel, data: ds.traceRows(r, l) });
    // A snapshot per trial: a bank keeps per-request state (windows, token novelty) across score calls.
    const scores = bank.snapshot().score(taps, tokens.ids(r).slice(r.trace.start, r.trace.end))[0].scores;
    const agg = probe.createAggregator();
    let firePos: number | null = null;
    for (let p = 0; p < positions; p++) {
      const v = agg.push(scores[p]);
      if (v > probe.threshold && firePos === null) firePos = p + r.trace.start;
    }
    const res: TrialResult = {
      id: r.id,
      group: groups(r)!,
      split: r.split,
      strength: r.strength,
      layer: r.layer,
      concept: r.concept,
      fired: firePos !== null,
      firePos,
      inPrompt: firePos === null ? null : firePos < r.segments.generated[0],
      cand: {},
    };
    if (firePos !== null) {
      // What the daemon's pass holds at that position: the prompt (prefill) or one generated row.
      let view = taps;
      let first = r.trace.start;
      if (!res.inPrompt) {
        const k = firePos - r.trace.start;
        view = new Map([...taps].map(([h, t]) => [h, { positions: 1, dModel: t.dModel, data: t.data.subarray(k * t.dModel, (k + 1) * t.dModel) }]));
        first = firePos;
      }
      for (const [k, namer] of namers) {
        const c = namer.best(view, first, firePos);
        res.cand[k] = c === null ? null : { name: c.name, layer: c.layer, cosine: c.cosine, margin: c.margin };
      }
    }
    results.push(res);
    if ((i + 1) % 200 === 0) console.error(`${i + 1}/${picked.length} trials (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  }
  ds.close();

  const named = (t: TrialResult, k: string, minCos: number, minMargin: number) => {
    const c = t.cand[k];
    return t.fired && c != null && c.cosine >= minCos && c.margin >= minMargin ? c : null;
  };
  // The floor (the daemon's DEFAULT_CONCEPT_NAMING), justified on the train split: top-1 cosine of fired
  // train random-direction trials against fired train concept trials, per variant.
  const floor = { minCosine: DEFAULT_CONCEPT_NAMING.minCosine, minMargin: DEFAULT_CONCEPT_NAMING.minMargin };
  const trainStats = VARIANTS.map((v) => {
    const k = vkey(v);
    const q = (xs: number[], p: number) => (xs.length === 0 ? NaN : xs.sort((x, y) => x - y)[Math.floor(p * (xs.length - 1))]);
    const cos = (g: (t: TrialResult) => boolean) => results.filter((t) => t.split === 'train' && t.fired && t.cand[k] && g(t)).map((t) => t.cand[k]!.cosine);
    const rnd = cos((t) => t.group === 'random' || t.group === 'random-heldout');
    const conc = cos((t) => t.group === 'concept');
    const marg = results.filter((t) => t.split === 'train' && t.fired && t.group === 'concept' && t.cand[k]).map((t) => t.cand[k]!.margin);
    return { variant: k, randomFired: rnd.length, randomMaxCosine: Math.max(...rnd), conceptFired: conc.length, conceptCosineQ05: q(conc, 0.05), conceptMinCosine: Math.min(...conc), conceptMarginQ05: q(marg, 0.05), conceptMinMargin: Math.min(...marg) };
  });
  const floors: Record<string, { minCosine: number; minMargin: number }> = Object.fromEntries(VARIANTS.map((v) => [vkey(v), floor]));

  const rows: (string | number)[][] = [];
  const table: Record<string, unknown>[] = [];
  const pct = (n: number, d: number) => (d === 0 ? '–' : `${((100 * n) / d).toFixed(1)}%`);
  for (const v of VARIANTS) {
    const k = vkey(v);
    const f = floors[k];
    const sets: [string, (t: TrialResult) => boolean][] = [
      ['concept ×0.25 (held out)', (t) => t.group === 'concept' && t.split === 'eval' && t.strength === 0.25],
      ['concept ×0.5 (held out)', (t) => t.group === 'concept' && t.split === 'eval' && t.strength === 0.5],
      ['concept ×1 (held out)', (t) => t.group === 'concept' && t.split === 'eval' && t.strength === 1],
      ['clean (eval)', (t) => t.group === 'clean' && t.split === 'eval'],
      ['random (eval, all ×)', (t) => t.group === 'random' && t.split === 'eval'],
      ['random-heldout (all)', (t) => t.group === 'random-heldout'],
    ];
    for (const [label, sel] of sets) {
      const ts = results.filter(sel);
      const fired = ts.filter((t) => t.fired);
      const top1 = fired.filter((t) => t.concept !== null && t.cand[k]?.name.toLowerCase() === t.concept.toLowerCase()).length;
      const nm = fired.filter((t) => named(t, k, f.minCosine, f.minMargin));
      const correct = nm.filter((t) => t.concept !== null && named(t, k, f.minCosine, f.minMargin)!.name.toLowerCase() === t.concept.toLowerCase()).length;
      const isConcept = label.startsWith('concept');
      rows.push([
        k,
        label,
        ts.length,
        pct(fired.length, ts.length),
        isConcept ? pct(top1, fired.length) : '–',
        pct(nm.length, ts.length),
        isConcept ? pct(correct, ts.length) : '–',
        isConcept ? pct(correct, nm.length) : '–',
      ]);
      table.push({ variant: k, set: label, trials: ts.length, fired: fired.length, top1OfFired: isConcept ? top1 : null, named: nm.length, namedCorrect: isConcept ? correct : null });
    }
  }
  const headers = ['rule', 'trials', 'n', 'fired', 'top-1 of fired (no floor)', 'named at floor', 'named correctly (of all)', 'correct of named'];
  const modelArg = modelDir === DEFAULT_MODEL_DIR ? '' : ` --model ${modelDir}`;
  const cmd = `npx tsx bench/concept-naming.ts${modelArg} --data ${dataDir}${a.get('probe') ? ` --probe ${probePath}` : ''} --out ${a.get('out') ?? 'docs/reports/concept-naming/concept-naming.json'}`;
  const md = [
    '# Naming the injected concept (issue 12)',
    '',
    `Reproduce: \`latentwatch trials${modelArg} --config configs/trials/generic.json --out ${dataDir}\`, then \`${cmd}\`.`,
    '',
    `Probe: ${probePath} (threshold ${probe.threshold}). Dataset: ${dataDir} (${picked.length} trials used). Rule: src/probes/concept-naming.ts.`,
    'At the first position where the shipped detector fires, the member (layer) with the highest mean calibrated score over the',
    "aggregator's window is taken; its centred update (whitened or raw) is averaged over the window (or the firing position alone)",
    'and compared by cosine with the 50 stored concept vectors of that layer. A firing position in the generated tokens uses that one row',
    '(what a decode pass holds). "named at floor": top-1 cosine ≥ floor and margin over the runner-up ≥ floor, of all trials of the set.',
    '',
    `Floor (the daemon's \`DEFAULT_CONCEPT_NAMING\`, src/probes/concept-naming.ts): top-1 cosine ≥ ${floor.minCosine} and margin ≥ ${floor.minMargin}, chosen on the TRAIN split`,
    '(training concepts, train random directions): every fired random-direction trial stays far below the cosine floor and nearly every',
    'fired concept trial far above it; the margin floor is low because a few concepts have near-duplicate vectors at a layer (Phones and',
    'Xylophones at layer 2: correct top-1 at cosine 0.92–0.98 with a margin of 0.06–0.09). The daemon uses whitened/window.',
    '',
    markdownTable(
      ['rule', 'train random fired', 'max cosine', 'train concept fired', 'cosine q05', 'min cosine', 'margin q05', 'min margin'],
      trainStats.map((t) => [t.variant, t.randomFired, t.randomMaxCosine, t.conceptFired, t.conceptCosineQ05, t.conceptMinCosine, t.conceptMarginQ05, t.conceptMinMargin]),
    ),
    '',
    'Eval split (held-out concepts, never used to pick anything):',
    '',
    markdownTable(headers, rows),
  ].join('\n');
  writeBenchResult(a, 'concept-naming', {
    command: cmd,
    probe: probePath,
    data: dataDir,
    floor,
    daemonRule: 'whitened/window',
    trainStats,
    table,
    // Per trial: the daemon's rule (whitened/window) before the floor.
    trials: results.map(({ cand, ...t }) => ({ ...t, top1: cand['whitened/window'] ?? null })),
  }, md);
}

runIfMain(import.meta.url, main);
