/**
 * Every layer's update (resid_post L − resid_post L−1; resid_post 0 at L = 0) of the clean, concept,
 * random-direction and contrast trials of a trial dataset, as raw float32 files for
 * scripts/quadratic-probe-study.py (issue 12: can a probe trained on injection trials generalise to
 * held-out concepts if it reads energies rather than directions?).
 *
 *   npx tsx scripts/dump-trial-updates.ts DATA OUT_DIR
 *
 * Writes OUT_DIR/L<l>.f32 (rows × dModel, trials in dataset order, each trial's traced positions)
 * and OUT_DIR/meta.json (per trial: split, condition, family, concept, strength, injection layer
 * and window, first row). ~0.8 GB for qwen3-code-7m's generic dataset.
 */
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { Dataset } from '../src/lab/dataset.js';

const [data, out] = process.argv.slice(2);
if (!data || !out) throw new Error('usage: dump-trial-updates.ts DATA OUT_DIR');
const ds = Dataset.open(data);
const L = ds.manifest.numLayers;
const d = ds.manifest.dModel;
const keep = ds.records.filter((r) => r.condition === 'none' || ['concept', 'random', 'random-heldout', 'contrast'].includes(r.family as string));
mkdirSync(out, { recursive: true });
const files = Array.from({ length: L }, (_, l) => openSync(`${out}/L${l}.f32`, 'w'));
const meta: unknown[] = [];
let offset = 0;
for (const r of keep) {
  const positions = r.trace.end - r.trace.start;
  let prev: Float32Array | null = null;
  for (let l = 0; l < L; l++) {
    const cur = ds.traceRows(r, l);
    const update = prev ? cur.map((v, i) => v - prev![i]) : cur;
    writeSync(files[l], Buffer.from(update.buffer, update.byteOffset, update.byteLength));
    prev = cur;
  }
  meta.push({ id: r.id, split: r.split, condition: r.condition, family: r.family ?? null, concept: r.concept ?? null, strength: r.strength ?? null, layer: r.layer ?? null, protocol: r.protocol, start: r.trace.start, positions, window: r.window ?? null, offset });
  offset += positions;
}
files.forEach(closeSync);
writeFileSync(`${out}/meta.json`, JSON.stringify({ d, L, rows: offset, trials: meta }));
console.log(`${keep.length} trials, ${offset} rows, d ${d}, ${L} layers -> ${out}`);
