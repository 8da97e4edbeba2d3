/**
 * Fixed-point solvers and gradients through the equilibrium.
 *
 * API SKETCH (types fixed by the lead; the implementation is being written). Helpers: keep these names and
 * signatures; you may add fields and functions.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Schema, Scope } from "effect"
import { withDefault } from "./Config.ts"
import type { tf } from "./Tensor.ts"

/**
 * The map whose fixed point is sought, z -> f(z) (the injection u and the parameters are closed over).
 * Input and output have the same shape [B, ...]; every sample is independent.
 * A map may offer `linearize(z)` so backward solves apply J^T without re-running f (see stack.md).
 *
 * @category models
 */
export interface FixedPointMap {
  (z: tf.Tensor): tf.Tensor
  readonly linearize?: (z: tf.Tensor) => Linearization
}

/**
 * The Jacobian of a map at a point, as a vector-Jacobian product. Owns tensors: call dispose.
 *
 * @category models
 */
export interface Linearization {
  readonly vjp: (v: tf.Tensor) => tf.Tensor
  readonly dispose: () => void
}

/**
 * Options of one solve.
 *
 * @category config
 */
export class SolveOptions extends Schema.Class<SolveOptions>("SolveOptions")({
  maxIter: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)).pipe(withDefault<any>(30)),
  tol: Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)).pipe(withDefault<any>(1e-4)),
  /** "abs": ||f(z)-z||, "rel": ||f(z)-z|| / ||f(z)|| */
  stopMode: Schema.Literals(["abs", "rel"]).pipe(withDefault<any>("rel")),
  /** return the "last" iterate or the "best" (lowest residual) one */
  returnMode: Schema.Literals(["best", "last"]).pipe(withDefault<any>("best")),
  /** "batch": stop when the batch-wide residual is below tol (the paper's code); "sample": per sample */
  stopping: Schema.Literals(["batch", "sample"]).pipe(withDefault<any>("batch")),
  /** keep every iterate z_1..z_n */
  recordTrajectory: Schema.Boolean.pipe(withDefault<any>(false)),
  /** "fail": `solve` fails with NotConverged when tol is not reached; "return": it returns the result */
  onNotConverged: Schema.Literals(["return", "fail"]).pipe(withDefault<any>("return"))
}) {}

/**
 * What happened in a solve. Per-sample arrays have length B; traces have one entry per step.
 *
 * @category models
 */
export interface SolveStats {
  readonly status: "converged" | "maxIter" | "diverged" | "singular"
  readonly steps: number
  readonly stepsPerSample: Int32Array
  readonly absResidual: Float32Array
  readonly relResidual: Float32Array
  readonly converged: Uint8Array
  readonly absTrace: ReadonlyArray<Float32Array>
  readonly relTrace: ReadonlyArray<Float32Array>
}

/**
 * The result of a solve. The caller owns `z`, the `trajectory` tensors and the `state` tensors.
 *
 * @category models
 */
export interface SolveResult {
  readonly z: tf.Tensor
  readonly trajectory?: ReadonlyArray<tf.Tensor>
  readonly stats: SolveStats
  readonly state?: SolverState
}

/**
 * A solver's resumable memory (Broyden's low-rank inverse Jacobian); opaque to users.
 *
 * @category models
 */
export interface SolverState {
  readonly _tag: string
  readonly dispose: () => void
}

/**
 * A fixed-point solver. `run` is plain synchronous tfjs (usable inside a tidy or a gradient function) and never
 * throws for non-convergence: it reports in `stats.status`. `solve` is the Effect seam: it owns the result's
 * tensors in the Scope and turns the status into typed errors.
 *
 * @category services
 */
export class Solver extends Context.Service<Solver, {
  readonly name: string
  readonly options: SolveOptions
  readonly run: (f: FixedPointMap, z0: tf.Tensor, options?: Partial<SolveOptions>, state?: SolverState) => SolveResult
  readonly solve: (
    f: FixedPointMap,
    z0: tf.Tensor,
    options?: Partial<SolveOptions>,
    state?: SolverState
  ) => Effect.Effect<SolveResult, NotConverged | Diverged | SingularSystem, Scope.Scope>
}>()("effect-deq/Solver") {}

/**
 * The solve did not reach its tolerance within its budget (only when `onNotConverged: "fail"`).
 *
 * @category errors
 */
export class NotConverged extends Schema.TaggedError<NotConverged>()("NotConverged", {
  solver: Schema.String,
  steps: Schema.Number,
  relResidual: Schema.Number,
  absResidual: Schema.Number,
  tol: Schema.Number,
  message: Schema.String
}) {}

/**
 * The iteration produced NaN or Inf.
 *
 * @category errors
 */
export class Diverged extends Schema.TaggedError<Diverged>()("Diverged", {
  solver: Schema.String,
  step: Schema.Number,
  message: Schema.String
}) {}

/**
 * Anderson's least-squares system was singular.
 *
 * @category errors
 */
export class SingularSystem extends Schema.TaggedError<SingularSystem>()("SingularSystem", {
  solver: Schema.String,
  step: Schema.Number,
  message: Schema.String
}) {}

/**
 * How gradients flow through an equilibrium.
 * - Implicit: implicit function theorem; the backward fixed point g = v + J^T g is solved with its own budget.
 * - Phantom: k damped steps z <- (1 - tau) z + tau f(z) on the tape from z* (k = 1, tau = 1 is JFB).
 * - Unrolled: differentiate through n plain steps from z0 (no solver).
 *
 * @category models
 */
export type Backward =
  | { readonly _tag: "Implicit"; readonly maxIter: number; readonly tol: number; readonly solver: "picard" | "anderson" | "broyden" }
  | { readonly _tag: "Phantom"; readonly k: number; readonly tau: number }
  | { readonly _tag: "Unrolled"; readonly n: number }

/**
 * Makes the equilibrium differentiable: given the solved z* (off the tape), returns a tensor equal to (or, for
 * phantom, close to) z* whose gradient w.r.t. everything f closes over follows `backward`. Call it inside
 * `tf.grad` / `tf.variableGrads`. For Unrolled, z* is ignored and z0 is used.
 *
 * @category gradients
 */
export declare const attach: (f: FixedPointMap, zStar: tf.Tensor, backward: Backward, z0?: tf.Tensor) => tf.Tensor

export type { Layer }
