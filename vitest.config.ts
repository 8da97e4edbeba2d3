import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // tfjs backends are process-global: one file per worker, no shared state across files
    pool: "forks",
    // one thread per batch unless a test asks for more (test/Workers*.test.ts set `workers` explicitly)
    env: { DEQ_WORKERS: "1" },
    testTimeout: 120_000,
    hookTimeout: 120_000
  }
})
