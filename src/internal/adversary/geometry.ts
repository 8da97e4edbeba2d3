/**
 * Perturbation geometry: norms, step directions and the projection onto the eps-ball and the box.
 * Plain synchronous tfjs, meant to run inside `tf.tidy`.
 *
 * @internal
 */
import { tf } from "../../Tensor.ts"
import type { Norm } from "./types.ts"


const perSample = (t: tf.Tensor): tf.Tensor2D => t.reshape([t.shape[0], -1]) as tf.Tensor2D

/** Per-sample L2 norm, shaped [B, 1, 1, 1] for broadcasting. */
export const l2Norm4 = (t: tf.Tensor4D): tf.Tensor4D =>
  tf.tidy(() => tf.sqrt(tf.sum(tf.square(perSample(t)), 1)).reshape([-1, 1, 1, 1]) as tf.Tensor4D)

/** A per-sample [B] tensor shaped for broadcasting over images. */
export const col4 = (v: tf.Tensor1D): tf.Tensor4D => v.reshape([-1, 1, 1, 1]) as tf.Tensor4D

/** The ascent direction of a step: sign for Linf, unit-L2 gradient for L2. */
export const direction = (g: tf.Tensor4D, norm: Norm): tf.Tensor4D =>
  tf.tidy(() => (norm === "Linf" ? tf.sign(g) : tf.div(g, tf.add(l2Norm4(g), 1e-12))) as tf.Tensor4D)

/** Projects onto the eps-ball around x, then onto the box `bounds` (default [0, 1]). */
export const project = (
  xAdv: tf.Tensor4D,
  x: tf.Tensor4D,
  eps: number,
  norm: Norm,
  bounds: readonly [number, number] = [0, 1]
): tf.Tensor4D =>
  tf.tidy(() => {
    const [lo, hi] = bounds
    if (norm === "Linf") {
      return tf.clipByValue(tf.minimum(tf.maximum(xAdv, tf.sub(x, eps)), tf.add(x, eps)), lo, hi) as tf.Tensor4D
    }
    const delta = tf.sub(xAdv, x)
    const n = l2Norm4(delta as tf.Tensor4D)
    // scale by min(1, eps / ||delta||); clipping to the box afterwards only shrinks |delta| per coordinate
    const factor = tf.minimum(1, tf.div(eps, tf.add(n, 1e-12)))
    return tf.clipByValue(tf.add(x, tf.mul(delta, factor)), lo, hi) as tf.Tensor4D
  })
