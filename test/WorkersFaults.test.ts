/**
 * Worker faults: a worker that throws in a step, exits (process.exit) or crashes outside a request, and one that
 * is terminated from outside, stops the run with a WorkerError naming it, in seconds, with the last checkpoint
 * intact (it loads and a resume finishes the run), no tensor left in this thread and no thread left over; a
 * worker that cannot start is a WorkerError at start-up. Ctrl-C on `deq train --workers 2` saves a checkpoint and
 * the process exits with 130 (its worker threads do not keep it alive). Faults are injected with
 * DEQ_WORKER_FAULT (src/internal/train/workersEntry.ts).
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as Data from "../src/Data.ts"
import { WorkerError } from "../src/Errors.ts"
import * as Train from "../src/Train.ts"
import { killAll, liveWorkers, make as makePool } from "../src/internal/tensor/pool.ts"
import { leakCheck, useBackend } from "../src/Tensor.ts"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

beforeAll(async () => {
  await useBackend("wasm")
})

const K = 4
const dataset = Effect.runSync(Data.synthetic({ height: 8, width: 8, classes: K, trainSize: 128, testSize: 32, seed: 1 }))
// 4 batches per epoch: a worker's 6th step is batch 1 of epoch 2
const c = Train.decodeConfigSync({
  model: { _tag: "fc", inputShape: [8, 8, 1], hidden: 16, classes: K },
  data: { name: "synthetic", height: 8, width: 8, classes: K, trainSize: 128, testSize: 32, seed: 1 },
  solver: { _tag: "anderson", maxIter: 6, tol: 1e-3 },
  regularizers: { randomStates: { max: 4 } },
  attack: { eps: 0.1, stepSize: 0.025, steps: 2 },
  eval: { subset: 32, batchSize: 16, steps: 2, every: 1 },
  batchSize: 32,
  epochs: 3,
  seed: 7,
  workers: 2
})

const tempDir = () => fs.mkdtempSync(path.join(os.tmpdir(), "effect-deq-workers-fault-"))

/** Runs `self` with DEQ_WORKER_FAULT set (the workers read it when they start). */
const withFault = <A, E, R>(fault: string, self: Effect.Effect<A, E, R>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      process.env["DEQ_WORKER_FAULT"] = fault
    }),
    () => self,
    () => Effect.sync(() => delete process.env["DEQ_WORKER_FAULT"])
  )

/** The run fails with a WorkerError within 60 s (a hang fails the test with a clear message instead). */
const failingRun = (out: string, onEvent?: (e: Train.TrainEvent) => Effect.Effect<void>) =>
  Train.run(c, { out, data: dataset, ...(onEvent !== undefined ? { onEvent } : {}) }).pipe(
    Effect.timeoutOrElse({ duration: "60 seconds", orElse: () => Effect.die(new Error("the run did not stop within 60 s")) }),
    Effect.flip
  )

/** `<out>/last` is epoch 1's checkpoint and a resume on one thread finishes the run. */
const expectIntact = (out: string) =>
  Effect.gen(function*() {
    const saved = yield* Checkpoint.read(Train.checkpointDirs(out).last)
    expect(saved.metadata.epoch).toBe(1)
    expect(saved.metadata.step).toBe(4)
    const resumed = yield* Train.run(Train.decodeConfigSync({ ...(Train.encodeConfig(c) as object), workers: 1 }), { out, data: dataset, resume: true })
    expect(resumed).toMatchObject({ complete: true, resumed: true, step: 12 })
  })

describe("a worker that fails stops the run with a WorkerError naming it; the checkpoint is intact", () => {
  for (const [fault, reason] of [["throw:6", "failure"], ["exit:6", "exit"], ["crash:6", "crash"]] as const) {
    it.live(`${fault.split(":")[0]}: WorkerError (worker 1, ${reason})`, () =>
      leakCheck(Effect.gen(function*() {
        const out = tempDir()
        const e = yield* withFault(fault, failingRun(out))
        expect(e).toBeInstanceOf(WorkerError)
        const w = e as WorkerError
        expect(w.worker).toBe(1)
        expect(w.reason).toBe(reason)
        expect(w.message).toContain("worker 1")
        if (reason === "failure") expect(w.message).toContain("injected fault")
        if (reason === "exit") expect(w.message).toContain("code 3")
        if (reason === "crash") expect(w.message).toContain("injected crash")
        expect(liveWorkers()).toBe(0)
        yield* expectIntact(out)
        fs.rmSync(out, { recursive: true, force: true })
      })))
  }

  it.live("killed from outside (terminated) mid-run: WorkerError (worker 1, exit)", () =>
    leakCheck(Effect.gen(function*() {
      const out = tempDir()
      const e = yield* failingRun(out, (event) =>
        event._tag === "Batch" && event.epoch === 2 && event.batch === 1 ? Effect.promise(killAll) : Effect.void)
      expect(e).toBeInstanceOf(WorkerError)
      expect((e as WorkerError).reason).toBe("exit")
      expect(liveWorkers()).toBe(0)
      yield* expectIntact(out)
      fs.rmSync(out, { recursive: true, force: true })
    })))

  it.live("a worker that cannot start is a WorkerError (spawn) naming it", () =>
    Effect.gen(function*() {
      const e = yield* Effect.scoped(makePool({ entry: new URL("./missing-worker.ts", import.meta.url), size: 2, init: () => ({ body: {} }) })).pipe(Effect.flip)
      expect(e).toBeInstanceOf(WorkerError)
      expect(e.reason).toBe("spawn")
      expect([1, 2]).toContain(e.worker)
      expect(e.message).toContain("missing-worker.ts")
      expect(liveWorkers()).toBe(0)
    }))

  it.live("interrupting a run while its workers compute closes them and saves the position", () =>
    Effect.gen(function*() {
      const out = tempDir()
      let batches = 0
      const fiber = yield* Effect.forkChild(Train.run(c, {
        out,
        data: dataset,
        onEvent: (e) => Effect.sync(() => void (e._tag === "Batch" && batches++))
      }))
      while (batches < 2) yield* Effect.sleep("20 millis")
      yield* Fiber.interrupt(fiber)
      expect(liveWorkers()).toBe(0)
      const saved = yield* Checkpoint.read(Train.checkpointDirs(out).last)
      expect(saved.metadata.step).toBeGreaterThanOrEqual(2)
      fs.rmSync(out, { recursive: true, force: true })
    }))
})

describe("Ctrl-C on deq train --workers 2", () => {
  it("saves a checkpoint and exits with 130: no worker thread keeps the process alive", async () => {
    const dir = tempDir()
    const file = path.join(dir, "config.json")
    fs.writeFileSync(file, JSON.stringify({ ...(Train.encodeConfig(c) as object), epochs: 50, workers: "auto" }))
    const out = path.join(dir, "run")
    const child = spawn(process.execPath, ["--import", "tsx", path.join(root, "src", "bin.ts"), "train", "--config", file, "--out", out, "--workers", "2"], {
      cwd: root,
      env: { ...process.env, DEQ_BACKEND: "wasm", DEQ_WORKERS: "1" },
      detached: true,
      stdio: ["ignore", "ignore", "pipe"]
    })
    let stderr = ""
    child.stderr!.on("data", (d) => (stderr += String(d)))
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
    const events = path.join(out, "events.jsonl")
    const deadline = Date.now() + 90_000
    // wait for a few batches on 2 threads (the flag wins over DEQ_WORKERS), then Ctrl-C
    while (Date.now() < deadline && !(fs.existsSync(events) && fs.readFileSync(events, "utf8").split("\n").filter((l) => l.includes('"Batch"')).length >= 3)) {
      await new Promise((r) => setTimeout(r, 50))
    }
    const log = fs.readFileSync(events, "utf8").split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l))
    expect(log[0]).toMatchObject({ _tag: "Started", workers: 2 })
    process.kill(-child.pid!, "SIGINT")
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r("still running after 60 s"), 60_000))])
    if (code === "still running after 60 s") process.kill(-child.pid!, "SIGKILL")
    expect(code).toBe(130)
    expect(stderr).toContain("interrupted")
    const saved = JSON.parse(fs.readFileSync(path.join(out, "last", Checkpoint.MANIFEST), "utf8")) as { metadata: { step: number } }
    expect(saved.metadata.step).toBeGreaterThanOrEqual(3)
    fs.rmSync(dir, { recursive: true, force: true })
  }, 180_000)
})
