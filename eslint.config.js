import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'models/**', 'grafana/**/*.json'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Only src/engine may import the runtime (DESIGN.md: one file owns the runtime).
      'no-restricted-imports': ['error', { paths: [{ name: 'onnxruntime-node', message: 'Only src/engine/runtime.ts imports onnxruntime-node.' }] }],
    },
  },
  { files: ['src/engine/runtime.ts'], rules: { 'no-restricted-imports': 'off' } },
);
