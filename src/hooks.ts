/**
 * Hook-point names (TransformerLens style) and the graph names built from them: a tap's output is
 * named after its hook, an injection port is `inject.<hook>`. One place builds names; the engine
 * checks them against a session's real names at load.
 */
import { lwError } from './errors.js';

export function residPost(layer: number): string {
  return `blocks.${layer}.hook_resid_post`;
}

/** Name of the graph input that adds into the given hook point. */
export function injectPort(hook: string): string {
  return `inject.${hook}`;
}

const RESID_POST = /^blocks\.(\d+)\.hook_resid_post$/;

/** Layer index of a `blocks.L.hook_resid_post` name; coded error otherwise. */
export function parseResidPost(hook: string): number {
  const m = RESID_POST.exec(hook);
  if (!m) throw lwError('LW_ERR_ENGINE_HOOK_UNKNOWN', `${hook} (expected blocks.L.hook_resid_post)`);
  return Number(m[1]);
}
