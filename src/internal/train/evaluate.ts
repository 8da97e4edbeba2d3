/**
 * The periodic evaluation of a run: clean accuracy and PGD accuracy on the first `eval.subset` test images at the
 * evaluation read-out (uniform start without clamping, last iterate, as the paper's evaluation PGD; docs/method.md,
 * "Evaluation protocol"). One Effect per evaluation batch; the fiber yields between them.
 *
 * @internal
 */
import { Effect } from "effect"
import { type Attack, type AttackError, type Classifier, pgd } from "../../Adversary.ts"
import { batchIndices, type Split, toTensors } from "../../Data.ts"
import * as Dynamics from "../../Dynamics.ts"
import type { ConfigError, WorkerError } from "../../Errors.ts"
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

/** The evaluation's batches of test indices, in order (each is evaluated on its own: its draws are its own). */
export const evaluationBatches = (ev: Evaluator): Array<Int32Array> =>
  batchIndices(Math.min(ev.subset, ev.test.count), { batchSize: ev.batchSize, shuffle: false })

/** Correct counts (clean, under the attack) on some of the evaluation's batches, after `epoch`. */
export const evaluateBatches = (
  ev: Evaluator,
  epoch: number,
  batches: ReadonlyArray<Int32Array>
): Effect.Effect<Counts, AttackError> =>
  Effect.gen(function*() {
    const rng = makeRng(ev.rng.seed("eval", epoch))
    let clean = 0, robust = 0
    for (const indices of batches) {
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
    return { clean, robust }
  })

/** Correct counts of an evaluation: clean, and under the attack. */
export interface Counts {
  readonly clean: number
  readonly robust: number
}

/** The accuracies of an evaluation from its correct counts. */
export const accuracies = (ev: Evaluator, counts: Counts, seconds: number): Accuracies => {
  const n = Math.min(ev.subset, ev.test.count)
  return {
    samples: n,
    clean: n === 0 ? 0 : counts.clean / n,
    ...(ev.attack !== undefined && n > 0 ? { robust: counts.robust / n } : {}),
    seconds
  }
}

/**
 * Evaluates the model as it is after `epoch` (draws seeded by the epoch and each batch's first index, so any
 * split of the batches gives the same counts); `counts` computes them (default: here, every batch).
 */
export const evaluate = Effect.fn("Train.evaluation")(function*(
  ev: Evaluator,
  epoch: number,
  counts: (ev: Evaluator, epoch: number) => Effect.Effect<Counts, AttackError | ConfigError | WorkerError> =
    (ev, epoch) => evaluateBatches(ev, epoch, evaluationBatches(ev))
) {
  const t0 = performance.now()
  const c = yield* counts(ev, epoch)
  return accuracies(ev, c, (performance.now() - t0) / 1000)
})
