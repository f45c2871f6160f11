import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERRORS, LatentwatchError, lwError } from '../src/errors.js';

const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
const documented = new Map(
  [...doc.matchAll(/^\| (LW_ERR_[A-Z0-9_]+) \| (\d{3}) \|/gm)].map((m) => [m[1], Number(m[2])]),
);

describe('error registry', () => {
  it('documents every code with its status, and documents nothing else', () => {
    const codes = Object.keys(ERRORS);
    for (const code of codes) expect(documented.get(code), code).toBe(ERRORS[code as keyof typeof ERRORS].status);
    expect([...documented.keys()].sort()).toEqual([...codes].sort());
  });

  it('codes follow LW_ERR_<AREA>_<WHAT> and statuses are HTTP error statuses', () => {
    for (const [code, spec] of Object.entries(ERRORS)) {
      expect(code).toMatch(/^LW_ERR_[A-Z0-9]+_[A-Z0-9_]+$/);
      expect(spec.status).toBeGreaterThanOrEqual(400);
      expect(spec.status).toBeLessThan(600);
    }
  });

  it('errors carry code, status and detail', () => {
    const e = lwError('LW_ERR_MODEL_NOT_FOUND', '/nope');
    expect(e).toBeInstanceOf(LatentwatchError);
    expect(e.code).toBe('LW_ERR_MODEL_NOT_FOUND');
    expect(e.status).toBe(404);
    expect(e.message).toContain('/nope');
  });
});
