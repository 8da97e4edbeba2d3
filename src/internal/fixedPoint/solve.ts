/**
 * What FixedPoint's Solver values share around the core loop: per-call options over a solver's own (strict, with
 * a ConfigError naming the field), the batch-wide criterion of a result, which status a `solve` fails with, and
 * the fallback chain. FixedPoint.ts turns the failure descriptions into its typed error classes.
 *
 * @internal
 */
import type { SolveOptions, SolveResult, SolveStats } from "../../FixedPoint.ts"
import { ConfigError } from "../../Errors.ts"

/**
 * A resolver of per-call options: `keys` are the solve options, `allowed` every key a solver accepts (a whole
 * AndersonOptions may be passed per call; its own keys are ignored), `decode` the strict SolveOptions decoder.
 * Unknown keys and bad values throw a ConfigError naming the field.
 */
export const optionResolver = (
  keys: ReadonlyArray<keyof SolveOptions>,
  allowed: ReadonlySet<string>,
  decode: (input: unknown) => SolveOptions
) => {
  const solveKeys = new Set<string>(keys)
  return (base: SolveOptions, override?: Partial<SolveOptions>): SolveOptions => {
    if (override === undefined) return base
    const merged: Record<string, unknown> = {}
    for (const k of keys) merged[k] = base[k]
    for (const [k, v] of Object.entries(override)) {
      if (!allowed.has(k)) {
        throw new ConfigError({ path: k, message: `${k}: unknown solve option; valid: ${keys.join(", ")}` })
      }
      if (v !== undefined && solveKeys.has(k)) merged[k] = v
    }
    return decode(merged)
  }
}

/** The batch-wide residual (by `stopMode`) of the returned iterate; Infinity when z0 was returned. */
export const globalCriterion = (stats: SolveStats, stopMode: "abs" | "rel"): number => {
  if (stats.returnedStep === 0) return Infinity
  const trace = stopMode === "abs" ? stats.globalAbsTrace : stats.globalRelTrace
  return trace[stats.returnedStep - 1] ?? Infinity
}

/** The fields of the typed error a finished solve fails `solve` with. */
export type Failure =
  | { readonly _tag: "Diverged"; readonly solver: string; readonly step: number; readonly message: string; readonly stats: SolveStats }
  | { readonly _tag: "SingularSystem"; readonly solver: string; readonly step: number; readonly message: string; readonly stats: SolveStats }
  | {
    readonly _tag: "NotConverged"
    readonly solver: string
    readonly steps: number
    readonly relResidual: number
    readonly absResidual: number
    readonly tol: number
    readonly message: string
    readonly stats: SolveStats
  }

/** Which failure, if any, a finished solve is under its options. */
export const failureOf = (s: SolveStats, options: SolveOptions): Failure | undefined => {
  switch (s.status) {
    case "converged":
      return undefined
    case "diverged":
      return { _tag: "Diverged", solver: s.solver, step: s.failedStep ?? s.steps, stats: s, message: `${s.solver}: ${s.message ?? "the iteration produced NaN or Inf"}` }
    case "singular":
      return { _tag: "SingularSystem", solver: s.solver, step: s.failedStep ?? s.steps, stats: s, message: `${s.solver}: ${s.message ?? "singular least-squares system"}` }
    case "maxIter": {
      if (options.onNotConverged !== "fail") return undefined
      const abs = Math.sqrt(s.absResidual.reduce((a, x) => a + x * x, 0))
      const rel = globalCriterion(s, "rel")
      return {
        _tag: "NotConverged",
        solver: s.solver,
        steps: s.steps,
        relResidual: rel,
        absResidual: abs,
        tol: options.tol,
        message: `${s.solver} did not reach ${options.stopMode} tol ${options.tol} in ${s.steps} steps ` +
          `(rel ${rel.toExponential(2)}, abs ${abs.toExponential(2)})`,
        stats: s
      }
    }
  }
}

const rank: Record<SolveStats["status"], number> = { converged: 3, maxIter: 2, singular: 1, diverged: 0 }

/** Whether attempt `a` beats the kept one: a better status, then a lower batch-wide residual. */
const better = (a: SolveResult, kept: SolveResult | undefined, stopMode: "abs" | "rel"): boolean =>
  kept === undefined ||
  rank[a.stats.status] > rank[kept.stats.status] ||
  (rank[a.stats.status] === rank[kept.stats.status] &&
    globalCriterion(a.stats, stopMode) < globalCriterion(kept.stats, stopMode))

/**
 * Runs the attempts in order until one converges; keeps the best (freeing the others) and records every attempt
 * in `stats.attempts`.
 */
export const runFallback = (
  attempts: ReadonlyArray<{ readonly run: () => SolveResult; readonly stopMode: "abs" | "rel" }>,
  dispose: (result: SolveResult) => void
): SolveResult => {
  const record: Array<{ solver: string; status: SolveStats["status"]; steps: number }> = []
  let kept: SolveResult | undefined
  for (const attempt of attempts) {
    const result = attempt.run()
    record.push({ solver: result.stats.solver, status: result.stats.status, steps: result.stats.steps })
    if (better(result, kept, attempt.stopMode)) {
      if (kept !== undefined) dispose(kept)
      kept = result
    } else dispose(result)
    if (result.stats.status === "converged") break
  }
  return { ...kept!, stats: { ...kept!.stats, attempts: record } }
}
