/**
 * The one command-line flag parser: node:util parseArgs, with problems reported as coded errors that
 * name the offending flag (`details.flag`). The CLI commands (src/cli/args.ts, LW_ERR_CLI_USAGE)
 * and `latentwatch serve`'s config layer (src/daemon/config.ts, LW_ERR_CONFIG_FLAG_UNKNOWN) both
 * use it; it lives here because src/daemon may not import src/cli.
 *
 * Rules (parseArgs' strict mode, with our messages): options only, no positionals; a string option
 * takes `--flag value` or `--flag=value`, and a separate value may not look like a flag (write
 * `--flag=-x` for that); a boolean option takes no value.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { lwError, type ErrorCode } from './errors.js';

export type FlagOptions = NonNullable<ParseArgsConfig['options']>;

/** One option as given, in command-line order (what a layered config needs: the last one wins). */
export interface FlagToken {
  /** The option's long name, e.g. 'port' for `--port 80` and 'help' for `-h`. */
  name: string;
  /** What the user typed, e.g. '--port' or '-h'. */
  rawName: string;
  /** The value of a string option; undefined for a boolean one. */
  value: string | undefined;
}

/** parseArgs' own typing of the values of `options` under strict parsing. */
export type FlagValues<T extends FlagOptions> = ReturnType<typeof parseArgs<{ options: T; strict: true; allowPositionals: false }>>['values'];

export function parseCommandLine<T extends FlagOptions>(argv: readonly string[], options: T, code: ErrorCode): { values: FlagValues<T>; tokens: FlagToken[] } {
  // Non-strict so that every problem comes back as a token we can name; the checks below are
  // strict mode's, so nothing is accepted that strict parsing would refuse.
  const parsed = parseArgs({ args: [...argv], options, strict: false, allowPositionals: true, tokens: true });
  const tokens: FlagToken[] = [];
  for (const t of parsed.tokens) {
    if (t.kind === 'positional') throw lwError(code, `unexpected argument ${JSON.stringify(t.value)}`, { flag: t.value });
    if (t.kind === 'option-terminator') throw lwError(code, 'unexpected argument "--"', { flag: '--' });
    const spec = Object.hasOwn(options, t.name) ? options[t.name] : undefined;
    if (spec === undefined) throw lwError(code, `unknown flag ${t.rawName}`, { flag: t.rawName });
    if (spec.type === 'boolean') {
      if (t.value !== undefined) throw lwError(code, `${t.rawName} takes no value`, { flag: t.rawName });
    } else if (t.value === undefined || (!t.inlineValue && t.value.length > 1 && t.value.startsWith('-'))) {
      throw lwError(code, `${t.rawName} needs a value (write ${t.rawName}=VALUE for one that starts with '-')`, { flag: t.rawName });
    }
    tokens.push({ name: t.name, rawName: t.rawName, value: t.value });
  }
  return { values: parsed.values as FlagValues<T>, tokens };
}
