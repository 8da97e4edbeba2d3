/**
 * Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration: z <- (1 - tau) z + tau f(z).
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { Method } from "./iteration.ts"
import { share } from "./iteration.ts"

/** The Picard method with damping `tau` in (0, 1]. */
export const picardMethod = (tau: number): Method => ({
  name: "picard",
  start: () => ({
    propose: (cur) =>
      // tau = 1 is the plain iteration: no arithmetic, just a new handle on f(z)
      tau === 1 ? (share(cur.fz) as tf.Tensor) : tf.add(cur.z, tf.mul(cur.g, tau)),
    accept: () => {},
    dispose: () => {}
  })
})
