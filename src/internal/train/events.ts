/**
 * Progress events and typed errors of a training run (re-exported by src/Train.ts).
 *
 * @internal
 */
import { Schema } from "effect"

/** Where in a run an event happened: 1-based epoch, 0-based batch of the epoch, global step (batches done). */
interface At {
  readonly epoch: number
  readonly step: number
}

/** The run started (or resumed). */
export interface Started extends At {
  readonly _tag: "Started"
  readonly epochs: number
  readonly batchesPerEpoch: number
  readonly totalSteps: number
  /** the batch of `epoch` the run continues with (0 for a fresh epoch) */
  readonly batch: number
  readonly resumed: boolean
  readonly parameterCount: number
  readonly backend: string
  readonly method: string
  readonly readOut: string
  readonly jacobian: string
  readonly attack: string
  readonly out?: string
}

/** One optimisation step finished. */
export interface BatchDone extends At {
  readonly _tag: "Batch"
  readonly phase: "pretrain" | "train"
  readonly batch: number
  readonly batches: number
  /** the total loss that was minimised */
  readonly loss: number
  /** accuracy of the logits the main loss term saw (x_adv for PGD-AT, x otherwise) */
  readonly accuracy: number
  /** accuracy on x_adv (PGD-AT, TRADES) */
  readonly advAccuracy?: number
  /** the weighted Jacobian penalty when it was computed on this batch */
  readonly jacobian?: number
  /** solver steps and batch-mean relative residual of the last training forward (0 in pre-training) */
  readonly solverSteps: number
  readonly residual: number
  /** the states drawn by random intermediate states in the training forwards of this batch */
  readonly drawn?: ReadonlyArray<number>
  readonly lr: number
  /** the global L2 norm of the gradient (before clipping; 0 when the loss was not finite) */
  readonly gradNorm: number
  readonly seconds: number
}

/** An epoch finished (means over its batches). */
export interface EpochDone extends At {
  readonly _tag: "Epoch"
  readonly batches: number
  readonly loss: number
  readonly accuracy: number
  readonly advAccuracy?: number
  readonly lr: number
  readonly seconds: number
}

/** A periodic evaluation on the held-out subset. */
export interface Evaluated extends At {
  readonly _tag: "Evaluation"
  readonly samples: number
  readonly clean: number
  /** PGD accuracy (absent when the evaluation attack is off) */
  readonly robust?: number
  /** the metric used to select the best checkpoint and whether this evaluation improved it */
  readonly metric: number
  readonly best: boolean
  readonly seconds: number
}

/** A checkpoint was written. */
export interface CheckpointSaved extends At {
  readonly _tag: "Checkpoint"
  readonly path: string
  readonly reason: "epoch" | "best" | "interrupt"
  /** batches of `epoch` done at the time of the checkpoint */
  readonly batch: number
}

/** The run finished all its epochs. */
export interface Finished extends At {
  readonly _tag: "Finished"
  readonly bestMetric?: number
  readonly bestEpoch?: number
  readonly seconds: number
}

/** Everything a run reports, in order: Started, then Batch / Epoch / Evaluation / Checkpoint, then Finished. */
export type TrainEvent = Started | BatchDone | EpochDone | Evaluated | CheckpointSaved | Finished

/**
 * The loss became NaN or infinite: training stops before the update is applied. Names the epoch, the batch of the
 * epoch and the global step.
 */
export class NaNLoss extends Schema.TaggedError<NaNLoss>()("NaNLoss", {
  epoch: Schema.Number,
  batch: Schema.Number,
  step: Schema.Number,
  loss: Schema.Number,
  message: Schema.String
}) {}
