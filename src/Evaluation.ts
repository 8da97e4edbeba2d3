/**
 * The evaluation suite and the neural-dynamics analysis: what `deq eval`, `deq dynamics`, the main job, the
 * examples and sweeps run on a trained DEQ.
 *
 * - {@link runSuite}: the undefended rows (ready-made gradients, the intermediate-state grid, the AutoAttack-style
 *   ensemble) and, with the entropy-reduction defence, the paper's transfer protocol and the adaptive attacks.
 * - {@link analyseDynamics}: per state z_n, clean and adversarial accuracy, mean prediction entropy and relative
 *   residual.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Evaluation from "effect-deq/Evaluation"
 *
 * const suite = Evaluation.runSuite(deq, Dynamics.readOut.state(8), split, {
 *   suite: new Evaluation.SuiteConfig({ samples: 200 }),
 *   eps: 0.1,
 *   steps: 8,
 *   families: new Set(["grid"]),
 *   defence: false,
 *   log: Effect.log
 * })
 * ```
 *
 * @since 0.1.0
 */

export {
  /** Per-state clean and adversarial accuracy, entropy and residual of a DEQ over a split (`deq dynamics`). */
  analyseDynamics,
  /** Options of {@link analyseDynamics}. */
  type AnalysisOptions
} from "./internal/evaluation/dynamics.ts"

export {
  /** The attack families of the evaluation suite. */
  attackFamilies,
  /** One attack family. */
  type AttackFamily,
  /** The evaluation suite (`deq eval`): ready-made, intermediate-state grid and ensemble attacks, defended rows. */
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
