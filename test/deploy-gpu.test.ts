/**
 * The GPU deployment variants (docs/gpu.md): what a GPU node needs is in each of them — the Vulkan
 * loader and libglvnd in the image, the `graphics` driver capability (the NVIDIA runtime mounts the
 * driver's Vulkan ICD only with it), a GPU resource, and the WebGPU provider selected through the
 * daemon's own configuration (checked against its schema).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadConfig } from '../src/daemon/config.js';

const DEPLOY = fileURLToPath(new URL('../deploy/', import.meta.url));
const read = (p: string) => readFileSync(join(DEPLOY, p), 'utf8');
const VULKAN_PACKAGES = ['libvulkan1', 'libglvnd0', 'libegl1', 'libgl1', 'libglx0', 'libopengl0', 'libgles2'];

/** The daemon's config from an environment (what the image or manifest sets), validated by its schema. */
function daemonConfig(env: Record<string, string>) {
  return loadConfig({ env: { LATENTWATCH_API_KEY: 'k', ...env }, argv: [] }).config;
}

describe('deploy: GPU variants', () => {
  it('Dockerfile.gpu installs the Vulkan loader and libglvnd and sets the provider and driver capabilities', () => {
    const df = read('Dockerfile.gpu');
    const runtime = df.slice(df.indexOf('AS runtime'));
    for (const p of VULKAN_PACKAGES) expect(runtime).toMatch(new RegExp(`apt-get install[^\\n]*\\b${p}\\b`));
    const env = Object.fromEntries([...runtime.matchAll(/^\s*(?:ENV\s+)?([A-Z_]+)=(\S+?)\s*\\?$/gm)].map((m) => [m[1], m[2]]));
    expect(env.NVIDIA_DRIVER_CAPABILITIES.split(',')).toEqual(expect.arrayContaining(['compute', 'utility', 'graphics']));
    const cfg = daemonConfig({ LATENTWATCH_PROVIDER: env.LATENTWATCH_PROVIDER, LATENTWATCH_PRECISION: env.LATENTWATCH_PRECISION });
    expect([cfg.provider, cfg.precision]).toEqual(['webgpu', 'int4']);
  });

  it('compose.gpu.yaml asks for an NVIDIA GPU with the graphics capability and builds Dockerfile.gpu', () => {
    const svc = (parseYaml(read('compose.gpu.yaml')) as { services: Record<string, { build: { dockerfile: string }; environment: Record<string, string>; gpus: { driver: string; capabilities: string[] }[] }> }).services.latentwatch;
    expect(svc.build.dockerfile).toBe('deploy/Dockerfile.gpu');
    expect(svc.gpus[0].driver).toBe('nvidia');
    expect(svc.gpus[0].capabilities).toContain('graphics');
    expect(svc.environment.NVIDIA_DRIVER_CAPABILITIES.split(',')).toContain('graphics');
    expect(daemonConfig({ LATENTWATCH_PROVIDER: svc.environment.LATENTWATCH_PROVIDER }).provider).toBe('webgpu');
  });

  it('k8s-gpu patches the deploy/k8s Deployment with one nvidia.com/gpu per pod and the WebGPU provider', () => {
    const kust = parseYaml(read('k8s-gpu/kustomization.yaml')) as { resources: string[]; patches: { path: string }[] };
    expect(kust.resources).toContain('../k8s');
    const patch = parseYaml(read(join('k8s-gpu', kust.patches[0].path))) as {
      kind: string;
      metadata: { name: string };
      spec: { template: { spec: { containers: { name: string; env: { name: string; value: string }[]; resources: { limits: Record<string, number> } }[] } } };
    };
    const base = parseYaml(read('k8s/deployment.yaml').split(/^---$/m).find((d) => /kind: Deployment/.test(d))!) as { metadata: { name: string }; spec: { template: { spec: { containers: { name: string }[] } } } };
    // A strategic-merge patch applies by kind, name and container name.
    expect([patch.kind, patch.metadata.name]).toEqual(['Deployment', base.metadata.name]);
    const c = patch.spec.template.spec.containers[0];
    expect(base.spec.template.spec.containers.map((x) => x.name)).toContain(c.name);
    expect(c.resources.limits['nvidia.com/gpu']).toBe(1);
    const env = Object.fromEntries(c.env.map((e) => [e.name, e.value]));
    expect(env.NVIDIA_DRIVER_CAPABILITIES.split(',')).toContain('graphics');
    expect(daemonConfig({ LATENTWATCH_PROVIDER: env.LATENTWATCH_PROVIDER, LATENTWATCH_PRECISION: env.LATENTWATCH_PRECISION }).provider).toBe('webgpu');
  });
});
