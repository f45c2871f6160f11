/**
 * The `*.probe.json` format (DESIGN.md, "Probe file"): one JSON document per detector.
 *
 * Every file has a header, then a kind-specific body:
 *
 *   formatVersion   1
 *   id              [A-Za-z0-9][A-Za-z0-9._-]* (≤ 128 chars; becomes the `probe` metric label)
 *   kind            'linear'       σ(bias + w · (x − mean)/std): a probability (logistic probe)
 *                   'direction'    bias + w · (x − mean)/std, no squashing (difference-of-means)
 *                   'mahalanobis'  distance from a Gaussian fit of clean activations
 *                   'ensemble-max' max over members of (memberScore − center) / scale
 *   label           what an alert says it detected, e.g. "concept injection", "generic injection"
 *   description     free text ('' allowed)
 *   modelFingerprint  the model it was made on; loading requires an equal expected fingerprint
 *   hook            a hook name, or a list of them: the probe reads the concatenation of those
 *                   hooks' rows at one position (length hooks × dModel), in list order
 *   dModel          residual width of one hook row
 *   threshold       fires when the AGGREGATED score (see aggregator) is > threshold (strict)
 *   targetFpr       the false-positive rate the threshold was set at, in [0, 1)
 *   aggregator      how per-token scores combine (aggregators.ts spec)
 *   training, evaluation  { trials, concepts, auroc, tpr_at_fpr_0.01, tpr_at_fpr_0.05[, fprOnControls] }
 *                   (auroc/tpr null when not defined, e.g. an unsupervised fit on clean data)
 * body by kind:
 *   linear, direction: bias, normalisation { mean, std }, weights  (weights on standardised inputs)
 *   mahalanobis:       gaussian { form: 'cholesky', shrinkage, mean, factor }   (packed lower L, Σ = LLᵀ)
 *                      or       { form: 'diagonal', shrinkage, mean, variance }
 *                      or       { form: 'lowrank', shrinkage, mean, eigenvalues (k), components (k·d, rows), residualVariance }
 *                      [input: 'difference']  (optional, exactly two hooks: the Gaussian reads
 *                      row(hook[1]) − row(hook[0]), dModel wide: with resid_post L−1 and L, the
 *                      update block L added to the residual stream; absent = the concatenation)
 *   ensemble-max:      members [{ id, kind, hook, calibration { center, scale }, …leaf body }]; the
 *                      ensemble's hook list is exactly the union of its members' hooks
 *
 * Writing is deterministic: the same probe gives the same bytes (fixed key order, number arrays
 * on one line, numbers as JavaScript's shortest round-trip form, fprOnControls keys sorted,
 * trailing newline). Reading validates everything (lengths, finiteness, ranges) and fails with
 * LW_ERR_PROBE_INVALID naming the offending path, then refuses a file made for another model
 * with LW_ERR_PROBE_MODEL_MISMATCH.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomicAsync } from '../atomic-write.js';
import { ERRORS, isLatentwatchError, lwError, type LatentwatchError } from '../errors.js';
import { validateAggregatorSpec, type AggregatorSpec } from './aggregators.js';
import type { GaussianModel } from './gaussian.js';
import type { LinearModel } from './linear.js';

export const PROBE_FORMAT_VERSION = 1;

export type ProbeKind = 'linear' | 'direction' | 'mahalanobis' | 'ensemble-max';
export type LeafProbeKind = Exclude<ProbeKind, 'ensemble-max'>;
export const PROBE_KINDS: readonly ProbeKind[] = ['linear', 'direction', 'mahalanobis', 'ensemble-max'];

export interface ProbeFigures {
  readonly trials: number;
  readonly concepts: readonly string[];
  readonly auroc: number | null;
  readonly 'tpr_at_fpr_0.01': number | null;
  readonly 'tpr_at_fpr_0.05': number | null;
  /** False-positive rate on each control condition (no injection, random vector, …). */
  readonly fprOnControls?: Readonly<Record<string, number>>;
}

export interface LinearBody {
  readonly kind: 'linear' | 'direction';
  readonly bias: number;
  readonly normalisation: { readonly mean: readonly number[]; readonly std: readonly number[] };
  readonly weights: readonly number[];
}

export type GaussianBody =
  | { readonly form: 'cholesky'; readonly shrinkage: number; readonly mean: readonly number[]; readonly factor: readonly number[] }
  | { readonly form: 'diagonal'; readonly shrinkage: number; readonly mean: readonly number[]; readonly variance: readonly number[] }
  | {
      readonly form: 'lowrank';
      readonly shrinkage: number;
      readonly mean: readonly number[];
      readonly eigenvalues: readonly number[];
      readonly components: readonly number[];
      readonly residualVariance: number;
    };

export interface MahalanobisBody {
  readonly kind: 'mahalanobis';
  /** 'difference': the row is hook[1] − hook[0] (two hooks). Absent: the hooks' rows concatenated. */
  readonly input?: 'difference';
  readonly gaussian: GaussianBody;
}

export type LeafBody = LinearBody | MahalanobisBody;

export type EnsembleMember = LeafBody & {
  readonly id: string;
  readonly hook: string | readonly string[];
  /** calibrated = (score − center) / scale, so members on different scales compare. */
  readonly calibration: { readonly center: number; readonly scale: number };
};

export interface EnsembleBody {
  readonly kind: 'ensemble-max';
  readonly members: readonly EnsembleMember[];
}

export interface ProbeHeader {
  readonly formatVersion: typeof PROBE_FORMAT_VERSION;
  readonly id: string;
  readonly kind: ProbeKind;
  readonly label: string;
  readonly description: string;
  readonly modelFingerprint: string;
  readonly hook: string | readonly string[];
  readonly dModel: number;
  readonly threshold: number;
  readonly targetFpr: number;
  readonly aggregator: AggregatorSpec;
  readonly training: ProbeFigures;
  readonly evaluation: ProbeFigures;
}

export type ProbeFile = ProbeHeader & (LinearBody | MahalanobisBody | EnsembleBody);
export type LinearProbeFile = ProbeHeader & LinearBody;
export type MahalanobisProbeFile = ProbeHeader & MahalanobisBody;
export type EnsembleProbeFile = ProbeHeader & EnsembleBody;

/** The hook list of a probe or member, whichever form the file used. */
export function hookList(hook: string | readonly string[]): readonly string[] {
  return typeof hook === 'string' ? [hook] : hook;
}

/** Body of a 'linear' (logistic) or 'direction' (difference-of-means) probe from a fitted model. */
export function linearBody(model: LinearModel, kind: 'linear' | 'direction' = 'linear'): LinearBody {
  return {
    kind,
    bias: model.bias,
    normalisation: { mean: Array.from(model.mean), std: Array.from(model.std) },
    weights: Array.from(model.weights),
  };
}

/** Body of a 'mahalanobis' probe from a fitted Gaussian (`input: 'difference'` for a two-hook update). */
export function mahalanobisBody(model: GaussianModel, input?: 'difference'): MahalanobisBody {
  const common = { shrinkage: model.shrinkage, mean: Array.from(model.mean) };
  const gaussian: GaussianBody =
    model.form === 'cholesky'
      ? { form: 'cholesky', ...common, factor: Array.from(model.factor) }
      : model.form === 'diagonal'
        ? { form: 'diagonal', ...common, variance: Array.from(model.variance) }
        : { form: 'lowrank', ...common, eigenvalues: Array.from(model.eigenvalues), components: Array.from(model.components), residualVariance: model.residualVariance };
  return input === 'difference' ? { kind: 'mahalanobis', input, gaussian } : { kind: 'mahalanobis', gaussian };
}

/** Width of the vector a leaf body reads: dModel for a difference, hooks × dModel otherwise. */
export function leafInputDim(body: { kind: string; input?: string }, hooks: number, dModel: number): number {
  return body.kind === 'mahalanobis' && body.input === 'difference' ? dModel : hooks * dModel;
}

/**
 * Validate a parsed value as a probe file and return a canonical copy (known keys only, in the
 * written order). Throws LW_ERR_PROBE_INVALID with the path of the first problem.
 */
export function validateProbeFile(value: unknown): ProbeFile {
  const o = obj(value, '$');
  if (o.formatVersion !== PROBE_FORMAT_VERSION) {
    throw invalid('$.formatVersion', `unsupported format version ${JSON.stringify(o.formatVersion)} (this build reads ${PROBE_FORMAT_VERSION})`);
  }
  const kind = oneOf(o.kind, PROBE_KINDS, '$.kind');
  const bodyKeys = kind === 'ensemble-max' ? ['members'] : kind === 'mahalanobis' ? (o.input === undefined ? ['gaussian'] : ['input', 'gaussian']) : ['bias', 'normalisation', 'weights'];
  onlyKeys(o, [...HEADER_KEYS, ...bodyKeys], '$');
  const dModel = positiveInt(o.dModel, '$.dModel');
  const hook = hooks(o.hook, '$.hook');
  const header = {
    formatVersion: PROBE_FORMAT_VERSION,
    id: probeId(o.id, '$.id'),
    kind,
    label: nonEmptyString(o.label, '$.label'),
    description: str(o.description, '$.description'),
    modelFingerprint: nonEmptyString(o.modelFingerprint, '$.modelFingerprint'),
    hook,
    dModel,
    threshold: finite(o.threshold, '$.threshold'),
    targetFpr: fprTarget(o.targetFpr, '$.targetFpr'),
    aggregator: validateAggregatorSpec(o.aggregator, '$.aggregator'),
    training: figures(o.training, '$.training'),
    evaluation: figures(o.evaluation, '$.evaluation'),
  } as const;
  const hookNames = hookList(hook);
  if (kind === 'ensemble-max') {
    const members = arr(o.members, '$.members');
    if (members.length === 0) throw invalid('$.members', 'expected at least one member');
    const ids = new Set<string>();
    const used = new Set<string>();
    const out: EnsembleMember[] = members.map((m, i) => {
      const where = `$.members[${i}]`;
      const mo = obj(m, where);
      const mkind = oneOf(mo.kind, ['linear', 'direction', 'mahalanobis'] as const, `${where}.kind`);
      const mBodyKeys = mkind === 'mahalanobis' ? (mo.input === undefined ? ['gaussian'] : ['input', 'gaussian']) : ['bias', 'normalisation', 'weights'];
      onlyKeys(mo, ['id', 'kind', 'hook', 'calibration', ...mBodyKeys], where);
      const id = probeId(mo.id, `${where}.id`);
      if (ids.has(id)) throw invalid(`${where}.id`, `duplicate member id ${id}`);
      ids.add(id);
      const mhook = hooks(mo.hook, `${where}.hook`);
      for (const h of hookList(mhook)) {
        if (!hookNames.includes(h)) throw invalid(`${where}.hook`, `${h} is not in the ensemble's hook list`);
        used.add(h);
      }
      const c = obj(mo.calibration, `${where}.calibration`);
      onlyKeys(c, ['center', 'scale'], `${where}.calibration`);
      const calibration = { center: finite(c.center, `${where}.calibration.center`), scale: positive(c.scale, `${where}.calibration.scale`) };
      const body = leafBody(mkind, mo, hookList(mhook).length, dModel, where);
      return { id, kind: body.kind, hook: mhook, calibration, ...bodyWithoutKind(body) } as EnsembleMember;
    });
    for (const h of hookNames) if (!used.has(h)) throw invalid('$.hook', `${h} is used by no member`);
    return { ...header, kind, members: out };
  }
  const body = leafBody(kind, o, hookNames.length, dModel, '$');
  return { ...header, ...body } as ProbeFile;
}

/**
 * Parse and validate probe-file text, then check it was made for `expectedModelFingerprint`
 * (LW_ERR_PROBE_MODEL_MISMATCH otherwise). Pass null only in tools that inspect files without
 * running them against a model. `source` (a path) prefixes error details.
 */
export function parseProbeFile(text: string, expectedModelFingerprint: string | null, source?: string): ProbeFile {
  const prefix = source === undefined ? '' : `${source}: `;
  let file: ProbeFile;
  try {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw lwError('LW_ERR_PROBE_INVALID', `not JSON: ${(e as Error).message}`, undefined, e);
    }
    file = validateProbeFile(value);
  } catch (e) {
    if (source !== undefined && isLatentwatchError(e)) {
      const head = `${ERRORS[e.code].message}: `;
      const detail = e.message.startsWith(head) ? e.message.slice(head.length) : e.message;
      throw lwError(e.code, `${prefix}${detail}`, e.details, e);
    }
    throw e;
  }
  if (expectedModelFingerprint !== null && file.modelFingerprint !== expectedModelFingerprint) {
    throw lwError(
      'LW_ERR_PROBE_MODEL_MISMATCH',
      `${prefix}probe ${file.id} was made for model ${file.modelFingerprint}, the loaded model is ${expectedModelFingerprint}`,
      { probe: file.id, probeModelFingerprint: file.modelFingerprint, expectedModelFingerprint },
    );
  }
  return file;
}

/** Validate and write the canonical text: same probe, same bytes. */
export function serializeProbeFile(file: ProbeFile): string {
  return `${writeValue(validateProbeFile(file), '')}\n`;
}

/** Read a probe file from disk (LW_ERR_PROBE_NOT_FOUND when missing), validate, check the model. */
export async function readProbeFile(path: string, expectedModelFingerprint: string | null): Promise<ProbeFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') throw lwError('LW_ERR_PROBE_NOT_FOUND', path, undefined, e);
    throw e;
  }
  return parseProbeFile(text, expectedModelFingerprint, path);
}

/** Write a probe file atomically, so a reader never sees half a file. */
export async function writeProbeFile(path: string, file: ProbeFile): Promise<void> {
  await writeFileAtomicAsync(path, serializeProbeFile(file));
}

// ---- validation helpers -------------------------------------------------------------------

const HEADER_KEYS = [
  'formatVersion',
  'id',
  'kind',
  'label',
  'description',
  'modelFingerprint',
  'hook',
  'dModel',
  'threshold',
  'targetFpr',
  'aggregator',
  'training',
  'evaluation',
];

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const HOOK_PATTERN = /^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$/;

function invalid(where: string, what: string): LatentwatchError {
  return lwError('LW_ERR_PROBE_INVALID', `${where}: ${what}`, { path: where });
}

function obj(v: unknown, where: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(where, 'expected an object');
  return v as Record<string, unknown>;
}

function arr(v: unknown, where: string): readonly unknown[] {
  if (!Array.isArray(v)) throw invalid(where, 'expected an array');
  return v;
}

function onlyKeys(o: Record<string, unknown>, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw invalid(`${where}.${k}`, 'unknown key');
  for (const k of allowed) if (o[k] === undefined) throw invalid(`${where}.${k}`, 'missing');
}

function str(v: unknown, where: string): string {
  if (typeof v !== 'string') throw invalid(where, 'expected a string');
  return v;
}

function nonEmptyString(v: unknown, where: string): string {
  const s = str(v, where);
  if (s.length === 0) throw invalid(where, 'expected a non-empty string');
  return s;
}

function probeId(v: unknown, where: string): string {
  const s = str(v, where);
  if (!ID_PATTERN.test(s)) throw invalid(where, `expected ${ID_PATTERN.source}`);
  return s;
}

function oneOf<T extends string>(v: unknown, options: readonly T[], where: string): T {
  if (typeof v !== 'string' || !options.includes(v as T)) throw invalid(where, `expected one of ${options.join(', ')}`);
  return v as T;
}

function finite(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalid(where, 'expected a finite number');
  return v;
}

function positive(v: unknown, where: string): number {
  const x = finite(v, where);
  if (!(x > 0)) throw invalid(where, 'expected a number > 0');
  return x;
}

function positiveInt(v: unknown, where: string): number {
  const x = finite(v, where);
  if (!Number.isInteger(x) || x < 1) throw invalid(where, 'expected a positive integer');
  return x;
}

function unit(v: unknown, where: string): number {
  const x = finite(v, where);
  if (!(x >= 0 && x <= 1)) throw invalid(where, 'expected a number in [0, 1]');
  return x;
}

function fprTarget(v: unknown, where: string): number {
  const x = finite(v, where);
  if (!(x >= 0 && x < 1)) throw invalid(where, 'expected a number in [0, 1)');
  return x;
}

function hooks(v: unknown, where: string): string | readonly string[] {
  if (typeof v === 'string') {
    if (!HOOK_PATTERN.test(v)) throw invalid(where, `expected a hook name like blocks.4.hook_resid_post`);
    return v;
  }
  const a = arr(v, where);
  if (a.length === 0) throw invalid(where, 'expected a hook name or a non-empty list of them');
  const seen = new Set<string>();
  return a.map((h, i) => {
    if (typeof h !== 'string' || !HOOK_PATTERN.test(h)) throw invalid(`${where}[${i}]`, 'expected a hook name like blocks.4.hook_resid_post');
    if (seen.has(h)) throw invalid(`${where}[${i}]`, `duplicate hook ${h}`);
    seen.add(h);
    return h;
  });
}

/** A list of `length` finite numbers, each passing `check` (a message when it fails). */
function numbers(v: unknown, length: number, where: string, check?: (x: number) => string | null): number[] {
  const a = arr(v, where);
  if (a.length !== length) throw invalid(where, `expected ${length} numbers, got ${a.length}`);
  const out = new Array<number>(length);
  for (let i = 0; i < length; i++) {
    const x = a[i];
    if (typeof x !== 'number' || !Number.isFinite(x)) throw invalid(`${where}[${i}]`, 'expected a finite number');
    if (check) {
      const problem = check(x);
      if (problem) throw invalid(`${where}[${i}]`, problem);
    }
    out[i] = x;
  }
  return out;
}

const mustBePositive = (x: number): string | null => (x > 0 ? null : 'expected a number > 0');

function figures(v: unknown, where: string): ProbeFigures {
  const o = obj(v, where);
  const keys = ['trials', 'concepts', 'auroc', 'tpr_at_fpr_0.01', 'tpr_at_fpr_0.05'];
  for (const k of Object.keys(o)) if (![...keys, 'fprOnControls'].includes(k)) throw invalid(`${where}.${k}`, 'unknown key');
  for (const k of keys) if (o[k] === undefined) throw invalid(`${where}.${k}`, 'missing (use null when not defined)');
  const trials = finite(o.trials, `${where}.trials`);
  if (!Number.isInteger(trials) || trials < 0) throw invalid(`${where}.trials`, 'expected a non-negative integer');
  const concepts = arr(o.concepts, `${where}.concepts`).map((c, i) => str(c, `${where}.concepts[${i}]`));
  const nullableUnit = (k: string): number | null => (o[k] === null ? null : unit(o[k], `${where}.${k}`));
  const out: ProbeFigures = {
    trials,
    concepts,
    auroc: nullableUnit('auroc'),
    'tpr_at_fpr_0.01': nullableUnit('tpr_at_fpr_0.01'),
    'tpr_at_fpr_0.05': nullableUnit('tpr_at_fpr_0.05'),
  };
  if (o.fprOnControls === undefined) return out;
  const c = obj(o.fprOnControls, `${where}.fprOnControls`);
  const controls: Record<string, number> = {};
  for (const k of Object.keys(c).sort()) controls[k] = unit(c[k], `${where}.fprOnControls.${k}`);
  return { ...out, fprOnControls: controls };
}

function leafBody(kind: LeafProbeKind, o: Record<string, unknown>, hookCount: number, dModel: number, where: string): LeafBody {
  let inputDim = hookCount * dModel;
  if (kind === 'mahalanobis') {
    let input: 'difference' | undefined;
    if (o.input !== undefined) {
      input = oneOf(o.input, ['difference'] as const, `${where}.input`);
      if (hookCount !== 2) throw invalid(`${where}.input`, `'difference' needs exactly two hooks, got ${hookCount}`);
      inputDim = dModel;
    }
    const withInput = (b: MahalanobisBody): MahalanobisBody => (input === undefined ? b : { kind: b.kind, input, gaussian: b.gaussian });
    const g = obj(o.gaussian, `${where}.gaussian`);
    const form = oneOf(g.form, ['cholesky', 'diagonal', 'lowrank'] as const, `${where}.gaussian.form`);
    const formKeys = { cholesky: ['factor'], diagonal: ['variance'], lowrank: ['eigenvalues', 'components', 'residualVariance'] }[form];
    onlyKeys(g, ['form', 'shrinkage', 'mean', ...formKeys], `${where}.gaussian`);
    const shrinkage = unit(g.shrinkage, `${where}.gaussian.shrinkage`);
    const mean = numbers(g.mean, inputDim, `${where}.gaussian.mean`);
    if (form === 'lowrank') {
      const ev = arr(g.eigenvalues, `${where}.gaussian.eigenvalues`);
      if (ev.length < 1 || ev.length >= inputDim) throw invalid(`${where}.gaussian.eigenvalues`, `expected 1 to ${inputDim - 1} eigenvalues, got ${ev.length}`);
      const eigenvalues = numbers(ev, ev.length, `${where}.gaussian.eigenvalues`, mustBePositive);
      const components = numbers(g.components, eigenvalues.length * inputDim, `${where}.gaussian.components`);
      const residualVariance = positive(g.residualVariance, `${where}.gaussian.residualVariance`);
      return withInput({ kind, gaussian: { form, shrinkage, mean, eigenvalues, components, residualVariance } });
    }
    if (form === 'diagonal') {
      return withInput({ kind, gaussian: { form, shrinkage, mean, variance: numbers(g.variance, inputDim, `${where}.gaussian.variance`, mustBePositive) } });
    }
    const factor = numbers(g.factor, (inputDim * (inputDim + 1)) / 2, `${where}.gaussian.factor`);
    for (let i = 0, k = 0; i < inputDim; k += i + 2, i++) {
      if (!(factor[k] > 0)) throw invalid(`${where}.gaussian.factor[${k}]`, `diagonal entry L[${i}][${i}] must be > 0`);
    }
    return withInput({ kind, gaussian: { form, shrinkage, mean, factor } });
  }
  const n = obj(o.normalisation, `${where}.normalisation`);
  onlyKeys(n, ['mean', 'std'], `${where}.normalisation`);
  return {
    kind,
    bias: finite(o.bias, `${where}.bias`),
    normalisation: {
      mean: numbers(n.mean, inputDim, `${where}.normalisation.mean`),
      std: numbers(n.std, inputDim, `${where}.normalisation.std`, mustBePositive),
    },
    weights: numbers(o.weights, inputDim, `${where}.weights`),
  };
}

function bodyWithoutKind(body: LeafBody): Omit<LinearBody, 'kind'> | Omit<MahalanobisBody, 'kind'> {
  if (body.kind === 'mahalanobis') return body.input === undefined ? { gaussian: body.gaussian } : { input: body.input, gaussian: body.gaussian };
  return { bias: body.bias, normalisation: body.normalisation, weights: body.weights };
}

// ---- deterministic writer ----------------------------------------------------------------

/**
 * JSON with objects indented two spaces and arrays of scalars on one line (a 400k-number factor
 * stays one line, not 400k). Key order is the object's insertion order, which validateProbeFile
 * fixes. Numbers use JSON.stringify, i.e. ECMAScript's shortest round-trip form.
 */
function writeValue(v: unknown, indent: string): string {
  if (v === null || typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') return JSON.stringify(v);
  const inner = `${indent}  `;
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    if (v.every((x) => x === null || typeof x !== 'object')) return `[${v.map((x) => JSON.stringify(x)).join(',')}]`;
    return `[\n${v.map((x) => inner + writeValue(x, inner)).join(',\n')}\n${indent}]`;
  }
  const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, x]) => `${inner}${JSON.stringify(k)}: ${writeValue(x, inner)}`).join(',\n')}\n${indent}}`;
}
