/**
 * Sweeps: the same training, evaluation and dynamics analysis over a grid of configs and seeds, each run a
 * durable workflow on Effect Cluster (effect/cluster, effect/workflow), so a crashed process or machine loses no
 * finished work (docs/sweeps.md).
 *
 * - A sweep file (Schema, strict) names a base preset, overrides, axes and the evaluation; {@link load} expands it
 *   into runs with stable ids (a hash of the resolved config).
 * - {@link sweep} submits the runs and follows them with a live table; without `storage` the workflows run in
 *   this process on a SQLite file in the output directory, with `storage: "postgres://..."` on the runners of
 *   that cluster ({@link runner}). It ends with `summary.md`, `summary.json`, per-state SVG curves and
 *   `index.html` in the output directory; each run writes `DIR/runs/<id>/` as `deq main` would.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Sweep from "effect-deq/Sweep"
 *
 * // the same as `deq sweep --grid presets/sweep-quick.json --out runs/sweep-quick` (embedded: the workflows run
 * // in this process, which chooses its tfjs backend itself)
 * const outcome = await Effect.runPromise(Sweep.sweep({ grid: "presets/sweep-quick.json", out: "runs/sweep-quick" }))
 * ```
 *
 * @since 0.1.0
 */
export {
  /** The axes a sweep file may vary. */
  axisNames,
  /** One axis name. */
  type AxisName,
  /** Expands a decoded sweep file into runs. */
  expand,
  /** Reads, decodes (strictly) and expands a sweep file. */
  load,
  /** Reads and decodes a sweep file without expanding it. */
  readSweepFile,
  /** One run of a sweep. */
  type RunSpec,
  /** An expanded sweep. */
  type Sweep,
  /** The sweep file's schema. */
  SweepFile
} from "./internal/sweep/grid.ts"

export {
  /** Options of {@link runner}. */
  type RunnerJobOptions as RunnerOptions,
  /** Joins a PostgreSQL cluster as a runner and runs sweep workflows until interrupted (`deq runner`). */
  runnerJob as runner,
  /** Submits a sweep, follows it, writes the summary and the page (`deq sweep`). */
  sweepJob as sweep,
  /** Options of {@link sweep}. */
  type SweepOptions,
  /** What a finished sweep reports. */
  type SweepOutcome
} from "./internal/sweep/run.ts"

export {
  /** Storage that cannot be reached or used (a one-line message naming it). */
  StorageError
} from "./internal/sweep/cluster.ts"

export {
  /** Per-arm aggregate of a sweep's finished runs. */
  type ArmSummary,
  /** Mean and sample standard deviation. */
  meanSd,
  /** A finished run's numbers, read from its reports. */
  readRun,
  /** Clean and worst-case robust accuracy of an evaluation report: the one function that reads them. */
  robustOf,
  /** One finished run's numbers. */
  type RunResult,
  /** Aggregates runs per arm. */
  summarize
} from "./internal/sweep/results.ts"

export {
  /** The workflow of one run (activities: train-1..N, evaluate, dynamics, report). */
  RunWorkflow
} from "./internal/sweep/workflow.ts"
