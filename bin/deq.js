#!/usr/bin/env node
// The `deq` command. It runs in this process, never behind a relaying child: Ctrl-C must reach the command's own
// handler, which saves a checkpoint before exiting (a relay that kills a slow child loses it).
// - An installed package runs the compiled dist/bin.js with plain node.
// - A clone runs src/bin.ts through tsx's loader registered in this process (no build step needed), unless dist/
//   was built after the last change to src/ (`npm run build`): then dist/ starts faster and is the same code.
//   `deq bench` always takes the first way: the benchmarks (bench/, not built) are TypeScript.
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const dist = path.join(root, "dist", "bin.js")
// written by `npm run build` after tsc succeeded: a build in progress or one that failed is never run
const built = path.join(root, "dist", ".built")
const src = path.join(root, "src", "bin.ts")

/** The newest modification time of a file under `dir` (0 when there is none). */
const newest = (dir) => {
  let t = 0
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name)
    t = Math.max(t, entry.isDirectory() ? newest(p) : fs.statSync(p).mtimeMs)
  }
  return t
}

const fresh = (file, sources) => fs.existsSync(file) && fs.statSync(file).mtimeMs >= newest(sources)

const fail = (message) => {
  process.stderr.write(`deq: error: ${message}\n`)
  process.exit(1)
}

if (!fs.existsSync(src)) {
  if (!fs.existsSync(dist)) fail(`${dist} is missing: the package was published without its build`)
  await import(pathToFileURL(dist).href)
} else if (fresh(built, path.dirname(src)) && !process.argv.slice(2).includes("bench")) {
  await import(pathToFileURL(dist).href)
} else {
  let register
  try {
    ;({ register } = await import("tsx/esm/api"))
  } catch {
    fail("running src/ needs tsx (a dev dependency): run `npm ci`, or `npm run build` to run dist/ with plain node")
  }
  register()
  await import(pathToFileURL(src).href)
}
