/**
 * Ensembles (AutoAttack's rule): stages run in order, each only on the samples still classified correctly; the
 * result is the per-sample worst case, with the stage that first broke each sample.
 */
import { Effect } from "effect"
import { acquire, own, Rng, tf } from "../../Tensor.ts"
import { ConfigError } from "../../Errors.ts"
import { gatherRows, indicesWhere, maskTensor, scatterRows, whereRows } from "./rows.ts"
import { makeEnv, predictLogits, validate } from "./run.ts"
import { AttackError } from "./types.ts"
import type { AttackResult, AttackShape, Classifier, PerturbContext } from "./types.ts"
import type { Scope } from "effect"

/** What one stage of an ensemble did on a batch. */
export interface StageOutcome {
  readonly name: string
  /** samples this stage broke first */
  readonly broken: number
  readonly queries: number
  /** forward / backward passes through the classifier, per sample */
  readonly forward: number
  readonly backward: number
}

/** The outcome of an ensemble on a batch. `success[i]` is 1 exactly when `brokenAt[i] !== -1`. */
export interface EnsembleResult extends AttackResult {
  /** per sample: 1 when `predict(x)` is right */
  readonly cleanCorrect: Uint8Array
  /** per sample: 0 misclassified clean, k >= 1 first broken by stage k (1-based), -1 robust to every stage */
  readonly brokenAt: Int32Array
  readonly stages: ReadonlyArray<StageOutcome>
}

/** An ensemble is an attack (its perturb is the worst case) that also reports its stages. */
export interface EnsembleShape extends AttackShape {
  readonly stages: ReadonlyArray<AttackShape>
  readonly run: (
    classifier: Classifier,
    x: tf.Tensor4D,
    y: tf.Tensor1D,
    context?: PerturbContext & { readonly cleanCorrect?: Uint8Array }
  ) => Effect.Effect<EnsembleResult, AttackError, Rng | Scope.Scope>
}

/** True for an ensemble (it carries its stages). */
export const isEnsemble = (a: AttackShape): a is EnsembleShape => "stages" in a && "run" in a

/** The plain attacks of a list that may contain ensembles, in order. */
export const flatten = (attacks: AttackShape | ReadonlyArray<AttackShape>): Array<AttackShape> =>
  (Array.isArray(attacks) ? attacks : [attacks as AttackShape]).flatMap((a: AttackShape) =>
    isEnsemble(a) ? flatten(a.stages) : [a]
  )

/** All stages must share one threat model; a mismatch is a ConfigError naming the stage. */
export const checkCompatible = (stages: ReadonlyArray<AttackShape>, prefix: string): Effect.Effect<void, ConfigError> =>
  Effect.gen(function*() {
    if (stages.length === 0) return yield* new ConfigError({ path: prefix, message: "no attacks given" })
    const first = stages[0]!.settings
    for (let i = 1; i < stages.length; i++) {
      const s = stages[i]!.settings
      if (s.norm !== first.norm) {
        return yield* new ConfigError({
          path: `${prefix}[${i}].norm`,
          message: `stage "${stages[i]!.name}" uses ${s.norm}, stage "${stages[0]!.name}" ${first.norm}; an ensemble has one threat model`
        })
      }
      if (s.eps !== first.eps) {
        return yield* new ConfigError({
          path: `${prefix}[${i}].eps`,
          message: `stage "${stages[i]!.name}" uses eps ${s.eps}, stage "${stages[0]!.name}" ${first.eps}; an ensemble has one threat model`
        })
      }
    }
  })

/** Runs the stages in order on the samples still correct; see {@link EnsembleResult}. */
export const runStages = (
  stages: ReadonlyArray<AttackShape>,
  classifier: Classifier,
  x: tf.Tensor4D,
  y: tf.Tensor1D,
  context?: PerturbContext & { readonly cleanCorrect?: Uint8Array }
): Effect.Effect<EnsembleResult, AttackError, Rng | Scope.Scope> =>
  Effect.gen(function*() {
    const rng = yield* Rng
    const b = x.rank === 4 ? x.shape[0] : 0
    const keys = context?.keys === undefined ? Array.from({ length: b }, (_, i) => i) : Array.from(context.keys)
    const env = makeEnv("ensemble", classifier, rng, keys, context?.salt)
    const cleanCorrect = yield* Effect.try({
      try: () => {
        // the stages check their own inputs, but a batch nobody attacks (all misclassified) must be checked here
        validate(env, x, y)
        if (context?.cleanCorrect !== undefined) return context.cleanCorrect
        return tf.tidy(() => {
          const scores = predictLogits(env, x, "clean")
          return tf.equal(tf.argMax(scores, 1), y.cast("int32")).dataSync() as Uint8Array
        })
      },
      catch: (u) =>
        u instanceof AttackError ? u : new AttackError({ attack: "ensemble", message: `clean prediction failed: ${String(u)}` })
    })
    let { forward, backward } = env.counts
    const brokenAt = new Int32Array(b).fill(-1)
    for (let i = 0; i < b; i++) if (cleanCorrect[i] !== 1) brokenAt[i] = 0
    let xAdv = yield* acquire(() => x.clone())
    const outcomes: Array<StageOutcome> = []
    for (let k = 0; k < stages.length; k++) {
      const stage = stages[k]!
      const rows = indicesWhere(brokenAt, -1)
      if (rows.length === 0) {
        outcomes.push({ name: stage.name, broken: 0, queries: 0, forward: 0, backward: 0 })
        continue
      }
      const current = xAdv
      const step = yield* Effect.scoped(Effect.gen(function*() {
        const xs = yield* acquire(() => gatherRows(x, rows))
        const ys = yield* acquire(() => gatherRows(y, rows))
        const r = yield* stage.perturb(classifier, xs, ys, {
          keys: Array.from(rows, (i) => keys[i]!),
          ...(context?.salt !== undefined ? { salt: context.salt } : {})
        })
        // only the samples a stage broke take its x_adv (AutoAttack's rule)
        const merged = tf.tidy(() =>
          scatterRows(current, whereRows(maskTensor(r.success), r.xAdv, gatherRows(current, rows)), rows)
        )
        return { merged, success: r.success, forward: r.forward, backward: r.backward }
      }))
      xAdv = yield* own(step.merged)
      current.dispose() // its finalizer is then a no-op
      let broken = 0
      for (let j = 0; j < rows.length; j++) {
        if (step.success[j] === 1) {
          brokenAt[rows[j]!] = k + 1
          broken++
        }
      }
      forward += step.forward
      backward += step.backward
      outcomes.push({ name: stage.name, broken, queries: step.forward, forward: step.forward, backward: step.backward })
    }
    const success = new Uint8Array(b)
    for (let i = 0; i < b; i++) success[i] = brokenAt[i] === -1 ? 0 : 1
    return { xAdv, success, queries: forward, forward, backward, cleanCorrect, brokenAt, stages: outcomes }
  })

/** An ensemble of attacks sharing one threat model. */
export const makeEnsemble = (attacks: ReadonlyArray<AttackShape>): Effect.Effect<EnsembleShape, ConfigError> =>
  Effect.gen(function*() {
    const stages = flatten(attacks)
    yield* checkCompatible(stages, "ensemble")
    const first = stages[0]!.settings
    const run: EnsembleShape["run"] = (classifier, x, y, context) => runStages(stages, classifier, x, y, context)
    return {
      name: stages.map((s) => s.name).join("+"),
      settings: {
        kind: stages.some((s) => s.settings.kind === "white-box") ? "white-box" : "black-box",
        norm: first.norm,
        eps: first.eps,
        steps: Math.max(...stages.map((s) => s.settings.steps)),
        restarts: Math.max(...stages.map((s) => s.settings.restarts)),
        options: { stages: stages.map((s) => ({ name: s.name, ...s.settings })) }
      },
      stages,
      run,
      perturb: run
    }
  })
