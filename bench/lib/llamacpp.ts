/**
 * llama.cpp through node-llama-cpp, with its prebuilt binaries only (the npm packages
 * @node-llama-cpp/<platform>): `build: 'never'` and `skipDownload` so it never compiles llama.cpp
 * or fetches anything at run time, and the CPU backend (`gpu: false`).
 *
 * It is not a devDependency: its lock entries list platform packages (win, mac, riscv64) that this
 * registry does not have, which makes `npm ci` fail. So the bench finds it, in order:
 *   1. the project's node_modules (`npm i --no-save --ignore-scripts node-llama-cpp@3.22.1`);
 *   2. a private prefix outside the project (default /tmp/lw-bench/node-llama-cpp), where
 *      `ensureNodeLlamaCpp({ install: true })` installs it from the npm registry with
 *      `npm install --prefix DIR --no-save --no-package-lock --ignore-scripts` (no install script
 *      runs, so nothing is built or downloaded from anywhere but the registry; the project's
 *      package.json, lock and node_modules are never touched).
 * Its types are not needed to compile: the few used here are typed loosely.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/* eslint-disable @typescript-eslint/no-explicit-any -- node-llama-cpp is optional (see above) */
type Llama = any;
type LlamaModel = any;
type LlamaContext = any;
type LlamaContextSequence = any;
type Token = any;
/* eslint-enable @typescript-eslint/no-explicit-any */

/** The version ANCHORS.md measured. */
export const NODE_LLAMA_CPP_VERSION = '3.22.1';
export const DEFAULT_NODE_LLAMA_CPP_PREFIX = '/tmp/lw-bench/node-llama-cpp';
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface NodeLlamaCppLocation {
  /** The module's ESM entry file, or null when not found. */
  entry: string | null;
  version: string | null;
  from: 'project' | 'prefix' | null;
  /** Why `entry` is null. */
  reason?: string;
}

/** node-llama-cpp's ESM entry under a node_modules directory, if installed there. */
function entryUnder(nodeModules: string): { entry: string; version: string } | null {
  const dir = join(nodeModules, 'node-llama-cpp');
  const pkgPath = join(dir, 'package.json');
  if (!existsSync(pkgPath)) return null;
  const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as { version: string; main?: string; exports?: Record<string, unknown> };
  const dot = pkg.exports?.['.'];
  const pick = (e: unknown): string | undefined => {
    if (typeof e === 'string') return e;
    if (e && typeof e === 'object') {
      const o = e as Record<string, unknown>;
      return pick(o.import ?? o.node ?? o.default);
    }
    return undefined;
  };
  const rel = pick(dot) ?? pkg.main ?? 'dist/index.js';
  const entry = join(dir, rel);
  return existsSync(entry) ? { entry, version: pkg.version } : null;
}

/** Finds node-llama-cpp (project first, then the prefix), installing it into the prefix if asked. */
export function ensureNodeLlamaCpp(o: { install: boolean; prefix?: string; log?: (l: string) => void } = { install: false }): NodeLlamaCppLocation {
  const inProject = entryUnder(join(REPO, 'node_modules'));
  if (inProject) return { ...inProject, from: 'project' };
  const prefix = o.prefix ?? DEFAULT_NODE_LLAMA_CPP_PREFIX;
  const found = entryUnder(join(prefix, 'node_modules'));
  if (found) return { ...found, from: 'prefix' };
  if (!o.install) return { entry: null, version: null, from: null, reason: `node-llama-cpp is not installed (run the peers bench without --no-install, or npm i --no-save --ignore-scripts node-llama-cpp@${NODE_LLAMA_CPP_VERSION})` };
  o.log?.(`installing node-llama-cpp@${NODE_LLAMA_CPP_VERSION} into ${prefix} (npm registry, --ignore-scripts: no build, no download from elsewhere)…`);
  mkdirSync(prefix, { recursive: true });
  try {
    execFileSync('npm', ['install', '--prefix', prefix, '--no-save', '--no-package-lock', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error', `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`], {
      cwd: prefix,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 10 * 60_000,
      env: { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: 'true' },
    });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim().split('\n').slice(-3).join(' | ');
    return { entry: null, version: null, from: null, reason: `installing node-llama-cpp into ${prefix} failed: ${stderr || (e as Error).message}` };
  }
  const installed = entryUnder(join(prefix, 'node_modules'));
  return installed ? { ...installed, from: 'prefix' } : { entry: null, version: null, from: null, reason: `node-llama-cpp not found in ${prefix} after installing it` };
}

export interface LlamaCppRunner {
  llama: Llama;
  model: LlamaModel;
  context: LlamaContext;
  sequence: LlamaContextSequence;
  /** llama.cpp's build and CPU description. */
  info: { buildType: string; systemInfo: string; version: string | null };
  /** Greedy generation of `newTokens` tokens from a fresh history; `t[k]` is when token k + 1 was known. */
  greedy(promptIds: number[], newTokens: number): Promise<{ start: number; t: number[]; ids: number[] }>;
  tokenize(text: string): number[];
  dispose(): Promise<void>;
}

/** Loads a GGUF with node-llama-cpp from `entry` (ensureNodeLlamaCpp's; default: find it, no install). */
export async function loadLlamaCpp(o: { modelPath: string; threads: number; contextSize: number; flashAttention: boolean; entry?: string | null }): Promise<LlamaCppRunner> {
  const loc = o.entry ? { entry: o.entry, version: null, reason: '' } : ensureNodeLlamaCpp({ install: false });
  if (!loc.entry) throw new Error(loc.reason ?? 'node-llama-cpp not found');
  const mod = await import(pathToFileURL(loc.entry).href);
  const version = loc.version ?? (JSON.parse(readFileSync(join(dirname(loc.entry), '..', 'package.json'), 'utf8')) as { version?: string }).version ?? null;
  const { getLlama, LlamaLogLevel } = mod;
  const llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, usePrebuiltBinaries: true, logLevel: LlamaLogLevel.error, progressLogs: false });
  const model = await llama.loadModel({ modelPath: o.modelPath, gpuLayers: 0, useMmap: true });
  const context = await model.createContext({ contextSize: o.contextSize, threads: o.threads, flashAttention: o.flashAttention, sequences: 1, batchSize: o.contextSize });
  const sequence = context.getSequence();
  const greedy = async (promptIds: number[], newTokens: number) => {
    await sequence.clearHistory();
    const t: number[] = [];
    const ids: number[] = [];
    const start = performance.now();
    // Each yield follows one evaluation: the prompt's for the first token, one decode step after.
    for await (const token of sequence.evaluate(promptIds as Token[], { temperature: 0, yieldEogToken: true })) {
      t.push(performance.now());
      ids.push(Number(token));
      if (ids.length >= newTokens) break;
    }
    return { start, t, ids };
  };
  return {
    llama,
    model,
    context,
    sequence,
    info: { buildType: llama.buildType, systemInfo: llama.systemInfo, version },
    greedy,
    tokenize: (text) => (model.tokenize(text, false) as unknown[]).map(Number),
    dispose: async () => {
      await context.dispose();
      await model.dispose();
      await llama.dispose();
    },
  };
}
