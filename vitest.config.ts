import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // model tests are CPU-bound and the CI machine has 2 cores
    maxWorkers: 2,
    env: { SANA_LOG_LEVEL: 'silent' },
  },
});
