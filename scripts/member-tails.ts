/**
 * Which members of an ensemble probe see an injection, and where it lands against their own clean
 * tail: the question behind a weak cell of bench/false-alerts.ts's sensitivity table ("the detector
 * misses ×0.25 at layer L; does no member see it, or does the ensemble hide a member that does?").
 *
 *   npx tsx scripts/member-tails.ts --model DIR --probe FILE.probe.json --traffic FILE.jsonl
 *        [--clean N] [--inject N] [--layers L,...] [--strength S] [--seed S] [--out FILE.json]
 *
 * Clean sets: the first --clean N traffic prompts (default 100), the junk prompts
 * (test/fixtures/junk-prompts.json) and the shipped corpus's held-out requests (its degenerate style
 * apart). Injected: --inject N traffic prompts (default 20) again with a stored concept, a seeded
 * random direction and a stored contrast pair added at each of --layers (default the last) at
 * --strength × the layer's mean residual norm (default 0.25), during the prompt and throughout.
 * Every request runs as the daemon runs it (8 greedy tokens, every position tapped).
 *
 * Per member: its largest calibrated score over the request's scored positions (member scale, no
 * aggregator); per clean set its maximum, per injection layer the AUROC and TPR at 1% FPR against
 * the clean traffic, the minimum and the median. Also the ensemble as the daemon scores it (the
 * file's aggregator, over its threshold), and an "onset" row for each two windowed members of one
 * size at consecutive layers: per position, the upper one's calibrated score less the lower one's.
 * Why: an injection at layer L moves L's update and nothing below it, while ordinary text unlike the
 * calibration traffic (another script, compiled code, commit hashes) moves every layer's. Markdown
 * on stdout, JSON at --out and a chart beside it.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { corpusRequests, loadCorpus } from '../src/corpus.js';
import { Engine } from '../src/engine/engine.js';
import type { Injection } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { scoreSeq, seqNovelty, type Seq } from '../src/lab/generic.js';
import { auroc, tprAtFpr } from '../src/lab/metrics.js';
import { barChart } from '../src/lab/svg-plot.js';
import { DEFAULT_CORPUS, PACKAGE_ROOT } from '../src/paths.js';
import { onsetScores, requestScore } from '../src/probes/calibration.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { createProbe } from '../src/probes/probe.js';
import { validateProbeFile, type OnsetBody } from '../src/probes/probe-file.js';
import { createRng } from '../src/rng.js';
import { markdownTable, parseArgs, writeBenchResult, writeText } from '../bench/lib/report.js';

const MAX_TOKENS = 8;
const FAMILIES = ['concept', 'random', 'contrast'] as const;

const a = parseArgs(process.argv.slice(2), ['model', 'probe', 'traffic', 'clean', 'inject', 'layers', 'strength', 'seed', 'out', 'md']);
if (!a.has('model') || !a.has('probe') || !a.has('traffic')) throw new Error('usage: member-tails.ts --model DIR --probe FILE.probe.json --traffic FILE.jsonl [--clean N] [--inject N] [--layers L,...] [--strength S] [--seed S] [--out FILE.json]');
const modelDir = a.get('model')!;
const file = validateProbeFile(JSON.parse(readFileSync(a.get('probe')!, 'utf8')));
if (file.kind !== 'ensemble-max') throw new Error(`${a.get('probe')} is ${file.kind}, not an ensemble`);
const engine = await Engine.load(modelDir, { taps: 'all', ports: 'all', maxBatch: 0 });
const lib = ConceptStore.open(join(modelDir, 'concepts'), engine.fingerprint);
const layers = a.get('layers')?.split(',').map(Number) ?? [lib.numLayers - 1];
const strength = a.num('strength', 0.25);
const seed = a.num('seed', 1);
const d = lib.dModel;
const prompts = readFileSync(a.get('traffic')!, 'utf8').trim().split('\n').map((l) => JSON.parse(l).prompt as string);
const nClean = Math.min(a.num('clean', 100), prompts.length);
const nInject = Math.min(a.num('inject', 20), prompts.length);
const skip = file.aggregator.skip ?? 0;

/** One request as the daemon runs it, every layer tapped. */
async function run(prompt: string | number[], injections: Injection[] = []): Promise<Seq> {
  const promptIds = (typeof prompt === 'string' ? engine.tokenizer!.encode(prompt) : prompt).slice(0, engine.contextLength - MAX_TOKENS);
  const hooks = Array.from({ length: lib.numLayers }, (_, l) => residPost(l));
  const parts: Float32Array[][] = hooks.map(() => []);
  const ids = [...promptIds];
  for await (const step of engine.generate({ promptIds, maxTokens: MAX_TOKENS, sampling: { temperature: 0 }, taps: hooks, injections })) {
    if (step.kind === 'token') ids.push(step.tokenId);
    if (step.taps.size === 0) continue;
    hooks.forEach((h, i) => parts[i].push(step.taps.get(h)!.data.slice()));
  }
  const rows = parts.map((p) => {
    const out = new Float32Array(p.reduce((n, x) => n + x.length, 0));
    p.reduce((o, x) => (out.set(x, o), o + x.length), 0);
    return out;
  });
  const positions = rows[0].length / d;
  return { id: 'request', source: 'corpus', start: 0, positions, ids: ids.slice(0, positions), rows: (l) => rows[l] };
}

/**
 * Each member as a leaf probe of its own (its calibration applied here, novel-only positions at their
 * clean median). A file's onset members read two others: the onset rows below compute them.
 */
const members = file.members.flatMap((m) => {
  if (m.kind === 'onset') return [];
  const { id, hook, calibration, positions, ...body } = m;
  const { kind: _kind, members: _members, ...top } = file;
  const probe = createProbe(validateProbeFile({ ...top, ...body, id, label: id, hook, threshold: 0, aggregator: { kind: 'last' } }));
  const windowSize = m.kind === 'mahalanobis' ? m.window?.size : undefined;
  return [{ id, calibration, novelOnly: positions === 'novel-bigram', windowSize, layer: Number(/L(\d+)/.exec(id)?.[1] ?? NaN), probe }];
});
/** Pairs of windowed members of one size at consecutive layers: the onset rows. */
const onsets = members.flatMap((upper) => {
  const lower = members.find((m) => upper.windowSize !== undefined && m.windowSize === upper.windowSize && m.layer === upper.layer - 1);
  if (!lower) return [];
  const body: OnsetBody = { kind: 'onset', upper: { member: upper.id, ...upper.calibration }, lower: { member: lower.id, ...lower.calibration } };
  return [{ id: `onset-L${upper.layer}-w${upper.windowSize}`, body }];
});
const ensemble = createProbe(file);

interface Scored {
  set: string;
  id: string;
  layer?: number;
  family?: string;
  window?: string;
  /** Largest calibrated score over the scored positions, per member and onset row. */
  scores: Record<string, number>;
  ensemble: number;
}

function score(set: string, id: string, s: Seq, extra: Partial<Scored> = {}): Scored {
  const novel = seqNovelty(s);
  const rawScores = new Map<string, Float32Array>();
  const scores: Record<string, number> = {};
  for (const m of members) {
    const raw = scoreSeq(m.probe, s);
    rawScores.set(m.id, raw);
    scores[m.id] = Math.max(...Array.from(raw.subarray(skip), (v, i) => (m.novelOnly && !novel[skip + i] ? 0 : (v - m.calibration.center) / m.calibration.scale)));
  }
  for (const o of onsets) scores[o.id] = Math.max(...onsetScores(o.body, rawScores.get(o.body.upper.member)!, rawScores.get(o.body.lower.member)!).subarray(skip));
  return { set, id, ...extra, scores, ensemble: requestScore(scoreSeq(ensemble, s), file.aggregator, 0) / file.threshold };
}

const results: Scored[] = [];
for (let i = 0; i < nClean; i++) {
  results.push(score('traffic', `traffic/${i}`, await run(prompts[i])));
  if ((i + 1) % 25 === 0 || i + 1 === nClean) console.error(`member-tails: traffic ${i + 1}/${nClean}`);
}
const junk = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'test/fixtures/junk-prompts.json'), 'utf8')) as Record<string, string | number[]>;
for (const [id, p] of Object.entries(junk)) results.push(score('junk', id, await run(p)));
for (const r of corpusRequests(loadCorpus(DEFAULT_CORPUS)).filter((x) => x.split === 'test')) results.push(score(r.style === 'degenerate' ? 'degenerate' : 'corpus', r.id, await run(r.text)));
console.error('member-tails: junk and held-out corpus scored');
for (const layer of layers) {
  for (let k = 0; k < nInject; k++) {
    for (const family of FAMILIES) {
      let vector: Float32Array;
      let scale: number;
      if (family === 'random') {
        const rng = createRng(seed * 100_003 + k);
        const v = Array.from({ length: d }, () => rng.gaussian());
        const n = Math.hypot(...v);
        vector = Float32Array.from(v, (x) => x / n);
        scale = strength * lib.meanResidNorm(layer);
      } else {
        const names = lib.names(family);
        ({ vector, scale } = lib.injection(names[k % names.length], layer, { mode: 'relative', value: strength }, family));
      }
      for (const window of ['prompt', 'all'] as const) results.push(score(`injected L${layer}`, `traffic/${k}`, await run(prompts[k], [{ hook: residPost(layer), vector, scale, window: { kind: window } }]), { layer, family, window }));
    }
  }
  console.error(`member-tails: injected at layer ${layer}`);
}
await engine.close();

const rowIds = [...members.map((m) => m.id), ...onsets.map((o) => o.id), 'ensemble'];
const valueOf = (id: string) => (r: Scored): number => (id === 'ensemble' ? r.ensemble : r.scores[id]);
const sorted = (xs: number[]): number[] => [...xs].sort((x, y) => x - y);
const cleanSets = ['traffic', 'junk', 'corpus', 'degenerate'];
const rows = rowIds.map((id) => {
  const of = valueOf(id);
  const traffic = results.filter((r) => r.set === 'traffic').map(of);
  return {
    id,
    cleanMax: Object.fromEntries(cleanSets.map((set) => [set, Math.max(...results.filter((r) => r.set === set).map(of))])),
    injected: Object.fromEntries(
      layers.map((layer) => {
        const xs = sorted(results.filter((r) => r.layer === layer).map(of));
        return [layer, { auroc: auroc(xs, traffic), tprAt1: tprAtFpr(xs, traffic, 0.01), min: xs[0], median: xs[Math.floor(xs.length / 2)] }];
      }),
    ),
  };
});
const tails = members
  .filter((m) => m.windowSize !== undefined)
  .map((m) => ({ id: m.id, top: results.filter((r) => r.set === 'traffic').map((r) => ({ request: r.id, score: r.scores[m.id] })).sort((x, y) => y.score - x.score).slice(0, 5) }));

const out = a.get('out') ?? 'bench/out/member-tails.json';
const svg = out.replace(/\.json$/, '.svg');
const lastLayer = layers[layers.length - 1];
writeText(
  svg,
  barChart({
    title: `${file.id}'s members: clean maxima and ×${strength} injections at layer ${lastLayer}`,
    yLabel: 'largest calibrated score',
    categories: rows.map((r) => r.id.replace(/^update-/, '')),
    series: [
      ...cleanSets.map((set) => ({ name: `${set} max`, values: rows.map((r) => r.cleanMax[set]) })),
      { name: `injected L${lastLayer} min`, values: rows.map((r) => r.injected[lastLayer].min) },
    ],
    width: 1100,
  }),
);
const fmt = (x: number): string => x.toFixed(3);
const injectedCount = nInject * FAMILIES.length * 2;
const markdown = [
  `# Ensemble members against ×${strength} injections (${new Date().toISOString().slice(0, 10)})`,
  '',
  `Probe ${a.get('probe')} (threshold ${file.threshold}) on ${modelDir}. Clean: ${nClean} requests of ${a.get('traffic')}, ${Object.keys(junk).length} junk prompts, the shipped corpus's held-out requests (degenerate apart). Injected: ${injectedCount} per layer (${nInject} traffic requests × concept, random, contrast × prompt only, throughout; seed ${seed}) at layer${layers.length > 1 ? 's' : ''} ${layers.join(', ')}. A member's score: its largest calibrated score over the request's positions from ${skip} on (no aggregator); an onset row: the same of the upper windowed member's calibrated score less the lower one's, position by position; the ensemble's: the daemon's request score over the threshold. AUROC and TPR@1% against the clean traffic.`,
  '',
  markdownTable(
    ['member', ...cleanSets.map((s) => `${s} max`), ...layers.flatMap((l) => [`L${l} AUROC`, `L${l} TPR@1%`, `L${l} min`, `L${l} median`])],
    rows.map((r) => [r.id, ...cleanSets.map((s) => fmt(r.cleanMax[s])), ...layers.flatMap((l) => [fmt(r.injected[l].auroc), fmt(r.injected[l].tprAt1), fmt(r.injected[l].min), fmt(r.injected[l].median)])]),
  ),
  '',
  'Clean traffic requests with the highest windowed-member scores (the text that sets the tail):',
  '',
  markdownTable(['member', 'top clean requests'], tails.map((t) => [t.id, t.top.map((x) => `${x.request} ${fmt(x.score)}`).join(', ')])),
  '',
  `![members](${svg.split('/').at(-1)})`,
].join('\n');
writeBenchResult(a, 'member-tails', { model: modelDir, probe: a.get('probe'), traffic: a.get('traffic'), layers, strength, seed, rows, tails, results }, markdown);
