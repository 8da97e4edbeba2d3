/**
 * The progress displays of the `deq` commands: a progress bar with ETA rewritten in place on a TTY (plain `\r` +
 * erase-line, no dependency), periodic log lines otherwise (CI logs, pipes). {@link makeProgress} follows
 * training's events (loss, accuracy); {@link makeStageProgress} the stages of an evaluation or an analysis, each
 * with done/total and an ETA when its size is known.
 *
 * @internal
 */
import * as Report from "../../Report.ts"
import type { TrainEvent } from "../../Train.ts"

/** Where the display writes: a stream with an optional TTY flag and width. */
export interface ProgressSink {
  readonly isTTY: boolean
  readonly columns?: number
  readonly write: (text: string) => void
}

/** Options of {@link makeProgress}. */
export interface ProgressOptions {
  /** seconds between log lines when the sink is not a TTY (default 15) */
  readonly logEvery?: number
  /** the clock in ms (tests) */
  readonly now?: () => number
}

/** A progress display: feed it every event; `close` clears the bar. */
export interface Progress {
  readonly onEvent: (event: TrainEvent) => void
  readonly close: () => void
}

/** Seconds as "1h02m", "3m05s", "42s" (unknown: "?"). */
export const formatEta = (seconds: number): string => Report.duration(1000 * seconds, { compact: true })

/** A text bar of `width` cells, `fraction` filled. */
export const bar = (fraction: number, width: number): string => {
  const filled = Math.max(0, Math.min(width, Math.round(fraction * width)))
  return "#".repeat(filled) + ".".repeat(width - filled)
}

/** The bar line of a TTY: `[####....] text`, cut to the terminal's width. */
const barLine = (sink: ProgressSink, fraction: number, text: string): string => {
  // a pseudo-terminal without a size reports 0 columns
  const columns = sink.columns !== undefined && sink.columns > 0 ? sink.columns : 120
  const width = Math.max(10, Math.min(30, columns - text.length - 4))
  const full = `[${bar(fraction, width)}] ${text}`
  return "\r\x1b[2K" + full.slice(0, Math.max(20, columns - 1))
}

/** Seconds left at the rate so far (NaN before any progress). */
const etaOf = (done: number, total: number, elapsedSeconds: number): number => {
  const rate = done / Math.max(elapsedSeconds, 1e-3)
  return rate > 0 ? (total - done) / rate : Number.NaN
}

/**
 * A progress display over a sink. On a TTY the current line is redrawn on every batch and other events print
 * above it; otherwise one line per `logEvery` seconds, plus one per epoch, evaluation, checkpoint and the end.
 */
export const makeProgress = (sink: ProgressSink, options: ProgressOptions = {}): Progress => {
  const now = options.now ?? (() => Date.now())
  const logEvery = (options.logEvery ?? 15) * 1000
  let total = 0, epochs = 0, firstStep = 0, started = now(), lastLog = -Infinity
  let barShown = false
  const clearBar = () => {
    if (barShown) sink.write("\r\x1b[2K")
    barShown = false
  }
  const line = (text: string) => {
    clearBar()
    sink.write(text + "\n")
  }
  const status = (e: Extract<TrainEvent, { _tag: "Batch" }>): string => {
    const done = e.step
    const eta = etaOf(done - firstStep, total - firstStep, (now() - started) / 1000)
    const fraction = total > 0 ? done / total : 0
    const adv = e.advAccuracy !== undefined ? ` adv ${Report.percent(e.advAccuracy)}` : ""
    const phase = e.phase === "pretrain" ? "pretrain " : ""
    return `${phase}epoch ${e.epoch}/${epochs} batch ${e.batch + 1}/${e.batches} ` +
      `${Report.percent(fraction, 0).padStart(4)} ETA ${formatEta(eta)} loss ${e.loss.toFixed(4)} acc ${Report.percent(e.accuracy)}${adv}`
  }
  const onEvent = (e: TrainEvent): void => {
    switch (e._tag) {
      case "Started": {
        total = e.totalSteps
        epochs = e.epochs
        firstStep = e.step
        started = now()
        line(
          `${e.resumed ? "resuming" : "training"}: ${e.method}, read-out ${e.readOut}, attack ${e.attack}, ` +
            `${e.parameterCount.toLocaleString("en-US")} parameters, ${e.epochs} epochs x ${e.batchesPerEpoch} batches ` +
            `on ${e.backend}${e.resumed ? ` (from epoch ${e.epoch}, batch ${e.batch})` : ""}`
        )
        return
      }
      case "Batch": {
        const text = status(e)
        if (sink.isTTY) {
          sink.write(barLine(sink, total > 0 ? e.step / total : 0, text))
          barShown = true
        } else if (now() - lastLog >= logEvery) {
          lastLog = now()
          line(text)
        }
        return
      }
      case "Epoch":
        line(
          `epoch ${e.epoch}/${epochs} done in ${formatEta(e.seconds)}: loss ${e.loss.toFixed(4)} acc ${Report.percent(e.accuracy)}` +
            (e.advAccuracy !== undefined ? ` adv ${Report.percent(e.advAccuracy)}` : "") + ` lr ${e.lr.toExponential(2)}`
        )
        return
      case "Evaluation":
        line(
          `  eval on ${e.samples}: clean ${Report.percent(e.clean)}` + (e.robust !== undefined ? ` robust ${Report.percent(e.robust)}` : "") +
            (e.best ? " (best so far)" : "") + ` [${formatEta(e.seconds)}]`
        )
        return
      case "Checkpoint":
        line(`  checkpoint (${e.reason}) -> ${e.path}`)
        return
      case "Finished":
        line(
          `finished in ${formatEta(e.seconds)}` +
            (e.bestMetric !== undefined ? `; best ${Report.percent(e.bestMetric)} at epoch ${e.bestEpoch}` : "")
        )
        return
    }
  }
  return { onEvent, close: clearBar }
}

/** A progress display over the stages of a long job (an evaluation, a dynamics analysis). */
export interface StageProgress {
  /** a new stage begins: one line (above the bar on a TTY), with the previous stage's time */
  readonly stage: (message: string) => void
  /** `done` of `total` `unit`s of the current stage are finished; the ETA counts from `since` (default: the stage's start) */
  readonly tick: (done: number, total: number, unit?: string, since?: number) => void
  /** a line of its own (a warning), above the bar */
  readonly note: (message: string) => void
  /** clears the bar and prints the last stage's time */
  readonly close: () => void
}

/**
 * The batches of the evaluations inside the stages of `progress` (Evaluation.BatchProgress): a stage may run
 * several evaluations, so each is counted ("batches of evaluation k") with its own ETA. `now` is for tests.
 */
export const evaluationTicker = (progress: StageProgress, now: () => number = () => Date.now()) => {
  let k = 0, started = now()
  return {
    stage: (message: string) => {
      k = 0
      progress.stage(message)
    },
    batch: (done: number, total: number) => {
      if (done === 0) {
        k++
        started = now()
      } else progress.tick(done, total, `batches of evaluation ${k}`, started)
    }
  }
}

/** A stage display that shows nothing (quiet jobs). */
export const silentProgress: StageProgress = { stage: () => {}, tick: () => {}, note: () => {}, close: () => {} }

/**
 * A stage display over a sink: `label [k] message` per stage; within a stage, on a TTY a bar with done/total, the
 * percentage and the ETA of the stage redrawn in place, otherwise a line at most every `logEvery` seconds (and at
 * the end of the stage).
 */
export const makeStageProgress = (sink: ProgressSink, label: string, options: ProgressOptions = {}): StageProgress => {
  const now = options.now ?? (() => Date.now())
  const logEvery = (options.logEvery ?? 15) * 1000
  const begun = now()
  let stages = 0, stageStart = begun, lastLog = -Infinity, barShown = false
  const clearBar = () => {
    if (barShown) sink.write("\r\x1b[2K")
    barShown = false
  }
  const line = (text: string) => {
    clearBar()
    sink.write(text + "\n")
  }
  const endStage = () => {
    if (stages > 0) line(`${label} [${stages}] done in ${formatEta((now() - stageStart) / 1000)}`)
  }
  return {
    stage: (message) => {
      endStage()
      stages++
      stageStart = now()
      lastLog = -Infinity
      line(`${label} [${stages}] ${message} (elapsed ${formatEta((stageStart - begun) / 1000)})`)
    },
    tick: (done, total, unit = "batches", since = stageStart) => {
      const fraction = total > 0 ? done / total : 0
      const eta = etaOf(done, total, (now() - since) / 1000)
      const text = `${label} [${Math.max(1, stages)}] ${done}/${total} ${unit} ${Report.percent(fraction, 0).padStart(4)} ETA ${formatEta(eta)}`
      if (sink.isTTY) {
        sink.write(barLine(sink, fraction, text))
        barShown = true
      } else if (done === total || now() - lastLog >= logEvery) {
        lastLog = now()
        line(text)
      }
    },
    note: (message) => line(`${label}: ${message}`),
    close: () => {
      endStage()
      clearBar()
    }
  }
}
