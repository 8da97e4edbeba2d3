/**
 * A small multiscale DEQ (MDEQ with 2 branches): full and half resolution, one residual block per branch,
 * multiscale fusion and a post-fuse conv1x1 + affine-free GroupNorm (docs/method.md, "The model"). The state is
 * both branches flattened into one [B, N] vector (list2vec: branch 0 then branch 1, each NHWC row-major).
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { CellContext } from "../../Dynamics.ts"
import {
  affineOf,
  block,
  blockFilters,
  blockNorms,
  blockSettings,
  blockSpecs,
  type ConvCommonSettings,
  cellGroupNorm,
  convSpecs,
  filter,
  normSpecs,
  prepareContext,
  stem,
  stemSettings,
  stemSpecs
} from "./block.ts"
import { type ModelCore, type ParamSpec, lookup } from "./spec.ts"
import { dropoutMask, type Init, linear, spatialMean, strided, upsampleNearest } from "./layers.ts"

/**
 * The settings the multiscale internals need (a structural view of `Models.MultiscaleConfig`).
 */
export interface MultiscaleSettings extends ConvCommonSettings {
  readonly channels: readonly [number, number]
}

const P = "ms"

const stemOf = (c: MultiscaleSettings) => stemSettings(c, c.channels[0])
const blockOf = (c: MultiscaleSettings, i: 0 | 1) => blockSettings(c, c.channels[i])

/**
 * Spatial sizes of the two branches.
 */
export const branchSizes = (c: MultiscaleSettings): readonly [readonly [number, number], readonly [number, number]] => {
  const h0 = strided(c.inputShape[0], c.stemStride), w0 = strided(c.inputShape[1], c.stemStride)
  return [[h0, w0], [strided(h0, 2), strided(w0, 2)]]
}

/**
 * Parameters of the multiscale DEQ.
 */
export const multiscaleSpecs = (c: MultiscaleSettings, init: Init): ReadonlyArray<ParamSpec> => {
  const [c0, c1] = c.channels
  const width = c0 + c1
  return [
    ...stemSpecs(init, `${P}/stem`, stemOf(c)),
    ...blockSpecs(init, `${P}/cell/block0`, blockOf(c, 0)),
    ...blockSpecs(init, `${P}/cell/block1`, blockOf(c, 1)),
    // fusion: 1 -> 0 by conv1x1 + GN + nearest upsample; 0 -> 1 by a stride-2 conv3x3 + GN
    ...convSpecs(init, `${P}/cell/up`, [1, 1, c1, c0], { weightNorm: false }),
    ...normSpecs(init, `${P}/cell/up/gn`, c0),
    ...convSpecs(init, `${P}/cell/down`, [3, 3, c0, c1], { weightNorm: false }),
    ...normSpecs(init, `${P}/cell/down/gn`, c1),
    // post-fuse: ReLU -> conv1x1 (weight-normed like the block convs) -> GroupNorm(groups / 2, no affine)
    ...convSpecs(init, `${P}/cell/post0`, [1, 1, c0, c0], { weightNorm: c.weightNorm, uniform: true }),
    ...convSpecs(init, `${P}/cell/post1`, [1, 1, c1, c1], { weightNorm: c.weightNorm, uniform: true }),
    { name: `${P}/head/W`, shape: [width, c.classes], init: () => init.normal(`${P}/head/W`, [width, c.classes], 1 / Math.sqrt(width)) },
    { name: `${P}/head/b`, shape: [c.classes], init: () => init.zeros([c.classes]) }
  ]
}

/**
 * The multiscale DEQ's functions over its variables.
 */
export const multiscaleCore = (c: MultiscaleSettings, params: ReadonlyMap<string, tf.Variable>): ModelCore => {
  const get = lookup(params)
  const [c0, c1] = c.channels
  const [[h0, w0], [h1, w1]] = branchSizes(c)
  const n0 = h0 * w0 * c0, n1 = h1 * w1 * c1
  const s = stemOf(c)
  const b0 = blockOf(c, 0), b1 = blockOf(c, 1)
  const postGroups = Math.max(1, Math.floor(c.groups / 2))
  const Wh = get(`${P}/head/W`), bh = get(`${P}/head/b`)
  const filters = [...blockFilters(`${P}/cell/block0`), ...blockFilters(`${P}/cell/block1`), `${P}/cell/post0`, `${P}/cell/post1`]

  const toList = (z: tf.Tensor): readonly [tf.Tensor4D, tf.Tensor4D] => {
    const b = z.shape[0]
    const [a, d] = tf.split(z as tf.Tensor2D, [n0, n1], 1)
    return [tf.reshape(a!, [b, h0, w0, c0]), tf.reshape(d!, [b, h1, w1, c1])]
  }
  const toVec = (z0: tf.Tensor4D, z1: tf.Tensor4D): tf.Tensor2D => {
    const b = z0.shape[0]
    return tf.concat([tf.reshape(z0, [b, n0]), tf.reshape(z1, [b, n1])], 1)
  }
  const up = (t: tf.Tensor4D): tf.Tensor4D => {
    const u = upsampleNearest(t, [2 * h1, 2 * w1])
    return 2 * h1 === h0 && 2 * w1 === w0 ? u : tf.slice(u, [0, 0, 0, 0], [-1, h0, w0, -1])
  }
  const mask = c.dropout > 0 ?
    (batch: number, seed: number): ReadonlyArray<tf.Tensor> => [
      dropoutMask([batch, 1, 1, c0], c.dropout, seed),
      dropoutMask([batch, 1, 1, c1], c.dropout, (seed ^ 0x5bd1e995) >>> 0)
    ] :
    undefined

  return {
    stateShape: [n0 + n1],
    summary: `multiscale DEQ: stem conv3x3 stride ${c.stemStride} (${c.stemNorm === "group" ? "GroupNorm" : "no norm"}); ` +
      `branches ${h0}x${w0}x${c0} and ${h1}x${w1}x${c1} (state ${n0 + n1} per sample); MDEQ blocks (expansion ${c.expansion}), ` +
      `fusion (conv1x1 + upsample, stride-2 conv3x3), post-fuse conv1x1 + GN ${postGroups}; GroupNorm ${c.groups}` +
      (c.weightNorm ? ", weight norm" : "") + (c.dropout > 0 ? `, variational dropout ${c.dropout}` : "") +
      `; head avgpool of both branches + linear ${c.classes}`,
    inject: (x) => stem(get, `${P}/stem`, s, x),
    cell: (z, u, ctx?: CellContext) =>
      tf.tidy(() => {
        const [z0, z1] = toList(z)
        const m = ctx?.dropoutMask
        // only the full-resolution branch receives the injection (docs/method.md, "The model")
        const y0 = block(get, `${P}/cell/block0`, b0, z0, u as tf.Tensor4D, ctx, m?.[0])
        const y1 = block(get, `${P}/cell/block1`, b1, z1, undefined, ctx, m?.[1])
        const f0 = tf.add(
          y0,
          up(cellGroupNorm(tf.conv2d(y1, get(`${P}/cell/up/w`) as tf.Tensor4D, 1, "same"), c.groups, affineOf(get, `${P}/cell/up/gn`), ctx))
        ) as tf.Tensor4D
        const f1 = tf.add(
          y1,
          cellGroupNorm(tf.conv2d(y0, get(`${P}/cell/down/w`) as tf.Tensor4D, 2, "same"), c.groups, affineOf(get, `${P}/cell/down/gn`), ctx)
        ) as tf.Tensor4D
        const post = (t: tf.Tensor4D, name: string) =>
          cellGroupNorm(tf.conv2d(tf.relu(t), filter(get, `${P}/cell/${name}`, c.weightNorm, ctx), 1, "same"), postGroups, undefined, ctx)
        return toVec(post(f0, "post0"), post(f1, "post1"))
      }),
    head: (z) =>
      tf.tidy(() => {
        const [z0, z1] = toList(z)
        const pooled = tf.concat([spatialMean(z0), spatialMean(z1)], 1)
        return tf.add(linear(pooled, Wh), bh) as tf.Tensor2D
      }),
    initState: (u) => tf.zeros([u.shape[0], n0 + n1]),
    ...(mask === undefined ? {} : { dropoutMask: mask }),
    prepare: prepareContext(get, filters, c.weightNorm, mask, [
      ...blockNorms(b0),
      ...blockNorms(b1),
      [c0, c.groups],
      [c1, c.groups],
      [c0, postGroups],
      [c1, postGroups]
    ])
  }
}
