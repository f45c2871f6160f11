/**
 * Hook-point names (TransformerLens style) and the table mapping them to graph inputs/outputs.
 * One place builds names; the engine checks this table against a session's real names at load.
 */
import { lwError } from './errors.js';

export type HookKind = 'resid_post';

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

/** Graph output name for a tap: the hook name itself. */
export function tapOutput(hook: string): string {
  return hook;
}
