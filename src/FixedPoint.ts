/**
 * Fixed-point solvers and gradients through the equilibrium.
 *
 * A solver finds z* = f(z*) for a batch of independent samples. `run` is plain synchronous tfjs (usable inside a
 * tidy, a training step or a gradient function; it never records on the tape); `solve` is the Effect seam that
 * owns the result in the Scope and turns a failed status into a typed error. `attach` then makes z* differentiable
 * with an implicit, phantom or unrolled backward pass.
 *
 * @example
 * ```ts
 * import * as FixedPoint from "effect-deq/FixedPoint"
 *
 * const solver = FixedPoint.makeAnderson({ m: 5, maxIter: 40, tol: 1e-4 })
 * const grads = tf.variableGrads(() => {
 *   const f = (z: tf.Tensor) => tf.tanh(tf.add(tf.matMul(z, W), u))
 *   const { z } = solver.run(f, tf.zeros([B, H]))
 *   const zStar = FixedPoint.attach(f, z, FixedPoint.Backward.implicit())
 *   return loss(zStar)
 * })
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Schema, Scope } from "effect"
import { decodeSync, defaulted } from "./Config.ts"
import { ConfigError } from "./Errors.ts"
import { andersonMethod } from "./internal/fixedPoint/anderson.ts"
import { attachImplicit, attachPhantom, attachUnrolled, detach as detachTensor } from "./internal/fixedPoint/backward.ts"
import { broydenMethod, liftBroydenState, type BroydenStateData } from "./internal/fixedPoint/broyden.ts"
import { picardMethod } from "./internal/fixedPoint/picard.ts"
import { runCore, type CoreOptions, type CoreStats, type Method } from "./internal/fixedPoint/iteration.ts"
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
  maxIter: defaulted(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)), 30),
  tol: defaulted(Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)), 1e-4),
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
  m: defaulted(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1), Schema.isLessThanOrEqualTo(64)), 5),
  /**
   * ridge added to the Gram matrix, relative to its scale (lambda * max_i ||G_i||^2; TorchDEQ adds an absolute
   * lambda, which stalls near small tolerances). 0 allows exactly singular systems.
   */
  lambda: defaulted(Schema.Number.check(Schema.isGreaterThanOrEqualTo(0)), 1e-4),
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
  memory: defaulted(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1), Schema.isLessThanOrEqualTo(256)), 30)
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
 * - `steps`: iterates computed after z0 (each costs one f evaluation, plus one for f(z0)).
 * - `stepsPerSample`: with `stopping: "sample"`, the step at which each sample froze; with "batch", `steps`.
 * - `absResidual` / `relResidual`: ||f(z) - z|| and ||f(z) - z|| / ||f(z)|| of the returned iterate, per sample.
 * - `converged`: 1 where the returned iterate meets `tol` on its own (per-sample criterion).
 * - `absTrace` / `relTrace`: per-sample residuals of z_1..z_n; `globalAbsTrace` / `globalRelTrace`: the
 *   batch-wide ones (norms over the whole batch, the paper's stopping quantity).
 *
 * @category models
 */
export interface SolveStats extends CoreStats {
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
 * Broyden's exported memory: inverse Jacobian of g(z) = f(z) - z approximated as -I + sum_i u_i v_i^T, with U, V of
 * shape [B, k, N] (k <= memory, flattened state), the number of steps taken so far, the slot of the last rank-1 pair,
 * and the last secant pair (dz, dg) with g at the last iterate (all [B, N]), as input entropy reduction needs
 * (docs/method.md, "Input entropy reduction").
 *
 * @category models
 */
export interface BroydenState extends SolverState, BroydenStateData {
  readonly _tag: "BroydenState"
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
}>()("effect-deq/Solver") {
  /**
   * Damped fixed-point iteration; a bad option is a ConfigError naming it.
   */
  static picard(options?: PicardOptionsInput): Layer.Layer<Solver, ConfigError> {
    return Layer.effect(Solver, Effect.try({ try: () => makePicard(options), catch: (e) => e as ConfigError }))
  }
  /**
   * Anderson acceleration; a bad option is a ConfigError naming it.
   */
  static anderson(options?: AndersonOptionsInput): Layer.Layer<Solver, ConfigError> {
    return Layer.effect(Solver, Effect.try({ try: () => makeAnderson(options), catch: (e) => e as ConfigError }))
  }
  /**
   * Broyden's method; a bad option is a ConfigError naming it.
   */
  static broyden(options?: BroydenOptionsInput): Layer.Layer<Solver, ConfigError> {
    return Layer.effect(Solver, Effect.try({ try: () => makeBroyden(options), catch: (e) => e as ConfigError }))
  }
  /**
   * Tries each solver in turn until one converges (see {@link fallback}).
   */
  static fallback(...solvers: ReadonlyArray<Solver["Service"]>): Layer.Layer<Solver> {
    return Layer.succeed(Solver, fallback(...solvers))
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

// ---------------------------------------------------------------------------------------------------------------
// Solvers
// ---------------------------------------------------------------------------------------------------------------

const solveKeys = [
  "maxIter",
  "tol",
  "stopMode",
  "returnMode",
  "stopping",
  "recordTrajectory",
  "onNotConverged",
  "returnState"
] as const

// per-call options may carry a solver's own keys (e.g. a whole AndersonOptions); anything else is a typo
const solverKeys = new Set<string>([...solveKeys, "tau", "m", "lambda", "beta", "memory"])

const pickSolveOptions = (o: SolveOptions, override?: Partial<SolveOptions>): SolveOptions => {
  const base: Record<string, unknown> = {}
  for (const k of solveKeys) base[k] = o[k]
  if (override !== undefined) {
    for (const k of Object.keys(override)) {
      if (!solverKeys.has(k)) {
        throw new ConfigError({ path: k, message: `unknown solve option "${k}"; valid: ${solveKeys.join(", ")}` })
      }
    }
    for (const k of solveKeys) if (override[k] !== undefined) base[k] = override[k]
  }
  return new SolveOptions(base as any)
}

const toCore = (o: SolveOptions): CoreOptions => ({
  maxIter: o.maxIter,
  tol: o.tol,
  stopMode: o.stopMode,
  returnMode: o.returnMode,
  stopping: o.stopping,
  recordTrajectory: o.recordTrajectory,
  returnState: o.returnState
})

/** Frees every tensor of a result (z, trajectory, state). */
export const disposeResult = (result: SolveResult): void => {
  result.z.dispose()
  result.trajectory?.forEach((t) => t.dispose())
  result.state?.dispose()
}

const globalCriterion = (stats: SolveStats, stopMode: "abs" | "rel"): number => {
  if (stats.returnedStep === 0) return Infinity
  const trace = stopMode === "abs" ? stats.globalAbsTrace : stats.globalRelTrace
  return trace[stats.returnedStep - 1] ?? Infinity
}

const failure = (
  result: SolveResult,
  options: SolveOptions
): NotConverged | Diverged | SingularSystem | undefined => {
  const s = result.stats
  switch (s.status) {
    case "converged":
      return undefined
    case "diverged":
      return new Diverged({
        solver: s.solver,
        step: s.failedStep ?? s.steps,
        message: `${s.solver}: ${s.message ?? "the iteration produced NaN or Inf"}`,
        stats: s
      })
    case "singular":
      return new SingularSystem({
        solver: s.solver,
        step: s.failedStep ?? s.steps,
        message: `${s.solver}: ${s.message ?? "singular least-squares system"}`,
        stats: s
      })
    case "maxIter": {
      if (options.onNotConverged !== "fail") return undefined
      const abs = Math.sqrt(s.absResidual.reduce((a, x) => a + x * x, 0))
      const rel = globalCriterion(s, "rel")
      return new NotConverged({
        solver: s.solver,
        steps: s.steps,
        relResidual: rel,
        absResidual: abs,
        tol: options.tol,
        message: `${s.solver} did not reach ${options.stopMode} tol ${options.tol} in ${s.steps} steps ` +
          `(rel ${rel.toExponential(2)}, abs ${abs.toExponential(2)})`,
        stats: s
      })
    }
  }
}

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
      Effect.suspend(() => {
        const result = run(f, z0, override, state)
        const error = failure(result, pickSolveOptions(options, override))
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
    const o = pickSolveOptions(options, override)
    return runCore(method, f, z0, toCore(o), state) as SolveResult
  })

/**
 * Damped fixed-point iteration as a plain value (no Layer). Throws a ConfigError on a bad option.
 *
 * @category constructors
 */
export const makePicard = (options?: PicardOptionsInput): Solver["Service"] => {
  const o = decodeSync(PicardOptions, "picard")(options ?? {})
  return fromMethod(picardMethod(o.tau), o)
}

/**
 * Anderson acceleration as a plain value (no Layer). Throws a ConfigError on a bad option.
 *
 * @category constructors
 */
export const makeAnderson = (options?: AndersonOptionsInput): Solver["Service"] => {
  const o = decodeSync(AndersonOptions, "anderson")(options ?? {})
  return fromMethod(andersonMethod(o.m, o.lambda, o.beta), o)
}

/**
 * Broyden's method as a plain value (no Layer). Throws a ConfigError on a bad option.
 *
 * @category constructors
 */
export const makeBroyden = (options?: BroydenOptionsInput): Solver["Service"] => {
  const o = decodeSync(BroydenOptions, "broyden")(options ?? {})
  return fromMethod(broydenMethod(o.memory), o)
}

const rank: Record<SolveStats["status"], number> = { converged: 3, maxIter: 2, singular: 1, diverged: 0 }

/**
 * A solver that runs `solvers` in order from the same z0 until one converges. If none does, it returns the best
 * attempt (by status, then residual) and reports every attempt in `stats.attempts`; `solve` then fails as that
 * attempt would. A passed state goes to every attempt (methods ignore a state of another kind).
 *
 * @category combinators
 */
export const fallback = (...solvers: ReadonlyArray<Solver["Service"]>): Solver["Service"] => {
  if (solvers.length === 0) throw new Error("fallback needs at least one solver")
  const first = solvers[0]!
  return fromRun(`fallback(${solvers.map((s) => s.name).join(", ")})`, first.options, (f, z0, override, state) => {
    const attempts: Array<{ solver: string; status: SolveStats["status"]; steps: number }> = []
    let kept: SolveResult | undefined
    for (const solver of solvers) {
      const result = solver.run(f, z0, override, state)
      attempts.push({ solver: result.stats.solver, status: result.stats.status, steps: result.stats.steps })
      const mode = pickSolveOptions(solver.options, override).stopMode
      const better = kept === undefined ||
        rank[result.stats.status] > rank[kept.stats.status] ||
        (rank[result.stats.status] === rank[kept.stats.status] &&
          globalCriterion(result.stats, mode) < globalCriterion(kept.stats, mode))
      if (better) {
        if (kept !== undefined) disposeResult(kept)
        kept = result
      } else disposeResult(result)
      if (result.stats.status === "converged") break
    }
    return { ...kept!, stats: { ...kept!.stats, attempts } }
  })
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
  if (state._tag !== "BroydenState") throw new Error(`liftBroyden: expected a BroydenState, got ${state._tag}`)
  return liftBroydenState(state as BroydenState, gNew) as BroydenState
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
    readonly solver: "picard" | "anderson" | "broyden"
    /** stop mode of the backward solve (default "rel") */
    readonly stopMode?: "abs" | "rel"
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
   * and relative `tol` (default 1e-5).
   */
  implicit: (
    options: {
      readonly maxIter?: number
      readonly tol?: number
      readonly solver?: "picard" | "anderson" | "broyden"
      readonly stopMode?: "abs" | "rel"
      readonly onStats?: (stats: SolveStats) => void
    } = {}
  ): Backward => ({
    _tag: "Implicit",
    maxIter: options.maxIter ?? 30,
    tol: options.tol ?? 1e-5,
    solver: options.solver ?? "anderson",
    ...(options.stopMode !== undefined ? { stopMode: options.stopMode } : {}),
    ...(options.onStats !== undefined ? { onStats: options.onStats } : {})
  }),
  /** Phantom gradient: k damped steps from z* (default tau 0.5); k = 1, tau = 1 is JFB. The paper's tail (f, then
   * 5 damped steps) is `Dynamics.paperTail`, which starts with an undamped step. */
  phantom: (k: number, tau = 0.5): Backward => ({ _tag: "Phantom", k, tau }),
  /** Unrolled: differentiate through n plain steps from z0. */
  unrolled: (n: number): Backward => ({ _tag: "Unrolled", n })
} as const

const backwardMethod = (solver: "picard" | "anderson" | "broyden", maxIter: number): Method => {
  switch (solver) {
    case "picard":
      return picardMethod(1)
    case "anderson":
      return andersonMethod(5, 1e-4, 1)
    case "broyden":
      return broydenMethod(maxIter)
  }
}

/**
 * Makes the equilibrium differentiable: given the solved z* (off the tape), returns a tensor equal to (or, for
 * phantom, close to) z* whose gradient w.r.t. everything f closes over follows `backward`. Call it inside
 * `tf.grad` / `tf.variableGrads`. For Unrolled, z* is ignored and z0 is used.
 *
 * @category gradients
 */
export const attach = (f: FixedPointMap, zStar: tf.Tensor, backward: Backward, z0?: tf.Tensor): tf.Tensor => {
  switch (backward._tag) {
    case "Implicit":
      return attachImplicit(f, zStar, {
        method: backwardMethod(backward.solver, backward.maxIter),
        options: {
          maxIter: backward.maxIter,
          tol: backward.tol,
          stopMode: backward.stopMode ?? "rel",
          returnMode: "best",
          stopping: "batch",
          recordTrajectory: false,
          returnState: false
        },
        ...(backward.onStats !== undefined ? { onStats: backward.onStats as (s: unknown) => void } : {})
      })
    case "Phantom":
      return attachPhantom(f, zStar, backward.k, backward.tau)
    case "Unrolled":
      return attachUnrolled(f, zStar, backward.n, z0)
  }
}

/**
 * A handle on the same values that no gradient flows through (tfjs has no stopGradient op): the copy is made with
 * the tape off, so it is a leaf of any enclosing `tf.grad`.
 *
 * @category gradients
 */
export const detach = (z: tf.Tensor): tf.Tensor => detachTensor(z)

export type { Layer }
