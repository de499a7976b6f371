import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Real sandboxes on a 2-core machine: two files at once keeps timings honest.
    maxWorkers: 2,
    // `npm test` (scripts/test.mjs) adds a JSON reporter per run and prints the closing line.
    reporters: ['default'],
  },
});
