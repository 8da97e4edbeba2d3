/**
 * The evaluation suite and the neural-dynamics analysis: what `deq eval`, `deq dynamics`, the main job, the
 * examples and sweeps run on a trained DEQ.
 *
 * - {@link runSuite}: every attack we have against the undefended DEQ (ready-made gradients, the
 *   intermediate-state grid, AutoAttack's four attacks, Square alone) and, with the entropy-reduction defence,
 *   against the defended one (the paper's transfer protocol, BPDA, full differentiation, EOT when random, Square
 *   against the defended prediction, AutoAttack through BPDA, with restarts). For each of the two it reports the
 *   per-sample worst case over all of them, with the union of their flags and `unreliable` where they contradict
 *   each other: `result.undefended` and `result.defended` are the numbers to quote.
 * - {@link analyseDynamics}: per state z_n, clean and adversarial accuracy, mean prediction entropy and relative
 *   residual.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import type * as Data from "effect-deq/Data"
 * import * as Dynamics from "effect-deq/Dynamics"
 * import * as Evaluation from "effect-deq/Evaluation"
 * import { Rng } from "effect-deq/Tensor"
 *
 * declare const deq: Dynamics.Deq
 * declare const split: Data.Split
 *
 * const program = Effect.gen(function*() {
 *   const suite = yield* Evaluation.runSuite(deq, Dynamics.readOut.state(8), split, {
 *     suite: new Evaluation.SuiteConfig({ samples: 200 }),
 *     eps: 0.1,
 *     steps: 8,
 *     families: new Set(["grid", "aa"] as const),
 *     defence: true,
 *     log: Effect.log
 *   })
 *   yield* Effect.log(`undefended ${suite.undefended?.robustAccuracy}, defended ${suite.defended?.robustAccuracy}`)
 *   yield* Effect.log(Evaluation.suiteTable(suite))
 * }).pipe(Effect.provide(Rng.seeded(0)))
 * ```
 *
 * @since 0.1.0
 */

export {
  /** Per-state clean and adversarial accuracy, entropy and residual of a DEQ over a split (`deq dynamics`). */
  analyseDynamics,
  /** Options of {@link analyseDynamics}. */
  type AnalysisOptions,
  /** True when every state n >= 2 agrees with the read-out above the threshold. */
  isIdle,
  /** What {@link mechanismCheck} found. */
  type MechanismCheck,
  /** Can random intermediate states act: tail(z_n) against tail(z_N) per state, and the residual at z_N. */
  mechanismCheck,
  /** Options of {@link mechanismCheck}. */
  type MechanismOptions,
  /** One state of {@link mechanismCheck}. */
  type MechanismRow,
  /** The check as a Markdown section body (table and verdict). */
  mechanismSection
} from "./internal/evaluation/dynamics.ts"

export {
  /** The attack families of the evaluation suite. */
  attackFamilies,
  /** One attack family. */
  type AttackFamily,
  /** The evaluation suite (`deq eval`): every attack, undefended and defended, and the two worst cases. */
  runSuite,
  /** Settings of the evaluation suite. */
  SuiteConfig,
  /** What the suite measured. */
  type SuiteResult,
  /** One row of the suite. */
  type SuiteRow
} from "./internal/evaluation/suite.ts"

export {
  /** The suite's distinct gradient-masking flags as a Markdown list. */
  suiteFlags,
  /** The suite's rows as JSON-safe data. */
  suiteJson,
  /** The suite's rows as a Markdown table. */
  suiteTable
} from "./internal/evaluation/report.ts"

export {
  /**
   * A Reference told `(0, batches)` when each evaluation of `Adversary.evaluate` starts and `(done, batches)` after
   * each batch: provide it to show progress (`deq eval` does). Default: nothing.
   */
  BatchProgress
} from "./internal/adversary/evaluation.ts"
