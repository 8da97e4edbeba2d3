/**
 * Fully connected DEQ: z' = act(norm(W z + U x + b)) on flattened images, head = linear.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { CellContext } from "../../Dynamics.ts"
import { type ModelCore, type ParamSpec, lookup } from "./spec.ts"
import { dropoutMask, type Init, layerNorm, linear } from "./layers.ts"

/**
 * The settings the FC internals need (a structural view of `Models.FcConfig`).
 */
export interface FcSettings {
  readonly inputShape: readonly [number, number, number]
  readonly classes: number
  readonly hidden: number
  readonly norm: "layer" | "none"
  readonly act: "relu" | "tanh"
  readonly dropout: number
  readonly wScale: number
}

const inputSize = (c: FcSettings): number => c.inputShape[0] * c.inputShape[1] * c.inputShape[2]

/**
 * Parameters of the FC DEQ. W has entries N(0, (wScale / sqrt(H))^2), so its spectral norm is about 2 wScale
 * (< 1 for the default 0.25): with a 1-Lipschitz activation the map starts contractive (LayerNorm rescales by the
 * injection's spread, which U's fan-in init keeps near 1). U is N(0, 1/D), the head N(0, 1/H).
 */
export const fcSpecs = (c: FcSettings, init: Init): ReadonlyArray<ParamSpec> => {
  const d = inputSize(c)
  const h = c.hidden
  const specs: Array<ParamSpec> = [
    { name: "fc/inject/U", shape: [d, h], init: () => init.normal("fc/inject/U", [d, h], 1 / Math.sqrt(d)) },
    { name: "fc/inject/b", shape: [h], init: () => init.zeros([h]) },
    { name: "fc/cell/W", shape: [h, h], init: () => init.normal("fc/cell/W", [h, h], c.wScale / Math.sqrt(h)) }
  ]
  if (c.norm === "layer") {
    specs.push(
      { name: "fc/cell/norm/gamma", shape: [h], init: () => init.ones([h]) },
      { name: "fc/cell/norm/beta", shape: [h], init: () => init.zeros([h]) }
    )
  }
  specs.push(
    { name: "fc/head/W", shape: [h, c.classes], init: () => init.normal("fc/head/W", [h, c.classes], 1 / Math.sqrt(h)) },
    { name: "fc/head/b", shape: [c.classes], init: () => init.zeros([c.classes]) }
  )
  return specs
}

/**
 * The FC DEQ's functions over its variables.
 */
export const fcCore = (c: FcSettings, params: ReadonlyMap<string, tf.Variable>): ModelCore => {
  const p = lookup(params)
  const U = p("fc/inject/U"), b = p("fc/inject/b"), W = p("fc/cell/W")
  const affine = c.norm === "layer" ? { gamma: p("fc/cell/norm/gamma"), beta: p("fc/cell/norm/beta") } : undefined
  const Wh = p("fc/head/W"), bh = p("fc/head/b")
  const d = inputSize(c)
  const act = c.act === "relu" ? tf.relu : tf.tanh
  // act'(y): relu -> step(y) (0 at 0, as tfjs' Relu gradient); tanh -> 1 - tanh(y)^2
  const derivative = (y: tf.Tensor): tf.Tensor =>
    c.act === "relu" ? tf.step(y) : tf.sub(1, tf.square(tf.tanh(y)))

  // W z (times the dropout mask) + u: what f applies its norm and activation to
  const preActivation = (z: tf.Tensor, u: tf.Tensor, m: tf.Tensor | undefined): tf.Tensor2D => {
    const wz = linear(z, W)
    return tf.add(m === undefined ? wz : tf.mul(wz, m), u) as tf.Tensor2D
  }

  const mask = c.dropout > 0 ?
    (batch: number, seed: number): ReadonlyArray<tf.Tensor> => [dropoutMask([batch, c.hidden], c.dropout, seed)] :
    undefined

  return {
    stateShape: [c.hidden],
    summary: `FC DEQ: input ${c.inputShape.join("x")} (${d}) -> hidden ${c.hidden}, norm ${c.norm}, act ${c.act}` +
      (c.dropout > 0 ? `, variational dropout ${c.dropout}` : "") + ` -> linear head ${c.classes}`,
    inject: (x) => tf.tidy(() => tf.add(linear(tf.reshape(x, [x.shape[0], d]), U), b)),
    cell: (z, u, ctx?: CellContext) =>
      tf.tidy(() => {
        const pre = preActivation(z, u, ctx?.dropoutMask?.[0])
        return act(affine === undefined ? pre : layerNorm(pre, affine))
      }),
    head: (z) => tf.tidy(() => tf.add(linear(z, Wh), bh) as tf.Tensor2D),
    linearize: (z, u, ctx?: CellContext) => {
      // what f computes at z, kept for the whole backward solve: act'(y), and LayerNorm's xhat and 1/sigma
      const m = ctx?.dropoutMask?.[0]
      const saved = tf.tidy(() => {
        const pre = preActivation(z, u, m)
        if (affine === undefined) return { dact: derivative(pre) }
        const { mean, variance } = tf.moments(pre, -1, true)
        const invStd = tf.rsqrt(tf.add(variance, 1e-5))
        const xhat = tf.mul(tf.sub(pre, mean), invStd)
        return { dact: derivative(tf.add(tf.mul(xhat, affine.gamma), affine.beta)), xhat, invStd }
      })
      const mask = m === undefined ? undefined : tf.keep(tf.clone(m))
      // J^T v multiplies by W^T every adjoint iteration: transpose once (a transposed matMul is slow on wasm)
      const Wt = tf.keep(tf.transpose(W))
      Object.values(saved).forEach((t) => tf.keep(t))
      return {
        vjp: (v) =>
          tf.tidy(() => {
            let g: tf.Tensor = tf.mul(v, saved.dact)
            if (affine !== undefined) {
              const dx = tf.mul(g, affine.gamma)
              const xhat = saved.xhat!
              g = tf.mul(
                saved.invStd!,
                tf.sub(tf.sub(dx, tf.mean(dx, -1, true)), tf.mul(xhat, tf.mean(tf.mul(dx, xhat), -1, true)))
              )
            }
            if (mask !== undefined) g = tf.mul(g, mask)
            return tf.matMul(g as tf.Tensor2D, Wt)
          }),
        dispose: () => tf.dispose([...Object.values(saved), Wt, ...(mask === undefined ? [] : [mask])])
      }
    },
    initState: (u) => tf.zerosLike(u),
    ...(mask === undefined ? {} : {
      dropoutMask: mask,
      prepare: (o: { readonly batch: number; readonly dropoutSeed?: number }) =>
        o.dropoutSeed === undefined ? {} : { dropoutMask: mask(o.batch, o.dropoutSeed) }
    })
  }
}
