/**
 * Loaded probes and the ProbeBank the daemon calls once per forward pass.
 *
 * A Probe scores one position: `scoreRow(activation, offset)` reads `inputDim` floats starting at
 * `offset` (for a multi-hook probe: its hooks' rows concatenated in the file's hook order).
 * - linear:       probability σ(bias + w·(x − mean)/std)
 * - direction:    bias + w·(x − mean)/std (signed distance for a difference-of-means probe)
 * - mahalanobis:  Mahalanobis distance from the fitted Gaussian (of the concatenated row, or with
 *                 `input: 'difference'` of row(hook 2) − row(hook 1): a layer's update)
 * - ensemble-max: max over members of (memberScore − center) / scale
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
import { foldStandardisation, sigmoid } from './logistic.js';
import { dot } from './matrix.js';
import { hookList, readProbeFile, type EnsembleMember, type LeafBody, type ProbeFile, type ProbeKind } from './probe-file.js';

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
  /** Score of the input row starting at `offset` in `activation`. */
  scoreRow(activation: Float32Array, offset: number): number;
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
  const scoreRow = file.kind === 'ensemble-max' ? ensembleScorer(file.members, hooks, file.dModel) : leafScorer(file, inputDim);
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
    scoreRow,
    createAggregator: () => createAggregator(aggregator),
  };
}

/** Read, validate and load a probe file made for the model with `expectedModelFingerprint`. */
export async function loadProbe(path: string, expectedModelFingerprint: string): Promise<Probe> {
  return createProbe(await readProbeFile(path, expectedModelFingerprint));
}

type RowScorer = (activation: Float32Array, offset: number) => number;

function leafScorer(body: LeafBody, inputDim: number): RowScorer {
  if (body.kind === 'mahalanobis') {
    const g = body.gaussian;
    const model: GaussianModel =
      g.form === 'cholesky'
        ? { form: 'cholesky', shrinkage: g.shrinkage, mean: Float64Array.from(g.mean), factor: Float64Array.from(g.factor) }
        : { form: 'diagonal', shrinkage: g.shrinkage, mean: Float64Array.from(g.mean), variance: Float64Array.from(g.variance) };
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
  if (body.kind === 'linear') return (activation, offset) => sigmoid(c + dot(activation, offset, v, 0, inputDim));
  return (activation, offset) => c + dot(activation, offset, v, 0, inputDim);
}

function ensembleScorer(members: readonly EnsembleMember[], hooks: readonly string[], dModel: number): RowScorer {
  const parts = members.map((m) => {
    const memberHooks = hookList(m.hook);
    const inputDim = memberHooks.length * dModel;
    const score = leafScorer(m, inputDim);
    // Offsets of the member's hook rows inside the ensemble's concatenated input.
    const segments = memberHooks.map((h) => hooks.indexOf(h) * dModel);
    const contiguous = segments.every((s, i) => s === segments[0] + i * dModel);
    const scratch = contiguous ? null : new Float32Array(inputDim);
    return { score, segments, scratch, center: m.calibration.center, invScale: 1 / m.calibration.scale };
  });
  return (activation, offset) => {
    let best = -Infinity;
    for (const p of parts) {
      let s: number;
      if (p.scratch === null) s = p.score(activation, offset + p.segments[0]);
      else {
        for (let k = 0; k < p.segments.length; k++) {
          const from = offset + p.segments[k];
          const to = k * dModel;
          for (let j = 0; j < dModel; j++) p.scratch[to + j] = activation[from + j];
        }
        s = p.score(p.scratch, 0);
      }
      const calibrated = (s - p.center) * p.invScale;
      if (calibrated > best || Number.isNaN(calibrated)) best = calibrated;
    }
    return best;
  };
}

/**
 * Several probes scored together on the taps of one forward pass. `hooks()` tells the engine
 * which taps to request; `score` checks the taps match, then returns one array of per-position
 * scores per probe (fresh arrays the caller may keep; gather buffers are reused).
 */
export class ProbeBank {
  readonly probes: readonly Probe[];
  private readonly gather: (Float32Array | null)[];

  constructor(probes: readonly Probe[]) {
    const ids = new Set<string>();
    for (const p of probes) {
      if (ids.has(p.id)) throw lwError('LW_ERR_PROBE_INVALID', `two probes share the id ${p.id}`);
      ids.add(p.id);
    }
    this.probes = [...probes];
    this.gather = this.probes.map((p) => (p.hooks.length > 1 ? new Float32Array(p.inputDim) : null));
  }

  /** Every hook some probe reads, each once, in first-use order. */
  hooks(): string[] {
    const out: string[] = [];
    for (const p of this.probes) for (const h of p.hooks) if (!out.includes(h)) out.push(h);
    return out;
  }

  score(taps: ReadonlyMap<string, TapTensor>): ProbeScores[] {
    const out: ProbeScores[] = [];
    for (let k = 0; k < this.probes.length; k++) {
      const probe = this.probes[k];
      const d = probe.dModel;
      const first = this.tap(taps, probe, probe.hooks[0]);
      const positions = first.positions;
      const scores = new Float32Array(positions);
      const gather = this.gather[k];
      if (gather === null) {
        for (let p = 0; p < positions; p++) scores[p] = probe.scoreRow(first.data, p * d);
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
          scores[p] = probe.scoreRow(gather, 0);
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
