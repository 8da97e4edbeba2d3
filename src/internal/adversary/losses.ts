/**
 * Per-sample attack losses: [B, K] logits and int32 labels [B] -> [B]; attacks maximise them.
 * Plain synchronous tfjs, meant to run inside `tf.tidy`.
 *
 * @internal
 */
import { tf, untaped } from "../../Tensor.ts"


/** Per-sample cross-entropy. */
export const crossEntropy = (logits: tf.Tensor2D, y: tf.Tensor1D): tf.Tensor1D =>
  tf.tidy(() => {
    const k = logits.shape[1]
    const logp = tf.logSoftmax(logits)
    return tf.neg(tf.sum(tf.mul(logp, tf.oneHot(y, k)), 1)) as tf.Tensor1D
  })

/** The logit of the true class and the largest other logit. */
const trueAndOther = (logits: tf.Tensor2D, y: tf.Tensor1D): [tf.Tensor1D, tf.Tensor1D] => {
  const k = logits.shape[1]
  const oh = tf.oneHot(y, k)
  const zy = tf.sum(tf.mul(logits, oh), 1) as tf.Tensor1D
  const other = tf.max(tf.sub(logits, tf.mul(oh, 1e9)), 1) as tf.Tensor1D
  return [zy, other]
}

/** Margin z_y - max_{j != y} z_j (negative when misclassified). */
export const margin = (logits: tf.Tensor2D, y: tf.Tensor1D): tf.Tensor1D =>
  tf.tidy(() => {
    const [zy, other] = trueAndOther(logits, y)
    return tf.sub(zy, other) as tf.Tensor1D
  })

/**
 * The j-th largest logit of each row for j < n, differentiable: tfjs has no TopK gradient, so the ranking is taken
 * off the tape and the values gathered with one-hot masks.
 */
const ranked = (logits: tf.Tensor2D, n: number): Array<tf.Tensor1D> => {
  const k = logits.shape[1]
  const order = untaped(() => tf.topk(logits, n).indices)
  return Array.from({ length: n }, (_, j) =>
    tf.sum(tf.mul(logits, tf.oneHot(order.slice([0, j], [-1, 1]).reshape([-1]) as tf.Tensor1D, k)), 1) as tf.Tensor1D)
}

/** Difference-of-logits-ratio loss, -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3); needs 3 classes. */
export const dlr = (logits: tf.Tensor2D, y: tf.Tensor1D): tf.Tensor1D =>
  tf.tidy(() => {
    const [zy, other] = trueAndOther(logits, y)
    const [z1, , z3] = ranked(logits, 3)
    return tf.div(tf.neg(tf.sub(zy, other)), tf.add(tf.sub(z1!, z3!), 1e-12)) as tf.Tensor1D
  })

/** Targeted DLR, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2); needs 4 classes. */
export const dlrTargeted = (logits: tf.Tensor2D, y: tf.Tensor1D, target: tf.Tensor1D): tf.Tensor1D =>
  tf.tidy(() => {
    const k = logits.shape[1]
    const zy = tf.sum(tf.mul(logits, tf.oneHot(y, k)), 1)
    const zt = tf.sum(tf.mul(logits, tf.oneHot(target, k)), 1)
    const [z1, , z3, z4] = ranked(logits, 4)
    const d = tf.sub(z1!, tf.mul(tf.add(z3!, z4!), 0.5))
    return tf.div(tf.neg(tf.sub(zy, zt)), tf.add(d, 1e-12)) as tf.Tensor1D
  })

