/**
 * Convolutional DEQ: an injection stem and one MDEQ residual block as f; head = average pool (global or to a
 * grid) + linear.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { CellContext } from "../../Dynamics.ts"
import {
  block,
  blockFilters,
  blockNorms,
  blockSettings,
  blockSpecs,
  type ConvCommonSettings,
  prepareContext,
  stem,
  stemSettings,
  stemSpecs
} from "./block.ts"
import { type ModelCore, type ParamSpec, lookup } from "./spec.ts"
import { dropoutMask, type Init, linear, spatialMean, strided } from "./layers.ts"

/**
 * The settings the conv internals need (a structural view of `Models.ConvConfig`).
 */
export interface ConvSettings extends ConvCommonSettings {
  readonly channels: number
  readonly headGrid: number
}

/** The head's input width: channels x headGrid^2 pooled cells. */
const headWidth = (c: ConvSettings) => c.channels * c.headGrid * c.headGrid

const stemOf = (c: ConvSettings) => stemSettings(c, c.channels)
const blockOf = (c: ConvSettings) => blockSettings(c, c.channels)

/**
 * Parameters of the conv DEQ: stem, block, head (head N(0, 1/width)).
 */
export const convModelSpecs = (c: ConvSettings, init: Init): ReadonlyArray<ParamSpec> => [
  ...stemSpecs(init, "conv/stem", stemOf(c)),
  ...blockSpecs(init, "conv/cell", blockOf(c)),
  {
    name: "conv/head/W",
    shape: [headWidth(c), c.classes],
    init: () => init.normal("conv/head/W", [headWidth(c), c.classes], 1 / Math.sqrt(headWidth(c)))
  },
  { name: "conv/head/b", shape: [c.classes], init: () => init.zeros([c.classes]) }
]

/**
 * The conv DEQ's functions over its variables. The state is the NHWC feature map [B, h, w, C].
 */
export const convCore = (c: ConvSettings, params: ReadonlyMap<string, tf.Variable>): ModelCore => {
  const get = lookup(params)
  const s = stemOf(c)
  const b = blockOf(c)
  const h = strided(c.inputShape[0], c.stemStride), w = strided(c.inputShape[1], c.stemStride)
  const Wh = get("conv/head/W"), bh = get("conv/head/b")
  const g = c.headGrid
  // grid 1 keeps the global pool with its fast backward; a finer grid is a plain avgPool (its gradient's cost is
  // a few per cent of a step)
  const pooled = (z: tf.Tensor4D): tf.Tensor2D =>
    g === 1 ? spatialMean(z) : tf.reshape(tf.avgPool(z, [h / g, w / g], [h / g, w / g], "valid"), [z.shape[0], headWidth(c)])
  const mask = c.dropout > 0 ?
    (batch: number, seed: number): ReadonlyArray<tf.Tensor> => [dropoutMask([batch, 1, 1, c.channels], c.dropout, seed)] :
    undefined

  return {
    stateShape: [h, w, c.channels],
    summary: `conv DEQ: stem conv3x3 stride ${c.stemStride} (${c.stemNorm === "group" ? "GroupNorm" : "no norm"}) ` +
      `${c.inputShape.join("x")} -> ${h}x${w}x${c.channels}; f = MDEQ block ${c.channels}->${b.inner}->${c.channels}, ` +
      `GroupNorm ${c.groups}${c.weightNorm ? ", weight norm" : ""}` +
      (c.dropout > 0 ? `, variational dropout ${c.dropout}` : "") +
      `; head ${g === 1 ? "global avgpool" : `avgpool to ${g}x${g}`} + linear ${c.classes}`,
    inject: (x) => stem(get, "conv/stem", s, x),
    cell: (z, u, ctx?: CellContext) =>
      block(get, "conv/cell", b, z as tf.Tensor4D, u as tf.Tensor4D, ctx, ctx?.dropoutMask?.[0]),
    head: (z) => tf.tidy(() => tf.add(linear(pooled(z as tf.Tensor4D), Wh), bh) as tf.Tensor2D),
    initState: (u) => tf.zerosLike(u),
    ...(mask === undefined ? {} : { dropoutMask: mask }),
    prepare: prepareContext(get, blockFilters("conv/cell"), c.weightNorm, mask, blockNorms(b))
  }
}
