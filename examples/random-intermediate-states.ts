/**
 * Claim (Yang et al., ICML 2023, Sec. 3.3): computing the training loss at a random intermediate state
 * z_n, n ~ U{1..N} (RIS) makes the DEQ more robust, for PGD-AT and for TRADES.
 *
 * Trains four FC DEQs that differ only in two layers (the objective and `Regularizers.randomIntermediateStates`
 * vs `Regularizers.finalState`) and evaluates each at h(z_N) under the intermediate-state white-box attack (worst
 * case over the 12-point grid) and AutoAttack (APGD-CE, APGD-T, FAB-T, Square), reporting the per-sample worst case
 * over both.
 *
 *   npx tsx examples/random-intermediate-states.ts [--quick]
 */
import { Effect } from "effect"
import * as Adversary from "../src/Adversary.ts"
import {
  classifier,
  deqOf,
  evalPgd,
  type ExampleOptions,
  loadData,
  pct,
  reportedReadOut,
  runExample,
  runIfScript,
  smallGrid,
  summarize,
  table,
  testData,
  trainModel,
  type TrainSpec,
  worstOf
} from "./common.ts"

/** One trained model's evaluation. */
export interface RisRow {
  readonly model: string
  readonly method: "pgd-at" | "trades"
  readonly ris: boolean
  readonly trainSeconds: number
  readonly clean: number
  /** worst case over the intermediate-state grid (PGD) */
  readonly grid: number
  /** AutoAttack's four attacks */
  readonly autoAttack: number
  /** per-sample worst case over the grid and the ensemble */
  readonly worst: number
  /** the worst case's flags (kinds) */
  readonly flags: ReadonlyArray<string>
  readonly details: { readonly grid: ReturnType<typeof summarize>; readonly autoAttack: ReturnType<typeof summarize> }
}

/** What the example writes. */
export interface RisResult {
  readonly eps: number
  readonly grid: string
  readonly autoAttack: string
  readonly rows: ReadonlyArray<RisRow>
}

const specs: ReadonlyArray<TrainSpec & { readonly method: "pgd-at" | "trades" }> = [
  { method: "pgd-at", ris: false },
  { method: "pgd-at", ris: true },
  { method: "trades", ris: false },
  { method: "trades", ris: true }
]

/** The example: PGD-AT vs PGD-AT + RIS, TRADES vs TRADES + RIS. */
export const main = (options: ExampleOptions = {}) =>
  runExample("random-intermediate-states", options, (scale, seed) =>
    Effect.gen(function*() {
      const data = yield* loadData(scale)
      const test = testData(data)
      const pgd = yield* evalPgd(scale)
      const aa = yield* Adversary.autoAttack({ eps: scale.eps, steps: scale.aaSteps, queries: scale.aaQueries, targets: scale.aaTargets })
      const evaluate = { batchSize: scale.evalBatch }
      const rows: Array<RisRow> = []
      for (const spec of specs) {
        const trained = yield* trainModel(data, scale, { ...spec, seed })
        const deq = deqOf(trained.model, scale)
        const g = yield* Adversary.evaluateGrid(deq, test, pgd, {
          grid: smallGrid(scale),
          readOut: reportedReadOut(scale),
          diagnostics: false,
          evaluate
        })
        // the ensemble's white-box stages differentiate the papers' ready-made unroll at z_N (Munroll-out-5)
        const auto = yield* Adversary.evaluate(classifier(deq, scale, Adversary.GradientSource.unroll(5)), test, aa, evaluate)
        const worst = worstOf([{ label: "grid", result: g.worst, role: "white-box" }, { label: "AutoAttack", result: auto, role: "white-box" }])
        rows.push({
          model: trained.label,
          method: spec.method,
          ris: spec.ris === true,
          trainSeconds: trained.seconds,
          clean: g.worst.cleanAccuracy,
          grid: g.worst.robustAccuracy,
          autoAttack: auto.robustAccuracy,
          worst: worst.robustAccuracy,
          flags: [...new Set(worst.flags.map((f) => f.kind))],
          details: { grid: summarize(g.worst), autoAttack: summarize(auto) }
        })
      }
      const grid = Adversary.Grid.label(smallGrid(scale))
      const autoLabel = `APGD-CE, APGD-T, FAB-T (${scale.aaSteps} steps, ${scale.aaTargets} targets) + Square (${scale.aaQueries} queries)`
      const markdown = table(
        ["model", "clean", "PGD grid worst", "AutoAttack", "worst of both", "flags"],
        rows.map((r) => [r.model, pct(r.clean), pct(r.grid), pct(r.autoAttack), pct(r.worst), r.flags.join(", ") || "none"])
      ) + `\n\nRead-out h(z_${scale.steps}); eps ${scale.eps} Linf; PGD-${scale.evalSteps} over the ${grid}; ` +
        `AutoAttack: ${autoLabel} on Munroll-out-5 gradients.`
      const result: RisResult = { eps: scale.eps, grid, autoAttack: autoLabel, rows }
      return { result, markdown }
    }))

runIfScript(import.meta.url, main)
