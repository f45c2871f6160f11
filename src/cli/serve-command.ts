/** `latentwatch serve`: the monitoring daemon. */
import { loadConfig, processEnv, FLAGS } from '../daemon/config.js';
import { startDaemon } from '../daemon/daemon.js';
import { startTelemetryFromEnv } from '../daemon/tracing.js';
import type { Command } from './args.js';

export const serveCommand: Command = {
  name: 'serve',
  usage: `
latentwatch serve [--model DIR] [--probe FILE ...] [--config FILE] [--port N] [options]
  With no --model, serves the built-in default model (models/qwen2-code-16m) and its probes.
  Environment: LATENTWATCH_API_KEY, LATENTWATCH_ADMIN_KEY, LATENTWATCH_ALLOW_INJECTION=1,
  LATENTWATCH_CONFIG, LATENTWATCH_PORT, LATENTWATCH_HOST; OTEL_EXPORTER_OTLP_ENDPOINT turns on traces.
  Proxy mode: --upstream http://HOST:PORT/v1 forwards the API to an OpenAI-compatible server (vLLM…)
  and scores its answers on this replica (LATENTWATCH_UPSTREAM_URL; its key: --upstream-key-env NAME).
  Options:
${Object.entries(FLAGS)
  .map(([flag, f]) => `    --${flag.padEnd(22)} ${f.help}`)
  .join('\n')}`,
  async run(argv) {
    if (argv.includes('--help') || argv.includes('-h')) {
      process.stdout.write(this.usage.trimStart() + '\n');
      return;
    }
    const env = processEnv();
    const { config, notices } = loadConfig({ env, argv });
    const telemetry = await startTelemetryFromEnv(env);
    const daemon = await startDaemon(config, telemetry ? [...notices, `exporting traces to ${telemetry.endpoint}`] : notices);
    daemon.app.log.info(`listening on ${daemon.url}`);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        daemon.app.log.info(`${signal}: draining (deadline ${config.shutdown.deadlineSeconds}s)`);
        void daemon
          .close()
          .then(() => telemetry?.shutdown())
          .finally(resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      // SIGHUP (a closed terminal, a reload habit) would otherwise kill the daemon mid-stream; it reloads nothing, so it is ignored.
      process.on('SIGHUP', () => daemon.app.log.warn('SIGHUP ignored: the daemon does not reload its configuration (SIGTERM drains and stops it)'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
  },
};
