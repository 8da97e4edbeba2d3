#!/usr/bin/env node
// Builds the optional oneDNN addon native/build/Release/deq_native.node with node-gyp, when Debian's
// libdnnl-dev (oneDNN headers and library) is installed. Run by `npm ci` / `npm install` (the root package's
// `install` script) and by `npm run build:native`.
//
// Without the library, or when the build fails, it prints ONE line and exits 0: installing effect-deq never
// fails because of the optional kernels (pure wasm stays the default). `--force` (npm run build:native) exits 1
// instead, with the compiler output, so a developer sees why.
import { spawnSync } from "node:child_process"
import { existsSync, rmSync, writeFileSync } from "node:fs"
import { dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const force = process.argv.includes("--force")
const addon = join(here, "build", "Release", "deq_native.node")
const log = join(here, "build.log")
const shown = (p) => relative(process.cwd(), p) || p

const say = (line) => console.log(`effect-deq native: ${line}`)
const skip = (why) => {
  say(`${why}; skipping the oneDNN kernels (the pure wasm kernels are used)`)
  process.exit(force ? 1 : 0)
}

const headers = ["/usr/include/oneapi/dnnl/dnnl.hpp", "/usr/include/dnnl.hpp"]
if (!headers.some((h) => existsSync(h))) skip("oneDNN not found (no /usr/include/oneapi/dnnl/dnnl.hpp; apt-get install libdnnl-dev)")

// the headers of the running node: node-gyp would otherwise try to download them
const nodedir = dirname(dirname(process.execPath))
if (!existsSync(join(nodedir, "include", "node", "node_api.h"))) skip(`Node's headers not found under ${nodedir}/include/node`)

// npm's bundled node-gyp: npm tells its scripts where it is, else find it next to npm itself
const nodeGypCandidates = [
  process.env.npm_config_node_gyp,
  process.env.npm_execpath && join(dirname(process.env.npm_execpath), "..", "node_modules", "node-gyp", "bin", "node-gyp.js"),
  join(nodedir, "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js")
].filter((p) => typeof p === "string" && p.length > 0)
const nodeGyp = nodeGypCandidates.find((p) => existsSync(p))
if (nodeGyp === undefined) skip("node-gyp not found (looked for npm's bundled copy)")

const run = spawnSync(process.execPath, [nodeGyp, "rebuild", `--nodedir=${nodedir}`], {
  cwd: here,
  encoding: "utf8",
  stdio: ["ignore", "pipe", "pipe"]
})
const output = `${run.stdout ?? ""}${run.stderr ?? ""}${run.error ? String(run.error) : ""}`
if (run.status !== 0 || !existsSync(addon)) {
  writeFileSync(log, output)
  if (force) process.stderr.write(output)
  rmSync(addon, { force: true })
  skip(`the build failed (node-gyp exit ${run.status}; output in ${shown(log)})`)
}
rmSync(log, { force: true })
say(`built ${shown(addon)}: oneDNN kernels on (DEQ_NATIVE=0 turns them off)`)
