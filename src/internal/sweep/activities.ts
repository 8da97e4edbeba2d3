/**
 * What a run's activities do, each one idempotent so a runner that dies mid-activity can be replaced by another
 * that runs it again (docs/sweeps.md, "Activities"): train up to an epoch (resuming from the run's last
 * checkpoint), evaluate, analyse the dynamics, write the run's report. Each writes `DIR/runs/<id>/` the way a
 * single `deq` run does.
 *
 * @internal
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Context, Effect } from "effect"
import * as Checkpoint from "../../Checkpoint.ts"
import * as Report from "../../Report.ts"
import * as Train from "../../Train.ts"
import { dynamicsJob, evalJob, type JobError } from "../cli/jobs.ts"
import { epochRows, epochTable, trainingPlot } from "../cli/reports.ts"
import { configFile, eventsFile } from "../cli/train.ts"
import type { RunSpec } from "./grid.ts"
import { robustOf } from "./results.ts"

/** Who runs activities in this process (shown in the live table and the attempts log). */
export const runnerName = `${os.hostname()}:${process.pid}`

/** The append-only log of activity attempts of a run (fault tests read it). */
export const attemptsFile = (dir: string): string => path.join(dir, "attempts.jsonl")
/** The progress of the activity running now (the live table reads it). */
export const progressFile = (dir: string): string => path.join(dir, "progress.json")

/** What a run's progress file says. */
export interface Progress {
  readonly phase: "train" | "evaluate" | "dynamics" | "report" | "done"
  readonly runner: string
  readonly started: number
  readonly updated: number
  readonly epoch?: number
  readonly epochs?: number
  readonly step?: number
  readonly totalSteps?: number
  /** steps done when this attempt started (for its rate) */
  readonly firstStep?: number
}

const writeProgress = (dir: string, p: Progress) => Effect.ignore(Report.writeJson(progressFile(dir), p))

/** Where a process says which activity it starts (a runner's stderr; nothing in the embedded sweep). */
export const ActivityLog = Context.Reference<(line: string) => void>("effect-deq/Sweep/ActivityLog", {
  defaultValue: () => () => {}
})

const attempt = (dir: string, activity: string, extra: Record<string, unknown> = {}) =>
  Effect.andThen(
    Effect.flatMap(Effect.service(ActivityLog), (log) =>
      Effect.sync(() => log(`run ${path.basename(dir)}: ${activity}${extra.from !== undefined ? ` (from epoch ${extra.from})` : ""}`))),
    Report.appendJsonLine(attemptsFile(dir), { time: new Date().toISOString(), activity, runner: runnerName, ...extra })
  )

/** Epochs a run directory's `last/` checkpoint has completed (0 when there is none). */
export const completedEpochs = (dir: string): number => {
  try {
    const manifest = JSON.parse(fs.readFileSync(path.join(Train.checkpointDirs(dir).last, Checkpoint.MANIFEST), "utf8")) as {
      metadata?: { extra?: { epoch?: number; ended?: boolean; batch?: number } }
    }
    const e = manifest.metadata?.extra
    if (e?.epoch === undefined) return 0
    return e.ended === true ? e.epoch : e.epoch - 1
  } catch {
    return 0
  }
}

const readLines = (file: string): Array<Record<string, any>> => {
  try {
    return fs.readFileSync(file, "utf8").split("\n").flatMap((l) => {
      try {
        const v = JSON.parse(l) as unknown
        return typeof v === "object" && v !== null ? [v as Record<string, any>] : []
      } catch {
        return []
      }
    })
  } catch {
    return []
  }
}

/** The events of a run's log (incomplete lines skipped). */
export const readEvents = (dir: string): Array<Record<string, any>> => readLines(eventsFile(dir))

/**
 * Cuts the event log back to what the checkpoint holds: the lines up to the end-of-epoch checkpoint of epoch
 * `epochs` (nothing when 0). A killed attempt leaves a partial epoch behind; its replacement writes it again.
 */
const rewindLog = (dir: string, epochs: number) =>
  Effect.gen(function*() {
    const lines = readEvents(dir)
    const end = epochs === 0
      ? 0
      : lines.findIndex((e) => e._tag === "Checkpoint" && e.reason === "epoch" && e.epoch === epochs) + 1
    if (end === lines.length) return
    yield* Report.writeText(eventsFile(dir), lines.slice(0, end).map((l) => JSON.stringify(l) + "\n").join(""))
  })

/** What one epoch of training reports back to the workflow. */
export interface EpochResult {
  readonly epoch: number
  readonly loss: number
  readonly accuracy: number
  readonly seconds: number
}

const epochResult = (dir: string, epoch: number): EpochResult => {
  const e = readEvents(dir).find((x) => x._tag === "Epoch" && x.epoch === epoch)
  return { epoch, loss: e?.loss ?? Number.NaN, accuracy: e?.accuracy ?? Number.NaN, seconds: e?.seconds ?? 0 }
}

/**
 * Trains `run` in `dir` until `epoch` is complete (DIR/last written), resuming from the last checkpoint. Nothing
 * is trained when the checkpoint already holds `epoch` (the activity ran before, its result was not recorded).
 */
export const trainUntil = (run: RunSpec, dir: string, epoch: number): Effect.Effect<EpochResult, Train.RunError | Report.ReportError> =>
  Effect.gen(function*() {
    const config = yield* Train.decodeConfig(run.train)
    const done = completedEpochs(dir)
    if (done >= epoch) return epochResult(dir, epoch)
    yield* rewindLog(dir, done)
    yield* attempt(dir, `train-${epoch}`, { from: done })
    yield* Report.writeJson(configFile(dir), Train.encodeConfig(config))
    const started = Date.now()
    let last = 0
    let firstStep: number | undefined
    const onEvent = (event: Train.TrainEvent) =>
      Effect.gen(function*() {
        yield* Effect.ignore(Report.appendJsonLine(eventsFile(dir), { time: new Date().toISOString(), ...event }))
        if (event._tag === "Started") firstStep = event.step
        if (event._tag === "Batch" && Date.now() - last > 1000) {
          last = Date.now()
          yield* writeProgress(dir, {
            phase: "train", runner: runnerName, started, updated: last, epoch: event.epoch, epochs: config.epochs,
            step: event.step, totalSteps: config.epochs * event.batches, firstStep: firstStep ?? 0
          })
        }
      })
    yield* writeProgress(dir, { phase: "train", runner: runnerName, started, updated: started, epoch: done + 1, epochs: config.epochs })
    // stops cleanly after `epoch` with DIR/last written; the next activity resumes from it
    yield* Train.run(config, { out: dir, resume: true, onEvent, untilEpoch: epoch })
    return epochResult(dir, epoch)
  })

/** The clean and robust accuracy a run's evaluation report holds. */
export interface EvalResult {
  readonly clean: number
  readonly robust: number
  readonly samples: number
}

/** Runs the evaluation suite on the run's last checkpoint; writes `DIR/eval/report.{md,json}`. */
export const evaluate = (run: RunSpec, dir: string): Effect.Effect<EvalResult, JobError> =>
  Effect.gen(function*() {
    yield* attempt(dir, "evaluate")
    const now = Date.now()
    yield* writeProgress(dir, { phase: "evaluate", runner: runnerName, started: now, updated: now })
    const files = yield* evalJob({
      checkpoint: dir,
      out: path.join(dir, "eval"),
      families: new Set(run.eval.families),
      defence: false,
      suite: run.eval.suite,
      quiet: true
    })
    return robustOf(JSON.parse(fs.readFileSync(files.json, "utf8")))
  })

/** Runs the dynamics analysis on the run's last checkpoint; writes `DIR/dynamics/`. */
export const analyse = (run: RunSpec, dir: string): Effect.Effect<void, JobError> =>
  Effect.gen(function*() {
    yield* attempt(dir, "dynamics")
    const now = Date.now()
    yield* writeProgress(dir, { phase: "dynamics", runner: runnerName, started: now, updated: now })
    yield* dynamicsJob({
      checkpoint: dir,
      out: path.join(dir, "dynamics"),
      samples: run.dynamics.samples,
      attackSteps: run.dynamics.attackSteps,
      ...(run.dynamics.worstCase !== undefined ? { worstCase: run.dynamics.worstCase } : {}),
      quiet: true
    })
  })

/** Writes the run's own report (`DIR/report.md`, `training.svg`) linking its evaluation and dynamics reports. */
export const report = (run: RunSpec, dir: string, result: EvalResult): Effect.Effect<void, Report.ReportError> =>
  Effect.gen(function*() {
    yield* attempt(dir, "report")
    const history = epochRows(readEvents(dir) as unknown as ReadonlyArray<Train.TrainEvent>)
    yield* Report.writeSvg(path.join(dir, "training.svg"), trainingPlot(history))
    const markdown = Report.document(`Run ${run.id}`, [
      {
        title: "Summary",
        body: [
          `Arm **${run.arm}**, seed ${run.seed}. Clean ${Report.pct(result.clean)}%, robust ${Report.pct(result.robust)}% ` +
          `(${result.samples} test images; the worst case of the evaluation).`,
          "",
          `- [evaluation report](eval/report.md), [dynamics report](dynamics/report.md), [exact config](config.json), ` +
          `[training events](events.jsonl)`
        ].join("\n")
      },
      { title: "Training", body: [epochTable(history), "", Report.image("training.svg", "training curves")].join("\n") },
      { title: "Run spec", body: Report.code(JSON.stringify(run, null, 2), "json") }
    ])
    yield* Report.writeReport(dir, { markdown, json: { run, result, training: history } })
    const now = Date.now()
    yield* writeProgress(dir, { phase: "done", runner: runnerName, started: now, updated: now })
  })

/** Reads a run's attempts log. */
export const readAttempts = (dir: string): Array<Record<string, any>> => readLines(attemptsFile(dir))
