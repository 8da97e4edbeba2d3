/**
 * The periodic evaluation of a run: clean accuracy and PGD accuracy on the first `eval.subset` test images at the
 * evaluation read-out (uniform start without clamping, last iterate, as the paper's evaluation PGD; docs/method.md,
 * "Evaluation protocol"). One Effect per evaluation batch; the fiber yields between them.
 *
 * @internal
 */
import { Effect } from "effect"
import { type Attack, type Classifier, pgd } from "../../Adversary.ts"
import { batchIndices, type Split, toTensors } from "../../Data.ts"
import * as Dynamics from "../../Dynamics.ts"
import type { ConfigError } from "../../Errors.ts"
import { acquire, makeRng, Rng, tf } from "../../Tensor.ts"
import type { TrainConfig } from "./config.ts"
import { correct } from "./losses.ts"
import type { StepContext } from "./step.ts"

/** What an evaluation needs: the classifier at the evaluation read-out, the attack (none: clean only), the data. */
export interface Evaluator {
  readonly classifier: Classifier
  readonly attack?: Attack["Service"]
  readonly test: Split
  readonly subset: number
  readonly batchSize: number
  readonly rng: StepContext["rng"]
}

/** One evaluation's accuracies. */
export interface Accuracies {
  readonly samples: number
  readonly clean: number
  /** PGD accuracy (absent when the evaluation attack is off) */
  readonly robust?: number
  readonly seconds: number
}

const describe = (r: Dynamics.ReadOut): string => {
  switch (r._tag) {
    case "Final":
      return "final"
    case "State":
      return `state ${r.n}`
    case "Ensemble":
      return `ensemble ${r.from}..${r.to}`
    case "RandomState":
      return `random state 1..${r.max}${r.perSample === true ? " per sample" : ""}`
  }
}

/** The evaluator of a run: PGD with the eval settings (eps and step size default to the training attack's). */
export const makeEvaluator = (c: StepContext, config: TrainConfig, test: Split): Effect.Effect<Evaluator, ConfigError> =>
  Effect.gen(function*() {
    const e = config.eval
    const r = c.readOut.evalReadOut
    const classifier: Classifier = {
      name: `deq/eval/${describe(r)}`,
      logits: (x, ctx) => Dynamics.logits(c.deq, x, r, { stream: c.rng.stream("classifier", ctx?.seed ?? 0) }),
      randomized: r._tag === "RandomState"
    }
    const attack = e.steps > 0 ?
      yield* pgd({
        eps: e.eps ?? config.attack.eps,
        stepSize: e.stepSize ?? config.attack.stepSize,
        steps: e.steps,
        randomStartClamp: false,
        keepBest: false
      }) :
      undefined
    return { classifier, ...(attack !== undefined ? { attack } : {}), test, subset: e.subset, batchSize: e.batchSize, rng: c.rng }
  })

/** Evaluates the model as it is after `epoch` (draws seeded by the epoch). */
export const evaluate = Effect.fn("Train.evaluation")(function*(ev: Evaluator, epoch: number) {
  const t0 = performance.now()
  const n = Math.min(ev.subset, ev.test.count)
  const rng = makeRng(ev.rng.seed("eval", epoch))
  let clean = 0, robust = 0
  for (const indices of batchIndices(n, { batchSize: ev.batchSize, shuffle: false })) {
    const counts = yield* Effect.scoped(Effect.gen(function*() {
      const { x, y } = yield* acquire(() => toTensors(ev.test, indices))
      const c = yield* Effect.sync(() =>
        tf.tidy(() => correct(ev.classifier.logits(x, { seed: rng.seed("clean", indices[0]!) }), y))
      )
      if (ev.attack === undefined) return { clean: c, robust: 0 }
      const r = yield* ev.attack.perturb(ev.classifier, x, y, { keys: indices }).pipe(Effect.provideService(Rng, rng))
      const a = yield* Effect.sync(() =>
        tf.tidy(() => correct(ev.classifier.logits(r.xAdv, { seed: rng.seed("robust", indices[0]!) }), y))
      )
      return { clean: c, robust: a }
    }))
    clean += counts.clean
    robust += counts.robust
    yield* Effect.yieldNow
  }
  const result: Accuracies = {
    samples: n,
    clean: n === 0 ? 0 : clean / n,
    ...(ev.attack !== undefined && n > 0 ? { robust: robust / n } : {}),
    seconds: (performance.now() - t0) / 1000
  }
  return result
})
