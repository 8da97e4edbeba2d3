/**
 * The training summary of the CLI's reports: per-epoch rows from a run's events, their table and plot.
 *
 * @internal
 */
import * as Report from "../../Report.ts"
import type * as Train from "../../Train.ts"

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

/**
 * The training curve: the training inputs' adversarial accuracy and the held-out accuracies per epoch (in %), and
 * the loss on the right axis (dashed); `subtitle` names model, data and seed.
 */
export const trainingPlot = (rows: ReadonlyArray<EpochRow>, subtitle?: string): Report.LinePlot => ({
  title: "Training",
  ...(subtitle !== undefined ? { subtitle } : {}),
  x: "epoch",
  y: "accuracy",
  xInteger: true,
  yDomain: [0, 1],
  yFormat: "percent",
  series: [
    Report.series("train (adv.)", rows, (r) => r.epoch, (r) => r.advAccuracy),
    Report.series("held-out clean", rows, (r) => r.epoch, (r) => r.clean),
    Report.series("held-out PGD", rows, (r) => r.epoch, (r) => r.robust)
  ].filter((s) => s.points.length > 0),
  right: { y: "training loss (dashed)", series: [Report.series("loss", rows, (r) => r.epoch, (r) => r.loss)] }
})
