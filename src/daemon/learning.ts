/**
 * The daemon learns a detector from its own clean traffic (docs/daemon.md, "Learning from your
 * traffic"): on `--learn N` or `POST /v1/admin/learn` it folds the next N clean requests into a
 * DetectorLearner (src/probes/learn.ts: moments, then calibration scores; never rows or text),
 * then writes `<stateDir>/learned/<probe>.v<k>.probe.json` (+ a `.learn.json` manifest) and swaps
 * the probe into the live bank: requests already running finish with the probe they started with.
 *
 * Durable: the statistics are written atomically after every request folded in (a restart resumes
 * from them), and at start a learned probe replaces the loaded probe of the same id when it was
 * made for the served model. Another model's statistics or probe are refused with a coded error,
 * logged, and the daemon keeps serving with the probe it loaded.
 *
 * Never learned from: canary runs and admin-injected requests (not clean), and requests that fail
 * or are cancelled (inference.ts commits a request only when it completed).
 */
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeFileAtomicAsync } from '../atomic-write.js';
import { isLatentwatchError, lwError } from '../errors.js';
import { DetectorLearner, learnableMembers, type LearnSpec, type RequestRows } from '../probes/learn.js';
import { createProbe, loadProbe, type Probe, type ProbeBank, type TapTensor } from '../probes/probe.js';
import { writeProbeFile } from '../probes/probe-file.js';
import { LEARN_MAX_REQUESTS, LEARN_MIN_REQUESTS } from './config.js';
import type { LearnBaseline } from './learn-baseline.js';
import type { DaemonMetrics } from './metrics.js';

/** Share of a run's requests that feed the fit; the rest calibrate (the lab's default split is 60/40 too). */
export const LEARN_FIT_FRACTION = 0.6;
/** Positions of one request kept for learning: bounds the rows a running request holds. */
export const LEARN_MAX_POSITIONS = 1024;
/**
 * The least time between two writes of a run's statistics: each rewrites every member's moments
 * (16.8 MB on the built-in model), so busy traffic would otherwise keep the disk writing without
 * pause; a kill -9 loses at most this much counted traffic (shutdown writes at once).
 */
export const LEARN_WRITE_INTERVAL_MS = 1000;

/** What inference.ts calls for one clean request. */
export interface LearnTap {
  /** One forward pass's taps and the token ids of its positions. */
  observe(taps: ReadonlyMap<string, TapTensor>, tokenIds: ArrayLike<number>): void;
  /** The request completed: fold it in. */
  commit(): void;
}

export interface LearnRequest {
  probe: string;
  requests: number;
  targetFpr: number;
}

interface Logger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface LearnedVersion {
  version: number;
  path: string;
  threshold: number;
  achievedFpr: number | null;
  learnedAt: string | null;
}

type Phase = 'idle' | 'preparing' | 'collecting' | 'calibrating' | 'writing' | 'done' | 'failed';

interface Run {
  learner: DetectorLearner;
  startedAt: string;
  origin: string;
  writing: boolean;
  /** Folding in the always-fitted baseline (learn-baseline.ts): no traffic is counted yet. */
  preparing: boolean;
  /** Seconds the baseline took to fold in (through the served model), once folded. */
  baselineSeconds?: number;
  /** Seconds the members' Gaussians took to fit from moments (event loop held), once fitted. */
  fitSeconds?: number;
  /** Statistics writes so far (at most one a LEARN_WRITE_INTERVAL_MS). */
  statisticsWrites: number;
}

export interface LearningDeps {
  bank: ProbeBank;
  fingerprint: string;
  stateDir: string;
  metrics: DaemonMetrics;
  /** Active learned versions by probe id (0 or absent: the probe as loaded). */
  versions: Map<string, LearnedVersion>;
  /** Folded into every new run's fit share before traffic counts (the shipped junk style); none: traffic only. */
  baseline?: LearnBaseline;
}

const learnedDir = (stateDir: string) => join(stateDir, 'learned');
const statsPath = (stateDir: string, probe: string) => join(learnedDir(stateDir), `${probe}.learning`);
const VERSION_FILE = /^(.+)\.v(\d+)\.probe\.json$/;

/** Learned versions on disk for a probe id, highest first. */
export function learnedVersions(stateDir: string, probeId: string): { version: number; path: string }[] {
  let names: string[];
  try {
    names = readdirSync(learnedDir(stateDir));
  } catch {
    return [];
  }
  return names
    .map((n) => VERSION_FILE.exec(n))
    .filter((m): m is RegExpExecArray => m !== null && m[1] === probeId)
    .map((m) => ({ version: Number(m[2]), path: join(learnedDir(stateDir), m[0]) }))
    .sort((a, b) => b.version - a.version);
}

/**
 * At start: each loaded probe with a learned version in stateDir is replaced by its newest one,
 * when that was made for the served model and reads the same hooks. Otherwise the loaded probe
 * stays, and a warning (with the coded error) says why.
 */
export async function withLearnedProbes(stateDir: string, probes: readonly Probe[], fingerprint: string): Promise<{ probes: Probe[]; versions: Map<string, LearnedVersion>; warnings: { msg: string; code?: string }[] }> {
  const versions = new Map<string, LearnedVersion>();
  const warnings: { msg: string; code?: string }[] = [];
  const out: Probe[] = [];
  for (const p of probes) {
    const newest = learnedVersions(stateDir, p.id)[0];
    if (!newest) {
      out.push(p);
      continue;
    }
    try {
      const learned = await loadProbe(newest.path, fingerprint);
      if (learned.id !== p.id || learned.hooks.length !== p.hooks.length || p.hooks.some((h) => !learned.hooks.includes(h))) {
        throw lwError('LW_ERR_PROBE_INPUT_MISMATCH', `${newest.path} reads ${learned.hooks.join(', ')}, the loaded probe ${p.hooks.join(', ')}`);
      }
      const manifest = readManifest(newest.path);
      versions.set(p.id, { version: newest.version, path: newest.path, threshold: learned.threshold, achievedFpr: manifest?.achievedFpr ?? null, learnedAt: manifest?.learnedAt ?? null });
      out.push(learned);
    } catch (e) {
      const code = isLatentwatchError(e) ? e.code : undefined;
      warnings.push({ msg: `learned probe ${newest.path} refused (${(e as Error).message}); serving ${p.id} as loaded`, code });
      out.push(p);
    }
  }
  return { probes: out, versions, warnings };
}

function manifestPath(probePath: string): string {
  return probePath.replace(/\.probe\.json$/, '.learn.json');
}

function readManifest(probePath: string): { achievedFpr?: number; learnedAt?: string } | null {
  try {
    return JSON.parse(readFileSync(manifestPath(probePath), 'utf8')) as { achievedFpr?: number; learnedAt?: string };
  } catch {
    return null;
  }
}

export class LearningService {
  private run: Run | null = null;
  private phase: Phase = 'idle';
  private last: Record<string, unknown> | null = null;
  private refused: { code: string; message: string } | null = null;
  private writes: Promise<void> = Promise.resolve();
  private dirty = false;
  private writing = false;
  private lastWriteAt = -Infinity;
  /** Aborted at shutdown: a baseline still running stops. */
  private readonly closing = new AbortController();
  log: Logger = { info: () => {}, warn: () => {}, error: () => {} };

  constructor(private readonly d: LearningDeps) {
    for (const p of d.bank.probes) d.metrics.setProbeVersion(p.id, d.versions.get(p.id)?.version ?? 0);
  }

  /** Progress for GET /v1/admin/learn: counts and figures, no request content. */
  status(): Record<string, unknown> {
    const r = this.run;
    const l = r?.learner;
    return {
      phase: this.phase,
      ...(l
        ? {
            probe: l.spec.probeId,
            origin: r.origin,
            started_at: r.startedAt,
            target_fpr: l.spec.targetFpr,
            requests: { target: l.spec.requests, seen: l.requestsSeen, fit: l.fitRequests, fit_target: l.spec.fitRequests, calibration: l.calibration.length },
            positions: { fit: l.fitPositions, calibration: l.calibrationPositions },
            baseline: this.baselineCounts(r),
            statistics_writes: r.statisticsWrites,
            ...(r.fitSeconds === undefined ? {} : { fit_seconds: r.fitSeconds }),
          }
        : {}),
      active: Object.fromEntries(this.d.bank.probes.map((p) => [p.id, { version: this.d.versions.get(p.id)?.version ?? 0, threshold: p.threshold }])),
      ...(this.last ? { last: this.last } : {}),
      ...(this.refused ? { refused: this.refused } : {}),
    };
  }

  /** Check a learn request against the bounds and the loaded probes; returns the plan. Throws coded 400s. */
  plan(req: LearnRequest): LearnSpec {
    if (!Number.isInteger(req.requests) || req.requests < LEARN_MIN_REQUESTS || req.requests > LEARN_MAX_REQUESTS) {
      throw lwError('LW_ERR_API_BAD_REQUEST', `requests must be an integer in [${LEARN_MIN_REQUESTS}, ${LEARN_MAX_REQUESTS}], got ${JSON.stringify(req.requests)}`, { param: 'requests' });
    }
    if (typeof req.targetFpr !== 'number' || !(req.targetFpr > 0 && req.targetFpr <= 0.5)) {
      throw lwError('LW_ERR_API_BAD_REQUEST', `target_fpr must be a number in (0, 0.5], got ${JSON.stringify(req.targetFpr)}`, { param: 'target_fpr' });
    }
    const probe = this.d.bank.probes.find((p) => p.id === req.probe);
    if (!probe) throw lwError('LW_ERR_LEARN_UNSUPPORTED', `no loaded probe has the id ${JSON.stringify(req.probe)}`, { param: 'probe' });
    const members = learnableMembers(probe.file);
    const fitRequests = Math.min(req.requests - 1, Math.max(2, Math.round(req.requests * LEARN_FIT_FRACTION)));
    return {
      probeId: probe.id,
      label: probe.label,
      modelFingerprint: this.d.fingerprint,
      dModel: probe.dModel,
      aggregator: probe.aggregator,
      targetFpr: req.targetFpr,
      requests: req.requests,
      fitRequests,
      members,
      maxPositions: LEARN_MAX_POSITIONS,
    };
  }

  /** Start a run (LW_ERR_LEARN_BUSY while one is collecting or writing). */
  start(req: LearnRequest, origin: string): Record<string, unknown> {
    if (this.run) throw lwError('LW_ERR_LEARN_BUSY', `learning ${this.run.learner.spec.probeId}: ${this.run.learner.requestsSeen} of ${this.run.learner.spec.requests} requests`);
    const spec = this.plan(req);
    this.begin(new DetectorLearner(spec), origin, new Date().toISOString());
    this.log.info({ probe: spec.probeId, requests: spec.requests, fitRequests: spec.fitRequests, targetFpr: spec.targetFpr, origin }, `learning ${spec.probeId} from the next ${spec.requests} clean requests`);
    const baseline = this.d.baseline;
    if (baseline) void this.prepare(this.run!, baseline);
    else this.persist();
    return this.status();
  }

  /** The baseline's counts (and its seconds, once folded) for the status and the manifest. */
  private baselineCounts(r: Run): Record<string, number> {
    const l = r.learner;
    return { requests: l.baselineRequests, positions: l.baselinePositions, ...(r.baselineSeconds === undefined ? {} : { seconds: r.baselineSeconds }) };
  }

  /** Fold the always-fitted baseline in, then count traffic (statistics first written after it). */
  private async prepare(run: Run, baseline: LearnBaseline): Promise<void> {
    run.preparing = true;
    this.phase = 'preparing';
    const t0 = performance.now();
    try {
      await baseline(run.learner, this.closing.signal);
    } catch (e) {
      if (!this.closing.signal.aborted) this.fail(run, e);
      return;
    }
    if (this.run !== run || this.closing.signal.aborted) return;
    run.preparing = false;
    run.baselineSeconds = round3((performance.now() - t0) / 1000);
    this.phase = 'collecting';
    const l = run.learner;
    this.log.info({ probe: l.spec.probeId, requests: l.baselineRequests, positions: l.baselinePositions, seconds: run.baselineSeconds }, `learning ${l.spec.probeId}: folded in the always-fitted baseline; counting traffic`);
    this.persist();
  }

  /** Whether a learned version of `probeId` is active (then `--learn` at start does nothing). */
  hasLearned(probeId: string): boolean {
    return (this.d.versions.get(probeId)?.version ?? 0) > 0;
  }

  get active(): boolean {
    return this.run !== null;
  }

  /** Statistics on disk were refused at start (they stay as they are until an admin starts a run). */
  get refusedState(): boolean {
    return this.refused !== null;
  }

  /**
   * Resume statistics left by a previous process (any `*.learning` in stateDir/learned). Another
   * model's, or a malformed file, is refused (logged with its code, file left as it is).
   */
  resume(): boolean {
    let names: string[];
    try {
      names = readdirSync(learnedDir(this.d.stateDir)).filter((n) => n.endsWith('.learning'));
    } catch {
      return false;
    }
    for (const name of names.sort()) {
      const path = join(learnedDir(this.d.stateDir), name);
      try {
        const { learner, header } = DetectorLearner.deserialize(readFileSync(path), this.d.fingerprint, path);
        const spec = learner.spec;
        const probe = this.d.bank.probes.find((p) => p.id === spec.probeId);
        if (!probe) throw lwError('LW_ERR_LEARN_UNSUPPORTED', `${path}: probe ${spec.probeId} is not loaded`);
        if (`${spec.probeId}.learning` !== name) throw lwError('LW_ERR_LEARN_STATE_INVALID', `${path}: holds statistics for ${spec.probeId}`);
        this.begin(learner, String(header.origin ?? 'resumed'), String(header.startedAt ?? new Date().toISOString()));
        if (typeof header.baselineSeconds === 'number') this.run!.baselineSeconds = header.baselineSeconds;
        this.log.info({ probe: spec.probeId, seen: learner.requestsSeen, requests: spec.requests, path }, `resumed learning ${spec.probeId}: ${learner.requestsSeen} of ${spec.requests} requests`);
        if (learner.phase === 'complete') void this.finish(this.run!);
        return true;
      } catch (e) {
        const code = isLatentwatchError(e) ? e.code : 'LW_ERR_LEARN_STATE_INVALID';
        this.refused = { code, message: (e as Error).message };
        this.log.warn({ code, path }, `learning statistics refused: ${(e as Error).message}; serving with the probes as loaded`);
      }
    }
    return false;
  }

  private begin(learner: DetectorLearner, origin: string, startedAt: string): void {
    this.run = { learner, origin, startedAt, writing: false, preparing: false, statisticsWrites: 0 };
    this.phase = learner.phase === 'fit' ? 'collecting' : 'calibrating';
    this.refused = null;
  }

  /** A tap for one request, or null when nothing is being learned. */
  tap(): LearnTap | null {
    const run = this.run;
    if (!run || run.writing || run.preparing) return null;
    let rows: RequestRows | null = run.learner.newRequest();
    return {
      observe: (taps, tokenIds) => rows?.observe(taps, tokenIds),
      commit: () => {
        if (rows) this.commit(run, rows);
        rows = null;
      },
    };
  }

  private commit(run: Run, rows: RequestRows): void {
    if (this.run !== run || run.writing) return; // a run that ended meanwhile
    const l = run.learner;
    const before = l.phase;
    let share: ReturnType<DetectorLearner['add']>;
    try {
      share = l.add(rows);
    } catch (e) {
      this.fail(run, e);
      return;
    }
    if (share !== 'fit' && share !== 'calibrate') return;
    this.d.metrics.recordLearnRequest(l.spec.probeId);
    if (before === 'fit' && l.phase !== 'fit') {
      const t0 = performance.now();
      try {
        l.members();
      } catch (e) {
        this.fail(run, e);
        return;
      }
      const seconds = (performance.now() - t0) / 1000;
      run.fitSeconds = round3(seconds);
      this.phase = 'calibrating';
      this.log.info({ probe: l.spec.probeId, requests: l.fitRequests, positions: l.fitPositions, fitSeconds: round3(seconds) }, `learning ${l.spec.probeId}: fitted ${l.spec.members.length} members from moments`);
    }
    if (l.phase === 'complete') void this.finish(run);
    else this.persist();
  }

  private async finish(run: Run): Promise<void> {
    run.writing = true;
    this.phase = 'writing';
    const l = run.learner;
    const id = l.spec.probeId;
    try {
      const t0 = performance.now();
      const result = l.finish();
      const probe = createProbe(result.file);
      const computeSeconds = (performance.now() - t0) / 1000;
      mkdirSync(learnedDir(this.d.stateDir), { recursive: true });
      const version = (learnedVersions(this.d.stateDir, id)[0]?.version ?? 0) + 1;
      const path = join(learnedDir(this.d.stateDir), `${id}.v${version}.probe.json`);
      const learnedAt = new Date().toISOString();
      const manifest = {
        probe: id,
        version,
        modelFingerprint: l.spec.modelFingerprint,
        learnedAt,
        startedAt: run.startedAt,
        origin: run.origin,
        requests: { fit: result.fitRequests, calibration: result.calibrationRequests },
        positions: { fit: result.fitPositions, calibration: result.calibrationPositions },
        baseline: { ...this.baselineCounts(run), weight: result.baselineWeight },
        targetFpr: l.spec.targetFpr,
        achievedFpr: result.achievedFpr,
        threshold: result.threshold,
        empiricalThreshold: result.empiricalThreshold,
        replaced: { threshold: this.d.bank.probes.find((p) => p.id === id)?.threshold ?? null, version: this.d.versions.get(id)?.version ?? 0 },
      };
      // Manifest first: a probe file on disk always has its figures beside it.
      await writeFileAtomicAsync(manifestPath(path), `${JSON.stringify(manifest, null, 2)}\n`);
      await writeProbeFile(path, result.file);
      await this.writes; // a statistics write still in flight must not land after the removal
      const old = this.d.bank.swap(probe);
      this.d.versions.set(id, { version, path, threshold: result.threshold, achievedFpr: result.achievedFpr, learnedAt });
      this.d.metrics.setProbeVersion(id, version);
      rmSync(statsPath(this.d.stateDir, id), { force: true });
      const totalSeconds = (performance.now() - t0) / 1000;
      this.last = { ...manifest, path, fit_seconds: run.fitSeconds ?? null, compute_seconds: round3(computeSeconds), finish_seconds: round3(totalSeconds) };
      this.run = null;
      this.phase = 'done';
      this.log.info(
        { probe: id, version, path, threshold: result.threshold, previousThreshold: old.threshold, targetFpr: l.spec.targetFpr, achievedFpr: result.achievedFpr, computeSeconds: round3(computeSeconds), finishSeconds: round3(totalSeconds) },
        `learned ${id} v${version} from ${result.fitRequests + result.calibrationRequests} clean requests; swapped in for new requests`,
      );
    } catch (e) {
      this.fail(run, e);
    }
  }

  private fail(run: Run, e: unknown): void {
    if (this.run !== run) return;
    this.run = null;
    this.phase = 'failed';
    const code = isLatentwatchError(e) ? e.code : 'LW_ERR_API_INTERNAL';
    this.last = { probe: run.learner.spec.probeId, error: { code, message: (e as Error).message } };
    this.log.error({ code, probe: run.learner.spec.probeId }, `learning failed: ${(e as Error).message}; the probe in use is unchanged`);
    rmSync(statsPath(this.d.stateDir, run.learner.spec.probeId), { force: true });
  }

  /** Write the statistics atomically; one write at a time, the latest state wins. */
  private persist(): void {
    this.dirty = true;
    if (this.writing) return;
    this.writing = true;
    this.writes = (async () => {
      try {
        while (this.dirty) {
          const wait = this.lastWriteAt + LEARN_WRITE_INTERVAL_MS - performance.now();
          // Requests counted meanwhile ride on the next write; shutdown (closing) writes at once.
          if (wait > 0 && !this.closing.signal.aborted) await sleep(wait, undefined, { signal: this.closing.signal }).catch(() => {});
          this.dirty = false;
          const run = this.run;
          if (!run || run.writing) break;
          const id = run.learner.spec.probeId;
          mkdirSync(learnedDir(this.d.stateDir), { recursive: true });
          this.lastWriteAt = performance.now();
          await writeFileAtomicAsync(statsPath(this.d.stateDir, id), run.learner.serialize({ origin: run.origin, startedAt: run.startedAt, ...(run.baselineSeconds === undefined ? {} : { baselineSeconds: run.baselineSeconds }) }));
          run.statisticsWrites++;
        }
      } catch (e) {
        this.log.error({ error: (e as Error).message }, 'learning statistics not written; a restart resumes from the last written state');
      } finally {
        this.writing = false;
      }
    })();
  }

  /** Stop a baseline still running and wait for the statistics on disk (shutdown). */
  async flush(): Promise<void> {
    this.closing.abort();
    await this.writes;
  }
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
