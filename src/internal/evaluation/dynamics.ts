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
import * as Report from "../../Report.ts"
import type { StateRow } from "../../Report.ts"
import { acquire, type Rng, tf, untaped } from "../../Tensor.ts"

/** Options of {@link analyseDynamics}. */
export interface AnalysisOptions {
  /** number of solver states N to observe */
  readonly steps: number
  readonly batchSize: number
  /** the attack and the classifier it attacks; absent: clean rows only */
  readonly attack?: { readonly attack: Attack["Service"]; readonly classifier: Classifier }
  /**
   * more attacks on the same classifier: each state's robust accuracy is then the per-sample worst case over
   * `attack` and these (a sample counts only when h(z_n) is right under every attack), with each attack's own
   * accuracy in `StateRow.attacks`; entropy and residual stay those of `attack`'s inputs
   */
  readonly more?: ReadonlyArray<Attack["Service"]>
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
    const attacks = options.attack === undefined ? [] : [options.attack.attack, ...(options.more ?? [])]
    const perAttack = attacks.map(() => new Float64Array(n))
    const worst = new Float64Array(n)
    const plan = Data.batchIndices(split.count, { batchSize: options.batchSize, shuffle: false })
    let seen = 0
    for (let i = 0; i < plan.length; i++) {
      const indices = plan[i]!
      yield* Effect.scoped(Effect.gen(function*() {
        const { x, y } = yield* acquire(() => Data.toTensors(split, indices))
        const labels = Data.gather(split, indices).y
        accumulate(clean, Dynamics.trajectory(deq, x, undefined, { steps: n }), labels)
        if (options.attack !== undefined) {
          const { classifier } = options.attack
          // right[k][b]: h(z_k) right on sample b under every attack so far
          const right = Array.from({ length: n }, () => new Uint8Array(indices.length).fill(1))
          for (let a = 0; a < attacks.length; a++) {
            const result = yield* attacks[a]!.perturb(classifier, x, y, { keys: indices })
            const traj = Dynamics.trajectory(deq, result.xAdv, undefined, { steps: n })
            if (a === 0) accumulate(adv, traj, labels)
            traj.states.forEach((s, k) => {
              if (k >= n) return
              for (let b = 0; b < traj.batch; b++) {
                const ok = s.predictions[b] === labels[b]
                if (ok) perAttack[a]![k]!++
                if (!ok) right[k]![b] = 0
              }
            })
          }
          right.forEach((r, k) => (worst[k]! += r.reduce((t, v) => t + v, 0)))
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
            robustAccuracy: attacks.length > 1 ? worst[k]! / seen : adv.correct[k]! / seen,
            ...(attacks.length > 1
              ? { attacks: Object.fromEntries(attacks.map((a, i) => [a.name, perAttack[i]![k]! / seen])) }
              : {}),
            robustEntropy: adv.entropy[k]! / seen,
            robustRelResidual: adv.residual[k]! / seen
          }
          : {})
      })
    }
    return rows
  })

// ---------------------------------------------------------------------------------------------------------------
// Can the mechanism act? (docs/method.md, "Dynamics analysis")
// ---------------------------------------------------------------------------------------------------------------

/** Per state z_n: how far the loss's read-out tail(z_n) is from tail(z_N), and how often both predict alike. */
export interface MechanismRow {
  readonly n: number
  /** mean over samples of ||tail(z_n) - tail(z_N)|| / ||tail(z_N)|| (clean inputs) */
  readonly distance: number
  /** share of samples where h(tail(z_n)) and h(tail(z_N)) predict the same class */
  readonly agreement: number
}

/** What {@link mechanismCheck} found. */
export interface MechanismCheck {
  readonly rows: ReadonlyArray<MechanismRow>
  /** mean clean relative residual ||f(z_N) - z_N|| / ||f(z_N)|| at the read-out state */
  readonly residual: number
  readonly samples: number
  /** the tail the loss reads a state through (the deq's gradient mode) */
  readonly tail: string
  /** agreement above which a state counts as already decided */
  readonly threshold: number
  /** true when every n >= 2 agrees above the threshold: random intermediate states have nothing to regulate */
  readonly idle: boolean
}

/** Options of {@link mechanismCheck}. */
export interface MechanismOptions {
  /** the read-out state N */
  readonly steps: number
  readonly batchSize: number
  /** default 0.95 */
  readonly threshold?: number
}

const tailName = (g: Dynamics.Gradient): string =>
  g._tag === "Unroll" ? `f, then ${g.k} damped steps (lambda ${g.lambda})` : g._tag.toLowerCase()

/**
 * One batch: solve N steps recording z_1..z_N, read each state through the deq's tail as the training loss does,
 * and return per state the relative distance to tail(z_N) and whether the predictions agree ([N, B] each), plus the
 * relative residual at z_N ([B]).
 */
const mechanismBatch = (deq: Dynamics.Deq, x: tf.Tensor4D, steps: number) =>
  untaped(() =>
    tf.tidy(() => {
      const batch = x.shape[0]
      const p = Dynamics.prepare(deq, x)
      const r = deq.solver.run(p.f, p.z0, Dynamics.exactSteps(deq, steps, { trajectory: true }))
      const states = r.trajectory ?? []
      if (states.length < steps) throw new Error(`effect-deq Evaluation: the solver returned ${states.length} states, expected ${steps}`)
      const tails = states.slice(0, steps).map((z) => Dynamics.applyGradient(p.f, z, deq.backward, p.z0))
      const flat = (t: tf.Tensor) => tf.reshape(t, [batch, -1])
      const last = flat(tails[steps - 1]!)
      const lastNorm = tf.add(tf.norm(last, "euclidean", 1), 1e-9)
      const lastPred = tf.argMax(deq.model.head(tails[steps - 1]!), 1)
      const distance = tf.stack(tails.map((t) => tf.div(tf.norm(tf.sub(flat(t), last), "euclidean", 1), lastNorm)))
      const agree = tf.stack(tails.map((t) => tf.cast(tf.equal(tf.argMax(deq.model.head(t), 1), lastPred), "float32")))
      const zN = states[steps - 1]!
      const fz = flat(p.f(zN))
      const residual = tf.div(tf.norm(tf.sub(fz, flat(zN)), "euclidean", 1), tf.add(tf.norm(fz, "euclidean", 1), 1e-9))
      return { distance, agree, residual }
    })
  )

/**
 * The "can the mechanism act" check: for every state z_n, the relative distance ||tail(z_n) - tail(z_N)|| /
 * ||tail(z_N)|| and the prediction agreement of h(tail(z_n)) with h(tail(z_N)) on clean inputs, and the clean
 * relative residual at z_N. A loss on random intermediate states reads tail(z_n): when every n >= 2 already
 * predicts like z_N, that loss is nearly the final-state loss and the method has nothing to regulate.
 */
export const mechanismCheck = (
  deq: Dynamics.Deq,
  split: Data.Split,
  options: MechanismOptions
): Effect.Effect<MechanismCheck> =>
  Effect.gen(function*() {
    const n = options.steps
    const threshold = options.threshold ?? 0.95
    const distance = new Float64Array(n), agreement = new Float64Array(n)
    let residual = 0, seen = 0
    for (const indices of Data.batchIndices(split.count, { batchSize: options.batchSize, shuffle: false })) {
      yield* Effect.scoped(Effect.gen(function*() {
        const { x } = yield* acquire(() => Data.toTensors(split, indices))
        const m = mechanismBatch(deq, x as tf.Tensor4D, n)
        const d = m.distance.dataSync(), a = m.agree.dataSync(), r = m.residual.dataSync()
        tf.dispose([m.distance, m.agree, m.residual])
        const b = indices.length
        for (let k = 0; k < n; k++) {
          for (let i = 0; i < b; i++) {
            distance[k]! += d[k * b + i]!
            agreement[k]! += a[k * b + i]!
          }
        }
        for (let i = 0; i < b; i++) residual += r[i]!
        seen += b
      }))
    }
    const rows = Array.from({ length: n }, (_, k) => ({ n: k + 1, distance: distance[k]! / seen, agreement: agreement[k]! / seen }))
    return {
      rows,
      residual: residual / Math.max(1, seen),
      samples: seen,
      tail: tailName(deq.backward),
      threshold,
      idle: isIdle(rows, threshold)
    }
  })

/** True when every state n >= 2 agrees with the read-out above `threshold` (and there is such a state). */
export const isIdle = (rows: ReadonlyArray<MechanismRow>, threshold: number): boolean => {
  const late = rows.filter((r) => r.n >= 2)
  return late.length > 0 && late.every((r) => r.agreement > threshold)
}

/** The check as a Markdown section body: the table and the verdict sentence. */
export const mechanismSection = (m: MechanismCheck): string => {
  const last = m.rows.length
  const table = Report.table(
    ["state n", `rel. distance of tail(z_n) to tail(z_${last})`, `prediction agreement with h(tail(z_${last})) %`],
    m.rows.map((r) => [r.n, r.distance.toFixed(4), Report.pct(r.agreement)])
  )
  const verdict = m.idle
    ? `**Random intermediate states have nothing to regulate here**: every state from z_2 on predicts like ` +
      `z_${last} on more than ${Report.pct(m.threshold)}% of clean inputs once read through the tail, so a loss on ` +
      `tail(z_n) is nearly the final-state loss.`
    : `The mechanism can act: read through the tail, the states from z_2 on agree with z_${last} on as few as ` +
      `${Report.pct(Math.min(...m.rows.filter((r) => r.n >= 2).map((r) => r.agreement), 1))}% of clean inputs ` +
      `("nothing to regulate" needs more than ${Report.pct(m.threshold)}% for every n >= 2).`
  return [
    `${m.samples} clean test images; tail: ${m.tail} (what the training loss reads a state through). ` +
    `Clean relative residual at z_${last}: ${m.residual.toFixed(4)}.`,
    "",
    table,
    "",
    verdict
  ].join("\n")
}
