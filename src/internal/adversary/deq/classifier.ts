/**
 * A DEQ as an attack Classifier: `predict` is the evaluated read-out (or the defended forward pass), `logits` the
 * gradient source's differentiable surrogate, and `diagnostics` the solver measurements behind the DEQ flags
 * (forward convergence per sample, backward residual, implicit-vs-unrolled gradient cosine).
 *
 * With an inference-time defence (Dynamics.Defence) the surrogate follows the attack mode:
 * - "paper": the undefended DEQ's source (non-adaptive; the ICML 2023 PGD protocol, docs/method.md, "Evaluation
 *   protocol");
 * - "full": the defence's own logits, differentiated through the whole defence;
 * - "bpda": the source at the purified input, with the purification's backward pass replaced by the identity.
 */
import * as Dynamics from "../../../Dynamics.ts"
import { Backward, type SolveStats } from "../../../FixedPoint.ts"
import { tf, untaped } from "../../../Tensor.ts"
import { crossEntropy } from "../losses.ts"
import {
  describe as describeSource,
  type GradientSource,
  identityTail,
  label as labelOf,
  readOutLogits,
  sourceLogits,
  sourceObjective
} from "./source.ts"
import type { CallContext, Classifier, Diagnostics } from "../types.ts"
import { classifierOptions } from "../workers.ts"

/** How an attack treats an inference-time defence (see the module comment). */
export type DefenceMode = "paper" | "full" | "bpda"

/** Settings of a DEQ classifier's diagnostics. */
export interface DiagnosticsOptions {
  /** samples (the first of each batch) on which the implicit and reference gradients are compared (default 4) */
  readonly samples?: number
  /** the reference gradient (default: backprop through as many plain steps as the deq's budget) */
  readonly reference?: Backward
  /** the implicit backward solve compared (default: FixedPoint's `Backward.implicit()` defaults) */
  readonly implicit?: { readonly maxIter?: number; readonly tol?: number; readonly solver?: "picard" | "anderson" | "broyden" }
  /**
   * forward convergence: a sample converged when its residual (the deq's stop mode) is <= tol. Default: 10 times
   * the deq's tolerance (the batch-wide stopping rule leaves single samples a little above it), or 1e-3 (the
   * papers' Broyden eps) when the deq runs a fixed budget (tol 0)
   */
  readonly tol?: number
}

/** Options of {@link deqClassifier}. */
export interface DeqClassifierOptions {
  /** what the attack differentiates through */
  readonly source: GradientSource
  /** the evaluated read-out (default Final); Implicit / Phantom / Unrolled / Unroll sources attach to its state(s) */
  readonly readOut?: Dynamics.ReadOut
  /** an inference-time defence: `predict` is then the defended forward pass */
  readonly defence?: Dynamics.Defence
  /** how the attack treats the defence (default "bpda"); ignored without a defence */
  readonly mode?: DefenceMode
  /** the classifier's name in results (default "deq", or "deq+<defence>") */
  readonly name?: string
  /** false turns the diagnostics off (default on) */
  readonly diagnostics?: boolean | DiagnosticsOptions
}

/** A Classifier built from a DEQ, with what it was built from. */
export interface DeqClassifier extends Classifier {
  readonly deq: Dynamics.Deq
  readonly source: GradientSource
  readonly readOut: Dynamics.ReadOut
  readonly defence?: Dynamics.Defence
  readonly mode?: DefenceMode
  /** the label recorded as the evaluation's gradient source, e.g. "Munroll-3-5", "bpda:implicit", "full" */
  readonly gradientSource: string
  /** a readable description of the gradient path */
  readonly description: string
}

/** The label of a (source, defence, mode) combination. */
export const classifierLabel = (source: GradientSource, defence?: Dynamics.Defence, mode?: DefenceMode): string =>
  defence === undefined ? labelOf(source) : mode === "full" ? "full" : `${mode ?? "bpda"}:${labelOf(source)}`

const finalReadOut = Dynamics.readOut.final

/** The forward solve's per-sample convergence on x, with the deq's own options (budget and tolerance). */
const forwardConvergence = (deq: Dynamics.Deq, x: tf.Tensor4D, tol: number | undefined): Uint8Array => {
  let stats: SolveStats | undefined
  untaped(() =>
    tf.tidy(() => {
      // identity tail: a Final read-out that always solves (an Unrolled deq would skip the solve)
      Dynamics.logits({ ...deq, backward: identityTail }, x, finalReadOut, { onStats: (s) => (stats = s) })
    })
  )
  const s = stats!
  const deqTol = deq.solveOptions.tol ?? deq.solver.options.tol
  const t = tol ?? (deqTol > 0 ? 10 * deqTol : 1e-3)
  const residual = (deq.solveOptions.stopMode ?? deq.solver.options.stopMode) === "abs" ? s.absResidual : s.relResidual
  return Uint8Array.from(residual, (v) => (v <= t ? 1 : 0))
}

/**
 * The cosine between the implicit and the reference (unrolled) input gradients of -log p(prediction) on the first
 * samples of x, and the worst relative residual of the implicit backward solves.
 */
const gradientCheck = (
  deq: Dynamics.Deq,
  x: tf.Tensor4D,
  o: DiagnosticsOptions
): { readonly gradientCosine?: number; readonly backwardResidual?: number } => {
  const m = Math.min(o.samples ?? 4, x.shape[0])
  if (m <= 0) return {}
  let residual: number | undefined
  const implicit = Backward.implicit({
    ...o.implicit,
    onStats: (s) => {
      const worst = s.relResidual.reduce((a, v) => Math.max(a, Number.isFinite(v) ? v : Infinity), 0)
      residual = Math.max(residual ?? 0, worst)
    }
  })
  const reference = o.reference ?? Backward.unrolled(Dynamics.budget(deq))
  const { dot, na, nb } = tf.tidy(() => {
    const sub = x.slice([0, 0, 0, 0], [m, -1, -1, -1])
    const labels = tf.tidy(() => tf.argMax(readOutLogits(deq, sub, finalReadOut), 1)) as tf.Tensor1D
    const gradOf = (backward: Backward) =>
      tf.grad((xx: tf.Tensor) =>
        tf.sum(crossEntropy(Dynamics.logits({ ...deq, backward }, xx as tf.Tensor4D, finalReadOut), labels))
      )(sub)
    const a = tf.reshape(gradOf(implicit), [-1]), b = tf.reshape(gradOf(reference), [-1])
    return {
      dot: tf.sum(tf.mul(a, b)).dataSync()[0]!,
      na: tf.norm(a).dataSync()[0]!,
      nb: tf.norm(b).dataSync()[0]!
    }
  })
  const cosine = na > 0 && nb > 0 && Number.isFinite(dot) ? dot / (na * nb) : undefined
  return {
    ...(cosine !== undefined ? { gradientCosine: cosine } : {}),
    ...(residual !== undefined ? { backwardResidual: residual } : {})
  }
}

/**
 * Builds an attack Classifier from a DEQ (see src/Adversary.ts `deqClassifier`). Throws a RangeError for a
 * RandomState read-out (a training device, not an evaluated prediction).
 */
export const deqClassifier = (deq: Dynamics.Deq, options: DeqClassifierOptions): DeqClassifier => {
  const r = options.readOut ?? finalReadOut
  if (r._tag === "RandomState") {
    throw new RangeError("effect-deq deqClassifier: a RandomState read-out is not a deterministic prediction; use State(n)")
  }
  const { source, defence } = options
  const mode = defence === undefined ? undefined : options.mode ?? "bpda"
  const seedOf = (context?: CallContext) => context?.seed ?? 0
  // off the tape, a defence runs inside `untaped`: it may call tf.grad itself, which would drop the attack's tape
  const runDefence = (x: tf.Tensor4D, context?: CallContext) => defence!.run(deq, x, { seed: seedOf(context) })

  /** x_p = x + stopGradient(purified - x): the purified input, with an identity backward pass */
  const bpdaInput = (x: tf.Tensor4D, context?: CallContext): tf.Tensor4D => {
    const delta = untaped(() => tf.tidy(() => tf.sub(runDefence(x, context).purified, x)))
    return tf.add(x, delta) as tf.Tensor4D
  }
  /** the point the source is evaluated at */
  const at = (x: tf.Tensor4D, context?: CallContext): tf.Tensor4D => (mode === "bpda" ? bpdaInput(x, context) : x)

  const logits = (x: tf.Tensor4D, context?: CallContext): tf.Tensor2D =>
    tf.tidy(() => (mode === "full" ? runDefence(x, context).logits : sourceLogits(deq, at(x, context), source, r)))

  const predict = (x: tf.Tensor4D, context?: CallContext): tf.Tensor2D =>
    defence === undefined ?
      tf.tidy(() => readOutLogits(deq, x, r)) :
      untaped(() => tf.tidy(() => runDefence(x, context).logits))

  const diagOptions = options.diagnostics === false ? undefined : options.diagnostics === true || options.diagnostics === undefined ? {} : options.diagnostics
  const diagnostics = diagOptions === undefined ? undefined : (x: tf.Tensor4D): Diagnostics => ({
    forwardConverged: forwardConvergence(deq, x, diagOptions.tol),
    ...gradientCheck(deq, x, diagOptions)
  })

  const gradientSource = classifierLabel(source, defence, mode)
  const description = defence === undefined ?
    describeSource(source) :
    mode === "full" ?
    `through the whole defence "${defence.name}" (its logits on the tape)` :
    mode === "paper" ?
    `non-adaptive: ${describeSource(source)} of the undefended DEQ; prediction from the defence "${defence.name}"` :
    `BPDA through the defence "${defence.name}" (identity backward of the purification), then ${describeSource(source)}`

  // a Models.Model declares its classes and input shape: attacks then check labels and shapes without a forward pass
  const declared = deq.model as { readonly classes?: unknown; readonly config?: { readonly inputShape?: unknown } }
  const classes = typeof declared.classes === "number" ? declared.classes : undefined
  const shape = declared.config?.inputShape
  const inputShape = Array.isArray(shape) && shape.length === 3 && shape.every((v) => typeof v === "number")
    ? (shape as unknown as readonly [number, number, number])
    : undefined
  const classifier: DeqClassifier = {
    name: options.name ?? (defence === undefined ? "deq" : `deq+${defence.name}`),
    ...(classes !== undefined ? { classes } : {}),
    ...(inputShape !== undefined ? { inputShape } : {}),
    logits,
    predict,
    ...(source._tag === "Ensemble" && mode !== "full" ?
      {
        objective: (x: tf.Tensor4D, loss: (logits: tf.Tensor2D) => tf.Tensor1D, context?: CallContext) =>
          tf.tidy(() => sourceObjective(deq, at(x, context), source, r, loss))
      } :
      {}),
    ...(defence !== undefined ? { dynamic: true, randomized: defence.randomized } : {}),
    ...(diagnostics !== undefined ? { diagnostics } : {}),
    gradientSource,
    description,
    deq,
    source,
    readOut: r,
    ...(defence !== undefined ? { defence } : {}),
    ...(mode !== undefined ? { mode } : {})
  }
  // what a worker thread needs to rebuild it (../workers.ts)
  classifierOptions.set(classifier, options)
  return classifier
}
