/**
 * Onset members (issue 12): an ensemble member that reads two windowed members at consecutive
 * layers, the upper calibrated score less the lower. Checked: which pairs get one, the daemon's
 * scorer against the same arithmetic done here from each member scored alone, the file checks, and
 * what it is for: a shift added at one layer moves its onset, a shift of every layer (unusual text)
 * does not.
 */
import { describe, expect, it } from 'vitest';
import { calibrate, MemberScoreCache, scoreSeq, type MemberFit, type Seq } from '../src/lab/generic.js';
import { fitAnomalyMembers } from '../src/lab/generic.js';
import { ensembleFile, onsetFits, type DetectorMeta, NO_FIGURES } from '../src/probes/calibration.js';
import { createProbe } from '../src/probes/probe.js';
import { parseProbeFile, serializeProbeFile, validateProbeFile } from '../src/probes/probe-file.js';
import { createRng } from '../src/rng.js';

const D = 6;
const LAYERS = 4;
const FP = 'lw1-onset-test';
const WINDOW = 4;

/** Rows per layer: each layer's update is noise plus a layer-specific offset; `shift` adds v to the updates of `layers` from `from` on. */
function seq(id: string, seed: number, shift?: { layers: number[]; v: number[]; from: number }): Seq {
  const positions = 24;
  const rng = createRng(seed);
  const rows: Float32Array[] = [];
  let prev = new Float32Array(positions * D);
  for (let l = 0; l < LAYERS; l++) {
    const x = new Float32Array(positions * D);
    for (let p = 0; p < positions; p++) {
      for (let j = 0; j < D; j++) {
        let update = (l === 0 ? 2 : 0.4) * rng.gaussian() + (j === l ? 0.3 : 0);
        if (shift && shift.layers.includes(l) && p >= shift.from) update += shift.v[j];
        x[p * D + j] = prev[p * D + j] + update;
      }
    }
    rows.push(x);
    prev = x;
  }
  const ids = Array.from({ length: positions }, (_, p) => 1 + ((seed * 37 + p * 11) % 9000));
  return { id, source: 'corpus', start: 0, positions, ids, rows: (l) => rows[l] };
}

const META: DetectorMeta = { id: 'onset-test', label: 'onset test', description: '', modelFingerprint: FP, dModel: D, targetFpr: 0.05, aggregator: { kind: 'max', skip: 4 }, training: NO_FIGURES, evaluation: NO_FIGURES };

function fitted() {
  const fit = Array.from({ length: 40 }, (_, i) => seq(`fit${i}`, 100 + i));
  const cal = Array.from({ length: 20 }, (_, i) => seq(`cal${i}`, 500 + i));
  const leaves = fitAnomalyMembers(fit, D, { layers: [0, 1, 2, 3], window: WINDOW, windowFrom: 1, skip: 4 });
  const cache = new MemberScoreCache({ modelFingerprint: FP, dModel: D });
  const tokensOf = (scores: (s: Seq) => ArrayLike<number>): number[] => cal.flatMap((s) => Array.from(scores(s)).slice(4));
  const members = leaves.map((m) => ({ ...m, calibration: calibrate(tokensOf((s) => cache.scores(m, s))) }));
  return { members, cache, tokensOf };
}

/** The onset's per-position score done here: each member scored alone, the calibrations applied by hand. */
function onsetByHand(members: ReturnType<typeof fitted>['members'], cache: MemberScoreCache, upper: string, lower: string, s: Seq): number[] {
  const byId = new Map(members.map((m) => [m.id, m]));
  const up = byId.get(upper)!;
  const low = byId.get(lower)!;
  const a = cache.scores(up, s);
  const b = cache.scores(low, s);
  return Array.from(a, (x, p) => (x - up.calibration.center) / up.calibration.scale - (b[p] - low.calibration.center) / low.calibration.scale);
}

describe('onset members', () => {
  it('one per window size, at the deepest windowed layer with one below it, reading both', () => {
    const { members } = fitted();
    const onsets = onsetFits(members);
    expect(onsets.map((o) => o.id)).toEqual(['onset-L3-w4']);
    const o = onsets[0];
    expect(o.body.upper.member).toBe('update-L3-w4');
    expect(o.body.lower.member).toBe('update-L2-w4');
    expect(o.hook).toEqual(['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post', 'blocks.3.hook_resid_post']);
    // The calibrations the onset reads are its members' own, copied.
    expect(o.body.upper).toMatchObject(members.find((m) => m.id === 'update-L3-w4')!.calibration);
    // Per-token members make none, nor a deepest windowed member with no windowed layer below it.
    const perToken = members.filter((m) => m.body.kind === 'mahalanobis' && m.body.window === undefined);
    expect(onsetFits(perToken)).toEqual([]);
    expect(onsetFits(members.filter((m) => m.id !== 'update-L2-w4'))).toEqual([]);
  });

  it("the daemon's scorer gives the ensemble's max with the onset computed from each member scored alone", () => {
    const { members, cache, tokensOf } = fitted();
    const onsets = onsetFits(members).map((o) => ({ ...o, calibration: calibrate(tokensOf((s) => onsetByHand(members, cache, o.body.upper.member, o.body.lower.member, s))) }));
    const file = parseProbeFile(serializeProbeFile(ensembleFile([...members, ...onsets], META, 1)), FP);
    const probe = createProbe(file);
    const s = seq('x', 9999, { layers: [3], v: [0, 0, 0, 0, 0, 1.5], from: 8 });
    const got = scoreSeq(probe, s);
    const leaves = members.map((m) => Array.from(cache.scores(m, s), (x) => (x - m.calibration.center) / m.calibration.scale));
    const onsetRows = onsets.map((o) => onsetByHand(members, cache, o.body.upper.member, o.body.lower.member, s).map((x) => (x - o.calibration.center) / o.calibration.scale));
    // Tolerance: the windowed members' float32 scores, the same in both; 1e-5 for the order of operations.
    for (let p = 0; p < s.positions; p++) expect(got[p]).toBeCloseTo(Math.max(...[...leaves, ...onsetRows].map((r) => r[p])), 5);
  });

  it('moves where a shift starts at one layer, not where every layer shifts (unusual text)', () => {
    const { members, cache } = fitted();
    const v = [0.9, -0.6, 0.4, 0.8, -0.5, 0.7];
    const at3 = seq('at3', 7001, { layers: [3], v, from: 6 });
    const everywhere = seq('all', 7001, { layers: [0, 1, 2, 3], v, from: 6 });
    const largest = (s: Seq): number => Math.max(...onsetByHand(members, cache, 'update-L3-w4', 'update-L2-w4', s).slice(4));
    const window3 = (s: Seq): number => Math.max(...Array.from(cache.scores(members.find((m) => m.id === 'update-L3-w4')!, s)).slice(4));
    // Both move layer 3's window alike; only the one-layer shift moves its onset.
    expect(window3(everywhere)).toBeGreaterThan(0.8 * window3(at3));
    expect(largest(at3)).toBeGreaterThan(largest(everywhere) + 1);
  });

  it('a file whose onset reads a later, missing or per-token member, or windows of two sizes, is refused with a coded error', () => {
    const { members } = fitted();
    const [o] = onsetFits(members);
    const good = ensembleFile([...members, { ...o, calibration: { center: 0, scale: 1 } }], META, 1);
    expect(good.kind === 'ensemble-max' && good.members.at(-1)!.kind).toBe('onset');
    const withOnset = (body: object, first = false) => {
      const f = JSON.parse(serializeProbeFile(good));
      const onset = { ...f.members.at(-1), ...body };
      f.members = first ? [onset, ...f.members.slice(0, -1)] : [...f.members.slice(0, -1), onset];
      return f;
    };
    const refused = (f: unknown) => expect(() => validateProbeFile(f)).toThrow(expect.objectContaining({ code: 'LW_ERR_PROBE_INVALID' }));
    refused(withOnset({}, true));
    refused(withOnset({ upper: { ...o.body.upper, member: 'nope' } }));
    refused(withOnset({ lower: { ...o.body.lower, member: 'update-L1' } }));
    const other = JSON.parse(serializeProbeFile(good));
    const lower = other.members.find((m: MemberFit) => m.id === o.body.lower.member);
    lower.window.size = WINDOW + 1;
    refused(other);
  });
});
