/**
 * The verdicts of a sweep's summary: each claim of the paper the sweep can test, computed from the runs' numbers
 * (mean ± sd over seeds, the difference, and "supported" only when the difference exceeds twice the seeds' sd),
 * never written by hand (docs/sweeps.md, "Verdicts").
 *
 * @internal
 */
import * as Report from "../../Report.ts"
import type { ArmSummary, RunResult } from "./results.ts"

/** Mean and (sample) standard deviation; sd 0 for one value. */
export const meanSd = (xs: ReadonlyArray<number>): { readonly mean: number; readonly sd: number; readonly n: number } => {
  const v = xs.filter(Number.isFinite)
  if (v.length === 0) return { mean: Number.NaN, sd: Number.NaN, n: 0 }
  const mean = v.reduce((a, b) => a + b, 0) / v.length
  const sd = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0
  return { mean, sd, n: v.length }
}

/** Mean, sample sd and count of a set of values. */
type Stat = ReturnType<typeof meanSd>

/** The outcome of one comparison. */
export type Outcome = "supported" | "not supported at this scale" | "not measured"

/** One claim tested on one scope (an arm, or a pair of arms). */
export interface Verdict {
  /** "a", "b", "c" or "c'" */
  readonly claim: string
  /** where it was tested, e.g. "pgd-at: ris vs final" */
  readonly scope: string
  /** what is compared, the side the claim says is larger first */
  readonly measure: string
  readonly higher: Stat
  readonly lower: Stat
  /** higher.mean - lower.mean: positive in the claim's direction */
  readonly difference: number
  /** the larger of the two sides' sds over seeds (the threshold is twice it) */
  readonly sd: number
  readonly outcome: Outcome
  readonly reason?: string
}

/**
 * Decides one comparison the claim says is `higher` > `lower` (one value per seed each): supported when both
 * sides have at least 2 seeds and the difference of the means exceeds twice the larger sd. Otherwise "not
 * supported at this scale" with a reason: `why` (the likely cause the caller knows, e.g. the mechanism check)
 * after the numeric one. With no value on a side: "not measured", with `missing` as the reason.
 */
export const decide = (
  head: { readonly claim: string; readonly scope: string; readonly measure: string },
  higherValues: ReadonlyArray<number>,
  lowerValues: ReadonlyArray<number>,
  why?: string,
  missing = "no finished run measured one side"
): Verdict => {
  const higher = meanSd(higherValues), lower = meanSd(lowerValues)
  const difference = higher.mean - lower.mean
  const sd = Math.max(higher.sd, lower.sd)
  const base = { ...head, higher, lower, difference, sd }
  if (higher.n === 0 || lower.n === 0) return { ...base, outcome: "not measured", reason: missing }
  const because = (numeric: string) => ({ ...base, outcome: "not supported at this scale" as const, reason: why === undefined ? numeric : `${numeric}; ${why}` })
  if (higher.n < 2 || lower.n < 2) return because(`only ${Math.min(higher.n, lower.n)} seed (no sd over seeds)`)
  if (difference <= 0) return because("the difference has the opposite sign")
  if (difference <= 2 * sd) return because(`the difference is within twice the seeds' sd (${higher.n} and ${lower.n} seeds)`)
  return { ...base, outcome: "supported" }
}

const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length)

/** Per run: the mean of a per-state measure over the intermediate states z_1..z_{N-1}, and its value at z_N. */
const split = (runs: ReadonlyArray<RunResult>, pick: (s: RunResult["states"][number]) => number | undefined) =>
  runs.flatMap((r) => {
    const states = r.states.filter((s) => pick(s) !== undefined)
    if (states.length < 2) return []
    const last = states.reduce((a, b) => (b.n > a.n ? b : a))
    return [{ intermediate: mean(states.filter((s) => s !== last).map((s) => pick(s)!)), last: pick(last)! }]
  })

/** A run's group: its axis values other than the read-out and the seed (the arms RIS is compared within). */
const groupOf = (r: RunResult): string =>
  Object.entries(r.axes).filter(([k]) => k !== "readOut" && k !== "seed").map(([k, v]) => (k === "method" ? String(v) : `${k} ${v}`)).join(", ")

/** Why RIS may have had nothing to act on, from the mechanism checks of the runs (undefined when it could act). */
const mechanismReason = (runs: ReadonlyArray<RunResult>): string | undefined => {
  const checked = runs.filter((r) => r.mechanism !== undefined)
  const idle = checked.filter((r) => r.mechanism!.idle)
  if (checked.length === 0) return undefined
  const agree = Report.pct(Math.min(...checked.map((r) => r.mechanism!.minAgreement)))
  return idle.length > 0
    ? `the mechanism check found nothing to regulate in ${idle.length} of ${checked.length} runs (tail(z_n) agrees with tail(z_N) on > 95% of inputs for every n >= 2)`
    : `the mechanism could act (lowest agreement of tail(z_n), n >= 2, with tail(z_N): ${agree}%), so fast dynamics do not explain the result (look at the training budget and the seeds' spread)`
}

/** Clean accuracy below which a run counts as not trained (chance is 10% for the 10-class data sets here). */
export const untrainedBelow = 0.2

/** Why a comparison says little: runs that did not learn (clean accuracy near chance), or undefined. */
const trainingReason = (runs: ReadonlyArray<RunResult>): string | undefined => {
  const weak = runs.filter((r) => r.clean < untrainedBelow)
  return weak.length === 0
    ? undefined
    : `${weak.length} of ${runs.length} runs did not learn (clean accuracy below ${Report.pct(untrainedBelow)}%: ${weak.map((r) => `${Report.pct(r.clean)}%`).join(", ")})`
}

const reasons = (...rs: ReadonlyArray<string | undefined>): string | undefined => {
  const kept = rs.filter((r): r is string => r !== undefined)
  return kept.length === 0 ? undefined : kept.join("; ")
}

/** Every verdict the sweep's runs allow, in claim order; claims with no data are "not measured". */
export const verdicts = (runs: ReadonlyArray<RunResult>): Array<Verdict> => {
  const groups = [...new Set(runs.map(groupOf))]
  const out: Array<Verdict> = []
  for (const g of groups) {
    const name = g === "" ? "all runs" : g
    const inGroup = runs.filter((r) => groupOf(r) === g)
    const fin = inGroup.filter((r) => r.axes.readOut === "final"), ris = inGroup.filter((r) => r.axes.readOut === "ris")
    const baseline = inGroup.filter((r) => r.axes.readOut === undefined || r.axes.readOut === "final")
    const rob = split(baseline, (s) => s.robustAccuracy)
    out.push(decide(
      { claim: "a", scope: `${name}, final state`, measure: "robust accuracy: z_N vs mean of z_1..z_(N-1)" },
      rob.map((r) => r.last),
      rob.map((r) => r.intermediate),
      trainingReason(baseline)
    ))
    const ent = split(baseline, (s) => s.cleanEntropy)
    out.push(decide(
      { claim: "a", scope: `${name}, final state`, measure: "clean entropy: mean of z_1..z_(N-1) vs z_N" },
      ent.map((r) => r.intermediate),
      ent.map((r) => r.last),
      trainingReason(baseline)
    ))
    if (ris.length > 0 || fin.length > 0) {
      out.push(decide(
        { claim: "b", scope: `${name}: ris vs final`, measure: "worst-case robust accuracy at the read-out" },
        ris.map((r) => r.robust),
        fin.map((r) => r.robust),
        reasons(trainingReason([...fin, ...ris]), mechanismReason([...fin, ...ris]))
      ))
    }
  }
  const withDefence = runs.filter((r) => r.defence !== undefined)
  const notRun = "the sweep's evaluation has no defence rows: run `deq eval --defence entropy` on the runs (docs/sweeps.md, \"Verdicts\")"
  const arms = [...new Set(runs.map((r) => r.arm))]
  for (const arm of arms) {
    const rs = withDefence.filter((r) => r.arm === arm)
    const missing = rs.length === 0 ? notRun : undefined
    out.push(decide(
      { claim: "c", scope: arm, measure: "robust accuracy: entropy reduction (paper's transfer protocol) vs undefended worst case, same images" },
      rs.map((r) => r.defence!.transfer),
      rs.map((r) => r.defence!.undefended),
      undefined,
      missing
    ))
    out.push(decide(
      { claim: "c'", scope: arm, measure: "robust accuracy: entropy reduction (worst case over every attack, adaptive ones included) vs undefended worst case, same images" },
      rs.map((r) => r.defence!.worst),
      rs.map((r) => r.defence!.undefended),
      undefined,
      missing
    ))
  }
  return out
}

/** The claims as the paper states them (Yang et al., ICML 2023). */
export const claims: Readonly<Record<string, string>> = {
  a: "under adversarial training, the intermediate states are less robust and higher in entropy than the read-out",
  b: "random intermediate states raise robust accuracy at the read-out",
  c: "input entropy reduction raises robust accuracy",
  "c'": "the gain of entropy reduction survives an adaptive attack"
}

const cell = (s: Stat, percent: boolean) =>
  s.n === 0 ? "-" : percent ? `${Report.pct(s.mean)} ± ${Report.pct(s.sd)} (${s.n})` : `${s.mean.toFixed(3)} ± ${s.sd.toFixed(3)} (${s.n})`

/** The verdicts as a Markdown table (accuracies in %, entropies in nats; the seeds counted in parentheses). */
export const verdictTable = (vs: ReadonlyArray<Verdict>): string =>
  Report.table(
    ["claim", "scope", "measure (larger side first)", "larger side", "smaller side", "difference", "2 sd", "verdict", "likely reason"],
    vs.map((v) => {
      const percent = !v.measure.includes("entropy:")
      const num = (x: number) => (Number.isFinite(x) ? (percent ? `${(100 * x).toFixed(1)} pt` : x.toFixed(3)) : "-")
      return [
        v.claim, v.scope, v.measure, cell(v.higher, percent), cell(v.lower, percent), num(v.difference), num(2 * v.sd),
        v.outcome === "supported" ? "**supported**" : v.outcome, v.reason ?? "-"
      ]
    })
  )

/** The per-state table of the arms: clean / robust accuracy and clean entropy, mean ± sd over seeds. */
export const stateTable = (arms: ReadonlyArray<ArmSummary>): string => {
  const names = [...new Set(arms.flatMap((a) => a.states.flatMap((s) => Object.keys(s.attacks ?? {}))))]
  return Report.table(
    [
      "arm",
      "state n",
      "clean acc. %",
      names.length > 0 ? "robust acc. % (worst case)" : "robust acc. %",
      ...names.map((n) => `${n} %`),
      "entropy (clean)",
      "entropy (adv.)"
    ],
    arms.flatMap((a) =>
      a.states.map((s) => [
        a.arm,
        s.n,
        cell(s.cleanAccuracy, true),
        cell(s.robustAccuracy, true),
        ...names.map((n) => (s.attacks?.[n] !== undefined ? cell(s.attacks[n]!, true) : "-")),
        cell(s.cleanEntropy, false),
        cell(s.robustEntropy, false)
      ])
    )
  )
}
