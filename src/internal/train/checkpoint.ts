/**
 * Training checkpoints: the model's parameters, the optimiser's moments (extra tensors `adam/m/<param>`,
 * `adam/v/<param>`) and the TrainState with the encoded config in `metadata.extra`, written atomically by
 * src/Checkpoint.ts; and the way back, which refuses a checkpoint trained with another config.
 *
 * @internal
 */
import * as path from "node:path"
import { Effect } from "effect"
import * as Checkpoint from "../../Checkpoint.ts"
import { CheckpointError, ConfigError } from "../../Errors.ts"
import type { DeqModel } from "../../Dynamics.ts"
import { tf } from "../../Tensor.ts"
import type { Adam } from "./adam.ts"
import * as State from "./state.ts"

/** The checkpoint directories of an output directory. */
export const checkpointDirs = (out: string): { readonly last: string; readonly best: string } => ({
  last: path.join(out, "last"),
  best: path.join(out, "best")
})

/** What a training checkpoint holds besides the state: the model, its optimiser, the encoded config, the seed. */
export interface Target {
  /** a built-in model or a custom DeqModel (stored by its variables' names) */
  readonly model: DeqModel
  readonly optimizer: Adam
  readonly config: unknown
  readonly seed: number
}

/** Writes a training checkpoint of `state` to `dir` (atomically; never interrupted half-way). */
export const save = Effect.fn("Train.checkpoint")(function*(dir: string, target: Target, state: State.TrainState) {
  yield* Effect.uninterruptible(
    Checkpoint.save(dir, target.model, {
      metadata: {
        epoch: state.epoch,
        step: state.step,
        seed: target.seed,
        extra: State.encode(state, target.config, tf.getBackend())
      },
      extras: target.optimizer.tensors()
    })
  )
})

/** the first path where two JSON values differ, or undefined */
const firstDifference = (a: unknown, b: unknown, at = ""): string | undefined => {
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return Object.is(a, b) ? undefined : at.length > 0 ? at : "<root>"
  }
  const keys = new Set([...Object.keys(a), ...Object.keys(b)])
  for (const k of keys) {
    const d = firstDifference(
      (a as Record<string, unknown>)[k],
      (b as Record<string, unknown>)[k],
      at.length > 0 ? `${at}.${k}` : k
    )
    if (d !== undefined) return d
  }
  return undefined
}

const withoutWorkers = (config: unknown): unknown => {
  if (typeof config !== "object" || config === null) return config
  const { workers: _workers, ...rest } = config as Record<string, unknown>
  return rest
}

/**
 * Loads the training checkpoint in `dir` into the target's model and optimiser and returns its state, or
 * undefined when there is none (a `dir` that a kill inside a checkpoint swap left absent is read from its complete
 * copy: Checkpoint.present / read). Everything is checked before anything is assigned: the checkpoint itself, the
 * config (another config is a ConfigError naming the first differing key) and every optimiser moment's shape; a
 * failure leaves the model, the optimiser and the tensor count as they were.
 */
export const restore = (
  dir: string,
  target: Target
): Effect.Effect<State.TrainState | undefined, CheckpointError | ConfigError> =>
  Effect.gen(function*() {
    if (!(yield* Checkpoint.present(dir))) return undefined
    const contents = yield* Checkpoint.read(dir)
    const { state, config } = yield* State.restore(contents.metadata.extra, { path: dir, step: contents.metadata.step })
    // how many threads compute a batch is not part of what is trained: a run resumes with any count
    const diff = firstDifference(withoutWorkers(config), withoutWorkers(target.config))
    if (diff !== undefined) {
      return yield* new ConfigError({
        path: diff,
        message: `resume: the checkpoint in ${dir} was trained with a different "${diff}"; start a new run or use the same config`
      })
    }
    const byName = new Map(contents.extras.map((t) => [t.name, t]))
    for (const moment of target.optimizer.tensors()) {
      const stored = byName.get(moment.name)
      if (stored === undefined) {
        return yield* new CheckpointError({ path: contents.dir, tensor: moment.name, message: `optimizer state "${moment.name}" is missing` })
      }
      if (stored.shape.join(",") !== moment.tensor.shape.join(",")) {
        return yield* new CheckpointError({
          path: contents.dir,
          tensor: moment.name,
          message: `optimizer state "${moment.name}" has shape [${stored.shape}], the parameter [${moment.tensor.shape}]`
        })
      }
    }
    yield* Checkpoint.assign(target.model, contents.params, path.join(contents.dir, Checkpoint.MANIFEST))
    yield* Effect.try({
      try: () =>
        target.optimizer.restore(state.optimizerSteps, (name) => {
          const t = byName.get(name)
          return t === undefined ? undefined : Checkpoint.toTensor(t)
        }),
      catch: (e) => new CheckpointError({ path: contents.dir, message: e instanceof Error ? e.message : String(e) })
    })
    return state
  })
