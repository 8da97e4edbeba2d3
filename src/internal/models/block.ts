/**
 * Convolutional pieces shared by the conv and multiscale DEQs: the injection stem, the MDEQ residual block
 * (docs/method.md, "The model"), weight-normed convolutions and their parameter specs.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { CellContext } from "../../Dynamics.ts"
import type { ParamSpec } from "./spec.ts"
import { groupAverager, groupNorm, type Init, weightNorm } from "./layers.ts"

/**
 * Looks up a variable by name (throws on a programming error).
 */
export type Get = (name: string) => tf.Variable

/**
 * The conv models' per-call context: the cell context plus GroupNorm's group averagers keyed "channels/groups",
 * built once per forward call instead of once per application of f.
 */
export interface ConvContext extends CellContext {
  readonly averagers?: Readonly<Record<string, tf.Tensor2D>>
}

/**
 * GroupNorm inside f: the averager comes from the per-call context when it has one for this width.
 */
export const cellGroupNorm = (
  x: tf.Tensor4D,
  groups: number,
  affine: { readonly gamma: tf.Tensor; readonly beta: tf.Tensor } | undefined,
  ctx: CellContext | undefined
): tf.Tensor4D =>
  groupNorm(x, groups, affine, 1e-5, (ctx as ConvContext | undefined)?.averagers?.[`${x.shape[3]}/${groups}`])

// ---------------------------------------------------------------------------------------------------------------
// Convolutions (plain or weight-normed)
// ---------------------------------------------------------------------------------------------------------------

/**
 * Specs of one bias-free convolution `prefix`: a plain filter `prefix/w`, or `prefix/v` and `prefix/g` with weight
 * normalisation. Weight-normed convs start from PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in)) with
 * g = ||v|| so w = v at init (docs/method.md, "The model": the N(0, 0.01) fill never reaches them). Plain convs
 * use `std` (kaiming-normal by default) or the same uniform init when `uniform` is set.
 */
export const convSpecs = (
  init: Init,
  prefix: string,
  shape: readonly [number, number, number, number],
  options: { readonly weightNorm: boolean; readonly uniform?: boolean }
): Array<ParamSpec> => {
  const fanIn = shape[0] * shape[1] * shape[2]
  const bound = 1 / Math.sqrt(fanIn)
  if (options.weightNorm) {
    const v = `${prefix}/v`
    return [
      { name: v, shape, init: () => init.uniform(v, shape, bound) },
      {
        name: `${prefix}/g`,
        shape: [shape[3]],
        init: () => tf.tidy(() => tf.sqrt(tf.sum(tf.square(init.uniform(v, shape, bound)), [0, 1, 2])))
      }
    ]
  }
  const w = `${prefix}/w`
  return [{
    name: w,
    shape,
    init: () => options.uniform === true ? init.uniform(w, shape, bound) : init.normal(w, shape, Math.sqrt(2 / fanIn))
  }]
}

/**
 * The effective filter of conv `prefix`: precomputed in the cell context when available (once per forward call),
 * else recomputed from v and g (weight norm) or the plain filter.
 */
export const filter = (get: Get, prefix: string, weightNormed: boolean, ctx?: CellContext): tf.Tensor4D => {
  const pre = ctx?.weights?.[prefix]
  if (pre !== undefined) return pre as tf.Tensor4D
  return weightNormed ? weightNorm(get(`${prefix}/v`) as tf.Tensor4D, get(`${prefix}/g`) as tf.Tensor1D) : get(`${prefix}/w`) as tf.Tensor4D
}

/**
 * Specs of an affine GroupNorm (`prefix/gamma` = 1, `prefix/beta` = 0).
 */
export const normSpecs = (init: Init, prefix: string, channels: number): Array<ParamSpec> => [
  { name: `${prefix}/gamma`, shape: [channels], init: () => init.ones([channels]) },
  { name: `${prefix}/beta`, shape: [channels], init: () => init.zeros([channels]) }
]

/**
 * The affine parameters of GroupNorm `prefix`.
 */
export const affineOf = (get: Get, prefix: string) => ({ gamma: get(`${prefix}/gamma`), beta: get(`${prefix}/beta`) })

// ---------------------------------------------------------------------------------------------------------------
// Stem (the injection)
// ---------------------------------------------------------------------------------------------------------------

/**
 * The settings the conv and multiscale DEQs share (everything of their configs but `channels`).
 */
export interface ConvCommonSettings {
  readonly inputShape: readonly [number, number, number]
  readonly classes: number
  readonly expansion: number
  readonly groups: number
  readonly weightNorm: boolean
  readonly dropout: number
  readonly stemStride: 1 | 2
  readonly stemNorm: "group" | "none"
}

/**
 * Settings of the injection stem.
 */
export interface StemSettings {
  readonly inChannels: number
  readonly channels: number
  readonly stride: 1 | 2
  readonly norm: "group" | "none"
  readonly groups: number
}

/**
 * The stem of a conv model whose first branch has `channels` channels.
 */
export const stemSettings = (c: ConvCommonSettings, channels: number): StemSettings => ({
  inChannels: c.inputShape[2],
  channels,
  stride: c.stemStride,
  norm: c.stemNorm,
  groups: c.groups
})

/**
 * Stem: conv3x3 (stride 1 or 2) -> GN -> ReLU -> conv3x3 -> GN. MDEQ uses BatchNorm here; we use GroupNorm (or no
 * norm): without running statistics the training and evaluation forward passes are the same function, so attacks,
 * trajectories and training all see one model and no train/eval flag is needed.
 */
export const stemSpecs = (init: Init, prefix: string, s: StemSettings): Array<ParamSpec> => [
  ...convSpecs(init, `${prefix}/conv1`, [3, 3, s.inChannels, s.channels], { weightNorm: false }),
  ...(s.norm === "group" ? normSpecs(init, `${prefix}/gn1`, s.channels) : []),
  ...convSpecs(init, `${prefix}/conv2`, [3, 3, s.channels, s.channels], { weightNorm: false }),
  ...(s.norm === "group" ? normSpecs(init, `${prefix}/gn2`, s.channels) : [])
]

/**
 * Applies the stem to an NHWC image batch.
 */
export const stem = (get: Get, prefix: string, s: StemSettings, x: tf.Tensor4D): tf.Tensor4D =>
  tf.tidy(() => {
    const norm = (t: tf.Tensor4D, gn: string) => s.norm === "group" ? groupNorm(t, s.groups, affineOf(get, `${prefix}/${gn}`)) : t
    const a = tf.relu(norm(tf.conv2d(x, get(`${prefix}/conv1/w`) as tf.Tensor4D, s.stride, "same"), "gn1"))
    return norm(tf.conv2d(a, get(`${prefix}/conv2/w`) as tf.Tensor4D, 1, "same"), "gn2")
  })

// ---------------------------------------------------------------------------------------------------------------
// The residual block of f
// ---------------------------------------------------------------------------------------------------------------

/**
 * Settings of one residual block.
 */
export interface BlockSettings {
  readonly channels: number
  readonly inner: number
  readonly groups: number
  readonly weightNorm: boolean
}

/**
 * The residual block of a conv model's branch with `channels` channels.
 */
export const blockSettings = (c: ConvCommonSettings, channels: number): BlockSettings => ({
  channels,
  inner: channels * c.expansion,
  groups: c.groups,
  weightNorm: c.weightNorm
})

/**
 * Specs of the MDEQ BasicBlock `prefix`: conv1 (C -> inner), gn1, conv2 (inner -> C), gn2, gn3.
 */
export const blockSpecs = (init: Init, prefix: string, b: BlockSettings): Array<ParamSpec> => [
  ...convSpecs(init, `${prefix}/conv1`, [3, 3, b.channels, b.inner], { weightNorm: b.weightNorm, uniform: true }),
  ...normSpecs(init, `${prefix}/gn1`, b.inner),
  ...convSpecs(init, `${prefix}/conv2`, [3, 3, b.inner, b.channels], { weightNorm: b.weightNorm, uniform: true }),
  ...normSpecs(init, `${prefix}/gn2`, b.channels),
  ...normSpecs(init, `${prefix}/gn3`, b.channels)
]

/**
 * The weight-normed filters of a block, for the per-call cell context.
 */
export const blockFilters = (prefix: string): ReadonlyArray<string> => [`${prefix}/conv1`, `${prefix}/conv2`]

/**
 * The MDEQ BasicBlock (docs/method.md, "The model"), in its order:
 * a = ReLU(GN(conv1(z))); b = GN(drop(conv2(a)) + u); b = b + z; out = GN(ReLU(b)).
 * `u` is undefined for branches that get no injection (zero), `mask` a [B,1,1,C] variational dropout mask.
 */
export const block = (
  get: Get,
  prefix: string,
  b: BlockSettings,
  z: tf.Tensor4D,
  u: tf.Tensor4D | undefined,
  ctx: CellContext | undefined,
  mask: tf.Tensor | undefined
): tf.Tensor4D =>
  tf.tidy(() => {
    const gn = (t: tf.Tensor4D, name: string) => cellGroupNorm(t, b.groups, affineOf(get, `${prefix}/${name}`), ctx)
    const a = tf.relu(gn(tf.conv2d(z, filter(get, `${prefix}/conv1`, b.weightNorm, ctx), 1, "same"), "gn1"))
    let c: tf.Tensor4D = tf.conv2d(a, filter(get, `${prefix}/conv2`, b.weightNorm, ctx), 1, "same")
    if (mask !== undefined) c = tf.mul(c, mask)
    if (u !== undefined) c = tf.add(c, u)
    const r = tf.add(gn(c, "gn2"), z) as tf.Tensor4D
    return gn(tf.relu(r), "gn3")
  })

/**
 * The GroupNorm widths (channels, groups) of a residual block, for the per-call averagers.
 */
export const blockNorms = (b: BlockSettings): ReadonlyArray<readonly [number, number]> => [
  [b.inner, b.groups],
  [b.channels, b.groups]
]

/**
 * The `prepare` of a conv model: the weight-normed `filters` and the GroupNorm averagers of `norms` (channels,
 * groups) computed once per forward call, and the dropout masks when a dropout seed is given.
 */
export const prepareContext = (
  get: Get,
  filters: ReadonlyArray<string>,
  weightNormed: boolean,
  mask: ((batch: number, seed: number) => ReadonlyArray<tf.Tensor>) | undefined,
  norms: ReadonlyArray<readonly [number, number]>
) =>
(o: { readonly batch: number; readonly dropoutSeed?: number }): ConvContext => {
  const weights: Record<string, tf.Tensor> = {}
  if (weightNormed) for (const p of filters) weights[p] = filter(get, p, true)
  // a plain record, not a Map: tf.tidy finds tensors in objects and arrays only
  const averagers: Record<string, tf.Tensor2D> = {}
  for (const [c, g] of norms) averagers[`${c}/${g}`] ??= groupAverager(c, g)
  return {
    weights,
    averagers,
    ...(mask !== undefined && o.dropoutSeed !== undefined ? { dropoutMask: mask(o.batch, o.dropoutSeed) } : {})
  }
}
