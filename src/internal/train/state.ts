/**
 * The resumable state of a training run as one immutable value: where the run is (epoch, batch, step), the best
 * evaluation so far, the running sums of the epoch in progress and a reference to the optimiser's state (its step
 * count; its moments are checkpoint tensors named `adam/m/<param>`, `adam/v/<param>`). Transitions are pure
 * functions; `encode` / `restore` map it to and from the JSON a checkpoint stores in `metadata.extra`.
 *
 * @internal
 */
import { Effect, Schema } from "effect"
import { NonNegative, NonNegativeInt, PositiveInt } from "../../Config.ts"
import { CheckpointError } from "../../Errors.ts"

/** Sums over the batches of the epoch in progress (loss weighted by samples; correct counts). */
export const EpochSums = Schema.Struct({
  loss: NonNegative,
  accuracy: NonNegative,
  advAccuracy: NonNegative,
  samples: NonNegative,
  batches: NonNegative,
  seconds: NonNegative
})
/** Sums over the batches of the epoch in progress. */
export type EpochSums = typeof EpochSums.Type

/** The position and bookkeeping of a run. */
export const TrainState = Schema.Struct({
  /** the epoch in progress (1-based) */
  epoch: PositiveInt,
  /** batches of `epoch` done */
  batch: NonNegativeInt,
  /** optimisation steps done in the run */
  step: NonNegativeInt,
  /** `epoch` is finished (its evaluation and checkpoint are done): a resume starts the next one */
  ended: Schema.Boolean,
  /** the optimiser's step count (bias correction); its moments are the checkpoint's `adam/...` tensors */
  optimizerSteps: NonNegativeInt,
  best: Schema.optional(Schema.Struct({ metric: Schema.Finite, epoch: PositiveInt })),
  sums: EpochSums
})
/** The position and bookkeeping of a run. */
export type TrainState = typeof TrainState.Type

/** What one applied batch adds. */
export interface BatchResult {
  /** the batch's mean loss */
  readonly loss: number
  readonly correct: number
  readonly advCorrect?: number
  readonly samples: number
  readonly seconds: number
}

const zeroSums: EpochSums = { loss: 0, accuracy: 0, advAccuracy: 0, samples: 0, batches: 0, seconds: 0 }

/** A fresh run: epoch 1, nothing done. */
export const initial: TrainState = { epoch: 1, batch: 0, step: 0, ended: false, optimizerSteps: 0, sums: zeroSums }

/** After an applied batch (the optimiser took one step). */
export const afterBatch = (s: TrainState, r: BatchResult): TrainState => ({
  ...s,
  batch: s.batch + 1,
  step: s.step + 1,
  optimizerSteps: s.optimizerSteps + 1,
  sums: {
    loss: s.sums.loss + r.loss * r.samples,
    accuracy: s.sums.accuracy + r.correct,
    advAccuracy: s.sums.advAccuracy + (r.advCorrect ?? 0),
    samples: s.sums.samples + r.samples,
    batches: s.sums.batches + 1,
    seconds: s.sums.seconds + r.seconds
  }
})

/** The epoch in progress is finished. */
export const endEpoch = (s: TrainState): TrainState => ({ ...s, ended: true })

/** The next epoch, from its first batch. */
export const nextEpoch = (s: TrainState): TrainState => ({
  ...s,
  epoch: s.epoch + 1,
  batch: 0,
  ended: false,
  sums: zeroSums
})

/** Where a loaded state continues: the next epoch if its epoch had ended, else the same position. */
export const resumePoint = (s: TrainState): TrainState => (s.ended ? nextEpoch(s) : s)

/** Records an evaluation of `epoch`; `improved` when it beats the best so far (or is the first). */
export const recordEvaluation = (
  s: TrainState,
  metric: number,
  epoch: number
): { readonly state: TrainState; readonly improved: boolean } => {
  const improved = s.best === undefined || metric > s.best.metric
  return { state: improved ? { ...s, best: { metric, epoch } } : s, improved }
}

/** Means of the epoch in progress. */
export const means = (s: TrainState): { readonly loss: number; readonly accuracy: number; readonly advAccuracy: number } => {
  const n = s.sums.samples
  return n > 0 ?
    { loss: s.sums.loss / n, accuracy: s.sums.accuracy / n, advAccuracy: s.sums.advAccuracy / n } :
    { loss: 0, accuracy: 0, advAccuracy: 0 }
}

/** The `format` of a training checkpoint's `metadata.extra`. */
export const FORMAT = "effect-deq/train-state"

/** The stored layout in `metadata.extra` (kept as the first release wrote it; `step` was added later). */
const Stored = Schema.Struct({
  format: Schema.Literal(FORMAT),
  config: Schema.Unknown,
  epoch: PositiveInt,
  batch: NonNegativeInt,
  step: Schema.optional(NonNegativeInt),
  ended: Schema.Boolean,
  adamSteps: NonNegativeInt,
  bestMetric: Schema.optional(Schema.Finite),
  bestEpoch: Schema.optional(PositiveInt),
  sums: EpochSums,
  backend: Schema.optional(Schema.String)
})

/** The JSON a checkpoint stores: the state, the encoded config it was trained with and the backend. */
export const encode = (s: TrainState, config: unknown, backend: string): Record<string, unknown> => ({
  format: FORMAT,
  config,
  epoch: s.epoch,
  batch: s.batch,
  step: s.step,
  ended: s.ended,
  adamSteps: s.optimizerSteps,
  ...(s.best !== undefined ? { bestMetric: s.best.metric, bestEpoch: s.best.epoch } : {}),
  sums: { ...s.sums },
  backend
})

/**
 * The state and the encoded config stored in a checkpoint's `metadata.extra`; anything else is a
 * CheckpointError naming `path` and the bad field. `step` falls back to the checkpoint's `metadata.step`.
 */
export const restore = (
  extra: unknown,
  options: { readonly path: string; readonly step?: number | undefined }
): Effect.Effect<{ readonly state: TrainState; readonly config: unknown }, CheckpointError> =>
  Schema.decodeUnknownEffect(Stored)(extra, { onExcessProperty: "error" }).pipe(
    Effect.mapError((e) => new CheckpointError({ path: options.path, message: `not a training checkpoint: ${e.message}` })),
    Effect.flatMap((d) => {
      const step = d.step ?? options.step
      if (step === undefined) {
        return Effect.fail(new CheckpointError({ path: options.path, message: "not a training checkpoint: no step" }))
      }
      if ((d.bestMetric === undefined) !== (d.bestEpoch === undefined)) {
        return Effect.fail(
          new CheckpointError({ path: options.path, message: "not a training checkpoint: bestMetric without bestEpoch" })
        )
      }
      const state: TrainState = {
        epoch: d.epoch,
        batch: d.batch,
        step,
        ended: d.ended,
        optimizerSteps: d.adamSteps,
        ...(d.bestMetric !== undefined && d.bestEpoch !== undefined ?
          { best: { metric: d.bestMetric, epoch: d.bestEpoch } } :
          {}),
        sums: d.sums
      }
      return Effect.succeed({ state, config: d.config })
    })
  )
