/**
 * Helpers shared by the test files (numeric comparisons, running an attack synchronously, a small random split).
 */
import { Effect } from "effect"
import { expect } from "vitest"
import type * as Adversary from "../src/Adversary.ts"
import type { Split } from "../src/Data.ts"
import { Rng, tf } from "../src/Tensor.ts"

/** cos(a, b) of two flat arrays. */
export const cosine = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let ab = 0, aa = 0, bb = 0
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!
    aa += a[i]! * a[i]!
    bb += b[i]! * b[i]!
  }
  return ab / Math.sqrt(aa * bb)
}

/** max |a - b| of two arrays of the same length (asserts the lengths match). */
export const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length)
  let d = 0
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!))
  return d
}

/** Runs one attack on a batch with a seeded Rng and copies the result out of its Scope. */
export const perturbSync = (
  attack: Adversary.Attack["Service"],
  classifier: Adversary.Classifier,
  x: tf.Tensor4D,
  y: tf.Tensor1D,
  seed: number
) =>
  Effect.runSync(
    Effect.scoped(Effect.map(attack.perturb(classifier, x, y), (r) => ({
      xAdv: r.xAdv.dataSync().slice() as Float32Array,
      success: r.success,
      queries: r.queries
    }))).pipe(Effect.provide(Rng.seeded(seed)))
  )

/** Runs an Effect that cannot need services synchronously (building attacks and options in tests). */
export const make = <A, E>(self: Effect.Effect<A, E>): A => Effect.runSync(self)

/**
 * A split of `count` random 8x8x1 images in [0, 1) (seeded) with 4 classes; labels are zeros unless given.
 */
export const randomSplit = (count: number, seed: number, labels: Int32Array = new Int32Array(count)): Split => {
  const x = tf.randomUniform([count, 8, 8, 1], 0, 1, "float32", seed)
  const images = x.dataSync() as Float32Array
  x.dispose()
  return { images, labels, count, height: 8, width: 8, channels: 1, classes: 4 }
}
