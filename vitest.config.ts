import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // model tests are CPU-bound and the CI machine has 2 cores: two files at a time, each ONNX Runtime session on
    // one thread, so parallel files never oversubscribe the cores
    maxWorkers: 2,
    env: { SANA_LOG_LEVEL: 'silent', SANA_THREADS: '1' },
  },
});
