/**
 * Evaluation results as JSON and as a Markdown table.
 */
import type { EvaluationResult } from "./evaluation.ts"

/** JSON text of a result; per-sample arrays only when asked for. */
export const toJson = (result: EvaluationResult, options: { readonly perSample?: boolean } = {}): string => {
  const { perSample, ...rest } = result
  return JSON.stringify(options.perSample === true ? result : rest, null, 2)
}

const pct = (v: number) => `${(100 * v).toFixed(2)}`

import { formatEps } from "../../Report.ts"

/** A Markdown table: a header row, an alignment row, the rows; `|` in cells is escaped. */
export const markdownTable = (
  headers: ReadonlyArray<string>,
  rows: ReadonlyArray<ReadonlyArray<string>>,
  align: ReadonlyArray<"l" | "r"> = []
): string => {
  const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ")
  const line = (cells: ReadonlyArray<string>) => `| ${cells.map(cell).join(" | ")} |`
  const sep = `|${headers.map((_, i) => (align[i] === "r" ? "---:" : ":---")).join("|")}|`
  return [line(headers), sep, ...rows.map(line)].join("\n")
}

/** One table row per result: threat model, attack, accuracies (in %), per-stage accuracies, provenance, flags. */
export const toMarkdown = (results: ReadonlyArray<EvaluationResult>): string =>
  markdownTable(
    ["classifier", "gradient", "attack", "norm", "eps", "steps", "restarts", "n", "clean %", "robust %", "after each stage %", "seed", "backend", "flags"],
    results.map((r) => [
      r.classifier,
      r.gradientSource,
      r.attack,
      r.norm,
      formatEps(r.eps),
      r.steps.join("/"),
      r.restarts.join("/"),
      r.complete ? `${r.samples}` : `${r.samples}/${r.total}`,
      pct(r.cleanAccuracy),
      pct(r.robustAccuracy),
      r.stages.map((s) => `${s.name} ${pct(s.robustAccuracy)}`).join(", "),
      `${r.seed}`,
      r.backend,
      r.flags.length === 0 ? "none" : [...new Set(r.flags.map((f) => f.kind))].join(", ")
    ]),
    ["l", "l", "l", "l", "r", "r", "r", "r", "r", "r", "l", "r", "l", "l"]
  )
