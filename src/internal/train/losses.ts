/**
 * Losses and the TRADES inner maximisation (plain tfjs).
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import { type Rows, rowsOfDraw } from "../../Regularizers.ts"
import { untaped } from "../../Tensor.ts"

/**
 * Mean cross-entropy of logits [B, C] against int labels [B] over a batch of `total` rows (default B): the sum
 * over these rows divided by `total`, so the shards of a batch sum to its mean. (The attacks' per-sample loss is
 * adversary/losses `crossEntropy`.)
 */
export const meanCrossEntropy = (logits: tf.Tensor2D, y: tf.Tensor1D, total: number = logits.shape[0]): tf.Scalar =>
  tf.tidy(() => {
    const logp = tf.logSoftmax(logits)
    return tf.div(tf.neg(tf.sum(tf.mul(logp, tf.oneHot(y, logits.shape[1])))), total) as tf.Scalar
  })

/** KL(softmax(p) || softmax(q)) summed over batch and classes (PyTorch KLDivLoss(reduction="sum")). */
export const klSum = (p: tf.Tensor2D, q: tf.Tensor2D): tf.Scalar =>
  tf.tidy(() => {
    const logp = tf.logSoftmax(p)
    return tf.sum(tf.mul(tf.exp(logp), tf.sub(logp, tf.logSoftmax(q)))) as tf.Scalar
  })

/** Correct predictions of logits [B, C] against labels [B] (a host read). */
export const correct = (logits: tf.Tensor, y: tf.Tensor1D): number =>
  tf.tidy(() => tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), y), "int32")).dataSync()[0]!)

/** Settings of the TRADES inner maximisation. */
export interface TradesAttackSettings {
  readonly eps: number
  readonly stepSize: number
  readonly steps: number
  /** "normal": x + 0.001 N(0, 1), not clamped (the paper); "uniform": x + U(-eps, eps) clamped; "none": x */
  readonly start: "uniform" | "normal" | "none"
  readonly seed: number
  /** x holds these rows of a larger batch: the start noise is that batch's rows */
  readonly rows?: Rows
}

/**
 * TRADES' x_adv: `steps` signed ascent steps on KL(p(x) || p(x_adv)) (sum reduction), each followed by the
 * projection onto the eps-ball around x and onto [0, 1]. `logits(input, call)` is called once per clean and once
 * per adversarial forward, `call` numbering the calls, so a randomized read-out draws afresh each time (the clean
 * logits are recomputed at every step, as the official code). Runs off any enclosing tape; returns a new tensor.
 */
export const tradesAttack = (
  logits: (input: tf.Tensor4D, call: number) => tf.Tensor2D,
  x: tf.Tensor4D,
  s: TradesAttackSettings
): tf.Tensor4D =>
  untaped(() =>
    tf.tidy(() => {
      let xa = (s.start === "normal" ?
        tf.add(x, tf.mul(rowsOfDraw(x.shape, s.rows, (sh) => tf.randomNormal(sh, 0, 1, "float32", s.seed)), 0.001)) :
        s.start === "uniform" ?
        tf.clipByValue(
          tf.add(x, rowsOfDraw(x.shape, s.rows, (sh) => tf.randomUniform(sh, -s.eps, s.eps, "float32", s.seed))),
          0,
          1
        ) :
        tf.clone(x)) as tf.Tensor4D
      let call = 0
      for (let t = 0; t < s.steps; t++) {
        const prev = xa
        const next = tf.tidy(() => {
          const clean = logits(x, call++)
          const adv = call++
          const g = tf.grad((xx: tf.Tensor) => klSum(clean, logits(xx as tf.Tensor4D, adv)))(prev)
          const stepped = tf.add(prev, tf.mul(tf.sign(g), s.stepSize))
          return tf.clipByValue(tf.minimum(tf.maximum(stepped, tf.sub(x, s.eps)), tf.add(x, s.eps)), 0, 1) as tf.Tensor4D
        })
        prev.dispose()
        xa = next
      }
      return xa
    })
  )
