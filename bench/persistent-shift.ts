/**
 * Persistent-shift statistic for the generic detector (issue 12), measured offline beside the
 * shipped detector on the same requests.
 *
 * An injection adds the same vector at every position of its window, so it is a PERSISTENT shift
 * of a layer's update. Per layer L (the shipped member's Gaussian, mean μ and Cholesky factor L):
 *   z_t = L⁻¹(u_t − μ)                  the whitened update (‖z_t‖ is the shipped member's distance)
 *   m_t = (1/W) Σ_{k=t−W+1..t, k≥4} z_k   the window mean (fewer than W positions: zero-padded, so
 *                                          early windows are never inflated)
 *   s_t = (m_t − ν)ᵀ Σ_m⁻¹ (m_t − ν)      squared Mahalanobis under the NULL of m: a Ledoit–Wolf
 *                                          shrunk Gaussian of full-window m's of clean FIT requests
 *                                          (train-split clean trials + corpus fit requests incl. the
 *                                          degenerate style), which absorbs natural autocorrelation
 * Ensemble: per layer calibrated on clean calibration tokens (median, q99; as the shipped members),
 * max over layers; request score = max over positions ≥ 4; threshold at 1% per request on clean
 * calibration requests. Fit and calibration shares are the shipped detector's own (splitClean,
 * fraction 0.4, salt = the trial config's seed), so z's Gaussian and the null never saw a calibration
 * or evaluation request. Variants:
 *   mean-W16          the window over every position (the issue's lead, with the null above)
 *   novel-W16-{lw,s05,tok}  the window over NOVEL positions only (a token pair new in the request,
 *                     probes/window.ts), its null Ledoit–Wolf, shrunk 0.5, or none (16·‖m‖²)
 *   neff-W16          mean-W16 scaled by the share of novel positions in the window
 *   shipped+X         the per-token detector and X, each over its own threshold, max-combined
 * The product's windowed members (fit-anomaly --window) are novel-W16-lw on raw updates.
 *
 *   npx tsx bench/persistent-shift.ts [--model DIR] [--probe FILE] [--data /tmp/lw-generic] [--corpus FILE]
 *                                     [--out docs/reports/persistent-shift/persistent-shift.json]
 *
 * Evaluation: injection trials of the EVAL split per family × strength (view all: every position
 * from 4); negatives the eval-split clean trials; false alerts per request on eval clean trials,
 * held-out corpus requests per style, and the 14 junk prompts (test/fixtures/junk-prompts.json) run
 * through the engine as the daemon runs them (8 greedy tokens).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Engine } from '../src/engine/engine.js';
import { residPost } from '../src/hooks.js';
import { concat } from '../src/model/graph.js';
import { Dataset } from '../src/lab/dataset.js';
import { TrialTokens } from '../src/lab/trials.js';
import { novelPositions } from '../src/probes/window.js';
import { corpusSeq, scoreSeq, splitClean, trialSeq, type Seq } from '../src/lab/generic.js';
import { loadCorpus, runCorpus } from '../src/lab/corpus.js';
import { fitGaussian } from '../src/lab/gaussian-fit.js';
import { auroc } from '../src/lab/metrics.js';
import { barChart } from '../src/lab/svg-plot.js';
import { calibrate, requestScore, thresholdAtFpr } from '../src/probes/calibration.js';
import { mahalanobis, type GaussianModel } from '../src/probes/gaussian.js';
import { createProbe } from '../src/probes/probe.js';
import type { AggregatorSpec } from '../src/probes/aggregators.js';
import type { ProbeFile } from '../src/probes/probe-file.js';
import { DEFAULT_CORPUS, DEFAULT_MODEL_DIR, PACKAGE_ROOT } from '../src/paths.js';
import { markdownTable, parseArgs, runIfMain, writeBenchResult, writeText } from './lib/report.js';

const SKIP = 4;
const WINDOWS = [16] as const;
const NOVEL_W = 16;
const TARGET_FPR = 0.01;
const MAX_NULL_ROWS = 24000;

interface Member {
  layer: number;
  mean: Float64Array;
  factor: Float64Array;
  center: number;
  scale: number;
}

/** Whitened update (or resid at layer 0) per position: [positions, d]; rows before SKIP are zero. */
function whiten(seq: Seq, m: Member, d: number): Float32Array {
  const cur = seq.rows(m.layer);
  const prev = m.layer > 0 ? seq.rows(m.layer - 1) : null;
  const out = new Float32Array(seq.positions * d);
  const z = new Float64Array(d);
  const l = m.factor;
  for (let p = Math.max(0, SKIP - seq.start); p < seq.positions; p++) {
    const o = p * d;
    let rs = 0;
    for (let i = 0; i < d; i++) {
      let acc = cur[o + i] - (prev ? prev[o + i] : 0) - m.mean[i];
      for (let j = 0; j < i; j++) acc -= l[rs + j] * z[j];
      z[i] = acc / l[rs + i];
      out[o + i] = z[i];
      rs += i + 1;
    }
  }
  return out;
}

/** Window means of z (zero-padded before SKIP / the first W positions): [positions, d]. */
function windowMeans(z: Float32Array, positions: number, d: number, w: number, from: number): Float32Array {
  const out = new Float32Array(positions * d);
  const sum = new Float64Array(d);
  for (let p = from; p < positions; p++) {
    for (let j = 0; j < d; j++) sum[j] += z[p * d + j];
    if (p - w >= from) for (let j = 0; j < d; j++) sum[j] -= z[(p - w) * d + j];
    for (let j = 0; j < d; j++) out[p * d + j] = sum[j] / w;
  }
  return out;
}

/** Window means over the last w NOVEL positions (zero-padded); a repeated position keeps the last mean. */
function novelWindowMeans(z: Float32Array, novel: Uint8Array, start: number, positions: number, d: number, w: number, from: number): { means: Float32Array; full: Uint8Array } {
  const out = new Float32Array(positions * d);
  const full = new Uint8Array(positions);
  const sum = new Float64Array(d);
  const ring: number[] = [];
  for (let p = from; p < positions; p++) {
    if (novel[start + p]) {
      for (let j = 0; j < d; j++) sum[j] += z[p * d + j];
      ring.push(p);
      if (ring.length > w) {
        const q = ring.shift()!;
        for (let j = 0; j < d; j++) sum[j] -= z[q * d + j];
      }
    }
    for (let j = 0; j < d; j++) out[p * d + j] = sum[j] / w;
    full[p] = ring.length === w && novel[start + p] ? 1 : 0;
  }
  return { means: out, full };
}

interface SeqScores {
  /** Shipped detector: calibrated max over members per position. */
  shipped: Float64Array;
  /** [variant][layer] per-position raw scores. */
  raw: Map<string, Float32Array[]>;
}

/** Nulls of the novel-window mean m (of whitened updates): how each variant scores m. */
const NOVEL_NULLS = ['lw', 's05', 'tok'] as const;
const variantNames = [...WINDOWS.map((w) => `mean-W${w}`), ...NOVEL_NULLS.map((n) => `novel-W${NOVEL_W}-${n}`), `neff-W${NOVEL_W}`];

async function runPrompt(engine: Engine, ids: number[], maxTokens: number, layers: number[]): Promise<{ rows: Float32Array[]; ids: number[] }> {
  const hooks = layers.map(residPost);
  const parts: Float32Array[][] = hooks.map(() => []);
  const all = [...ids];
  for await (const step of engine.generate({ promptIds: ids, maxTokens, sampling: { temperature: 0, seed: 0 }, taps: hooks })) {
    if (step.kind === 'token') all.push(step.tokenId);
    if (step.taps.size === 0) continue;
    hooks.forEach((h, i) => parts[i].push(step.taps.get(h)!.data.slice()));
  }
  return { rows: parts.map((p) => concat(p)), ids: all };
}

async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, ['model', 'data', 'corpus', 'out', 'md', 'probe']);
  const modelDir = a.get('model', DEFAULT_MODEL_DIR)!;
  const dataDir = a.get('data', '/tmp/lw-generic')!;
  const corpusPath = a.get('corpus', DEFAULT_CORPUS)!;
  const outPath = a.get('out', 'docs/reports/persistent-shift/persistent-shift.json')!;
  const probePath = a.get('probe', join(modelDir, 'probes', 'generic-injection.probe.json'))!;
  const t0 = Date.now();
  const log = (s: string) => console.error(`[${((Date.now() - t0) / 1000).toFixed(0)} s] ${s}`);

  const ds = Dataset.open(dataDir);
  const man = ds.manifest;
  const d = man.dModel;
  const layers = Array.from({ length: man.numLayers }, (_, l) => l);
  type FileMember = { id: string; window?: unknown; calibration: { center: number; scale: number }; gaussian: { form: string; mean: number[]; factor: number[] } };
  const whole = JSON.parse(readFileSync(probePath, 'utf8')) as ProbeFile & { members: FileMember[] };
  // The per-token members only: the statistics here are built on them (a shipped file since issue 12
  // also holds windowed members, which this script's variants are the study of).
  const file = { ...whole, members: whole.members.filter((mb) => mb.window === undefined) };
  const members: Member[] = file.members.map((mb, k) => {
    if (mb.gaussian.form !== 'cholesky') throw new Error(`${mb.id}: expected a full (cholesky) Gaussian`);
    return { layer: k, mean: Float64Array.from(mb.gaussian.mean), factor: Float64Array.from(mb.gaussian.factor), center: mb.calibration.center, scale: mb.calibration.scale };
  });
  const aggregator = file.aggregator as AggregatorSpec;

  // Clean traffic as the daemon runs it: the corpus and the junk prompts.
  log('loading engine');
  const engine = await Engine.load(modelDir, { taps: 'all', ports: 'all' });
  const corpus = loadCorpus(corpusPath);
  const acts = await runCorpus(engine, corpus, layers);
  log(`corpus: ${acts.requests.length} requests (${acts.skippedTooLong.length} too long)`);
  const junk = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'test/fixtures/junk-prompts.json'), 'utf8')) as Record<string, string | number[]>;
  const junkSeqs: Seq[] = [];
  const tokenIds = new Map<string, number[]>();
  for (const r of acts.requests) tokenIds.set(`corpus/${r.id}`, r.ids);
  for (const [id, prompt] of Object.entries(junk)) {
    const ids = typeof prompt === 'string' ? engine.tokenizer!.encode(prompt) : prompt;
    const maxTokens = Math.max(0, Math.min(corpus.generation.maxTokens, engine.contextLength - ids.length));
    const { rows, ids: all } = await runPrompt(engine, ids, maxTokens, layers);
    junkSeqs.push({ id: `junk/${id}`, source: 'corpus', start: 0, positions: rows[0].length / d, rows: (l) => rows[l] });
    tokenIds.set(`junk/${id}`, all);
  }
  log(`junk: ${junkSeqs.length} prompts`);

  // Splits: the shipped detector's own (generic-report: fraction 0.4, salt = config seed).
  const trials = ds.records.map((r) => trialSeq(ds, r));
  const trialTokens = new TrialTokens(engine.tokenizer!, man);
  for (const r of ds.records) tokenIds.set(r.id, trialTokens.ids(r));
  const novelOf = new Map<string, Uint8Array>();
  const novel = (s: Seq): Uint8Array => {
    let m = novelOf.get(s.id);
    if (!m) {
      const ids = tokenIds.get(s.id)!;
      if (ids.length < s.start + s.positions) throw new Error(`${s.id}: ${ids.length} ids for ${s.start + s.positions} positions`);
      m = novelPositions(ids);
      novelOf.set(s.id, m);
    }
    return m;
  };
  const salt = String(man.config.seed);
  const cleanTrain = trials.filter((s) => s.record!.condition === 'none' && s.record!.split === 'train');
  const cleanEval = trials.filter((s) => s.record!.condition === 'none' && s.record!.split === 'eval');
  const corpusSeqs = acts.requests.map((r) => corpusSeq(acts, r));
  const corpusFit = corpusSeqs.filter((s) => s.run!.split === 'fit');
  const corpusTest = corpusSeqs.filter((s) => s.run!.split === 'test');
  const ts = splitClean(cleanTrain, 0.4, salt);
  const cs = splitClean(corpusFit, 0.4, salt);
  const fit = [...cs.fit, ...ts.fit];
  const calib = [...cs.calibration, ...ts.calibration];
  const positives = trials.filter((s) => s.record!.condition === 'inject' && s.record!.split === 'eval');
  log(`fit ${fit.length} (degenerate ${cs.fit.filter((s) => s.run!.style === 'degenerate').length}), calibration ${calib.length}, eval clean ${cleanEval.length}, corpus test ${corpusTest.length}, positives ${positives.length}`);

  // Pass 1: the null of m per layer and window, on fit requests (full windows only).
  const nulls = new Map<string, GaussianModel>();
  {
    const zs = fit.map((s) => members.map((m) => whiten(s, m, d)));
    log('fit: whitened');
    for (const w of WINDOWS) {
      for (const m of members) {
        const parts: Float32Array[] = [];
        let total = 0;
        for (const s of fit) total += Math.max(0, s.positions - (SKIP - s.start) - w + 1);
        const stride = Math.max(1, Math.ceil(total / MAX_NULL_ROWS));
        let k = 0;
        for (const [i, s] of fit.entries()) {
          const from = Math.max(0, SKIP - s.start);
          const mm = windowMeans(zs[i][m.layer], s.positions, d, w, from);
          for (let p = from + w - 1; p < s.positions; p++) if (k++ % stride === 0) parts.push(mm.subarray(p * d, (p + 1) * d));
        }
        const data = concat(parts);
        nulls.set(`${w}|${m.layer}`, fitGaussian({ rows: parts.length, cols: d, data }, { covariance: 'full' }));
      }
      log(`null fitted W=${w}`);
    }
    for (const m of members) {
      const parts: Float32Array[] = [];
      for (const [i, s] of fit.entries()) {
        const from = Math.max(0, SKIP - s.start);
        const { means, full } = novelWindowMeans(zs[i][m.layer], novel(s), s.start, s.positions, d, NOVEL_W, from);
        for (let p = from; p < s.positions; p++) if (full[p]) parts.push(means.subarray(p * d, (p + 1) * d));
      }
      const stride = Math.max(1, Math.ceil(parts.length / MAX_NULL_ROWS));
      const kept = parts.filter((_, k) => k % stride === 0);
      const data = { rows: kept.length, cols: d, data: concat(kept) };
      nulls.set(`novel-lw|${m.layer}`, fitGaussian(data, { covariance: 'full' }));
      nulls.set(`novel-s05|${m.layer}`, fitGaussian(data, { covariance: 'full', shrinkage: 0.5 }));
      if (m.layer === 0) log(`novel null rows: ${kept.length} (stride ${stride})`);
    }
    log(`null fitted novel-W${NOVEL_W}`);
  }

  // Pass 2: per-position scores of every scored request.
  const scratch = new Float64Array(d);
  const scoreOf = (s: Seq): SeqScores => {
    const from = Math.max(0, SKIP - s.start);
    const zs = members.map((m) => whiten(s, m, d));
    const shipped = new Float64Array(s.positions).fill(-Infinity);
    for (const m of members) {
      for (let p = 0; p < s.positions; p++) {
        if (p < from) {
          shipped[p] = NaN;
          continue;
        }
        let q = 0;
        for (let j = 0; j < d; j++) q += zs[m.layer][p * d + j] ** 2;
        const v = (Math.sqrt(q) - m.center) / m.scale;
        if (v > shipped[p]) shipped[p] = v;
      }
    }
    const raw = new Map<string, Float32Array[]>();
    for (const w of WINDOWS) {
      raw.set(
        `mean-W${w}`,
        members.map((m) => {
          const mm = windowMeans(zs[m.layer], s.positions, d, w, from);
          const g = nulls.get(`${w}|${m.layer}`)!;
          const out = new Float32Array(s.positions).fill(NaN);
          for (let p = from; p < s.positions; p++) out[p] = mahalanobis(g, mm, p * d, scratch) ** 2;
          return out;
        }),
      );
    }
    const nm = novel(s);
    const means = members.map((m) => novelWindowMeans(zs[m.layer], nm, s.start, s.positions, d, NOVEL_W, from).means);
    for (const nn of NOVEL_NULLS) {
      raw.set(
        `novel-W${NOVEL_W}-${nn}`,
        members.map((m) => {
          const out = new Float32Array(s.positions).fill(NaN);
          const mm = means[m.layer];
          const g = nn === 'tok' ? null : nulls.get(`novel-${nn}|${m.layer}`)!;
          for (let p = from; p < s.positions; p++) {
            if (g) out[p] = mahalanobis(g, mm, p * d, scratch) ** 2;
            else {
              let q = 0;
              for (let j = 0; j < d; j++) q += mm[p * d + j] ** 2;
              out[p] = NOVEL_W * q;
            }
          }
          return out;
        }),
      );
    }
    // neff: the plain window score scaled by the share of novel positions in its window.
    raw.set(
      `neff-W${NOVEL_W}`,
      raw.get(`mean-W${NOVEL_W}`)!.map((x) => {
        const out = new Float32Array(s.positions).fill(NaN);
        let count = 0;
        for (let p = from; p < s.positions; p++) {
          count += nm[s.start + p];
          if (p - NOVEL_W >= from) count -= nm[s.start + p - NOVEL_W];
          out[p] = (x[p] * count) / NOVEL_W;
        }
        return out;
      }),
    );
    return { shipped, raw };
  };
  const all = [...calib, ...cleanEval, ...corpusTest, ...junkSeqs, ...positives];
  const scores = new Map<string, SeqScores>();
  for (const [i, s] of all.entries()) {
    scores.set(s.id, scoreOf(s));
    if ((i + 1) % 200 === 0) log(`scored ${i + 1}/${all.length}`);
  }

  // Check: the shipped score here equals the daemon's scorer on a few requests.
  const shippedProbe = createProbe(file as ProbeFile);
  let maxDiff = 0;
  for (const s of [...calib.slice(0, 3), ...positives.slice(0, 3), junkSeqs[0]]) {
    const ref = requestScore(scoreSeq(shippedProbe, s), aggregator, s.start);
    const mine = requestScore(scores.get(s.id)!.shipped, aggregator, s.start);
    maxDiff = Math.max(maxDiff, Math.abs(ref - mine));
  }
  log(`scorer check: max |Δ request score| = ${maxDiff.toExponential(2)}`);

  // Detectors: request score functions, thresholds on calibration requests.
  type Det = { name: string; req: (s: Seq) => number; threshold: number };
  const maxOver = (x: ArrayLike<number>) => {
    let m = -Infinity;
    for (let p = 0; p < x.length; p++) if (x[p] > m) m = x[p];
    return m;
  };
  const dets: Det[] = [];
  const mk = (name: string, req: (s: Seq) => number): Det => ({ name, req, threshold: thresholdAtFpr(calib.map(req).filter(Number.isFinite), TARGET_FPR) });
  dets.push(mk('shipped', (s) => requestScore(scores.get(s.id)!.shipped, aggregator, s.start)));
  const perLayerDets: Det[] = [];
  // `-log`: the same ensemble on log scores (compresses the heavy clean tail of one layer).
  for (const name of variantNames) {
    const v = name.replace(/-log$/, '');
    const tf = name.endsWith('-log') ? Math.log : (x: number) => x;
    const cal = members.map((m) => {
      const toks: number[] = [];
      for (const s of calib) for (const x of scores.get(s.id)!.raw.get(v)![m.layer]) if (Number.isFinite(x)) toks.push(tf(x));
      return calibrate(toks);
    });
    const ens = new Map<string, number>();
    dets.push(
      mk(name, (s) => {
        let r = ens.get(s.id);
        if (r === undefined) {
          const raw = scores.get(s.id)!.raw.get(v)!;
          r = -Infinity;
          for (let p = 0; p < s.positions; p++) {
            for (const m of members) {
              const x = (tf(raw[m.layer][p]) - cal[m.layer].center) / cal[m.layer].scale;
              if (x > r) r = x;
            }
          }
          ens.set(s.id, r);
        }
        return r;
      }),
    );
    if (name === v && v.startsWith('mean')) for (const m of members) perLayerDets.push(mk(`${v} L${m.layer}`, (s) => maxOver(scores.get(s.id)!.raw.get(v)![m.layer])));
  }

  // The product's detector would be both: the per-token (shipped) score and the window score,
  // each over its own threshold, max-combined and re-thresholded at 1% per request.
  for (const other of NOVEL_NULLS.map((n) => `novel-W${NOVEL_W}-${n}`)) {
    const a0 = dets[0];
    const b0 = dets.find((dt) => dt.name === other)!;
    dets.push(mk(`shipped+${other}`, (s) => Math.max(a0.req(s) / a0.threshold, b0.req(s) / b0.threshold)));
  }
  // Which held-out clean requests each detector flags, with its score over the threshold.
  for (const dt of dets) {
    const hits = corpusTest.map((s) => ({ id: s.id, r: dt.req(s) / dt.threshold })).filter((h) => h.r > 1).sort((x, y) => y.r - x.r);
    log(`${dt.name}: held-out flagged ${hits.map((h) => `${h.id} ${h.r.toFixed(2)}`).join('; ') || 'none'}`);
  }

  // Evaluation.
  const families = [...new Set(positives.map((s) => s.record!.family!))].sort();
  const strengths = [...new Set(positives.map((s) => s.record!.strength!))].sort((x, y) => x - y);
  const negScores = new Map(dets.map((dt) => [dt.name, cleanEval.map(dt.req)]));
  const fired = (dt: Det, xs: Seq[]) => (xs.length === 0 ? null : xs.filter((s) => dt.req(s) > dt.threshold).length / xs.length);
  const r3 = (x: number | null) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000);
  // A broader negative set: every held-out clean request (eval clean trials + corpus held-out, all styles).
  const broadNeg = [...cleanEval, ...corpusTest];
  const broadScores = new Map(dets.map((dt) => [dt.name, broadNeg.map(dt.req)]));
  const cells: { family: string; strength: number; n: number; detector: string; auroc: number | null; aurocBroad: number | null; flagged: number | null }[] = [];
  for (const st of strengths) {
    for (const fam of [...families, 'all']) {
      const pos = positives.filter((s) => s.record!.strength === st && (fam === 'all' || s.record!.family === fam));
      for (const dt of dets) cells.push({ family: fam, strength: st, n: pos.length, detector: dt.name, auroc: r3(auroc(pos.map(dt.req), negScores.get(dt.name)!)), aurocBroad: r3(auroc(pos.map(dt.req), broadScores.get(dt.name)!)), flagged: r3(fired(dt, pos)) });
    }
  }
  // Which calibration requests set each threshold, and where ×0.25 injections sit against it.
  const q = (xs: number[], p: number) => {
    const v = xs.filter(Number.isFinite).sort((x, y) => x - y);
    return v.length ? v[Math.min(v.length - 1, Math.floor(p * v.length))] : NaN;
  };
  const diag = dets.map((dt) => {
    const top = calib.map((s) => ({ id: s.id, score: dt.req(s) })).sort((x, y) => y.score - x.score).slice(0, 4);
    const p025 = positives.filter((s) => s.record!.strength === 0.25).map(dt.req);
    return {
      detector: dt.name,
      threshold: r3(dt.threshold),
      topCalibration: top.map((t) => `${t.id} ${t.score.toPrecision(4)}`),
      'eval clean q99': r3(q(negScores.get(dt.name)!, 0.99)),
      'eval clean max': r3(Math.max(...negScores.get(dt.name)!)),
      '×0.25 median': r3(q(p025, 0.5)),
      '×0.25 min': r3(q(p025, 0)),
    };
  });
  const styles = [...new Set(corpusTest.map((s) => s.run!.style))];
  const fprSets: [string, Seq[]][] = [['eval clean trials', cleanEval], ['corpus held-out (all)', corpusTest], ...styles.map((st) => [`corpus: ${st}`, corpusTest.filter((s) => s.run!.style === st)] as [string, Seq[]]), ['calibration (own)', calib]];
  const fpr = fprSets.map(([set, xs]) => ({ set, n: xs.length, ...Object.fromEntries(dets.map((dt) => [dt.name, r3(fired(dt, xs))])) }));
  const junkFired = dets.map((dt) => ({ detector: dt.name, fired: junkSeqs.filter((s) => dt.req(s) > dt.threshold).map((s) => s.id.slice(5)) }));
  const perLayer = perLayerDets.map((dt) => {
    const neg = cleanEval.map(dt.req);
    const L = Number(/L(\d+)$/.exec(dt.name)![1]);
    const at = (st: number) => positives.filter((s) => s.record!.strength === st && s.record!.layer === L);
    return {
      detector: dt.name,
      layer: L,
      'auroc@0.25 (injected at L)': at(0.25).length ? r3(auroc(at(0.25).map(dt.req), neg)) : null,
      'flagged@0.25 (injected at L)': at(0.25).length ? r3(fired(dt, at(0.25))) : null,
      'auroc@0.25 vs all held-out clean': at(0.25).length ? r3(auroc(at(0.25).map(dt.req), broadNeg.map(dt.req))) : null,
      'auroc@0.5 (injected at L)': at(0.5).length ? r3(auroc(at(0.5).map(dt.req), neg)) : null,
      'fpr eval clean': r3(fired(dt, cleanEval)),
      'fpr corpus held-out': r3(fired(dt, corpusTest)),
      'junk fired': junkSeqs.filter((s) => dt.req(s) > dt.threshold).length,
    };
  });
  ds.close();

  // Report.
  const cmd = 'git show 44b1e67:models/qwen2-code-16m/probes/generic-injection.probe.json > /tmp/generic-per-token.probe.json; npx tsx bench/persistent-shift.ts --data /tmp/lw-generic --probe /tmp/generic-per-token.probe.json --out docs/reports/persistent-shift/persistent-shift.json';
  const pct = (x: number | null) => (x === null ? '–' : `${(100 * x).toFixed(1)}%`);
  const cell = (fam: string, st: number, dn: string) => cells.find((c) => c.family === fam && c.strength === st && c.detector === dn)!;
  const names = dets.map((dt) => dt.name);
  const strengthTables = strengths.map((st) =>
    [
      `### ×${st} (eval split; AUROC / flagged at each detector's own 1% threshold)`,
      '',
      markdownTable(
        ['family', 'n', ...names.flatMap((n) => [`${n} AUROC`, `${n} AUROC (all clean)`, `${n} flagged`])],
        [...families, 'all'].map((fam) => [fam, cell(fam, st, names[0]).n, ...names.flatMap((n) => [cell(fam, st, n).auroc, cell(fam, st, n).aurocBroad, pct(cell(fam, st, n).flagged)])]),
      ),
    ].join('\n'),
  );
  const svgPath = join(dirname(outPath), 'flagged-0.25.svg');
  writeText(
    svgPath,
    barChart({
      title: 'Flagged share of ×0.25 injections (eval split, 1% per-request threshold)',
      xLabel: 'family',
      yLabel: 'flagged',
      yDomain: [0, 1],
      categories: [...families, 'all'],
      series: names.map((n) => ({ name: n, values: [...families, 'all'].map((f) => cell(f, 0.25, n).flagged) })),
      referenceLines: [{ y: 0.5, label: 'goal 50%' }],
    }),
  );
  const md = [
    '# Persistent-shift statistic: window means of whitened updates (issue 12)',
    '',
    `Reproduce: \`latentwatch trials --config configs/trials/generic.json --out /tmp/lw-generic\`, then \`${cmd}\` (${((Date.now() - t0) / 60000).toFixed(1)} min on 2 CPU cores).`,
    '',
    `Per-token detector ("shipped" below): the per-token members of ${probePath} (threshold ${file.threshold}, re-set here at 1% on the same calibration requests: ${dets[0].threshold.toPrecision(6)}). Scorer check: this script's shipped score equals the daemon scorer's to ${maxDiff.toExponential(1)}.`,
    `Statistic (bench/persistent-shift.ts header): z_t = L⁻¹(u_t − μ) with each per-token member's Gaussian; m_t = mean of z over the last 16 positions (mean-W16) or the last 16 NOVEL positions, whose token pair (previous id, id) is new in the request (novel-W16-*; probes/window.ts); score = squared Mahalanobis of m_t under a Gaussian of clean full-window m's (lw: Ledoit–Wolf; s05: shrinkage 0.5; tok: none, 16·‖m‖²) fitted on ${fit.length} fit requests (train-split clean trials + corpus fit requests incl. ${cs.fit.filter((s) => s.run!.style === 'degenerate').length} degenerate); neff-W16: mean-W16 × the window's share of novel positions; layers calibrated (median, q99 on calibration tokens) and max-ensembled; request = max over positions; threshold at 1% per request on ${calib.length} disjoint calibration requests (pooled). shipped+X: both, each over its own threshold, max-combined and re-thresholded. The product's windowed members (fit-anomaly --window 16) are novel-W16-lw on raw updates, with the threshold rules of docs/generic-detectors.md (per population, kinds balanced): see docs/reports/qwen2-code-16m-generic/ for the shipped detector's figures.`,
    `Positives: injection trials of the eval split (${positives.length}; layers 2/4/6, both protocols); negatives: ${cleanEval.length} eval clean trials ("AUROC"), or those plus the ${corpusTest.length} held-out corpus requests of every style ("AUROC (all clean)"); view all (every position from 4).`,
    '',
    ...strengthTables.flatMap((t) => [t, '']),
    '### False alerts per request (each at its own threshold)',
    '',
    markdownTable(['set', 'n', ...names], fpr.map((r) => [r.set, r.n, ...names.map((n) => pct((r as unknown as Record<string, number | null>)[n]))])),
    '',
    `Junk prompts (${junkSeqs.length}, run through the engine, 8 greedy tokens): ` + junkFired.map((j) => `${j.detector} ${j.fired.length}/${junkSeqs.length}${j.fired.length ? ` (${j.fired.join(', ')})` : ''}`).join('; '),
    '',
    '### Thresholds: what sets them (top calibration requests) and where ×0.25 injections sit',
    '',
    markdownTable(['detector', 'threshold', 'top calibration requests', 'eval clean q99', 'eval clean max', '×0.25 median', '×0.25 min'], diag.map((r) => [r.detector, r.threshold, r.topCalibration.join('; '), r['eval clean q99'], r['eval clean max'], r['×0.25 median'], r['×0.25 min']])),
    '',
    '### Per layer (one layer alone; trials injected at that layer)',
    '',
    perLayer.length ? markdownTable(Object.keys(perLayer[0]), perLayer.map((r) => Object.values(r) as (string | number | null)[])) : '(no plain-window variants in this run)',
    '',
    `![flagged at ×0.25](${svgPath.split('/').pop()})`,
  ].join('\n');
  writeBenchResult(a, 'persistent-shift', { command: cmd, probe: probePath, data: dataDir, corpus: corpusPath, windows: WINDOWS, scorerCheck: maxDiff, split: { fit: fit.length, calibration: calib.length, evalClean: cleanEval.length, corpusTest: corpusTest.length, positives: positives.length }, cells, fpr, junk: junkFired, thresholds: diag, perLayer }, md);
}

runIfMain(import.meta.url, main);
