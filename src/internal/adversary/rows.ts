/**
 * Row bookkeeping of a batch: masks, gathers and scatters by sample, and the first-success tracker.
 * Plain synchronous tfjs, meant to run inside `tf.tidy`.
 *
 * @internal
 */
import { tf } from "../../Tensor.ts"


/** Rows where `mask` (bool/0-1 [B]) holds take `a`, the others `b`. */
export const whereRows = <T extends tf.Tensor>(mask: tf.Tensor1D, a: T, b: T): T =>
  tf.tidy(() => {
    const m = mask.dtype === "bool" ? mask : tf.cast(mask, "bool")
    const shape = [a.shape[0], ...a.shape.slice(1).map(() => 1)]
    return tf.where(m.reshape(shape), a, b) as T
  })

/** A bool mask tensor from a JS 0/1 array. */
export const maskTensor = (m: ArrayLike<number>): tf.Tensor1D => tf.tensor1d(Array.from(m), "bool")

/**
 * Keeps, per sample, the first input at which the prediction went wrong (samples never broken keep x), so more
 * steps can never weaken an attack. `found` marks the broken samples; `finish(fallback)` returns the kept rows
 * for broken samples and `fallback`'s rows for the others, and frees the kept tensor.
 */
export const firstSuccess = (x: tf.Tensor4D) => {
  const n = x.shape[0]
  const found = new Uint8Array(n)
  let kept = x.clone()
  return {
    found,
    record: (wrong: Uint8Array, at: tf.Tensor4D): void => {
      const newly = new Uint8Array(n)
      let any = false
      for (let i = 0; i < n; i++) {
        if (wrong[i] === 1 && found[i] === 0) {
          newly[i] = 1
          found[i] = 1
          any = true
        }
      }
      if (!any) return
      const next = tf.tidy(() => whereRows(maskTensor(newly), at, kept))
      kept.dispose()
      kept = next
    },
    finish: (fallback: tf.Tensor4D): tf.Tensor4D => {
      const out = tf.tidy(() => whereRows(maskTensor(found), kept, fallback))
      kept.dispose()
      return out
    }
  }
}

/** Rows `idx` of t. */
export const gatherRows = <T extends tf.Tensor>(t: T, idx: ArrayLike<number>): T =>
  tf.tidy(() => tf.gather(t, tf.tensor1d(Int32Array.from(idx), "int32")) as T)

/** `full` with its rows `idx` replaced by the rows of `sub` (same order). */
export const scatterRows = <T extends tf.Tensor>(full: T, sub: T, idx: ArrayLike<number>): T =>
  tf.tidy(() => {
    const b = full.shape[0]
    const map = new Int32Array(b)
    for (let i = 0; i < b; i++) map[i] = i
    for (let j = 0; j < idx.length; j++) map[idx[j]!] = b + j
    return tf.gather(tf.concat([full, sub], 0), tf.tensor1d(map, "int32")) as T
  })

/** Indices where `flags[i] === want`. */
export const indicesWhere = (flags: ArrayLike<number>, want: number): Int32Array => {
  const out: Array<number> = []
  for (let i = 0; i < flags.length; i++) if (flags[i] === want) out.push(i)
  return Int32Array.from(out)
}

