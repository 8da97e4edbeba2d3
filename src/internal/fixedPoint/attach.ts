/**
 * FixedPoint's `attach`: a {@link Backward} mode turned into the gradient construction of backward.ts (the
 * implicit mode's adjoint solver and its options, phantom and unrolled steps).
 *
 * @internal
 */
import type * as tf from "@tensorflow/tfjs"
import type { Backward, FixedPointMap, SolverName } from "../../FixedPoint.ts"
import { andersonMethod } from "./anderson.ts"
import { attachImplicit, attachPhantom, attachUnrolled, defaultBackwardMemory } from "./backward.ts"
import { broydenMethod } from "./broyden.ts"
import type { Method } from "./iteration.ts"
import { picardMethod } from "./picard.ts"

/** The adjoint solve's method: each solver with its default settings, Broyden with its own memory setting. */
const backwardMethod = (solver: SolverName, memory: number): Method => {
  switch (solver) {
    case "picard":
      return picardMethod(1)
    case "anderson":
      return andersonMethod(5, 1e-4, 1)
    case "broyden":
      return broydenMethod(memory)
  }
}

/** z* with the gradient of `backward` attached (see FixedPoint's `attach`). */
export const attachBackward = (f: FixedPointMap, zStar: tf.Tensor, backward: Backward, z0?: tf.Tensor): tf.Tensor => {
  switch (backward._tag) {
    case "Implicit":
      return attachImplicit(f, zStar, {
        method: backwardMethod(backward.solver, backward.memory ?? defaultBackwardMemory),
        options: {
          maxIter: backward.maxIter,
          tol: backward.tol,
          stopMode: backward.stopMode ?? "rel",
          returnMode: "best",
          stopping: "batch",
          recordTrajectory: false,
          returnState: false
        },
        ...(backward.onStats !== undefined ? { onStats: backward.onStats } : {})
      })
    case "Phantom":
      return attachPhantom(f, zStar, backward.k, backward.tau)
    case "Unrolled":
      return attachUnrolled(f, zStar, backward.n, z0)
  }
}
