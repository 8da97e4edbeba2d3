/**
 * Tiny dense linear algebra on the host (float64), for Anderson's per-sample (m+1)x(m+1) systems.
 *
 * @internal
 */

/**
 * Solves A x = b in place by Gaussian elimination with partial pivoting. `a` is n x n row-major and is
 * overwritten. Returns undefined when a pivot is (numerically) zero or anything is non-finite.
 */
export const solveDense = (a: Float64Array, b: Float64Array, n: number): Float64Array | undefined => {
  let scale = 0
  for (let i = 0; i < n * n; i++) {
    const v = Math.abs(a[i]!)
    if (!Number.isFinite(v)) return undefined
    if (v > scale) scale = v
  }
  if (scale === 0) return undefined
  // relative threshold: an exactly rank-deficient system gives pivots at rounding level of the entries
  const tiny = scale * 1e-13
  const x = Float64Array.from(b)
  for (let c = 0; c < n; c++) {
    let p = c
    let best = Math.abs(a[c * n + c]!)
    for (let r = c + 1; r < n; r++) {
      const v = Math.abs(a[r * n + c]!)
      if (v > best) {
        best = v
        p = r
      }
    }
    if (!(best > tiny)) return undefined
    if (p !== c) {
      for (let j = 0; j < n; j++) {
        const t = a[c * n + j]!
        a[c * n + j] = a[p * n + j]!
        a[p * n + j] = t
      }
      const t = x[c]!
      x[c] = x[p]!
      x[p] = t
    }
    const d = a[c * n + c]!
    for (let r = c + 1; r < n; r++) {
      const factor = a[r * n + c]! / d
      if (factor === 0) continue
      for (let j = c; j < n; j++) a[r * n + j] = a[r * n + j]! - factor * a[c * n + j]!
      x[r] = x[r]! - factor * x[c]!
    }
  }
  for (let r = n - 1; r >= 0; r--) {
    let s = x[r]!
    for (let j = r + 1; j < n; j++) s -= a[r * n + j]! * x[j]!
    x[r] = s / a[r * n + r]!
  }
  for (let i = 0; i < n; i++) if (!Number.isFinite(x[i]!)) return undefined
  return x
}
