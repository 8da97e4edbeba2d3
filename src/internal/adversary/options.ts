/**
 * Attack and evaluation options as Schema classes (decoded strictly by src/Config.ts `decode`).
 */
import { Schema } from "effect"
import { defaulted as def, NonNegative, Positive, PositiveInt, Probability } from "../../Config.ts"

const NormField = def(Schema.Literals(["Linf", "L2"]), "Linf")
const Eot = def(PositiveInt, 1)

/** FGSM (Linf) / FGM (L2): one step of size eps along the sign (or normalised) gradient. */
export class FgsmOptions extends Schema.Class<FgsmOptions>("FgsmOptions")({
  eps: NonNegative,
  norm: NormField,
  loss: def(Schema.Literals(["ce", "dlr"]), "ce"),
  eot: Eot
}) {}

/** PGD with random start and restarts (Madry et al.). */
export class PgdOptions extends Schema.Class<PgdOptions>("PgdOptions")({
  eps: NonNegative,
  norm: NormField,
  steps: def(PositiveInt, 10),
  /** step size in pixel units; default 2.5 * eps / steps */
  stepSize: Schema.optional(Positive),
  restarts: def(PositiveInt, 1),
  randomStart: def(Schema.Boolean, true),
  /** clamp the random start to the bounds (the paper's evaluation PGD does not; later steps always clamp) */
  randomStartClamp: def(Schema.Boolean, true),
  loss: def(Schema.Literals(["ce", "dlr"]), "ce"),
  /**
   * keep the first iterate that `predict` misclassifies (the iteration path is unchanged, so more steps are never
   * weaker); false returns the last iterate, as the paper's evaluation PGD
   */
  keepBest: def(Schema.Boolean, true),
  eot: Eot
}) {}

/** APGD (Croce & Hein 2020) with the cross-entropy or the DLR loss. */
export class ApgdOptions extends Schema.Class<ApgdOptions>("ApgdOptions")({
  eps: NonNegative,
  norm: NormField,
  steps: def(PositiveInt, 100),
  restarts: def(PositiveInt, 1),
  loss: def(Schema.Literals(["ce", "dlr"]), "ce"),
  /** fraction of increasing steps required between checkpoints to keep the step size */
  rho: def(Probability, 0.75),
  /** weight of the new step (1 - momentum weight of the previous one) */
  momentum: def(Probability, 0.75),
  eot: Eot
}) {}

/** APGD-T: APGD on the targeted DLR loss, over the `targets` most likely wrong classes. */
export class ApgdTargetedOptions extends Schema.Class<ApgdTargetedOptions>("ApgdTargetedOptions")({
  eps: NonNegative,
  norm: NormField,
  steps: def(PositiveInt, 100),
  restarts: def(PositiveInt, 1),
  targets: def(PositiveInt, 9),
  rho: def(Probability, 0.75),
  momentum: def(Probability, 0.75),
  eot: Eot
}) {}

/** FAB-T (Croce & Hein 2020): the targeted Fast Adaptive Boundary attack, Linf, with AutoAttack's defaults. */
export class FabOptions extends Schema.Class<FabOptions>("FabOptions")({
  eps: NonNegative,
  norm: def(Schema.Literals(["Linf"]), "Linf"),
  steps: def(PositiveInt, 100),
  restarts: def(PositiveInt, 1),
  /** target classes, the most likely wrong ones first (AutoAttack: 9) */
  targets: def(PositiveInt, 9),
  /** the largest weight of the step from the original point */
  alphaMax: def(Probability, 0.1),
  /** overshoot of each projection onto the linearised boundary */
  eta: def(Positive, 1.05),
  /** backward step towards the original point after each success */
  beta: def(Probability, 0.9),
  eot: Eot
}) {}

/** Square attack (Andriushchenko et al. 2020), Linf, score-based black-box. */
export class SquareOptions extends Schema.Class<SquareOptions>("SquareOptions")({
  eps: NonNegative,
  norm: def(Schema.Literals(["Linf"]), "Linf"),
  /** query budget per sample and restart (the initialisation counts as one) */
  queries: def(PositiveInt, 5000),
  /** initial fraction of pixels changed per query, halved on the paper's schedule */
  pInit: def(Probability, 0.8),
  restarts: def(PositiveInt, 1),
  loss: def(Schema.Literals(["margin", "ce"]), "margin")
}) {}

/**
 * An AutoAttack suite: standard (APGD-CE, APGD-T, FAB-T, Square), plus (5 restarts, APGD-DLR; no untargeted FAB),
 * rand (EOT 20).
 */
export class AutoAttackOptions extends Schema.Class<AutoAttackOptions>("AutoAttackOptions")({
  eps: NonNegative,
  norm: NormField,
  version: def(Schema.Literals(["standard", "plus", "rand"]), "standard"),
  /** APGD and FAB-T iterations (100 in AutoAttack) */
  steps: def(PositiveInt, 100),
  /** Square query budget (5000 in AutoAttack) */
  queries: def(PositiveInt, 5000),
  targets: def(PositiveInt, 9)
}) {}

/** Options of `evaluate`: batching, resume file, the caller's gradient-source label and the flag thresholds. */
export class EvaluateOptions extends Schema.Class<EvaluateOptions>("EvaluateOptions")({
  batchSize: def(PositiveInt, 32),
  /**
   * what `classifier.logits` differentiates through, e.g. "implicit", "Munroll-3-5"; recorded, never interpreted.
   * When absent, the classifier's own `gradientSource` (a DEQ classifier's label), else "logits"
   */
  gradientSource: def(Schema.String, "logits"),
  /** JSONL file: one line per finished batch; a rerun skips the batches already there */
  resumeFile: Schema.optional(Schema.String),
  /** evaluate at most this many new batches, then return a partial result (`complete: false`) */
  maxBatches: Schema.optional(PositiveInt),
  /**
   * mixed into every random draw (random starts, Square): evaluations that must not share their random starts,
   * such as the points of a grid, pass different salts
   */
  salt: Schema.optional(Schema.String),
  /** flag when more than this fraction of samples has an all-zero input gradient */
  zeroGradientFraction: def(Probability, 0.1),
  /** flag when more than this fraction of input coordinates has an exactly zero gradient (a clip that binds) */
  zeroCoordinateFraction: def(Probability, 0.1),
  /** flag when more than this fraction of forward solves (on x or x_adv) did not converge */
  notConvergedFraction: def(Probability, 0),
  /** flag when the backward residual exceeds this */
  backwardResidual: def(NonNegative, 1e-2),
  /** flag when the gradient cosine falls below this */
  gradientCosine: def(Schema.Number, 0.5),
  /** flag when black-box stages break more than this fraction of samples that survived the white-box stages */
  blackBoxFraction: def(Probability, 0)
}) {}
