/**
 * The daemon as a child process for benches and load tests: `latentwatch serve`'s startup
 * (config from the environment and argv) that prints one line `LATENTWATCH_READY {"url": ..., "pid": ...}` on
 * stdout once it listens, so a parent can use port 0. SIGTERM/SIGINT drain and exit 0.
 * Run with `node --import tsx bench/lib/daemon-child.ts ARGS` or the compiled dist file.
 */
import { loadConfig, processEnv } from '../../src/daemon/config.js';
import { startDaemon } from '../../src/daemon/daemon.js';
import { wallOffsetUs } from './clients.js';

const { config, notices } = loadConfig({ env: processEnv(), argv: process.argv.slice(2) });
const daemon = await startDaemon(config, notices);
// clockOffsetUs: this process's wall clock − its forwardAtUs clock (lib/clients.ts wallOffsetUs).
process.stdout.write(`LATENTWATCH_READY ${JSON.stringify({ url: daemon.url, pid: process.pid, clockOffsetUs: wallOffsetUs() })}\n`);
const stop = () => {
  void daemon.close().then(
    () => process.exit(0),
    (e: unknown) => {
      process.stderr.write(`close failed: ${String(e)}\n`);
      process.exit(1);
    },
  );
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
