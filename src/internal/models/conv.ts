/**
 * Convolutional DEQ: an injection stem and one MDEQ residual block as f; head = global average pool + linear.
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
}

const stemOf = (c: ConvSettings) => stemSettings(c, c.channels)
const blockOf = (c: ConvSettings) => blockSettings(c, c.channels)

/**
 * Parameters of the conv DEQ: stem, block, head (head N(0, 1/C)).
 */
export const convModelSpecs = (c: ConvSettings, init: Init): ReadonlyArray<ParamSpec> => [
  ...stemSpecs(init, "conv/stem", stemOf(c)),
  ...blockSpecs(init, "conv/cell", blockOf(c)),
  {
    name: "conv/head/W",
    shape: [c.channels, c.classes],
    init: () => init.normal("conv/head/W", [c.channels, c.classes], 1 / Math.sqrt(c.channels))
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
  const mask = c.dropout > 0 ?
    (batch: number, seed: number): ReadonlyArray<tf.Tensor> => [dropoutMask([batch, 1, 1, c.channels], c.dropout, seed)] :
    undefined

  return {
    stateShape: [h, w, c.channels],
    summary: `conv DEQ: stem conv3x3 stride ${c.stemStride} (${c.stemNorm === "group" ? "GroupNorm" : "no norm"}) ` +
      `${c.inputShape.join("x")} -> ${h}x${w}x${c.channels}; f = MDEQ block ${c.channels}->${b.inner}->${c.channels}, ` +
      `GroupNorm ${c.groups}${c.weightNorm ? ", weight norm" : ""}` +
      (c.dropout > 0 ? `, variational dropout ${c.dropout}` : "") + `; head avgpool + linear ${c.classes}`,
    inject: (x) => stem(get, "conv/stem", s, x),
    cell: (z, u, ctx?: CellContext) =>
      block(get, "conv/cell", b, z as tf.Tensor4D, u as tf.Tensor4D, ctx, ctx?.dropoutMask?.[0]),
    head: (z) => tf.tidy(() => tf.add(linear(spatialMean(z as tf.Tensor4D), Wh), bh) as tf.Tensor2D),
    initState: (u) => tf.zerosLike(u),
    ...(mask === undefined ? {} : { dropoutMask: mask }),
    prepare: prepareContext(get, blockFilters("conv/cell"), c.weightNorm, mask, blockNorms(b))
  }
}
