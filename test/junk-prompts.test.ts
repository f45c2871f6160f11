/**
 * Junk input is ordinary traffic (issue 12): repeated characters and token ids, emoji, whitespace
 * runs, random bytes, one word repeated, mixed scripts. Through the real daemon with the built-in
 * model's shipped probes (the bundled generic detector and the optional concept probe, both named),
 * none raises an alert or an error. The prompts
 * (test/fixtures/junk-prompts.json) are not texts the detector was fitted on: the test checks that
 * none of them is in the corpus's degenerate style (scripts/degenerate-style.ts).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon, type Daemon } from '../src/daemon/daemon.js';
import { CODE16M, FIXTURES, tempDir } from './helpers.js';

const JUNK = JSON.parse(readFileSync(join(FIXTURES, 'junk-prompts.json'), 'utf8')) as Record<string, string | number[]>;
const CORPUS = JSON.parse(readFileSync(new URL('../configs/corpus/clean.json', import.meta.url), 'utf8')) as { styles: { name: string; prompts: string[] }[] };

type Verdict = { probes: { id: string; fired: boolean; max_score: number | null; threshold: number; alert_ids: number[] }[] };

let daemon: Daemon;

beforeAll(async () => {
  const { config } = loadConfig({
    env: { LATENTWATCH_HOST: '127.0.0.1' },
    argv: ['--model', CODE16M, '--probe', join(CODE16M, 'probes', 'generic-injection.probe.json'), '--probe', join(CODE16M, 'optional-probes', 'concept-injection.probe.json'), '--port', '0', '--log-level', 'silent', '--alert-log', join(tempDir('lw-junk-'), 'alerts.db')],
  });
  daemon = await startDaemon(config);
}, 120_000);
afterAll(async () => {
  await daemon?.close();
});

describe('junk prompts on the built-in model', () => {
  it('are not texts the detector was fitted on', () => {
    const fitted = new Set(CORPUS.styles.flatMap((s) => s.prompts));
    expect(CORPUS.styles.map((s) => s.name)).toContain('degenerate');
    for (const [name, prompt] of Object.entries(JUNK)) if (typeof prompt === 'string') expect(fitted.has(prompt), name).toBe(false);
  });

  it.each(Object.entries(JUNK))('%s: answered, scored, and no probe fires', async (_name, prompt) => {
    const r = await fetch(`${daemon.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'qwen2-code-16m', prompt, max_tokens: 16, temperature: 0 }),
    });
    expect(r.status).toBe(200);
    const verdict = ((await r.json()) as { latentwatch: Verdict }).latentwatch;
    expect(verdict.probes.map((p) => p.id).sort()).toEqual(['concept-injection', 'generic-injection']);
    for (const p of verdict.probes) {
      expect(p.max_score, p.id).not.toBeNull();
      expect({ id: p.id, fired: p.fired, alerts: p.alert_ids }).toEqual({ id: p.id, fired: false, alerts: [] });
    }
  });
});
