/**
 * Adam (PyTorch's formulation) with its moments keyed by the parameters' stable names, so the state checkpoints
 * and restores exactly (tfjs' own optimizers name their slots with per-run counters).
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { Param } from "../../Dynamics.ts"

/** Adam's constants. */
export interface AdamSettings {
  readonly beta1: number
  readonly beta2: number
  readonly epsilon: number
  readonly weightDecay: number
}

/** Adam's state and update; the moments are kept tensors disposed by `dispose`. */
export interface Adam {
  /** the number of updates applied (PyTorch's `step`, used for bias correction) */
  readonly steps: () => number
  /**
   * One update with learning rate `lr` from gradients keyed by tfjs variable name (as `tf.variableGrads` returns
   * them); parameters without a gradient are skipped. With `clip`, gradients are scaled by
   * min(1, clip / (||g||_2 + 1e-6)) over all of them (PyTorch clip_grad_norm_). Returns the global gradient norm.
   */
  readonly apply: (grads: Readonly<Record<string, tf.Tensor>>, lr: number, clip?: number) => number
  /** moments as named tensors `adam/m/<param>` and `adam/v/<param>` (views: do not dispose) */
  readonly tensors: () => ReadonlyArray<{ readonly name: string; readonly tensor: tf.Tensor }>
  /** restores the moments and step count; throws naming a missing or misshapen tensor */
  readonly restore: (steps: number, lookup: (name: string) => tf.Tensor | undefined) => void
  readonly dispose: () => void
}

/** A fresh Adam over `params` (zero moments). */
export const makeAdam = (params: ReadonlyArray<Param>, s: AdamSettings): Adam => {
  const m = new Map<string, tf.Tensor>()
  const v = new Map<string, tf.Tensor>()
  for (const p of params) {
    m.set(p.name, tf.keep(tf.zerosLike(p.variable)))
    v.set(p.name, tf.keep(tf.zerosLike(p.variable)))
  }
  let t = 0
  const replace = (map: Map<string, tf.Tensor>, name: string, next: tf.Tensor) => {
    map.get(name)?.dispose()
    map.set(name, tf.keep(next))
  }
  return {
    steps: () => t,
    apply: (grads, lr, clip) => {
      t++
      const bc1 = 1 - Math.pow(s.beta1, t)
      const bc2 = 1 - Math.pow(s.beta2, t)
      const live = params.filter((p) => grads[p.variable.name] !== undefined)
      const norm = tf.tidy(() => {
        const sq = live.map((p) => tf.sum(tf.square(grads[p.variable.name]!)))
        return sq.length === 0 ? tf.scalar(0) : tf.sqrt(tf.addN(sq))
      })
      const normValue = norm.dataSync()[0]!
      const scale = clip !== undefined ? Math.min(1, clip / (normValue + 1e-6)) : 1
      norm.dispose()
      for (const p of live) {
        const next = tf.tidy(() => {
          let g = grads[p.variable.name]!
          if (scale !== 1) g = tf.mul(g, scale)
          if (s.weightDecay > 0) g = tf.add(g, tf.mul(p.variable, s.weightDecay))
          const m1 = tf.add(tf.mul(m.get(p.name)!, s.beta1), tf.mul(g, 1 - s.beta1))
          const v1 = tf.add(tf.mul(v.get(p.name)!, s.beta2), tf.mul(tf.square(g), 1 - s.beta2))
          // PyTorch: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
          const denom = tf.add(tf.div(tf.sqrt(v1), Math.sqrt(bc2)), s.epsilon)
          const update = tf.mul(tf.div(m1, denom), lr / bc1)
          return { m1, v1, value: tf.sub(p.variable, update) }
        })
        replace(m, p.name, next.m1)
        replace(v, p.name, next.v1)
        p.variable.assign(next.value)
        next.value.dispose()
      }
      return normValue
    },
    tensors: () =>
      params.flatMap((p) => [
        { name: `adam/m/${p.name}`, tensor: m.get(p.name)! },
        { name: `adam/v/${p.name}`, tensor: v.get(p.name)! }
      ]),
    restore: (steps, lookup) => {
      // every moment is checked before any is replaced; on a failure the tensors looked up so far are disposed
      const next: Array<{ readonly map: Map<string, tf.Tensor>; readonly name: string; readonly tensor: tf.Tensor }> = []
      try {
        for (const p of params) {
          for (const [kind, map] of [["m", m], ["v", v]] as const) {
            const name = `adam/${kind}/${p.name}`
            const stored = lookup(name)
            if (stored === undefined) throw new Error(`optimizer state "${name}" is missing`)
            next.push({ map, name: p.name, tensor: stored })
            if (stored.shape.join(",") !== p.variable.shape.join(",")) {
              throw new Error(`optimizer state "${name}" has shape [${stored.shape}], the parameter [${p.variable.shape}]`)
            }
          }
        }
      } catch (e) {
        next.forEach((x) => x.tensor.dispose())
        throw e
      }
      for (const x of next) replace(x.map, x.name, x.tensor)
      t = steps
    },
    dispose: () => {
      m.forEach((x) => x.dispose())
      v.forEach((x) => x.dispose())
      m.clear()
      v.clear()
    }
  }
}
