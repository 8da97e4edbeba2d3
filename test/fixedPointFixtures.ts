/**
 * Fixtures of the FixedPoint tests: float64 linear algebra for references, seeded random problems, an affine map
 * with its exact fixed point, and the three solvers by name.
 */
import { Effect, Schema } from "effect"
import * as FP from "../src/FixedPoint.ts"
import { solveDense } from "../src/internal/fixedPoint/linalg.ts"
import { stream, tf } from "../src/Tensor.ts"


// ---------------------------------------------------------------------------------------------------------------
// float64 helpers
// ---------------------------------------------------------------------------------------------------------------

export type Mat = Float64Array // row-major

export const gaussian = (seed: number) => {
  const s = stream(seed)
  return () => {
    const u = Math.max(s.next(), 1e-12)
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * s.next())
  }
}

export const randn = (seed: number, n: number): Float64Array => {
  const g = gaussian(seed)
  return Float64Array.from({ length: n }, g)
}

/** y = M x for an r x c row-major M. */
export const mv = (M: Mat, r: number, c: number, x: ArrayLike<number>): Float64Array => {
  const y = new Float64Array(r)
  for (let i = 0; i < r; i++) {
    let s = 0
    for (let j = 0; j < c; j++) s += M[i * c + j]! * x[j]!
    y[i] = s
  }
  return y
}

/** y = M^T x for an r x c row-major M. */
export const mtv = (M: Mat, r: number, c: number, x: ArrayLike<number>): Float64Array => {
  const y = new Float64Array(c)
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) y[j] = y[j]! + M[i * c + j]! * x[i]!
  return y
}

export const norm = (x: ArrayLike<number>): number => {
  let s = 0
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!
  return Math.sqrt(s)
}

/** Spectral norm by power iteration on M^T M. */
export const spectralNorm = (M: Mat, r: number, c: number): number => {
  let v = Float64Array.from({ length: c }, (_, i) => 1 + i * 0.01)
  for (let it = 0; it < 300; it++) {
    const w = mtv(M, r, c, mv(M, r, c, v))
    const n = norm(w)
    v = w.map((x) => x / n)
  }
  return norm(mv(M, r, c, v))
}

/** A random n x n matrix with spectral norm exactly `rho`. */
export const contraction = (seed: number, n: number, rho: number): Mat => {
  const M = randn(seed, n * n)
  const s = spectralNorm(M, n, n)
  return M.map((x) => (x * rho) / s)
}

/** A random symmetric n x n matrix with eigenvalues spread over [lo, hi] (Gram-Schmidt basis). */
export const symmetricWithSpectrum = (seed: number, n: number, lo: number, hi: number): Mat => {
  const g = gaussian(seed)
  const Q: Array<Float64Array> = []
  while (Q.length < n) {
    const v = Float64Array.from({ length: n }, g)
    for (const q of Q) {
      let d = 0
      for (let i = 0; i < n; i++) d += v[i]! * q[i]!
      for (let i = 0; i < n; i++) v[i] = v[i]! - d * q[i]!
    }
    const nv = norm(v)
    if (nv > 1e-6) Q.push(v.map((x) => x / nv))
  }
  const M = new Float64Array(n * n)
  for (let k = 0; k < n; k++) {
    const lam = hi - ((hi - lo) * k) / Math.max(1, n - 1)
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) M[i * n + j] = M[i * n + j]! + lam * Q[k]![i]! * Q[k]![j]!
  }
  return M
}

export const relDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let d = 0, s = 0
  for (let i = 0; i < b.length; i++) {
    d += (a[i]! - b[i]!) ** 2
    s += b[i]! ** 2
  }
  return Math.sqrt(d) / Math.max(Math.sqrt(s), 1e-12)
}

export const read = (t: tf.Tensor): Float32Array => t.dataSync() as Float32Array

/** tf.tidy for blocks that return plain JS values (tidy's own type only admits tensor containers). */
export const tidy = <A>(f: () => A): A => {
  let out: A | undefined
  tf.tidy(() => {
    out = f()
  })
  return out as A
}

export const anySchema = <S>(s: S) => s as unknown as Schema.Decoder<unknown>

export const getSolver = Effect.gen(function*() {
  return yield* FP.Solver
})

/**
 * An affine map z -> z A^T + b on [B, N] (row vectors), i.e. per sample z = A z + b, and its fixed point
 * (I - A)^{-1} b per sample in float64.
 */
export const affine = (A: Mat, N: number, b: Float64Array, B: number) => {
  const At = tf.tensor2d(Float32Array.from({ length: N * N }, (_, k) => A[(k % N) * N + Math.floor(k / N)]!), [N, N])
  const bt = tf.tensor2d(Float32Array.from(b), [B, N])
  const f: FP.FixedPointMap = (z) => tf.add(tf.matMul(z, At), bt)
  const exact = (): Float64Array => {
    const out = new Float64Array(B * N)
    for (let s = 0; s < B; s++) {
      const IA = new Float64Array(N * N)
      for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) IA[i * N + j] = (i === j ? 1 : 0) - A[i * N + j]!
      const z = solveDense(IA, b.subarray(s * N, (s + 1) * N), N)!
      out.set(z, s * N)
    }
    return out
  }
  return { f, exact, dispose: () => tf.dispose([At, bt]) }
}

export const solvers = {
  picard: (o: FP.SolveOptionsInput) => FP.makePicardSync(o),
  anderson: (o: FP.SolveOptionsInput) => FP.makeAndersonSync(o),
  broyden: (o: FP.SolveOptionsInput) => FP.makeBroydenSync(o)
} as const
