/**
 * Reliability of training checkpoints (issue 16, defects 10 and 14): an interruption right after an evaluation
 * that found a new best leaves `last/` naming a best epoch whose `best/` exists (the best and its checkpoint are
 * written together); resuming from a checkpoint whose optimiser moment has the wrong shape is a CheckpointError
 * naming the tensor that leaves no tensor behind and the model as it was; a resume finds a `last/` that a kill
 * inside the swap left only as a complete copy.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { afterAll, beforeAll } from "vitest"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointError } from "../src/Errors.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import * as Train from "../src/Train.ts"

let tmp = ""
beforeAll(async () => {
  await useBackend("wasm")
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-rel-train-"))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

const config = Train.decodeConfigSync({
  model: { _tag: "fc", hidden: 8, inputShape: [6, 6, 1], classes: 3 },
  data: { name: "synthetic", height: 6, width: 6, classes: 3, trainSize: 48, testSize: 12 },
  solver: { _tag: "picard", maxIter: 3, tol: 0.001 },
  attack: { eps: 0.1, stepSize: 0.05, steps: 1 },
  eval: { subset: 12, batchSize: 12, steps: 1 },
  epochs: 3,
  batchSize: 16,
  seed: 5
})

const manifestOf = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, Checkpoint.MANIFEST), "utf8"))

describe("training checkpoints under faults", () => {
  it("defect 10: interrupted right after a new best: last/ names a best epoch whose best/ exists", async () => {
    let interrupted = 0
    for (const at of [1, 2, 3]) {
      const out = path.join(tmp, `interrupted-${at}`)
      // the interruption lands where Ctrl-C could: after the evaluation, before anything else of the epoch
      let fired = false
      const exit = await Effect.runPromiseExit(Train.run(config, {
        out,
        onEvent: (e) => (e._tag === "Evaluation" && e.epoch === at && e.best ? Effect.suspend(() => ((fired = true), Effect.interrupt)) : Effect.void)
      }))
      if (!fired) continue // no new best at that epoch
      interrupted++
      expect(Exit.isFailure(exit)).toBe(true)
      const last = manifestOf(path.join(out, "last"))
      const bestEpoch = last.metadata.extra.bestEpoch
      if (bestEpoch === undefined) continue
      expect(fs.existsSync(path.join(out, "best", Checkpoint.MANIFEST)), `interrupted at epoch ${at}`).toBe(true)
      expect(manifestOf(path.join(out, "best")).metadata.extra.bestEpoch).toBe(bestEpoch)
      // and the run resumes to the end
      const summary = await Effect.runPromise(Train.run(config, { out, resume: true }))
      expect(summary.complete).toBe(true)
    }
    // the first evaluation is always a new best
    expect(interrupted).toBeGreaterThan(0)
  }, 120_000)

  it("defect 14: an optimiser moment of the wrong shape is refused before anything is assigned, leak-free", async () => {
    const out = path.join(tmp, "wrong-moment")
    await Effect.runPromise(Train.run(config, { out, untilEpoch: 1 }))
    const last = path.join(out, "last")
    const m = manifestOf(last)
    // the moment keeps its bytes but claims another shape (a resealed manifest: only this check is left)
    const name = "adam/m/fc/cell/W"
    const tensors = m.tensors.map((t: any) => (t.name === name ? { ...t, shape: [t.shape[0] * t.shape[1]] } : t))
    const edited = { ...m, tensors }
    fs.writeFileSync(path.join(last, Checkpoint.MANIFEST), JSON.stringify({ ...edited, checksum: Checkpoint.manifestChecksum(edited) }))
    const before = tf.memory().numTensors
    const e = await Effect.runPromise(Effect.flip(Train.run(config, { out, resume: true })))
    expect(tf.memory().numTensors).toBe(before)
    expect(e).toBeInstanceOf(CheckpointError)
    expect((e as CheckpointError).tensor).toBe(name)
    expect(e.message).toMatch(/has shape \[64\], the parameter \[8,8\]/)
  }, 120_000)

  it("defect 7: Train's own resume reads a last/ left only as a complete copy, and the next save cleans up", async () => {
    const out = path.join(tmp, "swapped")
    await Effect.runPromise(Train.run(config, { out, untilEpoch: 2 }))
    fs.renameSync(path.join(out, "last"), path.join(out, ".last.tmp-999999999-12345678"))
    const events: Array<Train.TrainEvent> = []
    const summary = await Effect.runPromise(Train.run(config, { out, resume: true, onEvent: (e) => Effect.sync(() => void events.push(e)) }))
    expect(summary.resumed).toBe(true)
    expect(events[0]).toMatchObject({ _tag: "Started", epoch: 3 })
    expect(fs.readdirSync(out).filter((n) => n.startsWith("."))).toEqual([])
  }, 120_000)
})
