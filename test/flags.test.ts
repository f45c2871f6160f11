import { describe, expect, it } from 'vitest';
import { parseCommandLine } from '../src/flags.js';
import { thrown } from './helpers.js';

const OPTIONS = { model: { type: 'string' }, probe: { type: 'string', multiple: true }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } as const;

describe('parseCommandLine (the one flag parser)', () => {
  it('returns typed values and the options in command-line order', () => {
    const { values, tokens } = parseCommandLine(['--probe', 'a', '--json', '--model=m', '--probe=b', '-h'], OPTIONS, 'LW_ERR_CLI_USAGE');
    expect(values).toEqual({ probe: ['a', 'b'], json: true, model: 'm', help: true });
    expect(tokens.map((t) => [t.name, t.rawName, t.value])).toEqual([
      ['probe', '--probe', 'a'],
      ['json', '--json', undefined],
      ['model', '--model', 'm'],
      ['probe', '--probe', 'b'],
      ['help', '-h', undefined],
    ]);
  });

  it('a value starting with - is taken only in --flag=VALUE form', () => {
    expect(parseCommandLine(['--model=-x'], OPTIONS, 'LW_ERR_CLI_USAGE').values.model).toBe('-x');
    expect(thrown(() => parseCommandLine(['--model', '-x'], OPTIONS, 'LW_ERR_CLI_USAGE')).details?.flag).toBe('--model');
  });

  it('throws the caller’s code, naming the offending flag', () => {
    const cases: Array<[string[], string, RegExp]> = [
      [['--nope'], '--nope', /unknown flag --nope/],
      [['-x'], '-x', /unknown flag -x/],
      [['--model'], '--model', /--model needs a value/],
      [['--json=yes'], '--json', /--json takes no value/],
      [['stray'], 'stray', /unexpected argument "stray"/],
      [['--', 'x'], '--', /unexpected argument "--"/],
    ];
    for (const [argv, flag, message] of cases) {
      for (const code of ['LW_ERR_CLI_USAGE', 'LW_ERR_CONFIG_FLAG_UNKNOWN'] as const) {
        const e = thrown(() => parseCommandLine(argv, OPTIONS, code));
        expect(e.code).toBe(code);
        expect(e.details?.flag).toBe(flag);
        expect(e.message).toMatch(message);
      }
    }
  });

  it('an option named like an Object.prototype key is still unknown', () => {
    expect(thrown(() => parseCommandLine(['--constructor'], OPTIONS, 'LW_ERR_CLI_USAGE')).details?.flag).toBe('--constructor');
  });
});
