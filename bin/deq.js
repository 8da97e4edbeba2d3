#!/usr/bin/env node
// The `deq` command: runs the TypeScript entry through tsx so no build step is needed.
import { spawnSync } from "node:child_process"
import { createRequire } from "node:module"
import { fileURLToPath } from "node:url"
import path from "node:path"

const require = createRequire(import.meta.url)
const tsx = require.resolve("tsx/cli")
const entry = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "src", "bin.ts")
// the child handles Ctrl-C itself (it saves a checkpoint first): the wrapper must outlive it, then pass its code on
process.on("SIGINT", () => {})
process.on("SIGTERM", () => {})
const result = spawnSync(process.execPath, [tsx, entry, ...process.argv.slice(2)], { stdio: "inherit" })
process.exit(result.status ?? (result.signal === "SIGINT" ? 130 : 1))
