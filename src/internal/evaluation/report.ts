/**
 * The evaluation suite's documents: its rows as a Markdown table, its flags as a list, and JSON-safe data.
 *
 * @internal
 */
import type * as Adversary from "../../Adversary.ts"
import * as Report from "../../Report.ts"
import type { SuiteResult } from "./suite.ts"

const flagKinds = (r: Adversary.EvaluationResult): string =>
  r.flags.length === 0 ? "none" : [...new Set(r.flags.map((f) => f.kind))].join(", ")

/** The suite's rows as one Markdown table (accuracies in %). */
export const suiteTable = (suite: SuiteResult): string =>
  Report.table(
    ["defence", "protocol", "attack", "gradient source", "n", "clean %", "robust %", "after each stage %", "flags", "seconds"],
    suite.rows.map((row) => [
      row.defence,
      row.protocol,
      row.attack,
      row.result.gradientSource,
      row.result.samples,
      Report.pct(row.result.cleanAccuracy),
      Report.pct(row.result.robustAccuracy),
      row.result.stages.length > 1 && row.result.stages.length <= 4
        ? row.result.stages.map((s) => `${s.name} ${Report.pct(s.robustAccuracy)}`).join(", ")
        : row.result.stages.length > 4
        ? `${row.result.stages.length} grid points`
        : "-",
      flagKinds(row.result),
      row.seconds > 0 ? row.seconds.toFixed(0) : "(in the grid)"
    ])
  )

/** The distinct flag messages of the suite, as a Markdown list. */
export const suiteFlags = (suite: SuiteResult): string => {
  const seen = new Map<string, string>()
  for (const row of suite.rows) {
    for (const f of row.result.flags) {
      const key = `${f.kind}: ${f.message}`
      if (!seen.has(key)) seen.set(key, `- **${f.kind}** (${row.defence}, ${row.protocol}): ${f.message}`)
    }
  }
  return seen.size === 0 ? "No gradient-masking flags were raised." : [...seen.values()].join("\n")
}

/** The suite as JSON-safe data (per-sample arrays dropped: they are large and live in the evaluation itself). */
export const suiteJson = (suite: SuiteResult): unknown => ({
  eps: suite.eps,
  strongest: suite.strongest,
  seconds: suite.seconds,
  notes: suite.notes,
  rows: suite.rows.map((row) => {
    const { perSample: _, ...result } = row.result
    return { defence: row.defence, protocol: row.protocol, attack: row.attack, seconds: row.seconds, result }
  })
})
