/**
 * Claim (Yang et al., NeurIPS 2022 / ICML 2023): attacks that take the ready-made gradient of a DEQ's final state
 * (implicit / phantom) overstate its robustness; intermediate-state gradients (Eq. (11)) break more samples.
 *
 * Trains one FC DEQ with plain PGD-AT and measures robust accuracy at h(z_N) under the same PGD with different
 * gradient sources: implicit, phantom(5, 0.5), the papers' "unroll" (Munroll-out-5), unrolled-N from z_0, single
 * intermediate states, the worst case over the intermediate grid, and a black-box Square attack for reference.
 * The implicit row carries the gradient-cosine diagnostic (implicit vs unrolled input gradients).
 *
 *   npx tsx examples/gradient-sources.ts [--quick]
 */
import { Effect } from "effect"
import * as Adversary from "../src/Adversary.ts"
import {
  classifier,
  deqOf,
  evalPgd,
  type ExampleOptions,
  loadData,
  num,
  pct,
  reportedReadOut,
  runExample,
  runIfScript,
  smallGrid,
  summarize,
  table,
  testData,
  trainModel,
  unreliableNote,
  worstOf
} from "./common.ts"

/** One gradient source's result. */
export interface SourceRow {
  readonly source: string
  /** "ready-made" (final-state), "intermediate", "grid", "black-box" */
  readonly kind: string
  readonly clean: number
  readonly robust: number
  /** robust accuracy minus the worst case over every row: how much this source overstates robustness */
  readonly overstatement: number
  readonly gradientCosine?: number
  readonly flags: ReadonlyArray<string>
}

/** What the example writes. */
export interface GradientSourcesResult {
  readonly eps: number
  readonly trainSeconds: number
  /** per-sample worst case over every row */
  readonly worst: number
  /** the worst case's flags (kinds) */
  readonly flags: ReadonlyArray<string>
  readonly rows: ReadonlyArray<SourceRow>
  readonly details: ReadonlyArray<ReturnType<typeof summarize>>
}

/** The example: one PGD-AT DEQ, one PGD, many gradient sources. */
export const main = (options: ExampleOptions = {}) =>
  runExample("gradient-sources", options, (scale, seed) =>
    Effect.gen(function*() {
      const data = yield* loadData(scale)
      const test = testData(data)
      const pgd = yield* evalPgd(scale)
      const square = yield* Adversary.square({ eps: scale.eps, queries: scale.aaQueries * 3 })
      const trained = yield* trainModel(data, scale, { method: "pgd-at", seed })
      const deq = deqOf(trained.model, scale)
      const evaluate = { batchSize: scale.evalBatch }
      const S = Adversary.GradientSource
      const N = scale.steps
      const runs: Array<{ kind: string; result: Adversary.EvaluationResult }> = []
      const readyMade = [S.implicit(), S.phantom(5, 0.5), S.unroll(5), S.unrolled(N)]
      for (const source of readyMade) {
        // diagnostics on the implicit row only: the implicit-vs-unrolled gradient cosine
        const c = classifier(deq, scale, source, { diagnostics: source._tag === "Implicit" })
        runs.push({ kind: "ready-made", result: yield* Adversary.evaluate(c, test, pgd, evaluate) })
      }
      const g = yield* Adversary.evaluateGrid(deq, test, pgd, {
        grid: smallGrid(scale),
        readOut: reportedReadOut(scale),
        diagnostics: false,
        evaluate
      })
      // the grid's single points, best and worst for the attacker, show the spread across surrogates
      for (const p of g.points) runs.push({ kind: "intermediate", result: p.result })
      runs.push({ kind: "grid", result: g.worst })
      runs.push({ kind: "black-box", result: yield* Adversary.evaluate(classifier(deq, scale, S.implicit()), test, square, evaluate) })
      const all = worstOf(runs.map(({ kind, result }) => ({
        label: kind === "black-box" ? "square" : result.gradientSource,
        result,
        role: kind === "black-box" ? "black-box" as const : "white-box" as const
      })))
      const worst = all.robustAccuracy
      const rows: Array<SourceRow> = runs.map(({ kind, result }) => ({
        source: kind === "black-box" ? `square (${scale.aaQueries * 3} queries)` : result.gradientSource,
        kind,
        clean: result.cleanAccuracy,
        robust: result.robustAccuracy,
        overstatement: result.robustAccuracy - worst,
        ...(result.diagnostics.gradientCosine !== undefined ? { gradientCosine: result.diagnostics.gradientCosine } : {}),
        flags: result.flags.map((f) => f.kind)
      }))
      const markdown = table(
        ["gradient source", "kind", "clean", "robust", "over worst case", "grad cosine"],
        rows.map((r) => [r.source, r.kind, pct(r.clean), pct(r.robust), `+${(100 * r.overstatement).toFixed(1)} pt`, num(r.gradientCosine)])
      ) + `\n\nPer-sample worst case over every row: ${pct(worst)}. PGD-${scale.evalSteps}, eps ${scale.eps} Linf, ` +
        `read-out h(z_${N}); "grad cosine": min cosine between implicit and unrolled-${N} input gradients (first 4 samples per batch).` +
        unreliableNote(all)
      const result: GradientSourcesResult = {
        eps: scale.eps,
        trainSeconds: trained.seconds,
        worst,
        flags: [...new Set(all.flags.map((f) => f.kind))],
        rows,
        details: runs.map((r) => summarize(r.result))
      }
      return { result, markdown }
    }))

runIfScript(import.meta.url, main)
