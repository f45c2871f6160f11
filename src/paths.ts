/**
 * Files that ship with latentwatch (the default model, its probes, configs/), found the same way from
 * a repository checkout (src/ under tsx, dist/src/ after a build) and from an installed package
 * (node_modules/latentwatch/dist/src/). Resolve them with packageFile(), never with a relative URL
 * from the calling module: src/x.ts and dist/src/x.js sit at different depths, so '../../configs'
 * is right from one and wrong from the other (issue 13).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = 'latentwatch';

function isPackageRoot(dir: string): boolean {
  const manifest = join(dir, 'package.json');
  if (!existsSync(manifest)) return false;
  try {
    // Match by name, so a stray package.json between this file and the root cannot be taken for it.
    return (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === PACKAGE_NAME;
  } catch {
    return false;
  }
}

function findRoot(): string {
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; ) {
    if (isPackageRoot(dir)) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`latentwatch: no package.json named "${PACKAGE_NAME}" above ${start}; the installation is incomplete`);
    dir = up;
  }
}

/** The directory holding latentwatch's package.json (the checkout, or node_modules/latentwatch). */
export const PACKAGE_ROOT = findRoot();

/** A file or directory shipped with the package, e.g. packageFile('configs', 'corpus', 'clean.json'). */
export function packageFile(...segments: string[]): string {
  return join(PACKAGE_ROOT, ...segments);
}

/** The built-in default model: a 16M-parameter Qwen2 trained on Python, shipped in the package. */
export const DEFAULT_MODEL_DIR = packageFile('models', 'qwen2-code-16m');

/** The clean-prompt corpus that fit-anomaly, calibrate-probe and generic-report use without --prompts/--corpus. */
export const DEFAULT_CORPUS = packageFile('configs', 'corpus', 'clean.json');
