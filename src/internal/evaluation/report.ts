/**
 * The evaluation suite's documents: its rows as a Markdown table, its flags as a list, and JSON-safe data.
 *
 * @internal
 */
import * as Adversary from "../../Adversary.ts"
import * as Report from "../../Report.ts"
import type { SuiteResult } from "./suite.ts"

const flagKinds = (r: Adversary.EvaluationResult): string =>
  r.flags.length === 0 ? "none" : [...new Set(r.flags.map((f) => f.kind))].join(", ")

/** The stages column: an ensemble's stages, a grid's size, a worst case's number of evaluations. */
const stagesCell = (r: Adversary.EvaluationResult, headline: boolean): string =>
  headline || r.gradientSource.startsWith("worst case over") ? `${r.stages.length} evaluations` :
  r.stages.length > 1 && r.stages.length <= 4 ? r.stages.map((s) => `${s.name} ${Report.pct(s.robustAccuracy)}`).join(", ") :
  r.stages.length > 4 ? `${r.stages.length} grid points` :
  "-"

/**
 * The suite's rows as one Markdown table (accuracies in %; the worst cases, the numbers to report, in bold; passes
 * through the classifier per sample, forward/backward).
 */
export const suiteTable = (suite: SuiteResult): string =>
  Report.table(
    ["defence", "protocol", "attack", "gradient source", "n", "clean %", "robust %", "after each stage %", "passes fwd/bwd per sample", "flags", "seconds"],
    suite.rows.map((row) => {
      const bold = (s: string) => (row.headline === true ? `**${s}**` : s)
      return [
        row.defence,
        bold(row.protocol),
        row.attack,
        row.headline === true ? "-" : row.result.gradientSource,
        row.result.samples,
        Report.pct(row.result.cleanAccuracy),
        bold(Report.pct(row.result.robustAccuracy)),
        stagesCell(row.result, row.headline === true),
        Adversary.passesPerSample(row.result),
        flagKinds(row.result),
        row.timedWith ?? row.seconds.toFixed(0)
      ]
    })
  )

/**
 * The distinct flag messages of the suite, as a Markdown list: each with the first row that raised it; the worst
 * cases add their own (`unreliable`).
 */
export const suiteFlags = (suite: SuiteResult): string => {
  const seen = new Map<string, string>()
  const ordered = [...suite.rows.filter((r) => r.headline !== true), ...suite.rows.filter((r) => r.headline === true)]
  for (const row of ordered) {
    for (const f of row.result.flags) {
      const key = `${f.kind}: ${f.message}`
      const where = row.headline === true ? `${row.defence}, worst case` : `${row.defence}, ${row.protocol}`
      if (!seen.has(key)) seen.set(key, `- **${f.kind}** (${where}): ${f.message}`)
    }
  }
  return seen.size === 0 ? "No gradient-masking flags were raised." : [...seen.values()].join("\n")
}

/** The suite as JSON-safe data (per-sample arrays dropped: they are large and live in the evaluation itself). */
export const suiteJson = (suite: SuiteResult): unknown => {
  const strip = (r: Adversary.EvaluationResult) => {
    const { perSample: _, ...result } = r
    return result
  }
  return {
    eps: suite.eps,
    strongest: suite.strongest,
    seconds: suite.seconds,
    notes: suite.notes,
    ...(suite.undefended !== undefined ? { undefended: strip(suite.undefended) } : {}),
    ...(suite.defended !== undefined ? { defended: strip(suite.defended) } : {}),
    rows: suite.rows.map((row) => ({
      defence: row.defence,
      protocol: row.protocol,
      attack: row.attack,
      seconds: row.seconds,
      ...(row.role !== undefined ? { role: row.role } : {}),
      ...(row.headline === true ? { headline: true } : {}),
      result: strip(row.result)
    }))
  }
}
