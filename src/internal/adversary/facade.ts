/**
 * Attacks for code outside Effect: `fromModel` turns a `tf.LayersModel` or a plain `(x) => logits` function into a
 * Classifier, and a PromiseAttack runs an Effect attack as a Promise. What a promise resolves to is the caller's:
 * x_adv is cloned out of the attack's Scope before the Scope closes (the original is freed with it), so nothing is
 * "disposed" behind the caller's back and nothing else is left. Failures reject with the attack's own typed error
 * objects (AttackError, ConfigError, ResumeError), not wrappers.
 *
 * @internal
 */
import { Cause, Effect, Exit } from "effect"
import { ConfigError } from "../../Errors.ts"
import { Rng, tf } from "../../Tensor.ts"
import * as evaluation from "./evaluation.ts"
import type { AttackResult, AttackShape, Classifier, FromModelOptions, ModelLike, PromiseAttack, Seeded } from "./types.ts"

// ---------------------------------------------------------------------------------------------------------------
// fromModel
// ---------------------------------------------------------------------------------------------------------------

/** The part of a `tf.LayersModel` that fromModel uses (duck-typed: the model may come from another tfjs copy). */
interface LayersLike {
  readonly name: string
  readonly inputs: ReadonlyArray<{ readonly shape: ReadonlyArray<number | null> }>
  readonly outputs: ReadonlyArray<{ readonly shape: ReadonlyArray<number | null> }>
  readonly layers: ReadonlyArray<{ getConfig(): { readonly activation?: unknown } }>
  apply(x: tf.Tensor, kwargs?: { readonly training?: boolean }): unknown
}

const bad = (field: string, message: string) => new ConfigError({ path: `fromModel.${field}`, message: `fromModel.${field}: ${message}` })

const isLayers = (m: unknown): m is LayersLike =>
  typeof m === "object" && m !== null && "apply" in m && "inputs" in m && "outputs" in m && "layers" in m

const product = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a * b, 1)
const text = (s: ReadonlyArray<number | null>) => `[${s.map((v) => v ?? "batch").join(", ")}]`

/** Checks the options that do not depend on the model; throws the ConfigError. */
const checkOptions = (o: FromModelOptions): void => {
  const b = o.bounds as ReadonlyArray<number> | undefined
  if (!Array.isArray(b) || b.length !== 2 || !b.every(Number.isFinite) || !(b[0]! < b[1]!)) {
    throw bad("bounds", `expected [lo, hi] with finite lo < hi, got ${JSON.stringify(o.bounds)}`)
  }
  if (o.classes !== undefined && !(Number.isInteger(o.classes) && o.classes >= 2)) {
    throw bad("classes", `expected an integer >= 2, got ${o.classes}`)
  }
  if (o.inputShape !== undefined && !(o.inputShape.length === 3 && o.inputShape.every((v) => Number.isInteger(v) && v >= 1))) {
    throw bad("inputShape", `expected [height, width, channels] of positive integers, got ${JSON.stringify(o.inputShape)}`)
  }
}

/** The layers model's declared shapes, checked against the options. */
const layersShapes = (m: LayersLike, o: FromModelOptions) => {
  if (m.inputs.length !== 1 || m.outputs.length !== 1) {
    throw bad("model", `the model has ${m.inputs.length} inputs and ${m.outputs.length} outputs; a classifier has one of each`)
  }
  const input = m.inputs[0]!.shape
  const output = m.outputs[0]!.shape
  const fixed = input.slice(1).every((v) => v !== null)
  if (!fixed || (input.length !== 4 && input.length !== 2)) {
    throw bad("model", `its input has shape ${text(input)}; expected [batch, height, width, channels] or [batch, features]`)
  }
  const dims = input.slice(1) as Array<number>
  const flat = input.length === 2 ? dims[0]! : undefined
  if (input.length === 4 && o.inputShape !== undefined && o.inputShape.some((v, i) => v !== dims[i])) {
    throw bad("inputShape", `[${o.inputShape}] differs from the model's input ${text(input)}`)
  }
  if (flat !== undefined && o.inputShape !== undefined && product(o.inputShape) !== flat) {
    throw bad("inputShape", `[${o.inputShape}] has ${product(o.inputShape)} values, the model's input ${text(input)} takes ${flat}`)
  }
  if (output.length !== 2 || output[1] === null) throw bad("model", `its output has shape ${text(output)}; expected [batch, classes]`)
  const classes = output[1]!
  if (o.classes !== undefined && o.classes !== classes) throw bad("classes", `${o.classes} differs from the model's ${classes} outputs`)
  const inputShape = input.length === 4 ? (dims as unknown as readonly [number, number, number]) : o.inputShape
  const activation = m.layers.at(-1)?.getConfig().activation
  return { flat, classes, inputShape, softmax: activation === "softmax" }
}

/** log(p) of probabilities, kept finite where p underflows */
const logOf = (p: tf.Tensor) => tf.log(tf.maximum(p, 1e-30))

/**
 * A Classifier from a `tf.LayersModel` (its shapes and class count read from the model) or a plain function.
 * Throws a ConfigError naming the option for bad options or a model that is not an image classifier.
 */
export const fromModel = (model: ModelLike, options: FromModelOptions): Classifier => {
  checkOptions(options)
  const bounds = [options.bounds[0], options.bounds[1]] as const
  if (isLayers(model)) {
    const s = layersShapes(model, options)
    const probabilities = (options.output ?? (s.softmax ? "probabilities" : "logits")) === "probabilities"
    const logits = (x: tf.Tensor4D) =>
      tf.tidy(() => {
        const out = model.apply(s.flat === undefined ? x : tf.reshape(x, [x.shape[0], s.flat]), { training: false }) as tf.Tensor
        return (probabilities ? logOf(out) : out) as tf.Tensor2D
      })
    return { name: options.name ?? model.name, bounds, classes: s.classes, ...(s.inputShape !== undefined ? { inputShape: s.inputShape } : {}), logits }
  }
  if (typeof model !== "function") throw bad("model", "expected a tf.LayersModel or a function (x) => logits")
  const probabilities = options.output === "probabilities"
  const logits = (x: tf.Tensor4D) =>
    tf.tidy(() => {
      const out = model(x)
      if (out.rank !== 2) throw new Error(`the model returned shape [${out.shape}]; expected logits [batch, classes]`)
      return (probabilities ? logOf(out) : out) as tf.Tensor2D
    })
  return {
    name: options.name ?? "model",
    bounds,
    ...(options.classes !== undefined ? { classes: options.classes } : {}),
    ...(options.inputShape !== undefined ? { inputShape: options.inputShape } : {}),
    logits
  }
}

// ---------------------------------------------------------------------------------------------------------------
// the Promise facade
// ---------------------------------------------------------------------------------------------------------------

/** Resolves with the value, or rejects with the typed error itself (a defect: the thrown value). */
const settle = <A, E>(effect: Effect.Effect<A, E>): Promise<A> =>
  Effect.runPromiseExit(effect).then((exit) => (Exit.isSuccess(exit) ? exit.value : Promise.reject(Cause.squash(exit.cause))))

/** Runs a construction synchronously; throws its typed error. */
const orThrow = <A, E>(effect: Effect.Effect<A, E>): A => {
  const exit = Effect.runSyncExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

const checkSeed = (seed: number): void => {
  if (!Number.isFinite(seed)) throw new ConfigError({ path: "seed", message: `seed: expected a finite number, got ${seed}` })
}

/** A Promise attack from an Effect attack and an explicit seed. */
export const toPromise = (attack: AttackShape, options: Seeded): PromiseAttack => {
  checkSeed(options.seed)
  return {
    name: attack.name,
    settings: attack.settings,
    seed: options.seed,
    attack,
    run: (classifier, x, y, context) =>
      settle(
        Effect.scoped(
          // cloned inside the Scope: the clone is the caller's, the Scope frees the original
          Effect.map(attack.perturb(classifier, x, y, context), (r): AttackResult => ({ ...r, xAdv: r.xAdv.clone() }))
        ).pipe(Effect.provide(Rng.seeded(options.seed)))
      )
  }
}

/** A Promise-attack constructor from an Effect one (options decoded now: a bad option throws the ConfigError). */
export const lift = <O>(make: (options: O) => Effect.Effect<AttackShape, ConfigError>) => (options: O, seeded: Seeded): PromiseAttack =>
  toPromise(orThrow(make(options)), seeded)

/** `Adversary.evaluate` as a Promise (its result is plain data: nothing to dispose). */
export const evaluate = (
  classifier: Classifier,
  data: evaluation.EvaluationData,
  attacks: PromiseAttack | ReadonlyArray<PromiseAttack>,
  options: Parameters<typeof evaluation.evaluate>[3] & Seeded
): Promise<evaluation.EvaluationResult> => {
  const { seed, ...rest } = options
  checkSeed(seed)
  const list = (Array.isArray(attacks) ? attacks : [attacks]) as ReadonlyArray<PromiseAttack>
  return settle(evaluation.evaluate(classifier, data, list.map((a) => a.attack), rest).pipe(Effect.provide(Rng.seeded(seed))))
}
