/**
 * FGSM and PGD (Linf / L2) with random starts and restarts that keep the per-sample worst case.
 */
import { tf } from "../../Tensor.ts"
import { col4, direction, l2Norm4, project } from "./geometry.ts"
import { crossEntropy, dlr } from "./losses.ts"
import { firstSuccess, gatherRows, indicesWhere, maskTensor, scatterRows, whereRows } from "./rows.ts"
import { keyedNoise, keyedStreams } from "./randomness.ts"
import { logitsArePrediction, misclassified, predictLogits, probe, seedOf, subEnv, wrongOf } from "./run.ts"
import type { Core, Env } from "./run.ts"
import type { FgsmOptions, PgdOptions } from "./options.ts"
import type { Norm } from "./types.ts"

/** The loss an attack ascends, as a function of the labels of the rows it attacks. */
export type LossFor = (y: tf.Tensor1D) => (logits: tf.Tensor2D) => tf.Tensor1D

/** "ce" or "dlr" for labels y. */
export const untargetedLoss = (name: "ce" | "dlr"): LossFor => (y) => (logits) =>
  name === "ce" ? crossEntropy(logits, y) : dlr(logits, y)

/** One run on a subset of rows. */
export interface RunOut {
  readonly xAdv: tf.Tensor4D
  /** per row: `predict` misclassifies xAdv */
  readonly success: Uint8Array
  /** per row: the run's loss at xAdv (compared across runs for rows no run fooled) */
  readonly loss: Float32Array
}

/**
 * The targeted attacks' driver (APGD-T, FAB-T): ranks the classes by the clean logits once, then for each of the
 * `targets` most likely wrong classes runs `restarts` passes through {@link worstCase}; `run` gets each row's
 * target class, the target's rank (1 = most likely wrong) and the restart index.
 */
export const targetedWorstCase = (
  env: Env,
  x: tf.Tensor4D,
  y: tf.Tensor1D,
  options: { readonly targets: number; readonly restarts: number },
  run: (env: Env, x: tf.Tensor4D, y: tf.Tensor1D, target: Int32Array, rank: number, restart: number) => RunOut
): tf.Tensor4D => {
  const ranked = tf.tidy(() => {
    const logits = env.classifier.logits(x, { seed: seedOf(env, "targets") })
    env.counts.forward += x.shape[0]
    return { k: logits.shape[1], order: tf.topk(logits, logits.shape[1]).indices.dataSync() as Int32Array }
  })
  const k = ranked.k
  const targets = Math.min(options.targets, k - 1)
  return worstCase(env, x, y, targets * options.restarts, (e, xs, ys, index, rows) => {
    const rank = 1 + Math.floor(index / options.restarts)
    const target = Int32Array.from(rows, (i) => ranked.order[i * k + rank]!)
    return run(e, xs, ys, target, rank, index % options.restarts)
  })
}

/**
 * Runs `runs` passes, each on the rows no earlier pass fooled, and keeps per row the first success or, failing
 * that, the candidate with the highest loss.
 */
export const worstCase = (
  env: Env,
  x: tf.Tensor4D,
  y: tf.Tensor1D,
  runs: number,
  run: (env: Env, x: tf.Tensor4D, y: tf.Tensor1D, index: number, rows: Int32Array) => RunOut
): tf.Tensor4D => {
  const b = x.shape[0]
  const done = new Uint8Array(b)
  const bestLoss = new Float32Array(b).fill(-Infinity)
  let best = x.clone()
  for (let r = 0; r < runs; r++) {
    const rows = indicesWhere(done, 0)
    if (rows.length === 0) break
    const next = tf.tidy(() => {
      const xs = gatherRows(x, rows)
      const ys = gatherRows(y, rows)
      const out = run(subEnv(env, rows), xs, ys, r, rows)
      const take = new Uint8Array(rows.length)
      for (let j = 0; j < rows.length; j++) {
        const i = rows[j]!
        if (out.success[j] === 1) {
          take[j] = 1
          done[i] = 1
        } else if (out.loss[j]! > bestLoss[i]!) {
          take[j] = 1
          bestLoss[i] = out.loss[j]!
        }
      }
      return scatterRows(best, whereRows(maskTensor(take), out.xAdv, gatherRows(best, rows)), rows)
    })
    best.dispose()
    best = next
  }
  return best
}

/** A uniform draw from the eps-ball (Linf: per coordinate; L2: direction and radius). */
const randomStart = (env: Env, x: tf.Tensor4D, eps: number, norm: Norm, clamp: boolean, r: number): tf.Tensor4D =>
  tf.tidy(() => {
    let delta: tf.Tensor4D
    if (norm === "Linf") {
      delta = tf.mul(keyedNoise(env, x.shape, "uniform", "start", r), eps)
    } else {
      const z = keyedNoise(env, x.shape, "normal", "start", r)
      const d = x.size / x.shape[0]
      const radius = keyedStreams(env, "radius", r).map((s) => eps * Math.pow(s.next(), 1 / d))
      delta = tf.mul(tf.div(z, tf.add(l2Norm4(z), 1e-12)), col4(tf.tensor1d(radius)))
    }
    const start = tf.add(x, delta) as tf.Tensor4D
    return clamp ? (tf.clipByValue(start, env.bounds[0], env.bounds[1]) as tf.Tensor4D) : start
  })

/** FGSM / FGM: one eps-step along the sign (Linf) or the normalised (L2) gradient. */
export const fgsmCore = (o: FgsmOptions): Core => (env, x, y) =>
  tf.tidy(() => {
    const p = probe(env, x, untargetedLoss(o.loss)(y), o.eot, "step", 0)
    return project(tf.add(x, tf.mul(direction(p.grad, o.norm), o.eps)) as tf.Tensor4D, x, o.eps, o.norm, env.bounds)
  })

/** One PGD run from one random start. */
const pgdRun = (o: PgdOptions, loss: LossFor) => (env: Env, x: tf.Tensor4D, y: tf.Tensor1D, r: number): RunOut => {
  const alpha = o.stepSize ?? (2.5 * o.eps) / o.steps
  const lossFn = loss(y)
  const fromLogits = logitsArePrediction(env.classifier)
  let xa = o.randomStart ? randomStart(env, x, o.eps, o.norm, o.randomStartClamp, r) : x.clone()
  const best = firstSuccess(x)
  const record = best.record
  for (let t = 0; t < o.steps; t++) {
    const { next, wrong } = tf.tidy(() => {
      const p = probe(env, xa, lossFn, o.eot, "restart", r, "step", t)
      // the start (t = 0) is not a candidate: unclamped it may lie outside the box
      const wrong = o.keepBest && t > 0 && fromLogits ? wrongOf(p.logits, y) : undefined
      const next = project(tf.add(xa, tf.mul(direction(p.grad, o.norm), alpha)) as tf.Tensor4D, x, o.eps, o.norm, env.bounds)
      return { next, wrong }
    })
    if (o.keepBest && t > 0) {
      record(wrong ?? misclassified(env, xa, y, "restart", r, "step", t), xa)
    }
    xa.dispose()
    xa = next
  }
  const { wrong, lossValue } = tf.tidy(() => {
    const pl = predictLogits(env, xa, "restart", r, "final")
    return { wrong: wrongOf(pl, y), lossValue: lossFn(pl).dataSync() as Float32Array }
  })
  record(wrong, xa)
  const xAdv = best.finish(xa)
  xa.dispose()
  return { xAdv, success: best.found, loss: lossValue }
}

/** PGD with restarts: each restart runs on the samples no earlier restart fooled. */
export const pgdCore = (o: PgdOptions): Core => (env, x, y) =>
  worstCase(env, x, y, o.restarts, (e, xs, ys, r) => pgdRun(o, untargetedLoss(o.loss))(e, xs, ys, r))
