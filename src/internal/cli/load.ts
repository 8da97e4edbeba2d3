/**
 * Finding and loading what `deq eval` / `deq dynamics` work on: a checkpoint directory (or a run directory holding
 * `best/` and `last/`), its model, the training config stored with it, and the DEQ the config describes (solver,
 * gradient and evaluated read-out).
 *
 * @internal
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, type Scope } from "effect"
import * as Checkpoint from "../../Checkpoint.ts"
import * as Data from "../../Data.ts"
import * as Dynamics from "../../Dynamics.ts"
import { CheckpointError, type ConfigError, type DatasetError } from "../../Errors.ts"
import { Solver } from "../../FixedPoint.ts"
import type * as Models from "../../Models.ts"
import * as Train from "../../Train.ts"

/** A loaded checkpoint with everything the evaluation commands need. */
export interface Loaded {
  /** the checkpoint directory actually read */
  readonly checkpoint: string
  /** the run directory (the checkpoint's parent when it is a run's `best` / `last`) */
  readonly runDir: string
  readonly model: Models.Model
  readonly metadata: Checkpoint.Metadata
  /** the training config stored with the checkpoint */
  readonly config: Train.TrainConfig
  readonly deq: Dynamics.Deq
  /** the read-out evaluations use: z_N under random intermediate states, the final state otherwise */
  readonly readOut: Dynamics.ReadOut
  /** the solver budget N (number of intermediate states) */
  readonly steps: number
}

/**
 * The checkpoint a path names: the directory itself when it holds a checkpoint, else its `last/` (the end of
 * training), else its `best/`; a `last/` or `best/` that a kill inside a checkpoint swap left absent counts when a
 * copy of it lies beside it (Checkpoint.present; the load reads the newest complete copy). `last/` comes first
 * because `best/` is selected on held-out test images, which an evaluation on the same images would then
 * overrate. A CheckpointError says where it looked.
 */
export const resolveCheckpoint = (dir: string): Effect.Effect<{ readonly checkpoint: string; readonly runDir: string }, CheckpointError> =>
  Effect.gen(function*() {
    const root = path.resolve(dir)
    if (yield* Checkpoint.present(root)) {
      const base = path.basename(root)
      return { checkpoint: root, runDir: base === "best" || base === "last" ? path.dirname(root) : root }
    }
    if (!fs.existsSync(root)) {
      return yield* new CheckpointError({ path: root, message: `no checkpoint: ${root} does not exist` })
    }
    for (const sub of ["last", "best"]) {
      const candidate = path.join(root, sub)
      if (yield* Checkpoint.present(candidate)) return { checkpoint: candidate, runDir: root }
    }
    return yield* new CheckpointError({
      path: root,
      message: `no checkpoint in ${root}: looked for ${Checkpoint.MANIFEST} there and in its last/ and best/ directories`
    })
  })

/** The training config stored in a checkpoint's metadata (written by Train). */
export const storedConfig = (checkpoint: string, metadata: Checkpoint.Metadata): Effect.Effect<Train.TrainConfig, CheckpointError> => {
  const extra = metadata.extra as { readonly config?: unknown } | undefined
  if (extra?.config === undefined) {
    return Effect.fail(new CheckpointError({ path: checkpoint, message: "the checkpoint holds no training config (not written by deq train)" }))
  }
  return Train.decodeConfig(extra.config).pipe(
    Effect.mapError((e) => new CheckpointError({ path: checkpoint, message: `the stored training config is invalid: ${e.message}` }))
  )
}

/** The DEQ a training config describes, around a built model: its solver, its gradient, its evaluated read-out. */
export const deqOf = (
  model: Models.Model,
  config: Train.TrainConfig
): Effect.Effect<{ readonly deq: Dynamics.Deq; readonly readOut: Dynamics.ReadOut; readonly steps: number }, ConfigError> =>
  Effect.gen(function*() {
    const solver = yield* Effect.provide(Effect.service(Solver), Train.solverLayer(config))
    const deq = Dynamics.makeWith(model, solver, { backward: Train.gradientOf(config.gradient) })
    const steps = config.solver.maxIter
    const ris = config.regularizers.randomStates
    const readOut = ris === undefined ? Dynamics.readOut.final : Dynamics.readOut.state(ris.max ?? steps)
    return { deq, readOut, steps }
  })

/** Loads a checkpoint (model owned by the current Scope), its config and its DEQ. */
export const loadCheckpoint = (dir: string): Effect.Effect<Loaded, CheckpointError | ConfigError, Scope.Scope> =>
  Effect.gen(function*() {
    const { checkpoint, runDir } = yield* resolveCheckpoint(dir)
    const { model, metadata } = yield* Checkpoint.loadModel(checkpoint)
    const config = yield* storedConfig(checkpoint, metadata)
    const { deq, readOut, steps } = yield* deqOf(model, config)
    return { checkpoint, runDir, model, metadata, config, deq, readOut, steps }
  })

/** The first `samples` test images of the dataset a config names. */
export const testSubset = (config: Train.TrainConfig, samples: number): Effect.Effect<Data.Split, DatasetError> =>
  Effect.map(Data.load(config.data), (d) => Data.take(d.test, samples))
