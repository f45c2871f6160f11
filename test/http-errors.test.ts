import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { lwError } from '../src/errors.js';
import { installErrorHandlers, toHttpError } from '../src/daemon/http-errors.js';

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
    installErrorHandlers(app);
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
    r = await app.inject({ method: 'GET', url: '/nowhere?x=1' });
    expect(r.statusCode).toBe(404);
    expect(r.json().error).toMatchObject({ code: 'LW_ERR_API_NOT_FOUND', message: expect.stringContaining('GET /nowhere') });
    await app.close();
  });
});
