// A study (issue 12), not part of the product: how a rolling mean's short window is weighed (as
// stored / × √(n/w) / × n/w), replayed on a learned probe file: its calibration share rebuilt from the
// bench's shuffle (the first 198 lines fit, the rest calibrate), thresholds conformal at 1%.
// usage: node --import tsx scripts/warmup-replay.ts MODEL LEARNED.probe.json LEARNED_HALF.jsonl SEED OTHER_HALF.jsonl JUNK.jsonl TRIALS_DIR
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/engine/engine.js';
import { Dataset } from '../src/lab/dataset.js';
import { corpusSeq, scoreSeq, trialSeq, type Seq } from '../src/lab/generic.js';
import { loadCorpus, runCorpus } from '../src/lab/corpus.js';
import { TrialTokens } from '../src/lab/trials.js';
import { auroc } from '../src/lab/metrics.js';
import { loadProbe } from '../src/probes/probe.js';
import { conformalThreshold } from '../src/probes/calibration.js';
import { createRng, shuffled } from '../src/rng.js';
const [model, probePath, learnedHalf, seed, otherHalf, junk, trialsDir] = process.argv.slice(2);
const engine = await Engine.load(model, { taps: 'all', ports: 'all', maxBatch: 0 });
const probe = await loadProbe(probePath, engine.fingerprint);
const agg = probe.aggregator as { window: number; skip: number; lengthAllowance?: { perLog: number; from: number } };
const lines = readFileSync(learnedHalf, 'utf8').split('\n').filter((l) => l.trim());
const calShare = join(mkdtempSync(join(tmpdir(), 'lw-warmup-')), 'calibration-share.jsonl');
writeFileSync(calShare, shuffled(lines, createRng(Number(seed))).slice(198).join('\n') + '\n');
const layers = Array.from({ length: engine.config.numLayers }, (_, l) => l);
const seqsOf = async (path: string) => { const a = await runCorpus(engine, loadCorpus(path), layers); return a.requests.map((r) => corpusSeq(a, r)); };
const variants = { asIs: (_n: number) => 1, sqrt: (n: number) => Math.sqrt(n / agg.window), fill: (n: number) => n / agg.window } as const;
const names = Object.keys(variants) as (keyof typeof variants)[];
const reqScore = (tok: Float32Array, w: (n: number) => number) => {
  let best = -Infinity;
  const ring: number[] = [];
  for (let p = agg.skip, k = 0; p < tok.length; p++, k++) {
    ring.push(tok[p]); if (ring.length > agg.window) ring.shift();
    const n = ring.length;
    let v = (ring.reduce((a, b) => a + b, 0) / n) * w(n);
    const c = k + 1;
    if (agg.lengthAllowance && c > agg.lengthAllowance.from) v -= agg.lengthAllowance.perLog * Math.log(c / agg.lengthAllowance.from);
    if (v > best) best = v;
  }
  return best;
};
const all = (s: Seq) => { const tok = scoreSeq(probe, s); return names.map((k) => reqScore(tok, variants[k])); };
const cal = (await seqsOf(calShare)).map(all);
const other = (await seqsOf(otherHalf)).map(all);
const junkS = (await seqsOf(junk)).map(all);
const ds = Dataset.open(trialsDir);
const tokens = new TrialTokens(engine.tokenizer!, ds.manifest);
const trials = ds.records.filter((r) => (r.condition === 'none' && r.split === 'eval') || (r.condition === 'inject' && (r.strength === 0.25 || r.strength === 0.5) && (r.familyKind !== 'concept' || r.split === 'eval'))).map((r) => ({ r, sc: all(trialSeq(ds, r, tokens)) }));
names.forEach((v, k) => {
  const t = conformalThreshold(cal.map((x) => x[k]), 0.01);
  const fired = (xs: number[][]) => xs.filter((x) => x[k] > t).length;
  const clean = trials.filter((x) => x.r.condition === 'none').map((x) => x.sc[k]);
  console.log(`${v}: threshold ${t.toFixed(3)}; other half ${fired(other)}/${other.length}; junk ${fired(junkS)}/${junkS.length} max ${Math.max(...junkS.map((x) => x[k] / t)).toFixed(2)}; clean trials ${clean.filter((x) => x > t).length}/${clean.length}`);
  const groups = new Map<string, number[]>();
  for (const { r, sc } of trials) if (r.condition === 'inject') { const g = `${r.family} x${r.strength}`; (groups.get(g) ?? groups.set(g, []).get(g)!).push(sc[k]); }
  console.log('  ' + [...groups].sort().filter(([g]) => g.endsWith('x0.25')).map(([g, xs]) => `${g} ${(xs.filter((x) => x > t).length / xs.length).toFixed(2)}/${auroc(xs, clean).toFixed(3)}`).join('  '));
});
ds.close();
await engine.close();
