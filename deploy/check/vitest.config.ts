import { defineConfig } from 'vitest/config';

// `npm run deploy:check`: the chart, dashboards and alert rules (kept out of `npm test`; CI runs both)
export default defineConfig({
  test: {
    include: ['deploy/check/**/*.test.ts'],
    testTimeout: 180_000,
    hookTimeout: 180_000,
    maxWorkers: 2,
    env: { SANA_LOG_LEVEL: 'silent' },
  },
});
