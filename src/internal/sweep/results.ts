/**
 * A sweep's results: each run's numbers read from its reports, aggregated per arm (mean +- sd over seeds), as
 * `summary.md`, `summary.json` and per-state SVG curves with the seeds as bands (docs/sweeps.md, "Results").
 *
 * @internal
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import * as Report from "../../Report.ts"
import type { RunSpec, Sweep } from "./grid.ts"

/**
 * Clean and robust accuracy from an evaluation report (`eval/report.json`). Robust is the lowest robust accuracy
 * over the undefended rows: each row is already the per-sample worst case of its attack family, so this is the
 * worst case of the evaluation. The one place that reads it: repoint it when the evaluation reports change.
 */
export const robustOf = (report: unknown): { readonly clean: number; readonly robust: number; readonly samples: number } => {
  const rows = ((report as { evaluation?: { rows?: ReadonlyArray<any> } }).evaluation?.rows ?? [])
    .filter((r) => r.defence === "none" && typeof r.result?.robustAccuracy === "number")
  if (rows.length === 0) return { clean: Number.NaN, robust: Number.NaN, samples: 0 }
  const worst = rows.reduce((a, b) => (b.result.robustAccuracy < a.result.robustAccuracy ? b : a))
  return { clean: rows[0].result.cleanAccuracy, robust: worst.result.robustAccuracy, samples: worst.result.samples }
}

/** One state z_n of a run's dynamics report. */
interface StateRow {
  readonly n: number
  readonly cleanAccuracy: number
  readonly robustAccuracy?: number
  readonly cleanEntropy: number
  readonly robustEntropy?: number
}

/** What one finished run measured. */
export interface RunResult {
  readonly id: string
  readonly arm: string
  readonly seed: number
  readonly clean: number
  readonly robust: number
  readonly samples: number
  readonly states: ReadonlyArray<StateRow>
}

const readJson = (file: string): unknown => {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as unknown
  } catch {
    return undefined
  }
}

/** The run directory of a run in a sweep's output directory. */
export const runDir = (out: string, id: string): string => path.join(out, "runs", id)

/** A finished run's numbers from its reports (undefined while they are not written). */
export const readRun = (out: string, run: RunSpec): RunResult | undefined => {
  const dir = runDir(out, run.id)
  const evaluation = readJson(path.join(dir, "eval", "report.json"))
  const dynamics = readJson(path.join(dir, "dynamics", "report.json")) as { rows?: ReadonlyArray<StateRow> } | undefined
  if (evaluation === undefined || dynamics === undefined) return undefined
  const r = robustOf(evaluation)
  return { id: run.id, arm: run.arm, seed: run.seed, ...r, states: dynamics.rows ?? [] }
}

/** Mean and (sample) standard deviation; sd 0 for one value. */
export const meanSd = (xs: ReadonlyArray<number>): { readonly mean: number; readonly sd: number; readonly n: number } => {
  const v = xs.filter(Number.isFinite)
  if (v.length === 0) return { mean: Number.NaN, sd: Number.NaN, n: 0 }
  const mean = v.reduce((a, b) => a + b, 0) / v.length
  const sd = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0
  return { mean, sd, n: v.length }
}

/** One arm's aggregate. */
export interface ArmSummary {
  readonly arm: string
  readonly runs: ReadonlyArray<string>
  readonly seeds: ReadonlyArray<number>
  readonly clean: ReturnType<typeof meanSd>
  readonly robust: ReturnType<typeof meanSd>
  /** per state n: mean +- sd of the clean/robust accuracy and entropy */
  readonly states: ReadonlyArray<{
    readonly n: number
    readonly cleanAccuracy: ReturnType<typeof meanSd>
    readonly robustAccuracy: ReturnType<typeof meanSd>
    readonly cleanEntropy: ReturnType<typeof meanSd>
    readonly robustEntropy: ReturnType<typeof meanSd>
  }>
}

/** Aggregates finished runs per arm (arms in the sweep's order). */
export const summarize = (sweep: Sweep, results: ReadonlyArray<RunResult>): Array<ArmSummary> => {
  const arms = [...new Set(sweep.runs.map((r) => r.arm))]
  return arms.flatMap((arm) => {
    const rs = results.filter((r) => r.arm === arm)
    if (rs.length === 0) return []
    const ns = [...new Set(rs.flatMap((r) => r.states.map((s) => s.n)))].sort((a, b) => a - b)
    const at = (n: number, f: (s: StateRow) => number | undefined) =>
      meanSd(rs.flatMap((r) => {
        const v = r.states.find((s) => s.n === n)
        const x = v === undefined ? undefined : f(v)
        return x === undefined ? [] : [x]
      }))
    return [{
      arm,
      runs: rs.map((r) => r.id),
      seeds: rs.map((r) => r.seed),
      clean: meanSd(rs.map((r) => r.clean)),
      robust: meanSd(rs.map((r) => r.robust)),
      states: ns.map((n) => ({
        n,
        cleanAccuracy: at(n, (s) => s.cleanAccuracy),
        robustAccuracy: at(n, (s) => s.robustAccuracy),
        cleanEntropy: at(n, (s) => s.cleanEntropy),
        robustEntropy: at(n, (s) => s.robustEntropy)
      }))
    }]
  })
}

/** "91.4 +- 0.8" (percent) for an accuracy's mean and sd. */
export const pctSd = (m: ReturnType<typeof meanSd>): string =>
  Number.isFinite(m.mean) ? `${(100 * m.mean).toFixed(1)} ± ${(100 * m.sd).toFixed(1)}` : "-"

/** The per-arm table (Markdown). */
export const armTable = (arms: ReadonlyArray<ArmSummary>): string =>
  Report.table(
    ["arm", "seeds", "clean % (mean ± sd)", "robust % (mean ± sd, worst case)"],
    arms.map((a) => [a.arm, a.seeds.join(", "), pctSd(a.clean), pctSd(a.robust)])
  )

type Pick = (s: ArmSummary["states"][number]) => ReturnType<typeof meanSd>

const curve = (arms: ReadonlyArray<ArmSummary>, label: string, pick: Pick): Array<Report.Series> =>
  arms.flatMap((a) => {
    const pts = a.states.map((s) => [s.n, pick(s)] as const).filter(([, m]) => Number.isFinite(m.mean))
    if (pts.length === 0) return []
    return [{
      name: `${a.arm}${label}`,
      points: pts.map(([n, m]) => [n, m.mean] as const),
      band: pts.map(([n, m]) => [n, m.mean - m.sd, m.mean + m.sd] as const)
    }]
  })

/** The sweep's per-state plots: accuracy and entropy per z_n, one line per arm, the seeds' sd as bands. */
export const plots = (arms: ReadonlyArray<ArmSummary>): Record<"accuracy" | "entropy", Report.LinePlot> => ({
  accuracy: {
    title: "Accuracy of each intermediate state (mean ± sd over seeds)",
    x: "state n (solver step)",
    y: "accuracy of h(z_n)",
    xInteger: true,
    yDomain: [0, 1],
    yFormat: "percent",
    series: [...curve(arms, " (clean)", (s) => s.cleanAccuracy), ...curve(arms, " (robust)", (s) => s.robustAccuracy)]
  },
  entropy: {
    title: "Prediction entropy along the dynamics (mean ± sd over seeds)",
    x: "state n (solver step)",
    y: "mean entropy H(softmax(h(z_n))) (nats)",
    xInteger: true,
    series: [...curve(arms, " (clean)", (s) => s.cleanEntropy), ...curve(arms, " (robust)", (s) => s.robustEntropy)]
  }
})

/** The run table of the summary: one row per run with its numbers (or its state). */
export const runTable = (sweep: Sweep, results: ReadonlyArray<RunResult>, states: ReadonlyMap<string, string>): string =>
  Report.table(
    ["run", "arm", "seed", "state", "clean %", "robust %", "report"],
    sweep.runs.map((r) => {
      const x = results.find((y) => y.id === r.id)
      return [r.id, r.arm, r.seed, states.get(r.id) ?? (x !== undefined ? "done" : "-"), Report.pct(x?.clean), Report.pct(x?.robust), `[report](runs/${r.id}/report.md)`]
    })
  )

/** Writes summary.md, summary.json, accuracy.svg and entropy.svg into `out`; returns the arms. */
export const writeSummary = (
  out: string,
  sweep: Sweep,
  states: ReadonlyMap<string, string>,
  extra: { readonly seconds?: number; readonly storage: string }
): Effect.Effect<{ readonly arms: ReadonlyArray<ArmSummary>; readonly results: ReadonlyArray<RunResult> }, Report.ReportError> =>
  Effect.gen(function*() {
    const results = sweep.runs.flatMap((r) => (states.get(r.id) === "done" ? [readRun(out, r)].filter((x) => x !== undefined) : []))
    const arms = summarize(sweep, results)
    const p = plots(arms)
    yield* Report.writeSvg(path.join(out, "accuracy.svg"), p.accuracy)
    yield* Report.writeSvg(path.join(out, "entropy.svg"), p.entropy)
    const markdown = Report.document(`Sweep ${sweep.name}`, [
      {
        title: "Summary",
        body: [
          sweep.description,
          "",
          `- Sweep file: \`${sweep.file}\`; base preset ${sweep.base}; axes ${sweep.axes.join(", ")}; ${sweep.runs.length} runs, ` +
          `${results.length} done.`,
          `- Storage: ${extra.storage}.${extra.seconds !== undefined ? ` Wall time of this invocation: ${Report.duration(1000 * extra.seconds)}.` : ""}`,
          `- Robust accuracy is the worst case of each run's evaluation (the lowest robust accuracy over its undefended attacks).`,
          "",
          armTable(arms),
          "",
          Report.image("accuracy.svg", "accuracy per state"),
          Report.image("entropy.svg", "entropy per state")
        ].join("\n")
      },
      { title: "Runs", body: runTable(sweep, results, states) }
    ])
    yield* Report.writeText(path.join(out, "summary.md"), markdown)
    yield* Report.writeJson(path.join(out, "summary.json"), {
      sweep: { name: sweep.name, file: sweep.file, base: sweep.base, axes: sweep.axes, description: sweep.description },
      arms,
      runs: sweep.runs.map((r) => ({ id: r.id, arm: r.arm, seed: r.seed, axes: r.axes, state: states.get(r.id) ?? "-", result: results.find((x) => x.id === r.id) ?? null })),
      storage: extra.storage,
      ...(extra.seconds !== undefined ? { seconds: extra.seconds } : {})
    })
    return { arms, results }
  })
