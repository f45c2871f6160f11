/**
 * `npm run dashboards`: writes grafana/dashboards/*.json from grafana/src/dashboards.ts.
 * `npm run dashboards -- --check`: writes nothing, exits 1 when a checked-in file is stale.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderDashboards } from './dashboards.js';

export const DASHBOARD_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'dashboards');

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

const check = process.argv.includes('--check');
let stale = 0;
mkdirSync(DASHBOARD_DIR, { recursive: true });
for (const [file, text] of renderDashboards()) {
  const path = join(DASHBOARD_DIR, file);
  if (read(path) === text) continue;
  stale++;
  if (check) process.stderr.write(`stale: grafana/dashboards/${file} (run npm run dashboards)\n`);
  else {
    writeFileSync(path, text);
    process.stdout.write(`wrote grafana/dashboards/${file}\n`);
  }
}
if (check && stale > 0) process.exitCode = 1;
else if (stale === 0) process.stdout.write('grafana/dashboards: up to date\n');
