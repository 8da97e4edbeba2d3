import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // tfjs backends are process-global: one file per worker, no shared state across files
    pool: "forks",
    testTimeout: 120_000,
    hookTimeout: 120_000
  }
})
