/**
 * bin/deq.js in a clone without a build: it runs src/bin.ts through tsx's loader registered in its own process,
 * never behind a relaying child (tsx's CLI relay SIGKILLs a child that has not acknowledged SIGINT within about
 * 60 ms, so a training step longer than that lost the checkpoint: issue 16, defect 9). A slow config (batches of
 * 100-800 ms of synchronous tfjs) is interrupted at several points; every interrupt must exit with 130, print the
 * "interrupted" line, log an Interrupted event and leave DIR/last, which the next `--resume` continues from.
 * The installed package's dist/ path is tested in test/Package.test.ts.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type LoggedEvent, readEvents, runUntil, type RunUntilOptions } from "./interrupt.ts"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-bin-"))
// a clone as `git clone` leaves it before any build: bin/ and package.json copied (bin/deq.js finds src/ and dist/
// next to its own directory), the sources and dependencies linked, no dist/
const clone = path.join(tmp, "clone")
const bin = path.join(clone, "bin", "deq.js")
const { NODE_OPTIONS: _, ...inherited } = process.env
const env = { ...inherited, DEQ_BACKEND: "wasm" }

/** 4 epochs x 6 batches; each batch is one synchronous PGD-5 + Broyden-8 step of 100-800 ms on 2 cores. */
const slowConfig = {
  model: { _tag: "fc", hidden: 64, inputShape: [14, 14, 1] },
  data: { name: "synthetic", height: 14, width: 14, trainSize: 384, testSize: 64 },
  solver: { _tag: "broyden", maxIter: 8, tol: 0.0001 },
  attack: { eps: 0.1, stepSize: 0.04, steps: 5 },
  eval: { subset: 64, batchSize: 64, steps: 5 },
  epochs: 4,
  batchSize: 64,
  seed: 5
}

beforeAll(() => {
  fs.mkdirSync(path.join(clone, "bin"), { recursive: true })
  fs.copyFileSync(path.join(root, "bin", "deq.js"), bin)
  fs.copyFileSync(path.join(root, "package.json"), path.join(clone, "package.json"))
  for (const dir of ["src", "presets", "node_modules"]) fs.symlinkSync(path.join(root, dir), path.join(clone, dir))
  fs.writeFileSync(path.join(tmp, "slow.json"), JSON.stringify(slowConfig))
})

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

const since = (events: ReadonlyArray<LoggedEvent>, starts: number) => {
  const i = events.map((e, k) => (e._tag === "Started" ? k : -1)).filter((k) => k >= 0)[starts - 1]
  return i === undefined ? [] : events.slice(i)
}

describe("bin/deq.js chooses what it runs", () => {
  it("dist/ only when its build stamp is newer than every file in src/, src/ otherwise and for bench", () => {
    // a stand-in dist/ that says it ran; the real src/ lists the presets
    const other = path.join(tmp, "stamped")
    fs.mkdirSync(path.join(other, "bin"), { recursive: true })
    fs.mkdirSync(path.join(other, "dist"))
    fs.copyFileSync(bin, path.join(other, "bin", "deq.js"))
    fs.copyFileSync(path.join(root, "package.json"), path.join(other, "package.json"))
    for (const dir of ["src", "presets", "node_modules"]) fs.symlinkSync(path.join(root, dir), path.join(other, dir))
    fs.writeFileSync(path.join(other, "dist", "bin.js"), `console.log("dist " + process.argv.slice(2).join(" "))\n`)
    const deq = (...args: Array<string>) => spawnSync(process.execPath, [path.join(other, "bin", "deq.js"), ...args], { cwd: tmp, env, encoding: "utf8" })
    const stamp = path.join(other, "dist", ".built")
    // no stamp: a build in progress or one that failed
    expect(deq("presets").stdout).toContain("smoke ")
    fs.writeFileSync(stamp, "")
    const future = new Date(Date.now() + 3600_000)
    fs.utimesSync(stamp, future, future)
    expect(deq("presets").stdout).toBe("dist presets\n")
    // bench/ is TypeScript: always from src/ (here it fails on its flag before running anything)
    expect(deq("bench", "--no-such-flag").stdout).not.toContain("dist bench")
    const past = new Date(0)
    fs.utimesSync(stamp, past, past)
    expect(deq("presets").stdout).toContain("smoke ")
  })
})

describe("bin/deq.js without a build", () => {
  it("runs src/ in its own process: Ctrl-C at three points saves a checkpoint each time, --resume continues to the end", async () => {
    const out = path.join(tmp, "run")
    const events = path.join(out, "events.jsonl")
    const options = (when: RunUntilOptions["when"], target?: "group" | "process"): RunUntilOptions => ({
      cwd: tmp, env, events, ...(when !== undefined ? { when } : {}), ...(target !== undefined ? { target } : {}), timeoutMs: 90_000
    })
    const batchesIn = (round: ReadonlyArray<LoggedEvent>) => round.filter((e) => e._tag === "Batch").length
    // the moments: as soon as training has started (the first batch is running), at an epoch's end (its
    // evaluation and checkpoint), and mid-epoch with SIGINT to the process alone rather than to its group
    const rounds: Array<{ args: Array<string>; when: (round: ReadonlyArray<LoggedEvent>) => boolean; target?: "process" }> = [
      { args: ["--config", path.join(tmp, "slow.json"), "--out", out], when: (r) => r.length > 0 },
      { args: ["--resume", out], when: (r) => r.some((e) => e._tag === "Epoch") },
      { args: ["--resume", out], when: (r) => batchesIn(r) >= 2, target: "process" }
    ]
    for (const [k, round] of rounds.entries()) {
      const r = await runUntil(process.execPath, [bin, "train", ...round.args], options((all) => round.when(since(all, k + 1)), round.target))
      expect(r.interrupted, `round ${k + 1} ended before the interrupt:\n${r.stderr}`).toBe(true)
      // no relaying node process between the signal and the command (tsx may run its esbuild service)
      expect(r.children.filter((name) => name.startsWith("node"))).toEqual([])
      expect(r.code, r.stderr).toBe(130)
      expect(r.stderr).toContain(`interrupted: the last checkpoint is in ${path.join(out, "last")}`)
      const all = readEvents(events)
      const last = all.at(-1)!
      expect(last._tag).toBe("Interrupted")
      // the checkpoint holds the position of the last finished batch (0 when the first one had not finished)
      expect(last.step).toBe(all.filter((e) => e._tag === "Batch").at(-1)?.step ?? 0)
      const manifest = JSON.parse(fs.readFileSync(path.join(out, "last", "checkpoint.json"), "utf8"))
      expect(manifest.metadata.step).toBe(last.step)
    }
    const done = await runUntil(process.execPath, [bin, "train", "--resume", out], options(undefined))
    expect(done.code, done.stderr).toBe(0)
    const all = readEvents(events)
    const started = all.filter((e) => e._tag === "Started")
    const saved = all.filter((e) => e._tag === "Interrupted")
    expect(started).toHaveLength(4)
    expect(saved).toHaveLength(3)
    // every resume starts where the interrupt before it saved
    for (let k = 1; k < started.length; k++) {
      expect(started[k]!.resumed).toBe(true)
      expect(started[k]!.step).toBe(saved[k - 1]!.step)
    }
    expect(all.at(-1)!._tag).toBe("Finished")
    expect(all.filter((e) => e._tag === "Batch").at(-1)!.step).toBe(24)
  }, 240_000)
})
