/**
 * Shared types of the attack internals: what an attack sees (Classifier), what it returns, its errors.
 * The public names are re-exported by src/Adversary.ts.
 */
import type { Effect, Scope } from "effect"
import { Schema } from "effect"
import type { Rng, tf } from "../../Tensor.ts"

/** Threat-model norm of a perturbation ball. */
export type Norm = "Linf" | "L2"

/** Per-call context handed to a classifier: `seed` lets a randomized model draw fresh, reproducible randomness. */
export interface CallContext {
  readonly seed: number
}

/** What a classifier can report about itself on a batch, for the gradient-masking flags. */
export interface Diagnostics {
  /** per sample: 1 when the forward solve reached its tolerance */
  readonly forwardConverged?: Uint8Array
  /** residual of the backward (adjoint) solve, relative */
  readonly backwardResidual?: number
  /** cosine between the gradient the attack uses and a reference gradient (e.g. implicit vs unrolled) */
  readonly gradientCosine?: number
}

/** The default input domain of a classifier: pixels in [0, 1]. */
export const defaultBounds: readonly [number, number] = [0, 1]

/**
 * What an attack sees. `logits` is differentiable w.r.t. x and gives the gradients (it may be a surrogate such as
 * BPDA or an intermediate-state unroll); `predict` is the prediction being evaluated (success checks, accuracy,
 * and the scores a black-box attack queries); it defaults to `logits`. Inputs are NHWC images inside `bounds`
 * (default [0, 1]).
 */
export interface Classifier {
  readonly name: string
  /**
   * The input domain [lo, hi] (default [0, 1]): attacks reject inputs outside it and keep x_adv inside it.
   */
  readonly bounds?: readonly [number, number]
  /**
   * The number of classes. Attacks check labels against it; when it is absent they learn it from one extra
   * forward pass on one sample.
   */
  readonly classes?: number
  /** The per-sample input shape [H, W, C], when fixed: inputs of another shape are rejected naming both shapes. */
  readonly inputShape?: readonly [number, number, number]
  readonly logits: (x: tf.Tensor4D, context?: CallContext) => tf.Tensor2D
  readonly predict?: (x: tf.Tensor4D, context?: CallContext) => tf.Tensor2D
  /** randomized model or defence: gradients are averaged over `eot` draws, each call gets its own seed */
  readonly randomized?: boolean
  /** an inference-time defence that runs an optimisation loop: evaluations get the "dynamic-defence" flag */
  readonly dynamic?: boolean
  /** optional diagnostics for the gradient-masking flags; plain tfjs, returns numbers only */
  readonly diagnostics?: (x: tf.Tensor4D) => Diagnostics
  /** what `logits` differentiates through (e.g. "Munroll-3-5"); `evaluate` records it unless told otherwise */
  readonly gradientSource?: string
  /**
   * The differentiable objective of a per-sample loss, when it is not `loss(logits(x))`: a surrogate with several
   * heads (the ensemble-defence attack sums the losses of several states). Returns the per-sample objective the
   * attack ascends and the logits its success checks may read. Attacks call it inside the gradient.
   */
  readonly objective?: (
    x: tf.Tensor4D,
    loss: (logits: tf.Tensor2D) => tf.Tensor1D,
    context?: CallContext
  ) => { readonly loss: tf.Tensor1D; readonly logits: tf.Tensor2D }
}

/** Extra, optional inputs of one attack call. */
export interface PerturbContext {
  /**
   * A stable key per sample (e.g. its dataset index). Random starts and Square draw their randomness per key, so a
   * sample gets the same perturbation whatever batch or subset it is attacked in. Default: the row index.
   */
  readonly keys?: ArrayLike<number>
  /**
   * Extra label mixed into every random draw of the call (random starts, Square, EOT seeds). Evaluations that must
   * not share their random starts (the points of a grid) pass different salts. Default: none.
   */
  readonly salt?: string
}

/** The outcome of one attack call. `xAdv` belongs to the caller's Scope. */
export interface AttackResult {
  readonly xAdv: tf.Tensor4D
  /** per sample: 1 when `predict(xAdv)` misclassifies */
  readonly success: Uint8Array
  /** classifier evaluations spent, counted per sample (a batch of n is n queries; EOT draws count); = `forward` */
  readonly queries: number
  /** forward passes through the classifier, per sample (a batch of n counts n) */
  readonly forward: number
  /** backward passes (input gradients), per sample; EOT draws count */
  readonly backward: number
}

/** What is recorded about an attack's configuration in every evaluation result (JSON-safe). */
export interface AttackSettings {
  readonly kind: "white-box" | "black-box"
  readonly norm: Norm
  readonly eps: number
  /** gradient steps; for Square the query budget */
  readonly steps: number
  readonly restarts: number
  /** the full decoded options */
  readonly options: Readonly<Record<string, unknown>>
}

/** The service shape of an attack (see `Attack` in src/Adversary.ts). */
export interface AttackShape {
  readonly name: string
  readonly settings: AttackSettings
  readonly perturb: (
    classifier: Classifier,
    x: tf.Tensor4D,
    y: tf.Tensor1D,
    context?: PerturbContext
  ) => Effect.Effect<AttackResult, AttackError, Rng | Scope.Scope>
}

/**
 * An attack could not run: bad shapes, inputs outside the classifier's domain (NaN, Inf, out of bounds), labels that
 * are not class indices, too few classes for its loss, a classifier that threw.
 *
 * @category errors
 */
export class AttackError extends Schema.TaggedError<AttackError>()("AttackError", {
  attack: Schema.String,
  message: Schema.String,
  /** the offending sample (its row in the batch, or its dataset index in an evaluation), when one is to blame */
  sample: Schema.optional(Schema.Number)
}) {}

/**
 * A resume file could not be read or written, or belongs to a different evaluation (`message` names the field).
 *
 * @category errors
 */
export class ResumeError extends Schema.TaggedError<ResumeError>()("ResumeError", {
  file: Schema.String,
  message: Schema.String
}) {}

/** What {@link fromModel} takes: a tfjs layers model, or any differentiable function from NHWC images to logits. */
export type ModelLike = tf.LayersModel | ((x: tf.Tensor4D) => tf.Tensor)

/** Options of {@link fromModel}. */
export interface FromModelOptions {
  /** the input domain [lo, hi] the model was trained on: attacks reject pixels outside it and keep x_adv inside */
  readonly bounds: readonly [number, number]
  /** the number of classes (a layers model's output width when absent; a function's is learnt on the first call) */
  readonly classes?: number
  /** the per-sample input shape [H, W, C]: a layers model taking flat [batch, features] inputs gets x reshaped */
  readonly inputShape?: readonly [number, number, number]
  /** the name results are recorded under (default: the layers model's name, else "model") */
  readonly name?: string
  /**
   * what the model outputs: "logits", or "probabilities" (a final softmax), which are turned into log-probabilities
   * (softmax-equivalent logits: cross-entropy, margin and DLR are unchanged). Default: "probabilities" when the
   * last layer of a layers model has a softmax activation, else "logits".
   */
  readonly output?: "logits" | "probabilities"
}

/** The explicit random seed of a Promise attack or evaluation (same seed, same backend: same result). */
export interface Seeded {
  readonly seed: number
}

/** An attack for code outside Effect. */
export interface PromiseAttack {
  readonly name: string
  readonly settings: AttackSettings
  readonly seed: number
  /** the Effect attack underneath (Adversary.evaluate, ensembles) */
  readonly attack: AttackShape
  /**
   * Attacks the batch. The result's `xAdv` is a new tensor the caller owns (dispose it); nothing else is left.
   * Rejects with the AttackError when the input is invalid or the classifier throws.
   */
  readonly run: (classifier: Classifier, x: tf.Tensor4D, y: tf.Tensor1D, context?: PerturbContext) => Promise<AttackResult>
}
