/**
 * vitest globalSetup: installs the system tools the tests run for real (prometheus, promtool,
 * amtool…) through scripts/test-deps.sh, the same script .ci/run calls, so `npm test` and a single
 * `npx vitest run FILE` pass on a fresh Debian machine. It fails the run, naming the packages, when
 * they are missing and it cannot install them (not root): the tests that need them do not skip.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Also gives the run one temporary root (LW_TEST_TMP, read by helpers.ts tempDir), removed when the
 * run ends, so test directories do not pile up in /tmp run after run.
 */
export default function setup(): () => void {
  const script = fileURLToPath(new URL('../scripts/test-deps.sh', import.meta.url));
  const r = spawnSync('bash', [script], { stdio: 'inherit' });
  if (r.error) throw new Error(`test-deps: cannot run ${script}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`test-deps: ${script} exited ${r.status}: the system tools the tests need are missing (see its message above)`);
  const root = mkdtempSync(join(tmpdir(), 'latentwatch-test-run-'));
  process.env.LW_TEST_TMP = root;
  return () => rmSync(root, { recursive: true, force: true });
}
