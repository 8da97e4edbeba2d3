/**
 * The Schema classes of a training run (re-exported by src/Train.ts). Every class is decoded strictly by
 * src/Config.ts `decode`: unknown keys are ConfigErrors naming the key.
 *
 * @internal
 */
import { Effect, Schema } from "effect"
import { defaulted as dflt, NonNegative, NonNegativeInt, Positive, PositiveInt, Probability } from "../../Config.ts"
import { DatasetConfig } from "../../Data.ts"
import * as Dynamics from "../../Dynamics.ts"
import { AndersonOptions, Backward, BroydenOptions, PicardOptions } from "../../FixedPoint.ts"
import { ModelConfig } from "../../Models.ts"
import { CorrectionOptions, JacobianOptions, RandomStatesOptions } from "../../Regularizers.ts"

/**
 * A class-valued key whose default is given in its encoded form: decoding runs it through the class, so the
 * class's own field defaults fill in the rest (one place for each default).
 */
const orEncoded = <S extends Schema.Top>(schema: S, value: S["Encoded"]) =>
  schema.pipe(Schema.withDecodingDefaultKey(Effect.succeed(value)))

// ---------------------------------------------------------------------------------------------------------------
// solver
// ---------------------------------------------------------------------------------------------------------------

/** Picard settings tagged "picard" (fields of `FixedPoint.PicardOptions`). */
export class PicardSolverConfig extends Schema.TaggedClass<PicardSolverConfig>("PicardSolverConfig")("picard", {
  ...PicardOptions.fields
}) {}

/** Anderson settings tagged "anderson" (fields of `FixedPoint.AndersonOptions`). */
export class AndersonSolverConfig extends Schema.TaggedClass<AndersonSolverConfig>("AndersonSolverConfig")("anderson", {
  ...AndersonOptions.fields
}) {}

/** Broyden settings tagged "broyden" (fields of `FixedPoint.BroydenOptions`). */
export class BroydenSolverConfig extends Schema.TaggedClass<BroydenSolverConfig>("BroydenSolverConfig")("broyden", {
  ...BroydenOptions.fields
}) {}

/** The forward solver: `_tag` picks it, the other keys are its options. */
export const SolverConfig = Schema.Union([PicardSolverConfig, AndersonSolverConfig, BroydenSolverConfig])
/** A decoded solver config. */
export type SolverConfig = PicardSolverConfig | AndersonSolverConfig | BroydenSolverConfig

// ---------------------------------------------------------------------------------------------------------------
// gradient
// ---------------------------------------------------------------------------------------------------------------

/** The unrolled tail from the read-out state: f, then k damped steps (paper: k = 5, lambda = 0.5). */
export class UnrollGradient extends Schema.TaggedClass<UnrollGradient>("UnrollGradient")("unroll", {
  k: dflt(NonNegativeInt, 5),
  lambda: dflt(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1, exclusiveMinimum: true })), 0.5)
}) {}

/** Phantom gradient: k damped steps from z* with damping tau (FixedPoint.Backward.phantom). */
export class PhantomGradient extends Schema.TaggedClass<PhantomGradient>("PhantomGradient")("phantom", {
  k: dflt(NonNegativeInt, 5),
  tau: dflt(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1, exclusiveMinimum: true })), 0.5)
}) {}

/** Implicit (IFT) gradient with its own backward solve (paper's "real": Broyden, 7 steps). */
export class ImplicitGradient extends Schema.TaggedClass<ImplicitGradient>("ImplicitGradient")("implicit", {
  maxIter: dflt(PositiveInt, 30),
  tol: dflt(NonNegative, 1e-5),
  solver: dflt(Schema.Literals(["picard", "anderson", "broyden"]), "anderson")
}) {}

/** Differentiate through n plain steps from z0 (no solver). */
export class UnrolledGradient extends Schema.TaggedClass<UnrolledGradient>("UnrolledGradient")("unrolled", {
  n: dflt(PositiveInt, 8)
}) {}

/** How gradients leave the read-out state. */
export const GradientConfig = Schema.Union([UnrollGradient, PhantomGradient, ImplicitGradient, UnrolledGradient])
/** A decoded gradient config. */
export type GradientConfig = UnrollGradient | PhantomGradient | ImplicitGradient | UnrolledGradient

/** The Dynamics gradient of a gradient config. */
export const gradientOf = (g: GradientConfig): Dynamics.Gradient => {
  switch (g._tag) {
    case "unroll":
      return Dynamics.unroll(g.k, g.lambda)
    case "phantom":
      return Backward.phantom(g.k, g.tau)
    case "implicit":
      return Backward.implicit({ maxIter: g.maxIter, tol: g.tol, solver: g.solver })
    case "unrolled":
      return Backward.unrolled(g.n)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// method
// ---------------------------------------------------------------------------------------------------------------

/** Standard training: cross-entropy on clean inputs. */
export class StandardMethod extends Schema.TaggedClass<StandardMethod>("StandardMethod")("standard", {}) {}

/** PGD-AT (Madry et al.): cross-entropy on x_adv only. */
export class PgdAtMethod extends Schema.TaggedClass<PgdAtMethod>("PgdAtMethod")("pgd-at", {}) {}

/** TRADES (Zhang et al.): CE(clean) + beta * KL(p_clean || p_adv) with sum reduction / B (paper beta = 6). */
export class TradesMethod extends Schema.TaggedClass<TradesMethod>("TradesMethod")("trades", {
  beta: dflt(NonNegative, 6)
}) {}

/** The training objective. */
export const MethodConfig = Schema.Union([StandardMethod, PgdAtMethod, TradesMethod])
/** A decoded method. */
export type MethodConfig = StandardMethod | PgdAtMethod | TradesMethod

// ---------------------------------------------------------------------------------------------------------------
// regularizers
// ---------------------------------------------------------------------------------------------------------------

/**
 * The regularizers of a run: absent keys are off. `dropout` draws variational dropout masks in training forwards
 * (when the model has dropout > 0; never in attacks or evaluation).
 */
export class RegularizersConfig extends Schema.Class<RegularizersConfig>("RegularizersConfig")({
  randomStates: Schema.optional(RandomStatesOptions),
  jacobian: Schema.optional(JacobianOptions),
  correction: Schema.optional(CorrectionOptions),
  dropout: dflt(Schema.Boolean, true)
}) {}

// ---------------------------------------------------------------------------------------------------------------
// attacks
// ---------------------------------------------------------------------------------------------------------------

/**
 * The training attack (Linf). Paper (CIFAR): eps 8/255, stepSize 2/255, 10 steps; PGD-AT starts uniform in the
 * eps-ball clamped to [0, 1], TRADES at x + 0.001 N(0, 1) unclamped. `start` overrides that per-method default.
 */
export class TrainAttackConfig extends Schema.Class<TrainAttackConfig>("TrainAttackConfig")({
  eps: dflt(NonNegative, 8 / 255),
  stepSize: dflt(Positive, 2 / 255),
  steps: dflt(PositiveInt, 10),
  start: Schema.optional(Schema.Literals(["uniform", "normal", "none"]))
}) {}

/**
 * Periodic evaluation on the first `subset` test images: clean accuracy and PGD accuracy (uniform start without
 * clamping, last iterate, as the paper's evaluation PGD) at the evaluation read-out. `every` epochs from
 * `fromEpoch` on, and after the last epoch. `select`: which metric picks the best checkpoint. The attack defaults
 * to the training attack's eps and step size; `steps: 0` skips the PGD part.
 */
export class EvalConfig extends Schema.Class<EvalConfig>("EvalConfig")({
  every: dflt(NonNegativeInt, 1),
  fromEpoch: dflt(PositiveInt, 1),
  subset: dflt(PositiveInt, 500),
  batchSize: dflt(PositiveInt, 100),
  eps: Schema.optional(NonNegative),
  stepSize: Schema.optional(Positive),
  steps: dflt(NonNegativeInt, 10),
  select: dflt(Schema.Literals(["robust", "clean"]), "robust")
}) {}

/** Adam's constants (PyTorch defaults). */
export class AdamConfig extends Schema.Class<AdamConfig>("AdamConfig")({
  beta1: dflt(Probability, 0.9),
  beta2: dflt(Probability, 0.999),
  epsilon: dflt(Positive, 1e-8),
  weightDecay: dflt(NonNegative, 0)
}) {}

// ---------------------------------------------------------------------------------------------------------------
// the run
// ---------------------------------------------------------------------------------------------------------------

/**
 * Everything a training run needs. Defaults follow the paper where it has one (docs/method.md, "Training"):
 * PGD-AT, Broyden with 8 steps and rel tol 1e-3, the unrolled tail (k 5, lambda 0.5), Adam lr 1e-3 with a
 * per-iteration cosine schedule to 1e-6, batch 96, seed 42; the epoch count (220) and pre-training (16000 steps)
 * are scaled down to a small default (10 epochs, no pre-training).
 */
export class TrainConfig extends Schema.Class<TrainConfig>("TrainConfig")({
  /** the built-in model Train.run builds (default: an FC DEQ's defaults); `Train.fit` with a model of your own ignores it */
  model: orEncoded(ModelConfig, { _tag: "fc" }),
  data: DatasetConfig,
  solver: orEncoded(SolverConfig, { _tag: "broyden", maxIter: 8, tol: 1e-3, stopMode: "rel", returnMode: "best" }),
  gradient: orEncoded(GradientConfig, { _tag: "unroll" }),
  method: orEncoded(MethodConfig, { _tag: "pgd-at" }),
  regularizers: orEncoded(RegularizersConfig, {}),
  attack: orEncoded(TrainAttackConfig, {}),
  eval: orEncoded(EvalConfig, {}),
  epochs: dflt(PositiveInt, 10),
  batchSize: dflt(PositiveInt, 96),
  lr: dflt(Positive, 1e-3),
  lrMin: dflt(NonNegative, 1e-6),
  adam: orEncoded(AdamConfig, {}),
  /** global-norm gradient clipping (absent: none, as the paper) */
  clip: Schema.optional(Positive),
  seed: dflt(Schema.Int, 42),
  /** clean pre-training iterations through an unrolled stack of `pretrainLayers` applications of f */
  pretrainSteps: dflt(NonNegativeInt, 0),
  pretrainLayers: dflt(PositiveInt, 8),
  /** drop a final short batch of each epoch */
  dropLast: dflt(Schema.Boolean, false),
  /**
   * threads that compute each batch (data-parallel shards: the calling thread and workers - 1 worker threads).
   * "auto": DEQ_WORKERS when set, else the measured choice (docs/performance.md, "Workers"); 1: one thread.
   */
  workers: dflt(Schema.Union([Schema.Literal("auto"), PositiveInt]), "auto")
}) {}

/** The `workers` setting of a run. */
export type WorkersSetting = TrainConfig["workers"]
