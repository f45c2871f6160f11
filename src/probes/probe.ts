/**
 * Loaded probes and the ProbeBank the daemon calls once per forward pass.
 *
 * A Probe scores one position: `scoreRow(activation, offset)` reads `inputDim` floats starting at
 * `offset` (for a multi-hook probe: its hooks' rows concatenated in the file's hook order).
 * - linear:       probability σ(bias + w·(x − mean)/std)
 * - direction:    bias + w·(x − mean)/std (signed distance for a difference-of-means probe)
 * - mahalanobis:  Mahalanobis distance from the fitted Gaussian (of the concatenated row, or with
 *                 `input: 'difference'` of row(hook 2) − row(hook 1): a layer's update)
 * - concept-match: largest cosine between the whitened row z = L⁻¹(x − mean) and the stored
 *                 whitened concept directions (one linear probe per concept, normalised by ‖z‖)
 * - ensemble-max: max over members of (memberScore − center) / scale
 * A Mahalanobis or concept-match member with a `window` scores the mean row over the request's last counted
 * positions (probes/window.ts), and a member with `positions: 'novel-bigram'` only positions whose
 * token pair is new in the request, so its score depends on what came before: such a probe is
 * `ordered`, and rows are scored through `createScorer()`, one per request, in position order.
 * Standardisation is folded into the weights at load (one dot product per row), and every probe
 * owns its scratch buffers, so scoring allocates nothing per row. Probes are not reentrant, which
 * is fine: JavaScript runs one score call at a time.
 *
 * The threshold applies to the aggregated score (createAggregator), with `score > threshold`
 * firing, as in metrics.ts.
 */
import { lwError } from '../errors.js';
import { createAggregator, type Aggregator, type AggregatorSpec } from './aggregators.js';
import { mahalanobis, type GaussianModel } from './gaussian.js';
import { foldStandardisation, sigmoid } from './linear.js';
import { SimdMatVec } from './simd.js';
import { hookList, onsetScore, readProbeFile, type ConceptMatchBody, type EnsembleMember, type GaussianBody, type LeafBody, type OnsetBody, type ProbeFile, type ProbeKind } from './probe-file.js';
import { NoveltyTracker, spreadDiscount, WindowMean } from './window.js';

/** Scores the rows of one request in position order; `novel`: the row's token pair is new in the request. */
export type RequestRowScorer = (activation: Float32Array, offset: number, novel: boolean) => number;

export interface Probe {
  readonly id: string;
  readonly kind: ProbeKind;
  readonly label: string;
  /** Hooks read, in concatenation order. */
  readonly hooks: readonly string[];
  readonly dModel: number;
  /** hooks.length × dModel: how many floats scoreRow reads. */
  readonly inputDim: number;
  readonly threshold: number;
  readonly targetFpr: number;
  readonly aggregator: AggregatorSpec;
  readonly file: ProbeFile;
  /**
   * Some member depends on the request's earlier positions (a window of them, or novel token pairs
   * only): score through createScorer in position order, with token ids (scoreRow refuses).
   */
  readonly ordered: boolean;
  /** Score of the input row starting at `offset` in `activation` (probes that are not ordered). */
  scoreRow(activation: Float32Array, offset: number): number;
  /** A scorer for one request's rows, in position order (windowed members keep their state in it). */
  createScorer(): RequestRowScorer;
  /** A fresh per-request aggregator of the probe's kind. */
  createAggregator(): Aggregator;
}

/** Activations of one hook for the positions of one forward pass: [positions, dModel] row-major. */
export interface TapTensor {
  readonly positions: number;
  readonly dModel: number;
  readonly data: Float32Array;
}

export interface ProbeScores {
  readonly probeId: string;
  /** One score per position (not aggregated). */
  readonly scores: Float32Array;
}

/** Build a probe from a validated file (see probe-file.ts: readProbeFile, parseProbeFile). */
export function createProbe(file: ProbeFile): Probe {
  const hooks = hookList(file.hook);
  const inputDim = hooks.length * file.dModel;
  const createScorer = file.kind === 'ensemble-max' ? ensembleScorer(file.members, hooks, file.dModel) : leafFactory(file, inputDim);
  const ordered = file.kind === 'ensemble-max' ? file.members.some((m) => isWindowed(m) || m.positions !== undefined) : isWindowed(file);
  const shared = ordered ? null : createScorer();
  const scoreRow = shared
    ? (activation: Float32Array, offset: number) => shared(activation, offset, true)
    : () => {
        throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${file.id} depends on earlier positions: score a request's rows in order through createScorer()`, { probe: file.id });
      };
  const aggregator = file.aggregator;
  return {
    id: file.id,
    kind: file.kind,
    label: file.label,
    hooks,
    dModel: file.dModel,
    inputDim,
    threshold: file.threshold,
    targetFpr: file.targetFpr,
    aggregator,
    file,
    ordered,
    scoreRow,
    createScorer,
    createAggregator: () => createAggregator(aggregator),
  };
}

/** Read, validate and load a probe file made for the model with `expectedModelFingerprint`. */
export async function loadProbe(path: string, expectedModelFingerprint: string): Promise<Probe> {
  return createProbe(await readProbeFile(path, expectedModelFingerprint));
}

type RowScorer = (activation: Float32Array, offset: number) => number;

/** A Mahalanobis or concept-match leaf or member that scores a window of positions (probes/window.ts). */
export function isWindowed(body: LeafBody | OnsetBody): boolean {
  return 'gaussian' in body && body.window !== undefined;
}

/**
 * A leaf's per-request scorer factory. Not windowed: one shared stateless scorer. Windowed: each
 * request gets its own WindowMean of the member's rows (the update for 'difference'); a counted
 * position pushes its row and rescores the mean, any other keeps the last score (its window is
 * unchanged). Before the first counted position the mean is the Gaussian's own: distance 0.
 */
function leafFactory(body: LeafBody, inputDim: number): () => RequestRowScorer {
  if (!('gaussian' in body) || body.window === undefined) {
    const f = leafScorer(body, inputDim);
    const scorer: RequestRowScorer = (activation, offset) => f(activation, offset);
    return () => scorer;
  }
  const difference = body.input === 'difference';
  const dim = difference ? inputDim / 2 : inputDim;
  const { size, positions, spread, minCount } = body.window;
  const countAll = positions === 'all';
  // The same leaf on one row of the window's width: the mean is formed here, so no input or window.
  const { input: _input, window: _window, ...ofRow } = body;
  const ofMean = leafScorer(ofRow, dim);
  const fill = Float32Array.from(body.gaussian.mean);
  const scale = spread ? Float64Array.from(spread.scale) : null;
  const row = new Float32Array(dim);
  const mean = new Float32Array(dim);
  return () => {
    const window = new WindowMean(size, dim, fill, scale);
    let last = 0;
    return (activation, offset, novel) => {
      if (!novel && !countAll) return last;
      if (difference) {
        for (let j = 0; j < dim; j++) row[j] = activation[offset + dim + j] - activation[offset + j];
        window.push(row, 0);
      } else window.push(activation, offset);
      if (minCount !== undefined && window.filled < minCount) return (last = 0);
      window.mean(mean);
      last = ofMean(mean, 0);
      if (spread) last /= spreadDiscount(window.spread(), spread.reference);
      return last;
    };
  };
}

function leafScorer(body: LeafBody, inputDim: number): RowScorer {
  if (body.kind === 'concept-match') return conceptMatchScorer(body, inputDim);
  if (body.kind === 'mahalanobis') {
    const g = body.gaussian;
    if (g.form === 'lowrank') return lowRankScorer(g, inputDim, body.input === 'difference');
    if (g.form === 'cholesky') return whitenedScorer(g, inputDim, body.input === 'difference');
    const model: GaussianModel = { form: 'diagonal', shrinkage: g.shrinkage, mean: Float64Array.from(g.mean), variance: Float64Array.from(g.variance) };
    if (body.input === 'difference') {
      // inputDim = 2·d: the two hooks' rows; the Gaussian reads second − first.
      const d = inputDim / 2;
      const diff = new Float64Array(d);
      const scratch = new Float64Array(d);
      return (activation, offset) => {
        for (let j = 0; j < d; j++) diff[j] = activation[offset + d + j] - activation[offset + j];
        return mahalanobis(model, diff, 0, scratch);
      };
    }
    const scratch = new Float64Array(inputDim);
    return (activation, offset) => mahalanobis(model, activation, offset, scratch);
  }
  const { v, c } = foldStandardisation(body.weights, body.bias, body.normalisation.mean, body.normalisation.std);
  const simd = new SimdMatVec();
  const w = simd.addMatrix(1, inputDim, v);
  const out = new Float32Array(1);
  const logit = (activation: Float32Array, offset: number): number => {
    simd.matvec(w, activation, offset, out);
    return c + out[0];
  };
  if (body.kind === 'linear') return (activation, offset) => sigmoid(logit(activation, offset));
  return logit;
}

/**
 * Writes the centred row (x − mean, or x₁ − x₀ − mean for a layer update) into `into` and returns
 * its squared norm: the Mahalanobis scorers' first step, straight into the SIMD kernel's input.
 */
function centre(activation: Float32Array, offset: number, mean: Float32Array, difference: boolean, into: Float32Array): number {
  const d = mean.length;
  let norm2 = 0;
  for (let j = 0; j < d; j++) {
    const x = (difference ? activation[offset + d + j] - activation[offset + j] : activation[offset + j]) - mean[j];
    into[j] = x;
    norm2 += x * x;
  }
  return norm2;
}

/**
 * Full-covariance Mahalanobis on the hot path: ‖W·(x − mean)‖ with W = L⁻¹ formed once at load
 * (float64, stored as int16 with per-row scales), so a row costs one lower-triangular SIMD matvec
 * (d²/2 multiply-adds) instead of a scalar forward substitution, an order of magnitude faster.
 */
function whitenedScorer(g: Extract<GaussianBody, { form: 'cholesky' }>, inputDim: number, difference: boolean): RowScorer {
  const w = whitener(g, inputDim, difference);
  return (activation, offset) => Math.sqrt(w.whiten(activation, offset));
}

/**
 * W = L⁻¹ on a SIMD kernel (int16 rows with scales); `whiten` writes z = W·(x − mean) (or of the
 * update x₁ − x₀ − mean) into `z` and returns ‖z‖². `simd` takes more matrices (a concept bank).
 */
function whitener(g: Extract<GaussianBody, { form: 'cholesky' }>, inputDim: number, difference: boolean) {
  const d = difference ? inputDim / 2 : inputDim;
  const mean = Float32Array.from(g.mean);
  const simd = new SimdMatVec();
  const h = simd.addLowerTriangular(d, invertLower(Float64Array.from(g.factor), d), { int16: true });
  const z = new Float32Array(d);
  const whiten = (activation: Float32Array, offset: number): number => {
    centre(activation, offset, mean, difference, simd.input(h));
    simd.matvecInput(h, z);
    let q = 0;
    for (let i = 0; i < d; i++) q += z[i] * z[i];
    return q;
  };
  return { d, simd, z, whiten };
}

/**
 * Concept match: z = W·(x − mean) as in whitenedScorer, then one SIMD matvec against the C unit
 * directions (C·d more multiply-adds, a fraction of the whitening's d²/2 for C ≪ d): max_k dₖ·z / ‖z‖.
 * A cosine is bounded, so an unusual but undirected row (junk, a new kind of text) scores no higher
 * than its alignment with some concept; a zero row scores 0.
 */
function conceptMatchScorer(body: ConceptMatchBody, inputDim: number): RowScorer {
  const g = body.gaussian;
  if (g.form !== 'cholesky') throw lwError('LW_ERR_PROBE_INVALID', `concept-match needs a cholesky Gaussian, got ${g.form}`);
  const { d, simd, z, whiten } = whitener(g, inputDim, body.input === 'difference');
  const count = body.concepts.names.length;
  const bank = simd.addMatrix(count, d, Float64Array.from(body.concepts.directions));
  const dots = new Float32Array(count);
  return (activation, offset) => {
    const q = whiten(activation, offset);
    if (!(q > 0)) return 0;
    simd.matvec(bank, z, 0, dots);
    let best = -Infinity;
    for (let k = 0; k < count; k++) if (dots[k] > best) best = dots[k];
    return best / Math.sqrt(q);
  };
}

/** L⁻¹ (row-major d × d, lower triangular) of a packed lower-triangular L, by forward substitution. */
function invertLower(packed: Float64Array, d: number): Float64Array {
  const inv = new Float64Array(d * d);
  const at = (i: number, j: number) => packed[(i * (i + 1)) / 2 + j];
  for (let col = 0; col < d; col++) {
    inv[col * d + col] = 1 / at(col, col);
    for (let i = col + 1; i < d; i++) {
      let s = 0;
      for (let k = col; k < i; k++) s += at(i, k) * inv[k * d + col];
      inv[i * d + col] = -s / at(i, i);
    }
  }
  return inv;
}

/**
 * Low-rank Mahalanobis on the hot path: the centred row is written straight into the kernel's
 * input (its squared norm taken on the way), then one SIMD matvec projects it on the components.
 */
function lowRankScorer(g: Extract<GaussianBody, { form: 'lowrank' }>, inputDim: number, difference: boolean): RowScorer {
  const d = difference ? inputDim / 2 : inputDim;
  const k = g.eigenvalues.length;
  const mean = Float32Array.from(g.mean);
  const invLambda = Float64Array.from(g.eigenvalues, (x) => 1 / x);
  const invResidual = 1 / g.residualVariance;
  const simd = new SimdMatVec();
  const h = simd.addMatrix(k, d, Float64Array.from(g.components));
  const proj = new Float32Array(k);
  return (activation, offset) => {
    const norm2 = centre(activation, offset, mean, difference, simd.input(h));
    simd.matvecInput(h, proj);
    let q = 0;
    let inside = 0;
    for (let i = 0; i < k; i++) {
      const p2 = proj[i] * proj[i];
      inside += p2;
      q += p2 * invLambda[i];
    }
    // Rounding can leave the outside part a hair below zero.
    return Math.sqrt(q + Math.max(0, norm2 - inside) * invResidual);
  };
}

function ensembleScorer(members: readonly EnsembleMember[], hooks: readonly string[], dModel: number): () => RequestRowScorer {
  const indexOf = new Map(members.map((m, i) => [m.id, i]));
  const parts = members.map((m) => {
    const center = m.calibration.center;
    const invScale = 1 / m.calibration.scale;
    // An onset member reads two earlier members' raw scores at this position (probe-file.ts).
    if (m.kind === 'onset') return { onset: { body: m, up: indexOf.get(m.upper.member)!, low: indexOf.get(m.lower.member)! }, factory: null, segments: [], scratch: null, center, invScale, novelOnly: false };
    const memberHooks = hookList(m.hook);
    const inputDim = memberHooks.length * dModel;
    const factory = leafFactory(m, inputDim);
    // Offsets of the member's hook rows inside the ensemble's concatenated input.
    const segments = memberHooks.map((h) => hooks.indexOf(h) * dModel);
    const contiguous = segments.every((s, i) => s === segments[0] + i * dModel);
    const scratch = contiguous ? null : new Float32Array(inputDim);
    return { onset: null, factory, segments, scratch, center, invScale, novelOnly: m.positions === 'novel-bigram' };
  });
  return () => {
    const scorers = parts.map((p) => p.factory?.() ?? null);
    const raw = new Float64Array(parts.length);
    return (activation, offset, novel) => {
      let best = -Infinity;
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i];
        let s: number;
        if (p.onset) s = onsetScore(p.onset.body, raw[p.onset.up], raw[p.onset.low]);
        else {
          // A repeated token pair is no evidence for a novel-only member: its clean median, 0.
          if (p.novelOnly && !novel) {
            raw[i] = Number.NaN;
            if (best < 0) best = 0;
            continue;
          }
          if (p.scratch === null) s = scorers[i]!(activation, offset + p.segments[0], novel);
          else {
            for (let k = 0; k < p.segments.length; k++) {
              const from = offset + p.segments[k];
              const to = k * dModel;
              for (let j = 0; j < dModel; j++) p.scratch[to + j] = activation[from + j];
            }
            s = scorers[i]!(p.scratch, 0, novel);
          }
          raw[i] = s;
        }
        const calibrated = (s - p.center) * p.invScale;
        if (calibrated > best || Number.isNaN(calibrated)) best = calibrated;
      }
      return best;
    };
  };
}

/**
 * Several probes scored together on the taps of one forward pass. `hooks()` tells the engine
 * which taps to request; `score` checks the taps match, then returns one array of per-position
 * scores per probe (fresh arrays the caller may keep; gather buffers are reused).
 *
 * The daemon's bank is live: `swap` replaces a probe (a learned detector) for requests that start
 * afterwards, while a request holds `snapshot()`, the set it started with, to its end. A swap
 * builds a new immutable set and replaces the reference, so a snapshot never changes.
 *
 * A snapshot is also the request's scoring state: `score` takes the passes of ONE request in order
 * with their token ids (which positions are novel, for ordered probes), so call it on a fresh
 * snapshot per request.
 */
export class ProbeBank {
  private set: { probes: readonly Probe[]; gather: (Float32Array | null)[]; ordered: boolean };
  private request: { scorers: RequestRowScorer[]; novelty: NoveltyTracker } | null = null;

  constructor(probes: readonly Probe[]) {
    this.set = ProbeBank.build(probes);
  }

  private static build(probes: readonly Probe[]): ProbeBank['set'] {
    const ids = new Set<string>();
    for (const p of probes) {
      if (ids.has(p.id)) throw lwError('LW_ERR_PROBE_INVALID', `two probes share the id ${p.id}`);
      ids.add(p.id);
    }
    const list = Object.freeze([...probes]);
    return { probes: list, gather: list.map((p) => (p.hooks.length > 1 ? new Float32Array(p.inputDim) : null)), ordered: list.some((p) => p.ordered) };
  }

  get probes(): readonly Probe[] {
    return this.set.probes;
  }

  /**
   * Replace the probe with `probe.id` by `probe`, for requests that start from now on. It must read
   * the same hooks (the served graph taps only those). Returns the probe it replaced.
   */
  swap(probe: Probe): Probe {
    const old = this.set.probes.find((p) => p.id === probe.id);
    if (!old) throw lwError('LW_ERR_PROBE_INVALID', `no loaded probe has the id ${probe.id}`);
    if (old.dModel !== probe.dModel || old.hooks.length !== probe.hooks.length || old.hooks.some((h) => !probe.hooks.includes(h))) {
      throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${probe.id}: the replacement reads ${probe.hooks.join(', ')}, the loaded one ${old.hooks.join(', ')}`);
    }
    this.set = ProbeBank.build(this.set.probes.map((p) => (p === old ? probe : p)));
    this.request = null;
    return old;
  }

  /** The probes loaded now, fixed: later swaps do not change it (one per request). */
  snapshot(): ProbeBank {
    const s = Object.create(ProbeBank.prototype) as ProbeBank;
    s.set = this.set;
    s.request = null;
    return s;
  }

  /** Whether some probe depends on earlier positions (score then needs the token ids). */
  get ordered(): boolean {
    return this.set.ordered;
  }

  /** Every hook some probe reads, each once, in first-use order. */
  hooks(): string[] {
    const out: string[] = [];
    for (const p of this.probes) for (const h of p.hooks) if (!out.includes(h)) out.push(h);
    return out;
  }

  /**
   * Scores of one forward pass of this snapshot's request: `tokenIds` are the ids at the pass's
   * positions (needed when some probe is ordered; passes in order, from position 0).
   */
  score(taps: ReadonlyMap<string, TapTensor>, tokenIds?: ArrayLike<number>): ProbeScores[] {
    const out: ProbeScores[] = [];
    const { probes, gather: buffers } = this.set;
    this.request ??= { scorers: probes.map((p) => p.createScorer()), novelty: new NoveltyTracker() };
    const { scorers, novelty } = this.request;
    let novel: Uint8Array | null = null;
    for (let k = 0; k < probes.length; k++) {
      const probe = probes[k];
      const d = probe.dModel;
      const first = this.tap(taps, probe, probe.hooks[0]);
      const positions = first.positions;
      if (novel === null) {
        novel = new Uint8Array(positions).fill(1);
        if (this.ordered) {
          if (tokenIds === undefined || tokenIds.length !== positions) {
            throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `ordered probes need the token id of each of the ${positions} positions, got ${tokenIds?.length ?? 'none'}`);
          }
          for (let p = 0; p < positions; p++) novel[p] = novelty.next(tokenIds[p]) ? 1 : 0;
        }
      }
      const scorer = scorers[k];
      const scores = new Float32Array(positions);
      const gather = buffers[k];
      if (gather === null) {
        for (let p = 0; p < positions; p++) scores[p] = scorer(first.data, p * d, novel[p] === 1);
      } else {
        const rows = probe.hooks.map((h) => this.tap(taps, probe, h));
        for (const t of rows) {
          if (t.positions !== positions) {
            throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${probe.id}: taps have ${positions} and ${t.positions} positions`);
          }
        }
        for (let p = 0; p < positions; p++) {
          for (let h = 0; h < rows.length; h++) {
            const src = rows[h].data;
            const from = p * d;
            const to = h * d;
            for (let j = 0; j < d; j++) gather[to + j] = src[from + j];
          }
          scores[p] = scorer(gather, 0, novel[p] === 1);
        }
      }
      out.push({ probeId: probe.id, scores });
    }
    return out;
  }

  private tap(taps: ReadonlyMap<string, TapTensor>, probe: Probe, hook: string): TapTensor {
    const t = taps.get(hook);
    if (t === undefined) throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${probe.id} needs ${hook}, which the taps lack`, { probe: probe.id, hook });
    if (t.dModel !== probe.dModel) {
      throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${probe.id}: ${hook} has d_model ${t.dModel}, the probe ${probe.dModel}`, { probe: probe.id, hook });
    }
    if (!Number.isInteger(t.positions) || t.positions < 0 || t.data.length < t.positions * t.dModel) {
      throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `probe ${probe.id}: ${hook} holds ${t.data.length} floats for ${t.positions}×${t.dModel}`, { probe: probe.id, hook });
    }
    return t;
  }
}
