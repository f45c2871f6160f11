import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isLatentwatchError, type ErrorCode } from '../src/errors.js';
import { fitGaussian } from '../src/lab/gaussian-fit.js';
import { fitLogistic } from '../src/lab/logistic.js';
import { matrixFromRows } from '../src/probes/matrix.js';
import {
  linearBody,
  mahalanobisBody,
  parseProbeFile,
  readProbeFile,
  serializeProbeFile,
  validateProbeFile,
  writeProbeFile,
  type EnsembleProbeFile,
  type LinearProbeFile,
  type ProbeFigures,
  type ProbeFile,
} from '../src/probes/probe-file.js';

const FINGERPRINT = 'sha256:1111111111111111111111111111111111111111111111111111111111111111';
const figures: ProbeFigures = {
  trials: 120,
  concepts: ['apple', 'ocean'],
  auroc: 0.97,
  'tpr_at_fpr_0.01': 0.8,
  'tpr_at_fpr_0.05': 0.9,
  fprOnControls: { 'random-vector': 0.02, 'no-injection': 0.01 },
};

function linearProbe(): LinearProbeFile {
  return {
    formatVersion: 1,
    id: 'concept-L4',
    kind: 'linear',
    label: 'concept injection',
    description: 'logistic probe on blocks.4.hook_resid_post, mean-pooled trials',
    modelFingerprint: FINGERPRINT,
    hook: 'blocks.4.hook_resid_post',
    dModel: 3,
    threshold: 0.8,
    targetFpr: 0.01,
    aggregator: { kind: 'ema', alpha: 0.25 },
    training: figures,
    evaluation: { trials: 40, concepts: ['river'], auroc: 0.95, 'tpr_at_fpr_0.01': 0.7, 'tpr_at_fpr_0.05': 0.85 },
    bias: -0.5,
    normalisation: { mean: [0.1, -0.2, 1 / 3], std: [1, 2, 0.5] },
    weights: [0.25, -1.5, 1e-7],
  };
}

function codeOf(fn: () => unknown): ErrorCode | undefined {
  try {
    fn();
  } catch (e) {
    if (isLatentwatchError(e)) return e.code;
    throw e;
  }
  return undefined;
}

describe('probe file: write and read', () => {
  it('round-trips: read(write(p)) deep-equals p (with fprOnControls keys sorted)', () => {
    const p = linearProbe();
    const back = parseProbeFile(serializeProbeFile(p), FINGERPRINT);
    expect(back).toEqual(p);
    expect(Object.keys(back.training.fprOnControls ?? {})).toEqual(['no-injection', 'random-vector']);
  });

  it('same input, same bytes; fixed key order regardless of input key order', () => {
    const p = linearProbe();
    const shuffled = Object.fromEntries(Object.entries(p).reverse()) as unknown as ProbeFile;
    const a = serializeProbeFile(p);
    expect(serializeProbeFile(shuffled)).toBe(a);
    expect(serializeProbeFile(parseProbeFile(a, FINGERPRINT))).toBe(a);
    expect(Object.keys(JSON.parse(a))).toEqual([
      'formatVersion', 'id', 'kind', 'label', 'description', 'modelFingerprint', 'hook', 'dModel',
      'threshold', 'targetFpr', 'aggregator', 'training', 'evaluation', 'bias', 'normalisation', 'weights',
    ]);
  });

  it('matches the checked-in golden file byte for byte (format changes must be deliberate)', () => {
    // Regenerate after a deliberate format change: LW_UPDATE_GOLDEN=1 npx vitest run test/probes-file.test.ts
    const golden = new URL('./fixtures/probes/linear.probe.json', import.meta.url);
    if (process.env.LW_UPDATE_GOLDEN === '1') writeFileSync(golden, serializeProbeFile(linearProbe()));
    expect(serializeProbeFile(linearProbe())).toBe(readFileSync(golden, 'utf8'));
  });

  it('numbers are written in shortest round-trip form', () => {
    const text = serializeProbeFile(linearProbe());
    expect(text).toContain('"mean": [0.1,-0.2,0.3333333333333333]');
    expect(text).toContain('1e-7');
  });

  it('writes atomically to disk and reads back; a missing file is LW_ERR_PROBE_NOT_FOUND', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lw-probe-'));
    const path = join(dir, 'p.probe.json');
    await writeProbeFile(path, linearProbe());
    expect(await readProbeFile(path, FINGERPRINT)).toEqual(linearProbe());
    await expect(readProbeFile(join(dir, 'nope.probe.json'), FINGERPRINT)).rejects.toMatchObject({ code: 'LW_ERR_PROBE_NOT_FOUND' });
    writeFileSync(path, '{"formatVersion": 1');
    await expect(readProbeFile(path, FINGERPRINT)).rejects.toMatchObject({ code: 'LW_ERR_PROBE_INVALID', message: expect.stringContaining(path) });
  });

  it('a probe made for another model → LW_ERR_PROBE_MODEL_MISMATCH', async () => {
    const text = serializeProbeFile(linearProbe());
    expect(codeOf(() => parseProbeFile(text, 'sha256:other'))).toBe('LW_ERR_PROBE_MODEL_MISMATCH');
    expect(codeOf(() => parseProbeFile(text, null))).toBeUndefined();
    const dir = mkdtempSync(join(tmpdir(), 'lw-probe-'));
    const path = join(dir, 'p.probe.json');
    writeFileSync(path, text);
    await expect(readProbeFile(path, 'sha256:other')).rejects.toMatchObject({ code: 'LW_ERR_PROBE_MODEL_MISMATCH', status: 409 });
  });

  it('fitted models go through linearBody / mahalanobisBody and round-trip', () => {
    const x = matrixFromRows([[0, 1], [1, 0], [2, 2], [3, 1], [0, 0], [4, 3]]);
    const lr = fitLogistic(x, [0, 0, 1, 1, 0, 1], { l2: 0.1 });
    const g = fitGaussian(x);
    const base = linearProbe();
    const lin: ProbeFile = { ...base, dModel: 2, ...linearBody(lr) };
    const dir: ProbeFile = { ...base, id: 'dom', dModel: 2, ...linearBody(lr, 'direction') };
    const { bias: _b, normalisation: _n, weights: _w, ...header } = base;
    const mah: ProbeFile = { ...header, id: 'generic-L4', dModel: 2, ...mahalanobisBody(g) };
    const low: ProbeFile = { ...header, id: 'generic-low', dModel: 2, ...mahalanobisBody(fitGaussian(x, { covariance: 'lowrank', rank: 1 })) };
    for (const p of [lin, dir, mah, low]) expect(parseProbeFile(serializeProbeFile(p), FINGERPRINT)).toEqual(p);
  });
});

describe('probe file: validation (LW_ERR_PROBE_INVALID)', () => {
  const good = JSON.parse(serializeProbeFile(linearProbe())) as Record<string, unknown>;
  type Json = Record<string, unknown>;
  const sub = (o: Json, key: string): Json => o[key] as Json;
  const list = (o: Json, key: string): unknown[] => o[key] as unknown[];
  const mutations: Array<[string, (o: Json) => void]> = [
    ['unknown format version', (o) => (o.formatVersion = 2)],
    ['unknown kind', (o) => (o.kind = 'svm')],
    ['bad id', (o) => (o.id = 'has space')],
    ['empty label', (o) => (o.label = '')],
    ['missing modelFingerprint', (o) => delete o.modelFingerprint],
    ['unknown top-level key', (o) => (o.extra = 1)],
    ['hook not a hook name', (o) => (o.hook = 'blocks 4')],
    ['empty hook list', (o) => (o.hook = [])],
    ['dModel not an integer', (o) => (o.dModel = 2.5)],
    ['threshold not a number', (o) => (o.threshold = '0.8')],
    ['targetFpr = 1', (o) => (o.targetFpr = 1)],
    ['weights too short', (o) => list(o, 'weights').pop()],
    ['weights with null', (o) => (list(o, 'weights')[0] = null)],
    ['std zero', (o) => (list(sub(o, 'normalisation'), 'std')[1] = 0)],
    ['mean too long for the hooks', (o) => (o.hook = ['blocks.4.hook_resid_post', 'blocks.5.hook_resid_post'])],
    ['bad aggregator', (o) => (o.aggregator = { kind: 'ema', alpha: 2 })],
    ['auroc > 1', (o) => (sub(o, 'training').auroc = 1.2)],
    ['missing tpr', (o) => delete sub(o, 'evaluation')['tpr_at_fpr_0.05']],
    ['negative trials', (o) => (sub(o, 'training').trials = -1)],
  ];
  for (const [name, mutate] of mutations) {
    it(name, () => {
      const o = structuredClone(good);
      mutate(o);
      expect(codeOf(() => parseProbeFile(JSON.stringify(o), FINGERPRINT))).toBe('LW_ERR_PROBE_INVALID');
    });
  }

  it('not JSON at all', () => {
    expect(codeOf(() => parseProbeFile('{"formatVersion": 1,', FINGERPRINT))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => parseProbeFile('[]', FINGERPRINT))).toBe('LW_ERR_PROBE_INVALID');
  });

  it('malformed wins over model mismatch (validation comes first)', () => {
    const o = structuredClone(good);
    list(o, 'weights').pop();
    expect(codeOf(() => parseProbeFile(JSON.stringify(o), 'sha256:other'))).toBe('LW_ERR_PROBE_INVALID');
  });

  it('the error names the offending path', () => {
    const o = structuredClone(good);
    list(sub(o, 'normalisation'), 'std')[1] = 0;
    expect(() => parseProbeFile(JSON.stringify(o), FINGERPRINT)).toThrow(/\$\.normalisation\.std\[1\]/);
  });

  it('the writer refuses what the reader would refuse (e.g. NaN weights)', () => {
    const p = { ...linearProbe(), weights: [NaN, 0, 0] };
    expect(codeOf(() => serializeProbeFile(p))).toBe('LW_ERR_PROBE_INVALID');
  });

  it('mahalanobis factor: length d(d+1)/2 and positive diagonal', () => {
    const { bias: _b, normalisation: _n, weights: _w, ...header } = linearProbe();
    const mk = (factor: number[]) => ({ ...header, kind: 'mahalanobis', dModel: 2, gaussian: { form: 'cholesky', shrinkage: 0.1, mean: [0, 0], factor } });
    expect(validateProbeFile(mk([1, 0.5, 2])).kind).toBe('mahalanobis');
    expect(codeOf(() => validateProbeFile(mk([1, 0.5])))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile(mk([1, 0.5, -2])))).toBe('LW_ERR_PROBE_INVALID');
  });

  it('mahalanobis low-rank: 1..d−1 positive eigenvalues, k·d components, positive residual variance', () => {
    const { bias: _b, normalisation: _n, weights: _w, ...header } = linearProbe();
    const mk = (g: Record<string, unknown>) => ({
      ...header,
      kind: 'mahalanobis',
      dModel: 3,
      gaussian: { form: 'lowrank', shrinkage: 0.1, mean: [0, 0, 0], eigenvalues: [2, 1], components: [1, 0, 0, 0, 1, 0], residualVariance: 0.5, ...g },
    });
    expect(validateProbeFile(mk({})).kind).toBe('mahalanobis');
    expect(codeOf(() => validateProbeFile(mk({ eigenvalues: [2, 1, 0.5], components: [1, 0, 0, 0, 1, 0, 0, 0, 1] })))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile(mk({ eigenvalues: [2, -1] })))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile(mk({ components: [1, 0, 0, 0, 1] })))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile(mk({ residualVariance: 0 })))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile(mk({ factor: [1] })))).toBe('LW_ERR_PROBE_INVALID');
  });

  it('schema errors name the path inside the branch the value names (kind, form)', () => {
    const { bias: _b, normalisation: _n, weights: _w, ...header } = linearProbe();
    const diag = { ...header, kind: 'mahalanobis', dModel: 3, gaussian: { form: 'diagonal', shrinkage: 0, mean: [0, 0, 0], variance: [1, 1, -1] } };
    expect(() => validateProbeFile(diag)).toThrow(/\$\.gaussian\.variance\[2\]/);
    expect(() => validateProbeFile({ ...diag, gaussian: { ...diag.gaussian, factor: [1] } })).toThrow(/\$\.gaussian\.factor: unknown key/);
    const o = structuredClone(good);
    delete sub(o, 'evaluation').auroc;
    expect(() => parseProbeFile(JSON.stringify(o), FINGERPRINT)).toThrow(/\$\.evaluation\.auroc: missing \(use null/);
    expect(() => parseProbeFile(JSON.stringify({ ...good, hook: [] }), FINGERPRINT)).toThrow(/\$\.hook: .*fewer than 1/);
  });

  it('ensemble: member hooks must be in the ensemble list, and every listed hook used', () => {
    const { bias: _b, normalisation: _n, weights: _w, ...header } = linearProbe();
    const member = { id: 'm', kind: 'direction', hook: 'blocks.4.hook_resid_post', calibration: { center: 0, scale: 1 }, bias: 0, normalisation: { mean: [0, 0, 0], std: [1, 1, 1] }, weights: [1, 0, 0] };
    const ens = { ...header, kind: 'ensemble-max', hook: ['blocks.4.hook_resid_post'], members: [member] };
    expect(validateProbeFile(ens).kind).toBe('ensemble-max');
    expect(codeOf(() => validateProbeFile({ ...ens, members: [{ ...member, hook: 'blocks.5.hook_resid_post' }] }))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile({ ...ens, hook: ['blocks.4.hook_resid_post', 'blocks.5.hook_resid_post'] }))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile({ ...ens, members: [member, member] }))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile({ ...ens, members: [{ ...member, calibration: { center: 0, scale: 0 } }] }))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile({ ...ens, members: [] }))).toBe('LW_ERR_PROBE_INVALID');
  });

  it("ensemble: positions 'novel-bigram' on per-token Mahalanobis members only, kept on a round trip", () => {
    const { bias: _b, normalisation: _n, weights: _w, ...header } = linearProbe();
    const hook = 'blocks.4.hook_resid_post';
    const gaussian = mahalanobisBody(fitGaussian(matrixFromRows([[0, 1, 2], [1, 0, 1], [2, 2, 0], [3, 1, 1], [0, 0, 3]]))).gaussian;
    const token = { id: 't', kind: 'mahalanobis', hook, calibration: { center: 0, scale: 1 }, positions: 'novel-bigram', gaussian };
    const ens = { ...header, kind: 'ensemble-max', hook: [hook], members: [token] } as unknown as ProbeFile;
    const back = parseProbeFile(serializeProbeFile(ens), FINGERPRINT);
    expect(back).toEqual(ens);
    expect(Object.keys((back as EnsembleProbeFile).members[0]).slice(0, 5)).toEqual(['id', 'kind', 'hook', 'calibration', 'positions']);
    const window = { size: 4, positions: 'novel-bigram' };
    expect(codeOf(() => validateProbeFile({ ...ens, members: [{ ...token, window }] }))).toBe('LW_ERR_PROBE_INVALID');
    expect(codeOf(() => validateProbeFile({ ...ens, members: [{ ...token, positions: 'all' }] }))).toBe('LW_ERR_PROBE_INVALID');
    const linearMember = { id: 'm', kind: 'direction', hook, calibration: { center: 0, scale: 1 }, positions: 'novel-bigram', bias: 0, normalisation: { mean: [0, 0, 0], std: [1, 1, 1] }, weights: [1, 0, 0] };
    expect(codeOf(() => validateProbeFile({ ...ens, members: [linearMember] }))).toBe('LW_ERR_PROBE_INVALID');
    // A leaf file has no calibration to say what 0 is: no positions there.
    expect(codeOf(() => validateProbeFile({ ...header, kind: 'mahalanobis', hook, positions: 'novel-bigram', gaussian }))).toBe('LW_ERR_PROBE_INVALID');
  });
});
