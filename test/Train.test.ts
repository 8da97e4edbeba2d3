/**
 * Train: a short PGD-AT run learns (clean and PGD accuracy well above chance), TRADES runs with finite losses and
 * random intermediate states change (and count) the states read, the Jacobian penalty follows its schedule,
 * pre-training runs without a solver, an interrupted run resumes to bit-identical parameters, a NaN loss is a typed
 * error naming batch and step with no tensor left behind, and configs are decoded strictly.
 */
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as Data from "../src/Data.ts"
import { ConfigError } from "../src/Errors.ts"
import * as Train from "../src/Train.ts"
import { makeAdam } from "../src/internal/train/adam.ts"
import { leakCheck, noLeaks, tf, useBackend } from "../src/Tensor.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const K = 4

/** a small synthetic task: 4 classes of 8x8 images */
const dataset = Effect.runSync(Data.synthetic({ height: 8, width: 8, classes: K, trainSize: 256, testSize: 128, seed: 1 }))

const base = {
  model: { _tag: "fc", inputShape: [8, 8, 1], hidden: 32, classes: K },
  data: { name: "synthetic", height: 8, width: 8, classes: K, trainSize: 256, testSize: 128, seed: 1 },
  solver: { _tag: "anderson", maxIter: 8, tol: 1e-3 },
  attack: { eps: 0.1, stepSize: 0.025, steps: 5 },
  eval: { subset: 128, batchSize: 64, steps: 10, every: 0 },
  batchSize: 32,
  lr: 3e-3,
  seed: 7
}

const config = (overrides: Record<string, unknown> = {}) => Train.decodeConfigSync({ ...base, ...overrides })

const collect = (c: Train.TrainConfig, options: Omit<Train.FitOptions, "onEvent"> = {}) =>
  Effect.gen(function*() {
    const events: Array<Train.TrainEvent> = []
    const summary = yield* Train.run(c, { ...options, data: dataset, onEvent: (e) => Effect.sync(() => events.push(e)) })
    return { events, summary }
  })

const batches = (events: ReadonlyArray<Train.TrainEvent>) => events.filter((e): e is Train.BatchDone => e._tag === "Batch")

const tempDir = () => Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "effect-deq-train-")))

describe("training programs", () => {
  it.effect("a short PGD-AT run reaches clean and PGD accuracy well above chance (and above standard training's PGD)", () =>
    leakCheck(Effect.gen(function*() {
      // 14x14 images, hidden 64: big enough that a 6-epoch run separates PGD-AT from standard training
      const data14 = { ...base.data, height: 14, width: 14 }
      const model14 = { ...base.model, inputShape: [14, 14, 1], hidden: 64 }
      const d14 = Effect.runSync(Data.synthetic({ height: 14, width: 14, classes: K, trainSize: 256, testSize: 128, seed: 1 }))
      const run = (method: string) =>
        Effect.gen(function*() {
          const events: Array<Train.TrainEvent> = []
          const c = config({ data: data14, model: model14, method: { _tag: method }, epochs: 6, eval: { ...base.eval, every: 3, fromEpoch: 3 } })
          const summary = yield* Train.run(c, { data: d14, onEvent: (e) => Effect.sync(() => events.push(e)) })
          return { events, summary }
        })
      const { events, summary } = yield* run("pgd-at")
      const evals = events.filter((e): e is Train.Evaluated => e._tag === "Evaluation")
      expect(evals.map((e) => e.epoch)).toEqual([3, 6])
      const last = summary.lastEvaluation!
      const standard = (yield* run("standard")).summary.lastEvaluation!
      console.log(
        `PGD-AT: clean ${last.clean}, PGD-10 ${last.robust}; standard: clean ${standard.clean}, PGD-10 ${standard.robust} ` +
          `(eps 0.1, ${last.samples} held-out images)`
      )
      // chance is 1/4
      expect(last.clean).toBeGreaterThan(2 / K)
      expect(last.robust!).toBeGreaterThan(2 / K)
      expect(last.robust!).toBeLessThanOrEqual(last.clean)
      expect(last.robust!).toBeGreaterThan(standard.robust! + 0.15)
      // the best checkpoint metric is the robust accuracy
      expect(summary.bestMetric).toBe(Math.max(...evals.map((e) => e.robust!)))
      // Adam + cosine: lr falls from 3e-3 towards lrMin
      const lrs = batches(events).map((e) => e.lr)
      expect(lrs[0]).toBeCloseTo(3e-3, 10)
      for (let i = 1; i < lrs.length; i++) expect(lrs[i]!).toBeLessThan(lrs[i - 1]!)
      expect(events[0]!._tag).toBe("Started")
      expect(events.at(-1)!._tag).toBe("Finished")
    })))

  it.effect("TRADES runs with finite losses; random intermediate states change which state is read", () =>
    leakCheck(Effect.gen(function*() {
      const N = 8
      const ris = yield* collect(config({ method: { _tag: "trades", beta: 6 }, epochs: 1, regularizers: { randomStates: {} } }))
      const steps = batches(ris.events)
      expect(steps).toHaveLength(8)
      const drawn: Array<number> = []
      for (const b of steps) {
        expect(Number.isFinite(b.loss)).toBe(true)
        expect(b.advAccuracy).toBeDefined()
        // one clean and one adversarial training forward per batch, each with its own draw
        expect(b.drawn).toHaveLength(2)
        drawn.push(...b.drawn!)
        // the last training forward stopped at its drawn state
        expect(b.solverSteps).toBe(b.drawn![1])
      }
      for (const n of drawn) {
        expect(n).toBeGreaterThanOrEqual(1)
        expect(n).toBeLessThanOrEqual(N)
      }
      expect(new Set(drawn).size).toBeGreaterThan(3)
      // the final-state baseline draws nothing and reads the solver's own stopping point
      const fin = yield* collect(config({ method: { _tag: "trades", beta: 6 }, epochs: 1 }))
      for (const b of batches(fin.events)) {
        expect(b.drawn).toBeUndefined()
        expect(Number.isFinite(b.loss)).toBe(true)
      }
      // the two runs trained differently
      expect(batches(fin.events).at(-1)!.loss).not.toBe(steps.at(-1)!.loss)
    })))

  it.effect("the Jacobian penalty follows its schedule; pre-training runs the unrolled stack without a solver", () =>
    leakCheck(Effect.gen(function*() {
      const { events } = yield* collect(config({
        method: { _tag: "standard" },
        epochs: 2,
        pretrainSteps: 3,
        regularizers: { jacobian: { probability: 1, untilEpoch: 2, jitter: [-2, 1] }, randomStates: { max: 6 } }
      }))
      const steps = batches(events)
      expect(steps.slice(0, 3).map((b) => b.phase)).toEqual(["pretrain", "pretrain", "pretrain"])
      for (const b of steps.slice(0, 3)) {
        expect(b.solverSteps).toBe(0)
        expect(b.jacobian).toBeUndefined()
      }
      for (const b of steps.slice(3)) {
        expect(b.phase).toBe("train")
        if (b.epoch === 1) {
          expect(b.jacobian!).toBeGreaterThan(0)
          // the jitter moves the random-state budget to 6 + [-2, 1]
          expect(b.drawn![0]!).toBeLessThanOrEqual(7)
        } else expect(b.jacobian).toBeUndefined()
      }
      const off = yield* collect(config({ method: { _tag: "standard" }, epochs: 1, regularizers: { jacobian: { probability: 0 } } }))
      for (const b of batches(off.events)) expect(b.jacobian).toBeUndefined()
    })))

  it.effect("dropout masks are drawn only when the read-out layer says so; the correction loss adds positive terms", () =>
    leakCheck(Effect.gen(function*() {
      const first = (overrides: Record<string, unknown>) =>
        Effect.map(collect(config({ method: { _tag: "standard" }, epochs: 1, ...overrides })), (r) => batches(r.events)[0]!)
      const dropModel = { ...base.model, dropout: 0.3 }
      const noModelDropout = yield* first({})
      const on = yield* first({ model: dropModel })
      const off = yield* first({ model: dropModel, regularizers: { dropout: false } })
      // same initial weights (dropout does not change the parameters): without masks the first loss is the plain one
      expect(off.loss).toBe(noModelDropout.loss)
      expect(on.loss).not.toBe(off.loss)
      // the correction loss: sum of gamma-weighted CEs of evenly spaced states on top of the same first loss
      const corrected = yield* first({ regularizers: { correction: { states: 3, gamma: 0.8, weight: 1 } } })
      expect(corrected.loss).toBeGreaterThan(noModelDropout.loss + 0.5)
      expect(Number.isFinite(corrected.gradNorm)).toBe(true)
    })))
})

describe("checkpoints and resume", () => {
  const readAll = (dir: string) =>
    Effect.map(Checkpoint.read(dir), (c) => new Map([...c.params, ...c.extras].map((t) => [t.name, t.data])))

  const expectBitEqual = (a: Map<string, Float32Array | Int32Array>, b: Map<string, Float32Array | Int32Array>) => {
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort())
    for (const [name, x] of a) {
      const y = b.get(name)!
      expect(y.length).toBe(x.length)
      // compare bits, not values (NaN-safe, -0 vs 0)
      expect(Buffer.from(y.buffer, y.byteOffset, y.byteLength).equals(Buffer.from(x.buffer, x.byteOffset, x.byteLength)))
        .toBe(true)
    }
  }

  it.effect("interrupting after epoch 1 (and mid-epoch) and resuming gives bit-identical parameters", () =>
    leakCheck(Effect.gen(function*() {
      const c = config({
        method: { _tag: "pgd-at" },
        epochs: 3,
        regularizers: { randomStates: {}, jacobian: { probability: 0.3 } },
        eval: { ...base.eval, every: 1, subset: 64, steps: 3 }
      })
      const full = yield* tempDir()
      const whole = yield* collect(c, { out: full })
      expect(whole.summary.resumed).toBe(false)

      const positions: Array<unknown> = []
      for (const stopAt of [
        (e: Train.TrainEvent) => e._tag === "Checkpoint" && e.reason === "epoch" && e.epoch === 1,
        (e: Train.TrainEvent) => e._tag === "Batch" && e.epoch === 2 && e.batch === 2
      ]) {
        const out = yield* tempDir()
        const seen = yield* Train.stream(c, { out, data: dataset }).pipe(Stream.takeUntil(stopAt), Stream.runCollect)
        expect(seen.at(-1)!._tag).not.toBe("Finished")
        const saved = yield* Checkpoint.read(Train.checkpointDirs(out).last)
        expect(saved.metadata.extra?.["format"]).toBe("effect-deq/train-state")
        positions.push(saved.metadata.extra?.["ended"])
        const resumed = yield* collect(c, { out, resume: true })
        expect(resumed.summary.resumed).toBe(true)
        const started = resumed.events[0] as Train.Started
        expect(started.resumed).toBe(true)
        // stopped mid-epoch: the interruption saved the position inside the epoch, not just the epoch checkpoint
        if (saved.metadata.extra?.["ended"] === false) expect(started.batch).toBeGreaterThan(0)
        expect(started.step).toBeGreaterThan(0)
        expect(started.step).toBeLessThan(whole.summary.step)
        expect(resumed.summary.step).toBe(whole.summary.step)
        // the same evaluations, the same parameters and optimizer state, bit for bit
        expect(resumed.summary.lastEvaluation!.clean).toBe(whole.summary.lastEvaluation!.clean)
        expect(resumed.summary.lastEvaluation!.robust).toBe(whole.summary.lastEvaluation!.robust)
        expectBitEqual(
          yield* readAll(Train.checkpointDirs(out).last),
          yield* readAll(Train.checkpointDirs(full).last)
        )
        yield* Effect.promise(() => fs.rm(out, { recursive: true, force: true }))
      }
      // the mid-epoch stop left an interruption checkpoint (ended: false)
      expect(positions[1]).toBe(false)
      yield* Effect.promise(() => fs.rm(full, { recursive: true, force: true }))
    })))

  it.effect("resuming with a different config is a ConfigError naming the key", () =>
    Effect.gen(function*() {
      const out = yield* tempDir()
      yield* collect(config({ method: { _tag: "standard" }, epochs: 1 }), { out })
      const e = yield* Effect.flip(collect(config({ method: { _tag: "standard" }, epochs: 1, lr: 1e-2 }), { out, resume: true }))
      expect(e).toBeInstanceOf(ConfigError)
      expect((e as ConfigError).path).toBe("lr")
      yield* Effect.promise(() => fs.rm(out, { recursive: true, force: true }))
    }))
})

describe("failures", () => {
  it.effect("a NaN loss is a typed error naming the batch and the step; nothing leaks", () =>
    leakCheck(Effect.gen(function*() {
      const e = yield* Effect.flip(collect(config({ method: { _tag: "standard" }, epochs: 2, lr: 1e30 })))
      expect(e._tag).toBe("NaNLoss")
      const nan = e as Train.NaNLoss
      expect(nan.step).toBeGreaterThan(0)
      expect(nan.epoch).toBe(1)
      expect(nan.batch).toBe(nan.step)
      expect(Number.isFinite(nan.loss)).toBe(false)
      expect(nan.message).toContain(`batch ${nan.batch}`)
      expect(nan.message).toContain(`step ${nan.step}`)
    })))

  it.effect("unknown config keys are ConfigErrors naming them", () =>
    Effect.gen(function*() {
      const top = yield* Effect.flip(Train.decodeConfig({ ...base, epohcs: 3 }))
      expect(top).toBeInstanceOf(ConfigError)
      expect(top.message).toContain("epohcs")
      const nested = yield* Effect.flip(Train.decodeConfig({ ...base, regularizers: { jacobian: { wieght: 1 } } }))
      expect(nested.message).toContain("wieght")
      expect(nested.path).toContain("regularizers.jacobian")
      const solver = yield* Effect.flip(Train.decodeConfig({ ...base, solver: { _tag: "picard", memory: 3 } }))
      expect(solver.message).toContain("memory")
      const start = yield* Effect.flip(Train.decodeConfig({ ...base, method: { _tag: "pgd-at" }, attack: { start: "normal" } }))
      expect(start.path).toBe("attack.start")
      // defaults are the paper's where it has one
      const d = Train.decodeConfigSync({ model: base.model, data: base.data })
      expect(d.solver).toMatchObject({ _tag: "broyden", maxIter: 8, tol: 1e-3 })
      expect(d.gradient).toMatchObject({ _tag: "unroll", k: 5, lambda: 0.5 })
      expect(d.lr).toBe(1e-3)
      expect(d.lrMin).toBe(1e-6)
      expect(d.batchSize).toBe(96)
      expect(d.seed).toBe(42)
      expect(Train.decodeConfigSync({ ...base, method: { _tag: "trades" } }).method).toMatchObject({ beta: 6 })
      // a config survives the JSON round trip
      expect(Train.encodeConfig(Train.decodeConfigSync(JSON.parse(JSON.stringify(Train.encodeConfig(d)))))).toEqual(
        Train.encodeConfig(d)
      )
    }))
})


describe("Adam", () => {
  const settings = { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0 }

  it("takes PyTorch's first step and clips by the global gradient norm", () => {
    noLeaks(() => {
      const a = tf.tidy(() => tf.variable(tf.tensor1d([1, -2]), true, "adam_test_a"))
      const b = tf.tidy(() => tf.variable(tf.tensor1d([0.5]), true, "adam_test_b"))
      const params = [{ name: "a", variable: a }, { name: "b", variable: b }]
      const adam = makeAdam(params, settings)
      // gradient norm sqrt(9 + 16 + 144) = 13
      const grads = { [a.name]: tf.tensor1d([3, -4]), [b.name]: tf.tensor1d([12]) }
      const norm = adam.apply(grads, 0.1, 6.5)
      expect(norm).toBeCloseTo(13, 5)
      // first step: m = (1 - b1) g', v = (1 - b2) g'^2, update = lr * sign(g') (|g'| >> eps), whatever the clip
      expect(Array.from(a.dataSync())).toEqual([expect.closeTo(0.9, 6), expect.closeTo(-1.9, 6)])
      expect(b.dataSync()[0]).toBeCloseTo(0.4, 6)
      // the stored first moment shows the clipped gradient g' = g * 6.5 / 13
      const m = adam.tensors().find((t) => t.name === "adam/m/b")!.tensor
      expect(m.dataSync()[0]).toBeCloseTo(0.1 * 6, 5)
      // without clip the moment keeps the raw gradient
      const adam2 = makeAdam(params, settings)
      adam2.apply(grads, 0.1)
      expect(adam2.tensors().find((t) => t.name === "adam/m/b")!.tensor.dataSync()[0]).toBeCloseTo(0.1 * 12, 5)
      tf.dispose(Object.values(grads))
      adam.dispose()
      adam2.dispose()
      a.dispose()
      b.dispose()
    })
  })
})
