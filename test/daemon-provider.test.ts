/** `serve --provider` reaches the engine: asking for CUDA where its libraries are missing fails at start-up. */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { startDaemon } from '../src/daemon/daemon.js';
import { cudaAvailable } from '../src/engine/runtime.js';
import { QWEN2_TINY } from './helpers.js';

describe('daemon execution provider', () => {
  it.skipIf(cudaAvailable())('--provider cuda without the CUDA libraries → LW_ERR_ENGINE_PROVIDER_UNAVAILABLE', async () => {
    const { config } = loadConfig({ argv: ['--model', QWEN2_TINY, '--provider', 'cuda', '--port', '0', '--log-level', 'silent', '--alert-log', ':memory:'] });
    await expect(startDaemon(config)).rejects.toMatchObject({ code: 'LW_ERR_ENGINE_PROVIDER_UNAVAILABLE' });
  });
});
