/**
 * Numerical building blocks shared by the attacks: losses, projections, gradients with EOT, keyed randomness.
 * Everything here is plain synchronous tfjs meant to run inside `tf.tidy`.
 */
import { Effect } from "effect"
import { Rng, tf, untaped } from "../../Tensor.ts"
import type { Stream } from "../../Tensor.ts"
import { AttackError } from "./types.ts"
import type { AttackResult, AttackSettings, AttackShape, Classifier, Norm, PerturbContext } from "./types.ts"

// ---------------------------------------------------------------------------------------------------------------
// losses: per-sample, [B, K] logits and int32 labels [B] -> [B]; attacks maximise them
// ---------------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------
// geometry
// ---------------------------------------------------------------------------------------------------------------

const perSample = (t: tf.Tensor): tf.Tensor2D => t.reshape([t.shape[0], -1]) as tf.Tensor2D

/** Per-sample L2 norm, shaped [B, 1, 1, 1] for broadcasting. */
export const l2Norm4 = (t: tf.Tensor4D): tf.Tensor4D =>
  tf.tidy(() => tf.sqrt(tf.sum(tf.square(perSample(t)), 1)).reshape([-1, 1, 1, 1]) as tf.Tensor4D)

/** A per-sample [B] tensor shaped for broadcasting over images. */
export const col4 = (v: tf.Tensor1D): tf.Tensor4D => v.reshape([-1, 1, 1, 1]) as tf.Tensor4D

/** The ascent direction of a step: sign for Linf, unit-L2 gradient for L2. */
export const direction = (g: tf.Tensor4D, norm: Norm): tf.Tensor4D =>
  tf.tidy(() => (norm === "Linf" ? tf.sign(g) : tf.div(g, tf.add(l2Norm4(g), 1e-12))) as tf.Tensor4D)

/** Projects onto the eps-ball around x, then onto the box [0, 1]. */
export const project = (xAdv: tf.Tensor4D, x: tf.Tensor4D, eps: number, norm: Norm): tf.Tensor4D =>
  tf.tidy(() => {
    if (norm === "Linf") {
      return tf.clipByValue(tf.minimum(tf.maximum(xAdv, tf.sub(x, eps)), tf.add(x, eps)), 0, 1) as tf.Tensor4D
    }
    const delta = tf.sub(xAdv, x)
    const n = l2Norm4(delta as tf.Tensor4D)
    // scale by min(1, eps / ||delta||); clipping to the box afterwards only shrinks |delta| per coordinate
    const factor = tf.minimum(1, tf.div(eps, tf.add(n, 1e-12)))
    return tf.clipByValue(tf.add(x, tf.mul(delta, factor)), 0, 1) as tf.Tensor4D
  })

/** Rows where `mask` (bool/0-1 [B]) holds take `a`, the others `b`. */
export const whereRows = <T extends tf.Tensor>(mask: tf.Tensor1D, a: T, b: T): T =>
  tf.tidy(() => {
    const m = mask.dtype === "bool" ? mask : tf.cast(mask, "bool")
    const shape = [a.shape[0], ...a.shape.slice(1).map(() => 1)]
    return tf.where(m.reshape(shape), a, b) as T
  })

/** A bool mask tensor from a JS 0/1 array. */
export const maskTensor = (m: ArrayLike<number>): tf.Tensor1D => tf.tensor1d(Array.from(m), "bool")

/**
 * Keeps, per sample, the first input at which the prediction went wrong (samples never broken keep x), so more
 * steps can never weaken an attack. `found` marks the broken samples; `finish(fallback)` returns the kept rows
 * for broken samples and `fallback`'s rows for the others, and frees the kept tensor.
 */
export const firstSuccess = (x: tf.Tensor4D) => {
  const n = x.shape[0]
  const found = new Uint8Array(n)
  let kept = x.clone()
  return {
    found,
    record: (wrong: Uint8Array, at: tf.Tensor4D): void => {
      const newly = new Uint8Array(n)
      let any = false
      for (let i = 0; i < n; i++) {
        if (wrong[i] === 1 && found[i] === 0) {
          newly[i] = 1
          found[i] = 1
          any = true
        }
      }
      if (!any) return
      const next = tf.tidy(() => whereRows(maskTensor(newly), at, kept))
      kept.dispose()
      kept = next
    },
    finish: (fallback: tf.Tensor4D): tf.Tensor4D => {
      const out = tf.tidy(() => whereRows(maskTensor(found), kept, fallback))
      kept.dispose()
      return out
    }
  }
}

/** Rows `idx` of t. */
export const gatherRows = <T extends tf.Tensor>(t: T, idx: ArrayLike<number>): T =>
  tf.tidy(() => tf.gather(t, tf.tensor1d(Int32Array.from(idx), "int32")) as T)

/** `full` with its rows `idx` replaced by the rows of `sub` (same order). */
export const scatterRows = <T extends tf.Tensor>(full: T, sub: T, idx: ArrayLike<number>): T =>
  tf.tidy(() => {
    const b = full.shape[0]
    const map = new Int32Array(b)
    for (let i = 0; i < b; i++) map[i] = i
    for (let j = 0; j < idx.length; j++) map[idx[j]!] = b + j
    return tf.gather(tf.concat([full, sub], 0), tf.tensor1d(map, "int32")) as T
  })

/** Indices where `flags[i] === want`. */
export const indicesWhere = (flags: ArrayLike<number>, want: number): Int32Array => {
  const out: Array<number> = []
  for (let i = 0; i < flags.length; i++) if (flags[i] === want) out.push(i)
  return Int32Array.from(out)
}

// ---------------------------------------------------------------------------------------------------------------
// the run environment: classifier calls with seeds, query counting, keyed randomness
// ---------------------------------------------------------------------------------------------------------------

/** What an attack run closes over. */
export interface Env {
  readonly attack: string
  readonly classifier: Classifier
  readonly rng: Rng["Service"]
  /** per-row key (dataset index) of the rows currently attacked */
  readonly keys: ReadonlyArray<number>
  queries: number
}

/** The same environment for a subset of rows. */
export const subEnv = (env: Env, idx: ArrayLike<number>): Env => {
  const keys: Array<number> = []
  for (let j = 0; j < idx.length; j++) keys.push(env.keys[idx[j]!]!)
  const sub: Env = {
    attack: env.attack,
    classifier: env.classifier,
    rng: env.rng,
    keys,
    get queries() {
      return env.queries
    },
    set queries(q: number) {
      env.queries = q
    }
  }
  return sub
}

/** The scores being evaluated (`predict`, else `logits`), off the tape. */
export const predictLogits = (env: Env, x: tf.Tensor4D, ...path: ReadonlyArray<string | number>): tf.Tensor2D => {
  const c = env.classifier
  env.queries += x.shape[0]
  return tf.tidy(() => (c.predict ?? c.logits)(x, { seed: env.rng.seed(env.attack, "predict", ...path) }))
}

/** Per sample: 1 when the argmax of `logits` is not the label. */
export const wrongOf = (logits: tf.Tensor2D, y: tf.Tensor1D): Uint8Array =>
  tf.tidy(() => tf.notEqual(tf.argMax(logits, 1), y).dataSync() as Uint8Array)

/** Per sample: 1 when the prediction at x is wrong. */
export const misclassified = (env: Env, x: tf.Tensor4D, y: tf.Tensor1D, ...path: ReadonlyArray<string | number>) =>
  tf.tidy(() => wrongOf(predictLogits(env, x, ...path), y))

/** True when success can be read from the gradient call's logits instead of a separate `predict` call. */
export const logitsArePrediction = (c: Classifier): boolean => c.predict === undefined && c.randomized !== true

/** Input gradient, value and logits of a per-sample loss; averaged over `eot` draws for randomized classifiers. */
export interface Probe {
  readonly grad: tf.Tensor4D
  readonly loss: tf.Tensor1D
  readonly logits: tf.Tensor2D
}

/**
 * The gradient of sum_i loss_i(logits(x)) w.r.t. x (samples are independent, so row i is sample i's gradient), or
 * of the classifier's own `objective` for that loss when it has one.
 * A classifier whose logits do not depend on x gives zero gradients, not an error (the zero-gradient flag catches it).
 */
export const probe = (
  env: Env,
  x: tf.Tensor4D,
  loss: (logits: tf.Tensor2D) => tf.Tensor1D,
  eot: number,
  ...path: ReadonlyArray<string | number>
): Probe =>
  tf.tidy(() => {
    const c = env.classifier
    const draws = c.randomized === true ? Math.max(1, eot) : 1
    let grad: tf.Tensor4D | undefined
    let value: tf.Tensor1D | undefined
    let logits: tf.Tensor2D | undefined
    for (let j = 0; j < draws; j++) {
      const seed = env.rng.seed(env.attack, "grad", ...path, j)
      env.queries += x.shape[0]
      let kept: tf.Tensor2D | undefined
      const out = tf.engine().gradients(
        () => {
          if (c.objective !== undefined) {
            const o = c.objective(x, loss, { seed })
            kept = tf.keep(o.logits)
            return o.loss
          }
          const lg = c.logits(x, { seed })
          // the logits leave the gradient's scopes through keep; re-tracked (clone) and released just below
          kept = tf.keep(lg)
          return loss(lg)
        },
        [x],
        undefined,
        true
      )
      const l = kept!.clone()
      kept!.dispose()
      const g = (out.grads[0] ?? tf.zerosLike(x)) as tf.Tensor4D
      const v = out.value as tf.Tensor1D
      grad = grad === undefined ? g : tf.add<tf.Tensor4D>(grad, g)
      value = value === undefined ? v : tf.add<tf.Tensor1D>(value, v)
      logits = logits === undefined ? l : tf.add<tf.Tensor2D>(logits, l)
    }
    if (draws > 1) {
      grad = tf.div<tf.Tensor4D>(grad!, draws)
      value = tf.div<tf.Tensor1D>(value!, draws)
      logits = tf.div<tf.Tensor2D>(logits!, draws)
    }
    return { grad: grad!, loss: value!, logits: logits! }
  })

/** A seeded stream per row: the randomness of row i depends on its key, never on its position in the batch. */
export const keyedStreams = (env: Env, ...path: ReadonlyArray<string | number>): Array<Stream> =>
  env.keys.map((key) => env.rng.stream(env.attack, ...path, "key", key))

/** A standard normal draw (Box-Muller). */
export const normal = (s: Stream): number => {
  const u = Math.max(s.next(), 1e-12)
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * s.next())
}

/**
 * Keyed random noise of the shape of x: `"uniform"` in [-1, 1] per coordinate, `"normal"` N(0, 1).
 */
export const keyedNoise = (
  env: Env,
  shape: ReadonlyArray<number>,
  kind: "uniform" | "normal",
  ...path: ReadonlyArray<string | number>
): tf.Tensor4D => {
  const b = shape[0]!
  const d = shape.slice(1).reduce((a, n) => a * n, 1)
  const out = new Float32Array(b * d)
  const streams = keyedStreams(env, ...path)
  for (let i = 0; i < b; i++) {
    const s = streams[i]!
    for (let j = 0; j < d; j++) out[i * d + j] = kind === "uniform" ? 2 * s.next() - 1 : normal(s)
  }
  return tf.tensor4d(out, shape as [number, number, number, number])
}

// ---------------------------------------------------------------------------------------------------------------
// the Effect seam
// ---------------------------------------------------------------------------------------------------------------

const describe = (u: unknown): string => (u instanceof Error ? u.message.split("\n")[0]! : String(u))

/** The synchronous core of an attack: returns x_adv for the rows of env (it may return x itself). */
export type Core = (env: Env, x: tf.Tensor4D, y: tf.Tensor1D) => tf.Tensor4D

/**
 * Validates inputs, runs the core inside one `tf.tidy`, checks success with `predict`, and hands x_adv to the
 * caller's Scope. One Effect per attack call; the core never allocates Effects.
 */
export const makeAttack = (
  name: string,
  settings: AttackSettings,
  core: Core,
  minClasses = 2
): AttackShape => ({
  name,
  settings,
  perturb: (classifier, x, y, context?: PerturbContext) =>
    Effect.gen(function*() {
      const rng = yield* Rng
      const fail = (message: string) => new AttackError({ attack: name, message })
      if (x.rank !== 4) return yield* fail(`x must be a 4-D NHWC batch, got shape [${x.shape.join(", ")}]`)
      if (y.rank !== 1 || y.shape[0] !== x.shape[0]) {
        return yield* fail(`y must hold one label per sample: x has ${x.shape[0]} samples, y shape [${y.shape.join(", ")}]`)
      }
      const b = x.shape[0]
      const keys = context?.keys === undefined ? Array.from({ length: b }, (_, i) => i) : Array.from(context.keys)
      if (keys.length !== b) return yield* fail(`context.keys has ${keys.length} entries for ${b} samples`)
      const env: Env = { attack: name, classifier, rng, keys, queries: 0 }
      return yield* Effect.acquireRelease(
        Effect.try({
          try: (): AttackResult => {
            if (b === 0) return { xAdv: x.clone(), success: new Uint8Array(0), queries: 0 }
            const yi = y.dtype === "int32" ? y : (y.cast("int32") as tf.Tensor1D)
            try {
              // one tidy: whatever the core or the classifier throws, nothing is left behind
              const { xAdv, success } = tf.tidy(() => {
                const first = x.slice([0, 0, 0, 0], [1, -1, -1, -1])
                const k = (classifier.predict ?? classifier.logits)(first, { seed: rng.seed(name, "shape") }).shape[1]
                if (k < minClasses) throw new Error(`needs at least ${minClasses} classes, the classifier has ${k}`)
                const labels = yi.dataSync()
                for (let i = 0; i < labels.length; i++) {
                  if (!(labels[i]! >= 0 && labels[i]! < k)) throw new Error(`label ${labels[i]} of sample ${i} is not in [0, ${k})`)
                }
                const out = core(env, x, yi)
                // the Scope disposes x_adv: never hand it the caller's x
                const xAdv = out === x ? x.clone() : out
                return { xAdv, success: misclassified(env, xAdv, yi, "success") }
              })
              return { xAdv, success, queries: env.queries }
            } finally {
              if (yi !== y) yi.dispose()
            }
          },
          catch: (u) => fail(describe(u))
        }),
        (r) => Effect.sync(() => r.xAdv.dispose())
      )
    })
})
