import { describe, expect, it } from 'vitest';
import type { LatentwatchError } from '../src/errors.js';
import { Authenticator, extractToken, requireInjection } from '../src/daemon/auth.js';
import { loadConfig, namedApiKeys } from '../src/daemon/config.js';

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
    expect(auth.authenticate('user-2')).toEqual({ role: 'user', authenticated: true, tenant: 'key-2' });
    expect(auth.authenticate('the-admin')).toEqual({ role: 'admin', authenticated: true, tenant: 'admin' });
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
    expect(open.authenticate(undefined)).toEqual({ role: 'user', authenticated: false, tenant: 'anonymous' });
    expect(open.authenticate('anything')).toEqual({ role: 'user', authenticated: false, tenant: 'anonymous' });
    expect(open.authenticate('the-admin').role).toBe('admin');
    expect(code(() => requireInjection(open.authenticate(undefined), true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    expect(code(() => requireInjection(open.authenticate('wrong'), true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    expect(() => requireInjection(open.authenticate('the-admin'), true)).not.toThrow();
    const none = new Authenticator({ apiKeys: [], adminKey: null });
    expect(code(() => requireInjection(none.authenticate('x'), true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
  });

  it('named keys: the name is the tenant; bare keys are named by position; a user key reads only its own alerts', () => {
    const named = new Authenticator({ apiKeys: [{ name: 'alice', key: 'ka' }, 'kb'], adminKey: 'adm' });
    expect(named.authenticate('ka')).toEqual({ role: 'user', authenticated: true, tenant: 'alice' });
    expect(named.authenticate('kb').tenant).toBe('key-2');
    expect(named.alertTenant(named.authenticate('ka'))).toBe('alice');
    expect(named.alertTenant(named.authenticate('adm'))).toBeUndefined();
    const open = new Authenticator({ apiKeys: [], adminKey: null });
    expect(open.alertTenant(open.authenticate(undefined))).toBeUndefined();
  });
});

describe('config: named keys', () => {
  const load = (env: Record<string, string>) => loadConfig({ env: { LATENTWATCH_HOST: '127.0.0.1', ...env } });
  it('LATENTWATCH_API_KEYS=name:key,… names keys; LATENTWATCH_API_KEY=k1,k2 names them key-1, key-2', () => {
    expect(namedApiKeys(load({ LATENTWATCH_API_KEYS: 'alice:ka, bob:k:b' }).config)).toEqual([
      { name: 'alice', key: 'ka' },
      { name: 'bob', key: 'k:b' },
    ]);
    expect(namedApiKeys(load({ LATENTWATCH_API_KEY: 'k1,k2' }).config)).toEqual([
      { name: 'key-1', key: 'k1' },
      { name: 'key-2', key: 'k2' },
    ]);
  });
  it('bad names, reserved names, duplicates and both variables are coded config errors that never show the key', () => {
    const fails = (env: Record<string, string>): string => {
      try {
        load(env);
      } catch (e) {
        expect((e as LatentwatchError).code).toBe('LW_ERR_CONFIG_INVALID');
        return (e as Error).message;
      }
      throw new Error('loaded');
    };
    expect(fails({ LATENTWATCH_API_KEYS: 'secret-without-name' })).not.toContain('secret-without-name');
    expect(fails({ LATENTWATCH_API_KEYS: 'admin:ka' })).toContain('reserved');
    expect(fails({ LATENTWATCH_API_KEYS: 'a:ka,a:kb' })).toContain('given twice');
    expect(fails({ LATENTWATCH_API_KEYS: 'a:dup-secret,b:dup-secret' })).not.toContain('dup-secret');
    expect(fails({ LATENTWATCH_API_KEYS: 'a:ka', LATENTWATCH_API_KEY: 'kb' })).toContain('not both');
  });
});
