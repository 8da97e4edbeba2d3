/**
 * The trajectory view's measurements: per recorded state z_n, h(z_n) read directly, its prediction entropy and
 * prediction, and the residual of one fresh application of f; then the host-side per-state reports.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { StateReport } from "../../Dynamics.ts"

/** Per-state measurements stacked as [N, B] tensors, and each state's logits (all owned by the caller). */
export interface Measured {
  readonly entropy: tf.Tensor
  readonly rel: tf.Tensor
  readonly abs: tf.Tensor
  readonly predictions: tf.Tensor
  readonly logits: Array<tf.Tensor2D>
}

/** Prediction entropy -sum_c p_c log p_c per sample of logits [B, C]. */
export const entropyOf = (logits: tf.Tensor): tf.Tensor1D =>
  tf.tidy(() => {
    const logp = tf.logSoftmax(logits)
    return tf.neg(tf.sum(tf.mul(tf.exp(logp), logp), -1)) as tf.Tensor1D
  })

/** Measures every state in the caller's tidy: h(z_n), its entropy and argmax, and ||f(z_n) - z_n|| (abs, rel). */
export const measure = (
  states: ReadonlyArray<tf.Tensor>,
  head: (z: tf.Tensor) => tf.Tensor2D,
  f: (z: tf.Tensor) => tf.Tensor,
  batch: number
): Measured => {
  const ent: Array<tf.Tensor> = [], rel: Array<tf.Tensor> = [], abs: Array<tf.Tensor> = []
  const pred: Array<tf.Tensor> = [], logits: Array<tf.Tensor2D> = []
  for (const z of states) {
    const l = head(z)
    ent.push(entropyOf(l))
    pred.push(tf.argMax(l, 1))
    const fz = tf.reshape(f(z), [batch, -1])
    const diff = tf.norm(tf.sub(fz, tf.reshape(z, [batch, -1])), "euclidean", 1)
    abs.push(diff)
    // the solver's relative residual, with its epsilon (FixedPoint stats use the same definition)
    rel.push(tf.div(diff, tf.add(tf.norm(fz, "euclidean", 1), 1e-9)))
    logits.push(l)
  }
  const stack = (ts: Array<tf.Tensor>): tf.Tensor => (ts.length === 0 ? tf.zeros([0, batch]) : tf.stack(ts))
  return { entropy: stack(ent), rel: stack(rel), abs: stack(abs), predictions: tf.cast(stack(pred), "int32"), logits }
}

/** Integer labels from int [B] or one-hot [B, C] labels. */
export const labelsOf = (y: tf.Tensor): Int32Array => {
  const t = tf.tidy(() => (y.rank === 2 ? tf.argMax(y, 1) : tf.cast(y, "int32")))
  const labels = t.dataSync() as Int32Array
  t.dispose()
  return labels
}

const mean = (a: ArrayLike<number>): number => {
  let s = 0
  for (let i = 0; i < a.length; i++) s += a[i]!
  return a.length === 0 ? 0 : s / a.length
}

/**
 * The per-state reports from measurements (read back once, then freed; the logits are kept only with
 * `keepLogits`, otherwise freed too).
 */
export const reportsOf = (
  m: Measured,
  batch: number,
  labels: Int32Array | undefined,
  keepLogits: boolean
): Array<StateReport> => {
  const entropy = m.entropy.dataSync() as Float32Array, relRes = m.rel.dataSync() as Float32Array
  const absRes = m.abs.dataSync() as Float32Array, preds = m.predictions.dataSync() as Int32Array
  tf.dispose([m.entropy, m.rel, m.abs, m.predictions])
  if (!keepLogits) tf.dispose(m.logits)
  return m.logits.map((l, i) => {
    const slice = <A extends Float32Array | Int32Array>(a: A) => a.slice(i * batch, (i + 1) * batch) as A
    const predictions = slice(preds)
    const e = slice(entropy), rr = slice(relRes)
    let correct = 0
    if (labels !== undefined) for (let b = 0; b < batch; b++) if (predictions[b] === labels[b]) correct++
    return {
      n: i + 1,
      predictions,
      entropy: e,
      meanEntropy: mean(e),
      relResidual: rr,
      meanRelResidual: mean(rr),
      absResidual: slice(absRes),
      ...(labels !== undefined ? { accuracy: correct / batch } : {}),
      ...(keepLogits ? { logits: l } : {})
    }
  })
}
