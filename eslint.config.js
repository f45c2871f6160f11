import tseslint from 'typescript-eslint';

/**
 * Imports run one way (docs/architecture.md): model → engine → probes → daemon → cli, with the
 * offline lab beside the daemon (it may use model, engine and probes; nothing at run time uses it).
 * Each layer lists what it must not import; the shared leaves (errors, hooks, rng, paths,
 * atomic-write) may be imported by all.
 */
const ORT = { name: 'onnxruntime-node', message: 'Only the runtime (src/engine/runtime.ts and its session thread) imports onnxruntime-node.' };
const layer = (files, forbidden, why) => ({
  files,
  rules: {
    'no-restricted-imports': ['error', { paths: [ORT], patterns: [{ group: forbidden.map((f) => `**/${f}/*`), message: why }] }],
  },
});

export default tseslint.config(
  // .dev, .gl, .lat: ignored device carry folders (bundles, packages), .scratch: local notes; none is in a clone.
  { ignores: ['dist/**', 'node_modules/**', 'models/**', 'grafana/**/*.json', '.dev/**', '.gl/**', '.lat/**', '.scratch/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Only src/engine may import the runtime (DESIGN.md: one file owns the runtime).
      'no-restricted-imports': ['error', { paths: [ORT] }],
    },
  },
  layer(['src/*.ts'], ['model', 'engine', 'probes', 'daemon', 'lab', 'cli'], 'src/*.ts are shared leaves: they import no package of the project.'),
  layer(['src/model/**'], ['engine', 'probes', 'daemon', 'lab', 'cli'], 'src/model (checkpoints → graphs) imports no later layer.'),
  layer(['src/engine/**'], ['probes', 'daemon', 'lab', 'cli'], 'The engine knows nothing of probes, HTTP or the lab.'),
  layer(['src/probes/**'], ['engine', 'daemon', 'lab', 'cli'], 'src/probes is the per-token runtime: tensors and hook names, no sessions, no offline lab.'),
  layer(['src/daemon/**'], ['lab', 'cli'], 'The daemon loads no lab code (trials, fitting, reports): `latentwatch serve` stays small.'),
  layer(['src/lab/**'], ['daemon', 'cli'], 'The lab is offline: it uses model, engine and probes, never the daemon.'),
  { files: ['src/engine/runtime.ts', 'src/engine/session-worker.ts', 'src/engine/wire-tensor.ts'], rules: { 'no-restricted-imports': 'off' } },
);
