/**
 * Evaluation results as JSON and as a Markdown table (Report's table and percentages).
 */
import { formatEps, pct, table } from "../../Report.ts"
import type { EvaluationResult } from "./evaluation.ts"

/** JSON text of a result; per-sample arrays only when asked for. */
export const toJson = (result: EvaluationResult, options: { readonly perSample?: boolean } = {}): string => {
  const { perSample, ...rest } = result
  return JSON.stringify(options.perSample === true ? result : rest, null, 2)
}

/** Forward / backward passes per evaluated sample, e.g. "41.0/20.0". */
export const passesPerSample = (r: EvaluationResult): string => {
  const n = Math.max(1, r.samples)
  return `${(r.passes.forward / n).toFixed(1)}/${(r.passes.backward / n).toFixed(1)}`
}

/**
 * One table row per result: threat model, attack, accuracies (in %), per-stage accuracies, passes per sample
 * (forward/backward), provenance, flags.
 */
export const toMarkdown = (results: ReadonlyArray<EvaluationResult>): string =>
  table(
    ["classifier", "gradient", "attack", "norm", "eps", "steps", "restarts", "n", "clean %", "robust %", "after each stage %", "passes fwd/bwd per sample", "seed", "backend", "flags"],
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
      passesPerSample(r),
      `${r.seed}`,
      r.backend,
      r.flags.length === 0 ? "none" : [...new Set(r.flags.map((f) => f.kind))].join(", ")
    ])
  )
