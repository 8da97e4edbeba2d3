/**
 * Attack evaluations on worker threads: the provider of Adversary's EvaluationWorkers service for a trained run.
 * Each worker (workersEntry.ts, its own backend with the project's kernels, and the native ones when built) builds
 * the run's DEQ from its training config and the run's parameters, once; then it answers "batch" requests: one
 * evaluation batch of a classifier and attacks rebuilt from plain data (their recipes, made here), seeded with
 * the evaluation's root seed, so its record is the single-thread one. A call that cannot be described (another
 * deq, a custom attack or defence) runs on the calling thread as before. See docs/performance.md, "Workers".
 *
 * @example
 * ```
 * const runner = yield* makeEvaluationWorkers({ model, config, deq }, 2) // lives as long as the Scope
 * yield* Adversary.evaluate(classifier, data, attack).pipe(Effect.provideService(EvaluationWorkers, runner))
 * ```
 *
 * @internal
 */
import { Effect, Layer, Schema, Scope } from "effect"
import * as Adversary from "../../Adversary.ts"
import { decode } from "../../Config.ts"
import * as Dynamics from "../../Dynamics.ts"
import { ConfigError, type WorkerError } from "../../Errors.ts"
import { Solver } from "../../FixedPoint.ts"
import * as Models from "../../Models.ts"
import * as Regularizers from "../../Regularizers.ts"
import { acquire, Rng, tf } from "../../Tensor.ts"
import type { DeqClassifierOptions } from "../adversary/deq/classifier.ts"
import { runBatch } from "../adversary/evaluation.ts"
import type { BatchRecord } from "../adversary/resume.ts"
import type { AttackShape, Classifier } from "../adversary/types.ts"
import { type BatchRunner, classifierOptions, defenceRecipe, EvaluationWorkers, type RemoteBatch } from "../adversary/workers.ts"
import { entryOf, make as makePool, type RemoteFailure } from "../tensor/pool.ts"
import { gradientOf, TrainConfig } from "./config.ts"
import { solverLayer } from "./layers.ts"

/** What the workers rebuild: the run's model (config and parameters) and its DEQ. */
export interface EvaluatedRun {
  readonly model: Models.Model
  readonly config: TrainConfig
  /** the DEQ the classifiers are built on (calls on another deq run on the calling thread) */
  readonly deq: Dynamics.Deq
}

/** The evaluation workers of a run: Adversary's BatchRunner, and x_adv of one batch on a worker (tests, tools). */
export interface EvaluationRunner extends BatchRunner {
  readonly perturb: (worker: number, recipe: unknown, batch: RemoteBatch) => Effect.Effect<Float32Array, Adversary.AttackError>
}

/** A classifier and its stages as plain data. */
interface Recipe {
  readonly classifier: Omit<DeqClassifierOptions, "defence"> & { readonly defence?: DefenceRecipe }
  readonly stages: ReadonlyArray<{ readonly name: string; readonly options: Readonly<Record<string, unknown>> }>
}

/** The defences a worker rebuilds (the suite registers them: Adversary's describeDefence). */
export interface DefenceRecipe {
  readonly entropyReduction: typeof Regularizers.EntropyReductionOptions.Encoded
}

/** The messages of an evaluation worker. */
export type EvalRequest =
  | { readonly kind: "deq"; readonly backend: string; readonly config: unknown; readonly params: Record<string, Float32Array> }
  | { readonly kind: "batch"; readonly recipe: Recipe; readonly batch: RemoteBatch }
  | { readonly kind: "perturb"; readonly recipe: Recipe; readonly batch: RemoteBatch }

/** The attack constructors by the name they give their attacks. */
const constructors: Record<string, (o: never) => Effect.Effect<Adversary.Attack["Service"], ConfigError>> = {
  pgd: Adversary.pgd,
  "pgd-l2": Adversary.pgd,
  "apgd-ce": Adversary.apgd,
  "apgd-dlr": Adversary.apgd,
  "apgd-t": Adversary.apgdTargeted,
  "fab-t": Adversary.fabTargeted,
  square: Adversary.square,
  fgsm: Adversary.fgsm,
  "fgm-l2": Adversary.fgsm
}

/** The attack a stage recipe names, or undefined when there is none by that name. */
const rebuildStage = (s: Recipe["stages"][number]): Effect.Effect<AttackShape, ConfigError> => {
  const make = constructors[s.name]
  if (make === undefined) return Effect.fail(new ConfigError({ path: "attack", message: `no attack named "${s.name}" to rebuild on a worker` }))
  return make(s.options as never)
}

/** JSON with sorted keys (options decoded twice may list their keys in another order). */
const canonical = (v: unknown): string =>
  JSON.stringify(v, (_k, x: unknown) =>
    x !== null && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x)

/** The recipe of a call, when a worker rebuilds exactly these stages and this classifier of `deq`. */
export const describeCall = (deq: Dynamics.Deq, classifier: Classifier, stages: ReadonlyArray<AttackShape>): Recipe | undefined => {
  const options = classifierOptions.get(classifier) as DeqClassifierOptions | undefined
  if (options === undefined || (classifier as Adversary.DeqClassifier).deq !== deq) return undefined
  const defence = options.defence === undefined ? undefined : defenceRecipe(options.defence) as DefenceRecipe | undefined
  if (options.defence !== undefined && defence === undefined) return undefined
  const recipes = stages.map((s) => ({ name: s.name, options: s.settings.options }))
  // a stage counts only when rebuilding it gives the same attack (custom attacks, unknown options: this thread)
  for (const [k, r] of recipes.entries()) {
    const rebuilt = Effect.runSync(Effect.result(rebuildStage(r)))
    if (rebuilt._tag !== "Success" || rebuilt.success.name !== stages[k]!.name) return undefined
    if (canonical(rebuilt.success.settings) !== canonical(stages[k]!.settings)) return undefined
  }
  const { defence: _d, ...rest } = options
  return { classifier: { ...rest, ...(defence !== undefined ? { defence } : {}) }, stages: recipes }
}

/** an attack's own error as it was; anything else becomes the pool's WorkerError naming the worker */
const revive = (f: RemoteFailure): Adversary.AttackError | undefined =>
  f._tag === "AttackError"
    ? new Adversary.AttackError({ attack: String(f.fields["attack"] ?? "?"), message: f.message, ...(typeof f.fields["sample"] === "number" ? { sample: f.fields["sample"] } : {}) })
    : undefined

const asAttackError = (batch: RemoteBatch) => (e: Adversary.AttackError | WorkerError): Adversary.AttackError =>
  e._tag === "WorkerError" ? new Adversary.AttackError({ attack: "evaluate", message: `batch ${batch.index}: ${e.message}` }) : e

/**
 * `threads` evaluation workers for a run, alive as long as the Scope (spawned and each DEQ built here, once).
 * A worker that cannot start is a WorkerError; one that crashes or fails later fails its batch with an AttackError
 * naming it.
 */
export const makeEvaluationWorkers = (run: EvaluatedRun, threads: number): Effect.Effect<EvaluationRunner, WorkerError, Scope.Scope> =>
  Effect.gen(function*() {
    const params = Object.fromEntries(run.model.params.map((p) => [p.name, p.variable.dataSync() as Float32Array]))
    const init: EvalRequest = { kind: "deq", backend: tf.getBackend(), config: Schema.encodeSync(TrainConfig)(run.config), params }
    const pool = yield* makePool<Adversary.AttackError>({
      entry: entryOf(import.meta.url, "workersEntry"),
      size: threads,
      init: () => ({ body: init }),
      env: { DEQ_NATIVE_THREADS: "1" },
      revive
    })
    const runner: EvaluationRunner = {
      threads,
      describe: (classifier, stages) => describeCall(run.deq, classifier, stages),
      run: (worker, recipe, batch) => {
        const body: EvalRequest = { kind: "batch", recipe: recipe as Recipe, batch }
        return pool.request(worker, { body, transfer: [batch.x.buffer as ArrayBuffer] }).pipe(
          Effect.map((u) => u as BatchRecord),
          Effect.mapError(asAttackError(batch))
        )
      },
      perturb: (worker, recipe, batch) => {
        const body: EvalRequest = { kind: "perturb", recipe: recipe as Recipe, batch }
        return pool.request(worker, { body, transfer: [batch.x.buffer as ArrayBuffer] }).pipe(
          Effect.map((u) => u as Float32Array),
          Effect.mapError(asAttackError(batch))
        )
      }
    }
    return runner
  })

/** The EvaluationWorkers service of a run as a Layer (the workers live as long as the Layer's scope). */
export const evaluationWorkers = (run: EvaluatedRun, threads: number): Layer.Layer<EvaluationWorkers, WorkerError> =>
  Layer.effect(EvaluationWorkers, makeEvaluationWorkers(run, threads))

// ---------------------------------------------------------------------------------------------------------------
// the worker side (workersEntry.ts)
// ---------------------------------------------------------------------------------------------------------------

/** A worker's DEQ, built by its "deq" request. */
export interface WorkerDeq {
  readonly deq: Dynamics.Deq
}

/** Builds the run's model (its parameters assigned) and DEQ in this worker; resources live in `scope`. */
export const buildWorkerDeq = (request: Extract<EvalRequest, { kind: "deq" }>, scope: Scope.Scope): Effect.Effect<WorkerDeq, ConfigError> =>
  Effect.gen(function*() {
    const config = yield* decode(TrainConfig)(request.config)
    const model = yield* Scope.provide(Models.build(config.model, { seed: 0 }), scope)
    for (const p of model.params) {
      const v = request.params[p.name]
      if (v === undefined || v.length !== p.variable.size) {
        return yield* new ConfigError({ path: `params.${p.name}`, message: `the worker's model has no parameter ${p.name} of ${p.variable.size} values` })
      }
      tf.tidy(() => p.variable.assign(tf.tensor(v, p.variable.shape)))
    }
    const solver = yield* Effect.provide(Effect.service(Solver), solverLayer(config))
    return { deq: Dynamics.makeWith(model, solver, { backward: gradientOf(config.gradient) }) }
  })

/** The classifier and stages of a recipe, rebuilt on this worker's DEQ. */
const rebuild = (w: WorkerDeq, recipe: Recipe) =>
  Effect.gen(function*() {
    const { defence: d, ...options } = recipe.classifier
    const defence = d === undefined ? undefined : yield* Regularizers.makeEntropyReduction(d.entropyReduction)
    const classifier = Adversary.deqClassifier(w.deq, { ...options, ...(defence !== undefined ? { defence } : {}) })
    return { classifier, stages: yield* Effect.forEach(recipe.stages, rebuildStage) }
  })

/**
 * One request in this worker: "batch", an evaluation batch (the single-thread batch code); "perturb", the first
 * stage's x_adv on the batch (keys: dataset indices from `start`), as the calling thread's `perturb` would give.
 */
export const runWorkerBatch = (
  w: WorkerDeq,
  request: Extract<EvalRequest, { kind: "batch" | "perturb" }>
): Effect.Effect<BatchRecord | Float32Array, Adversary.AttackError | ConfigError> =>
  Effect.gen(function*() {
    const { recipe, batch } = request
    const { classifier, stages } = yield* rebuild(w, recipe)
    return yield* Effect.scoped(Effect.gen(function*() {
      const x = yield* acquire(() => tf.tensor4d(batch.x, batch.shape as [number, number, number, number]))
      if (request.kind === "batch") return yield* runBatch(classifier, stages, x, batch.labels, batch.index, batch.start, batch.hash, batch.salt)
      const y = yield* acquire(() => tf.tensor1d(batch.labels, "int32"))
      const keys = Array.from(batch.labels, (_, i) => batch.start + i)
      const r = yield* stages[0]!.perturb(classifier, x, y, { keys, ...(batch.salt !== undefined ? { salt: batch.salt } : {}) })
      return Float32Array.from(r.xAdv.dataSync() as Float32Array)
    })).pipe(Effect.provide(Rng.seeded(batch.seed)))
  })
