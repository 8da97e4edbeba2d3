/**
 * The neural-dynamics analysis of `deq dynamics` (docs/method.md, "Dynamics analysis"): for every intermediate
 * state z_n of the solve, the accuracy of h(z_n) on clean and on adversarial inputs, the mean prediction entropy
 * and the mean relative residual, averaged over an evaluation subset.
 *
 * The adversarial inputs are made once per batch by an attack on a classifier (the intermediate-state gradient by
 * default) and then observed along the whole trajectory, as the paper's `validate_observe_train` does.
 *
 * @internal
 */
import { Effect } from "effect"
import type { Attack, AttackError, Classifier } from "../../Adversary.ts"
import * as Data from "../../Data.ts"
import * as Dynamics from "../../Dynamics.ts"
import type { StateRow } from "../../Report.ts"
import { acquire, type Rng } from "../../Tensor.ts"

/** Options of {@link analyseDynamics}. */
export interface AnalysisOptions {
  /** number of solver states N to observe */
  readonly steps: number
  readonly batchSize: number
  /** the attack and the classifier it attacks; absent: clean rows only */
  readonly attack?: { readonly attack: Attack["Service"]; readonly classifier: Classifier }
  /** told after each batch (done, total) */
  readonly onBatch?: (done: number, total: number) => Effect.Effect<void>
}

/** Per-state sums over samples. */
interface Sums {
  correct: Float64Array
  entropy: Float64Array
  residual: Float64Array
}

const sums = (n: number): Sums => ({ correct: new Float64Array(n), entropy: new Float64Array(n), residual: new Float64Array(n) })

const accumulate = (into: Sums, traj: Dynamics.Trajectory, labels: Int32Array): void => {
  traj.states.forEach((s, i) => {
    if (i >= into.correct.length) return
    for (let b = 0; b < traj.batch; b++) {
      if (s.predictions[b] === labels[b]) into.correct[i]!++
      into.entropy[i]! += s.entropy[b]!
      into.residual[i]! += s.relResidual[b]!
    }
  })
}

/**
 * Per-state clean (and, with an attack, adversarial) accuracy, entropy and relative residual of `deq` on `split`.
 * Batches run in order; each batch's tensors are freed before the next.
 */
export const analyseDynamics = (
  deq: Dynamics.Deq,
  split: Data.Split,
  options: AnalysisOptions
): Effect.Effect<Array<StateRow>, AttackError, Rng> =>
  Effect.gen(function*() {
    const n = options.steps
    const clean = sums(n), adv = sums(n)
    const plan = Data.batchIndices(split.count, { batchSize: options.batchSize, shuffle: false })
    let seen = 0
    for (let i = 0; i < plan.length; i++) {
      const indices = plan[i]!
      yield* Effect.scoped(Effect.gen(function*() {
        const { x, y } = yield* acquire(() => Data.toTensors(split, indices))
        const labels = Data.gather(split, indices).y
        accumulate(clean, Dynamics.trajectory(deq, x, undefined, { steps: n }), labels)
        if (options.attack !== undefined) {
          const result = yield* options.attack.attack.perturb(options.attack.classifier, x, y, { keys: indices })
          accumulate(adv, Dynamics.trajectory(deq, result.xAdv, undefined, { steps: n }), labels)
        }
      }))
      seen += indices.length
      if (options.onBatch !== undefined) yield* options.onBatch(i + 1, plan.length)
    }
    const rows: Array<StateRow> = []
    for (let k = 0; k < n; k++) {
      rows.push({
        n: k + 1,
        cleanAccuracy: clean.correct[k]! / seen,
        cleanEntropy: clean.entropy[k]! / seen,
        relResidual: clean.residual[k]! / seen,
        ...(options.attack !== undefined
          ? {
            robustAccuracy: adv.correct[k]! / seen,
            robustEntropy: adv.entropy[k]! / seen,
            robustRelResidual: adv.residual[k]! / seen
          }
          : {})
      })
    }
    return rows
  })
