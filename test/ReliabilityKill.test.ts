/**
 * Reliability under kills and refusals (issue 16, defects 3, 7, 8 and 11). A child process trains a smoke-sized
 * config through the CLI and is SIGKILLed at a random point: a random time into training, inside a checkpoint swap
 * (its rename window widened by DEQ_CHECKPOINT_SWAP_DELAY_MS), or while a checkpoint is being written. After every
 * kill the newest logged checkpoint is still found, `deq train --resume` ends byte-identical to an uninterrupted
 * run (last/ and best/), and no temporary or aside directory is left. A refused command writes nothing, and the
 * CLI's error lines name the field or file.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { afterAll, beforeAll } from "vitest"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as Cli from "../src/Cli.ts"
import { loadCheckpoint } from "../src/internal/cli/load.ts"
import { useBackend } from "../src/Tensor.ts"
import { childEnv, events, inSwap, inWrite, kill, killConfig, leftovers, snapshot, spawnTrain, waitFor } from "./fault/kill.ts"
import { counts, seed, tally } from "./fault/mode.ts"

let tmp = ""
let configFile = ""
let reference = ""

/** Runs `deq ...` in this process; returns its exit and what it wrote to stderr. */
const deq = async (...args: Array<string>): Promise<{ ok: boolean; stderr: string }> => {
  let stderr = ""
  const write = process.stderr.write.bind(process.stderr)
  process.stderr.write = ((chunk: unknown) => {
    stderr += String(chunk)
    return true
  }) as typeof process.stderr.write
  try {
    const exit = await Effect.runPromiseExit(Cli.runArgs(args))
    return { ok: Exit.isSuccess(exit), stderr }
  } finally {
    process.stderr.write = write
  }
}

const weights = (dir: string) => fs.readFileSync(path.join(dir, Checkpoint.WEIGHTS))
const position = (dir: string) => {
  const m = JSON.parse(fs.readFileSync(path.join(dir, Checkpoint.MANIFEST), "utf8"))
  return { epoch: m.metadata.epoch, step: m.metadata.step, extra: m.metadata.extra.bestEpoch }
}

beforeAll(async () => {
  process.env["DEQ_BACKEND"] = "wasm"
  await useBackend("wasm")
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-rel-kill-"))
  configFile = path.join(tmp, "kill.json")
  fs.writeFileSync(configFile, JSON.stringify(killConfig))
  reference = path.join(tmp, "reference")
  const r = await deq("train", "--config", configFile, "--out", reference)
  if (!r.ok) throw new Error(`the uninterrupted reference run failed:\n${r.stderr}`)
}, 180_000)

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

/** A small seeded generator for the kill points (mulberry32). */
const random = (s: number) => () => {
  s = (s + 0x6d2b79f5) | 0
  let t = Math.imul(s ^ (s >>> 15), 1 | s)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

describe("SIGKILL at random points, inside the checkpoint swap included", () => {
  it("the newest logged checkpoint is always found; resume ends byte-identical; nothing is left behind", async () => {
    const next = random(seed)
    const modes = ["swap", "random", "write"] as const
    // how long the uninterrupted run trained: random kills land within it
    const logged = events(reference)
    const trainMs = Date.parse(logged.find((e) => e._tag === "Finished")!.time) - Date.parse(logged.find((e) => e._tag === "Started")!.time)
    const stats = {
      attempts: 0, kills: 0, swap: 0, random: 0, write: 0, targetAbsent: 0, resumed: 0, fresh: 0, finishedFirst: 0, identical: 0
    }
    // a child that finished before its kill point is verified too but does not count as a kill
    for (let k = 0; stats.kills < counts.kills && k < 2 * counts.kills; k++) {
      stats.attempts++
      const mode = modes[k % modes.length]!
      const out = path.join(tmp, `kill-${k}`)
      const child = spawnTrain(configFile, out, childEnv(mode === "swap" ? 150 : 10))
      let stderr = ""
      child.stderr!.on("data", (d) => (stderr += String(d)))
      const started = await waitFor(() => events(out).some((e) => e._tag === "Started"), child, 120_000, 20)
      expect(started, `the child did not start:\n${stderr}`).toBe(true)
      let reached = true
      if (mode === "random") {
        await new Promise((r) => setTimeout(r, Math.floor(next() * trainMs)))
      } else {
        // the j-th swap (or write) of the run: last/ from epoch 2 on, and best/ when it improves
        const j = 1 + Math.floor(next() * (mode === "swap" ? 4 : 6))
        const seen = new Set<string>()
        reached = await waitFor(() => {
          if (mode === "swap" ? inSwap(out) : inWrite(out)) for (const n of leftovers(out)) seen.add(n)
          return [...seen].filter((n) => n.includes(mode === "swap" ? ".old-" : ".tmp-")).length >= j &&
            (mode === "swap" ? inSwap(out) : inWrite(out))
        }, child, 120_000, 2)
      }
      const finished = child.exitCode !== null || !reached
      await kill(child)
      if (finished) stats.finishedFirst++
      else {
        stats.kills++
        stats[mode]++
      }
      const what = `kill ${k} (${mode}${finished ? ", had finished" : ""})`

      // never lost: the newest checkpoint the log says was saved is still there (maybe only as a complete copy)
      const last = path.join(out, "last")
      // killed between the swap's renames: last/ is absent and only a copy of it is left
      if (!fs.existsSync(last) && leftovers(out).some((n) => n.startsWith(".last."))) stats.targetAbsent++
      const logged = events(out).filter((e) => e._tag === "Checkpoint" && e.reason === "epoch").at(-1)
      if (logged !== undefined) {
        const found = await Effect.runPromiseExit(Checkpoint.read(last))
        expect(Exit.isSuccess(found), `${what}: the checkpoint of step ${logged.step} is lost`).toBe(true)
        if (Exit.isSuccess(found)) expect(found.value.metadata.step!, what).toBeGreaterThanOrEqual(logged.step)
      }

      // resume (or start over when no checkpoint was complete) and compare with the uninterrupted run
      const resumable = await Effect.runPromise(Checkpoint.present(last))
      const r = resumable ? await deq("train", "--resume", out) : await deq("train", "--config", configFile, "--out", out)
      expect(r.ok, `${what}: ${r.stderr}`).toBe(true)
      if (resumable) stats.resumed++
      else stats.fresh++
      for (const sub of ["last", "best"]) {
        expect(weights(path.join(out, sub)).equals(weights(path.join(reference, sub))), `${what}: ${sub}/weights.bin differs`).toBe(true)
        expect(position(path.join(out, sub)), `${what}: ${sub}`).toEqual(position(path.join(reference, sub)))
      }
      expect(leftovers(out), what).toEqual([])
      stats.identical++
      fs.rmSync(out, { recursive: true, force: true })
    }
    tally("kills", { ...stats, trainMs })
    expect(stats.kills).toBe(counts.kills)
    expect(stats.identical).toBe(stats.attempts)
  }, 3_600_000)
})

describe("refused commands write nothing; error lines name the field or file", () => {
  it("defect 11: a refused --resume with another config leaves the run directory byte for byte as it was", async () => {
    const run = path.join(tmp, "refused")
    fs.cpSync(reference, run, { recursive: true })
    const before = snapshot(run)
    const other = path.join(tmp, "other.json")
    fs.writeFileSync(other, JSON.stringify({ ...killConfig, epochs: 9 }))
    const r = await deq("train", "--resume", run, "--config", other)
    expect(r.ok).toBe(false)
    expect(r.stderr).toMatch(/deq train: error: ConfigError.*epochs/)
    const after = snapshot(run)
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort())
    for (const [file, bytes] of before) expect(after.get(file)!.equals(bytes), file).toBe(true)
  }, 120_000)

  it("defects 3 and 1: a missing dataset and a huge size fail with one line naming the file or field, writing nothing", async () => {
    const missing = path.join(tmp, "missing-data.json")
    fs.writeFileSync(missing, JSON.stringify({ ...killConfig, data: { name: "fashion-mnist", dir: path.join(tmp, "no-such-dir") } }))
    const out = path.join(tmp, "never-created")
    const r = await deq("train", "--config", missing, "--out", out)
    expect(r.ok).toBe(false)
    expect(r.stderr).toContain(`deq train: error: DatasetError (at ${path.join(tmp, "no-such-dir")}): dataset directory missing`)
    expect(fs.existsSync(out)).toBe(false)
    const huge = path.join(tmp, "huge.json")
    fs.writeFileSync(huge, JSON.stringify({ ...killConfig, model: { _tag: "fc", inputShape: [1099511627776, 28, 1] } }))
    const h = await deq("train", "--config", huge, "--out", out)
    expect(h.ok).toBe(false)
    expect(h.stderr).toMatch(/deq train: error: ConfigError: .*model\.inputShape\.0: .*the wasm heap holds 4 GiB/)
    expect(fs.existsSync(out)).toBe(false)
  }, 120_000)

  it("defect 7: eval finds a last/ that a kill inside the swap left only as a complete copy", async () => {
    const run = path.join(tmp, "swapped")
    fs.cpSync(reference, run, { recursive: true })
    fs.renameSync(path.join(run, "last"), path.join(run, ".last.old-999999999-0badcafe"))
    const loaded = await Effect.runPromise(Effect.scoped(Effect.map(loadCheckpoint(run), (l) => ({ checkpoint: l.checkpoint, epoch: l.metadata.epoch }))))
    expect(loaded.checkpoint).toBe(path.join(run, "last"))
    expect(loaded.epoch).toBe(position(path.join(reference, "last")).epoch)
    // resume puts it back and cleans up
    const r = await deq("train", "--resume", run)
    expect(r.ok, r.stderr).toBe(true)
    expect(leftovers(run)).toEqual([])
    expect(weights(path.join(run, "last")).equals(weights(path.join(reference, "last")))).toBe(true)
  }, 120_000)
})
