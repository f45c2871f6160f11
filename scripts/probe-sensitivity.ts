/**
 * Sensitivity of probe files on a generic trial dataset (the one `generic-report` uses), scored as
 * the daemon scores a request (scoreSeq, then requestScore with the file's aggregator) at each
 * file's own threshold: per family and strength, and per injection layer, the share of injected
 * trials flagged and the AUROC against the dataset's eval clean trials; and how many clean trials
 * fire. For probe files made elsewhere (learn mode's, bench/false-alerts.ts copies them
 * beside its report as FILE.learned.probe.json) without refitting anything.
 *
 *   npx tsx scripts/probe-sensitivity.ts --model DIR --data DIR [--out FILE.json] PROBE.probe.json...
 *
 * Trials scored: concept injections of the eval split only (their words may have built a concept
 * probe), every injection of the other families (an unsupervised file saw none of them; unlike
 * generic-report, which also holds out its supervised detectors' training families), and the eval
 * split's clean trials.
 */
import { Engine } from '../src/engine/engine.js';
import { Dataset } from '../src/lab/dataset.js';
import { scoreSeq, trialSeq, type Seq } from '../src/lab/generic.js';
import { auroc } from '../src/lab/metrics.js';
import { TrialTokens } from '../src/lab/trials.js';
import { requestScore } from '../src/probes/calibration.js';
import { loadProbe } from '../src/probes/probe.js';
import { parseArgs, writeJson } from '../bench/lib/report.js';

interface Cell {
  family: string;
  strength: number;
  layer: number | null;
  trials: number;
  flagged: number;
  auroc: number;
}

const argv = process.argv.slice(2);
const a = parseArgs(argv, ['model', 'data', 'out']);
const probes = a.positionals;
if (!a.has('model') || !a.has('data') || probes.length === 0) throw new Error('usage: probe-sensitivity.ts --model DIR --data DIR [--out FILE.json] PROBE.probe.json...');
const engine = await Engine.load(a.get('model')!, { taps: 'all', ports: 'all', maxBatch: 0 });
const ds = Dataset.open(a.get('data')!);
const tokens = new TrialTokens(engine.tokenizer!, ds.manifest);
const held = ds.records.filter((r) => (r.condition === 'none' && r.split === 'eval') || (r.condition === 'inject' && (r.familyKind !== 'concept' || r.split === 'eval')));
const seqs = held.map((r) => trialSeq(ds, r, tokens));
const results = [];
for (const path of probes) {
  const p = await loadProbe(path, engine.fingerprint);
  const score = (s: Seq): number => requestScore(scoreSeq(p, s), p.aggregator, s.start);
  const clean: number[] = [];
  const groups = new Map<string, { family: string; strength: number; layer: number; scores: number[] }>();
  for (const s of seqs) {
    const r = s.record!;
    const x = score(s);
    if (r.condition === 'none') clean.push(x);
    else {
      const k = `${r.family}|${r.strength}|${r.layer}`;
      (groups.get(k) ?? groups.set(k, { family: r.family!, strength: r.strength!, layer: r.layer!, scores: [] }).get(k)!).scores.push(x);
    }
  }
  const cell = (family: string, strength: number, layer: number | null, xs: number[]): Cell => ({
    family, strength, layer, trials: xs.length, flagged: xs.filter((x) => x > p.threshold).length / xs.length, auroc: auroc(xs, clean),
  });
  const byLayer = [...groups.values()].map((g) => cell(g.family, g.strength, g.layer, g.scores));
  const pooled = new Map<string, { family: string; strength: number; scores: number[] }>();
  for (const g of groups.values()) {
    const k = `${g.family}|${g.strength}`;
    (pooled.get(k) ?? pooled.set(k, { family: g.family, strength: g.strength, scores: [] }).get(k)!).scores.push(...g.scores);
  }
  const byFamily = [...pooled.values()].map((g) => cell(g.family, g.strength, null, g.scores)).sort((x, y) => x.family.localeCompare(y.family) || x.strength - y.strength);
  const cleanFired = clean.filter((x) => x > p.threshold).length;
  console.log(`\n${path}: threshold ${p.threshold}; clean eval trials fired ${cleanFired} of ${clean.length}`);
  console.log('| family | strength | trials | flagged | AUROC |\n|---|---|---|---|---|');
  for (const c of byFamily) console.log(`| ${c.family} | ×${c.strength} | ${c.trials} | ${c.flagged.toFixed(3)} | ${c.auroc.toFixed(3)} |`);
  results.push({ probe: path, threshold: p.threshold, clean: { trials: clean.length, fired: cleanFired }, byFamily, byLayer: byLayer.sort((x, y) => x.family.localeCompare(y.family) || x.strength - y.strength || x.layer! - y.layer!) });
}
ds.close();
await engine.close();
if (a.has('out')) {
  writeJson(a.get('out')!, { model: a.get('model'), data: a.get('data'), results });
  console.log(`wrote ${a.get('out')}`);
}
