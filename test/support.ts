/**
 * Helpers shared by the test files (numeric comparisons, running an attack synchronously).
 */
import { Effect } from "effect"
import { expect } from "vitest"
import type * as Adversary from "../src/Adversary.ts"
import { Rng, type tf } from "../src/Tensor.ts"

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
