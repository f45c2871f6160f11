import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { lwError, type LatentwatchError } from '../src/errors.js';
import { Authenticator, extractToken, keysEqual, sendHttpError, toHttpError } from '../src/daemon/auth.js';

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

  it('compares keys in constant time, whatever their lengths', () => {
    expect(keysEqual('abc', 'abc')).toBe(true);
    expect(keysEqual('abc', 'abd')).toBe(false);
    expect(keysEqual('abc', 'abcdef')).toBe(false);
    expect(keysEqual('', '')).toBe(true);
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

  it('admin operations: 401 without a valid key, 403 with a user key, injection needs it enabled', () => {
    expect(auth.requireAdmin('the-admin').role).toBe('admin');
    expect(code(() => auth.requireAdmin(undefined))).toEqual(['LW_ERR_AUTH_MISSING_KEY', 401]);
    expect(code(() => auth.requireAdmin('nope'))).toEqual(['LW_ERR_AUTH_INVALID_KEY', 401]);
    expect(code(() => auth.requireAdmin('user-1'))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    expect(auth.requireInjection('the-admin', true).role).toBe('admin');
    expect(code(() => auth.requireInjection('the-admin', false))).toEqual(['LW_ERR_AUTH_INJECTION_DISABLED', 403]);
    expect(code(() => auth.requireInjection('user-1', true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
  });

  it('open daemon: anyone is a user, admin still needs the admin key', () => {
    const open = new Authenticator({ apiKeys: [], adminKey: 'the-admin' });
    expect(open.open).toBe(true);
    expect(open.authenticate(undefined)).toEqual({ role: 'user', authenticated: false });
    expect(open.authenticate('anything')).toEqual({ role: 'user', authenticated: false });
    expect(open.authenticate('the-admin').role).toBe('admin');
    expect(code(() => open.requireAdmin(undefined))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    expect(code(() => open.requireAdmin('wrong'))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
    const none = new Authenticator({ apiKeys: [], adminKey: null });
    expect(code(() => none.requireInjection('x', true))).toEqual(['LW_ERR_AUTH_ADMIN_REQUIRED', 403]);
  });
});

describe('OpenAI error bodies', () => {
  it('maps coded errors with status, type, code and param', () => {
    const h = toHttpError(lwError('LW_ERR_API_BAD_REQUEST', 'messages must be an array', { param: 'messages' }));
    expect(h).toEqual({
      status: 400,
      headers: {},
      body: { error: { message: 'invalid request: messages must be an array', type: 'invalid_request_error', code: 'LW_ERR_API_BAD_REQUEST', param: 'messages' } },
    });
    expect(toHttpError(lwError('LW_ERR_AUTH_MISSING_KEY'))).toMatchObject({ status: 401, headers: { 'www-authenticate': 'Bearer realm="latentwatch"' }, body: { error: { type: 'authentication_error' } } });
    expect(toHttpError(lwError('LW_ERR_AUTH_ADMIN_REQUIRED')).body.error.type).toBe('permission_error');
    expect(toHttpError(lwError('LW_ERR_API_QUEUE_FULL', undefined, { retryAfterSeconds: 2.5 }))).toMatchObject({ status: 429, headers: { 'retry-after': '3' }, body: { error: { type: 'rate_limit_error' } } });
    expect(toHttpError(lwError('LW_ERR_API_MODEL_NOT_FOUND')).body.error.type).toBe('invalid_request_error');
    expect(toHttpError(lwError('LW_ERR_ENGINE_SESSION_FAILED')).body.error.type).toBe('server_error');
    // Anything else: a generic 500 that leaks nothing.
    const internal = toHttpError(new Error('secret path /etc/x'));
    expect(internal.status).toBe(500);
    expect(internal.body.error.code).toBe('LW_ERR_API_INTERNAL');
    expect(internal.body.error.message).not.toContain('secret');
  });

  it("maps fastify's own client errors from a real server", async () => {
    const app = Fastify({ bodyLimit: 1024 });
    app.setErrorHandler((err, _req, reply) => sendHttpError(reply, err));
    app.post('/echo', { schema: { body: { type: 'object', required: ['model'], properties: { model: { type: 'string' } } } } }, async (req) => req.body);
    const post = (payload: string, type = 'application/json') => app.inject({ method: 'POST', url: '/echo', payload, headers: { 'content-type': type } });
    let r = await post('{"model": ');
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toMatchObject({ code: 'LW_ERR_API_INVALID_JSON', type: 'invalid_request_error' });
    r = await post(JSON.stringify({ model: 'x'.repeat(5000) }));
    expect(r.statusCode).toBe(413);
    expect(r.json().error.code).toBe('LW_ERR_API_BODY_TOO_LARGE');
    r = await post('model', 'text/csv');
    expect(r.statusCode).toBe(415);
    expect(r.json().error.code).toBe('LW_ERR_API_UNSUPPORTED_MEDIA_TYPE');
    r = await post(JSON.stringify({ model: { a: 1 } })); // (fastify coerces 3 to '3')
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toMatchObject({ code: 'LW_ERR_API_BAD_REQUEST', param: 'model' });
    r = await post(JSON.stringify({}));
    expect(r.json().error).toMatchObject({ code: 'LW_ERR_API_BAD_REQUEST', param: 'model' });
    await app.close();
  });
});
