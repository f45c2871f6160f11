/**
 * `latentwatch serve` loads no offline-lab module (trials, fitting, reports): the real CLI process,
 * every module it resolves recorded by a loader hook, through start-up and a scored completion.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

const BIN = new URL('../bin/latentwatch.js', import.meta.url).pathname;
const RECORDER = new URL('./fixtures/module-recorder/register.mjs', import.meta.url).pathname;

describe('serve module graph', () => {
  it('holds the runtime (engine, probes, daemon) and no lab module, also after a completion', async () => {
    const dir = tempDir();
    const log = join(dir, 'modules.txt');
    const child = spawn(process.execPath, ['--import', RECORDER, BIN, 'serve', '--port', '0', '--alert-log', join(dir, 'alerts.db')], {
      env: { ...process.env, LW_MODULE_LOG: log, LATENTWATCH_HOST: '127.0.0.1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const url = await new Promise<string>((resolve, reject) => {
      const onData = (b: Buffer) => {
        output += String(b);
        const m = /listening on (http:\/\/[^\s"]+)/.exec(output);
        if (m) resolve(m[1]);
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', (code) => reject(new Error(`serve exited ${code}: ${output}`)));
    });
    try {
      const r = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'qwen2-code-16m', prompt: 'def load(path):\n', max_tokens: 4, temperature: 0 }),
      });
      expect(r.status).toBe(200);
      expect(((await r.json()) as { latentwatch?: unknown }).latentwatch).toBeDefined();
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    const modules = readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('/dist/'));
    // The recorder saw the runtime, so an empty lab list means something.
    for (const m of ['/dist/src/cli/serve-command.js', '/dist/src/daemon/daemon.js', '/dist/src/engine/engine.js', '/dist/src/probes/probe.js', '/dist/src/probes/verbalization.js']) {
      expect(modules.some((u) => u.endsWith(m)), m).toBe(true);
    }
    expect(modules.filter((u) => u.includes('/dist/src/lab/'))).toEqual([]);
    expect(modules.filter((u) => u.endsWith('/dist/src/cli/probe-commands.js'))).toEqual([]);
  });
});
