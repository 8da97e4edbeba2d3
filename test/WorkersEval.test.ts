/**
 * Evaluation on worker threads (src/internal/train/workersEval.ts, src/internal/adversary/workers.ts): x_adv of PGD,
 * APGD-T, FAB-T and Square computed on a worker matches the calling thread's to 1e-5 relative; the whole
 * evaluation suite (ready-made, grid, AutoAttack, Square, the defended block, the eps sweep) on 2 workers gives
 * the single-thread rows exactly (every accuracy and per-sample outcome); a call the workers cannot rebuild (a
 * custom attack) runs on the calling thread; a worker that throws, exits or crashes in a batch is an AttackError
 * naming it, in seconds, and no thread or tensor is left over.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import * as Evaluation from "../src/Evaluation.ts"
import { Solver } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import * as Train from "../src/Train.ts"
import { hashBatch } from "../src/internal/adversary/resume.ts"
import { EvaluationWorkers } from "../src/internal/adversary/workers.ts"
import { liveWorkers } from "../src/internal/tensor/pool.ts"
import { makeEvaluationWorkers } from "../src/internal/train/workersEval.ts"
import { leakCheck, Rng, tf, useBackend } from "../src/Tensor.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const K = 4
const dataset = Effect.runSync(Data.synthetic({ height: 8, width: 8, classes: K, trainSize: 32, testSize: 48, seed: 3 }))
const config = Train.decodeConfigSync({
  model: { _tag: "fc", inputShape: [8, 8, 1], hidden: 24, classes: K },
  data: { name: "synthetic", height: 8, width: 8, classes: K, trainSize: 32, testSize: 48, seed: 3 },
  solver: { _tag: "anderson", maxIter: 6, tol: 1e-3 },
  regularizers: { randomStates: { max: 6 } },
  attack: { eps: 0.1, stepSize: 0.025, steps: 2 },
  seed: 11
})

/** The run's model and DEQ (as `deq eval` builds them from a checkpoint), owned by the Scope. */
const setup = Effect.gen(function*() {
  const model = yield* Models.build(config.model, { seed: 5 })
  // larger weights than the initialisation: predictions that depend on the input, so attacks have something to break
  for (const p of model.params) tf.tidy(() => p.variable.assign(tf.mul(p.variable, 3)))
  const solver = yield* Effect.provide(Effect.service(Solver), Train.solverLayer(config))
  const deq = Dynamics.makeWith(model, solver, { backward: Train.gradientOf(config.gradient) })
  return { model, config, deq, readOut: Dynamics.readOut.state(6) }
})

const relative = (a: Float32Array, b: Float32Array) => {
  let d = 0, n = 0
  for (let i = 0; i < a.length; i++) {
    d += (a[i]! - b[i]!) ** 2
    n += b[i]! ** 2
  }
  return Math.sqrt(d) / Math.max(Math.sqrt(n), 1e-12)
}

const pixels = 64
const batchOf = (start: number, n: number, seed: number) => {
  const x = dataset.test.images.slice(start * pixels, (start + n) * pixels)
  const labels = dataset.test.labels.slice(start, start + n)
  return { x, shape: [n, 8, 8, 1] as const, labels, index: 0, start, hash: hashBatch(x, labels), salt: "s", seed }
}

describe("x_adv on a worker", () => {
  it.live("PGD, APGD-T, FAB-T and Square through an intermediate state: x_adv matches the calling thread to 1e-5", () =>
    Effect.scoped(Effect.gen(function*() {
      const run = yield* setup
      const runner = yield* makeEvaluationWorkers(run, 1)
      const classifier = Adversary.deqClassifier(run.deq, { source: Adversary.GradientSource.intermediate(4, 2, 0.5), readOut: run.readOut })
      const attacks = [
        yield* Adversary.pgd({ eps: 0.1, steps: 4 }),
        yield* Adversary.apgdTargeted({ eps: 0.1, steps: 3, targets: 2 }),
        yield* Adversary.fabTargeted({ eps: 0.1, steps: 3, targets: 2 }),
        yield* Adversary.square({ eps: 0.1, queries: 20 })
      ]
      for (const attack of attacks) {
        const recipe = runner.describe(classifier, [attack])
        expect(recipe).toBeDefined()
        const b = batchOf(8, 16, 11)
        const remote = yield* runner.perturb(1, recipe, { ...b, x: b.x.slice() })
        const local = yield* Effect.scoped(Effect.gen(function*() {
          const x = tf.tensor4d(b.x, [16, 8, 8, 1])
          const y = tf.tensor1d(b.labels, "int32")
          const r = yield* attack.perturb(classifier, x, y, { keys: Array.from({ length: 16 }, (_, i) => 8 + i), salt: "s" })
          const out = Float32Array.from(r.xAdv.dataSync() as Float32Array)
          x.dispose()
          y.dispose()
          return out
        })).pipe(Effect.provide(Rng.seeded(11)))
        expect(relative(remote, local), attack.name).toBeLessThan(1e-5)
        // the attack moved something: the comparison is not between two copies of x
        expect(relative(local, b.x), attack.name).toBeGreaterThan(0)
      }
      // a custom attack has no recipe: it stays on this thread
      const custom = Adversary.make("custom", attacks[0]!.settings, (_env, x) => x.clone())
      expect(runner.describe(classifier, [custom])).toBeUndefined()
    })))
})

const suiteSettings = new Evaluation.SuiteConfig({
  samples: 48,
  defendedSamples: 16,
  batchSize: 16,
  pgdSteps: 3,
  apgdSteps: 3,
  squareQueries: 12,
  targets: 2,
  defendedApgdSteps: 2,
  defendedTargets: 2,
  defendedSquareQueries: 4,
  defendedRestarts: 1,
  defence: { rounds: 1, solverSteps: 1, inputSteps: 2 }
})

const runSuite = (run: Effect.Success<typeof setup>) =>
  Evaluation.runSuite(run.deq, run.readOut, dataset.test, {
    suite: suiteSettings,
    eps: 0.1,
    steps: 6,
    families: new Set(["ready-made", "grid", "aa"] as const),
    defence: true,
    log: () => Effect.void
  }).pipe(Effect.provide(Rng.seeded(11)))

describe("the evaluation suite on 2 workers", () => {
  it.live("every row's accuracies and per-sample outcomes equal the single-thread suite's; no thread or tensor left", () =>
    Effect.scoped(Effect.gen(function*() {
      const run = yield* setup
      const single = yield* runSuite(run)
      // the batches that went to the workers (all of them: every attack of the suite has a recipe)
      const threads = new Set<number>()
      let batches = 0
      const sharded = yield* leakCheck(Effect.scoped(Effect.gen(function*() {
        const runner = yield* makeEvaluationWorkers(run, 2)
        const counted = { ...runner, run: (w: number, r: unknown, b: Parameters<typeof runner.run>[2]) => {
          threads.add(w)
          batches++
          return runner.run(w, r, b)
        } }
        return yield* runSuite(run).pipe(Effect.provideService(EvaluationWorkers, counted))
      })))
      const expected = single.rows.filter((r) => r.timedWith === undefined && r.headline !== true).reduce((n, r) => n + Math.ceil(r.result.samples / 16) * (r.protocol.startsWith("intermediate states") ? 12 : 1), 0)
      expect(batches).toBe(expected)
      expect([...threads].sort()).toEqual([1, 2])
      expect(sharded.rows.length).toBe(single.rows.length)
      for (const [i, row] of single.rows.entries()) {
        const other = sharded.rows[i]!
        expect(other.protocol).toBe(row.protocol)
        expect([other.result.cleanAccuracy, other.result.robustAccuracy], row.protocol).toEqual([row.result.cleanAccuracy, row.result.robustAccuracy])
        expect(other.result.perSample, row.protocol).toEqual(row.result.perSample)
        expect(other.result.passes, row.protocol).toEqual(row.result.passes)
      }
      expect(sharded.strongest).toBe(single.strongest)
      // the attacks did something: not every sample is robust
      expect(single.undefended!.robustAccuracy).toBeLessThan(single.undefended!.cleanAccuracy)
      expect(liveWorkers()).toBe(0)
    })))
})

describe("a worker that fails a batch", () => {
  for (const fault of ["throw:2", "exit:2", "crash:1"]) {
    it.live(`${fault.split(":")[0]}: an AttackError naming the worker, in seconds; no thread left`, () =>
      Effect.scoped(Effect.gen(function*() {
        const run = yield* setup
        process.env["DEQ_WORKER_FAULT"] = fault
        const workers = Layer.effect(EvaluationWorkers, makeEvaluationWorkers(run, 2))
        const started = performance.now()
        const classifier = Adversary.deqClassifier(run.deq, { source: Adversary.GradientSource.implicit(), readOut: run.readOut })
        const pgd = yield* Adversary.pgd({ eps: 0.1, steps: 3 })
        const data = { x: dataset.test.images, shape: [8, 8, 1] as const, y: dataset.test.labels }
        const error = yield* Effect.flip(
          Effect.scoped(Adversary.evaluate(classifier, data, pgd, { batchSize: 8 }).pipe(Effect.provide(workers), Effect.provide(Rng.seeded(1))))
        ).pipe(Effect.ensuring(Effect.sync(() => delete process.env["DEQ_WORKER_FAULT"])))
        expect(error).toBeInstanceOf(Adversary.AttackError)
        expect(error.message).toMatch(/worker [12]/)
        expect(performance.now() - started).toBeLessThan(60_000)
        expect(liveWorkers()).toBe(0)
      })))
  }
})
