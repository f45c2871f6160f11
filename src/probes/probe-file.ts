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
 *                   'concept-match' largest cosine between the whitened input and stored concept directions
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
 *   positions       optional: the trial positions ('watch' | 'after' | 'inside' | 'all') it was trained
 *                   and evaluated on (docs/trials.md), eval-probe's default; the daemon scores every
 *                   position of a request whatever it says
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
 *                      [window: { size, positions: 'novel-bigram' | 'all' }]  (optional: the Gaussian
 *                      scores the MEAN row over the last `size` counted positions of the request, a
 *                      persistent shift; 'novel-bigram' counts a position only when its token pair
 *                      (previous id, id) is new in the request, so repeated text counts once)
 *   concept-match:     input, window as for mahalanobis; gaussian (cholesky form only: it whitens);
 *                      concepts { names (C), directions (C × input width, row-major unit vectors in the
 *                      whitened space, L⁻¹c / ‖L⁻¹c‖) }: the score of a row (or window mean) x is
 *                      max over k of directions[k] · z / ‖z‖ with z = L⁻¹(x − mean), a bank of linear
 *                      probes, one per stored concept, made from the concept vectors, not learned
 *                      per concept (lab/concept-match.ts)
 *   ensemble-max:      members [{ id, kind, hook, calibration { center, scale }, [positions], …leaf body }];
 *                      the ensemble's hook list is exactly the union of its members' hooks;
 *                      positions: 'novel-bigram' (per-token Mahalanobis members) scores a member only
 *                      where the token pair is new in the request, 0 (its clean median) elsewhere
 *
 * Writing is deterministic: the same probe gives the same bytes (fixed key order, number arrays
 * on one line, numbers as JavaScript's shortest round-trip form, fprOnControls keys sorted,
 * trailing newline). Reading checks the shape against PROBE_FILE_SCHEMA (TypeBox, run by ajv; the
 * types are derived from it), then what JSON Schema cannot say (lengths against dModel, hook use), and fails with
 * LW_ERR_PROBE_INVALID naming the offending path, then refuses a file made for another model
 * with LW_ERR_PROBE_MODEL_MISMATCH.
 */
import { readFile } from 'node:fs/promises';
import type { ErrorObject } from 'ajv';
import { Type, type Static, type TObject, type TProperties } from 'typebox';
import { writeFileAtomicAsync } from '../atomic-write.js';
import { ERRORS, isLatentwatchError, lwError, type LatentwatchError } from '../errors.js';
import { closedObject, nullable, schemaValidator, taggedUnion, type DeepReadonly } from '../schema.js';
import { validateAggregatorSpec, type AggregatorSpec } from './aggregators.js';
import type { GaussianModel } from './gaussian.js';
import type { LinearModel } from './linear.js';

export const PROBE_FORMAT_VERSION = 1;

export const PROBE_KINDS = ['linear', 'direction', 'mahalanobis', 'concept-match', 'ensemble-max'] as const;
export type ProbeKind = (typeof PROBE_KINDS)[number];
export type LeafProbeKind = Exclude<ProbeKind, 'ensemble-max'>;

// ---- the schema (types below are derived from it) -----------------------------------------

const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
const HOOK_PATTERN = '^[A-Za-z0-9_]+(\\.[A-Za-z0-9_]+)*$';

// ajv's number type already refuses NaN and ±Infinity (an in-memory probe can hold them).
const finite = Type.Number();
const positive = Type.Number({ exclusiveMinimum: 0 });
const unit = Type.Number({ minimum: 0, maximum: 1 });
/** Lengths depend on dModel and the hooks: checked after the schema (checkShapes). */
const numbers = Type.Array(finite);
const probeId = Type.String({ pattern: ID_PATTERN });
const hookName = Type.String({ pattern: HOOK_PATTERN });
const hooks = Type.Union([hookName, Type.Array(hookName, { minItems: 1, uniqueItems: true })]);

const FIGURES_SCHEMA = closedObject({
  trials: Type.Integer({ minimum: 0 }),
  concepts: Type.Array(Type.String()),
  auroc: nullable(unit),
  'tpr_at_fpr_0.01': nullable(unit),
  'tpr_at_fpr_0.05': nullable(unit),
  /** False-positive rate on each control condition (no injection, random vector, …). */
  fprOnControls: Type.Optional(Type.Record(Type.String(), unit)),
});

const LINEAR_BODY = {
  kind: Type.Enum(['linear', 'direction']),
  bias: finite,
  normalisation: closedObject({ mean: numbers, std: Type.Array(positive) }),
  weights: numbers,
};

const GAUSSIAN_COMMON = { shrinkage: unit, mean: numbers };
const GAUSSIAN_SCHEMA = taggedUnion('form', [
  closedObject({ form: Type.Literal('cholesky'), ...GAUSSIAN_COMMON, factor: numbers }),
  closedObject({ form: Type.Literal('diagonal'), ...GAUSSIAN_COMMON, variance: Type.Array(positive) }),
  closedObject({ form: Type.Literal('lowrank'), ...GAUSSIAN_COMMON, eigenvalues: Type.Array(positive, { minItems: 1 }), components: numbers, residualVariance: positive }),
]);

/** Scoring positions for a windowed member: 'novel-bigram' counts a position whose (previous, this) token pair is new in the request. */
export const WINDOW_POSITIONS = ['novel-bigram', 'all'] as const;
/**
 * A window's spread discount (probes/window.ts): the distance is divided by √max(1, s / reference),
 * s being the mean squared distance of the window's counted rows from their own mean with each
 * dimension multiplied by `scale` (1/σ of the member's per-token rows), `reference` the mean of s
 * over clean full windows.
 */
const SPREAD_SCHEMA = closedObject({ scale: Type.Array(positive), reference: positive });
/** minCount: the member scores 0 until that many positions are counted (repeated junk never fills a window). */
const WINDOW_SCHEMA = closedObject({
  size: Type.Integer({ minimum: 2, maximum: 4096 }),
  positions: Type.Enum(WINDOW_POSITIONS),
  minCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 4096 })),
  spread: Type.Optional(SPREAD_SCHEMA),
});

const MAHALANOBIS_BODY = {
  kind: Type.Literal('mahalanobis'),
  /** 'difference': the row is hook[1] − hook[0] (two hooks). Absent: the hooks' rows concatenated. */
  input: Type.Optional(Type.Enum(['difference'])),
  /** Present: the Gaussian scores the mean of the row over the last `size` counted positions (probes/window.ts). */
  window: Type.Optional(WINDOW_SCHEMA),
  gaussian: GAUSSIAN_SCHEMA,
};

const CONCEPT_MATCH_BODY = {
  kind: Type.Literal('concept-match'),
  input: Type.Optional(Type.Enum(['difference'])),
  window: Type.Optional(WINDOW_SCHEMA),
  gaussian: GAUSSIAN_SCHEMA,
  concepts: closedObject({ names: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, uniqueItems: true }), directions: numbers }),
};

const MEMBER_HEADER = {
  id: probeId,
  hook: hooks,
  /** calibrated = (score − center) / scale, so members on different scales compare. */
  calibration: closedObject({ center: finite, scale: positive }),
  /**
   * Per-token Mahalanobis members only. 'novel-bigram': scored where the position's token pair is
   * new in the request; at a repeated pair the member's calibrated score is 0, its clean median
   * (repeated text is not evidence: a run of one token is computed like the attention sink).
   */
  positions: Type.Optional(Type.Enum(['novel-bigram'])),
};
const ONSET_TERM = closedObject({ member: Type.String({ minLength: 1 }), center: finite, scale: positive });
/**
 * An ensemble member made of two earlier windowed Mahalanobis members of one window size (learn
 * mode: the deepest windowed layer's and the one below it; calibration.ts onsetFits): its score at a
 * position is the upper member's score calibrated by (center, scale) less the lower one's, then
 * calibrated as any member. An added vector moves the update of
 * the layer it is added at and nothing below it; ordinary text unlike the calibration traffic moves
 * every layer's, which this difference cancels (docs/generic-detectors.md, "Onset members").
 */
const ONSET_BODY = { kind: Type.Literal('onset'), upper: ONSET_TERM, lower: ONSET_TERM };
const MEMBER_SCHEMA = taggedUnion('kind', [
  closedObject({ ...MEMBER_HEADER, ...ONSET_BODY }),
  closedObject({ ...MEMBER_HEADER, ...LINEAR_BODY }),
  closedObject({ ...MEMBER_HEADER, ...MAHALANOBIS_BODY }),
  closedObject({ ...MEMBER_HEADER, ...CONCEPT_MATCH_BODY }),
]);

const HEADER = {
  formatVersion: Type.Literal(PROBE_FORMAT_VERSION),
  id: probeId,
  label: Type.String({ minLength: 1 }),
  description: Type.String(),
  modelFingerprint: Type.String({ minLength: 1 }),
  hook: hooks,
  dModel: Type.Integer({ minimum: 1 }),
  threshold: finite,
  targetFpr: Type.Number({ minimum: 0, exclusiveMaximum: 1 }),
  /** Checked by aggregators.ts (validateAggregatorSpec), the one owner of aggregator specs. */
  aggregator: Type.Unsafe<AggregatorSpec>({}),
  positions: Type.Optional(Type.Enum(['watch', 'after', 'inside', 'all'])),
  training: FIGURES_SCHEMA,
  evaluation: FIGURES_SCHEMA,
};

/** The shape of a probe file; what JSON Schema cannot say (lengths against dModel, hook use) is checkShapes'. */
export const PROBE_FILE_SCHEMA = taggedUnion('kind', [
  closedObject({ ...HEADER, ...LINEAR_BODY }),
  closedObject({ ...HEADER, ...MAHALANOBIS_BODY }),
  closedObject({ ...HEADER, ...CONCEPT_MATCH_BODY }),
  closedObject({ ...HEADER, kind: Type.Literal('ensemble-max'), members: Type.Array(MEMBER_SCHEMA, { minItems: 1 }) }),
]);

/** Bodies and header alone, for code that builds probe files piece by piece. */
type PartOf<P extends TProperties> = DeepReadonly<Static<TObject<P>>>;
export type ProbeFigures = DeepReadonly<Static<typeof FIGURES_SCHEMA>>;
export type LinearBody = PartOf<typeof LINEAR_BODY>;
export type GaussianBody = DeepReadonly<Static<typeof GAUSSIAN_SCHEMA>>;
export type MahalanobisBody = PartOf<typeof MAHALANOBIS_BODY>;
export type ConceptMatchBody = PartOf<typeof CONCEPT_MATCH_BODY>;
export type LeafBody = LinearBody | MahalanobisBody | ConceptMatchBody;
export type OnsetBody = PartOf<typeof ONSET_BODY>;
export type WindowSpec = DeepReadonly<Static<typeof WINDOW_SCHEMA>>;

/** An onset member's score from its two members' raw scores at one position (ONSET_BODY says why). */
export function onsetScore(body: OnsetBody, upper: number, lower: number): number {
  return (upper - body.upper.center) / body.upper.scale - (lower - body.lower.center) / body.lower.scale;
}
export type EnsembleMember = DeepReadonly<Static<typeof MEMBER_SCHEMA>>;
export type ProbeFile = DeepReadonly<Static<typeof PROBE_FILE_SCHEMA>>;
export type ProbeHeader = PartOf<typeof HEADER> & { readonly kind: ProbeKind };
export type EnsembleBody = Omit<Extract<ProbeFile, { kind: 'ensemble-max' }>, keyof typeof HEADER>;
export type LinearProbeFile = Extract<ProbeFile, { kind: 'linear' | 'direction' }>;
export type MahalanobisProbeFile = Extract<ProbeFile, { kind: 'mahalanobis' }>;
export type EnsembleProbeFile = Extract<ProbeFile, { kind: 'ensemble-max' }>;

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
export function mahalanobisBody(model: GaussianModel, input?: 'difference', window?: WindowSpec): MahalanobisBody {
  const common = { shrinkage: model.shrinkage, mean: Array.from(model.mean) };
  const gaussian: GaussianBody =
    model.form === 'cholesky'
      ? { form: 'cholesky', ...common, factor: Array.from(model.factor) }
      : model.form === 'diagonal'
        ? { form: 'diagonal', ...common, variance: Array.from(model.variance) }
        : { form: 'lowrank', ...common, eigenvalues: Array.from(model.eigenvalues), components: Array.from(model.components), residualVariance: model.residualVariance };
  return { kind: 'mahalanobis', ...(input === 'difference' ? { input } : {}), ...(window ? { window: windowBody(window) } : {}), gaussian };
}

function windowBody(w: WindowSpec): WindowSpec {
  return { size: w.size, positions: w.positions, ...(w.minCount === undefined ? {} : { minCount: w.minCount }), ...(w.spread ? { spread: { scale: Array.from(w.spread.scale), reference: w.spread.reference } } : {}) };
}

/** Width of the vector a leaf body reads: dModel for a difference, hooks × dModel otherwise. */
export function leafInputDim(body: { kind: string; input?: string }, hooks: number, dModel: number): number {
  return body.kind !== 'linear' && body.kind !== 'direction' && body.input === 'difference' ? dModel : hooks * dModel;
}

/**
 * Validate a parsed value as a probe file and return a canonical copy (known keys only, in the
 * written order). Throws LW_ERR_PROBE_INVALID with the path of the first problem.
 */
export function validateProbeFile(value: unknown): ProbeFile {
  const version = typeof value === 'object' && value !== null ? (value as Record<string, unknown>).formatVersion : undefined;
  if (version !== undefined && version !== PROBE_FORMAT_VERSION) {
    throw invalid('$.formatVersion', `unsupported format version ${JSON.stringify(version)} (this build reads ${PROBE_FORMAT_VERSION})`);
  }
  const errors = schemaErrors(value);
  if (errors.length > 0) {
    // A type error beside another error at the same place is an alternative that did not apply
    // (e.g. `hook: []` is no string, but its real problem is being empty): report the other.
    const at = errors[0].instancePath;
    throw schemaProblem(errors.find((e) => e.instancePath === at && !['type', 'anyOf', 'if'].includes(e.keyword)) ?? errors[0]);
  }
  const file = value as ProbeFile;
  const header = {
    formatVersion: PROBE_FORMAT_VERSION,
    id: file.id,
    kind: file.kind,
    label: file.label,
    description: file.description,
    modelFingerprint: file.modelFingerprint,
    hook: copyHooks(file.hook),
    dModel: file.dModel,
    threshold: file.threshold,
    targetFpr: file.targetFpr,
    aggregator: validateAggregatorSpec(file.aggregator, '$.aggregator'),
    ...(file.positions === undefined ? {} : { positions: file.positions }),
    training: figures(file.training),
    evaluation: figures(file.evaluation),
  } as const;
  const hookNames = hookList(file.hook);
  if (file.kind !== 'ensemble-max') return { ...header, ...leafBody(file, hookNames.length, file.dModel, '$') } as ProbeFile;
  const ids = new Set<string>();
  const used = new Set<string>();
  const members = file.members.map((m, i): EnsembleMember => {
    const where = `$.members[${i}]`;
    if (ids.has(m.id)) throw invalid(`${where}.id`, `duplicate member id ${m.id}`);
    ids.add(m.id);
    for (const h of hookList(m.hook)) {
      if (!hookNames.includes(h)) throw invalid(`${where}.hook`, `${h} is not in the ensemble's hook list`);
      used.add(h);
    }
    if (m.kind === 'onset') {
      const sizes = [m.upper, m.lower].map((t, k) => {
        const ref = file.members.slice(0, i).find((x) => x.id === t.member);
        const at = `${where}.${k === 0 ? 'upper' : 'lower'}.member`;
        if (!ref) throw invalid(at, `${t.member} is not an earlier member`);
        if (ref.kind !== 'mahalanobis' || ref.window === undefined) throw invalid(at, `${t.member} is not a windowed Mahalanobis member`);
        return ref.window.size;
      });
      if (sizes[0] !== sizes[1]) throw invalid(where, `its members' windows differ (${sizes[0]} and ${sizes[1]})`);
      return { id: m.id, kind: 'onset', hook: copyHooks(m.hook), calibration: { center: m.calibration.center, scale: m.calibration.scale }, upper: { ...m.upper }, lower: { ...m.lower } } as EnsembleMember;
    }
    const { kind, ...body } = leafBody(m, hookList(m.hook).length, file.dModel, where);
    if (m.positions !== undefined && (m.kind !== 'mahalanobis' || m.window !== undefined)) throw invalid(`${where}.positions`, 'only a per-token Mahalanobis member has positions (a windowed one counts its own)');
    const positions = m.positions === undefined ? {} : { positions: m.positions };
    return { id: m.id, kind, hook: copyHooks(m.hook), calibration: { center: m.calibration.center, scale: m.calibration.scale }, ...positions, ...body } as EnsembleMember;
  });
  for (const h of hookNames) if (!used.has(h)) throw invalid('$.hook', `${h} is used by no member`);
  return { ...header, kind: 'ensemble-max', members };
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

const schemaErrors = schemaValidator(PROBE_FILE_SCHEMA);

function invalid(where: string, what: string): LatentwatchError {
  return lwError('LW_ERR_PROBE_INVALID', `${where}: ${what}`, { path: where });
}

/** JSON pointer → the `$.a.b[1]` form the errors have always used. */
function dollarPath(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((k) => k.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((path, k) => (/^\d+$/.test(k) ? `${path}[${k}]` : `${path}.${k}`), '$');
}

const EXPECTED_TYPE: Record<string, string> = { number: 'a finite number', integer: 'an integer', string: 'a string', object: 'an object', array: 'an array', null: 'null' };

/** One ajv error as LW_ERR_PROBE_INVALID, worded as the hand-written checks were. */
function schemaProblem(e: ErrorObject): LatentwatchError {
  const where = dollarPath(e.instancePath);
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      return invalid(`${where}.${String(p.missingProperty)}`, /\.(training|evaluation)$/.test(where) ? 'missing (use null when not defined)' : 'missing');
    case 'additionalProperties':
      return invalid(`${where}.${String(p.additionalProperty)}`, 'unknown key');
    case 'enum':
      return invalid(where, `expected one of ${(p.allowedValues as unknown[]).join(', ')}`);
    case 'type':
      return invalid(where, `expected ${String(p.type).split(',').map((t) => EXPECTED_TYPE[t] ?? t).join(' or ')}`);
    case 'pattern':
      return invalid(where, `expected ${String(p.pattern)}`);
    default:
      return invalid(where, e.message ?? e.keyword);
  }
}

function copyHooks(hook: string | readonly string[]): string | readonly string[] {
  return typeof hook === 'string' ? hook : [...hook];
}

/** A copy of `values` after checking it holds `length` of them (the schema checked each number). */
function sized(values: readonly number[], length: number, where: string): number[] {
  if (values.length !== length) throw invalid(where, `expected ${length} numbers, got ${values.length}`);
  return Array.from(values);
}

function figures(f: ProbeFigures): ProbeFigures {
  const out: ProbeFigures = { trials: f.trials, concepts: [...f.concepts], auroc: f.auroc, 'tpr_at_fpr_0.01': f['tpr_at_fpr_0.01'], 'tpr_at_fpr_0.05': f['tpr_at_fpr_0.05'] };
  if (f.fprOnControls === undefined) return out;
  const controls: Record<string, number> = {};
  for (const k of Object.keys(f.fprOnControls).sort()) controls[k] = f.fprOnControls[k];
  return { ...out, fprOnControls: controls };
}

/** The canonical body of a schema-valid leaf, after the checks that depend on dModel and the hooks. */
function leafBody(o: LeafBody, hookCount: number, dModel: number, where: string): LeafBody {
  if (!('gaussian' in o)) {
    const inputDim = hookCount * dModel;
    return {
      kind: o.kind,
      bias: o.bias,
      normalisation: { mean: sized(o.normalisation.mean, inputDim, `${where}.normalisation.mean`), std: sized(o.normalisation.std, inputDim, `${where}.normalisation.std`) },
      weights: sized(o.weights, inputDim, `${where}.weights`),
    };
  }
  if (o.input === 'difference' && hookCount !== 2) throw invalid(`${where}.input`, `'difference' needs exactly two hooks, got ${hookCount}`);
  const inputDim = leafInputDim(o, hookCount, dModel);
  const g = o.gaussian;
  const at = `${where}.gaussian`;
  const common = { shrinkage: g.shrinkage, mean: sized(g.mean, inputDim, `${at}.mean`) };
  let gaussian: GaussianBody;
  if (g.form === 'lowrank') {
    const k = g.eigenvalues.length;
    if (k >= inputDim) throw invalid(`${at}.eigenvalues`, `expected 1 to ${inputDim - 1} eigenvalues, got ${k}`);
    gaussian = { form: g.form, ...common, eigenvalues: Array.from(g.eigenvalues), components: sized(g.components, k * inputDim, `${at}.components`), residualVariance: g.residualVariance };
  } else if (g.form === 'diagonal') {
    gaussian = { form: g.form, ...common, variance: sized(g.variance, inputDim, `${at}.variance`) };
  } else {
    const factor = sized(g.factor, (inputDim * (inputDim + 1)) / 2, `${at}.factor`);
    for (let i = 0, k = 0; i < inputDim; k += i + 2, i++) {
      if (!(factor[k] > 0)) throw invalid(`${at}.factor[${k}]`, `diagonal entry L[${i}][${i}] must be > 0`);
    }
    gaussian = { form: g.form, ...common, factor };
  }
  if (o.window?.spread) sized(o.window.spread.scale, inputDim, `${where}.window.spread.scale`);
  if (o.window?.minCount !== undefined && o.window.minCount > o.window.size) throw invalid(`${where}.window.minCount`, `must be at most the window size ${o.window.size}, got ${o.window.minCount}`);
  const shared = { ...(o.input === undefined ? {} : { input: o.input }), ...(o.window === undefined ? {} : { window: windowBody(o.window) }), gaussian };
  if (o.kind === 'mahalanobis') return { kind: o.kind, ...shared };
  if (gaussian.form !== 'cholesky') throw invalid(`${at}.form`, `a concept-match probe whitens with a full covariance: expected cholesky, got ${gaussian.form}`);
  if (o.window?.spread) throw invalid(`${where}.window.spread`, 'a concept-match window has no spread discount (its score is a cosine)');
  const names = [...o.concepts.names];
  return { kind: o.kind, ...shared, concepts: { names, directions: sized(o.concepts.directions, names.length * inputDim, `${where}.concepts.directions`) } };
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
