/**
 * Composing an adversarial-training pipeline in code: the program a user of effect-deq writes.
 *
 * Trains a small FC DEQ with PGD-AT and random intermediate states (Sec. 3.3) on synthetic data, then evaluates it
 * with the ready-made gradients and the intermediate-state grid. The ablation ("no random states") is the same
 * program provided with one different layer. Run: `npx tsx examples/compose.ts` (about 20 s).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer } from "effect"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import type { ConfigError } from "../src/Errors.ts"
import { Solver } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import * as Regularizers from "../src/Regularizers.ts"
import { Backend, Rng } from "../src/Tensor.ts"
import * as Train from "../src/Train.ts"
import { pathToFileURL } from "node:url"

const config = Train.decodeConfigSync({
  model: { _tag: "fc", inputShape: [8, 8, 1], hidden: 32, classes: 4 },
  data: { name: "synthetic", height: 8, width: 8, classes: 4, trainSize: 256, testSize: 64 },
  solver: { _tag: "broyden", maxIter: 8, tol: 1e-3 },
  method: { _tag: "pgd-at" },
  attack: { eps: 0.1, stepSize: 0.025, steps: 5 },
  epochs: 4,
  batchSize: 32,
  lr: 5e-3,
  seed: 42
})

/** Trains with the training read-out layer given, then evaluates at eps 0.1: one row per gradient source plus the grid. */
export const program = (name: string, readOut: Layer.Layer<Regularizers.TrainReadOut, ConfigError>) =>
  Effect.gen(function*() {
    const data = yield* Data.synthetic({ height: 8, width: 8, classes: 4, trainSize: 256, testSize: 64 })
    const model = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 32, classes: 4 }, { seed: 1 })
    const summary = yield* Train.fit(model, data, config)
    yield* Effect.logInfo(`trained: loss ${summary.lastEpoch?.loss.toFixed(4)}`)
    const deq = yield* Dynamics.make(model, { solve: { maxIter: 8 } })
    const pgd = yield* Adversary.pgd({ eps: 0.1, stepSize: 0.025, steps: 10 })
    const test = { x: data.test.images, shape: [8, 8, 1] as const, y: data.test.labels }
    return yield* Adversary.evaluateDeq(deq, test, pgd, { name, grid: Adversary.Grid.small(8) })
  }).pipe(
    Effect.scoped,
    Effect.provide(Layer.mergeAll(
      Solver.broyden({ maxIter: 8, tol: 1e-3 }),
      readOut,
      Regularizers.noJacobian,
      Layer.effect(Adversary.Attack, Adversary.pgd({ eps: 0.1, stepSize: 0.025, steps: 5, keepBest: false })),
      Rng.seeded(42)
    ))
  )

/** Both arms of the ablation, as one Markdown table. */
export const main = Effect.gen(function*() {
  const withRis = yield* program("PGD-AT + RIS", Regularizers.randomIntermediateStates({ max: 8 }))
  const withoutRis = yield* program("PGD-AT", Regularizers.finalState())
  return Adversary.toMarkdown([...withRis, ...withoutRis])
})

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main.pipe(Effect.flatMap(Console.log), Effect.provide(Backend.auto), NodeRuntime.runMain)
}
