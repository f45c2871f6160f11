/** Locations inside the installed package (works from src/ under tsx and from dist/). */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('latentwatch package root not found');
    dir = up;
  }
  return dir;
}

export const PACKAGE_ROOT = findRoot();
/** The built-in default model: a 16M-parameter Qwen2 trained on Python, shipped in the repo. */
export const DEFAULT_MODEL_DIR = join(PACKAGE_ROOT, 'models', 'qwen2-code-16m');
