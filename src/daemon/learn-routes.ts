/**
 * fastify plugin for /v1/admin/learn: POST starts learning a detector from the next N clean
 * requests, GET reports progress (docs/daemon.md, "Learning from your traffic"). Both need the
 * admin key: a missing or wrong key is a 401, a user key a 403, and with no admin key configured
 * nobody can learn. Errors go through the root handler (http-errors.ts).
 */
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify';
import { lwError } from '../errors.js';
import { requireAdmin, type Authenticator } from './auth.js';
import type { FrozenConfig } from './config.js';
import type { LearningService } from './learning.js';
import { principalOf } from './request-guard.js';

export const LEARN_PATH = '/v1/admin/learn';

export interface LearnRoutesOptions {
  auth: Authenticator;
  learning: LearningService;
  config: FrozenConfig;
}

export const learnRoutes: FastifyPluginAsync<LearnRoutesOptions> = async (app: FastifyInstance, opts: LearnRoutesOptions) => {
  // config.auth: the request guard authenticates before the body is read and applies the Origin
  // check, as on every API route; the handlers then require the admin role.
  const adminOnly = (req: FastifyRequest) => requireAdmin(principalOf(req, opts.auth), 'learning');
  app.get(LEARN_PATH, { config: { auth: true } }, async (req) => {
    adminOnly(req);
    return opts.learning.status();
  });
  app.post(LEARN_PATH, { config: { auth: true } }, async (req, reply) => {
    adminOnly(req);
    const body = req.body;
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw lwError('LW_ERR_API_BAD_REQUEST', 'expected a JSON object {"probe", "requests", "target_fpr"}');
    const b = body as Record<string, unknown>;
    const unknown = Object.keys(b).find((k) => !['probe', 'requests', 'target_fpr'].includes(k));
    if (unknown !== undefined) throw lwError('LW_ERR_API_BAD_REQUEST', `unknown field ${JSON.stringify(unknown)}`, { param: unknown });
    if (b.probe !== undefined && typeof b.probe !== 'string') throw lwError('LW_ERR_API_BAD_REQUEST', 'probe must be a string', { param: 'probe' });
    const status = opts.learning.start(
      {
        probe: (b.probe as string | undefined) ?? opts.config.learn.probe,
        requests: b.requests as number,
        targetFpr: (b.target_fpr as number | undefined) ?? opts.config.learn.targetFpr,
      },
      'api',
    );
    reply.code(202);
    return status;
  });
};
