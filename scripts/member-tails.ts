/**
 * Which members of an ensemble probe see an injection, and where it lands against their own clean
 * tail: the question behind a weak cell of bench/false-alerts.ts's sensitivity table ("the detector
 * misses ×0.25 at layer L; does no member see it, or does the ensemble hide a member that does?").
 *
 *   npx tsx scripts/member-tails.ts --model DIR --probe FILE.probe.json --traffic FILE.jsonl
 *        [--clean N] [--inject N] [--layer L] [--strength S] [--seed S] [--out FILE.json]
 *
 * The first --clean N traffic prompts (default 100) run clean, and --inject N of them (default 20)
 * again with a stored concept, a seeded random direction and a stored contrast pair added at
 * --layer (default the last) at --strength × the layer's mean residual norm (default 0.25), during
 * the prompt and throughout: 6 injected requests each. Every request runs as the daemon runs it
 * (8 greedy tokens, every position tapped). Per member: its largest calibrated score over the
 * request's scored positions (member scale, no aggregator), the AUROC and TPR at 1% FPR of injected
 * against clean, the clean maximum and the injected median; and the ensemble as the daemon scores
 * it (the file's aggregator, divided by its threshold). The clean requests with the highest
 * windowed-member scores are listed (which text sets that member's tail). Markdown on stdout, JSON at
 * --out and a chart beside it.
 */
import { readFileSync } from 'node:fs';
import { Engine } from '../src/engine/engine.js';
import type { Injection } from '../src/engine/types.js';
import { residPost } from '../src/hooks.js';
import { scoreSeq, seqNovelty, type Seq } from '../src/lab/generic.js';
import { auroc, tprAtFpr } from '../src/lab/metrics.js';
import { barChart } from '../src/lab/svg-plot.js';
import { requestScore } from '../src/probes/calibration.js';
import { ConceptStore } from '../src/probes/concept-store.js';
import { createProbe, type Probe } from '../src/probes/probe.js';
import { validateProbeFile, type ProbeFile } from '../src/probes/probe-file.js';
import { createRng } from '../src/rng.js';
import { markdownTable, parseArgs, writeBenchResult, writeText } from '../bench/lib/report.js';

const MAX_TOKENS = 8;

const a = parseArgs(process.argv.slice(2), ['model', 'probe', 'traffic', 'clean', 'inject', 'layer', 'strength', 'seed', 'out', 'md']);
if (!a.has('model') || !a.has('probe') || !a.has('traffic')) throw new Error('usage: member-tails.ts --model DIR --probe FILE.probe.json --traffic FILE.jsonl [--clean N] [--inject N] [--layer L] [--strength S] [--seed S] [--out FILE.json]');
const modelDir = a.get('model')!;
const file = validateProbeFile(JSON.parse(readFileSync(a.get('probe')!, 'utf8')));
if (file.kind !== 'ensemble-max') throw new Error(`${a.get('probe')} is ${file.kind}, not an ensemble`);
const engine = await Engine.load(modelDir, { taps: 'all', ports: 'all', maxBatch: 0 });
const lib = ConceptStore.open(`${modelDir}/concepts`, engine.fingerprint);
const layer = a.num('layer', lib.numLayers - 1);
const strength = a.num('strength', 0.25);
const seed = a.num('seed', 1);
const d = lib.dModel;
const prompts = readFileSync(a.get('traffic')!, 'utf8').trim().split('\n').map((l) => JSON.parse(l).prompt as string);
const nClean = Math.min(a.num('clean', 100), prompts.length);
const nInject = Math.min(a.num('inject', 20), prompts.length);
const skip = file.aggregator.skip ?? 0;

/** One request as the daemon runs it, every layer tapped. */
async function run(id: string, prompt: string, injections: Injection[] = []): Promise<Seq> {
  const promptIds = engine.tokenizer!.encode(prompt).slice(0, engine.contextLength - MAX_TOKENS);
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
  return { id, source: 'corpus', start: 0, positions, ids: ids.slice(0, positions), rows: (l) => rows[l] };
}

/** Each member as a leaf probe of its own (its calibration applied here, novel-only positions at their clean median). */
const members = file.members.map((m) => {
  const { id, hook, calibration, positions, ...body } = m;
  const { kind: _kind, members: _members, ...top } = file;
  const leaf: ProbeFile = validateProbeFile({ ...top, ...body, id, label: id, hook, threshold: 0, aggregator: { kind: 'last' } });
  return { id, calibration, novelOnly: positions === 'novel-bigram', windowed: m.kind === 'mahalanobis' && m.window !== undefined, probe: createProbe(leaf) as Probe };
});
const ensemble = createProbe(file);

interface Scored { id: string; family?: string; window?: string; member: Record<string, number>; ensemble: number }
function score(s: Seq): Omit<Scored, 'id'> {
  const novel = seqNovelty(s);
  const member: Record<string, number> = {};
  for (const m of members) {
    const x = scoreSeq(m.probe, s);
    let best = -Infinity;
    for (let p = skip; p < x.length; p++) best = Math.max(best, m.novelOnly && !novel[p] ? 0 : (x[p] - m.calibration.center) / m.calibration.scale);
    member[m.id] = best;
  }
  return { member, ensemble: requestScore(scoreSeq(ensemble, s), file.aggregator, 0) / file.threshold };
}

const clean: Scored[] = [];
for (let i = 0; i < nClean; i++) {
  clean.push({ id: `traffic/${i}`, ...score(await run(`c${i}`, prompts[i])) });
  if ((i + 1) % 25 === 0 || i + 1 === nClean) console.error(`member-tails: clean ${i + 1}/${nClean}`);
}
const injected: Scored[] = [];
for (let k = 0; k < nInject; k++) {
  for (const family of ['concept', 'random', 'contrast'] as const) {
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
    for (const window of ['prompt', 'all'] as const) injected.push({ id: `traffic/${k}`, family, window, ...score(await run(`i${k}`, prompts[k], [{ hook: residPost(layer), vector, scale, window: { kind: window } }])) });
  }
  console.error(`member-tails: injected ${injected.length}/${nInject * 6}`);
}
await engine.close();

const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const rows = [...members.map((m) => m.id), 'ensemble'].map((id) => {
  const of = (r: Scored): number => (id === 'ensemble' ? r.ensemble : r.member[id]);
  const neg = clean.map(of);
  const pos = injected.map(of);
  return { id, auroc: auroc(pos, neg), tprAt1: tprAtFpr(pos, neg, 0.01), cleanMax: Math.max(...neg), injectedMedian: median(pos), injectedAboveCleanMax: pos.filter((x) => x > Math.max(...neg)).length };
});
const tails = members
  .filter((m) => m.windowed)
  .map((m) => ({ id: m.id, top: clean.map((r) => ({ request: r.id, score: r.member[m.id] })).sort((x, y) => y.score - x.score).slice(0, 5) }));

const out = a.get('out') ?? 'bench/out/member-tails.json';
const svg = out.replace(/\.json$/, '.svg');
writeText(
  svg,
  barChart({
    title: `Members of ${file.id}: ×${strength} injections at layer ${layer} against clean traffic`,
    yLabel: 'largest calibrated score',
    categories: rows.map((r) => r.id.replace(/^update-/, '')),
    series: [
      { name: 'clean max', values: rows.map((r) => r.cleanMax) },
      { name: 'injected median', values: rows.map((r) => r.injectedMedian) },
    ],
    width: 900,
  }),
);
const fmt = (x: number): string => x.toFixed(3);
const markdown = [
  `# Ensemble members against ×${strength} injections at layer ${layer} (${new Date().toISOString().slice(0, 10)})`,
  '',
  `Probe ${a.get('probe')} (threshold ${file.threshold}) on ${modelDir}; ${nClean} clean requests of ${a.get('traffic')} and ${injected.length} injected (${nInject} of them × concept, random, contrast × prompt only, throughout; seed ${seed}). A member's score: its largest calibrated score over the request's positions from ${skip} on (no aggregator); the ensemble's: the daemon's request score over the threshold.`,
  '',
  markdownTable(
    ['member', 'AUROC', 'TPR@1%', 'clean max', 'injected median', 'injected above clean max'],
    rows.map((r) => [r.id, fmt(r.auroc), fmt(r.tprAt1), fmt(r.cleanMax), fmt(r.injectedMedian), `${r.injectedAboveCleanMax}/${injected.length}`]),
  ),
  '',
  'Clean requests with the highest windowed-member scores (the text that sets the tail):',
  '',
  markdownTable(['member', 'top clean requests'], tails.map((t) => [t.id, t.top.map((x) => `${x.request} ${fmt(x.score)}`).join(', ')])),
  '',
  `![members](${svg.split('/').at(-1)})`,
].join('\n');
writeBenchResult(a, 'member-tails', { model: modelDir, probe: a.get('probe'), traffic: a.get('traffic'), layer, strength, seed, rows, tails, clean, injected }, markdown);
