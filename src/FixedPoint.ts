/**
 * Fixed-point solvers and gradients through the equilibrium.
 *
 * A solver finds z* = f(z*) for a batch of independent samples. `run` is plain synchronous tfjs (usable inside a
 * tidy, a training step or a gradient function; it never records on the tape); `solve` is the Effect seam that
 * owns the result in the Scope and turns a failed status into a typed error. `attach` then makes z* differentiable
 * with an implicit, phantom or unrolled backward pass. Details: docs/fixed-point.md.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as FixedPoint from "effect-deq/FixedPoint"
 * import { tf } from "effect-deq/Tensor"
 *
 * declare const W: tf.Variable // [H, H], the cell's weight
 * declare const u: tf.Tensor2D // [B, H], the injection, computed once per solve
 * const f = (z: tf.Tensor) => tf.tanh(tf.add(tf.matMul(z, W), u))
 *
 * const program = Effect.gen(function*() {
 *   const solver = yield* FixedPoint.Solver
 *   const { stats } = yield* solver.solve(f, tf.zerosLike(u)) // the result is freed with the Scope
 *   yield* Effect.log(`${stats.status} after ${stats.steps} steps`)
 *   // gradients: solve off the tape, then attach a backward mode to z*
 *   return tf.variableGrads(() => {
 *     const zStar = solver.run(f, tf.zerosLike(u)).z
 *     return tf.sum(FixedPoint.attach(f, zStar, FixedPoint.Backward.implicit())) as tf.Scalar
 *   })
 * }).pipe(Effect.scoped, Effect.provide(FixedPoint.Solver.anderson({ m: 5, maxIter: 40, tol: 1e-4 })))
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Schema, Scope } from "effect"
import { decode, decodeSync, defaulted, NonNegative, PositiveInt } from "./Config.ts"
import { ConfigError } from "./Errors.ts"
import { andersonMethod } from "./internal/fixedPoint/anderson.ts"
import { attachBackward } from "./internal/fixedPoint/attach.ts"
import { detach as detachTensor } from "./internal/fixedPoint/backward.ts"
import { broydenMethod, liftBroydenState } from "./internal/fixedPoint/broyden.ts"
import { picardMethod } from "./internal/fixedPoint/picard.ts"
import { type Method, runCore, StateSizeError } from "./internal/fixedPoint/iteration.ts"
import { failureOf, optionResolver, runFallback } from "./internal/fixedPoint/solve.ts"
import { own, tf } from "./Tensor.ts"

/**
 * The map whose fixed point is sought, z -> f(z) (the injection u and the parameters are closed over).
 * Input and output have the same shape [B, ...]; every sample is independent.
 * A map may offer `linearize(z)` so backward solves apply J^T without re-running f (docs/fixed-point.md,
 * "Gradients: attach").
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
  maxIter: defaulted(PositiveInt, 30),
  tol: defaulted(NonNegative, 1e-4),
  /** "abs": ||f(z)-z||, "rel": ||f(z)-z|| / ||f(z)|| */
  stopMode: defaulted(Schema.Literals(["abs", "rel"]), "rel"),
  /** return the "last" iterate or the "best" (lowest residual) one */
  returnMode: defaulted(Schema.Literals(["best", "last"]), "best"),
  /** "batch": stop when the batch-wide residual is below tol (the paper's code); "sample": per sample */
  stopping: defaulted(Schema.Literals(["batch", "sample"]), "batch"),
  /** keep every iterate z_1..z_n */
  recordTrajectory: defaulted(Schema.Boolean, false),
  /** "fail": `solve` fails with NotConverged when tol is not reached; "return": it returns the result */
  onNotConverged: defaulted(Schema.Literals(["return", "fail"]), "return"),
  /** return the solver's resumable memory in `result.state` (Broyden; the caller owns it) */
  returnState: defaulted(Schema.Boolean, false)
}) {}

/**
 * Picard (damped fixed-point iteration) settings: z <- (1 - tau) z + tau f(z).
 *
 * @category config
 */
export class PicardOptions extends Schema.Class<PicardOptions>("PicardOptions")({
  ...SolveOptions.fields,
  /** damping in (0, 1]; 1 is the plain iteration z <- f(z) */
  tau: defaulted(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)), 1)
}) {}

/**
 * Anderson acceleration settings (TorchDEQ's defaults but m = 5).
 *
 * @category config
 */
export class AndersonOptions extends Schema.Class<AndersonOptions>("AndersonOptions")({
  ...SolveOptions.fields,
  /** memory: how many past iterates the least-squares mixes */
  m: defaulted(PositiveInt.check(Schema.isLessThanOrEqualTo(64)), 5),
  /**
   * ridge added to the Gram matrix, relative to its scale (lambda * max_i ||G_i||^2; TorchDEQ adds an absolute
   * lambda, which stalls near small tolerances). 0 allows exactly singular systems.
   */
  lambda: defaulted(NonNegative, 1e-4),
  /** mixing: 1 mixes f-values only; < 1 mixes in the iterates themselves */
  beta: defaulted(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)), 1)
}) {}

/**
 * Broyden settings ("bad Broyden" as in locuslab/deq, no line search).
 *
 * @category config
 */
export class BroydenOptions extends Schema.Class<BroydenOptions>("BroydenOptions")({
  ...SolveOptions.fields,
  /** capacity of the low-rank inverse Jacobian (rank-1 pairs); when full the oldest pair is overwritten */
  memory: defaulted(PositiveInt.check(Schema.isLessThanOrEqualTo(256)), 30)
}) {}

/** Input of a Schema class: every field optional (defaults fill the rest). */
type Input<A> = { readonly [K in keyof A]?: A[K] }

/**
 * Plain input for {@link SolveOptions}: any subset of its fields.
 *
 * @category config
 */
export type SolveOptionsInput = Input<SolveOptions>
/**
 * Plain input for {@link PicardOptions} (decoded strictly by {@link makePicard} / `Solver.picard`).
 *
 * @category config
 */
export type PicardOptionsInput = Input<PicardOptions>
/**
 * Plain input for {@link AndersonOptions} (decoded strictly by {@link makeAnderson} / `Solver.anderson`).
 *
 * @category config
 */
export type AndersonOptionsInput = Input<AndersonOptions>
/**
 * Plain input for {@link BroydenOptions} (decoded strictly by {@link makeBroyden} / `Solver.broyden`).
 *
 * @category config
 */
export type BroydenOptionsInput = Input<BroydenOptions>

/**
 * What happened in a solve. Per-sample arrays have length B; traces have one entry per step.
 *
 * @category models
 */
export interface SolveStats {
  readonly solver: string
  /** how the solve ended: `tol` met, budget used up, a non-finite iterate, a singular least-squares system */
  readonly status: "converged" | "maxIter" | "diverged" | "singular"
  /** iterates computed after z0 (each costs one f evaluation, plus one for f(z0)) */
  readonly steps: number
  /** with `stopping: "sample"`, the step at which each sample froze; with "batch", `steps` */
  readonly stepsPerSample: Int32Array
  /** ||f(z) - z|| of the returned iterate, per sample */
  readonly absResidual: Float32Array
  /** ||f(z) - z|| / ||f(z)|| of the returned iterate, per sample */
  readonly relResidual: Float32Array
  /** 1 where the returned iterate meets `tol` on its own (per-sample criterion) */
  readonly converged: Uint8Array
  /** per-sample residuals of z_1..z_n */
  readonly absTrace: ReadonlyArray<Float32Array>
  readonly relTrace: ReadonlyArray<Float32Array>
  /** the batch-wide residuals (norms over the whole batch) of each step: the paper's stopping quantity */
  readonly globalAbsTrace: ReadonlyArray<number>
  readonly globalRelTrace: ReadonlyArray<number>
  /** 1-based step of the returned iterate; 0 means z0 was returned */
  readonly returnedStep: number
  /** the step that failed (non-finite or singular), when status says so */
  readonly failedStep?: number
  readonly message?: string
  /** for `fallback`: every attempt in order */
  readonly attempts?: ReadonlyArray<{ readonly solver: string; readonly status: SolveStats["status"]; readonly steps: number }>
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
 * Broyden's exported memory: the inverse Jacobian of g(z) = f(z) - z approximated as -I + sum_i u_i v_i^T, plus
 * what resuming and lifting need (docs/method.md, "Input entropy reduction"). The holder owns the tensors.
 *
 * @category models
 */
export interface BroydenState extends SolverState {
  readonly _tag: "BroydenState"
  /** u_i as [B, k, N] (k <= memory, N the flattened state size) */
  readonly U: tf.Tensor
  /** v_i as [B, k, N] */
  readonly V: tf.Tensor
  /** rank-1 pairs written so far (the step counter; the next pair goes to slot steps % capacity) */
  readonly steps: number
  /** the memory capacity the state was built with */
  readonly capacity: number
  /** slot of the last pair written */
  readonly last: number
  /** the last secant pair and g = f(z) - z at the last iterate, [B, N] */
  readonly dz: tf.Tensor
  readonly dg: tf.Tensor
  readonly gLast: tf.Tensor
  /** the flattened state shape [B, N] */
  readonly shape: ReadonlyArray<number>
}

/**
 * The solvers by name (the `_tag` of a solver config, the backward solve of `Backward.implicit`).
 *
 * @category models
 */
export type SolverName = "picard" | "anderson" | "broyden"

/**
 * What `solve` can fail with: the three ways a solve ends badly, a bad per-call option, a map that changes the
 * state size.
 *
 * @category errors
 */
export type SolveError = NotConverged | Diverged | SingularSystem | ConfigError | StateSizeChanged

/**
 * A fixed-point solver. `run` is plain synchronous tfjs (usable inside a tidy or a gradient function) and never
 * throws for non-convergence: it reports in `stats.status`; a bad per-call option throws a ConfigError naming it
 * and a map that changes the state size throws {@link StateSizeChanged}. `solve` is the Effect seam: it owns the
 * result's tensors in the Scope and fails with typed errors, those two included.
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
  ) => Effect.Effect<SolveResult, SolveError, Scope.Scope>
}>()("effect-deq/Solver") {
  /** Damped fixed-point iteration; a bad option is a ConfigError naming it. */
  static picard(options?: PicardOptionsInput): Layer.Layer<Solver, ConfigError> {
    return Layer.effect(Solver, makePicard(options))
  }
  /** Anderson acceleration; a bad option is a ConfigError naming it. */
  static anderson(options?: AndersonOptionsInput): Layer.Layer<Solver, ConfigError> {
    return Layer.effect(Solver, makeAnderson(options))
  }
  /** Broyden's method; a bad option is a ConfigError naming it. */
  static broyden(options?: BroydenOptionsInput): Layer.Layer<Solver, ConfigError> {
    return Layer.effect(Solver, makeBroyden(options))
  }
  /** Tries each solver in turn until one converges (see {@link fallback}). */
  static fallback(first: Solver["Service"], ...rest: ReadonlyArray<Solver["Service"]>): Layer.Layer<Solver> {
    return Layer.succeed(Solver, fallback(first, ...rest))
  }
}

const statsSchema = Schema.declare((u: unknown): u is SolveStats => typeof u === "object" && u !== null && "status" in u)

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
  message: Schema.String,
  stats: Schema.optional(statsSchema)
}) {}

/**
 * The iteration produced NaN or Inf.
 *
 * @category errors
 */
export class Diverged extends Schema.TaggedError<Diverged>()("Diverged", {
  solver: Schema.String,
  step: Schema.Number,
  message: Schema.String,
  stats: Schema.optional(statsSchema)
}) {}

/**
 * Anderson's least-squares system was singular.
 *
 * @category errors
 */
export class SingularSystem extends Schema.TaggedError<SingularSystem>()("SingularSystem", {
  solver: Schema.String,
  step: Schema.Number,
  message: Schema.String,
  stats: Schema.optional(statsSchema)
}) {}

/**
 * The map returned a tensor of another size than the state it was given (`input` and `output` are the shapes).
 *
 * @category errors
 */
export class StateSizeChanged extends Schema.TaggedError<StateSizeChanged>()("StateSizeChanged", {
  solver: Schema.String,
  input: Schema.Array(Schema.Number),
  output: Schema.Array(Schema.Number),
  message: Schema.String
}) {}

// ---------------------------------------------------------------------------------------------------------------
// Solvers
// ---------------------------------------------------------------------------------------------------------------

// per-call options may carry a solver's own keys (e.g. a whole AndersonOptions); anything else is a typo
const resolve = optionResolver(
  Object.keys(SolveOptions.fields) as ReadonlyArray<keyof SolveOptions>,
  new Set([...Object.keys(PicardOptions.fields), ...Object.keys(AndersonOptions.fields), ...Object.keys(BroydenOptions.fields)]),
  decodeSync(SolveOptions)
)

/**
 * Frees every tensor of a result (z, trajectory, state).
 *
 * @category models
 */
export const disposeResult = (result: SolveResult): void => {
  result.z.dispose()
  result.trajectory?.forEach((t) => t.dispose())
  result.state?.dispose()
}

/** The typed error a finished solve fails `solve` with, if any. */
const failure = (s: SolveStats, options: SolveOptions): NotConverged | Diverged | SingularSystem | undefined => {
  const f = failureOf(s, options)
  if (f === undefined) return undefined
  switch (f._tag) {
    case "NotConverged":
      return new NotConverged(f)
    case "Diverged":
      return new Diverged(f)
    case "SingularSystem":
      return new SingularSystem(f)
  }
}

/** The errors `run` throws on purpose; `solve` fails with them, anything else is a defect. */
const isSolveInputError = (e: unknown): e is ConfigError | StateSizeChanged =>
  e instanceof ConfigError || e instanceof StateSizeChanged

/**
 * Builds a Solver value from a run function: `solve` runs it, frees the result at once on failure, and otherwise
 * ties the tensors to the Scope.
 */
const fromRun = (name: string, options: SolveOptions, run: Solver["Service"]["run"]): Solver["Service"] =>
  Solver.of({
    name,
    options,
    run,
    solve: (f, z0, override, state) =>
      Effect.suspend((): Effect.Effect<SolveResult, SolveError, Scope.Scope> => {
        let result: SolveResult
        let resolved: SolveOptions
        try {
          resolved = resolve(options, override)
          result = run(f, z0, override, state)
        } catch (e) {
          if (isSolveInputError(e)) return Effect.fail(e)
          throw e
        }
        const error = failure(result.stats, resolved)
        if (error !== undefined) {
          disposeResult(result)
          return Effect.fail(error)
        }
        // z and the trajectory through `own`; the state has its own dispose
        const tensors: Array<tf.Tensor> = [result.z, ...(result.trajectory ?? [])]
        return own(tensors).pipe(
          Effect.andThen(Effect.addFinalizer(() => Effect.sync(() => result.state?.dispose()))),
          Effect.as(result)
        )
      })
  })

const fromMethod = (method: Method, options: SolveOptions): Solver["Service"] =>
  fromRun(method.name, options, (f, z0, override, state) => {
    const o = resolve(options, override)
    try {
      return runCore(method, f, z0, o, state) as SolveResult
    } catch (e) {
      if (!(e instanceof StateSizeError)) throw e
      throw new StateSizeChanged({
        solver: method.name,
        input: e.input,
        output: e.output,
        message: `${method.name}: the fixed-point map changed the state size: input [${e.input}], output [${e.output}]`
      })
    }
  })

/**
 * Damped fixed-point iteration as a plain value (no Layer); a bad option is a ConfigError naming it.
 *
 * @category constructors
 */
export const makePicard = (options?: PicardOptionsInput): Effect.Effect<Solver["Service"], ConfigError> =>
  Effect.map(decode(PicardOptions, "picard")(options ?? {}), (o) => fromMethod(picardMethod(o.tau), o))

/**
 * Anderson acceleration as a plain value (no Layer); a bad option is a ConfigError naming it.
 *
 * @category constructors
 */
export const makeAnderson = (options?: AndersonOptionsInput): Effect.Effect<Solver["Service"], ConfigError> =>
  Effect.map(
    decode(AndersonOptions, "anderson")(options ?? {}),
    (o) => fromMethod(andersonMethod(o.m, o.lambda, o.beta), o)
  )

/**
 * Broyden's method as a plain value (no Layer); a bad option is a ConfigError naming it.
 *
 * @category constructors
 */
export const makeBroyden = (options?: BroydenOptionsInput): Effect.Effect<Solver["Service"], ConfigError> =>
  Effect.map(decode(BroydenOptions, "broyden")(options ?? {}), (o) => fromMethod(broydenMethod(o.memory), o))

/**
 * {@link makePicard} for code outside an Effect (tests, scripts, benchmarks); throws the ConfigError.
 *
 * @category constructors
 */
export const makePicardSync = (options?: PicardOptionsInput): Solver["Service"] => Effect.runSync(makePicard(options))

/**
 * {@link makeAnderson} for code outside an Effect (tests, scripts, benchmarks); throws the ConfigError.
 *
 * @category constructors
 */
export const makeAndersonSync = (options?: AndersonOptionsInput): Solver["Service"] =>
  Effect.runSync(makeAnderson(options))

/**
 * {@link makeBroyden} for code outside an Effect (tests, scripts, benchmarks); throws the ConfigError.
 *
 * @category constructors
 */
export const makeBroydenSync = (options?: BroydenOptionsInput): Solver["Service"] =>
  Effect.runSync(makeBroyden(options))

/**
 * A solver that runs the given solvers in order from the same z0 until one converges. If none does, it returns
 * the best attempt (by status, then residual) and reports every attempt in `stats.attempts`; `solve` then fails
 * as that attempt would. A passed state goes to every attempt (methods ignore a state of another kind).
 *
 * @category combinators
 */
export const fallback = (first: Solver["Service"], ...rest: ReadonlyArray<Solver["Service"]>): Solver["Service"] => {
  const solvers = [first, ...rest]
  return fromRun(`fallback(${solvers.map((s) => s.name).join(", ")})`, first.options, (f, z0, override, state) =>
    runFallback(
      solvers.map((solver) => ({
        run: () => solver.run(f, z0, override, state),
        stopMode: override?.stopMode ?? solver.options.stopMode
      })),
      disposeResult
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Broyden state
// ---------------------------------------------------------------------------------------------------------------

/**
 * Redoes the last rank-1 pair of a Broyden memory so that it matches a new map ("lifting the orbit", docs/method.md,
 * "Input entropy reduction"): `gNew = F_new(z) - z` at the point z the next solve starts from. Returns a new state (the
 * caller owns both the old and the new one).
 *
 * @category broyden
 */
export const liftBroyden = (state: SolverState, gNew: tf.Tensor): BroydenState => {
  if (state._tag !== "BroydenState") throw new TypeError(`liftBroyden: expected a BroydenState, got ${state._tag}`)
  return liftBroydenState(state as BroydenState, gNew)
}

// ---------------------------------------------------------------------------------------------------------------
// Gradients
// ---------------------------------------------------------------------------------------------------------------

/**
 * How gradients flow through an equilibrium.
 * - Implicit: implicit function theorem; the backward fixed point g = v + J^T g is solved with its own budget.
 * - Phantom: k damped steps z <- (1 - tau) z + tau f(z) on the tape from z* (k = 1, tau = 1 is JFB).
 * - Unrolled: differentiate through n plain steps from z0 (no solver).
 *
 * @category models
 */
export type Backward =
  | {
    readonly _tag: "Implicit"
    readonly maxIter: number
    readonly tol: number
    readonly solver: SolverName
    /** stop mode of the backward solve (default "rel") */
    readonly stopMode?: "abs" | "rel"
    /** Broyden's memory (rank-1 pairs) in the backward solve (default 30, as the Broyden solver) */ readonly memory?: number
    /** receives the statistics of every backward solve (TorchDEQ's backward_writer) */
    readonly onStats?: (stats: SolveStats) => void
  }
  | { readonly _tag: "Phantom"; readonly k: number; readonly tau: number }
  | { readonly _tag: "Unrolled"; readonly n: number }

/**
 * Constructors of {@link Backward} modes.
 *
 * @category constructors
 */
export const Backward = {
  /**
   * Implicit gradient: the adjoint fixed point solved with `solver` (default anderson), `maxIter` (default 30)
   * and relative `tol` (default 1e-5); `memory` sizes Broyden's memory (default 30).
   */
  implicit: (
    options: {
      readonly maxIter?: number
      readonly tol?: number
      readonly solver?: SolverName
      readonly stopMode?: "abs" | "rel"
      readonly memory?: number
      readonly onStats?: (stats: SolveStats) => void
    } = {}
  ): Backward => ({
    _tag: "Implicit",
    maxIter: options.maxIter ?? 30,
    tol: options.tol ?? 1e-5,
    solver: options.solver ?? "anderson",
    ...(options.stopMode !== undefined ? { stopMode: options.stopMode } : {}),
    ...(options.memory !== undefined ? { memory: options.memory } : {}),
    ...(options.onStats !== undefined ? { onStats: options.onStats } : {})
  }),
  /** Phantom gradient: k damped steps from z* (default tau 0.5); k = 1, tau = 1 is JFB. The paper's tail (f, then
   * 5 damped steps) is `Dynamics.paperTail`, which starts with an undamped step. */
  phantom: (k: number, tau = 0.5): Backward => ({ _tag: "Phantom", k, tau }),
  /** Unrolled: differentiate through n plain steps from z0. */
  unrolled: (n: number): Backward => ({ _tag: "Unrolled", n })
} as const

/**
 * Makes the equilibrium differentiable: given the solved z* (off the tape), returns a tensor equal to (or, for
 * phantom, close to) z* whose gradient w.r.t. everything f closes over follows `backward`. Call it inside
 * `tf.grad` / `tf.variableGrads`. For Unrolled, z* is ignored and z0 is used.
 *
 * @category gradients
 */
export const attach = (f: FixedPointMap, zStar: tf.Tensor, backward: Backward, z0?: tf.Tensor): tf.Tensor =>
  attachBackward(f, zStar, backward, z0)

/**
 * A handle on the same values that no gradient flows through (tfjs has no stopGradient op): the copy is made with
 * the tape off, so it is a leaf of any enclosing `tf.grad`.
 *
 * @category gradients
 */
export const detach = (z: tf.Tensor): tf.Tensor => detachTensor(z)

