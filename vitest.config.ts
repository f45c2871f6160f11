import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Installs (as root) or demands the system tools some tests run: prometheus, promtool, amtool.
    globalSetup: ['test/global-setup.ts'],
    // Real onnxruntime sessions on a 2-core machine: keep files in parallel low and timeouts generous.
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 300_000,
  },
});
