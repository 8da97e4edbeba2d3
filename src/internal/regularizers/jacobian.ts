/**
 * Hutchinson estimate of the squared Frobenius norm of a map's Jacobian (locuslab/deq `jac_loss_estimate`).
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import { deriveSeed } from "../../Tensor.ts"

/** Settings of one estimate. */
export interface HutchinsonSettings {
  /** probe vectors averaged (locuslab: 2) */
  readonly probes: number
  readonly distribution: "normal" | "rademacher"
  /** root seed of the probes (probe i uses deriveSeed(seed, "probe", i)) */
  readonly seed: number
  /** divide by the batch's numel (B * N), as locuslab does (default true) */
  readonly normalize: boolean
  /** z holds rows offset.. of a batch of `total` rows: probes are that batch's rows, numel is the batch's */
  readonly rows?: { readonly offset: number; readonly total: number }
}

const probe = (shape: ReadonlyArray<number>, distribution: "normal" | "rademacher", seed: number): tf.Tensor =>
  tf.tidy(() =>
    distribution === "normal" ?
      tf.randomNormal(shape as Array<number>, 0, 1, "float32", seed) :
      tf.sub(tf.mul(tf.cast(tf.greater(tf.randomUniform(shape as Array<number>, 0, 1, "float32", seed), 0.5), "float32"), 2), 1)
  )

/**
 * A batch-shaped draw for rows `offset`.. of a batch of `total` rows: drawn at the whole batch's shape (one seeded
 * tfjs op), then the rows taken, so every shard of a batch sees exactly its rows of the whole batch's draw.
 */
export const rowsOfDraw = (
  shape: ReadonlyArray<number>,
  rows: { readonly offset: number; readonly total: number } | undefined,
  draw: (shape: Array<number>) => tf.Tensor
): tf.Tensor => {
  if (rows === undefined || (rows.offset === 0 && rows.total === shape[0])) return draw([...shape])
  return tf.tidy(() =>
    tf.slice(draw([rows.total, ...shape.slice(1)]), [rows.offset, ...shape.slice(1).map(() => 0)], [...shape])
  )
}

/**
 * sum_b ||v_b^T J_f(z_b)||^2 averaged over probes (and divided by the batch's numel when normalising): an
 * unbiased estimate of sum_b ||J_f(z_b)||_F^2 (/ numel). v^T J is a VJP through `f` taken with `tf.grad`; inside
 * an enclosing `tf.variableGrads` the VJP is itself recorded, so the estimate is differentiable w.r.t. everything
 * f closes over (double backward, PyTorch's create_graph=True). z is treated as a constant point.
 */
export const hutchinson = (f: (z: tf.Tensor) => tf.Tensor, z: tf.Tensor, s: HutchinsonSettings): tf.Scalar =>
  tf.tidy(() => {
    const terms: Array<tf.Tensor> = []
    for (let i = 0; i < s.probes; i++) {
      const v = rowsOfDraw(z.shape, s.rows, (shape) => probe(shape, s.distribution, deriveSeed(s.seed, "probe", i)))
      const vJ = tf.grad((zz: tf.Tensor) => tf.sum(tf.mul(f(zz), v)))(z)
      terms.push(tf.sum(tf.square(vJ)))
    }
    const mean = tf.div(terms.length === 1 ? terms[0]! : tf.addN(terms), s.probes)
    const numel = s.rows === undefined ? z.size : (z.size / z.shape[0]) * s.rows.total
    return (s.normalize ? tf.div(mean, numel) : mean) as tf.Scalar
  })
