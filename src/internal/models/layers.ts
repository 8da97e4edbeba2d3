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
 * [C, C] matrix that averages per-channel sums within each group: entry (c, c') = 1 / (n * C/G) when c and c' are
 * in the same group. Multiplying the [B, C] channel sums by it gives every channel its group's mean directly, so
 * the statistics never leave the [B, C] layout. The JS array is cached; the tensor is made per call (a cached
 * tensor would outlive every tidy and break leak accounting).
 */
const groupAverager = (channels: number, groups: number, n: number): tf.Tensor2D => {
  const key = `${channels}/${groups}/${n}`
  let values = averagers.get(key)
  if (values === undefined) {
    const size = channels / groups
    values = new Float32Array(channels * channels)
    const w = 1 / (n * size)
    for (let c = 0; c < channels; c++) {
      const g = Math.floor(c / size)
      for (let d = g * size; d < (g + 1) * size; d++) values[c * channels + d] = w
    }
    averagers.set(key, values)
  }
  return tf.tensor2d(values, [channels, channels])
}

/**
 * Per-sample, per-channel sums of an NHWC tensor as [B, C], computed as `matMul(ones[B,1,HW], x[B,HW,C])`:
 * wasm reductions over leading axes transpose first, a batched matMul does not.
 */
export const channelSums = (x: tf.Tensor4D): tf.Tensor2D => {
  const [b, h, w, c] = x.shape
  const n = h * w
  const ones = tf.ones([b, 1, n])
  return tf.matMul(ones, tf.reshape(x, [b, n, c])).reshape([b, c]) as tf.Tensor2D
}

/**
 * GroupNorm over an NHWC tensor (PyTorch semantics: statistics per sample and group over H, W and the group's
 * channels; biased variance; eps inside the square root). Statistics come from E[x] and E[x^2] of channel sums
 * (see `channelSums`) and everything broadcasts as [B,1,1,C] only (stack.md, "Making a DEQ step fast"). The variance
 * is clamped at 0 against cancellation. Gradients come from autodiff.
 */
export const groupNorm = (
  x: tf.Tensor4D,
  groups: number,
  affine?: { readonly gamma: tf.Tensor; readonly beta: tf.Tensor },
  eps = 1e-5
): tf.Tensor4D => {
  const [b, h, w, c] = x.shape
  const avg = groupAverager(c, groups, h * w)
  const mean = tf.matMul(channelSums(x), avg) // [B, C]
  const meanSq = tf.matMul(channelSums(tf.square(x) as tf.Tensor4D), avg)
  const variance = tf.relu(tf.sub(meanSq, tf.square(mean)))
  const inv = tf.rsqrt(tf.add(variance, eps))
  const scale = affine === undefined ? inv : tf.mul(inv, affine.gamma)
  const shift = affine === undefined ? tf.neg(tf.mul(mean, inv)) : tf.sub(affine.beta, tf.mul(mean, scale))
  return tf.add(tf.mul(x, tf.reshape(scale, [b, 1, 1, c])), tf.reshape(shift, [b, 1, 1, c]))
}

/**
 * Reference GroupNorm from `tf.moments` on a [B, H, W, G, C/G] view (method.md 11.2): slow on wasm, used by the
 * tests to check {@link groupNorm} and its gradient.
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

/**
 * LayerNorm over the last axis of a [B, N] tensor, with optional gain and bias.
 */
export const layerNorm = (
  x: tf.Tensor2D,
  affine?: { readonly gamma: tf.Tensor; readonly beta: tf.Tensor },
  eps = 1e-5
): tf.Tensor2D => {
  const { mean, variance } = tf.moments(x, -1, true)
  const y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))) as tf.Tensor2D
  return affine === undefined ? y : tf.add(tf.mul(y, affine.gamma), affine.beta)
}

/**
 * Weight normalisation with one norm per output channel (PyTorch `dim = 0`; axes [0, 1, 2] of a tfjs
 * [kh, kw, in, out] filter): w = g * v / ||v||. Computed inside the traced function so gradients reach g and v.
 */
export const weightNorm = (v: tf.Tensor4D, g: tf.Tensor1D): tf.Tensor4D =>
  tf.mul(v, tf.div(g, tf.sqrt(tf.sum(tf.square(v), [0, 1, 2])))) as tf.Tensor4D

/**
 * Global average pool of an NHWC tensor: [B, C].
 */
export const spatialMean = (x: tf.Tensor4D): tf.Tensor2D => {
  const [, h, w] = x.shape
  return tf.div(channelSums(x), h * w) as tf.Tensor2D
}

/**
 * Nearest-neighbour upsampling to `size` (PyTorch `mode='nearest'` with an integer factor, method.md 11.4).
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
