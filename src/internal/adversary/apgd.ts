/**
 * APGD (Croce & Hein, ICML 2020), written from the paper: step size 2 eps, momentum 0.75, and at each checkpoint
 * w_j the step size is halved (restarting from the best point) when fewer than rho of the steps since the last
 * checkpoint increased the loss, or when the step size was not reduced last time and the best loss did not move.
 * APGD-T runs the targeted DLR loss towards each of the most likely wrong classes in turn.
 */
import { tf } from "../../Tensor.ts"
import { col4, direction, l2Norm4, project } from "./geometry.ts"
import { dlrTargeted } from "./losses.ts"
import { firstSuccess, maskTensor, whereRows } from "./rows.ts"
import { keyedNoise } from "./randomness.ts"
import { logitsArePrediction, misclassified, probe, wrongOf } from "./run.ts"
import type { Core, Env } from "./run.ts"
import type { ApgdOptions, ApgdTargetedOptions } from "./options.ts"
import { targetedWorstCase, untargetedLoss, worstCase } from "./pgd.ts"
import type { RunOut } from "./pgd.ts"
import type { Norm } from "./types.ts"

/**
 * Checkpoints w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
 */
export const checkpoints = (steps: number): Array<number> => {
  const out = [0]
  let prev = 0
  let p = 0.22
  while (p <= 1) {
    const w = Math.ceil(p * steps - 1e-9) // 0.41 * 100 is 41.000000000000004 in floating point
    if (w > out[out.length - 1]! && w <= steps) out.push(w)
    const next = p + Math.max(p - prev - 0.03, 0.06)
    prev = p
    p = next
  }
  return out
}

interface Settings {
  readonly eps: number
  readonly norm: Norm
  readonly steps: number
  readonly rho: number
  readonly momentum: number
  readonly eot: number
}

/** The AutoAttack start: a random point of the ball's surface direction, scaled to eps. */
const start = (env: Env, x: tf.Tensor4D, eps: number, norm: Norm, ...path: ReadonlyArray<string | number>) =>
  tf.tidy(() => {
    const [lo, hi] = env.bounds
    if (norm === "Linf") {
      const t = keyedNoise(env, x.shape, "uniform", "start", ...path)
      const m = tf.max(tf.abs(t.reshape([t.shape[0], -1])), 1).reshape([-1, 1, 1, 1])
      return tf.clipByValue(tf.add(x, tf.mul(tf.div(t, tf.add(m, 1e-12)), eps)), lo, hi) as tf.Tensor4D
    }
    const z = keyedNoise(env, x.shape, "normal", "start", ...path)
    return tf.clipByValue(tf.add(x, tf.mul(tf.div(z, tf.add(l2Norm4(z), 1e-12)), eps)), lo, hi) as tf.Tensor4D
  })

/** The loop state of one APGD run; tensors are replaced (and the old ones disposed) as it goes. */
interface Loop {
  xk: tf.Tensor4D
  xPrev: tf.Tensor4D
  g: tf.Tensor4D
  gradBest: tf.Tensor4D
  xBest: tf.Tensor4D
  eta: tf.Tensor1D
  readonly lossBest: Float32Array
  lossPrev: Float32Array
  /** per sample: steps since the last checkpoint that increased the loss */
  readonly increased: Int32Array
  reducedLast: Uint8Array
  lossBestAtCheck: Float32Array
}

const swap = <T extends tf.Tensor>(old: T, next: T): T => {
  if (old !== next) old.dispose()
  return next
}

/** Takes a step's point, gradient and loss into the loop state (counting increases, keeping the best point). */
const takeStep = (st: Loop, x1: tf.Tensor4D, grad: tf.Tensor4D, lv: Float32Array): void => {
  const n = lv.length
  const improved = new Uint8Array(n)
  for (let i = 0; i < n; i++) {
    if (lv[i]! > st.lossPrev[i]!) st.increased[i]!++
    if (lv[i]! > st.lossBest[i]!) {
      improved[i] = 1
      st.lossBest[i] = lv[i]!
    }
  }
  const im = maskTensor(improved)
  st.xBest = swap(st.xBest, tf.tidy(() => whereRows(im, x1, st.xBest)))
  st.gradBest = swap(st.gradBest, tf.tidy(() => whereRows(im, grad, st.gradBest)))
  im.dispose()
  st.xPrev.dispose()
  st.xPrev = st.xk
  st.xk = x1
  st.g.dispose()
  st.g = grad
  st.lossPrev = Float32Array.from(lv)
}

/**
 * At a checkpoint `h` steps after the previous one: halve the step size and restart from the best point where
 * fewer than rho of the steps increased the loss, or where the step was not reduced last time and the best loss
 * did not move.
 */
const checkpointStep = (st: Loop, h: number, rho: number): void => {
  const n = st.lossBest.length
  const reduce = new Uint8Array(n)
  for (let i = 0; i < n; i++) {
    const oscillating = st.increased[i]! < rho * h
    const stalled = st.reducedLast[i] === 0 && st.lossBestAtCheck[i]! >= st.lossBest[i]!
    if (oscillating || stalled) {
      reduce[i] = 1
      st.lossPrev[i] = st.lossBest[i]!
    }
  }
  const rm = maskTensor(reduce)
  const { eta, xk, g, xBest, gradBest } = st
  st.eta = swap(eta, tf.tidy(() => tf.where(rm, tf.div(eta, 2), eta) as tf.Tensor1D))
  st.xk = swap(xk, tf.tidy(() => whereRows(rm, xBest, xk)))
  st.g = swap(g, tf.tidy(() => whereRows(rm, gradBest, g)))
  rm.dispose()
  st.reducedLast = reduce
  st.lossBestAtCheck = Float32Array.from(st.lossBest)
  st.increased.fill(0)
}

/** One APGD run (one start) on the rows of env. */
export const apgdRun = (
  s: Settings,
  env: Env,
  x: tf.Tensor4D,
  y: tf.Tensor1D,
  lossFn: (logits: tf.Tensor2D) => tf.Tensor1D,
  ...path: ReadonlyArray<string | number>
): RunOut => {
  const n = x.shape[0]
  const fromLogits = logitsArePrediction(env.classifier)
  const wrongAt = (xa: tf.Tensor4D, logits: tf.Tensor2D, t: number): Uint8Array =>
    fromLogits ? wrongOf(logits, y) : misclassified(env, xa, y, ...path, "step", t)
  const first = tf.tidy(() => {
    const x0 = start(env, x, s.eps, s.norm, ...path)
    const p = probe(env, x0, lossFn, s.eot, ...path, "step", 0)
    return { x0, grad: p.grad, loss: p.loss, logits: p.logits }
  })
  const lossBest = Float32Array.from(first.loss.dataSync())
  const st: Loop = {
    xk: first.x0,
    xPrev: first.x0.clone(),
    g: first.grad,
    gradBest: first.grad.clone(),
    xBest: first.x0.clone(),
    eta: tf.fill([n], 2 * s.eps) as tf.Tensor1D,
    lossBest,
    lossPrev: Float32Array.from(lossBest),
    increased: new Int32Array(n),
    reducedLast: new Uint8Array(n),
    lossBestAtCheck: Float32Array.from(lossBest)
  }
  const best = firstSuccess(x)
  best.record(wrongAt(st.xk, first.logits, 0), st.xk)
  first.loss.dispose()
  first.logits.dispose()
  const marks = checkpoints(s.steps)
  let next = 1
  for (let k = 0; k < s.steps; k++) {
    const a = k === 0 ? 1 : s.momentum
    const { xk, xPrev, g, eta } = st
    const out = tf.tidy(() => {
      const z = project(tf.add(xk, tf.mul(col4(eta), direction(g, s.norm))) as tf.Tensor4D, x, s.eps, s.norm, env.bounds)
      const moved = tf.add(xk, tf.add(tf.mul(tf.sub(z, xk), a), tf.mul(tf.sub(xk, xPrev), 1 - a))) as tf.Tensor4D
      const x1 = project(moved, x, s.eps, s.norm, env.bounds)
      const p = probe(env, x1, lossFn, s.eot, ...path, "step", k + 1)
      return { x1, grad: p.grad, loss: p.loss, logits: p.logits }
    })
    best.record(wrongAt(out.x1, out.logits, k + 1), out.x1)
    takeStep(st, out.x1, out.grad, out.loss.dataSync() as Float32Array)
    out.loss.dispose()
    out.logits.dispose()
    if (next < marks.length && k + 1 === marks[next]) {
      checkpointStep(st, marks[next]! - marks[next - 1]!, s.rho)
      next++
    }
  }
  const xAdv = best.finish(st.xBest)
  for (const t of [st.xk, st.xPrev, st.g, st.gradBest, st.xBest, st.eta]) t.dispose()
  return { xAdv, success: best.found, loss: st.lossBest }
}

/** APGD-CE / APGD-DLR with restarts on the samples still unbroken. */
export const apgdCore = (o: ApgdOptions): Core => (env, x, y) =>
  worstCase(env, x, y, o.restarts, (e, xs, ys, r) => apgdRun(o, e, xs, ys, untargetedLoss(o.loss)(ys), "restart", r))

/** APGD-T: for each of the `targets` most likely wrong classes (by the clean logits), `restarts` targeted runs. */
export const apgdTargetedCore = (o: ApgdTargetedOptions): Core => (env, x, y) =>
  targetedWorstCase(env, x, y, o, (e, xs, ys, classes, t, r) => {
    const target = tf.tensor1d(classes, "int32")
    try {
      return apgdRun(o, e, xs, ys, (logits) => dlrTargeted(logits, ys, target), "target", t, "restart", r)
    } finally {
      target.dispose()
    }
  })
