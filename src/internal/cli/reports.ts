/**
 * The Markdown and JSON documents of the CLI: the evaluation suite's table, the dynamics section, the training
 * summary, and the main job's report.
 *
 * @internal
 */
import * as os from "node:os"
import type * as Adversary from "../../Adversary.ts"
import * as Report from "../../Report.ts"
import type * as Train from "../../Train.ts"
import type { SuiteResult } from "./suite.ts"

/** The machine a run happened on, for reports. */
export const machine = (): string => {
  const cpu = os.cpus()
  return `${cpu.length} vCPU ${cpu[0]?.model.trim() ?? "unknown CPU"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ` +
    `${os.type()} ${os.release()}, Node ${process.version}`
}

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

/** The per-epoch training history from a run's events. */
export interface EpochRow {
  readonly epoch: number
  readonly loss: number
  readonly accuracy: number
  readonly advAccuracy?: number
  readonly clean?: number
  readonly robust?: number
  readonly seconds: number
}

/** Collects epoch and evaluation events into rows. */
export const epochRows = (events: ReadonlyArray<Train.TrainEvent>): Array<EpochRow> => {
  const rows = new Map<number, EpochRow>()
  for (const e of events) {
    if (e._tag === "Epoch") {
      rows.set(e.epoch, {
        ...rows.get(e.epoch),
        epoch: e.epoch,
        loss: e.loss,
        accuracy: e.accuracy,
        ...(e.advAccuracy !== undefined ? { advAccuracy: e.advAccuracy } : {}),
        seconds: e.seconds
      })
    } else if (e._tag === "Evaluation") {
      const prev = rows.get(e.epoch)
      if (prev !== undefined) {
        rows.set(e.epoch, { ...prev, clean: e.clean, ...(e.robust !== undefined ? { robust: e.robust } : {}) })
      }
    }
  }
  return [...rows.values()].sort((a, b) => a.epoch - b.epoch)
}

/** The training history as a Markdown table. */
export const epochTable = (rows: ReadonlyArray<EpochRow>): string =>
  Report.table(
    ["epoch", "loss", "train acc. % (the loss's inputs)", "train adv. acc. %", "held-out clean %", "held-out PGD %", "seconds"],
    rows.map((r) => [
      r.epoch,
      Report.num(r.loss, 4),
      Report.pct(r.accuracy),
      Report.pct(r.advAccuracy),
      Report.pct(r.clean),
      Report.pct(r.robust),
      r.seconds.toFixed(1)
    ])
  )

/** The training curve: loss per epoch and the held-out accuracies. */
export const trainingPlot = (rows: ReadonlyArray<EpochRow>): Report.LinePlot => ({
  title: "Training",
  x: "epoch",
  y: "accuracy",
  xInteger: true,
  yDomain: [0, 1],
  series: [
    { name: "train (adv.)", points: rows.flatMap((r) => (r.advAccuracy === undefined ? [] : [[r.epoch, r.advAccuracy] as const])) },
    { name: "held-out clean", points: rows.flatMap((r) => (r.clean === undefined ? [] : [[r.epoch, r.clean] as const])) },
    { name: "held-out PGD", points: rows.flatMap((r) => (r.robust === undefined ? [] : [[r.epoch, r.robust] as const])) }
  ].filter((s) => s.points.length > 0)
})
