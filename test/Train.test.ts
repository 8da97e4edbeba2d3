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
import * as Dynamics from "../src/Dynamics.ts"
import { CheckpointError, ConfigError } from "../src/Errors.ts"
import { makeBroyden } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import * as Regularizers from "../src/Regularizers.ts"
import * as Train from "../src/Train.ts"
import { makeAdam } from "../src/internal/train/adam.ts"
import { correctionLoss, forward } from "../src/internal/train/forward.ts"
import { meanCrossEntropy } from "../src/internal/train/losses.ts"
import { combineShards, type ShardInput, type ShardOutput, shardStep } from "../src/internal/train/shard.ts"
import * as State from "../src/internal/train/state.ts"
import { makeStepContext } from "../src/internal/train/step.ts"
import { acquire, leakCheck, noLeaks, Rng, stream, tf, untaped, useBackend } from "../src/Tensor.ts"

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

describe("TrainState", () => {
  const sums = { loss: 1.5, accuracy: 20, advAccuracy: 12, samples: 32, batches: 1, seconds: 0.25 }
  const state: State.TrainState = {
    epoch: 3,
    batch: 2,
    step: 18,
    ended: false,
    optimizerSteps: 18,
    best: { metric: 0.75, epoch: 2 },
    sums
  }

  it.effect("encodes to the checkpoint's JSON and restores to the same value (through a JSON round trip)", () =>
    Effect.gen(function*() {
      const config = { model: { _tag: "fc" }, lr: 0.001 }
      const json = JSON.parse(JSON.stringify(State.encode(state, config, "wasm")))
      expect(json).toMatchObject({ format: "effect-deq/train-state", epoch: 3, batch: 2, step: 18, adamSteps: 18, bestMetric: 0.75, bestEpoch: 2, backend: "wasm" })
      const back = yield* State.restore(json, { path: "ckpt" })
      expect(back.state).toEqual(state)
      expect(back.config).toEqual(config)
      // no best yet, and a checkpoint written before `step` was stored: metadata.step fills it in
      const { best: _best, ...fresh } = state
      const { step: _step, ...old } = State.encode(fresh, config, "wasm")
      expect((yield* State.restore(old, { path: "ckpt", step: 18 })).state).toEqual(fresh)
    }))

  it("transitions: a batch adds to the sums and the position, an ended epoch resumes at the next one", () => {
    const a = State.afterBatch(State.initial, { loss: 0.5, correct: 10, advCorrect: 4, samples: 16, seconds: 0.1 })
    const b = State.afterBatch(a, { loss: 1, correct: 6, samples: 8, seconds: 0.2 })
    expect([b.epoch, b.batch, b.step, b.optimizerSteps, b.ended]).toEqual([1, 2, 2, 2, false])
    expect(b.sums).toEqual({ loss: 0.5 * 16 + 8, accuracy: 16, advAccuracy: 4, samples: 24, batches: 2, seconds: 0.1 + 0.2 })
    expect(State.means(b)).toEqual({ loss: 16 / 24, accuracy: 16 / 24, advAccuracy: 4 / 24 })
    // a value: the old state is untouched
    expect(a.batch).toBe(1)
    expect(State.resumePoint(b)).toBe(b)
    const next = State.resumePoint(State.endEpoch(b))
    expect([next.epoch, next.batch, next.step, next.ended, next.sums.samples]).toEqual([2, 0, 2, false, 0])
    const first = State.recordEvaluation(b, 0.5, 1)
    expect(first.improved).toBe(true)
    expect(first.state.best).toEqual({ metric: 0.5, epoch: 1 })
    expect(State.recordEvaluation(first.state, 0.5, 2).improved).toBe(false)
    expect(State.recordEvaluation(first.state, 0.6, 2).state.best).toEqual({ metric: 0.6, epoch: 2 })
  })

  it.effect("bad input is a CheckpointError naming the checkpoint and the field", () =>
    Effect.gen(function*() {
      const good = State.encode(state, {}, "wasm")
      for (
        const [bad, field] of [
          [{ ...good, format: "something-else" }, "format"],
          [{ ...good, epoch: 0 }, "epoch"],
          [{ ...good, batch: 1.5 }, "batch"],
          [{ ...good, sums: { ...sums, samples: -1 } }, "samples"],
          [{ ...good, extra: true }, "extra"],
          [{ ...good, bestEpoch: undefined }, "bestEpoch"],
          ["not an object", ""]
        ] as const
      ) {
        const e = yield* Effect.flip(State.restore(bad, { path: "runs/x/last" }))
        expect(e).toBeInstanceOf(CheckpointError)
        expect(e.path).toBe("runs/x/last")
        expect(e.message).toContain("not a training checkpoint")
        expect(e.message).toContain(field)
      }
      const { step: _step, ...noStep } = good
      expect((yield* Effect.flip(State.restore(noStep, { path: "p" }))).message).toContain("no step")
    }))
})

describe("the shard step (what data-parallel workers run)", () => {
  /** a step context, a model and a batch of 32 from the dataset under config `c` */
  const setup = (c: Train.TrainConfig) =>
    Effect.gen(function*() {
      const model = yield* Models.buildSeeded(c.model)
      const context = yield* makeStepContext(model, c).pipe(Effect.provide(Train.layersFromConfig(c)))
      const keys = Int32Array.from({ length: 32 }, (_, i) => (i * 7 + 3) % dataset.train.count)
      const { x, y } = Data.toTensors(dataset.train, keys)
      const xs = x.dataSync() as Float32Array, ys = y.dataSync() as Int32Array
      tf.dispose([x, y])
      const per = xs.length / 32
      const shard = (from: number, to: number, extra: Partial<ShardInput> = {}): ShardInput => ({
        x: xs.slice(from * per, to * per),
        y: ys.slice(from, to),
        keys: keys.slice(from, to),
        offset: from,
        batchSize: 32,
        epoch: 1,
        batch: 4,
        step: 9,
        pretrain: false,
        seed: c.seed,
        ...extra
      })
      return { model, context, shard }
    }).pipe(Effect.provide(Rng.seeded(c.seed)))

  const relative = (a: Float32Array, b: Float32Array) => {
    let d = 0, n = 0
    for (let i = 0; i < a.length; i++) {
      d += (a[i]! - b[i]!) ** 2
      n += b[i]! ** 2
    }
    return Math.sqrt(d) / Math.max(Math.sqrt(n), 1e-12)
  }

  const expectSameStep = (split: ShardOutput, whole: ShardOutput) => {
    expect(Object.keys(split.grads).sort()).toEqual(Object.keys(whole.grads).sort())
    let worst = 0
    for (const [name, g] of Object.entries(whole.grads)) worst = Math.max(worst, relative(split.grads[name]!, g))
    console.log(`2 shards vs 1: worst relative gradient difference ${worst.toExponential(2)}`)
    expect(worst).toBeLessThan(1e-5)
    expect(Math.abs(split.loss - whole.loss) / Math.abs(whole.loss)).toBeLessThan(1e-5)
    expect(split.correct).toBe(whole.correct)
    expect(split.advCorrect).toBe(whole.advCorrect)
    expect(split.samples).toBe(32)
    expect(split.drawn).toEqual(whole.drawn)
    expect(split.solverSteps).toBe(whole.solverSteps)
    if (whole.jacobian !== undefined) expect(Math.abs(split.jacobian! - whole.jacobian) / whole.jacobian).toBeLessThan(1e-5)
    expect(split.residual).toHaveLength(32)
    for (let i = 0; i < 32; i++) expect(split.residual[i]!).toBeCloseTo(whole.residual[i]!, 5)
  }

  it.effect("PGD-AT + random states + Jacobian (jitter) + correction + dropout: 2 shards summed = 1 shard to 1e-5", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const c = config({
        model: { ...base.model, dropout: 0.2 },
        method: { _tag: "pgd-at" },
        regularizers: { randomStates: { max: 6 }, jacobian: { probability: 1, jitter: [-1, 1] }, correction: { states: 2 } }
      })
      const { context, shard } = yield* setup(c)
      const whole = yield* shardStep(context, shard(0, 32))
      expect(whole.jacobian!).toBeGreaterThan(0)
      expect(whole.drawn).toHaveLength(1)
      const split = combineShards([yield* shardStep(context, shard(0, 13)), yield* shardStep(context, shard(13, 32))])
      expectSameStep(split, whole)
      // the same step again is the same step (nothing is left in the context)
      expect((yield* shardStep(context, shard(0, 32))).loss).toBe(whole.loss)
    }))))

  it.effect("TRADES + per-sample random states on a conv DEQ (GroupNorm): 2 shards summed = 1 shard to 1e-5", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const c = config({
        model: { _tag: "conv", inputShape: [8, 8, 1], classes: K, channels: 4, groups: 2, dropout: 0.2 },
        method: { _tag: "trades", beta: 6 },
        attack: { eps: 0.1, stepSize: 0.025, steps: 2 },
        regularizers: { randomStates: { max: 5, perSample: true } }
      })
      const { context, shard } = yield* setup(c)
      const whole = yield* shardStep(context, shard(0, 32))
      // clean and adversarial forward, one n per sample each
      expect(whole.drawn.map((d) => (d as ReadonlyArray<number>).length)).toEqual([32, 32])
      const split = combineShards([yield* shardStep(context, shard(0, 16)), yield* shardStep(context, shard(16, 32))])
      expectSameStep(split, whole)
    }))))

  it.effect("parameters travel by name; malformed input is a ConfigError naming the field", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const c = config({ method: { _tag: "standard" } })
      const { model, context, shard } = yield* setup(c)
      const own = Object.fromEntries(model.params.map((p) => [p.name, p.variable.dataSync() as Float32Array]))
      const before = yield* shardStep(context, shard(0, 32))
      // other parameters give another gradient; setting the model's own values back gives the first one again
      const scaled = Object.fromEntries(Object.entries(own).map(([k, v]) => [k, v.map((a) => a * 0.5)]))
      expect((yield* shardStep(context, shard(0, 32, { params: scaled }))).loss).not.toBe(before.loss)
      const again = yield* shardStep(context, shard(0, 32, { params: own }))
      expect(again.loss).toBe(before.loss)
      for (const [name, g] of Object.entries(before.grads)) expect(relative(again.grads[name]!, g)).toBe(0)
      const name = model.params[0]!.name
      const cases = [
        [shard(0, 32, { params: { ...own, [name]: new Float32Array(1) } }), `params.${name}`],
        [shard(0, 32, { keys: new Int32Array(3) }), "keys"],
        [shard(0, 32, { offset: 8 }), "offset"],
        [shard(0, 32, { x: new Float32Array(5) }), "x"]
      ] as const
      for (const [input, path] of cases) {
        const e = yield* Effect.flip(shardStep(context, input))
        expect(e).toBeInstanceOf(ConfigError)
        expect((e as ConfigError).path).toBe(path)
      }
    }))))
})

describe("the regularizers reuse the training forward", () => {
  const seed = 1234
  const setup = Effect.gen(function*() {
    const model = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 32, classes: K, dropout: 0.2 }, { seed: 5 })
    const deq = Dynamics.makeWith(model, yield* makeBroyden({ maxIter: 8, tol: 1e-3 }), { backward: Dynamics.unroll(5, 0.5) })
    const { x, y } = yield* acquire(() => Data.toTensors(dataset.train, Array.from({ length: 16 }, (_, i) => i)))
    return { model, deq, x, y }
  })
  /** value and parameter gradients of a loss */
  const withGrads = (model: Models.Model, loss: () => tf.Scalar) => {
    const { value, grads } = tf.variableGrads(loss, model.params.map((p) => p.variable))
    const out = { value: value.dataSync()[0]!, grads: Object.values(grads).map((g) => g.dataSync() as Float32Array) }
    tf.dispose([value, ...Object.values(grads)])
    return out
  }
  const expectClose = (a: { value: number; grads: Array<Float32Array> }, b: typeof a) => {
    expect(Math.abs(a.value - b.value)).toBeLessThanOrEqual(1e-6 * Math.abs(b.value))
    a.grads.forEach((g, i) => g.forEach((v, j) => expect(Math.abs(v - b.grads[i]![j]!)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(b.grads[i]![j]!)))))
  }

  it.effect("the Jacobian penalty at the forward's own state equals a re-solve from z0 (value and gradients)", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const { model, deq, x } = yield* setup
      const jac = yield* Regularizers.makeJacobian({ weight: 0.4 })
      const dropoutSeed = 77
      for (const r of [Dynamics.readOut.state(5), Dynamics.readOut.randomState(6, { perSample: true }), Dynamics.readOut.final]) {
        // before: prepare again and solve again to the read-out state (z_max for per-sample draws)
        const resolved = () => {
          const p = Dynamics.prepare(deq, x, dropoutSeed)
          const options = r._tag === "State" ? Dynamics.exactSteps(deq, r.n) :
            r._tag === "RandomState" ? Dynamics.exactSteps(deq, r.max) : { ...deq.solveOptions, recordTrajectory: false }
          const z = untaped(() => {
            const res = deq.solver.run(p.f, p.z0, options)
            return res.z
          })
          return jac.penalty(p.f, z, seed)
        }
        const reused = () => {
          const fwd = forward(deq, x, r, { stream: stream(3), dropoutSeed, penaltyState: true })
          return jac.penalty(fwd.f, fwd.state!, seed)
        }
        const a = withGrads(model, reused), b = withGrads(model, resolved)
        expect(a.value).toBeGreaterThan(0)
        expectClose(a, b)
      }
    }))))

  it.effect("the correction loss from one trajectory equals one solve per state (value and gradients)", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const { model, deq, x, y } = yield* setup
      const dropoutSeed = 78
      for (const c of [{ states: 2, gamma: 0.8, weight: 1 }, { states: 3, gamma: 0.5, weight: 0.7 }]) {
        const top = 7
        // before: one Dynamics.logits solve per state
        const perState = () => {
          const terms: Array<tf.Tensor> = []
          for (let i = 1; i <= c.states; i++) {
            const n = Math.max(1, Math.round((i * top) / c.states))
            const l = Dynamics.logits(deq, x, Dynamics.readOut.state(n), { dropoutSeed })
            terms.push(tf.mul(meanCrossEntropy(l, y), Math.pow(c.gamma, c.states - i)))
          }
          return tf.mul(tf.addN(terms), c.weight) as tf.Scalar
        }
        const oneTrajectory = () => {
          const fwd = forward(deq, x, Dynamics.readOut.state(3), { dropoutSeed })
          return correctionLoss(deq, fwd, y, c, top)
        }
        expectClose(withGrads(model, oneTrajectory), withGrads(model, perState))
      }
    }))))
})

describe("untilEpoch", () => {
  it.effect("fit(untilEpoch 1), fit(resume, untilEpoch 2), fit(resume) ends byte-identical to one uninterrupted run", () =>
    leakCheck(Effect.gen(function*() {
      const c = config({
        method: { _tag: "pgd-at" },
        epochs: 3,
        regularizers: { randomStates: {}, jacobian: { probability: 0.3 } },
        eval: { ...base.eval, every: 1, subset: 32, steps: 2 }
      })
      const full = yield* tempDir()
      const whole = yield* collect(c, { out: full })
      expect(whole.summary.complete).toBe(true)
      const out = yield* tempDir()
      const first = yield* collect(c, { out, untilEpoch: 1 })
      expect(first.summary).toMatchObject({ epoch: 1, complete: false, resumed: false })
      expect(first.events.some((e) => e._tag === "Finished")).toBe(false)
      // stopped cleanly after epoch 1's checkpoint, as if interrupted there
      expect(first.events.at(-1)).toMatchObject({ _tag: "Checkpoint", reason: "epoch", epoch: 1 })
      const second = yield* collect(c, { out, resume: true, untilEpoch: 2 })
      expect((second.events[0] as Train.Started).epoch).toBe(2)
      expect(second.summary).toMatchObject({ epoch: 2, complete: false, resumed: true })
      const third = yield* collect(c, { out, resume: true })
      expect(third.summary).toMatchObject({ epoch: 3, complete: true, step: whole.summary.step })
      expect(third.events.at(-1)!._tag).toBe("Finished")
      expect(third.summary.lastEvaluation!.robust).toBe(whole.summary.lastEvaluation!.robust)
      const bits = (dir: string) =>
        Effect.map(Checkpoint.read(dir), (k) => new Map([...k.params, ...k.extras].map((t) => [t.name, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)])))
      const a = yield* bits(Train.checkpointDirs(out).last), b = yield* bits(Train.checkpointDirs(full).last)
      expect([...a.keys()].sort()).toEqual([...b.keys()].sort())
      for (const [name, buf] of a) expect(buf.equals(b.get(name)!)).toBe(true)
      // untilEpoch past the end is a whole run; an already finished run has nothing left to do
      const done = yield* collect(c, { out, resume: true, untilEpoch: 9 })
      expect(done.summary).toMatchObject({ epoch: 3, complete: true, step: whole.summary.step })
      expect(batches(done.events)).toHaveLength(0)
      yield* Effect.promise(() => Promise.all([out, full].map((d) => fs.rm(d, { recursive: true, force: true }))))
    })))
})
