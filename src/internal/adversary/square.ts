/**
 * Square attack (Andriushchenko et al., ECCV 2020), Linf, score-based: random square updates of size
 * s = round(sqrt(p h w)) at the vertices of the eps-ball, accepted when the margin loss of `predict` decreases.
 * It never sees a gradient, so it is the black-box check against gradient masking.
 *
 * Each sample draws from its own keyed stream (window, signs), so its result does not depend on its batch.
 */
import { type Stream, tf } from "../../Tensor.ts"
import { indicesWhere } from "./rows.ts"
import { keyedStreams } from "./randomness.ts"
import { predictLogits, subEnv } from "./run.ts"
import type { Core, Env } from "./run.ts"
import type { SquareOptions } from "./options.ts"

/** The fraction of pixels changed at iteration `it` of `budget` (the paper's piecewise-constant schedule). */
export const pSelection = (pInit: number, it: number, budget: number): number => {
  const i = Math.floor((it / budget) * 10000)
  if (i <= 10) return pInit
  if (i <= 50) return pInit / 2
  if (i <= 200) return pInit / 4
  if (i <= 500) return pInit / 8
  if (i <= 1000) return pInit / 16
  if (i <= 2000) return pInit / 32
  if (i <= 4000) return pInit / 64
  if (i <= 6000) return pInit / 128
  if (i <= 8000) return pInit / 256
  return pInit / 512
}


/** Margin and loss (both minimised) of rows of `data` (n x d), by querying `predict`. */
const score = (
  env: Env,
  o: SquareOptions,
  data: Float32Array,
  shape: [number, number, number, number],
  labels: ArrayLike<number>,
  ...path: ReadonlyArray<string | number>
): { margin: Float64Array; loss: Float64Array } => {
  const logits = tf.tidy(() => predictLogits(env, tf.tensor4d(data, shape), ...path).dataSync() as Float32Array)
  const n = shape[0]
  const k = logits.length / n
  const margin = new Float64Array(n)
  const loss = new Float64Array(n)
  for (let i = 0; i < n; i++) {
    const y = labels[i]!
    let other = -Infinity
    let top = -Infinity
    for (let j = 0; j < k; j++) {
      const v = logits[i * k + j]!
      if (v > top) top = v
      if (j !== y && v > other) other = v
    }
    const zy = logits[i * k + y]!
    margin[i] = zy - other
    if (o.loss === "margin") {
      loss[i] = margin[i]!
    } else {
      let sum = 0
      for (let j = 0; j < k; j++) sum += Math.exp(logits[i * k + j]! - top)
      loss[i] = -(top + Math.log(sum) - zy) // minus the cross-entropy
    }
  }
  return { margin, loss }
}

/** The image geometry and the vertex map of one Square run: x_i + sign * eps, clipped to the bounds. */
interface Canvas {
  readonly h: number
  readonly w: number
  readonly c: number
  readonly d: number
  /** the clean images, flat */
  readonly xs: Float32Array
  /** the vertex value of pixel `off` of the image starting at `base` for a sign */
  readonly vertex: (base: number, off: number, sign: number) => number
}

/** The Square initialisation: vertical stripes, one random sign per (column, channel). */
const stripes = (k: Canvas, rows: ReadonlyArray<number>, streams: ReadonlyArray<Stream>): Float32Array => {
  const cur = new Float32Array(rows.length * k.d)
  for (let j = 0; j < rows.length; j++) {
    const s = streams[j]!
    const base = rows[j]! * k.d
    for (let col = 0; col < k.w; col++) {
      for (let ch = 0; ch < k.c; ch++) {
        const sign = s.next() < 0.5 ? -1 : 1
        for (let row = 0; row < k.h; row++) {
          const off = (row * k.w + col) * k.c + ch
          cur[j * k.d + off] = k.vertex(base, off, sign)
        }
      }
    }
  }
  return cur
}

/**
 * One candidate: the current image `cur` (at `from`) with a random square of `side` set to a vertex of the ball,
 * written to `out` (at `to`). The signs are redrawn (a few times) when the square would change nothing.
 */
const squareCandidate = (
  k: Canvas,
  s: Stream,
  base: number,
  cur: Float32Array,
  from: number,
  out: Float32Array,
  to: number,
  side: number
): void => {
  out.set(cur.subarray(from, from + k.d), to)
  const vh = s.int(0, k.h - side)
  const vw = s.int(0, k.w - side)
  const signs = new Float32Array(k.c)
  const changes = (): boolean => {
    for (let row = vh; row < vh + side; row++) {
      for (let col = vw; col < vw + side; col++) {
        for (let ch = 0; ch < k.c; ch++) {
          const off = (row * k.w + col) * k.c + ch
          if (Math.abs(k.vertex(base, off, signs[ch]!) - cur[from + off]!) > 1e-7) return true
        }
      }
    }
    return false
  }
  for (let tries = 0; tries < 10; tries++) {
    for (let ch = 0; ch < k.c; ch++) signs[ch] = s.next() < 0.5 ? -1 : 1
    if (changes()) break
  }
  for (let row = vh; row < vh + side; row++) {
    for (let col = vw; col < vw + side; col++) {
      for (let ch = 0; ch < k.c; ch++) {
        const off = (row * k.w + col) * k.c + ch
        out[to + off] = k.vertex(base, off, signs[ch]!)
      }
    }
  }
}

/** Square Linf with restarts on the samples still unbroken; the lowest loss across restarts is kept. */
export const squareCore = (o: SquareOptions): Core => (env, x, y) => {
  const [b, h, w, c] = x.shape
  const d = h * w * c
  const xs = Float32Array.from(x.dataSync())
  const labels = y.dataSync()
  const [lo, hi] = env.bounds
  const k: Canvas = {
    h,
    w,
    c,
    d,
    xs,
    vertex: (base, off, sign) => {
      const v = xs[base + off]! + sign * o.eps
      return v < lo ? lo : v > hi ? hi : v
    }
  }
  const best = Float32Array.from(xs)
  const bestLoss = new Float64Array(b).fill(Infinity)
  const done = new Uint8Array(b)
  for (let r = 0; r < o.restarts; r++) {
    const rows = Array.from(indicesWhere(done, 0))
    if (rows.length === 0) break
    const streams = keyedStreams(subEnv(env, rows), "restart", r)
    const m = rows.length
    const cur = stripes(k, rows, streams)
    const { margin, loss } = score(env, o, cur, [m, h, w, c], rows.map((i) => labels[i]!), "restart", r, "init")
    for (let it = 1; it < o.queries; it++) {
      const active: Array<number> = []
      for (let j = 0; j < m; j++) if (margin[j]! > 0) active.push(j)
      if (active.length === 0) break
      const side = Math.min(h, w, Math.max(1, Math.round(Math.sqrt(pSelection(o.pInit, it, o.queries) * h * w))))
      const cand = new Float32Array(active.length * d)
      for (let a = 0; a < active.length; a++) {
        const j = active[a]!
        squareCandidate(k, streams[j]!, rows[j]! * d, cur, j * d, cand, a * d, side)
      }
      const scored = score(env, o, cand, [active.length, h, w, c], active.map((j) => labels[rows[j]!]!), "restart", r, "it", it)
      for (let a = 0; a < active.length; a++) {
        const j = active[a]!
        if (scored.loss[a]! < loss[j]!) {
          loss[j] = scored.loss[a]!
          margin[j] = scored.margin[a]!
          cur.set(cand.subarray(a * d, (a + 1) * d), j * d)
        }
      }
    }
    for (let j = 0; j < m; j++) {
      const i = rows[j]!
      const fooled = margin[j]! < 0
      if (fooled || loss[j]! < bestLoss[i]!) {
        bestLoss[i] = loss[j]!
        best.set(cur.subarray(j * d, (j + 1) * d), i * d)
      }
      if (fooled) done[i] = 1
    }
  }
  return tf.tensor4d(best, [b, h, w, c])
}
