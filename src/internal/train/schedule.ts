/**
 * The schedule of a run: batches per epoch, the per-iteration cosine learning rate, the pre-training phase, which
 * epochs evaluate, and each epoch's shuffled batch plan. Plain values from the config and the root seed.
 *
 * @internal
 */
import { Effect } from "effect"
import { batchIndices } from "../../Data.ts"
import { ConfigError } from "../../Errors.ts"
import type { TrainConfig } from "./config.ts"

/** Where a step is in the run: what a step's randomness and learning rate derive from. */
export interface Position {
  /** 1-based epoch */
  readonly epoch: number
  /** 0-based batch of the epoch */
  readonly batch: number
  /** optimisation steps done before this one */
  readonly step: number
  /** a clean pre-training step (no solver, no attack, no regularizers) */
  readonly pretrain: boolean
}

/** The schedule of a run. */
export interface Schedule {
  readonly batchesPerEpoch: number
  readonly totalSteps: number
  /** the cosine learning rate of step `step`: lr at 0 down to lrMin at totalSteps */
  readonly lrAt: (step: number) => number
  /** the position of batch `batch` of `epoch`, the run having done `step` steps */
  readonly position: (epoch: number, batch: number, step: number) => Position
  /** whether `epoch` ends with an evaluation */
  readonly evaluates: (epoch: number) => boolean
  /** the batches of `epoch` (dataset indices), shuffled from the epoch's seed */
  readonly plan: (epoch: number) => ReadonlyArray<Int32Array>
}

/** The schedule of `config` over `trainCount` training images; no batch at all is a ConfigError. */
export const makeSchedule = (
  config: TrainConfig,
  trainCount: number,
  seed: (...path: ReadonlyArray<string | number>) => number
): Effect.Effect<Schedule, ConfigError> => {
  const batchesPerEpoch = config.dropLast ?
    Math.floor(trainCount / config.batchSize) :
    Math.ceil(trainCount / config.batchSize)
  if (batchesPerEpoch < 1) {
    return Effect.fail(
      new ConfigError({
        path: "batchSize",
        message: `batchSize ${config.batchSize} leaves no batch of the ${trainCount} training images`
      })
    )
  }
  const totalSteps = config.epochs * batchesPerEpoch
  const ev = config.eval
  return Effect.succeed({
    batchesPerEpoch,
    totalSteps,
    lrAt: (step) => config.lrMin + (config.lr - config.lrMin) * (1 + Math.cos((Math.PI * step) / totalSteps)) / 2,
    position: (epoch, batch, step) => ({ epoch, batch, step, pretrain: step < config.pretrainSteps }),
    evaluates: (epoch) =>
      ev.every > 0 && (epoch === config.epochs || (epoch >= ev.fromEpoch && (epoch - ev.fromEpoch) % ev.every === 0)),
    plan: (epoch) =>
      batchIndices(trainCount, { batchSize: config.batchSize, seed: seed("shuffle", epoch), dropLast: config.dropLast })
  })
}
