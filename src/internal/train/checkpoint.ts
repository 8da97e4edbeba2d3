/**
 * Training checkpoints: the model's parameters, the optimiser's moments (extra tensors `adam/m/<param>`,
 * `adam/v/<param>`) and the TrainState with the encoded config in `metadata.extra`, written atomically by
 * src/Checkpoint.ts; and the way back, which refuses a checkpoint trained with another config.
 *
 * @internal
 */
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { Effect } from "effect"
import * as Checkpoint from "../../Checkpoint.ts"
import { CheckpointError, ConfigError } from "../../Errors.ts"
import type { Model } from "../../Models.ts"
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
  readonly model: Model
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
 * undefined when there is none. A checkpoint of another config is a ConfigError naming the first differing key.
 */
export const restore = (
  dir: string,
  target: Target
): Effect.Effect<State.TrainState | undefined, CheckpointError | ConfigError> =>
  Effect.gen(function*() {
    const present = yield* Effect.promise(() =>
      fs.stat(path.join(dir, Checkpoint.MANIFEST)).then(() => true, () => false)
    )
    if (!present) return undefined
    const loaded = yield* Checkpoint.load(dir, target.model)
    const { state, config } = yield* State.restore(loaded.metadata.extra, { path: dir, step: loaded.metadata.step })
    // how many threads compute a batch is not part of what is trained: a run resumes with any count
    const diff = firstDifference(withoutWorkers(config), withoutWorkers(target.config))
    if (diff !== undefined) {
      return yield* new ConfigError({
        path: diff,
        message: `resume: the checkpoint in ${dir} was trained with a different "${diff}"; start a new run or use the same config`
      })
    }
    const byName = new Map(loaded.extras.map((t) => [t.name, t]))
    yield* Effect.try({
      try: () =>
        target.optimizer.restore(state.optimizerSteps, (name) => {
          const t = byName.get(name)
          return t === undefined ? undefined : Checkpoint.toTensor(t)
        }),
      catch: (e) => new CheckpointError({ path: dir, message: e instanceof Error ? e.message : String(e) })
    })
    return state
  })
