/**
 * An attack run: its environment (classifier calls with seeds, query counting), gradient probes, and the Effect seam.
 * Plain synchronous tfjs, meant to run inside `tf.tidy`.
 *
 * @internal
 */
import { Effect } from "effect"
import { Rng, type Stream, tf } from "../../Tensor.ts"
import { boundsOf, labelProblem, pixelProblem, shapeProblem } from "./domain.ts"
import { AttackError } from "./types.ts"
import type { AttackResult, AttackSettings, AttackShape, Classifier, PerturbContext } from "./types.ts"

// ---------------------------------------------------------------------------------------------------------------
// the run environment: classifier calls with seeds, query counting, keyed randomness
// ---------------------------------------------------------------------------------------------------------------

/** Passes through the classifier, per sample (a batch of n counts n), shared by an attack call's sub-runs. */
export interface Counts {
  forward: number
  backward: number
}

/** What an attack run closes over. */
export interface Env {
  readonly attack: string
  readonly classifier: Classifier
  readonly rng: Rng["Service"]
  /** per-row key (dataset index) of the rows currently attacked */
  readonly keys: ReadonlyArray<number>
  /** the classifier's input domain: starts, steps and projections stay inside it */
  readonly bounds: readonly [number, number]
  /** the call's salt (PerturbContext.salt), mixed into every draw */
  readonly salt: string | undefined
  /** forward and backward passes spent so far */
  readonly counts: Counts
}

/** A fresh environment for one attack call. */
export const makeEnv = (
  attack: string,
  classifier: Classifier,
  rng: Rng["Service"],
  keys: ReadonlyArray<number>,
  salt?: string
): Env => ({ attack, classifier, rng, keys, bounds: boundsOf(classifier), salt, counts: { forward: 0, backward: 0 } })

/** The path of a draw: the attack's name, the call's salt (when there is one), then `path`. */
const drawPath = (env: Env, path: ReadonlyArray<string | number>): Array<string | number> =>
  env.salt === undefined ? [env.attack, ...path] : [env.attack, "salt", env.salt, ...path]

/** A seed for a draw of this call (keyed by attack name, salt and path). */
export const seedOf = (env: Env, ...path: ReadonlyArray<string | number>): number => env.rng.seed(...drawPath(env, path))

/** A JS stream for a draw of this call. */
export const streamOf = (env: Env, ...path: ReadonlyArray<string | number>): Stream => env.rng.stream(...drawPath(env, path))

/** The same environment for a subset of rows (the pass counts stay shared). */
export const subEnv = (env: Env, idx: ArrayLike<number>): Env => {
  const keys: Array<number> = []
  for (let j = 0; j < idx.length; j++) keys.push(env.keys[idx[j]!]!)
  return { ...env, keys }
}

/** The scores being evaluated (`predict`, else `logits`), off the tape. */
export const predictLogits = (env: Env, x: tf.Tensor4D, ...path: ReadonlyArray<string | number>): tf.Tensor2D => {
  const c = env.classifier
  env.counts.forward += x.shape[0]
  return tf.tidy(() => (c.predict ?? c.logits)(x, { seed: seedOf(env, "predict", ...path) }))
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
      const seed = seedOf(env, "grad", ...path, j)
      env.counts.forward += x.shape[0]
      env.counts.backward += x.shape[0]
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

// ---------------------------------------------------------------------------------------------------------------
// the Effect seam
// ---------------------------------------------------------------------------------------------------------------

const describe = (u: unknown): string => (u instanceof Error ? u.message.split("\n")[0]! : String(u))

/** The synchronous core of an attack: returns x_adv for the rows of env (it may return x itself). */
export type Core = (env: Env, x: tf.Tensor4D, y: tf.Tensor1D) => tf.Tensor4D

/** The class count of a classifier: declared, or learnt from one forward pass on the first sample. */
const classesOf = (env: Env, x: tf.Tensor4D): number => {
  const declared = env.classifier.classes
  if (declared !== undefined) return declared
  return tf.tidy(() => predictLogits(env, x.slice([0, 0, 0, 0], [1, -1, -1, -1]), "shape").shape[1])
}

/**
 * Checks a batch against the classifier's domain (shapes, finite pixels inside its bounds, integer labels in
 * [0, classes), at least `minClasses` classes) and throws an AttackError naming the sample. Samples are named by
 * their keys (dataset indices) in the error.
 */
export const validate = (env: Env, x: tf.Tensor4D, y: tf.Tensor1D, minClasses = 2): void => {
  const fail = (p: { readonly message: string; readonly sample?: number }) =>
    new AttackError({ attack: env.attack, message: p.message, ...(p.sample !== undefined ? { sample: p.sample } : {}) })
  const shape = shapeProblem(env.classifier, x.shape, y.shape) ??
    pixelProblem(x.dataSync(), x.size / Math.max(1, x.shape[0]), env.bounds, env.keys)
  if (shape !== undefined) throw fail(shape)
  if (x.shape[0] === 0) return
  const k = classesOf(env, x)
  if (k < minClasses) throw fail({ message: `needs at least ${minClasses} classes, the classifier has ${k}` })
  const label = labelProblem(y.dataSync(), k, env.keys)
  if (label !== undefined) throw fail(label)
}

/**
 * Validates inputs (shapes, the classifier's input domain, labels), runs the core inside one `tf.tidy`, checks
 * success with `predict`, and hands x_adv to the caller's Scope. One Effect per attack call; the core never
 * allocates Effects.
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
      const b = x.rank === 4 ? x.shape[0] : 0
      const keys = context?.keys === undefined ? Array.from({ length: b }, (_, i) => i) : Array.from(context.keys)
      if (x.rank === 4 && keys.length !== b) return yield* fail(`context.keys has ${keys.length} entries for ${b} samples`)
      const env = makeEnv(name, classifier, rng, keys, context?.salt)
      return yield* Effect.acquireRelease(
        Effect.try({
          try: (): AttackResult => {
            validate(env, x, y, minClasses)
            if (b === 0) return { xAdv: x.clone(), success: new Uint8Array(0), queries: 0, forward: 0, backward: 0 }
            const yi = y.dtype === "int32" ? y : (y.cast("int32") as tf.Tensor1D)
            try {
              // one tidy: whatever the core or the classifier throws, nothing is left behind
              const { xAdv, success } = tf.tidy(() => {
                const out = core(env, x, yi)
                // the Scope disposes x_adv: never hand it the caller's x
                const xAdv = out === x ? x.clone() : out
                return { xAdv, success: misclassified(env, xAdv, yi, "success") }
              })
              const { forward, backward } = env.counts
              return { xAdv, success, queries: forward, forward, backward }
            } finally {
              if (yi !== y) yi.dispose()
            }
          },
          catch: (u) => (u instanceof AttackError ? u : fail(describe(u)))
        }),
        (r) => Effect.sync(() => r.xAdv.dispose())
      )
    })
})
