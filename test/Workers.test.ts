/**
 * Data-parallel workers (src/internal/train/workers.ts): the sharded step's gradients, counts and draws match the
 * single-thread step to 1e-5 relative (FC PGD-AT with random states, Jacobian, correction and dropout on 2
 * threads; conv TRADES with per-sample random states on 3 threads); the sharded evaluation's counts equal the
 * single-thread ones; a solve that stops on the residual of the rows solved together differs slightly and is
 * exactly the sum of the shards' own steps; a run with 2 threads follows the 1-thread run (losses to 1e-5, the
 * same evaluations), leaves no tensor and no thread behind and resumes bit-exactly; the `workers` setting.
 * Other test files run with DEQ_WORKERS=1 (vitest.config.ts); these set the thread count explicitly.
 */
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as Data from "../src/Data.ts"
import { ConfigError } from "../src/Errors.ts"
import * as Models from "../src/Models.ts"
import * as Train from "../src/Train.ts"
import { liveWorkers } from "../src/internal/tensor/pool.ts"
import { evaluateBatches, evaluationBatches, makeEvaluator } from "../src/internal/train/evaluate.ts"
import { combineShards, type ShardOutput, shardStep } from "../src/internal/train/shard.ts"
import { makeStepContext } from "../src/internal/train/step.ts"
import { makeSharder, resolveWorkers, splitRows } from "../src/internal/train/workers.ts"
import { leakCheck, tf, useBackend } from "../src/Tensor.ts"
import { cosine } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const K = 4
const dataset = Effect.runSync(Data.synthetic({ height: 8, width: 8, classes: K, trainSize: 128, testSize: 64, seed: 1 }))

const base = {
  model: { _tag: "fc", inputShape: [8, 8, 1], hidden: 32, classes: K },
  data: { name: "synthetic", height: 8, width: 8, classes: K, trainSize: 128, testSize: 64, seed: 1 },
  solver: { _tag: "anderson", maxIter: 8, tol: 1e-3 },
  attack: { eps: 0.1, stepSize: 0.025, steps: 3 },
  eval: { subset: 64, batchSize: 16, steps: 3, every: 1 },
  batchSize: 32,
  lr: 3e-3,
  seed: 7
}
const config = (overrides: Record<string, unknown> = {}) => Train.decodeConfigSync({ ...base, ...overrides })

const relative = (a: Float32Array, b: Float32Array) => {
  let d = 0, n = 0
  for (let i = 0; i < a.length; i++) {
    d += (a[i]! - b[i]!) ** 2
    n += b[i]! ** 2
  }
  return Math.sqrt(d) / Math.max(Math.sqrt(n), 1e-12)
}
const worstRelative = (a: ShardOutput, b: ShardOutput) =>
  Math.max(...Object.keys(b.grads).map((k) => relative(a.grads[k]!, b.grads[k]!)))

const tempDir = () => Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "effect-deq-workers-")))

/** A model, its step context and evaluator, and a sharder over `threads` threads, under config `c`. */
const setup = (c: Train.TrainConfig, threads: number) =>
  Effect.gen(function*() {
    const model = yield* Models.buildSeeded(c.model)
    const context = yield* makeStepContext(model, c)
    const evaluator = yield* makeEvaluator(context, c, dataset.test)
    const sharder = yield* makeSharder({ model, data: dataset, config: c, context, evaluator }, threads)
    return { model, context, evaluator, sharder }
  }).pipe(Effect.provide(Train.layersFromConfig(c)))

const indices = Int32Array.from({ length: 32 }, (_, i) => (i * 7 + 3) % dataset.train.count)
const position = { epoch: 1, batch: 2, step: 2, pretrain: false }
/** the single-thread step on rows from..to of the batch */
const rowsStep = (context: Parameters<typeof shardStep>[0], from = 0, to = 32) => {
  const keys = indices.slice(from, to)
  const { x, y } = Data.gather(dataset.train, keys)
  return shardStep(context, { x, y, keys, offset: from, batchSize: 32, ...position, seed: base.seed })
}

describe("the sharded step matches the single-thread step", () => {
  it.effect("FC PGD-AT + random states + Jacobian (jitter) + correction + dropout, 2 threads: gradients to 1e-5; evaluation counts equal", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const c = config({
        model: { ...base.model, dropout: 0.2 },
        regularizers: { randomStates: { max: 6 }, jacobian: { probability: 1, jitter: [-1, 1] }, correction: { states: 2 } }
      })
      const { context, evaluator, sharder } = yield* setup(c, 2)
      expect(sharder.threads).toBe(2)
      expect(liveWorkers()).toBe(1)
      const whole = yield* rowsStep(context)
      const split = yield* sharder.step(indices, position)
      const worst = worstRelative(split, whole)
      console.log(`workers FC: 2 threads vs 1, worst relative gradient difference ${worst.toExponential(2)}`)
      expect(worst).toBeLessThan(1e-5)
      expect(Math.abs(split.loss - whole.loss) / whole.loss).toBeLessThan(1e-5)
      expect(Math.abs(split.jacobian! - whole.jacobian!) / whole.jacobian!).toBeLessThan(1e-5)
      expect([split.correct, split.advCorrect, split.samples, split.solverSteps]).toEqual([whole.correct, whole.advCorrect, 32, whole.solverSteps])
      expect(split.drawn).toEqual(whole.drawn)
      // the next step sends the parameters again only after an update; either way the same numbers
      const again = yield* sharder.step(indices, position)
      expect(again.loss).toBe(split.loss)
      // the evaluation split by batches over the threads counts exactly what one thread counts
      const one = yield* evaluateBatches(evaluator, 3, evaluationBatches(evaluator))
      const two = yield* sharder.evaluate(evaluator, 3)
      expect(two).toEqual(one)
      expect(one.robust).toBeLessThan(one.clean)
    }))))

  it.effect("conv TRADES + per-sample random states (GroupNorm), 3 threads: gradients to 1e-5, parameters sent after an update", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const c = config({
        model: { _tag: "conv", inputShape: [8, 8, 1], classes: K, channels: 4, groups: 2 },
        method: { _tag: "trades", beta: 6 },
        attack: { eps: 0.1, stepSize: 0.025, steps: 2 },
        regularizers: { randomStates: { max: 5, perSample: true } }
      })
      const { model, context, sharder } = yield* setup(c, 3)
      expect(liveWorkers()).toBe(2)
      const whole = yield* rowsStep(context)
      const split = yield* sharder.step(indices, position)
      const worst = worstRelative(split, whole)
      console.log(`workers conv: 3 threads vs 1, worst relative gradient difference ${worst.toExponential(2)}`)
      expect(worst).toBeLessThan(1e-5)
      expect(split.drawn).toEqual(whole.drawn)
      expect([...split.residual].map((r) => r.toFixed(4))).toEqual([...whole.residual].map((r) => r.toFixed(4)))
      // change the parameters here: the workers compute with the new ones once told
      yield* Effect.sync(() => model.params.forEach((p) => tf.tidy(() => p.variable.assign(tf.mul(p.variable, 0.9)))))
      sharder.updated()
      const moved = yield* rowsStep(context)
      expect(moved.loss).not.toBe(whole.loss)
      expect(worstRelative(yield* sharder.step(indices, position), moved)).toBeLessThan(1e-5)
    }))))

  it.effect("a solve that stops on the residual of the rows solved together: each shard stops on its own rows (close, not equal)", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const c = config({
        model: { _tag: "conv", inputShape: [8, 8, 1], classes: K, channels: 4, groups: 2 },
        solver: { _tag: "broyden", maxIter: 30, tol: 1e-4 }
      })
      const { context, sharder } = yield* setup(c, 2)
      const whole = yield* rowsStep(context)
      const split = yield* sharder.step(indices, position)
      // exactly what the two shards give when each is computed on its own in this thread
      const own = combineShards([yield* rowsStep(context, 0, 16), yield* rowsStep(context, 16, 32)])
      expect(worstRelative(split, own)).toBeLessThan(1e-5)
      // and close to the whole batch's step: the solves stop at other steps, within the solver's tolerance
      const worst = worstRelative(split, whole)
      console.log(`workers, batch-wide stopping: worst relative gradient difference ${worst.toExponential(2)} (loss ${whole.loss} vs ${split.loss})`)
      expect(Math.abs(split.loss - whole.loss) / whole.loss).toBeLessThan(1e-4)
      for (const k of Object.keys(whole.grads)) expect(cosine(split.grads[k]!, whole.grads[k]!)).toBeGreaterThan(0.99)
    }))))
})

describe("a run on 2 threads", () => {
  const c = config({ regularizers: { randomStates: { max: 6 } }, epochs: 2 })
  const collect = (cfg: Train.TrainConfig, options: Omit<Train.FitOptions, "onEvent"> = {}) =>
    Effect.gen(function*() {
      const events: Array<Train.TrainEvent> = []
      const summary = yield* Train.run(cfg, { ...options, data: dataset, onEvent: (e) => Effect.sync(() => events.push(e)) })
      return { events, summary }
    })
  const losses = (events: ReadonlyArray<Train.TrainEvent>) => events.flatMap((e) => (e._tag === "Batch" ? [e.loss] : []))
  const evaluations = (events: ReadonlyArray<Train.TrainEvent>) =>
    events.flatMap((e) => (e._tag === "Evaluation" ? [[e.clean, e.robust]] : []))
  const weights = (dir: string) =>
    Effect.map(Checkpoint.read(Train.checkpointDirs(dir).last), (k) => new Map([...k.params, ...k.extras].map((t) => [t.name, Float32Array.from(t.data)])))

  it.effect("follows the 1-thread run (losses to 1e-5, the same evaluations), leaves no tensor or thread, resumes bit-exactly", () =>
    leakCheck(Effect.gen(function*() {
      const [one, two, part] = [yield* tempDir(), yield* tempDir(), yield* tempDir()]
      const single = yield* collect(Train.decodeConfigSync({ ...Train.encodeConfig(c) as object, workers: 1 }), { out: one })
      const c2 = Train.decodeConfigSync({ ...Train.encodeConfig(c) as object, workers: 2 })
      const sharded = yield* collect(c2, { out: two })
      expect(liveWorkers()).toBe(0)
      expect((single.events[0] as Train.Started).workers).toBe(1)
      expect((sharded.events[0] as Train.Started).workers).toBe(2)
      const [a, b] = [losses(single.events), losses(sharded.events)]
      expect(b).toHaveLength(8)
      b.forEach((l, i) => expect(Math.abs(l - a[i]!) / a[i]!).toBeLessThan(1e-5))
      expect(evaluations(sharded.events)).toEqual(evaluations(single.events))
      const [w1, w2] = [yield* weights(one), yield* weights(two)]
      for (const [name, v] of w1) expect(relative(w2.get(name)!, v)).toBeLessThan(1e-4)
      // stop after epoch 1 and resume with 2 threads: the same bytes as the uninterrupted 2-thread run
      const first = yield* collect(c2, { out: part, untilEpoch: 1 })
      expect(first.summary.complete).toBe(false)
      const rest = yield* collect(c2, { out: part, resume: true })
      expect(rest.summary).toMatchObject({ complete: true, resumed: true, step: sharded.summary.step })
      const w3 = yield* weights(part)
      for (const [name, v] of w2) expect(Buffer.from(w3.get(name)!.buffer).equals(Buffer.from(v.buffer))).toBe(true)
      // a run resumes with another thread count (it is not part of what is trained)
      const other = yield* collect(Train.decodeConfigSync({ ...Train.encodeConfig(c) as object, workers: 1 }), { out: part, resume: true })
      expect(other.summary).toMatchObject({ complete: true, resumed: true, step: sharded.summary.step })
      yield* Effect.promise(() => Promise.all([one, two, part].map((d) => fs.rm(d, { recursive: true, force: true }))))
    })))

  it.effect("stopping the event stream early interrupts the run and closes its workers", () =>
    Effect.gen(function*() {
      const out = yield* tempDir()
      const seen = yield* Train.stream(Train.decodeConfigSync({ ...Train.encodeConfig(c) as object, workers: 2 }), { out, data: dataset }).pipe(
        Stream.takeUntil((e) => e._tag === "Batch" && e.step === 3),
        Stream.runCollect
      )
      expect(seen.at(-1)).toMatchObject({ _tag: "Batch", step: 3 })
      expect(liveWorkers()).toBe(0)
      // the interruption saved where the run stood
      const saved = yield* Checkpoint.read(Train.checkpointDirs(out).last)
      expect(saved.metadata.step).toBe(3)
      yield* Effect.promise(() => fs.rm(out, { recursive: true, force: true }))
    }))
})

describe("the workers setting", () => {
  it.effect("config key: auto (default) or a positive integer; DEQ_WORKERS overrides auto; bad values name the key", () =>
    Effect.gen(function*() {
      expect(config().workers).toBe("auto")
      expect(config({ workers: 3 }).workers).toBe(3)
      const e = yield* Effect.flip(Train.decodeConfig({ ...base, workers: 0 }))
      expect(e).toBeInstanceOf(ConfigError)
      expect(e.path).toBe("workers")
      const fc = config().model, conv = config({ model: { _tag: "conv", inputShape: [8, 8, 1], classes: K } }).model
      expect(yield* resolveWorkers(2, fc, {})).toBe(2)
      expect(yield* resolveWorkers("auto", conv, { DEQ_WORKERS: "3" })).toBe(3)
      expect(yield* resolveWorkers(2, conv, { DEQ_WORKERS: "1" })).toBe(2)
      const cores = os.availableParallelism()
      // an idle machine: one thread per core, except FC training
      expect(yield* resolveWorkers("auto", conv, {}, "training", 0)).toBe(cores)
      expect(yield* resolveWorkers("auto", conv, { DEQ_WORKERS: "auto" }, "training", 0)).toBe(cores)
      expect(yield* resolveWorkers("auto", fc, {}, "training", 0)).toBe(1)
      expect(yield* resolveWorkers("auto", fc, {}, "evaluation", 0)).toBe(cores)
      // other jobs hold all but one core: one thread (an explicit count still counts)
      expect(yield* resolveWorkers("auto", conv, {}, "evaluation", cores + 0.6)).toBe(1)
      expect(yield* resolveWorkers("auto", conv, {}, "training", cores - 0.4)).toBe(1)
      expect(yield* resolveWorkers("auto", conv, {}, "training", cores + 3)).toBe(1)
      expect(yield* resolveWorkers(2, conv, {}, "training", cores + 3)).toBe(2)
      const bad = yield* Effect.flip(resolveWorkers("auto", fc, { DEQ_WORKERS: "two" }))
      expect(bad.path).toBe("DEQ_WORKERS")
      expect(bad.message).toContain("two")
    }))

  it("rows split into contiguous ranges whose sizes differ by at most one", () => {
    expect(splitRows(32, 2)).toEqual([[0, 16], [16, 32]])
    expect(splitRows(7, 3)).toEqual([[0, 3], [3, 5], [5, 7]])
    expect(splitRows(2, 4)).toEqual([[0, 1], [1, 2]])
    expect(splitRows(5, 1)).toEqual([[0, 5]])
  })
})
