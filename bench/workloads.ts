/**
 * The workloads the benchmark compares with the PyTorch peer, on the project's real models (Models.build):
 *
 * - `f`: one application of the cell, with the injection and the per-call context computed beforehand (what one
 *   solver iteration costs);
 * - `solve`: N Picard steps from z_0 (tol 0), off the tape;
 * - `implicit`: the same solve, then z_1 = f(z*) with the implicit gradient (A Picard adjoint iterations) and the
 *   cross-entropy of the head, differentiated w.r.t. every parameter (the injection stem included);
 * - `attack-step`: one PGD step: z_N off the tape, the paper's tail (f, then k damped steps with lambda), the
 *   cross-entropy, its gradient w.r.t. x, a sign step and the projection;
 * - `train-step`: one PGD-AT step with random intermediate states: `pgdSteps` attack steps, then the cross-entropy
 *   at state n through the same tail, all parameter gradients and the project's Adam (internal/train/adam.ts).
 *   The drawn n changes the cost, so one call runs one step per entry of `trainStates` (default 4 and 5: the
 *   mean of U{1..8}) and is reported per step; the peer runs the same list.
 *
 * bench/peer.py implements the same five on the same weights, batch and settings ({@link StepSpec}).
 */
import * as Dynamics from "../src/Dynamics.ts"
import { Backward, makePicardSync } from "../src/FixedPoint.ts"
import { makeAdam } from "../src/internal/train/adam.ts"
import type { Model } from "../src/Models.ts"
import { tf, untaped } from "../src/Tensor.ts"

/** The workloads, in table order. */
export const workloadNames = ["f", "solve", "implicit", "attack-step", "train-step"] as const

/** One workload's name. */
export type WorkloadName = typeof workloadNames[number]

/** The settings both sides run with (sent to the peer with the weights). */
export interface StepSpec {
  /** solver steps N of a read-out (the paper's budget) */
  readonly budget: number
  /** the training / attack tail: f, then tailK damped steps with tailLambda */
  readonly tailK: number
  readonly tailLambda: number
  /** Picard iterations of the implicit backward's adjoint solve */
  readonly adjointIterations: number
  /** PGD steps of the training step's inner maximisation */
  readonly pgdSteps: number
  readonly eps: number
  readonly alpha: number
  readonly lr: number
  /** the states n of the training steps one `train-step` call runs */
  readonly trainStates: ReadonlyArray<number>
}

/** The settings of the benchmark (the main job's attack and tail, 3 PGD steps). */
export const defaultSpec: StepSpec = {
  budget: 8,
  tailK: 5,
  tailLambda: 0.5,
  adjointIterations: 20,
  pgdSteps: 3,
  eps: 0.1,
  alpha: 0.025,
  lr: 1e-3,
  trainStates: [4, 5]
}

/** How many calls one timed sample of a workload makes (f is short: averaged over a few calls). */
export const repsOf = (w: WorkloadName): number => (w === "f" ? 5 : 1)

/** The calls per step a `train-step` sample stands for (its time is reported per step). */
export const stepsPerCall = (w: WorkloadName, spec: StepSpec): number => (w === "train-step" ? spec.trainStates.length : 1)

/** Every tensor in a nested structure of objects and arrays (a cell context). */
const tensorsIn = (value: unknown): Array<tf.Tensor> =>
  value instanceof tf.Tensor ? [value] :
  Array.isArray(value) ? value.flatMap(tensorsIn) :
  typeof value === "object" && value !== null ? Object.values(value).flatMap(tensorsIn) :
  []

/** A model's workloads over one fixed batch; `dispose` frees the batch and the optimizer state. */
export interface Workloads {
  readonly run: Readonly<Record<WorkloadName, () => void>>
  /** the batch (NHWC) and labels the workloads use, for the peer */
  readonly x: tf.Tensor4D
  readonly y: tf.Tensor1D
  /** the state f is applied to */
  readonly z: tf.Tensor
  /** the values the peer check compares: f(z), the attack gradient, the training and implicit gradients */
  readonly values: () => CheckValues
  readonly dispose: () => void
}

/** What bench/peer.py's `check` returns, in the project's layouts (flattened). */
export interface CheckValues {
  readonly f: Float32Array
  readonly attackGrad: Float32Array
  readonly trainLoss: number
  readonly trainGrads: Readonly<Record<string, Float32Array>>
  readonly implicitGrads: Readonly<Record<string, Float32Array>>
}

/**
 * Builds the workloads of `model` on a seeded batch of `batch` images. The training step updates the model's
 * variables (Adam), so take {@link Workloads.values} before timing it.
 */
export const makeWorkloads = (model: Model, batch: number, spec: StepSpec = defaultSpec): Workloads => {
  const deq = Dynamics.makeWith(model, makePicardSync({ maxIter: spec.budget, tol: 0 }), {
    backward: Dynamics.unroll(spec.tailK, spec.tailLambda)
  })
  const implicitDeq = Dynamics.makeWith(model, makePicardSync({ maxIter: spec.budget, tol: 0 }), {
    backward: Backward.implicit({ solver: "picard", maxIter: spec.adjointIterations, tol: 0 })
  })
  const [h, w, c] = model.config.inputShape
  const x = tf.randomUniform([batch, h, w, c], 0, 1, "float32", 5) as tf.Tensor4D
  const y = tf.tensor1d(Array.from({ length: batch }, (_, i) => (i * 7) % model.classes), "int32")
  const onehot = tf.oneHot(y, model.classes)
  const ce = (logits: tf.Tensor2D) => tf.losses.softmaxCrossEntropy(onehot, logits) as tf.Scalar
  const vars = model.params.map((p) => p.variable)
  const byVariable = new Map(model.params.map((p) => [p.variable.name, p.name]))
  const adam = makeAdam(model.params, { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0 })
  // what one solver iteration sees: u and the per-call context computed once, z after two steps
  const z = tf.tidy(() => {
    const { f, z0 } = Dynamics.prepare(deq, x)
    return untaped(() => f(f(z0)))
  })
  const u = tf.tidy(() => model.inject(x))
  // the context's tensors outlive this tidy (freed by dispose); its intermediates do not
  const ctx = tf.tidy(() => Dynamics.contextOf(model, batch) as tf.TensorContainer) as Dynamics.CellContext | undefined
  const fixed = { z, u, ctx }
  const stateN = Dynamics.readOut.state(spec.budget)

  const attackGrad = (xAdv: tf.Tensor4D) => tf.grad((xi: tf.Tensor) => ce(Dynamics.logits(deq, xi as tf.Tensor4D, stateN)))(xAdv)
  const pgdStep = (xAdv: tf.Tensor4D): tf.Tensor4D =>
    tf.tidy(() => {
      const moved = tf.add(xAdv, tf.mul(tf.sign(attackGrad(xAdv)), spec.alpha))
      return tf.clipByValue(tf.minimum(tf.maximum(moved, tf.sub(x, spec.eps)), tf.add(x, spec.eps)), 0, 1) as tf.Tensor4D
    })
  const trainGrads = (xAdv: tf.Tensor4D, n: number) =>
    tf.variableGrads(() => ce(Dynamics.logits(deq, xAdv, Dynamics.readOut.state(n))), vars)
  const trainStep = (n: number) => {
    let xAdv = tf.clone(x)
    for (let i = 0; i < spec.pgdSteps; i++) {
      const next = pgdStep(xAdv)
      xAdv.dispose()
      xAdv = next
    }
    const { value, grads } = trainGrads(xAdv, n)
    adam.apply(grads, spec.lr)
    tf.dispose([value, xAdv, ...Object.values(grads)])
  }
  const implicitGrads = () => tf.variableGrads(() => ce(Dynamics.logits(implicitDeq, x, Dynamics.readOut.final)), vars)

  const run: Record<WorkloadName, () => void> = {
    f: () => tf.tidy(() => model.cell(fixed.z, fixed.u, fixed.ctx)).dispose(),
    solve: () =>
      tf.tidy(() => untaped(() => deq.solver.run((z) => model.cell(z, fixed.u, fixed.ctx), model.initState(fixed.u)).z)).dispose(),
    implicit: () => {
      const { value, grads } = implicitGrads()
      tf.dispose([value, ...Object.values(grads)])
    },
    "attack-step": () => pgdStep(x).dispose(),
    "train-step": () => spec.trainStates.forEach(trainStep)
  }
  const named = (grads: Record<string, tf.Tensor>) => {
    const out: Record<string, Float32Array> = {}
    for (const [k, g] of Object.entries(grads)) out[byVariable.get(k) ?? k] = g.dataSync() as Float32Array
    tf.dispose(Object.values(grads))
    return out
  }
  const read = (t: tf.Tensor): Float32Array => {
    const v = t.dataSync() as Float32Array
    t.dispose()
    return v
  }
  return {
    run,
    x,
    y,
    z: fixed.z,
    values: () => {
      const train = trainGrads(x, spec.trainStates[0] ?? spec.budget)
      const implicit = implicitGrads()
      implicit.value.dispose()
      return {
        f: read(tf.tidy(() => model.cell(fixed.z, fixed.u, fixed.ctx))),
        attackGrad: read(attackGrad(x)),
        trainLoss: read(train.value)[0]!,
        trainGrads: named(train.grads),
        implicitGrads: named(implicit.grads)
      }
    },
    dispose: () => {
      adam.dispose()
      tf.dispose([x, y, onehot, z, u, ...tensorsIn(ctx)])
    }
  }
}
