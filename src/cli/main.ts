/**
 * The `latentwatch` command: one subcommand per verb, each with --help. Errors print their code.
 * Commands load on demand, so `serve` never loads the offline lab (trials, fitting, reports).
 */
import { isLatentwatchError } from '../errors.js';
import type { Command } from './args.js';

interface Entry {
  name: string;
  summary: string;
  load(): Promise<Command>;
}

const commands: Entry[] = [
  { name: 'serve', summary: 'serve the model (OpenAI-compatible API) with per-token probes, alerts and metrics', load: async () => (await import('./serve-command.js')).serveCommand },
  { name: 'build', summary: 'convert a checkpoint to a cached ONNX graph with taps and injection ports', load: async () => (await import('./engine-commands.js')).buildCommand },
  { name: 'generate', summary: 'generate text from a prompt or a chat message', load: async () => (await import('./engine-commands.js')).generateCommand },
  { name: 'activations', summary: 'write the residual stream at one hook for every prompt token to a safetensors file', load: async () => (await import('./engine-commands.js')).activationsCommand },
  { name: 'concepts', summary: 'compute concept vectors and contrast-pair directions for a model', load: async () => (await import('./probe-commands.js')).conceptsCommand },
  { name: 'trials', summary: 'run concept-injection trials and controls into a resumable dataset', load: async () => (await import('./probe-commands.js')).trialsCommand },
  { name: 'train-probe', summary: 'train a probe on a trial dataset (concept-match by default) and write a *.probe.json', load: async () => (await import('./probe-commands.js')).trainProbeCommand },
  { name: 'eval-probe', summary: 'evaluate a probe on the held-out concepts and controls of a trial dataset', load: async () => (await import('./probe-commands.js')).evalProbeCommand },
  { name: 'report', summary: 'write report.md, report.json and SVG charts for a trial dataset', load: async () => (await import('./probe-commands.js')).reportCommand },
  { name: 'fit-anomaly', summary: 'fit the unsupervised generic-injection detector on clean prompts (no injection trials)', load: async () => (await import('./probe-commands.js')).fitAnomalyCommand },
  { name: 'generic-report', summary: 'fit and evaluate generic-injection detectors across vector families; report + shipped probe', load: async () => (await import('./probe-commands.js')).genericReportCommand },
  { name: 'calibrate-probe', summary: "reset a probe's threshold on clean requests scored as the daemon scores them (prompt included)", load: async () => (await import('./probe-commands.js')).calibrateProbeCommand },
];

function usage(): string {
  const w = Math.max(...commands.map((c) => c.name.length));
  return `latentwatch: serve a Qwen model and watch its residual stream\n\nusage: latentwatch <command> [options]   (latentwatch <command> --help)\n\n${commands
    .map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`)
    .join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name ? 0 : 1;
  }
  const entry = commands.find((c) => c.name === name);
  if (!entry) {
    process.stderr.write(`LW_ERR_CLI_USAGE: unknown command ${name}\n\n${usage()}`);
    return 2;
  }
  try {
    await (await entry.load()).run(rest);
    return 0;
  } catch (e) {
    if (isLatentwatchError(e)) {
      process.stderr.write(`${e.code}: ${e.message}\n`);
      return e.code === 'LW_ERR_CLI_USAGE' ? 2 : 1;
    }
    throw e;
  }
}

process.exitCode = await main(process.argv.slice(2));
