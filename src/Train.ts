/**
 * Training programs for DEQs composed from services: standard training, PGD-AT and TRADES, each with or without
 * random intermediate states (Regularizers.TrainReadOut) and Jacobian regularization (Regularizers.JacobianPenalty),
 * an optional clean pre-training phase through an unrolled stack of f, Adam with a per-iteration cosine schedule,
 * periodic clean + PGD evaluation with best-checkpoint selection, a checkpoint every epoch, bit-exact resume and
 * progress events.
 *
 * A run is described by a {@link TrainConfig} (decoded strictly: unknown keys are ConfigErrors naming them).
 * {@link run} / {@link stream} build everything from it; {@link fit} trains a model you built (a built-in one or
 * any `Dynamics.DeqModel`, e.g. a cell of your own) with the services you provide, so an ablation swaps one Layer.
 *
 * Randomness: every draw derives its seed from the root seed and its position (epoch, batch, step, use) with
 * `deriveSeed`, so a resumed run draws exactly what an uninterrupted one would; on the same backend the final
 * parameters are bit-identical. Per-sample draws are keyed by dataset index or taken as rows of the whole batch's
 * draw, so a step computed on shards of a batch sums to the step on the batch (docs/training.md).
 *
 * @example
 * ```ts
 * import { Effect, Layer, Stream } from "effect"
 * import * as Train from "effect-deq/Train"
 *
 * const config = Train.decodeConfigSync({
 *   model: { _tag: "fc", inputShape: [14, 14, 1], hidden: 64 },
 *   data: { name: "synthetic", height: 14, width: 14, trainSize: 512 },
 *   method: { _tag: "trades", beta: 6 },
 *   regularizers: { randomStates: { max: 8 } },
 *   attack: { eps: 0.1, stepSize: 0.025, steps: 10 },
 *   epochs: 5, batchSize: 32
 * })
 * const program = Train.stream(config, { out: "runs/fc-ris", resume: true }).pipe(
 *   Stream.runForEach((event) => Effect.log(event))
 * )
 * ```
 *
 * @since 0.1.0
 */
import { Effect, Layer, Queue, Schema, Stream } from "effect"
import type { Attack, AttackError } from "./Adversary.ts"
import { decode } from "./Config.ts"
import * as Data from "./Data.ts"
import type { CheckpointError, DatasetError, WorkerError } from "./Errors.ts"
import { ConfigError } from "./Errors.ts"
import type { DeqModel } from "./Dynamics.ts"
import type { Solver } from "./FixedPoint.ts"
import * as Models from "./Models.ts"
import * as Regularizers from "./Regularizers.ts"
import type { Rng } from "./Tensor.ts"
import {
  AdamConfig,
  AndersonSolverConfig,
  BroydenSolverConfig,
  EvalConfig,
  GradientConfig,
  ImplicitGradient,
  MethodConfig,
  PgdAtMethod,
  PhantomGradient,
  PicardSolverConfig,
  RegularizersConfig,
  SolverConfig,
  StandardMethod,
  TradesMethod,
  TrainAttackConfig,
  TrainConfig,
  UnrollGradient,
  UnrolledGradient,
  gradientOf as gradientOfInternal
} from "./internal/train/config.ts"
import { NaNLoss } from "./internal/train/events.ts"
import { checkpointDirs as checkpointDirsInternal } from "./internal/train/checkpoint.ts"
import * as Layers from "./internal/train/layers.ts"
import { fit as fitInternal } from "./internal/train/loop.ts"
import * as Workers from "./internal/train/workers.ts"
import * as WorkersEval from "./internal/train/workersEval.ts"

export {
  /** Adam's constants (PyTorch defaults; no weight decay, as the paper). */
  AdamConfig,
  /** Anderson forward solver (`_tag: "anderson"`, FixedPoint.AndersonOptions fields). */
  AndersonSolverConfig,
  /** Broyden forward solver (`_tag: "broyden"`, FixedPoint.BroydenOptions fields); the paper's: 8 steps, rel tol 1e-3. */
  BroydenSolverConfig,
  /** Periodic evaluation (clean + PGD on a held-out subset) and best-checkpoint selection. */
  EvalConfig,
  /** How gradients leave the read-out state: unroll | phantom | implicit | unrolled. */
  GradientConfig,
  /** Implicit (IFT) gradient. */
  ImplicitGradient,
  /** The objective: standard | pgd-at | trades. */
  MethodConfig,
  /** The loss became NaN or infinite (names epoch, batch and step). */
  NaNLoss,
  /** PGD-AT: CE on x_adv. */
  PgdAtMethod,
  /** Phantom gradient. */
  PhantomGradient,
  /** Picard forward solver (`_tag: "picard"`). */
  PicardSolverConfig,
  /** The regularizers of a run (absent keys are off). */
  RegularizersConfig,
  /** The forward solver (tagged union). */
  SolverConfig,
  /** Standard training: CE on clean inputs. */
  StandardMethod,
  /** TRADES with beta (paper 6). */
  TradesMethod,
  /** The training attack (eps, step size, steps, start). */
  TrainAttackConfig,
  /** Everything a run needs. */
  TrainConfig,
  /** The paper's training tail: f then k damped steps (5, 0.5). */
  UnrollGradient,
  /** Differentiate through n plain steps from z0. */
  UnrolledGradient
}

/**
 * The fixed-point correction loss (TorchDEQ style): the same class as `Regularizers.CorrectionOptions`.
 *
 * @category config
 */
export const CorrectionConfig = Regularizers.CorrectionOptions
/** A decoded correction config. */
export type CorrectionConfig = Regularizers.CorrectionOptions

/**
 * Jacobian regularization settings (paper: 0.4 w.p. 0.02, until epoch 90): the same class as
 * `Regularizers.JacobianOptions`.
 *
 * @category config
 */
export const JacobianConfig = Regularizers.JacobianOptions
/** A decoded Jacobian config. */
export type JacobianConfig = Regularizers.JacobianOptions

/**
 * Random intermediate states (Sec. 3.3): the same class as `Regularizers.RandomStatesOptions` (`max` defaults to
 * the solver's maxIter).
 *
 * @category config
 */
export const RandomStatesConfig = Regularizers.RandomStatesOptions
/** A decoded random-states config. */
export type RandomStatesConfig = Regularizers.RandomStatesOptions



// ---------------------------------------------------------------------------------------------------------------
// events and results
// ---------------------------------------------------------------------------------------------------------------

/**
 * Where in a run an event happened: 1-based epoch and global step (batches done).
 *
 * @category events
 */
export interface At {
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
  /** threads computing each batch (1: this thread; more: data-parallel workers, docs/performance.md "Workers") */
  readonly workers?: number
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

/** Options of a run besides its config. */
export interface FitOptions {
  /** output directory: checkpoints go to `<out>/last` (every epoch, and on interruption) and `<out>/best` */
  readonly out?: string
  /** continue from `<out>/last` when it exists (a fresh run otherwise) */
  readonly resume?: boolean
  /** called with every progress event, in order */
  readonly onEvent?: (event: TrainEvent) => Effect.Effect<void>
  /**
   * stop after this epoch (its evaluation and checkpoint done), as if interrupted there: a later call with
   * `resume` continues bit-exactly. No `Finished` event unless it is the last epoch.
   */
  readonly untilEpoch?: number
}

/** What a run (or a part of it, with `untilEpoch`) reports. */
export interface TrainSummary {
  /** epochs finished */
  readonly epoch: number
  readonly step: number
  readonly resumed: boolean
  /** all of `config.epochs` are done */
  readonly complete: boolean
  readonly lastEpoch?: EpochDone
  readonly lastEvaluation?: Evaluated
  readonly bestMetric?: number
  readonly bestEpoch?: number
  readonly seconds: number
}

/**
 * The errors of {@link fit}: bad config (ConfigError), checkpoint IO, an attack that could not run, a NaN loss, a
 * worker thread that failed (WorkerError, with `workers` > 1; docs/performance.md, "Workers").
 *
 * @category errors
 */
export type TrainError = ConfigError | CheckpointError | AttackError | NaNLoss | WorkerError


/**
 * The errors of {@link run} and {@link stream}: those of {@link fit} plus a dataset that cannot be loaded.
 *
 * @category errors
 */
export type RunError = TrainError | DatasetError

// ---------------------------------------------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------------------------------------------

/**
 * Decodes a training config from unknown input (parsed JSON), rejecting unknown keys (a ConfigError naming the
 * key), and checks the settings that depend on each other (the attack start against the method).
 *
 * @category decoding
 */
export const decodeConfig = (input: unknown): Effect.Effect<TrainConfig, ConfigError> =>
  Effect.flatMap(decode(TrainConfig)(input), (c) => Effect.as(check(c), c))

/**
 * Synchronous {@link decodeConfig} (throws the ConfigError).
 *
 * @category decoding
 */
export const decodeConfigSync = (input: unknown): TrainConfig => Effect.runSync(decodeConfig(input))

/**
 * A config as plain JSON (what checkpoints store, what the CLI writes).
 *
 * @category decoding
 */
export const encodeConfig = (config: TrainConfig): unknown => Schema.encodeSync(TrainConfig)(config)

const check = (c: TrainConfig): Effect.Effect<void, ConfigError> =>
  c.method._tag === "pgd-at" && c.attack.start === "normal" ?
    Effect.fail(
      new ConfigError({
        path: "attack.start",
        message: `attack.start: "normal" is the TRADES start; PGD-AT supports "uniform" or "none"`
      })
    ) :
    Effect.void

/**
 * The Dynamics gradient mode of a gradient config.
 *
 * @category layers
 */
export const gradientOf = gradientOfInternal

/**
 * The solver a config names, as a Layer (a bad option is a ConfigError naming it).
 *
 * @category layers
 */
export const solverLayer: (config: TrainConfig) => Layer.Layer<Solver, ConfigError> = Layers.solverLayer

/**
 * The training read-out a config names: random intermediate states (max defaulting to the solver's maxIter) or
 * the final state; with its dropout switch and correction loss.
 *
 * @category layers
 */
export const readOutLayer: (config: TrainConfig) => Layer.Layer<Regularizers.TrainReadOut, ConfigError> = Layers.readOutLayer

/**
 * The Jacobian penalty a config names (or none).
 *
 * @category layers
 */
export const jacobianLayer: (config: TrainConfig) => Layer.Layer<Regularizers.JacobianPenalty, ConfigError> =
  Layers.jacobianLayer

/**
 * The training attack a config names: PGD (Linf, CE, one restart, last iterate) with the config's eps, step size
 * and steps, uniform start clamped to [0, 1] unless `start: "none"`. (TRADES runs its own KL maximisation with the
 * same settings; the Attack service is then unused.)
 *
 * @category layers
 */
export const attackLayer: (config: TrainConfig) => Layer.Layer<Attack, ConfigError> = Layers.attackLayer

/**
 * Every service a run needs, from its config: Solver, TrainReadOut, JacobianPenalty, Attack and Rng (seeded with
 * `config.seed`).
 *
 * @category layers
 */
export const layersFromConfig: (
  config: TrainConfig
) => Layer.Layer<Solver | Regularizers.TrainReadOut | Regularizers.JacobianPenalty | Attack | Rng, ConfigError> =
  Layers.layersFromConfig

// ---------------------------------------------------------------------------------------------------------------
// programs
// ---------------------------------------------------------------------------------------------------------------

/**
 * Where a run with output directory `out` keeps its checkpoints: `last` (every epoch and on interruption; what
 * `resume` continues from) and `best` (the best evaluation so far).
 *
 * @category checkpoints
 */
export const checkpointDirs = checkpointDirsInternal

/**
 * Attack evaluations of a trained run on `threads` worker threads, as a Layer: Adversary's `evaluate` (and with it
 * Evaluation's `runSuite`, `evaluateGrid`, `evaluateDeq`) then sends the batches of every call on `run.deq` to the
 * workers, each with its own backend and a copy of the model; the numbers are the single-thread ones
 * (docs/performance.md, "Workers").
 *
 * @category workers
 */
export const evaluationWorkers = WorkersEval.evaluationWorkers

/**
 * The evaluation threads of a run's `workers` setting: an explicit count as given; "auto" as training's choice
 * (`DEQ_WORKERS`, else the measured policy of docs/performance.md, "Workers").
 *
 * @category workers
 */
export const evaluationThreads = (config: TrainConfig): Effect.Effect<number, ConfigError> =>
  Workers.resolveWorkers(config.workers, config.model, process.env, "evaluation")

/**
 * Trains `model` on `data`: a built-in `Models.Model` or any `Dynamics.DeqModel` of your own (its variables are
 * checkpointed by their names; one forward of one image must give the dataset's class count, a ConfigError
 * otherwise). The config supplies the method, schedule, optimiser, pre-training, evaluation and
 * checkpoint settings (`config.model` only describes built-in models); the solver, training read-out, Jacobian
 * penalty, training attack and random source come from the context, so an ablation provides different layers.
 * Checkpoints go to `options.out` (every epoch, best evaluation, and on interruption); `options.resume` continues
 * from the last one. Events go to `options.onEvent`. `options.untilEpoch` stops cleanly after that epoch
 * (checkpoint written, as if interrupted there); a later call with `resume` continues bit-exactly. Worker threads
 * (`workers` > 1) rebuild a built-in model from the config: a custom model with `workers` > 1 is a ConfigError.
 *
 * @category programs
 */
export const fit: (
  model: DeqModel,
  data: Data.Dataset,
  config: TrainConfig,
  options?: FitOptions
) => Effect.Effect<
  TrainSummary,
  TrainError,
  Solver | Regularizers.TrainReadOut | Regularizers.JacobianPenalty | Attack | Rng
> = fitInternal

/**
 * A whole run from its config: loads the dataset, builds the model (seeded from `config.seed`), provides
 * {@link layersFromConfig} and calls {@link fit}. The tfjs backend must already be chosen.
 *
 * @category programs
 */
export const run = (
  config: TrainConfig,
  options: FitOptions & { readonly data?: Data.Dataset } = {}
): Effect.Effect<TrainSummary, RunError> =>
  Effect.scoped(Effect.gen(function*() {
    const data = options.data ?? (yield* Data.load(config.data))
    const model = yield* Models.buildSeeded(config.model)
    // the services are the config's own: worker threads can rebuild them (config.workers)
    return yield* fitInternal(model, data, config, options, { servicesFromConfig: true })
  })).pipe(Effect.provide(layersFromConfig(config)))

/**
 * {@link run} as a Stream of its events (Started, Batch, Epoch, Evaluation, Checkpoint, Finished). Stopping the
 * stream early (take, interruption) interrupts the run between batches; with `out`, it then saves a checkpoint
 * that `resume` continues from.
 *
 * @category programs
 */
export const stream = (
  config: TrainConfig,
  options: Omit<FitOptions, "onEvent"> & { readonly data?: Data.Dataset } = {}
): Stream.Stream<TrainEvent, RunError> =>
  Stream.callback<TrainEvent, RunError>((queue) =>
    run(config, {
      ...options,
      onEvent: (event) => Effect.asVoid(Queue.offer(queue, event))
    }).pipe(Effect.andThen(Queue.end(queue))), { bufferSize: 1 })

/**
 * A run's events as JSON lines (what the CLI's log holds).
 *
 * @category events
 */
export const eventToJson = (event: TrainEvent): string => JSON.stringify(event)
