/** The `latentwatch` command: one subcommand per verb, each with --help. Errors print their code. */
import { isLatentwatchError } from '../errors.js';
import type { Command } from './args.js';
import { activationsCommand, buildCommand, generateCommand } from './engine-commands.js';
import { probeCommands } from './probe-commands.js';
import { serveCommand } from './serve-command.js';

const commands: Command[] = [serveCommand, buildCommand, generateCommand, activationsCommand, ...probeCommands];

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
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) {
    process.stderr.write(`LW_ERR_CLI_USAGE: unknown command ${name}\n\n${usage()}`);
    return 2;
  }
  try {
    await cmd.run(rest);
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
