/**
 * A run of a sweep as a durable workflow (effect/workflow): one activity per training epoch, then evaluation,
 * dynamics and the run's report. The engine records each finished activity, so a replayed workflow (another
 * runner after a crash, a restarted `deq sweep`) skips what is done and re-runs only the activity that was cut
 * off; the activities themselves are idempotent (docs/sweeps.md, "Activities").
 *
 * @internal
 */
import * as path from "node:path"
import { Context, Effect, Layer, Schema, Semaphore } from "effect"
import { Activity, Workflow } from "effect/workflow"
import * as Train from "../../Train.ts"
import * as Activities from "./activities.ts"
import type { RunSpec } from "./grid.ts"

/** The workflow's payload: where the run writes and what it is. */
const Payload = {
  /** the sweep's output directory (absolute; the same path on every runner) */
  out: Schema.String,
  id: Schema.String,
  spec: Schema.Unknown
}

/** What a finished run returns. */
export const RunOutcome = Schema.Struct({
  id: Schema.String,
  clean: Schema.Number,
  robust: Schema.Number,
  epochs: Schema.Array(Schema.Number)
})

/** Why a run failed (the message of the activity's error). */
export class RunFailed extends Schema.TaggedError<RunFailed>()("RunFailed", {
  id: Schema.String,
  activity: Schema.String,
  message: Schema.String
}) {}

/** The workflow of one run; its execution id is a hash of (output directory, run id). */
export const RunWorkflow = Workflow.make("DeqSweepRun", {
  payload: Payload,
  success: RunOutcome,
  error: RunFailed,
  idempotencyKey: (p) => `${p.out}\u0000${p.id}`
})

/** How many activities a process runs at once (`deq runner --workers`): tfjs work shares one backend. */
export class Workers extends Context.Service<Workers, Semaphore.Semaphore>()("effect-deq/Sweep/Workers") {}

/** A {@link Workers} layer with `n` permits. */
export const workersLayer = (n: number): Layer.Layer<Workers> => Layer.effect(Workers, Semaphore.make(n))

const describe = (e: unknown): string => {
  const tag = (e as { _tag?: unknown })?._tag
  const message = (e as { message?: unknown })?.message
  return `${typeof tag === "string" ? `${tag}: ` : ""}${typeof message === "string" ? message : String(e)}`
}

/** An activity body with its failure as {@link RunFailed}. */
const step = <A, E>(id: string, name: string, body: Effect.Effect<A, E>) =>
  body.pipe(Effect.mapError((e) => new RunFailed({ id, activity: name, message: describe(e) })))

/**
 * The workflow's body: registered on every process that runs activities (runners, the embedded sweep). A run holds
 * one of the process's worker permits from its first activity to its last, so runs finish one after another
 * instead of advancing in lockstep.
 */
export const RunWorkflowLive = RunWorkflow.toLayer((payload) =>
  Effect.flatMap(Effect.service(Workers), (workers) => workers.withPermit(runBody(payload))))

const runBody = Effect.fnUntraced(function*(payload: typeof RunWorkflow.payloadSchema.Type) {
  const spec = payload.spec as RunSpec
  const dir = path.join(payload.out, "runs", payload.id)
  const config = yield* Train.decodeConfig(spec.train).pipe(
    Effect.mapError((e) => new RunFailed({ id: payload.id, activity: "config", message: e.message }))
  )
  const epochs: Array<number> = []
  for (let epoch = 1; epoch <= config.epochs; epoch++) {
    const r = yield* Activity.make({
      name: `train-${epoch}`,
      success: Schema.Struct({ epoch: Schema.Number, loss: Schema.Number, accuracy: Schema.Number, seconds: Schema.Number }),
      error: RunFailed,
      execute: step(payload.id, `train-${epoch}`, Activities.trainUntil(spec, dir, epoch))
    })
    epochs.push(r.epoch)
  }
  const evaluation = yield* Activity.make({
    name: "evaluate",
    success: Schema.Struct({ clean: Schema.Number, robust: Schema.Number, samples: Schema.Number }),
    error: RunFailed,
    execute: step(payload.id, "evaluate", Activities.evaluate(spec, dir))
  })
  yield* Activity.make({
    name: "dynamics",
    error: RunFailed,
    execute: step(payload.id, "dynamics", Activities.analyse(spec, dir))
  })
  yield* Activity.make({
    name: "report",
    error: RunFailed,
    execute: step(payload.id, "report", Activities.report(spec, dir, evaluation))
  })
  return { id: payload.id, clean: evaluation.clean, robust: evaluation.robust, epochs }
})
