/**
 * Adversarial attacks and robustness evaluation for any differentiable classifier.
 *
 * An attack sees a {@link Classifier}: `logits` gives input gradients (it may be a surrogate: BPDA, an unrolled
 * intermediate state), `predict` is what is evaluated. Attacks are services ({@link Attack}) built from Schema
 * options: FGSM, PGD (Linf / L2, random starts, restarts), APGD-CE / APGD-DLR, APGD-T, FAB-T and Square. They run
 * as one Effect per call with plain tfjs inside, draw their randomness from {@link Rng} keyed per sample (same seed,
 * same result; a sample's perturbation does not depend on its batch), and hand x_adv to the caller's Scope.
 *
 * A classifier ({@link fromModel} makes one of a tf.LayersModel or a function) declares its input domain (`bounds`,
 * default [0, 1]), class count and input shape; attacks reject NaN, Inf or out-of-range pixels, non-class labels
 * and wrong shapes with an AttackError naming the sample. Results carry their forward and backward pass counts.
 * Outside Effect, {@link promise} runs the attacks as Promises whose results the caller owns.
 *
 * {@link evaluate} runs an ensemble over a dataset (each stage only on the samples still correct, per-sample worst
 * case), records settings, seed, backend and passes, raises gradient-masking flags, and can resume from a JSONL
 * file. {@link worstCase} combines evaluations of the same samples into the one number to report, flagged
 * `unreliable` when its parts contradict each other.
 *
 * DEQ-aware parts: {@link deqClassifier} turns a `Dynamics.Deq` into a Classifier whose gradients come from a
 * {@link GradientSource} (implicit, phantom, unrolled, an unrolled intermediate state, the ensemble-defence attack)
 * and whose prediction is the evaluated read-out or an inference-time defence, attacked non-adaptively ("paper"),
 * through BPDA or through the whole defence; {@link evaluateGrid} takes the per-sample worst case over the
 * (state z_n, K_a, lambda) grid of intermediate states; {@link evaluateDeq} runs one evaluation per source and mode.
 * docs/attacks.md describes an honest DEQ evaluation.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Adversary from "effect-deq/Adversary"
 * import { Rng, tf } from "effect-deq/Tensor"
 *
 * // any differentiable model of [B, 28, 28, 1] images in [0, 1] with 10 classes (or a tf.LayersModel)
 * declare const net: (x: tf.Tensor4D) => tf.Tensor2D
 * declare const x: tf.Tensor4D
 * declare const y: tf.Tensor1D
 * const classifier = Adversary.fromModel(net, { bounds: [0, 1], classes: 10, inputShape: [28, 28, 1] })
 *
 * const program = Effect.gen(function*() {
 *   // AutoAttack's four attacks: APGD-CE, APGD-T, FAB-T, Square
 *   const stages = yield* Adversary.autoAttack({ eps: 0.1, norm: "Linf" })
 *   const result = yield* Adversary.evaluate(classifier, { x, y }, stages, { batchSize: 32, resumeFile: "runs/aa.jsonl" })
 *   yield* Effect.log(Adversary.toMarkdown([result]))
 * }).pipe(Effect.provide(Rng.seeded(0)))
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer } from "effect"
import { decode } from "./Config.ts"
import { ConfigError } from "./Errors.ts"
import { apgdCore, apgdTargetedCore, checkpoints as apgdCheckpoints } from "./internal/adversary/apgd.ts"
import * as geometry from "./internal/adversary/geometry.ts"
import * as lossFns from "./internal/adversary/losses.ts"
import { type Core, makeAttack } from "./internal/adversary/run.ts"
import { type EnsembleShape, makeEnsemble } from "./internal/adversary/ensemble.ts"
import * as evaluation from "./internal/adversary/evaluation.ts"
import * as facade from "./internal/adversary/facade.ts"
import {
  ApgdOptions,
  ApgdTargetedOptions,
  AutoAttackOptions,
  EvaluateOptions,
  FabOptions,
  FgsmOptions,
  PgdOptions,
  SquareOptions
} from "./internal/adversary/options.ts"
import { fabTargetedCore } from "./internal/adversary/fab.ts"
import { fgsmCore, pgdCore } from "./internal/adversary/pgd.ts"
import * as deqClassifierModule from "./internal/adversary/deq/classifier.ts"
import * as deqEvaluate from "./internal/adversary/deq/evaluate.ts"
import * as deqSource from "./internal/adversary/deq/source.ts"
import * as flags from "./internal/adversary/flags.ts"
import * as report from "./internal/adversary/report.ts"
import * as worst from "./internal/adversary/worst.ts"
import { squareCore } from "./internal/adversary/square.ts"
import type { AttackError, AttackShape, Classifier, FromModelOptions, ModelLike, ResumeError } from "./internal/adversary/types.ts"
import type { Deq } from "./Dynamics.ts"
import type { Rng } from "./Tensor.ts"

export {
  /** Options of {@link apgd}. */
  ApgdOptions,
  /** Options of {@link apgdTargeted}. */
  ApgdTargetedOptions,
  /** Options of {@link autoAttack}. */
  AutoAttackOptions,
  /** Options of {@link evaluate}. */
  EvaluateOptions,
  /** Options of {@link fabTargeted}. */
  FabOptions,
  /** Options of {@link fgsm}. */
  FgsmOptions,
  /** Options of {@link pgd}. */
  PgdOptions,
  /** Options of {@link square}. */
  SquareOptions
}

export {
  /** An attack could not run (shapes, labels, too few classes, a classifier that threw). */
  AttackError,
  /** A resume file is unreadable or belongs to another evaluation. */
  ResumeError
} from "./internal/adversary/types.ts"

export type {
  /** What an attack returns; `xAdv` is owned by the caller's Scope. */
  AttackResult,
  /** The JSON-safe description of an attack recorded in results. */
  AttackSettings,
  /** Per-call context given to a classifier (its seed). */
  CallContext,
  /** What an attack sees: differentiable `logits`, evaluated `predict`, flags for randomized / dynamic defences. */
  Classifier,
  /** Solver diagnostics a classifier may report for the masking flags. */
  Diagnostics,
  /** Options of {@link fromModel}: `bounds` (required), `classes`, `inputShape`, `name`, `output`. */
  FromModelOptions,
  /** What {@link fromModel} takes: a `tf.LayersModel` or a function from NHWC images to logits. */
  ModelLike,
  /** "Linf" or "L2". */
  Norm,
  /** Per-sample keys of an attack call. */
  PerturbContext,
  /** An attack for code outside Effect (see {@link promise}). */
  PromiseAttack,
  /** An explicit random seed. */
  Seeded
} from "./internal/adversary/types.ts"

export type {
  /** An ensemble: an attack that also reports its stages. */
  EnsembleShape,
  /** The outcome of an ensemble on one batch. */
  EnsembleResult,
  /** What one stage of an ensemble did on one batch. */
  StageOutcome
} from "./internal/adversary/ensemble.ts"

export type {
  /** How an evaluation in a worst case attacked: "transfer", "adaptive", "white-box" or "black-box". */
  AttackRole,
  /** A gradient-masking flag. */
  Flag,
  /** The kinds of gradient-masking flag. */
  FlagKind,
  /** The measurements behind the flags. */
  MaskingStats,
  /** A labelled robust accuracy with its role, for {@link unreliableFlags}. */
  RoleRow
} from "./internal/adversary/flags.ts"

export type {
  /** One evaluation in a {@link worstCase}. */
  WorstCaseInput
} from "./internal/adversary/worst.ts"

export type {
  /** A dataset to evaluate on. */
  EvaluationData,
  /** The record of one evaluation. */
  EvaluationResult,
  /** One stage of an evaluation, summarised. */
  StageSummary
} from "./internal/adversary/evaluation.ts"

export type {
  /** The synchronous core of a custom attack. */
  Core,
  /** What a custom attack's core closes over (classifier, keyed Rng, query counter). */
  Env
} from "./internal/adversary/run.ts"

// ---------------------------------------------------------------------------------------------------------------
// the service
// ---------------------------------------------------------------------------------------------------------------

/**
 * An adversarial attack: `perturb(classifier, x, y)` returns x_adv within the eps-ball of x and the classifier's
 * bounds (default [0, 1]), with per-sample success (`predict(x_adv)` misclassifies). Provide one with a Layer (`Attack.pgd({...})`) to
 * swap attacks in an ablation, or build values with {@link pgd}, {@link apgd}... to run several.
 *
 * @category services
 */
export class Attack extends Context.Service<Attack, AttackShape>()("effect-deq/Attack") {
  /** FGSM / FGM. */
  static fgsm(options: typeof FgsmOptions.Encoded): Layer.Layer<Attack, ConfigError> {
    return Layer.effect(Attack, fgsm(options))
  }
  /** PGD with random starts and restarts. */
  static pgd(options: typeof PgdOptions.Encoded): Layer.Layer<Attack, ConfigError> {
    return Layer.effect(Attack, pgd(options))
  }
  /** APGD-CE / APGD-DLR. */
  static apgd(options: typeof ApgdOptions.Encoded): Layer.Layer<Attack, ConfigError> {
    return Layer.effect(Attack, apgd(options))
  }
  /** APGD-T. */
  static apgdTargeted(options: typeof ApgdTargetedOptions.Encoded): Layer.Layer<Attack, ConfigError> {
    return Layer.effect(Attack, apgdTargeted(options))
  }
  /** FAB-T (targeted, Linf). */
  static fabTargeted(options: typeof FabOptions.Encoded): Layer.Layer<Attack, ConfigError> {
    return Layer.effect(Attack, fabTargeted(options))
  }
  /** Square (Linf, black-box). */
  static square(options: typeof SquareOptions.Encoded): Layer.Layer<Attack, ConfigError> {
    return Layer.effect(Attack, square(options))
  }
  /** AutoAttack's stages as one ensemble attack. */
  static autoAttack(options: typeof AutoAttackOptions.Encoded): Layer.Layer<Attack, ConfigError> {
    return Layer.effect(Attack, Effect.flatMap(autoAttack(options), ensemble))
  }
}

// ---------------------------------------------------------------------------------------------------------------
// constructors
// ---------------------------------------------------------------------------------------------------------------

/** The recorded settings of a built-in attack from its decoded options. */
const settingsOf = <O extends { readonly norm: "Linf" | "L2"; readonly eps: number }>(
  kind: "white-box" | "black-box", o: O, steps: number, restarts: number
): Attack["Service"]["settings"] => ({ kind, norm: o.norm, eps: o.eps, steps, restarts, options: { ...o } })

/**
 * A custom attack from a synchronous tfjs core `(env, x, y) => xAdv`: validation, the tidy, success checks and
 * Scope ownership are added. Use `env`'s helpers through the classifier; draw randomness with `env.rng`.
 *
 * @category constructors
 */
export const make: (name: string, settings: Attack["Service"]["settings"], core: Core) => Attack["Service"] =
  makeAttack

/**
 * FGSM (Linf) / FGM (L2): one step of size eps. Options are decoded strictly (unknown keys are a ConfigError).
 *
 * @category constructors
 */
export const fgsm = (options: typeof FgsmOptions.Encoded): Effect.Effect<Attack["Service"], ConfigError> =>
  Effect.map(decode(FgsmOptions, "fgsm")(options), (o) =>
    makeAttack(o.norm === "Linf" ? "fgsm" : "fgm-l2", settingsOf("white-box", o, 1, 1), fgsmCore(o), o.loss === "dlr" ? 3 : 2))

/**
 * PGD (Madry et al.): `steps` signed (Linf) or normalised (L2) steps of `stepSize` (default 2.5 eps / steps) from
 * a uniform random start, projected after each step; each restart runs on the samples not yet fooled and the
 * per-sample worst case is kept. `randomStartClamp: false` reproduces the paper's evaluation PGD.
 *
 * @category constructors
 */
export const pgd = (options: typeof PgdOptions.Encoded): Effect.Effect<Attack["Service"], ConfigError> =>
  Effect.map(decode(PgdOptions, "pgd")(options), (o) =>
    makeAttack(
      o.norm === "Linf" ? "pgd" : "pgd-l2",
      settingsOf("white-box", { ...o, stepSize: o.stepSize ?? (2.5 * o.eps) / o.steps }, o.steps, o.restarts),
      pgdCore(o),
      o.loss === "dlr" ? 3 : 2
    ))

/**
 * APGD (Croce & Hein 2020) with the cross-entropy ("apgd-ce") or DLR ("apgd-dlr") loss: step size 2 eps halved at
 * the checkpoints of the paper's schedule when progress stalls, momentum 0.75, restarts on the unbroken samples.
 *
 * @category constructors
 */
export const apgd = (options: typeof ApgdOptions.Encoded): Effect.Effect<Attack["Service"], ConfigError> =>
  Effect.map(decode(ApgdOptions, "apgd")(options), (o) =>
    makeAttack(`apgd-${o.loss}`, settingsOf("white-box", o, o.steps, o.restarts), apgdCore(o), o.loss === "dlr" ? 3 : 2))

/**
 * APGD-T: APGD on the targeted DLR loss towards each of the `targets` most likely wrong classes (needs 4 classes).
 *
 * @category constructors
 */
export const apgdTargeted = (
  options: typeof ApgdTargetedOptions.Encoded
): Effect.Effect<Attack["Service"], ConfigError> =>
  Effect.map(decode(ApgdTargetedOptions, "apgdTargeted")(options), (o) =>
    makeAttack("apgd-t", settingsOf("white-box", o, o.steps, o.restarts), apgdTargetedCore(o), 4))

/**
 * FAB-T (Croce & Hein 2020), targeted, Linf: for each of the `targets` most likely wrong classes, projects the
 * current and the original point onto the linearised boundary towards that class (minimal Linf step inside the
 * box), steps to an overshot combination biased to the original, and pulls back after each success, so the
 * perturbation shrinks towards the minimal one. A sample is broken when a misclassified point within eps was found.
 *
 * @category constructors
 */
export const fabTargeted = (options: typeof FabOptions.Encoded): Effect.Effect<Attack["Service"], ConfigError> =>
  Effect.map(decode(FabOptions, "fabTargeted")(options), (o) =>
    makeAttack("fab-t", settingsOf("white-box", o, o.steps, o.restarts), fabTargetedCore(o)))

/**
 * Square (Andriushchenko et al. 2020), Linf, score-based black-box: queries `predict` only.
 *
 * @category constructors
 */
export const square = (options: typeof SquareOptions.Encoded): Effect.Effect<Attack["Service"], ConfigError> =>
  Effect.map(decode(SquareOptions, "square")(options), (o) =>
    makeAttack("square", settingsOf("black-box", o, o.queries, o.restarts), squareCore(o)))

/**
 * An ensemble of attacks sharing one threat model (a mismatch in eps or norm is a ConfigError): stages run in
 * order, each on the samples still correct; `perturb` returns the per-sample worst case, `run` also the stages.
 *
 * @category constructors
 */
export const ensemble = (attacks: ReadonlyArray<Attack["Service"]>): Effect.Effect<EnsembleShape, ConfigError> =>
  makeEnsemble(attacks)

/**
 * The AutoAttack stages: "standard" = APGD-CE, APGD-T, FAB-T, Square (AutoAttack's four); "plus" = APGD-CE and
 * APGD-DLR with 5 restarts, Square, APGD-T, FAB-T (AutoAttack's untargeted FAB is not implemented); "rand" =
 * APGD-CE and APGD-DLR with EOT over 20 draws. FAB-T and Square are Linf only here, so "standard" and "plus" need
 * `norm: "Linf"`.
 *
 * @category constructors
 */
export const autoAttack = (
  options: typeof AutoAttackOptions.Encoded
): Effect.Effect<Array<Attack["Service"]>, ConfigError> =>
  Effect.gen(function*() {
    const o = yield* decode(AutoAttackOptions, "autoAttack")(options)
    const base = { eps: o.eps, norm: o.norm, steps: o.steps }
    if (o.version === "rand") {
      return [yield* apgd({ ...base, loss: "ce", eot: 20 }), yield* apgd({ ...base, loss: "dlr", eot: 20 })]
    }
    if (o.norm !== "Linf") {
      return yield* new ConfigError({
        path: "autoAttack.norm",
        message: `version "${o.version}" includes FAB-T and Square, which are Linf only here; use norm "Linf", version "rand", or list the stages yourself`
      })
    }
    const sq = yield* square({ eps: o.eps, queries: o.queries })
    const t = yield* apgdTargeted({ ...base, targets: o.targets })
    const fab = yield* fabTargeted({ eps: o.eps, steps: o.steps, targets: o.targets })
    if (o.version === "standard") return [yield* apgd({ ...base, loss: "ce" }), t, fab, sq]
    return [yield* apgd({ ...base, loss: "ce", restarts: 5 }), yield* apgd({ ...base, loss: "dlr", restarts: 5 }), sq, t, fab]
  })

/**
 * A {@link Classifier} from a `tf.LayersModel` (shapes, classes, a final softmax read from it; flat inputs get x
 * reshaped) or a function `(x) => logits`, in its input `bounds`. A bad option throws a ConfigError naming it.
 *
 * @category constructors
 */
export const fromModel: (model: ModelLike, options: FromModelOptions) => Classifier = facade.fromModel

/**
 * The attacks as Promises, seeded explicitly: `await promise.pgd({ eps: 0.1, steps: 10 }, { seed: 0 }).run(classifier,
 * x, y)` resolves to an AttackResult whose `xAdv` the caller owns (cloned out of the attack's Scope: dispose it);
 * a failed attack rejects with its AttackError, a bad option throws its ConfigError. `of(attack, { seed })` wraps
 * any Effect attack; `evaluate` is {@link evaluate} (attacks given as Promise attacks, `seed` in the options).
 *
 * @category promise
 */
export const promise = {
  of: facade.toPromise, fgsm: facade.lift(fgsm), pgd: facade.lift(pgd), apgd: facade.lift(apgd),
  apgdTargeted: facade.lift(apgdTargeted), fabTargeted: facade.lift(fabTargeted), square: facade.lift(square),
  autoAttack: facade.lift((o: typeof AutoAttackOptions.Encoded) => Effect.flatMap(autoAttack(o), ensemble)),
  evaluate: facade.evaluate
} as const

// ---------------------------------------------------------------------------------------------------------------
// losses and helpers
// ---------------------------------------------------------------------------------------------------------------

/**
 * Per-sample losses on [B, K] logits (attacks maximise them): cross-entropy, margin z_y - max_{j != y} z_j,
 * DLR and targeted DLR (Croce & Hein 2020).
 *
 * @category losses
 */
export const losses = {
  crossEntropy: lossFns.crossEntropy,
  margin: lossFns.margin,
  dlr: lossFns.dlr,
  dlrTargeted: lossFns.dlrTargeted
} as const

/**
 * Projection onto the eps-ball (Linf or L2) around x intersected with the box `bounds` (default [0, 1]).
 *
 * @category geometry
 */
export const project = geometry.project

/**
 * APGD's checkpoint iterations for a budget of `steps`.
 * @category internals
 */
export const checkpoints = apgdCheckpoints

// ---------------------------------------------------------------------------------------------------------------
// evaluation
// ---------------------------------------------------------------------------------------------------------------

/**
 * Evaluates a classifier on a dataset under one attack or an ensemble of stages (run on the still-correct samples,
 * per-sample worst case). Records attack settings, the gradient-source label (the caller's `gradientSource`, else
 * the classifier's own, e.g. a {@link deqClassifier}'s "Munroll-3-5", else "logits"), eps, norm, steps,
 * restarts, seed and backend, clean and robust accuracy, accuracy after each stage, the masking measurements and
 * flags. With `resumeFile`, each finished batch is appended to a JSONL file and a rerun skips it; the numbers are
 * the same as an uninterrupted run. Samples are keyed by dataset index, so batching does not change any draw.
 *
 * @category evaluation
 */
export const evaluate: (
  classifier: Classifier,
  data: evaluation.EvaluationData,
  attacks: Attack["Service"] | ReadonlyArray<Attack["Service"]>,
  options?: typeof EvaluateOptions.Encoded
) => Effect.Effect<evaluation.EvaluationResult, AttackError | ConfigError | ResumeError, Rng> = evaluation.evaluate

/**
 * {@link evaluate} at several epsilons (attacks built per eps), adding the "accuracy-not-decreasing" flag when
 * robust accuracy does not fall as eps grows. A `resumeFile` is used as a prefix (one file per eps).
 *
 * @category evaluation
 */
export const evaluateSweep = evaluation.evaluateSweep

/**
 * Adds the epsilon-sweep flags to results of one classifier and attack measured at several epsilons.
 *
 * @category evaluation
 */
export const withSweepFlags = evaluation.withSweepFlags

/**
 * A result as JSON text (per-sample arrays with `{ perSample: true }`).
 *
 * @category reporting
 */
export const toJson = report.toJson

/**
 * Results as one Markdown table (accuracies in %, passes per sample).
 *
 * @category reporting
 */
export const toMarkdown = report.toMarkdown

/**
 * Forward / backward passes per evaluated sample of a result, as "forward/backward".
 *
 * @category reporting
 */
export const passesPerSample = report.passesPerSample

/**
 * The per-sample worst case over evaluations of the same samples (in the same order): a sample is robust only if
 * every evaluation left it correct. Its stages are the evaluations (labelled), its passes their sum, its
 * diagnostics the most pessimistic, its flags the union of theirs plus `unreliable` (RobustBench's word) when the
 * roles contradict each other: an "adaptive" evaluation above the "transfer" one, a "black-box" one below every
 * gradient-based one, or `sweep` (one attack at several eps) not falling as eps grows. This is the number to report.
 *
 * @category evaluation
 */
export const worstCase = worst.worstCase

/**
 * The `unreliable` flags of labelled robust accuracies with their roles (see {@link worstCase}).
 *
 * @category evaluation
 */
export const unreliableFlags = flags.unreliableFlags

// ---------------------------------------------------------------------------------------------------------------
// DEQ-aware attacks
// ---------------------------------------------------------------------------------------------------------------

/**
 * What a white-box attack on a DEQ differentiates through (states as the papers number them: z_0 the initial state,
 * z_n the state after n solver steps, z_N the read-out state): Implicit (IFT at the read-out state), Phantom(k, tau)
 * and Unroll(k, lambda) tails from the read-out state, Unrolled(n) steps from z_0, Intermediate(n, K_a, lambda)
 * (Eq. (11) of Yang et al., ICML 2023, from z_n) and Ensemble (the ensemble-defence attack: the summed losses of
 * several intermediate states).
 *
 * @category deq
 */
export type GradientSource = deqSource.GradientSource

/**
 * Constructors of {@link GradientSource}, its report labels ("Munroll-3-5" style and a readable form), the papers'
 * attack strings, and the surrogate logits themselves.
 *
 * @category deq
 */
export const GradientSource = {
  /** The exact gradient at the read-out state (FixedPoint `Backward.implicit` options). */
  implicit: deqSource.implicit,
  /** `k` damped steps (tau, default 0.5) from the read-out state (FixedPoint `Backward.phantom`). */
  phantom: deqSource.phantom,
  /** Backprop through `n` plain steps from z_0 (FixedPoint `Backward.unrolled`). */
  unrolled: deqSource.unrolled,
  /** The paper's ready-made "unroll": f and `k` damped steps (lambda, default 0.5) from the read-out state. */
  unroll: deqSource.unroll,
  /** z_n after `n` solver steps (0: z_0), then f and `k` damped steps (lambda, default 1), Eq. (11). */
  intermediate: deqSource.intermediate,
  /** The summed losses of the intermediate surrogates of states from..to (clean version of "Funroll-es-0"). */
  ensemble: deqSource.ensemble,
  /** A source from the papers' attack strings ("Munroll-3-5" starts from their entry 3, z_4: intermediate(4, 5, 0.5)). */
  fromPaper: deqSource.fromPaper,
  /** The report label, the papers' string for intermediate states ("Munroll-3-5" for intermediate(4, 5, 0.5)). */
  label: deqSource.label,
  /** A readable one-line description. */
  describe: deqSource.describe,
  /** The source's differentiable surrogate logits at x (call inside a gradient; the caller owns the result). */
  logits: deqSource.sourceLogits
} as const

/**
 * How an attack treats an inference-time defence: "paper" (non-adaptive, gradients from the undefended DEQ; the
 * ICML 2023 protocol), "full" (through the whole defence), "bpda" (identity backward of the purification).
 *
 * @category deq
 */
export type DefenceMode = deqClassifierModule.DefenceMode

export type {
  /** A Classifier built from a DEQ, with its source, read-out, defence, mode and gradient-source label. */
  DeqClassifier,
  /** Options of {@link deqClassifier}. */
  DeqClassifierOptions,
  /** Settings of a DEQ classifier's diagnostics (samples, reference gradient, convergence tolerance). */
  DiagnosticsOptions
} from "./internal/adversary/deq/classifier.ts"

/**
 * A DEQ as an attack Classifier. `predict` is the evaluated prediction: the read-out (Final h(z*), early-exit
 * State(n) h(z_n), Ensemble mean of h(z_n)) or, with a defence, the defence's logits. `logits` is the gradient
 * source's surrogate (per `mode` with a defence: the undefended source, the defence on the tape, or the source at
 * the BPDA-purified input; randomized defences get the call's seed, so attacks' `eot` averages over draws).
 * `diagnostics` reports per-sample forward convergence, the implicit backward residual, and the cosine between
 * implicit and unrolled input gradients on the first samples. Defended classifiers are `dynamic`.
 *
 * @category deq
 */
export const deqClassifier: (
  deq: Deq,
  options: deqClassifierModule.DeqClassifierOptions
) => deqClassifierModule.DeqClassifier = deqClassifierModule.deqClassifier

/**
 * A grid of intermediate-state surrogates (every combination of state z_n, tail length K_a, damping lambda).
 *
 * @category deq
 */
export type Grid = deqEvaluate.Grid

/**
 * Grids: `small(N)` (lambda {1, 0.5} x states z_{N/4}, z_{N/2}, z_N x K_a {1, 5}: 12 points, the read-out state
 * included), `paper(N = 8)` (lambda {1, 0.5} x the papers' states z_1..z_N x K_a 1..9), `sources(grid)` and
 * `label(grid)`.
 *
 * @category deq
 */
export const Grid = {
  small: deqEvaluate.smallGrid,
  paper: deqEvaluate.paperGrid,
  sources: deqEvaluate.gridSources,
  label: deqEvaluate.gridLabel
} as const

export type {
  /** Options of {@link evaluateDeq}. */
  EvaluateDeqOptions,
  /** Evaluation options passed to each run of a DEQ evaluation. */
  EvaluateSettings,
  /** Options of {@link evaluateGrid}. */
  GridOptions,
  /** One grid point's evaluation. */
  GridPoint,
  /** The per-point evaluations and the per-sample worst case of a grid search. */
  GridResult
} from "./internal/adversary/deq/evaluate.ts"

/**
 * Worst case over a grid of intermediate-state surrogates: runs `attacks` once per grid point (default
 * `Grid.small` of the deq's budget), each point with its own random starts, and keeps, per sample, the worst case
 * (any success counts). Returns every
 * point's evaluation (its robust accuracy and flags), the combined result (its stages are the grid points) and,
 * per sample, the grid point that broke it.
 *
 * @category deq
 */
export const evaluateGrid = deqEvaluate.evaluateGrid

/**
 * Evaluates a DEQ once per gradient source (default implicit and phantom(5, 0.5)) and, with a defence, per attack
 * mode (default "paper", "bpda", "full"; "full" runs once), optionally appending the grid's worst case. Each
 * result records its source label; the "gradient-cosine-low" flag names the implicit-vs-unrolled comparison and
 * "forward-not-converged" the forward solves on x and x_adv.
 *
 * @category deq
 */
export const evaluateDeq = deqEvaluate.evaluateDeq
