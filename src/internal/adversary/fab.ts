/**
 * FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), Linf, written from the paper and the
 * shape of AutoAttack's implementation: at each step the decision boundary between the true class y and the target
 * t is linearised at the current point x_k, w = grad(f_t - f_y), b = w x_k - (f_t - f_y)(x_k); both x_k and the
 * original x are projected onto that hyperplane (minimal Linf step inside the box), and the next point is the
 * overshot (eta) convex combination x_k+1 = (x_k + eta d_k)(1 - alpha) + (x + eta d_0) alpha, with
 * alpha = min(|d_k| / (|d_k| + |d_0|), alpha_max) biased towards the original. Whenever x_k+1 is misclassified the
 * smallest such perturbation is kept and x_k+1 is pulled back towards x by beta. The attack minimises the
 * perturbation; a sample counts as broken when it found one within eps (it then stops: only success at eps is
 * reported). Restarts after the first start from a random point at half the radius.
 *
 * @internal
 */
import { tf } from "../../Tensor.ts"
import { indicesWhere } from "./rows.ts"
import { keyedStreams } from "./randomness.ts"
import { predictLogits, probe, subEnv, wrongOf } from "./run.ts"
import type { Core, Env } from "./run.ts"
import type { FabOptions } from "./options.ts"
import { targetedWorstCase } from "./pgd.ts"
import type { RunOut } from "./pgd.ts"

/** Scratch space for {@link projectLinf}, reused across calls of one run. */
interface Scratch {
  room: Float64Array
  order: Uint32Array
}

const scratch = (d: number): Scratch => ({ room: new Float64Array(d), order: new Uint32Array(d) })

/**
 * The smallest Linf step d (written to `out`, length d) that moves point p onto the hyperplane w z = b while keeping
 * p + d inside [lo, hi]. With a radius r every coordinate can move min(r, room_i) towards the plane, which changes
 * w z by sum_i |w_i| min(r, room_i): increasing and piecewise linear in r, so the smallest r is found exactly by
 * walking the coordinates in order of their room. When the plane cannot be reached inside the box, every
 * coordinate moves to its bound (the closest the box allows).
 */
export const projectLinf = (
  p: ArrayLike<number>,
  w: ArrayLike<number>,
  b: number,
  lo: number,
  hi: number,
  out: Float64Array | Float32Array,
  space: Scratch = scratch(p.length)
): void => {
  const d = p.length
  let c = -b
  for (let i = 0; i < d; i++) c += w[i]! * p[i]!
  out.fill(0)
  if (c === 0 || !Number.isFinite(c)) return
  // moving coordinate i by +1 changes w z by w_i: to lower c > 0 move against sign(w_i), to raise c < 0 along it
  const toward = c > 0 ? -1 : 1
  const need = Math.abs(c)
  const { room, order } = space
  let m = 0
  let total = 0
  let reach = 0
  for (let i = 0; i < d; i++) {
    const wi = w[i]!
    if (wi === 0) continue
    const up = toward * wi > 0
    const r = up ? hi - p[i]! : p[i]! - lo
    room[i] = r > 0 ? r : 0
    order[m++] = i
    total += Math.abs(wi)
    reach += Math.abs(wi) * room[i]!
  }
  if (m === 0) return
  const sign = (i: number) => (toward * w[i]! > 0 ? 1 : -1)
  if (reach <= need) {
    for (let j = 0; j < m; j++) {
      const i = order[j]!
      out[i] = sign(i) * room[i]!
    }
    return
  }
  const idx = order.subarray(0, m)
  idx.sort((a, bb) => room[a]! - room[bb]!)
  let capped = 0
  let open = total
  let r = 0
  for (let j = 0; j < m; j++) {
    const i = idx[j]!
    r = (need - capped) / open
    if (r <= room[i]!) break
    capped += Math.abs(w[i]!) * room[i]!
    open -= Math.abs(w[i]!)
  }
  for (let j = 0; j < m; j++) {
    const i = idx[j]!
    out[i] = sign(i) * Math.min(r, room[i]!)
  }
}

const linf = (a: ArrayLike<number>, from = 0, to = a.length): number => {
  let m = 0
  for (let i = from; i < to; i++) m = Math.max(m, Math.abs(a[i]!))
  return m
}

/**
 * One FAB-T run (number `run`, for its draws) towards `target` (per row) from x, or from a random start at half the
 * radius for restart > 0.
 */
const fabRun = (
  o: FabOptions,
  env: Env,
  x: tf.Tensor4D,
  y: tf.Tensor1D,
  target: Int32Array,
  run: number,
  restart: number
): RunOut => {
  const [n, h, w, ch] = x.shape
  const d = h * w * ch
  const [lo, hi] = env.bounds
  const clip = (v: number) => (v < lo ? lo : v > hi ? hi : v)
  const x0 = x.dataSync() as Float32Array
  const x1 = Float32Array.from(x0)
  if (restart > 0) {
    const streams = keyedStreams(env, "restart", restart)
    for (let i = 0; i < n; i++) {
      const t = Float64Array.from({ length: d }, () => 2 * streams[i]!.next() - 1)
      const m = linf(t) || 1
      for (let j = 0; j < d; j++) x1[i * d + j] = clip(x0[i * d + j]! + (0.5 * o.eps * t[j]!) / m)
    }
  }
  const best = Float32Array.from(x0)
  const norm = new Float64Array(n).fill(Infinity)
  const done = new Uint8Array(n)
  const labels = y.dataSync()
  const space = scratch(d)
  const d1 = new Float64Array(d), d2 = new Float64Array(d)
  for (let it = 0; it < o.steps; it++) {
    const rows = indicesWhere(done, 0)
    if (rows.length === 0) break
    const sub = subEnv(env, rows)
    const yr = Int32Array.from(rows, (i) => labels[i]!)
    const tr = Int32Array.from(rows, (i) => target[i]!)
    const { df, dg } = tf.tidy(() => {
      const xs = tf.tensor4d(rows.length === n ? x1 : gather(x1, rows, d), [rows.length, h, w, ch])
      const ys = tf.tensor1d(yr, "int32"), ts = tf.tensor1d(tr, "int32")
      // f_t - f_y: negative while the sample is still classified as y rather than t
      const gap = (logits: tf.Tensor2D) =>
        tf.sum(tf.mul(logits, tf.sub(tf.oneHot(ts, logits.shape[1]), tf.oneHot(ys, logits.shape[1]))), 1) as tf.Tensor1D
      const p = probe(sub, xs, gap, o.eot, "run", run, "step", it)
      return { df: p.loss.dataSync() as Float32Array, dg: p.grad.dataSync() as Float32Array }
    })
    for (let j = 0; j < rows.length; j++) {
      const i = rows[j]!
      const g = dg.subarray(j * d, (j + 1) * d)
      const xi = x1.subarray(i * d, (i + 1) * d)
      const oi = x0.subarray(i * d, (i + 1) * d)
      let wx = 0
      for (let q = 0; q < d; q++) wx += g[q]! * xi[q]!
      const b = wx - df[j]!
      projectLinf(xi, g, b, lo, hi, d1, space)
      projectLinf(oi, g, b, lo, hi, d2, space)
      const a1 = Math.max(linf(d1), 1e-8), a2 = Math.max(linf(d2), 1e-8)
      const alpha = Math.min(Math.max(a1 / (a1 + a2), 0), o.alphaMax)
      for (let q = 0; q < d; q++) {
        xi[q] = clip((xi[q]! + o.eta * d1[q]!) * (1 - alpha) + (oi[q]! + o.eta * d2[q]!) * alpha)
      }
    }
    const wrong = tf.tidy(() =>
      wrongOf(predictLogits(sub, tf.tensor4d(gather(x1, rows, d), [rows.length, h, w, ch]), "run", run, "step", it), tf.tensor1d(yr, "int32"))
    )
    for (let j = 0; j < rows.length; j++) {
      if (wrong[j] !== 1) continue
      const i = rows[j]!
      let t = 0
      for (let q = i * d; q < (i + 1) * d; q++) t = Math.max(t, Math.abs(x1[q]! - x0[q]!))
      if (t < norm[i]!) {
        norm[i] = t
        best.set(x1.subarray(i * d, (i + 1) * d), i * d)
      }
      for (let q = i * d; q < (i + 1) * d; q++) x1[q] = x0[q]! + (x1[q]! - x0[q]!) * o.beta
      // only success within eps is reported: a sample that has one stops
      if (norm[i]! <= o.eps) done[i] = 1
    }
  }
  rescaleToBall(o, env, x0, best, norm, labels, x.shape, run)
  const success = Uint8Array.from(norm, (v) => (v <= o.eps ? 1 : 0))
  const out = Float32Array.from(x0)
  for (let i = 0; i < n; i++) if (success[i] === 1) out.set(best.subarray(i * d, (i + 1) * d), i * d)
  return {
    xAdv: tf.tensor4d(out, [n, h, w, ch]),
    success,
    // rows never broken within eps: the nearer the boundary found, the better
    loss: Float32Array.from(norm, (v) => (Number.isFinite(v) ? -v : -1e30))
  }
}

/**
 * The overshoot leaves the smallest perturbation found a little above the boundary (about 0.5% of its norm on a
 * linear classifier). A sample whose smallest perturbation is just above eps tries it shrunk to eps along the same
 * direction (one forward pass each); when that point is still misclassified it is kept.
 */
const rescaleToBall = (
  o: FabOptions,
  env: Env,
  x0: Float32Array,
  best: Float32Array,
  norm: Float64Array,
  labels: ArrayLike<number>,
  shape: [number, number, number, number],
  run: number
): void => {
  const [, h, w, ch] = shape
  const d = h * w * ch
  const rows = Int32Array.from(indicesWhere(Uint8Array.from(norm, (v) => (v > o.eps && Number.isFinite(v) ? 1 : 0)), 1))
  if (rows.length === 0 || o.eps === 0) return
  const cand = new Float32Array(rows.length * d)
  for (let j = 0; j < rows.length; j++) {
    const i = rows[j]!
    const s = o.eps / norm[i]!
    for (let q = 0; q < d; q++) cand[j * d + q] = x0[i * d + q]! + (best[i * d + q]! - x0[i * d + q]!) * s
  }
  const wrong = tf.tidy(() =>
    wrongOf(
      predictLogits(subEnv(env, rows), tf.tensor4d(cand, [rows.length, h, w, ch]), "run", run, "rescale"),
      tf.tensor1d(Int32Array.from(rows, (i) => labels[i]!), "int32")
    )
  )
  for (let j = 0; j < rows.length; j++) {
    if (wrong[j] !== 1) continue
    const i = rows[j]!
    best.set(cand.subarray(j * d, (j + 1) * d), i * d)
    norm[i] = linf(cand.subarray(j * d, (j + 1) * d).map((v, q) => v - x0[i * d + q]!))
  }
}

const gather = (a: Float32Array, rows: Int32Array, d: number): Float32Array => {
  const out = new Float32Array(rows.length * d)
  for (let j = 0; j < rows.length; j++) out.set(a.subarray(rows[j]! * d, (rows[j]! + 1) * d), j * d)
  return out
}

/**
 * FAB-T: for each of the `targets` most likely wrong classes (ranked by the clean logits), `restarts` runs on the
 * samples not yet broken within eps.
 */
export const fabTargetedCore = (o: FabOptions): Core => (env, x, y) =>
  targetedWorstCase(env, x, y, o, (e, xs, ys, target, t, r) => fabRun(o, e, xs, ys, target, (t - 1) * o.restarts + r, r))
