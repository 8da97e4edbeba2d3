/**
 * Gradient sources for white-box attacks on a DEQ: what an attack differentiates through to get input gradients.
 * Each source is a differentiable surrogate of the DEQ's logits built from Dynamics (forward solves off the tape,
 * a short tail on the tape): the implicit / phantom / unrolled gradient at the read-out state, or an unrolled
 * intermediate state (Yang et al., ICML 2023 Eq. (11); NeurIPS 2022 Sec. 4.2), or the ensemble-defence attack.
 *
 * Everything here is plain synchronous tfjs; the caller owns the returned tensors (and usually wraps the call in
 * `tf.tidy` or a gradient).
 */
import * as Dynamics from "../../../Dynamics.ts"
import { Backward, type SolveStats } from "../../../FixedPoint.ts"
import { tf, untaped } from "../../../Tensor.ts"

// ---------------------------------------------------------------------------------------------------------------
// the type and its constructors
// ---------------------------------------------------------------------------------------------------------------

/** The backward solver choices of an implicit source. */
export type ImplicitSolver = "picard" | "anderson" | "broyden"

/**
 * What a white-box attack differentiates through. States are numbered as the papers number them: z_0 is the
 * initial state, z_n the state after n solver steps, z_N the read-out state of a budget of N steps.
 * - Implicit: the exact gradient (implicit function theorem) at the read-out state, FixedPoint `Backward.implicit`.
 * - Phantom: `k` damped steps (tau) from the read-out state, FixedPoint `Backward.phantom`.
 * - Unrolled: backprop through `n` plain steps from z_0 (no solver), FixedPoint `Backward.unrolled`.
 * - Unroll: f and `k` damped steps (lambda) from the read-out state, `Dynamics.unroll` (the paper's "unroll").
 * - Intermediate: z_n from n solver steps (off the tape), z^(0) = f(z_n), k damped steps, logits h(z^(k)).
 * - Ensemble: the sum of the losses of the Intermediate(n, k, lambda) surrogates for n = from..to.
 */
export type GradientSource =
  | {
    readonly _tag: "Implicit"
    readonly maxIter: number
    readonly tol: number
    readonly solver: ImplicitSolver
    readonly stopMode?: "abs" | "rel"
  }
  | { readonly _tag: "Phantom"; readonly k: number; readonly tau: number }
  | { readonly _tag: "Unrolled"; readonly n: number }
  | { readonly _tag: "Unroll"; readonly k: number; readonly lambda: number }
  | { readonly _tag: "Intermediate"; readonly n: number; readonly k: number; readonly lambda: number }
  | { readonly _tag: "Ensemble"; readonly from: number; readonly to: number; readonly k: number; readonly lambda: number }

const int = (v: number, min: number, what: string): number => {
  if (!Number.isInteger(v) || v < min) throw new RangeError(`effect-deq GradientSource: ${what} must be an integer >= ${min}, got ${v}`)
  return v
}

const damping = (v: number, what: string): number => {
  if (!(v > 0 && v <= 1)) throw new RangeError(`effect-deq GradientSource: ${what} must be in (0, 1], got ${v}`)
  return v
}

/** The exact gradient at the read-out state (defaults as FixedPoint's `Backward.implicit`). */
export const implicit = (
  options: { readonly maxIter?: number; readonly tol?: number; readonly solver?: ImplicitSolver; readonly stopMode?: "abs" | "rel" } =
    {}
): GradientSource => {
  const b = Backward.implicit(options)
  if (b._tag !== "Implicit") throw new Error("unreachable")
  return {
    _tag: "Implicit",
    maxIter: int(b.maxIter, 1, "implicit.maxIter"),
    tol: b.tol,
    solver: b.solver,
    ...(b.stopMode !== undefined ? { stopMode: b.stopMode } : {})
  }
}

/** The phantom gradient: `k` damped steps (tau, default 0.5) on the tape from the read-out state. */
export const phantom = (k: number, tau = 0.5): GradientSource => ({
  _tag: "Phantom",
  k: int(k, 0, "phantom.k"),
  tau: damping(tau, "phantom.tau")
})

/** Backprop through `n` plain steps z <- f(z) from z_0 (the forward solve is not used). */
export const unrolled = (n: number): GradientSource => ({ _tag: "Unrolled", n: int(n, 1, "unrolled.n") })

/** The paper's ready-made "unroll": f and `k` damped steps (lambda, default 0.5) from the read-out state. */
export const unroll = (k: number, lambda = 0.5): GradientSource => ({
  _tag: "Unroll",
  k: int(k, 0, "unroll.k"),
  lambda: damping(lambda, "unroll.lambda")
})

/**
 * The intermediate-state surrogate of Eq. (11): z_n after `n` solver steps (n = 0: the initial state), then
 * z^(0) = f(z_n), z^(k+1) = (1 - lambda) z^(k) + lambda f(z^(k)) for k < `k`, logits h(z^(k)). lambda 1 is the
 * paper's "F" variant, 0.5 its "M" variant. Its label is the paper's string: `intermediate(4, 5, 0.5)` starts from
 * the paper's entry 3 (`results_list[3]`, the 4th iterate) and is "Munroll-3-5".
 */
export const intermediate = (n: number, k: number, lambda = 1): GradientSource => ({
  _tag: "Intermediate",
  n: int(n, 0, "intermediate.n"),
  k: int(k, 0, "intermediate.k"),
  lambda: damping(lambda, "intermediate.lambda")
})

/**
 * The ensemble-defence attack (docs/method.md, "Evaluation protocol"; the papers' "Funroll-es-0"): the gradient
 * of the sum of the losses of the intermediate surrogates of states `from`..`to` (default tails: f and 1 step,
 * lambda 1).
 *
 * The official code never zeroes `x_adv.grad` between its 8 backward calls, so the sign it takes weights state j
 * by (8 - j); this is the clean version: every state weighs 1.
 */
export const ensemble = (from: number, to: number, k = 1, lambda = 1): GradientSource => {
  int(from, 0, "ensemble.from")
  int(to, 0, "ensemble.to")
  if (from > to) throw new RangeError(`effect-deq GradientSource: ensemble.from (${from}) > ensemble.to (${to})`)
  return { _tag: "Ensemble", from, to, k: int(k, 0, "ensemble.k"), lambda: damping(lambda, "ensemble.lambda") }
}

/** The papers' entry of state z_n (their `results_list[n - 1]`); z_0 has none. */
const entry = (n: number): string => (n === 0 ? "init" : `${n - 1}`)

const prefix = (lambda: number): string => (lambda === 1 ? "F" : lambda === 0.5 ? "M" : `L${lambda}`)

/**
 * A short label for reports, in the papers' style: "implicit", "phantom-5-0.5", "unrolled-30", "Munroll-out-9"
 * (the unroll at the read-out state), and the papers' strings for intermediate states: "Munroll-i-K" starts from
 * their entry i (`results_list[i]`, counted from 0), which is our state z_{i+1}, so `intermediate(4, 5, 0.5)` is
 * "Munroll-3-5" ("F" for lambda 1; see {@link fromPaper}). The initial state z_0 has no paper entry: "Funroll-init-K".
 * Ensemble over z_from..z_to with tail K: "Funroll-es-<from-1>-<to-1>-K" in the same entry numbering.
 */
export const label = (s: GradientSource): string => {
  switch (s._tag) {
    case "Implicit":
      return "implicit"
    case "Phantom":
      return `phantom-${s.k}-${s.tau}`
    case "Unrolled":
      return `unrolled-${s.n}`
    case "Unroll":
      return `${prefix(s.lambda)}unroll-out-${s.k}`
    case "Intermediate":
      return `${prefix(s.lambda)}unroll-${entry(s.n)}-${s.k}`
    case "Ensemble":
      return `${prefix(s.lambda)}unroll-es-${entry(s.from)}-${entry(s.to)}-${s.k}`
  }
}

/** A readable one-line description of a source. */
export const describe = (s: GradientSource): string => {
  switch (s._tag) {
    case "Implicit":
      return `implicit gradient at the read-out state (IFT; ${s.solver} backward solve, ${s.maxIter} iterations, tol ${s.tol})`
    case "Phantom":
      return `phantom gradient: ${s.k} damped steps (tau ${s.tau}) from the read-out state`
    case "Unrolled":
      return `backprop through ${s.n} plain steps from z_0 (no solver)`
    case "Unroll":
      return `f and ${s.k} damped steps (lambda ${s.lambda}) from the read-out state`
    case "Intermediate":
      return `intermediate state z_${s.n} (${s.n === 0 ? "the initial state" : `${s.n} solver steps; the paper's entry ${s.n - 1}`}), then f and ` +
        `${s.k} damped steps (lambda ${s.lambda}), Eq. (11)`
    case "Ensemble":
      return `sum of the losses of states z_${s.from}..z_${s.to}, each through f and ${s.k} damped steps ` +
        `(lambda ${s.lambda})`
  }
}

/**
 * A source from the papers' attack strings: "Funroll-i-K" / "Munroll-i-K" (their `results_list[i]` is the
 * (i+1)-th iterate, so i + 1 solver steps here) and "Funroll-es-0" (the ensemble defence over states 1..`steps`).
 */
export const fromPaper = (name: string, steps = 8): GradientSource => {
  const m = /^([FM])unroll-(\d+)-(\d+)$/.exec(name)
  if (m !== null) return intermediate(Number(m[2]) + 1, Number(m[3]), m[1] === "F" ? 1 : 0.5)
  const es = /^([FM])unroll-es-0$/.exec(name)
  if (es !== null) return ensemble(1, steps, 1, es[1] === "F" ? 1 : 0.5)
  throw new RangeError(`effect-deq GradientSource: "${name}" is not a paper attack string (e.g. "Munroll-3-5", "Funroll-es-0")`)
}

/** The FixedPoint Backward of a read-out-state source (Implicit, Phantom, Unrolled). */
export const backwardOf = (
  s: GradientSource & { readonly _tag: "Implicit" | "Phantom" | "Unrolled" },
  onStats?: (stats: SolveStats) => void
): Backward => {
  switch (s._tag) {
    case "Implicit":
      return Backward.implicit({
        maxIter: s.maxIter,
        tol: s.tol,
        solver: s.solver,
        ...(s.stopMode !== undefined ? { stopMode: s.stopMode } : {}),
        ...(onStats !== undefined ? { onStats } : {})
      })
    case "Phantom":
      return Backward.phantom(s.k, s.tau)
    case "Unrolled":
      return Backward.unrolled(s.n)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// surrogate logits
// ---------------------------------------------------------------------------------------------------------------

/** The value-preserving tail: h(z) of the state itself (no gradient reaches x through it). */
export const identityTail: Backward = Backward.phantom(0, 1)


/** z_0..z_n of exactly n solver steps, solved off the tape (one solve; the caller's tidy owns the tensors). */
const statesUpTo = (deq: Dynamics.Deq, p: Dynamics.Prepared, n: number): Array<tf.Tensor> => {
  if (n === 0) return [p.z0]
  const r = untaped(() =>
    deq.solver.run(p.f, p.z0, Dynamics.exactSteps(deq, n, { trajectory: true }))
  )
  r.state?.dispose()
  const trajectory = r.trajectory ?? []
  if (trajectory.length < n) throw new Error(`effect-deq GradientSource: the solver returned ${trajectory.length} states, expected ${n}`)
  return [p.z0, ...trajectory.slice(0, n)]
}

/** A read-out with a gradient mode attached at its state(s) (Final: the deq's solve; State / Ensemble: a tail). */
const atReadOut = (deq: Dynamics.Deq, x: tf.Tensor4D, gradient: Dynamics.Gradient, r: Dynamics.ReadOut): tf.Tensor2D =>
  r._tag === "Final" ?
    Dynamics.logits({ ...deq, backward: gradient }, x, r) :
    Dynamics.logits(deq, x, r, { tail: gradient })

/** The logits of each state from..to through the Eq. (11) tail, from one off-tape solve of `to` steps. */
export const stateHeads = (
  deq: Dynamics.Deq,
  x: tf.Tensor4D,
  from: number,
  to: number,
  k: number,
  lambda: number
): Array<tf.Tensor2D> => {
  const p = Dynamics.prepare(deq, x)
  const zs = statesUpTo(deq, p, to)
  const tail = Dynamics.unroll(k, lambda)
  const heads: Array<tf.Tensor2D> = []
  for (let i = from; i <= to; i++) heads.push(deq.model.head(Dynamics.applyGradient(p.f, zs[i]!, tail, p.z0)))
  return heads
}

/**
 * The surrogate logits of a source at x: differentiable w.r.t. x (call inside a gradient). `r` is the read-out the
 * Implicit, Phantom, Unrolled and Unroll sources attach to; Intermediate and Ensemble define their own states
 * (Ensemble's logits are the mean of its heads; attacks ascend the summed loss through {@link sourceObjective}).
 */
export const sourceLogits = (
  deq: Dynamics.Deq,
  x: tf.Tensor4D,
  source: GradientSource,
  r: Dynamics.ReadOut = Dynamics.readOut.final
): tf.Tensor2D =>
  tf.tidy(() => {
    switch (source._tag) {
      case "Implicit":
      case "Phantom":
      case "Unrolled":
        return atReadOut(deq, x, backwardOf(source), r)
      case "Unroll":
        return atReadOut(deq, x, Dynamics.unroll(source.k, source.lambda), r)
      case "Intermediate":
        // Dynamics' State(n) read-out with an unroll tail is exactly Eq. (11) for n >= 1; it has no State(0)
        return source.n >= 1 ?
          Dynamics.logits(deq, x, Dynamics.readOut.state(source.n), { tail: Dynamics.unroll(source.k, source.lambda) }) :
          stateHeads(deq, x, 0, 0, source.k, source.lambda)[0]!
      case "Ensemble": {
        const heads = stateHeads(deq, x, source.from, source.to, source.k, source.lambda)
        return tf.div(tf.addN(heads), heads.length) as tf.Tensor2D
      }
    }
  })

/**
 * The objective an attack ascends for a per-sample loss: loss(sourceLogits) for single-head sources, the sum of
 * the per-state losses for Ensemble (the gradient of the summed losses is the sum of the per-state gradients).
 */
export const sourceObjective = (
  deq: Dynamics.Deq,
  x: tf.Tensor4D,
  source: GradientSource,
  r: Dynamics.ReadOut,
  loss: (logits: tf.Tensor2D) => tf.Tensor1D
): { readonly loss: tf.Tensor1D; readonly logits: tf.Tensor2D } =>
  tf.tidy(() => {
    if (source._tag !== "Ensemble") {
      const logits = sourceLogits(deq, x, source, r)
      return { loss: loss(logits), logits }
    }
    const heads = stateHeads(deq, x, source.from, source.to, source.k, source.lambda)
    return {
      loss: tf.addN(heads.map((h) => loss(h))) as tf.Tensor1D,
      logits: tf.div(tf.addN(heads), heads.length) as tf.Tensor2D
    }
  })

/**
 * The evaluated prediction of a read-out, off the tape: h(z*) of the deq's solve (Final), h(z_n) of exactly n
 * steps (State), the mean of h(z_from)..h(z_to) (Ensemble). No extra application of f (docs/method.md, "Evaluation
 * protocol").
 */
export const readOutLogits = (deq: Dynamics.Deq, x: tf.Tensor4D, r: Dynamics.ReadOut): tf.Tensor2D =>
  untaped(() => Dynamics.logits({ ...deq, backward: identityTail }, x, r, { tail: identityTail }))
