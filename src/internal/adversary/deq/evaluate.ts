/**
 * DEQ evaluations: the worst case over a grid of intermediate-state surrogates (i, K_a, lambda), and one
 * evaluation per gradient source and defence mode with the DEQ flags spelled out.
 */
import { Effect } from "effect"
import * as Dynamics from "../../../Dynamics.ts"
import { ConfigError } from "../../../Errors.ts"
import type { Rng } from "../../../Tensor.ts"
import { decode } from "../../../Config.ts"
import { type DefenceMode, deqClassifier, type DiagnosticsOptions } from "./classifier.ts"
import { type GradientSource, implicit, intermediate, label as labelOf, phantom } from "./source.ts"
import { flatten } from "../ensemble.ts"
import { eotOf, evaluate, type EvaluationData, type EvaluationResult } from "../evaluation.ts"
import { type Flag, maskingFlags } from "../flags.ts"
import { combineWorst } from "../worst.ts"
import { EvaluateOptions } from "../options.ts"
import type { AttackError, AttackShape, ResumeError } from "../types.ts"

/** Evaluation options a DEQ evaluation passes on to each `evaluate` (the gradient-source label is set per run). */
export type EvaluateSettings = Omit<typeof EvaluateOptions.Encoded, "gradientSource">

// ---------------------------------------------------------------------------------------------------------------
// grids
// ---------------------------------------------------------------------------------------------------------------

/**
 * A grid of intermediate-state surrogates: every combination of state z_n (n solver steps, the papers' entry
 * n - 1), tail length K_a and damping lambda.
 */
export interface Grid {
  readonly states: ReadonlyArray<number>
  readonly k: ReadonlyArray<number>
  readonly lambda: ReadonlyArray<number>
}

const range = (from: number, to: number): Array<number> => Array.from({ length: to - from + 1 }, (_, j) => from + j)

/**
 * The default grid for a budget of N solver steps: lambda in {1, 0.5}, states z_{N/4}, z_{N/2}, z_N (z_2, z_4, z_8
 * for N = 8: the paper's entries 1, 3, 7, including the read-out state), K_a in {1, 5}.
 */
export const smallGrid = (steps: number): Grid => ({
  lambda: [1, 0.5],
  states: [...new Set([Math.max(1, Math.round(steps / 4)), Math.max(1, Math.floor(steps / 2)), Math.max(1, steps)])]
    .sort((a, b) => a - b),
  k: [1, 5]
})

/**
 * The papers' full grid for N solver steps (default 8): lambda in {1, 0.5}, K_a in 1..9, and the states of their
 * `results_list[0..N-1]`, i.e. z_1..z_N.
 */
export const paperGrid = (steps = 8): Grid => ({ lambda: [1, 0.5], states: range(1, steps), k: range(1, 9) })

/** The sources of a grid, lambda-major, then the state, then K_a. */
export const gridSources = (grid: Grid): Array<GradientSource> =>
  grid.lambda.flatMap((lambda) => grid.states.flatMap((n) => grid.k.map((k) => intermediate(n, k, lambda))))

const checkGrid = (grid: Grid): Effect.Effect<Grid, ConfigError> =>
  Effect.gen(function*() {
    const bad = (path: string, message: string) => new ConfigError({ path: `grid.${path}`, message })
    for (const key of ["states", "k", "lambda"] as const) {
      if (grid[key].length === 0) return yield* bad(key, `the grid has no ${key} values`)
    }
    for (const v of grid.states) {
      if (!Number.isInteger(v) || v < 0) return yield* bad("states", `state ${v} is not an integer >= 0`)
    }
    for (const v of grid.k) if (!Number.isInteger(v) || v < 0) return yield* bad("k", `K_a ${v} is not an integer >= 0`)
    for (const v of grid.lambda) if (!(v > 0 && v <= 1)) return yield* bad("lambda", `lambda ${v} is not in (0, 1]`)
    return grid
  })

const fileFor = (prefix: string | undefined, label: string): string | undefined =>
  prefix === undefined ? undefined : `${prefix}.${label.replace(/[^A-Za-z0-9._-]/g, "_")}.jsonl`

const withFile = (settings: EvaluateSettings, label: string): typeof EvaluateOptions.Encoded => {
  const file = fileFor(settings.resumeFile, label)
  const { resumeFile: _, ...rest } = settings
  return { ...rest, gradientSource: label, ...(file !== undefined ? { resumeFile: file } : {}) }
}

// ---------------------------------------------------------------------------------------------------------------
// DEQ flag messages
// ---------------------------------------------------------------------------------------------------------------

/** The flags of a DEQ evaluation, with the cosine flag naming what was compared. */
export const deqFlags = (flags: ReadonlyArray<Flag>): Array<Flag> =>
  flags.map((f) =>
    f.kind === "gradient-cosine-low" ?
      {
        ...f,
        message: `implicit vs unrolled input gradient cosine ${f.value.toFixed(3)} < ${f.threshold}: the forward solve ` +
          "and the backward pass disagree (not at a fixed point, or a misaligned backward), so gradients at the " +
          "final state mislead the attack; attack through intermediate states (the (i, K_a, lambda) grid)"
      } :
      f
  )

const withDeqFlags = (r: EvaluationResult): EvaluationResult => ({ ...r, flags: deqFlags(r.flags) })

// ---------------------------------------------------------------------------------------------------------------
// the grid's worst case
// ---------------------------------------------------------------------------------------------------------------

/** Options of {@link evaluateGrid}. */
export interface GridOptions {
  /** default: {@link smallGrid} of the deq's budget */
  readonly grid?: Grid
  readonly readOut?: Dynamics.ReadOut
  readonly defence?: Dynamics.Defence
  /** "paper" or "bpda" (default); "full" does not use a gradient source */
  readonly mode?: Exclude<DefenceMode, "full">
  readonly name?: string
  readonly diagnostics?: boolean | DiagnosticsOptions
  /** passed to every `evaluate`; a `resumeFile` is a prefix (one file per grid point) */
  readonly evaluate?: EvaluateSettings
}

/** One grid point's evaluation. */
export interface GridPoint {
  readonly source: GradientSource
  readonly label: string
  readonly result: EvaluationResult
}

/** The outcome of a grid search. */
export interface GridResult {
  readonly grid: Grid
  /** one evaluation per grid point, in {@link gridSources} order (each with its own robust accuracy and flags) */
  readonly points: ReadonlyArray<GridPoint>
  /**
   * the per-sample worst case as one result: a sample is robust only if every grid point left it correct. Its
   * "stages" are the grid points (`perSample.brokenAt` = 1-based index of the first point that broke the sample)
   */
  readonly worst: EvaluationResult
  /** per sample: the label of the first grid point that broke it, "clean" when misclassified clean, null when robust */
  readonly brokenBy: ReadonlyArray<string | null>
}

/** Combines per-point results into the per-sample worst case (flags recomputed from the merged measurements). */
export const combineGrid = (
  points: ReadonlyArray<GridPoint>,
  meta: {
    readonly options: EvaluateOptions
    readonly classifier: { readonly dynamic?: boolean; readonly randomized?: boolean }
    readonly eot: number
    readonly label: string
  }
): { readonly worst: EvaluationResult; readonly brokenBy: Array<string | null> } => {
  const { worst, brokenBy } = combineWorst(
    points.map((p) => ({ label: p.label, result: p.result })),
    meta.label,
    (diagnostics) => deqFlags(maskingFlags(diagnostics, meta.options, meta.classifier, meta.eot))
  )
  // a grid runs one attack: its steps and restarts are the attack's, not one entry per point
  const first = points[0]!.result
  return { worst: { ...worst, attack: first.attack, steps: first.steps, restarts: first.restarts }, brokenBy }
}

const list = (vs: ReadonlyArray<number>) => `{${vs.join(", ")}}`

/** The label of a grid's worst case, e.g. "worst of 12: lambda {1, 0.5} x state {z_2, z_4, z_8} x K_a {1, 5}". */
export const gridLabel = (grid: Grid, prefix?: string): string =>
  `${prefix === undefined ? "" : `${prefix}:`}worst of ${grid.states.length * grid.k.length * grid.lambda.length}: ` +
  `lambda ${list(grid.lambda)} x state {${grid.states.map((n) => `z_${n}`).join(", ")}} x K_a ${list(grid.k)}`

/**
 * Runs `attacks` once per grid point (an intermediate-state source each) and keeps, per sample, the worst case:
 * see src/Adversary.ts `evaluateGrid`.
 */
export const evaluateGrid = (
  deq: Dynamics.Deq,
  data: EvaluationData,
  attacks: AttackShape | ReadonlyArray<AttackShape>,
  options: GridOptions = {}
): Effect.Effect<GridResult, AttackError | ConfigError | ResumeError, Rng> =>
  Effect.gen(function*() {
    if ((options.mode as DefenceMode | undefined) === "full") {
      return yield* new ConfigError({ path: "mode", message: `mode "full" differentiates the defence itself and uses no gradient source; use "paper" or "bpda"` })
    }
    const grid = yield* checkGrid(options.grid ?? smallGrid(Dynamics.budget(deq)))
    const settings = options.evaluate ?? {}
    const decoded = yield* decode(EvaluateOptions, "evaluate")({ ...settings })
    const points: Array<GridPoint> = []
    let classifierFlags: { dynamic?: boolean; randomized?: boolean } = {}
    for (const source of gridSources(grid)) {
      const classifier = deqClassifier(deq, {
        source,
        ...(options.readOut !== undefined ? { readOut: options.readOut } : {}),
        ...(options.defence !== undefined ? { defence: options.defence, mode: options.mode ?? "bpda" } : {}),
        ...(options.name !== undefined ? { name: options.name } : {}),
        ...(options.diagnostics !== undefined ? { diagnostics: options.diagnostics } : {})
      })
      classifierFlags = {
        ...(classifier.dynamic !== undefined ? { dynamic: classifier.dynamic } : {}),
        ...(classifier.randomized !== undefined ? { randomized: classifier.randomized } : {})
      }
      // each point draws its own random starts: the worst case over the grid is also one over restarts
      const result = yield* evaluate(classifier, data, attacks, {
        ...withFile(settings, classifier.gradientSource),
        salt: `${settings.salt ?? ""}grid:${labelOf(source)}`
      })
      points.push({ source, label: labelOf(source), result: withDeqFlags(result) })
    }
    const prefix = options.defence === undefined ? undefined : options.mode ?? "bpda"
    const { worst, brokenBy } = combineGrid(points, {
      options: decoded,
      classifier: classifierFlags,
      eot: eotOf(flatten(attacks)),
      label: gridLabel(grid, prefix)
    })
    return { grid, points, worst, brokenBy }
  })

// ---------------------------------------------------------------------------------------------------------------
// one evaluation per source and mode
// ---------------------------------------------------------------------------------------------------------------

/** Options of {@link evaluateDeq}. */
export interface EvaluateDeqOptions {
  /** gradient sources (default: implicit and phantom(5, 0.5), the ready-made ones) */
  readonly sources?: ReadonlyArray<GradientSource>
  readonly readOut?: Dynamics.ReadOut
  readonly defence?: Dynamics.Defence
  /** attack modes against the defence (default all three: "paper", "bpda", "full"); ignored without one */
  readonly modes?: ReadonlyArray<DefenceMode>
  /** also search this intermediate-state grid (per mode other than "full") and append its worst case */
  readonly grid?: Grid
  readonly name?: string
  readonly diagnostics?: boolean | DiagnosticsOptions
  /** passed to every `evaluate`; a `resumeFile` is a prefix (one file per evaluation) */
  readonly evaluate?: EvaluateSettings
}

/** One evaluation per (source, mode): see src/Adversary.ts `evaluateDeq`. */
export const evaluateDeq = (
  deq: Dynamics.Deq,
  data: EvaluationData,
  attacks: AttackShape | ReadonlyArray<AttackShape>,
  options: EvaluateDeqOptions = {}
): Effect.Effect<Array<EvaluationResult>, AttackError | ConfigError | ResumeError, Rng> =>
  Effect.gen(function*() {
    const sources = options.sources ?? [implicit(), phantom(5, 0.5)]
    if (sources.length === 0) return yield* new ConfigError({ path: "sources", message: "no gradient sources given" })
    const defence = options.defence
    const modes: ReadonlyArray<DefenceMode | undefined> = defence === undefined ? [undefined] : options.modes ?? ["paper", "bpda", "full"]
    if (modes.length === 0) return yield* new ConfigError({ path: "modes", message: "no attack modes given" })
    const settings = options.evaluate ?? {}
    const common = {
      ...(options.readOut !== undefined ? { readOut: options.readOut } : {}),
      ...(options.name !== undefined ? { name: options.name } : {}),
      ...(options.diagnostics !== undefined ? { diagnostics: options.diagnostics } : {})
    }
    const results: Array<EvaluationResult> = []
    for (const mode of modes) {
      // "full" differentiates the defence itself: one run, whatever the sources
      const modeSources = mode === "full" ? [sources[0]!] : sources
      for (const source of modeSources) {
        const classifier = deqClassifier(deq, { ...common, source, ...(defence !== undefined ? { defence, mode: mode! } : {}) })
        const r = yield* evaluate(classifier, data, attacks, withFile(settings, classifier.gradientSource))
        results.push(withDeqFlags(r))
      }
    }
    if (options.grid !== undefined) {
      for (const mode of modes) {
        if (mode === "full") continue
        const g = yield* evaluateGrid(deq, data, attacks, {
          ...common,
          grid: options.grid,
          evaluate: settings,
          ...(defence !== undefined ? { defence, mode: mode! } : {})
        })
        results.push(g.worst)
      }
    }
    return results
  })
