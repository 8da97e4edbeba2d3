/**
 * Input entropy reduction (Yang et al., ICML 2023, Sec. 3.2; docs/method.md, "Input entropy reduction") as a
 * plain tfjs function.
 *
 * The projections of the purified input (to the eps-ball around x and to [0, 1]) are straight-through: their
 * forward value is the clip, their Jacobian the identity. A plain clip has zero gradient wherever it binds, and
 * entropy descent pushes MNIST's background pixels below 0, so differentiating the defence through plain clips
 * left about half of the input coordinates with an exactly zero gradient and made the "full" attack weaker than
 * BPDA (docs/attacks.md, "Inference-time defences").
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import { applyGradient, contextOf, type Deq, type DefenceOutput, exactSteps, mapOf, unroll } from "../../Dynamics.ts"
import { detach, liftBroyden, type SolverState } from "../../FixedPoint.ts"
import { untaped } from "../../Tensor.ts"

/** The resolved settings of one defence. */
export interface EntropySettings {
  readonly rounds: number
  /** T_f: solver steps per round */
  readonly solverSteps: number
  /** R: input steps per round */
  readonly inputSteps: number
  readonly alpha: number
  readonly eps: number
  /** the recorded state read out, 1-based (default rounds * solverSteps) */
  readonly state?: number
  readonly readOut: "state" | "tail"
  readonly warmStart: "best" | "last"
  readonly lift: boolean
  readonly tailK: number
  readonly tailLambda: number
  /**
   * how the purified input is projected on the tape: "straight-through" (the default) or a plain "clip", whose zero
   * gradient where it binds is kept only to measure what it cost (test/AdversaryDefence.test.ts)
   */
  readonly projection?: "straight-through" | "clip"
}

/** Mean over the batch of the prediction entropy of logits [B, C]. */
export const meanEntropy = (logits: tf.Tensor): tf.Scalar =>
  tf.tidy(() => {
    const logp = tf.logSoftmax(logits)
    return tf.mean(tf.neg(tf.sum(tf.mul(tf.exp(logp), logp), -1))) as tf.Scalar
  })

/**
 * x' clipped to the eps-ball [lo, hi] = [x - eps, x + eps] and to [0, 1], straight-through: the value is the clip,
 * the gradient passes as if there were none (x' + stopGradient(clip(x') - x')).
 */
const project = (xp: tf.Tensor4D, lo: tf.Tensor, hi: tf.Tensor, plain: boolean): tf.Tensor4D => {
  if (plain) return tf.clipByValue(tf.minimum(tf.maximum(xp, lo), hi), 0, 1) as tf.Tensor4D
  const clipped = untaped(() => tf.clipByValue(tf.minimum(tf.maximum(xp, lo), hi), 0, 1))
  return tf.add(xp, untaped(() => tf.sub(clipped, xp))) as tf.Tensor4D
}

/**
 * Runs the defence on a batch. Tensors computed on the tape: the injections of the purified inputs, the
 * projection chain x' <- P(x' - alpha s) (P straight-through, so dx'/dx is the identity) and the read-out tail;
 * everything else (solver, entropy gradients, lifts) runs off the tape and is a constant for an enclosing gradient.
 */
export const runEntropyReduction = (s: EntropySettings, deq: Deq, x: tf.Tensor4D): DefenceOutput =>
  tf.tidy(() => {
    const model = deq.model
    const batch = x.shape[0]
    const total = s.rounds * s.solverSteps
    const want = s.state ?? total
    if (!Number.isInteger(want) || want < 1 || want > total) {
      throw new RangeError(`entropy reduction: state ${want} is not in 1..${total} (rounds x solverSteps)`)
    }
    // eval mode: no dropout masks; precomputed weights (weight norm) when the model has them
    const ctx = contextOf(model, batch)
    let xp = x
    let u = model.inject(x)
    let f = mapOf(model, u, ctx)
    const z0 = untaped(() => model.initState(u))
    let z = z0
    let memory: SolverState | undefined
    const states: Array<tf.Tensor> = []
    // the ball's bounds, once per call rather than per input step
    const lo = tf.sub(x, s.eps), hi = tf.add(x, s.eps)
    try {
      for (let r = 0; r < s.rounds && states.length < want; r++) {
        const result = untaped(() =>
          deq.solver.run(f, z, {
            ...exactSteps(deq, s.solverSteps, { trajectory: true, state: true }),
            returnMode: s.warmStart
          }, memory)
        )
        memory?.dispose()
        memory = result.state
        states.push(...(result.trajectory ?? []))
        z = result.z
        // the input updates after the round that produced the read-out state change nothing it predicts
        if (states.length >= want || s.inputSteps === 0) continue
        const zc = z
        for (let t = 0; t < s.inputSteps; t++) {
          const xc = xp
          // the sign of the entropy gradient has zero derivative: computed off the tape, a constant
          const sign = untaped(() =>
            tf.tidy(() =>
              tf.sign(tf.grad((xx: tf.Tensor) => meanEntropy(model.head(model.cell(zc, model.inject(xx as tf.Tensor4D), ctx))))(xc))
            )
          )
          xp = project(tf.sub(xp, tf.mul(sign, s.alpha)) as tf.Tensor4D, lo, hi, s.projection === "clip")
        }
        u = model.inject(xp)
        f = mapOf(model, u, ctx)
        if (s.lift && memory !== undefined && memory._tag === "BroydenState") {
          const fNew = f
          const gNew = untaped(() => tf.tidy(() => tf.reshape(tf.sub(fNew(zc), zc), [batch, -1])))
          const lifted = untaped(() => liftBroyden(memory!, gNew))
          memory.dispose()
          memory = lifted
        }
      }
    } finally {
      memory?.dispose()
    }
    if (states.length < want) {
      throw new Error(`entropy reduction: the solver recorded ${states.length} states, expected ${want}`)
    }
    const zk = states[want - 1]!
    // the read-out's gradient: the unrolled tail from z_k under the last injection (reaches x through x')
    const tail = model.head(applyGradient(f, zk, unroll(s.tailK, s.tailLambda), z0))
    const logits = s.readOut === "tail" ?
      tail :
      // value h(z_k) exactly (tail - detach(tail) is 0), gradient that of the tail
      (tf.add(untaped(() => model.head(zk)), tf.sub(tail, detach(tail))) as tf.Tensor2D)
    return { logits, purified: xp === x ? (x.clone() as tf.Tensor4D) : xp }
  })
