/**
 * Naming what a fired anomaly detector saw (issue 12): the closest stored concept vector, shown only
 * when the match is clear.
 *
 * The rule, for an `ensemble-max` probe whose members are Mahalanobis Gaussians of a layer's update
 * (`generic-injection`: resid_post L − resid_post L−1; resid_post 0 alone at layer 0):
 *   1. positions: the firing position and the ones before it inside the aggregator's window that
 *      the caller has rows for (the daemon: the forward pass that raised the alert, so the prompt's
 *      window at prefill and the one generated token during decode), never below `skip`;
 *   2. member: the one with the highest mean calibrated score over those positions, i.e. the layer
 *      whose update is most anomalous;
 *   3. the centred updates x − mean of that member, whitened by its Cholesky factor (z = L⁻¹(x − mean),
 *      the vector whose norm is the Mahalanobis distance) and averaged over the positions;
 *   4. cosine of that with the whitened concept vector L⁻¹c of every stored concept of that layer
 *      (concepts only, not contrast directions); top-1 and the runner-up;
 *   5. named only when top-1 cosine ≥ `minCosine` and top-1 − runner-up ≥ `minMargin`; otherwise null.
 * `space: 'raw'` skips the whitening in 3–4 (kept for the measurement, bench/concept-naming.ts).
 *
 * Cost: nothing per token. On a call: one forward substitution (d²/2) per member and position, and the
 * first call per layer whitens that layer's concept vectors (C · d²/2, cached).
 */
import { parseResidPost } from '../hooks.js';
import { forwardSubstitute } from './gaussian.js';
import type { ConceptStore } from './concept-store.js';
import { hookList } from './probe-file.js';
import type { Probe, TapTensor } from './probe.js';

export interface ConceptNamingOptions {
  /** Least top-1 cosine to name a concept. */
  minCosine: number;
  /** Least top-1 − runner-up cosine. */
  minMargin: number;
  /** Cosines in the member's whitened space (default) or on the raw centred update. */
  space?: 'whitened' | 'raw';
  /** Average over the aggregator's window (default) or use the firing position alone. */
  positions?: 'window' | 'single';
}

/**
 * The floor the daemon uses, chosen on the trial dataset (docs/reports/concept-naming/: held-out
 * concepts at 0.5×, clean trials and random-direction injections). See that report for the numbers.
 */
export const DEFAULT_CONCEPT_NAMING: ConceptNamingOptions = { minCosine: 0.5, minMargin: 0.05 };

export interface ConceptMatch {
  name: string;
  layer: number;
  cosine: number;
  /** Top-1 cosine − runner-up cosine. */
  margin: number;
  runnerUp: string | null;
}

/** What `best` returns before the floor is applied (the measurement needs it). */
export interface ConceptCandidate extends ConceptMatch {
  /** Mean calibrated score of the chosen member over the positions. */
  memberScore: number;
}

interface Member {
  layer: number;
  /** The hook of the layer (resid_post L) and, for an update, the one before it (resid_post L−1). */
  hook: string;
  prevHook: string | null;
  mean: Float64Array;
  /** Packed lower-triangular Cholesky factor, or null for a diagonal Gaussian. */
  factor: Float64Array | null;
  variance: Float64Array | null;
  center: number;
  scale: number;
  /** Whitened unit concept vectors of this layer, [C, d], made on first use. */
  concepts: Float64Array | null;
  rawConcepts: Float64Array | null;
}

export class ConceptNamer implements Namer {
  private readonly members: Member[];
  private readonly names: string[];
  private readonly d: number;
  private readonly window: number;
  private readonly skip: number;
  readonly options: Required<ConceptNamingOptions>;

  /**
   * Null when the probe has no member this rule can read (an ensemble of Mahalanobis members with
   * full or diagonal covariance on one layer's update or residual), or the store's model differs.
   */
  static create(probe: Probe, store: ConceptStore, options: ConceptNamingOptions = DEFAULT_CONCEPT_NAMING): ConceptNamer | null {
    const file = probe.file;
    if (file.kind !== 'ensemble-max' || store.dModel !== probe.dModel) return null;
    if (store.names('concept').length < 2) return null;
    const members: Member[] = [];
    for (const m of file.members) {
      // Windowed members model window means, not one position's update: the per-token members name.
      if (m.kind !== 'mahalanobis' || m.window !== undefined) continue;
      const g = m.gaussian;
      if (g.form === 'lowrank') continue;
      const hooks = hookList(m.hook);
      const difference = m.input === 'difference';
      if (difference ? hooks.length !== 2 : hooks.length !== 1) continue;
      let layer: number;
      try {
        layer = parseResidPost(hooks[hooks.length - 1]);
      } catch {
        continue;
      }
      if (layer < 0 || layer >= store.numLayers) continue;
      members.push({
        layer,
        hook: hooks[hooks.length - 1],
        prevHook: difference ? hooks[0] : null,
        mean: Float64Array.from(g.mean),
        factor: g.form === 'cholesky' ? Float64Array.from(g.factor) : null,
        variance: g.form === 'diagonal' ? Float64Array.from(g.variance) : null,
        center: m.calibration.center,
        scale: m.calibration.scale,
        concepts: null,
        rawConcepts: null,
      });
    }
    if (members.length === 0) return null;
    return new ConceptNamer(members, store, probe, options);
  }

  private constructor(
    members: Member[],
    private readonly store: ConceptStore,
    probe: Probe,
    options: ConceptNamingOptions,
  ) {
    this.members = members;
    this.names = store.names('concept');
    this.d = probe.dModel;
    const agg = probe.aggregator as { kind: string; window?: number; skip?: number };
    this.window = agg.kind === 'rolling-mean' || agg.kind === 'rolling-max' ? (agg.window ?? 1) : 1;
    this.skip = agg.skip ?? 0;
    this.options = { space: 'whitened', positions: 'window', ...options };
  }

  /** Layers the rule can name at. */
  get layers(): number[] {
    return this.members.map((m) => m.layer);
  }

  /**
   * The closest concept for a detection at absolute position `position`, given the taps of a forward
   * pass whose first row is absolute position `firstPosition`; null below the floor.
   */
  name(taps: ReadonlyMap<string, TapTensor>, firstPosition: number, position: number): ConceptMatch | null {
    const c = this.best(taps, firstPosition, position);
    if (!aboveFloor(c, this.options)) return null;
    return { name: c.name, layer: c.layer, cosine: c.cosine, margin: c.margin, runnerUp: c.runnerUp };
  }

  /** Top-1 before the floor (null when no row is usable). */
  best(taps: ReadonlyMap<string, TapTensor>, firstPosition: number, position: number): ConceptCandidate | null {
    const d = this.d;
    const lo = Math.max(this.skip, firstPosition, this.options.positions === 'window' ? position - this.window + 1 : position);
    const rows: number[] = [];
    for (let p = lo; p <= position; p++) rows.push(p - firstPosition);
    if (rows.length === 0) return null;
    const x = new Float64Array(d);
    const z = new Float64Array(d);
    let bestMember: Member | null = null;
    let bestScore = -Infinity;
    let bestSum: Float64Array | null = null;
    for (const m of this.members) {
      const cur = taps.get(m.hook);
      const prev = m.prevHook === null ? null : taps.get(m.prevHook);
      if (cur === undefined || (m.prevHook !== null && prev === undefined)) continue;
      const sum = new Float64Array(d);
      let score = 0;
      let n = 0;
      for (const r of rows) {
        if (r < 0 || r >= cur.positions || (prev && r >= prev.positions)) continue;
        for (let j = 0; j < d; j++) x[j] = cur.data[r * d + j] - (prev ? prev.data[r * d + j] : 0) - m.mean[j];
        whiten(m, x, z);
        let q = 0;
        for (let j = 0; j < d; j++) q += z[j] * z[j];
        score += (Math.sqrt(q) - m.center) / m.scale;
        const v = this.options.space === 'whitened' ? z : x;
        for (let j = 0; j < d; j++) sum[j] += v[j];
        n++;
      }
      if (n === 0) continue;
      score /= n;
      if (score > bestScore) {
        bestScore = score;
        bestMember = m;
        bestSum = sum;
      }
    }
    if (bestMember === null || bestSum === null) return null;
    const table = this.conceptTable(bestMember);
    const match = closestConcept(table, this.names, bestSum, bestMember.layer);
    return match === null ? null : { ...match, memberScore: bestScore };
  }

  /** Unit concept vectors of a member's layer, whitened or raw (cached). */
  private conceptTable(m: Member): Float64Array {
    const whitened = this.options.space === 'whitened';
    const cached = whitened ? m.concepts : m.rawConcepts;
    if (cached) return cached;
    const d = this.d;
    const out = new Float64Array(this.names.length * d);
    const x = new Float64Array(d);
    const z = new Float64Array(d);
    this.names.forEach((name, c) => {
      const v = this.store.vector(name, m.layer, 'concept');
      for (let j = 0; j < d; j++) x[j] = v[j];
      if (whitened) whiten(m, x, z);
      const src = whitened ? z : x;
      const n = norm(src) || 1;
      for (let j = 0; j < d; j++) out[c * d + j] = src[j] / n;
    });
    if (whitened) m.concepts = out;
    else m.rawConcepts = out;
    return out;
  }
}

/** z = L⁻¹x (forward substitution on the packed factor), or x/σ for a diagonal Gaussian. */
function whiten(m: Member, x: Float64Array, z: Float64Array): void {
  const d = x.length;
  if (m.factor === null) {
    for (let j = 0; j < d; j++) z[j] = x[j] / Math.sqrt(m.variance![j]);
    return;
  }
  forwardSubstitute(m.factor, x, z);
}

/**
 * The concept of `table` ([names.length, v.length], unit rows) with the largest cosine to v, its
 * margin over the runner-up (the cosine itself when there is none); null for v = 0.
 */
function closestConcept(table: Float64Array, names: readonly string[], v: Float64Array, layer: number): ConceptMatch | null {
  const d = v.length;
  const vn = norm(v);
  if (!(vn > 0)) return null;
  let top = -1;
  let topCos = -Infinity;
  let second = -1;
  let secondCos = -Infinity;
  for (let c = 0; c < names.length; c++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += table[c * d + j] * v[j];
    const cos = s / vn;
    if (cos > topCos) {
      second = top;
      secondCos = topCos;
      top = c;
      topCos = cos;
    } else if (cos > secondCos) {
      second = c;
      secondCos = cos;
    }
  }
  return { name: names[top], layer, cosine: topCos, margin: second >= 0 ? topCos - secondCos : topCos, runnerUp: second >= 0 ? names[second] : null };
}

/** The naming floor: a clear top-1 (cosine and margin over the runner-up). */
function aboveFloor(c: ConceptMatch | null, o: ConceptNamingOptions): c is ConceptMatch {
  return c !== null && c.cosine >= o.minCosine && c.margin >= o.minMargin;
}

function norm(v: Float64Array): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  return Math.sqrt(s);
}

/** What names an alert's concept: ConceptNamer for an update detector, ConceptMatchNamer for a concept-match probe. */
export interface Namer {
  name(taps: ReadonlyMap<string, TapTensor>, firstPosition: number, position: number): ConceptMatch | null;
}

interface MatchMember {
  layer: number;
  hook: string;
  prevHook: string | null;
  mean: Float64Array;
  factor: Float64Array;
  window: number;
  names: readonly string[];
  /** Whitened unit concept directions, [C, d], as the probe file stores them. */
  directions: Float64Array;
}

/**
 * Naming for a concept-match probe (lab/concept-match.ts), which needs no concept store: its members
 * hold the whitened concept directions they score. Per member, the mean update over its window's
 * positions that the caller has rows for (ending at the firing position), whitened; the member and
 * concept with the largest cosine name the alert, under the same floor as ConceptNamer.
 */
export class ConceptMatchNamer implements Namer {
  static create(probe: Probe, options: ConceptNamingOptions = DEFAULT_CONCEPT_NAMING): ConceptMatchNamer | null {
    const file = probe.file;
    const leaves = file.kind === 'ensemble-max' ? file.members : [file];
    const members: MatchMember[] = [];
    for (const m of leaves) {
      if (m.kind !== 'concept-match' || m.gaussian.form !== 'cholesky') continue;
      const hooks = hookList(m.hook);
      const layer = parseResidPost(hooks[hooks.length - 1]);
      members.push({
        layer,
        hook: hooks[hooks.length - 1],
        prevHook: m.input === 'difference' ? hooks[0] : null,
        mean: Float64Array.from(m.gaussian.mean),
        factor: Float64Array.from(m.gaussian.factor),
        window: m.window?.size ?? 1,
        names: m.concepts.names,
        directions: Float64Array.from(m.concepts.directions),
      });
    }
    return members.length === 0 ? null : new ConceptMatchNamer(members, probe.dModel, options);
  }

  private constructor(
    private readonly members: readonly MatchMember[],
    private readonly d: number,
    private readonly options: ConceptNamingOptions,
  ) {}

  name(taps: ReadonlyMap<string, TapTensor>, firstPosition: number, position: number): ConceptMatch | null {
    const d = this.d;
    const x = new Float64Array(d);
    const z = new Float64Array(d);
    let best: ConceptMatch | null = null;
    for (const m of this.members) {
      const cur = taps.get(m.hook);
      const prev = m.prevHook === null ? null : taps.get(m.prevHook);
      if (cur === undefined || (m.prevHook !== null && prev === undefined)) continue;
      x.fill(0);
      let n = 0;
      for (let p = Math.max(firstPosition, position - m.window + 1); p <= position; p++) {
        const r = p - firstPosition;
        if (r >= cur.positions || (prev && r >= prev.positions)) continue;
        for (let j = 0; j < d; j++) x[j] += cur.data[r * d + j] - (prev ? prev.data[r * d + j] : 0);
        n++;
      }
      if (n === 0) continue;
      for (let j = 0; j < d; j++) x[j] = x[j] / n - m.mean[j];
      forwardSubstitute(m.factor, x, z);
      const match = closestConcept(m.directions, m.names, z, m.layer);
      if (match !== null && (best === null || match.cosine > best.cosine)) best = match;
    }
    return aboveFloor(best, this.options) ? best : null;
  }
}

