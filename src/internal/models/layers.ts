/**
 * Building blocks of the DEQ cells: fast GroupNorm, LayerNorm, weight normalisation, spatial means, nearest
 * upsampling, variational dropout masks and seeded initialisers. Plain synchronous tfjs; callers run them inside
 * a tidy (or a gradient function).
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import { deriveSeed } from "../../Tensor.ts"

// ---------------------------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------------------------

const averagers = new Map<string, Float32Array>()

/**
 * [C, C] matrix that averages per-channel values within each group: entry (c, c') = 1 / (C/G) when c and c' are
 * in the same group. Multiplying [B, C] per-channel means by it gives every channel its group's mean directly, so
 * the statistics never leave the [B, C] layout. The JS array is cached; the tensor belongs to the caller's scope
 * (a model builds it once per forward call in its cell context, see `prepareContext` in block.ts).
 */
export const groupAverager = (channels: number, groups: number): tf.Tensor2D => {
  const key = `${channels}/${groups}`
  let values = averagers.get(key)
  if (values === undefined) {
    const size = channels / groups
    values = new Float32Array(channels * channels)
    for (let c = 0; c < channels; c++) {
      const g = Math.floor(c / size)
      for (let d = g * size; d < (g + 1) * size; d++) values[c * channels + d] = 1 / size
    }
    averagers.set(key, values)
  }
  return tf.tensor2d(values, [channels, channels])
}

/**
 * Per-sample, per-channel means over H and W of an NHWC tensor, as [B, C]: a global average pool (XNNPACK's,
 * 0.27 ms for [64, 14, 14, 32], against 0.59 ms for a batched matMul with ones and 0.82 ms for `tf.sum`, whose
 * wasm kernel transposes first; docs/performance.md).
 */
export const channelMeans = (x: tf.Tensor4D): tf.Tensor2D => {
  const [b, h, w, c] = x.shape
  return tf.reshape(tf.avgPool(x, [h, w], 1, "valid"), [b, c])
}

const broadcastC = (t: tf.Tensor, b: number, c: number) => tf.reshape(t, [b, 1, 1, c])

/**
 * GroupNorm over an NHWC tensor (PyTorch semantics: statistics per sample and group over H, W and the group's
 * channels; biased variance; eps inside the square root), with a hand-written backward pass.
 *
 * Statistics come from E[x] and E[x^2] of per-channel means averaged within groups by `averager`
 * ({@link groupAverager}; built here when not given); everything broadcasts as [B,1,1,C] only, and the variance is
 * clamped at 0 against cancellation. Autodiff through these ops costs about 13x the forward on wasm (the gradients
 * of the broadcasts and reductions are slow); the backward here is dx = dy s + x k1 + k0 with per-channel [B,1,1,C]
 * coefficients from two more channel means (of dy and of dy x), and saves only x and [B, C] statistics
 * (docs/performance.md, "GroupNorm").
 */
export const groupNorm = (
  x: tf.Tensor4D,
  groups: number,
  affine?: { readonly gamma: tf.Tensor; readonly beta: tf.Tensor },
  eps = 1e-5,
  averager?: tf.Tensor2D
): tf.Tensor4D => {
  const [b, h, w, c] = x.shape
  const avg = averager ?? groupAverager(c, groups)
  const hw = h * w
  type Affine = tf.Tensor | undefined
  const forward = (xx: tf.Tensor4D, gamma: Affine, beta: Affine, save: tf.GradSaveFunc) => {
    const mean = tf.matMul(channelMeans(xx), avg) // [B, C]: every channel carries its group's mean
    const meanSq = tf.matMul(channelMeans(tf.square(xx) as tf.Tensor4D), avg)
    const inv = tf.rsqrt(tf.add(tf.relu(tf.sub(meanSq, tf.square(mean))), eps))
    const scale = gamma === undefined ? inv : tf.mul(inv, gamma)
    const shift = beta === undefined ? tf.neg(tf.mul(mean, scale)) : tf.sub(beta, tf.mul(mean, scale))
    save([xx, mean, inv, avg])
    const value = tf.add(tf.mul(xx, broadcastC(scale, b, c)), broadcastC(shift, b, c)) as tf.Tensor4D
    const gradFunc = (dy: tf.Tensor, saved: Array<tf.Tensor>): Array<tf.Tensor> => {
      const [xs, m, iv, av] = saved as [tf.Tensor4D, tf.Tensor2D, tf.Tensor2D, tf.Tensor2D]
      const g = gamma
      const dyMean = channelMeans(dy as tf.Tensor4D) // E_hw[dy]
      const dyxMean = channelMeans(tf.mul(dy, xs) as tf.Tensor4D) // E_hw[dy x]
      // E_hw[dy xhat] per channel, and the group means of dxhat = gamma dy and of dxhat xhat
      const dyXhat = tf.mul(iv, tf.sub(dyxMean, tf.mul(m, dyMean)))
      const m1 = tf.matMul(g === undefined ? dyMean : tf.mul(dyMean, g), av)
      const m2 = tf.matMul(g === undefined ? dyXhat : tf.mul(dyXhat, g), av)
      // dx = inv (gamma dy - m1 - xhat m2) = dy s + x k1 + k0
      const s = g === undefined ? iv : tf.mul(iv, g)
      const k1 = tf.neg(tf.mul(tf.square(iv), m2))
      const k0 = tf.sub(tf.mul(tf.neg(m), k1), tf.mul(iv, m1))
      const dx = tf.add(tf.mul(dy, broadcastC(s, b, c)), tf.add(tf.mul(xs, broadcastC(k1, b, c)), broadcastC(k0, b, c)))
      if (g === undefined) return [dx]
      return [dx, tf.mul(tf.sum(dyXhat, 0), hw), tf.mul(tf.sum(dyMean, 0), hw)]
    }
    return { value, gradFunc }
  }
  if (affine === undefined) {
    const plain = tf.customGrad((xx, save) => forward(xx as tf.Tensor4D, undefined, undefined, save as tf.GradSaveFunc))
    return plain(x) as tf.Tensor4D
  }
  return tf.customGrad((xx, gamma, beta, save) =>
    forward(xx as tf.Tensor4D, gamma as tf.Tensor, beta as tf.Tensor, save as tf.GradSaveFunc)
  )(x, affine.gamma, affine.beta) as tf.Tensor4D
}

/**
 * Reference GroupNorm from `tf.moments` on a [B, H, W, G, C/G] view (docs/method.md, "The model"): slow on
 * wasm, used by the tests to check {@link groupNorm} and its gradient.
 */
export const groupNormReference = (
  x: tf.Tensor4D,
  groups: number,
  affine?: { readonly gamma: tf.Tensor; readonly beta: tf.Tensor },
  eps = 1e-5
): tf.Tensor4D => {
  const [b, h, w, c] = x.shape
  const xg = tf.reshape(x, [b, h, w, groups, c / groups])
  const { mean, variance } = tf.moments(xg, [1, 2, 4], true)
  const y = tf.reshape(tf.div(tf.sub(xg, mean), tf.sqrt(tf.add(variance, eps))), [b, h, w, c]) as tf.Tensor4D
  return affine === undefined ? y : tf.add(tf.mul(y, affine.gamma), affine.beta)
}

// ---------------------------------------------------------------------------------------------------------------
// Dense layers
// ---------------------------------------------------------------------------------------------------------------

/**
 * a w for a [B, K] and w [K, N], with a backward pass that transposes explicitly. tfjs' MatMul gradient multiplies
 * with transposeA / transposeB set, and wasm's BatchMatMul is about 10x slower that way than on a transposed copy
 * (4.0 vs 0.47 ms for [64, 256] x [256, 256]; docs/performance.md, "Dense layers").
 */
export const linear = (a: tf.Tensor, w: tf.Tensor): tf.Tensor2D =>
  tf.customGrad((x, y, save) => {
    ;(save as tf.GradSaveFunc)([x as tf.Tensor, y as tf.Tensor])
    return {
      value: tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D),
      gradFunc: (dy: tf.Tensor, saved: Array<tf.Tensor>) => {
        const [xs, ws] = saved as [tf.Tensor2D, tf.Tensor2D]
        return [tf.matMul(dy as tf.Tensor2D, tf.transpose(ws)), tf.matMul(tf.transpose(xs), dy as tf.Tensor2D)]
      }
    }
  })(a, w) as tf.Tensor2D

/**
 * LayerNorm over the last axis of a [B, N] tensor, with optional gain and bias, and a hand-written backward
 * (dx = inv (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), saving xhat and 1/sigma): a handful of ops instead of
 * autodiff through tf.moments.
 */
export const layerNorm = (
  x: tf.Tensor2D,
  affine?: { readonly gamma: tf.Tensor; readonly beta: tf.Tensor },
  eps = 1e-5
): tf.Tensor2D => {
  const forward = (xx: tf.Tensor, gamma: tf.Tensor | undefined, beta: tf.Tensor | undefined, save: tf.GradSaveFunc) => {
    const { mean, variance } = tf.moments(xx, -1, true)
    const inv = tf.rsqrt(tf.add(variance, eps))
    const xhat = tf.mul(tf.sub(xx, mean), inv)
    save([xhat, inv])
    const value = gamma === undefined || beta === undefined ? xhat : tf.add(tf.mul(xhat, gamma), beta)
    const gradFunc = (dy: tf.Tensor, saved: Array<tf.Tensor>): Array<tf.Tensor> => {
      const [xh, iv] = saved as [tf.Tensor, tf.Tensor]
      const dxhat = gamma === undefined ? dy : tf.mul(dy, gamma)
      const centred = tf.sub(dxhat, tf.mean(dxhat, -1, true))
      const dx = tf.mul(iv, tf.sub(centred, tf.mul(xh, tf.mean(tf.mul(dxhat, xh), -1, true))))
      return gamma === undefined ? [dx] : [dx, tf.sum(tf.mul(dy, xh), 0), tf.sum(dy, 0)]
    }
    return { value: value as tf.Tensor2D, gradFunc }
  }
  if (affine === undefined) {
    const plain = tf.customGrad((xx, save) => forward(xx as tf.Tensor, undefined, undefined, save as tf.GradSaveFunc))
    return plain(x) as tf.Tensor2D
  }
  return tf.customGrad((xx, gamma, beta, save) =>
    forward(xx as tf.Tensor, gamma as tf.Tensor, beta as tf.Tensor, save as tf.GradSaveFunc)
  )(x, affine.gamma, affine.beta) as tf.Tensor2D
}

/**
 * Weight normalisation with one norm per output channel (PyTorch `dim = 0`; axes [0, 1, 2] of a tfjs
 * [kh, kw, in, out] filter): w = g * v / ||v||. Computed inside the traced function so gradients reach g and v.
 */
export const weightNorm = (v: tf.Tensor4D, g: tf.Tensor1D): tf.Tensor4D =>
  tf.mul(v, tf.div(g, tf.sqrt(tf.sum(tf.square(v), [0, 1, 2])))) as tf.Tensor4D

/**
 * Global average pool of an NHWC tensor: [B, C] (the heads' read-out), with a broadcast as its backward.
 */
export const spatialMean = (x: tf.Tensor4D): tf.Tensor2D =>
  tf.customGrad((xx) => {
    const [b, h, w, c] = (xx as tf.Tensor4D).shape
    return {
      value: channelMeans(xx as tf.Tensor4D),
      // dy / HW spread over H and W by a broadcast add: for [64, 14, 14, 16], wasm's AvgPoolGrad takes 11 ms and
      // Tile (tf.broadcastTo) 12 ms, zeros + broadcast 0.8 ms
      gradFunc: (dy: tf.Tensor) => tf.add(tf.zeros([b, h, w, c]), tf.reshape(tf.div(dy, h * w), [b, 1, 1, c]))
    }
  })(x) as tf.Tensor2D

/**
 * Nearest-neighbour upsampling to `size` (PyTorch `mode='nearest'` with an integer factor; docs/method.md,
 * "The model").
 */
export const upsampleNearest = (x: tf.Tensor4D, size: readonly [number, number]): tf.Tensor4D =>
  tf.image.resizeNearestNeighbor(x, [size[0], size[1]], false, false)

/**
 * Spatial size after a 'same' convolution with this stride.
 */
export const strided = (n: number, stride: number): number => Math.ceil(n / stride)

// ---------------------------------------------------------------------------------------------------------------
// Variational dropout
// ---------------------------------------------------------------------------------------------------------------

/**
 * A variational dropout mask: one Bernoulli(1 - p) draw per sample and channel, scaled by 1 / (1 - p), shaped to
 * broadcast against the activation (`[B, 1, 1, C]` for feature maps, `[B, C]` for vectors).
 */
export const dropoutMask = (shape: ReadonlyArray<number>, p: number, seed: number): tf.Tensor =>
  tf.tidy(() => {
    const keep = 1 - p
    const u = tf.randomUniform(shape as Array<number>, 0, 1, "float32", seed)
    return tf.div(tf.cast(tf.less(u, keep), "float32"), keep)
  })

// ---------------------------------------------------------------------------------------------------------------
// Seeded initialisers
// ---------------------------------------------------------------------------------------------------------------

/**
 * Initialisers keyed by the model seed and the parameter's name, so each parameter's values depend only on
 * (seed, name): adding a parameter elsewhere does not shift the others.
 */
export interface Init {
  /** N(0, std^2) */
  readonly normal: (name: string, shape: ReadonlyArray<number>, std: number) => tf.Tensor
  /** U(-bound, bound) */
  readonly uniform: (name: string, shape: ReadonlyArray<number>, bound: number) => tf.Tensor
  readonly zeros: (shape: ReadonlyArray<number>) => tf.Tensor
  readonly ones: (shape: ReadonlyArray<number>) => tf.Tensor
}

/**
 * Initialisers for one model seed.
 */
export const makeInit = (seed: number): Init => ({
  normal: (name, shape, std) => tf.randomNormal(shape as Array<number>, 0, std, "float32", deriveSeed(seed, "init", name)),
  uniform: (name, shape, bound) =>
    tf.randomUniform(shape as Array<number>, -bound, bound, "float32", deriveSeed(seed, "init", name)),
  zeros: (shape) => tf.zeros(shape as Array<number>),
  ones: (shape) => tf.ones(shape as Array<number>)
})
