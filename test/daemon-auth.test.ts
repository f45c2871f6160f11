import { describe, expect, it } from 'vitest';
import type { LatentwatchError } from '../src/errors.js';
import { Authenticator, extractToken, requireInjection } from '../src/daemon/auth.js';

function code(fn: () => unknown): [string, number] {
  try {
    fn();
  } catch (e) {
    return [(e as LatentwatchError).code, (e as LatentwatchError).status];
  }
  return ['none', 0];
}

describe('auth', () => {
  const auth = new Authenticator({ apiKeys: ['user-1', 'user-2'], adminKey: 'the-admin' });

  it('matches keys exactly, whatever their lengths (compared as digests, in constant time)', () => {
    const k = new Authenticator({ apiKeys: ['abc', 'abcdefgh'], adminKey: 'admin-key' });
    expect(k.identify('abc')).toBe('user');
    expect(k.identify('abcdefgh')).toBe('user');
    expect(k.identify('abd')).toBeNull();
    expect(k.identify('abcdef')).toBeNull();
    expect(k.identify('ab')).toBeNull();
    expect(k.identify('')).toBeNull();
    expect(k.identify('admin-key')).toBe('admin');
    expect(k.identify('admin-ke')).toBeNull();
  });

  it('reads a bearer header, else the token query parameter', () => {
    expect(extractToken({ authorization: 'Bearer k1' })).toBe('k1');
    expect(extractToken({ authorization: 'bearer   k1 ' })).toBe('k1');
    expect(extractToken({ authorization: 'Basic xyz' }, 'q')).toBe('q');
    expect(extractToken({}, '')).toBeUndefined();
    expect(extractToken({})).toBeUndefined();
  });

  it('users and the admin pass user routes; coded 401s otherwise', () => {
    expect(auth.authenticate('user-2')).toEqual({ role: 'user', authenticated: true });
    expect(auth.authenticate('the-admin')).toEqual({ role: 'admin', authenticated: true });
    expect(code(() => auth.authenticate(undefined))).toEqual(['LW_ERR_AUTH_MISSING_KEY', 401]);
    expect(code(() => auth.authenticate('user-3'))).toEqual(['LW_ERR_AUTH_INVALID_KEY', 401]);
  });

  it('injection: 401 without a valid key (authenticate), 403 with a user key, and it must be enabled', () => {
    const inject = (token: string | undefined, allow: boolean) => () => requireInjection(auth.authenticate(token), allow);
    expect(inject('the-admin', true)).not.toThrow();
    expect(code(inject(undefined, true))).toEqual(['LW_ERR_AUTH_MISSING_KEY', 401]);
    expect(code(inject('nope', true))).toEqual(['LW_ERR_AUTH_INVALID_KEY', 401]);
    expect(code(inject('user-1', true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    expect(code(inject('the-admin', false))).toEqual(['LW_ERR_AUTH_INJECTION_DISABLED', 403]);
    expect(code(inject('user-1', false))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
  });

  it('open daemon: anyone is a user, admin still needs the admin key', () => {
    const open = new Authenticator({ apiKeys: [], adminKey: 'the-admin' });
    expect(open.open).toBe(true);
    expect(open.authenticate(undefined)).toEqual({ role: 'user', authenticated: false });
    expect(open.authenticate('anything')).toEqual({ role: 'user', authenticated: false });
    expect(open.authenticate('the-admin').role).toBe('admin');
    expect(code(() => requireInjection(open.authenticate(undefined), true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    expect(code(() => requireInjection(open.authenticate('wrong'), true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    expect(() => requireInjection(open.authenticate('the-admin'), true)).not.toThrow();
    const none = new Authenticator({ apiKeys: [], adminKey: null });
    expect(code(() => requireInjection(none.authenticate('x'), true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
  });
});
