/**
 * A deep equilibrium model as a dynamical system: a model (injection, cell, head) plus a solver, a gradient mode
 * and solve options. Read out the equilibrium, an intermediate state z_n, an ensemble of states or a random state
 * (Yang et al., ICML 2023, Sec. 3.3), and observe the whole trajectory: per state its predictions, prediction
 * entropy and relative residual.
 *
 * Every read-out solves **off the tape** (`untaped`, so memory does not grow with iterations even inside
 * `tf.grad`) and then attaches a gradient tail on the tape. The injection u = inject(x) is computed once per call.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Dynamics from "effect-deq/Dynamics"
 * import { Solver } from "effect-deq/FixedPoint"
 * import * as Models from "effect-deq/Models"
 * import { stream, tf } from "effect-deq/Tensor"
 *
 * declare const x: tf.Tensor4D // [B, 28, 28, 1] images in [0, 1]
 * declare const y: tf.Tensor2D // [B, 10] one-hot labels
 *
 * const program = Effect.gen(function*() {
 *   const model = yield* Models.fc({ hidden: 64 }, { seed: 1 })
 *   const deq = yield* Dynamics.make(model, { backward: Dynamics.unroll(5, 0.5), solve: { maxIter: 8 } })
 *   // a training loss at a random intermediate state z_n, n ~ U{1..8}
 *   const { grads } = tf.variableGrads(() =>
 *     tf.losses.softmaxCrossEntropy(y, Dynamics.logits(deq, x, Dynamics.readOut.randomState(8), { stream: stream(7) }))
 *   )
 *   tf.dispose(grads)
 *   // the dynamics: per state z_1..z_8, accuracy, mean entropy and relative residual
 *   const traj = Dynamics.trajectory(deq, x, y)
 *   yield* Effect.log(traj.states.map((s) => [s.accuracy, s.meanEntropy, s.meanRelResidual]))
 * }).pipe(Effect.scoped, Effect.provide(Solver.picard({ maxIter: 8 })))
 * ```
 *
 * @since 0.1.0
 */
import { Effect, type Scope } from "effect"
import { attach, type Backward, type FixedPointMap, type Linearization, Solver, type SolveOptions, type SolveStats } from "./FixedPoint.ts"
import { entropyOf, labelsOf, measure, reportsOf } from "./internal/dynamics/trajectory.ts"
import { acquire, type Stream, tf, untaped } from "./Tensor.ts"

// ---------------------------------------------------------------------------------------------------------------
// The model contract
// ---------------------------------------------------------------------------------------------------------------

/**
 * Per-forward-call context of a cell: what is computed once per call and reused by every application of f
 * (solver iterations and gradient tail alike). Tensors belong to the caller's tidy.
 *
 * @category models
 */
export interface CellContext {
  /** variational dropout masks, one per branch, broadcastable against the activation they scale */
  readonly dropoutMask?: ReadonlyArray<tf.Tensor>
  /** effective filters computed once per call (weight norm: w = g v / ||v||), keyed by the conv's name */
  readonly weights?: Readonly<Record<string, tf.Tensor>>
}

/**
 * A named trainable variable (the name is stable and unique: it is the checkpoint key).
 *
 * @category models
 */
export interface Param {
  readonly name: string
  readonly variable: tf.Variable
}

/**
 * What a DEQ needs from a model (see `Models.Model`). All functions are plain synchronous tfjs; the caller owns
 * the returned tensors.
 *
 * @category models
 */
export interface DeqModel {
  readonly params: ReadonlyArray<Param>
  readonly parameterCount: number
  /** u = inj(x): computed once per solve (hoisted out of the iterations) */
  readonly inject: (x: tf.Tensor4D) => tf.Tensor
  /** f(z, u) */
  readonly cell: (z: tf.Tensor, u: tf.Tensor, ctx?: CellContext) => tf.Tensor
  /** logits h(z) */
  readonly head: (z: tf.Tensor) => tf.Tensor2D
  /** z0: zeros of the state shape */
  readonly initState: (u: tf.Tensor) => tf.Tensor
  /** the per-call context (precomputed weights; dropout masks when a dropout seed is given) */
  readonly prepare?: (options: { readonly batch: number; readonly dropoutSeed?: number }) => CellContext
  /** variational dropout masks for a batch, one draw per forward call */
  readonly dropoutMask?: (batch: number, seed: number) => ReadonlyArray<tf.Tensor>
  /** J^T of f at z without re-running f (optional; autodiff otherwise) */
  readonly linearize?: (z: tf.Tensor, u: tf.Tensor, ctx?: CellContext) => Linearization
}

// ---------------------------------------------------------------------------------------------------------------
// Gradient tails
// ---------------------------------------------------------------------------------------------------------------

/**
 * The unrolled read-out of Yang et al. (ICML 2023 Eq. (11); NeurIPS 2022 Sec. 4.2): from a state z (a constant),
 * `new = f(z)`, then `k` steps `new = (1 - lambda) new + lambda f(new)`, and the head reads `new`. The gradient
 * flows through these k + 1 applications of f only. `unroll(5, 0.5)` is the training tail of the random
 * intermediate states method; lambda = 1 / 0.5 are the attacks' "F" / "M" variants.
 *
 * @category models
 */
export interface Unroll {
  readonly _tag: "Unroll"
  readonly k: number
  readonly lambda: number
}

/**
 * How gradients reach x and the parameters from a read-out state: a FixedPoint {@link Backward} (attached with
 * `attach`; its value is z itself for Implicit) or an {@link Unroll} tail (its value is the unrolled state).
 *
 * @category models
 */
export type Gradient = Backward | Unroll

/**
 * An {@link Unroll} tail.
 *
 * @category constructors
 */
export const unroll = (k: number, lambda: number): Unroll => ({ _tag: "Unroll", k, lambda })

/**
 * The tail the random-intermediate-states training uses (docs/method.md, "Training"): f, then 5 damped steps with
 * lambda 0.5.
 *
 * @category constructors
 */
export const paperTail: Unroll = unroll(5, 0.5)

// ---------------------------------------------------------------------------------------------------------------
// Deq
// ---------------------------------------------------------------------------------------------------------------

/**
 * A DEQ: a model, the solver that finds its states, the default gradient mode, and solve options that override
 * the solver's own.
 *
 * @category models
 */
export interface Deq<M extends DeqModel = DeqModel> {
  readonly model: M
  readonly solver: Solver["Service"]
  readonly backward: Gradient
  readonly solveOptions: Partial<SolveOptions>
}

/**
 * Builds a {@link Deq} with the {@link Solver} from the context. The default gradient mode is {@link paperTail}.
 *
 * @category constructors
 */
export const make = <M extends DeqModel>(
  model: M,
  options: { readonly backward?: Gradient; readonly solve?: Partial<SolveOptions> } = {}
): Effect.Effect<Deq<M>, never, Solver> =>
  Effect.gen(function*() {
    return makeWith(model, yield* Solver, options)
  })

/**
 * Builds a {@link Deq} from an explicit solver value (scripts, tests).
 *
 * @category constructors
 */
export const makeWith = <M extends DeqModel>(
  model: M,
  solver: Solver["Service"],
  options: { readonly backward?: Gradient; readonly solve?: Partial<SolveOptions> } = {}
): Deq<M> => ({ model, solver, backward: options.backward ?? paperTail, solveOptions: options.solve ?? {} })

// ---------------------------------------------------------------------------------------------------------------
// Read-outs
// ---------------------------------------------------------------------------------------------------------------

/**
 * Which state the logits are read from.
 * - Final: solve with the deq's options (tolerance and budget), then attach the deq's gradient.
 * - State(n): exactly n solver steps (maxIter n, tol 0, returnMode "last"), then the tail.
 * - Ensemble(from, to): one solve of `to` steps; the mean of the tail logits of states from..to.
 * - RandomState(max): n ~ U{1..max} drawn per call from `options.stream`, shared by the batch (docs/method.md,
 *   "Training"), or one n per sample with `perSample`; then as State(n).
 *
 * @category models
 */
export type ReadOut =
  | { readonly _tag: "Final" }
  | { readonly _tag: "State"; readonly n: number }
  | { readonly _tag: "Ensemble"; readonly from: number; readonly to: number }
  | { readonly _tag: "RandomState"; readonly max: number; readonly perSample?: boolean }

/**
 * Constructors of {@link ReadOut}.
 *
 * @category constructors
 */
export const readOut = {
  final: { _tag: "Final" } as ReadOut,
  state: (n: number): ReadOut => ({ _tag: "State", n }),
  ensemble: (from: number, to: number): ReadOut => ({ _tag: "Ensemble", from, to }),
  randomState: (max: number, options: { readonly perSample?: boolean } = {}): ReadOut => ({
    _tag: "RandomState",
    max,
    ...(options.perSample === true ? { perSample: true } : {})
  })
} as const

/**
 * Options of one read-out call.
 *
 * @category models
 */
export interface LogitsOptions {
  /** the random source of RandomState draws (required for RandomState) */
  readonly stream?: Stream
  /** draw variational dropout masks from this seed (training); no dropout when absent */
  readonly dropoutSeed?: number
  /** the gradient tail of State / Ensemble / RandomState read-outs (default: the deq's gradient) */
  readonly tail?: Gradient
  /** told which state(s) a RandomState call drew: one n, or one per sample */
  readonly onDraw?: (n: number | Int32Array) => void
  /** told the statistics of the forward solve (not called for Final with an Unrolled gradient: no solve) */
  readonly onStats?: (stats: SolveStats) => void
}

const positiveInt = (n: number, what: string): number => {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`effect-deq Dynamics: ${what} must be an integer >= 1, got ${n}`)
  return n
}

/**
 * The f of one forward call: f(z) = cell(z, u, ctx), with the model's linearisation passed through.
 *
 * @category models
 */
export const mapOf = (model: DeqModel, u: tf.Tensor, ctx?: CellContext): FixedPointMap => {
  const f = (z: tf.Tensor) => model.cell(z, u, ctx)
  const lin = model.linearize
  return lin === undefined ? f : Object.assign(f, { linearize: (z: tf.Tensor) => lin(z, u, ctx) })
}

/**
 * Applies a gradient mode from state z: FixedPoint's `attach` for a Backward, the damped unroll for an Unroll.
 *
 * @category gradients
 */
export const applyGradient = (f: FixedPointMap, z: tf.Tensor, gradient: Gradient, z0: tf.Tensor): tf.Tensor => {
  if (gradient._tag !== "Unroll") return attach(f, z, gradient, z0)
  return tf.tidy(() => {
    const lambda = gradient.lambda
    // z comes from an off-tape solve, so it is already a constant for the surrounding gradient
    let next = f(z)
    for (let i = 0; i < gradient.k; i++) {
      const fz = f(next)
      next = lambda === 1 ? fz : tf.add(tf.mul(next, 1 - lambda), tf.mul(fz, lambda))
    }
    return next
  })
}

/**
 * The solve options of exactly `n` solver steps on top of the deq's own: tol 0, the last iterate, never a
 * NotConverged failure. `trajectory` keeps z_1..z_n; `state` returns the solver's resumable memory.
 *
 * @category read-outs
 */
export const exactSteps = (
  deq: Deq,
  n: number,
  options: { readonly trajectory?: boolean; readonly state?: boolean } = {}
): Partial<SolveOptions> => ({
  ...deq.solveOptions,
  maxIter: n,
  tol: 0,
  returnMode: "last",
  recordTrajectory: options.trajectory === true,
  ...(options.state === true ? { returnState: true } : {}),
  onNotConverged: "return"
})

/**
 * The deq's step budget N: its own `maxIter`, else its solver's.
 *
 * @category read-outs
 */
export const budget = (deq: Deq): number => deq.solveOptions.maxIter ?? deq.solver.options.maxIter

/**
 * The per-call context of a model for a batch: its `prepare` (precomputed weights; dropout masks when
 * `dropoutSeed` is given), else dropout masks alone, else none. Tensors belong to the caller's tidy.
 *
 * @category models
 */
export const contextOf = (model: DeqModel, batch: number, dropoutSeed?: number): CellContext | undefined =>
  model.prepare !== undefined ?
    model.prepare(dropoutSeed === undefined ? { batch } : { batch, dropoutSeed }) :
    dropoutSeed !== undefined && model.dropoutMask !== undefined ?
    { dropoutMask: model.dropoutMask(batch, dropoutSeed) } :
    undefined

/**
 * What one forward call of a DEQ prepares: the map f (cell with u = inject(x) and the per-call context) and z_0.
 *
 * @category models
 */
export interface Prepared {
  readonly f: FixedPointMap
  readonly z0: tf.Tensor
}

/**
 * Context, injection (computed once), f and z_0 of one forward call; tensors belong to the caller's tidy.
 * (FixedPoint's implicit hook prepares its VJP while attaching, so f is never re-run after this call's tidy has
 * freed u and the context.)
 *
 * @category models
 */
export const prepare = (deq: Deq, x: tf.Tensor4D, dropoutSeed?: number): Prepared => {
  const model = deq.model
  const u = model.inject(x)
  const z0 = untaped(() => model.initState(u))
  return { f: mapOf(model, u, contextOf(model, x.shape[0], dropoutSeed)), z0 }
}

/** runs the solver off the tape; trajectory tensors stay with the caller's tidy */
const solveOffTape = (deq: Deq, p: Prepared, options: Partial<SolveOptions>, onStats?: (stats: SolveStats) => void) =>
  untaped(() => {
    const r = deq.solver.run(p.f, p.z0, options)
    r.state?.dispose()
    onStats?.(r.stats)
    return r
  })

/**
 * Resolves a batch-wide RandomState read-out into a State read-out by drawing n ~ U{1..max} from `stream` (other
 * read-outs, per-sample RandomState included, are returned unchanged). Use it to log the drawn state before
 * calling {@link logits}.
 *
 * @category read-outs
 */
export const draw = (r: ReadOut, stream: Stream): ReadOut =>
  r._tag === "RandomState" && r.perSample !== true ? readOut.state(stream.int(1, positiveInt(r.max, "RandomState.max"))) : r

/**
 * Logits of a read-out: sync, differentiable w.r.t. x and the model's variables (call it inside `tf.grad` /
 * `tf.variableGrads`), leak-free (everything but the result is freed; the caller owns the result).
 * The forward solve runs off the tape; the gradient then flows through the gradient mode only.
 *
 * @category read-outs
 */
export const logits = (deq: Deq, x: tf.Tensor4D, r: ReadOut, options: LogitsOptions = {}): tf.Tensor2D =>
  tf.tidy(() => {
    const model = deq.model
    const tail = options.tail ?? deq.backward
    const p = prepare(deq, x, options.dropoutSeed)
    const fromState = (z: tf.Tensor) => model.head(applyGradient(p.f, z, tail, p.z0))
    switch (r._tag) {
      case "Final": {
        // Unrolled differentiates through plain steps from z0: there is nothing to solve first
        const zStar = deq.backward._tag === "Unrolled" ?
          p.z0 :
          solveOffTape(deq, p, { ...deq.solveOptions, recordTrajectory: false }, options.onStats).z
        return model.head(applyGradient(p.f, zStar, deq.backward, p.z0))
      }
      case "State": {
        const n = positiveInt(r.n, "State.n")
        return fromState(solveOffTape(deq, p, exactSteps(deq, n), options.onStats).z)
      }
      case "Ensemble": {
        const from = positiveInt(r.from, "Ensemble.from"), to = positiveInt(r.to, "Ensemble.to")
        if (from > to) throw new RangeError(`effect-deq Dynamics: Ensemble.from (${from}) > Ensemble.to (${to})`)
        const states = solveOffTape(deq, p, exactSteps(deq, to, { trajectory: true }), options.onStats).trajectory ?? []
        if (states.length < to) throw new Error(`effect-deq Dynamics: the solver returned ${states.length} states, expected ${to}`)
        const all: Array<tf.Tensor2D> = []
        for (let n = from; n <= to; n++) all.push(fromState(states[n - 1]!))
        return tf.div(tf.addN(all), all.length) as tf.Tensor2D
      }
      case "RandomState": {
        const stream = options.stream
        if (stream === undefined) throw new Error("effect-deq Dynamics: a RandomState read-out needs options.stream")
        const max = positiveInt(r.max, "RandomState.max")
        if (r.perSample !== true) {
          const n = stream.int(1, max)
          options.onDraw?.(n)
          return fromState(solveOffTape(deq, p, exactSteps(deq, n), options.onStats).z)
        }
        const batch = x.shape[0]
        const ns = new Int32Array(batch)
        for (let b = 0; b < batch; b++) ns[b] = stream.int(1, max)
        options.onDraw?.(ns)
        const top = ns.reduce((a, b) => Math.max(a, b), 1)
        const states = solveOffTape(deq, p, exactSteps(deq, top, { trajectory: true }), options.onStats).trajectory ?? []
        if (states.length < top) throw new Error(`effect-deq Dynamics: the solver returned ${states.length} states, expected ${top}`)
        const picked = untaped(() => {
          const stacked = tf.stack(states.slice(0, top) as Array<tf.Tensor>) // [top, B, ...]
          const idx = tf.tensor2d(Array.from(ns, (n, b) => [n - 1, b]), [batch, 2], "int32")
          return tf.gatherND(stacked, idx)
        })
        return fromState(picked)
      }
    }
  })

/**
 * {@link logits} as an Effect whose result is owned by the current Scope.
 *
 * @category read-outs
 */
export const logitsScoped = (
  deq: Deq,
  x: tf.Tensor4D,
  r: ReadOut,
  options: LogitsOptions = {}
): Effect.Effect<tf.Tensor2D, never, Scope.Scope> => acquire(() => logits(deq, x, r, options))

// ---------------------------------------------------------------------------------------------------------------
// Trajectories
// ---------------------------------------------------------------------------------------------------------------

/**
 * What one state z_n of a trajectory predicts. Per-sample arrays have length B.
 *
 * @category models
 */
export interface StateReport {
  /** the step, 1-based: z_n after n solver steps */
  readonly n: number
  /** argmax of h(z_n) per sample */
  readonly predictions: Int32Array
  /** prediction entropy H(softmax(h(z_n))) per sample, in [0, log C] */
  readonly entropy: Float32Array
  readonly meanEntropy: number
  /** ||f(z_n) - z_n|| / (||f(z_n)|| + 1e-9) per sample */
  readonly relResidual: Float32Array
  readonly meanRelResidual: number
  /** ||f(z_n) - z_n|| per sample */
  readonly absResidual: Float32Array
  /** fraction of correct predictions, when labels were given */
  readonly accuracy?: number
  /** h(z_n), when `keepLogits` (the caller owns it) */
  readonly logits?: tf.Tensor2D
}

/**
 * The states z_1..z_N of one solve and what each predicts, with the solver's statistics.
 *
 * @category models
 */
export interface Trajectory {
  readonly states: ReadonlyArray<StateReport>
  readonly stats: SolveStats
  readonly batch: number
  readonly classes: number
}

/**
 * Options of a trajectory.
 *
 * @category models
 */
export interface TrajectoryOptions {
  /** number of solver steps N (default: the deq's maxIter, else the solver's) */
  readonly steps?: number
  /** keep each state's logits as tensors (owned by the caller; the scoped form owns them in the Scope) */
  readonly keepLogits?: boolean
  /** solve options overriding the trajectory's (default: tol 0 so all N states exist, returnMode "last") */
  readonly solve?: Partial<SolveOptions>
}

/**
 * The prediction entropy H(softmax(logits)) = -sum_c p_c log p_c of each sample of logits [B, C], in [0, log C]:
 * the quantity the trajectory reports per state and input entropy reduction lowers.
 *
 * @category trajectories
 */
export const predictionEntropy = (logits: tf.Tensor): tf.Tensor1D => entropyOf(logits)

/**
 * The trajectory view (no tape, no gradient): solves N steps from z0 = 0 recording every iterate z_1..z_N, and for each
 * state reads out h(z_n) directly (no extra application of f, docs/method.md, "Solver and states"), its per-sample
 * prediction entropy, and the relative residual ||f(z_n) - z_n|| / ||f(z_n)|| from one fresh application of f. With
 * labels `y` (int [B] or one-hot [B, C]), also the accuracy. The last state's logits equal the Final read-out's logits
 * when that read-out uses the same budget with tol 0 and returnMode "last" and a gradient whose value is z itself
 * (Implicit; Phantom/Unroll tails move the value).
 *
 * @category trajectories
 */
export const trajectory = (deq: Deq, x: tf.Tensor4D, y?: tf.Tensor, options: TrajectoryOptions = {}): Trajectory => {
  const steps = positiveInt(options.steps ?? budget(deq), "steps")
  const batch = x.shape[0]
  let stats: SolveStats | undefined
  // stats leave the tidy through a closure: tidy walks returned values, and typed arrays are slow to walk
  const measured = untaped(() =>
    tf.tidy(() => {
      const p = prepare(deq, x)
      const r = solveOffTape(deq, p, { ...exactSteps(deq, steps, { trajectory: true }), ...options.solve, recordTrajectory: true })
      stats = r.stats
      const m = measure(r.trajectory ?? [], deq.model.head, p.f, batch)
      return { entropy: m.entropy, rel: m.rel, abs: m.abs, predictions: m.predictions, logits: m.logits }
    })
  )
  const labels = y === undefined ? undefined : labelsOf(y)
  const states = reportsOf(measured, batch, labels, options.keepLogits === true)
  return { states, stats: stats!, batch, classes: measured.logits[0]?.shape[1] ?? 0 }
}

/**
 * {@link trajectory} as an Effect that keeps every state's logits, owned by the current Scope.
 *
 * @category trajectories
 */
export const trajectoryScoped = (
  deq: Deq,
  x: tf.Tensor4D,
  y?: tf.Tensor,
  options: Omit<TrajectoryOptions, "keepLogits"> = {}
): Effect.Effect<Trajectory, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => trajectory(deq, x, y, { ...options, keepLogits: true })),
    (t) => Effect.sync(() => tf.dispose(t.states.flatMap((s) => (s.logits === undefined ? [] : [s.logits]))))
  )

// ---------------------------------------------------------------------------------------------------------------
// Defences
// ---------------------------------------------------------------------------------------------------------------

/**
 * The output of a defended forward pass; the caller owns both tensors.
 *
 * @category defences
 */
export interface DefenceOutput {
  /** the defended prediction's logits (e.g. h(z_8) of the defended trajectory) */
  readonly logits: tf.Tensor2D
  /** the input the defence ended with (the purified image); equals x for defences that do not move it */
  readonly purified: tf.Tensor4D
}

/**
 * An inference-time defence: a transformation of a DEQ's forward pass that an attack can see through (input
 * entropy reduction, Regularizers). `run` is plain synchronous tfjs. Called inside `tf.grad`, its logits are
 * differentiable w.r.t. x through the whole defence (full adaptive attack); `purified` lets an attack use BPDA
 * (identity in the backward pass of the purification). Defined here so Adversary and Regularizers, which both sit
 * on Dynamics, share it without importing each other.
 *
 * @category defences
 */
export interface Defence {
  readonly name: string
  /** true when the defence draws randomness (attacks then use EOT); `seed` selects the draw */
  readonly randomized: boolean
  readonly run: (deq: Deq, x: tf.Tensor4D, options?: { readonly seed?: number }) => DefenceOutput
}
