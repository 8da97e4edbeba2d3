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
import { claims, meanSd, stateTable, verdicts, verdictTable } from "./verdicts.ts"

export { meanSd } from "./verdicts.ts"

/**
 * Clean and robust accuracy from an evaluation report (`eval/report.json`): the evaluation's per-sample worst case
 * over every undefended attack (`evaluation.undefended`, Adversary.worstCase; docs/attacks.md, "The numbers to
 * report"), else its undefended worst-case row. The one place that reads it: repoint it when the evaluation
 * reports change. NaN when the report has neither.
 */
export const robustOf = (report: unknown): { readonly clean: number; readonly robust: number; readonly samples: number } => {
  const evaluation = (report as { evaluation?: { undefended?: any; rows?: ReadonlyArray<any> } } | undefined)?.evaluation
  const headline = (evaluation?.rows ?? []).find((r) => r.defence === "none" && r.headline === true)?.result
  const worst = typeof evaluation?.undefended?.robustAccuracy === "number" ? evaluation.undefended : headline
  if (typeof worst?.robustAccuracy !== "number") return { clean: Number.NaN, robust: Number.NaN, samples: 0 }
  return { clean: worst.cleanAccuracy, robust: worst.robustAccuracy, samples: worst.samples }
}

/**
 * The entropy-reduction numbers of a defended evaluation report (`deq eval --defence entropy`): the paper's transfer
 * protocol, the defended per-sample worst case over every attack, and the undefended worst case on the same images.
 */
export const defenceOf = (report: unknown): RunResult["defence"] => {
  const evaluation = (report as { evaluation?: { defended?: any; rows?: ReadonlyArray<any> } } | undefined)?.evaluation
  const rows = evaluation?.rows ?? []
  const transfer = rows.find((r) => r.role === "transfer")?.result?.robustAccuracy
  const undefended = rows.find((r) => r.defence === "none" && typeof r.protocol === "string" && r.protocol.startsWith("same "))?.result?.robustAccuracy
  const worst = evaluation?.defended?.robustAccuracy
  if (typeof transfer !== "number" || typeof undefended !== "number" || typeof worst !== "number") return undefined
  return { transfer, worst, undefended, samples: evaluation?.defended?.samples ?? 0 }
}

/** One state z_n of a run's dynamics report. */
interface StateRow {
  readonly n: number
  readonly cleanAccuracy: number
  readonly robustAccuracy?: number
  readonly cleanEntropy: number
  readonly robustEntropy?: number
  /** each attack's accuracy when robustAccuracy is the per-sample worst case over them */
  readonly attacks?: Readonly<Record<string, number>>
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
  /** the run's axis values (method, readOut, ...) */
  readonly axes: Readonly<Record<string, string | number>>
  /** the dynamics report's mechanism check: nothing to regulate, lowest agreement for n >= 2, residual at z_N */
  readonly mechanism?: { readonly idle: boolean; readonly minAgreement: number; readonly residual: number }
  /** entropy reduction, when `runs/<id>/defence/report.json` holds a defended evaluation */
  readonly defence?: { readonly transfer: number; readonly worst: number; readonly undefended: number; readonly samples: number }
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
  const dynamics = readJson(path.join(dir, "dynamics", "report.json")) as {
    rows?: ReadonlyArray<StateRow>
    mechanism?: { idle?: boolean; residual?: number; rows?: ReadonlyArray<{ n: number; agreement: number }> }
  } | undefined
  if (evaluation === undefined || dynamics === undefined) return undefined
  const r = robustOf(evaluation)
  const m = dynamics.mechanism
  const late = (m?.rows ?? []).filter((x) => x.n >= 2).map((x) => x.agreement)
  const mechanism = m !== undefined && typeof m.idle === "boolean"
    ? { idle: m.idle, minAgreement: late.length > 0 ? Math.min(...late) : Number.NaN, residual: m.residual ?? Number.NaN }
    : undefined
  const defence = defenceOf(readJson(path.join(dir, "defence", "report.json")))
  return {
    id: run.id, arm: run.arm, seed: run.seed, ...r, states: dynamics.rows ?? [], axes: run.axes,
    ...(mechanism !== undefined ? { mechanism } : {}),
    ...(defence !== undefined ? { defence } : {})
  }
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
    /** each attack's own accuracy, when the runs' robust accuracy is a per-state worst case over attacks */
    readonly attacks?: Readonly<Record<string, ReturnType<typeof meanSd>>>
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
      states: ns.map((n) => {
        const names = [...new Set(rs.flatMap((r) => Object.keys(r.states.find((s) => s.n === n)?.attacks ?? {})))]
        return {
          n,
          cleanAccuracy: at(n, (s) => s.cleanAccuracy),
          robustAccuracy: at(n, (s) => s.robustAccuracy),
          cleanEntropy: at(n, (s) => s.cleanEntropy),
          robustEntropy: at(n, (s) => s.robustEntropy),
          ...(names.length > 0 ? { attacks: Object.fromEntries(names.map((a) => [a, at(n, (s) => s.attacks?.[a])])) } : {})
        }
      })
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

/** Per arm, the mechanism checks of its runs: clean residual at z_N and the lowest agreement from z_2 on. */
export const mechanismTable = (arms: ReadonlyArray<ArmSummary>, results: ReadonlyArray<RunResult>): string =>
  Report.table(
    ["arm", "runs checked", "clean rel. residual at z_N (mean ± sd)", "lowest agreement of tail(z_n), n >= 2, with tail(z_N) % (mean ± sd)", "nothing to regulate in"],
    arms.map((a) => {
      const rs = results.filter((r) => r.arm === a.arm && r.mechanism !== undefined)
      const res = meanSd(rs.map((r) => r.mechanism!.residual)), agr = meanSd(rs.map((r) => r.mechanism!.minAgreement))
      return [
        a.arm, rs.length,
        res.n > 0 ? `${res.mean.toFixed(4)} ± ${res.sd.toFixed(4)}` : "-",
        pctSd(agr),
        `${rs.filter((r) => r.mechanism!.idle).length} of ${rs.length}`
      ]
    })
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
    const judged = verdicts(results)
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
          `- Robust accuracy is the per-sample worst case of each run's evaluation over every undefended attack it ran.`,
          "",
          armTable(arms),
          "",
          Report.image("accuracy.svg", "accuracy per state"),
          Report.image("entropy.svg", "entropy per state")
        ].join("\n")
      },
      {
        title: "Verdicts",
        body: [
          "Computed from the runs below (src/internal/sweep/verdicts.ts): mean ± sd over seeds (seeds in parentheses), " +
          "the difference in the claim's direction, and **supported** only when it exceeds twice the larger of the " +
          "two sides' sds.",
          "",
          ...Object.entries(claims).map(([k, v]) => `- (${k}) ${v}`),
          "",
          verdictTable(judged)
        ].join("\n")
      },
      {
        title: "Can random intermediate states act?",
        body: [
          "From each run's dynamics report: the loss on a random state reads tail(z_n); when it predicts like " +
          "tail(z_N) on more than 95% of clean inputs for every n >= 2, there is nothing to regulate.",
          "",
          mechanismTable(arms, results)
        ].join("\n")
      },
      {
        title: "Per state",
        body: [
          "Per state z_n (h(z_n) read directly), mean ± sd over seeds; robust: " +
          (arms.some((a) => a.states.some((s) => s.attacks !== undefined))
            ? "the per-sample worst case over the dynamics analysis' attacks (each made once per batch through the z_N " +
              "surrogate and observed along the trajectory; a sample counts at z_n only when h(z_n) is right under every " +
              "attack), each attack's own accuracy beside it; entropy (adv.) of PGD's inputs. See each run's dynamics report."
            : "the dynamics analysis' attack (made once per batch through the z_N surrogate, observed along the " +
              "trajectory; see each run's dynamics report)."),
          "",
          stateTable(arms)
        ].join("\n")
      },
      { title: "Runs", body: runTable(sweep, results, states) }
    ])
    yield* Report.writeText(path.join(out, "summary.md"), markdown)
    yield* Report.writeJson(path.join(out, "summary.json"), {
      sweep: { name: sweep.name, file: sweep.file, base: sweep.base, axes: sweep.axes, description: sweep.description },
      arms,
      verdicts: judged,
      runs: sweep.runs.map((r) => ({ id: r.id, arm: r.arm, seed: r.seed, axes: r.axes, state: states.get(r.id) ?? "-", result: results.find((x) => x.id === r.id) ?? null })),
      storage: extra.storage,
      ...(extra.seconds !== undefined ? { seconds: extra.seconds } : {})
    })
    return { arms, results }
  })
