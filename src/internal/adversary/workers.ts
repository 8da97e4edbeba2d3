/**
 * Evaluation batches on worker threads: an optional service that `evaluate` (evaluation.ts) consults. When it is
 * in the context and can describe the call (`describe`: the classifier and every stage rebuilt from plain data on
 * a worker), the evaluation's batches are computed by the service's threads, each pulling the next batch when it
 * is done; the records are then summarised here in index order exactly as the single-thread ones. Batches stay the
 * single-thread batches and every draw is keyed by dataset index (randomness.ts), so the result does not depend on
 * the thread count. Providers: Train's `evaluationWorkers` (a pool that rebuilds the run's DEQ from its config).
 * See docs/performance.md, "Workers".
 *
 * @example
 * ```
 * const workers = yield* Train.evaluationWorkers({ model, config, deq }, 2) // lives as long as the Scope
 * const r = yield* Adversary.evaluate(classifier, data, attack).pipe(Effect.provideService(EvaluationWorkers, workers))
 * ```
 *
 * @internal
 */
import { Context, Effect } from "effect"
import type { BatchRecord } from "./resume.ts"
import type { AttackError, AttackShape, Classifier, ResumeError } from "./types.ts"

/** One evaluation batch as plain data (images NHWC, flat). */
export interface RemoteBatch {
  readonly x: Float32Array
  readonly shape: readonly [number, number, number, number]
  readonly labels: Int32Array
  readonly index: number
  readonly start: number
  readonly hash: string
  readonly salt: string | undefined
  /** the evaluation's root seed (the worker's Rng is seeded with it: draws are derived from root and path) */
  readonly seed: number
}

/** What a provider knows how to rebuild; opaque to `evaluate` (structured-clone safe). */
export type Recipe = unknown

/** The service shape: how many threads, whether a call can go to them, and one batch on thread `worker`. */
export interface BatchRunner {
  /** threads computing batches (1..threads) */
  readonly threads: number
  /** the recipe of this classifier and these stages, or undefined when a worker could not rebuild them */
  readonly describe: (classifier: Classifier, stages: ReadonlyArray<AttackShape>) => Recipe | undefined
  /** one batch on thread `worker`; a crashed or failing worker is an AttackError naming it (never a hang) */
  readonly run: (worker: number, recipe: Recipe, batch: RemoteBatch) => Effect.Effect<BatchRecord, AttackError>
}

/** Evaluation batches on worker threads (optional: without it every batch runs on the calling thread). */
export class EvaluationWorkers extends Context.Service<EvaluationWorkers, BatchRunner>()("effect-deq/EvaluationWorkers") {}

/**
 * Runs the batches `indices` on the runner's threads, each thread taking the next batch when it is done (batches
 * differ in cost: attacks stop on broken samples); `done` is told each record as it arrives (the resume file).
 */
export const onWorkers = (
  runner: BatchRunner,
  recipe: Recipe,
  indices: ReadonlyArray<number>,
  load: (index: number) => Effect.Effect<RemoteBatch>,
  done: (record: BatchRecord) => Effect.Effect<void, ResumeError>
): Effect.Effect<Array<BatchRecord>, AttackError | ResumeError> =>
  Effect.suspend(() => {
    const records: Array<BatchRecord> = []
    let next = 0
    const thread = (worker: number) =>
      Effect.gen(function*() {
        while (next < indices.length) {
          const batch = yield* load(indices[next++]!)
          const record = yield* runner.run(worker, recipe, batch)
          yield* done(record)
          records.push(record)
        }
      })
    const threads = Array.from({ length: Math.max(1, Math.min(runner.threads, indices.length)) }, (_, k) => k + 1)
    return Effect.as(Effect.forEach(threads, thread, { concurrency: "unbounded", discard: true }), records)
  })

/** Defences a worker can rebuild, with their recipes (registered by whoever made them, e.g. the suite). */
const defences = new WeakMap<object, Recipe>()

/** Records how a worker rebuilds `defence` (e.g. `{ entropyReduction: options }`); returns the defence. */
export const describeDefence = <D extends object>(defence: D, recipe: Recipe): D => {
  defences.set(defence, recipe)
  return defence
}

/** The recipe of a defence registered with {@link describeDefence}. */
export const defenceRecipe = (defence: object): Recipe | undefined => defences.get(defence)

/** The options each DEQ classifier was built with (deq/classifier.ts registers them), for the recipes. */
export const classifierOptions = new WeakMap<object, unknown>()
