/** `serve --provider` reaches the engine: asking for CUDA fails at start-up exactly when its libraries are missing. */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon } from '../src/daemon/daemon.js';
import { cudaAvailable } from '../src/engine/runtime.js';
import { QWEN2_TINY } from './helpers.js';

describe('daemon execution provider', () => {
  it('--provider cuda: LW_ERR_ENGINE_PROVIDER_UNAVAILABLE without the CUDA libraries, a running daemon with them', async () => {
    const { config } = loadConfig({ argv: ['--model', QWEN2_TINY, '--provider', 'cuda', '--port', '0', '--log-level', 'silent', '--alert-log', ':memory:'] });
    if (!cudaAvailable()) {
      await expect(startDaemon(config)).rejects.toMatchObject({ code: 'LW_ERR_ENGINE_PROVIDER_UNAVAILABLE' });
      return;
    }
    const daemon = await startDaemon(config);
    expect((await fetch(`${daemon.url}/readyz`)).status).toBe(200);
    await daemon.close();
  });
});
