/**
 * Running a training config from the CLI: the exact config written next to the checkpoints, every event appended
 * to a JSONL log, a progress display on stderr, and a clear message when Ctrl-C interrupts (Train saves a
 * checkpoint on interruption; `deq train --resume DIR` continues from it).
 *
 * @internal
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import * as Checkpoint from "../../Checkpoint.ts"
import { ConfigError } from "../../Errors.ts"
import * as Report from "../../Report.ts"
import * as Train from "../../Train.ts"
import { storedConfig } from "./load.ts"
import { makeProgress, type ProgressSink } from "./progress.ts"

/** The JSONL event log of a run directory. */
export const eventsFile = (out: string): string => path.join(out, "events.jsonl")

/** The exact config of a run directory. */
export const configFile = (out: string): string => path.join(out, "config.json")

/** The stderr sink of the progress display. */
export const stderrSink: ProgressSink = {
  get isTTY() {
    return process.stderr.isTTY === true
  },
  get columns() {
    return process.stderr.columns
  },
  write: (text) => {
    process.stderr.write(text)
  }
}

/** Writes a line to stderr (CLI status messages; results go to stdout). */
export const say = (message: string): Effect.Effect<void> => Effect.sync(() => void process.stderr.write(message + "\n"))

/**
 * The training config stored in `<dir>/last` (what `--resume DIR` continues), or a ConfigError saying why not. A
 * `last` that a kill inside a checkpoint swap left absent is read from its complete copy (Checkpoint.read).
 */
export const resumableConfig = (dir: string): Effect.Effect<Train.TrainConfig, ConfigError> =>
  Effect.gen(function*() {
    const last = Train.checkpointDirs(dir).last
    if (!(yield* Checkpoint.present(last))) {
      return yield* new ConfigError({
        path: "resume",
        message: `nothing to resume in ${path.resolve(dir)}: no checkpoint at ${last}`
      })
    }
    const { dir: read, metadata } = yield* Checkpoint.read(last).pipe(
      Effect.mapError((e) => new ConfigError({ path: "resume", message: `cannot read ${last}: ${e.message}` }))
    )
    return yield* storedConfig(read, metadata).pipe(
      Effect.mapError((e) => new ConfigError({ path: "resume", message: e.message }))
    )
  })

/**
 * The JSONL line recording an interruption: where the checkpoint Train saved on interruption stands (read from its
 * manifest), tagged "Interrupted".
 */
const interruptedLine = (out: string) =>
  Effect.try({
    try: () => {
      const last = Train.checkpointDirs(out).last
      const manifest = JSON.parse(fs.readFileSync(path.join(last, Checkpoint.MANIFEST), "utf8")) as {
        metadata: { epoch?: number; step?: number; extra?: { batch?: number } }
      }
      return {
        time: new Date().toISOString(),
        _tag: "Interrupted",
        path: last,
        epoch: manifest.metadata.epoch,
        step: manifest.metadata.step,
        batch: manifest.metadata.extra?.batch
      }
    },
    catch: (e) => e
  })

/** Options of {@link trainRun}. */
export interface TrainRunOptions {
  readonly out: string
  readonly resume: boolean
  /** the progress display's sink (default stderr) */
  readonly sink?: ProgressSink
}

/**
 * Trains `config` into `out`: writes `config.json`, appends every event to `events.jsonl`, shows progress, and
 * returns the summary with the events of this invocation. On interruption (Ctrl-C) Train saves `out/last`; this
 * prints how to resume and lets the interruption through.
 */
export const trainRun = (
  config: Train.TrainConfig,
  options: TrainRunOptions
): Effect.Effect<
  { readonly summary: Train.TrainSummary; readonly events: ReadonlyArray<Train.TrainEvent> },
  Train.RunError | Report.ReportError
> =>
  Effect.gen(function*() {
    const out = path.resolve(options.out)
    const log = eventsFile(out)
    const dirs = Train.checkpointDirs(out)
    if (options.resume) {
      // a kill inside a checkpoint swap leaves a complete copy next to last/ or best/: put it back first
      yield* Checkpoint.recover(dirs.best)
      yield* Checkpoint.recover(dirs.last)
    }
    // nothing is written until Train has accepted the config and the checkpoint (its Started event): a refused
    // command leaves the directory as it was
    let begun = false
    let beginError: Report.ReportError | undefined
    const begin = Effect.gen(function*() {
      begun = true
      yield* Report.writeJson(configFile(out), Train.encodeConfig(config))
      if (!options.resume && fs.existsSync(log)) yield* Effect.sync(() => fs.rmSync(log, { force: true }))
    }).pipe(Effect.catch((e) => Effect.sync(() => void (beginError = e))))
    const progress = makeProgress(options.sink ?? stderrSink)
    const events: Array<Train.TrainEvent> = []
    const summary = yield* Train.run(config, {
      out,
      resume: options.resume,
      onEvent: (event) =>
        Effect.suspend(() => (begun ? Effect.void : begin)).pipe(
          Effect.andThen(Effect.sync(() => {
            events.push(event)
            progress.onEvent(event)
          })),
          Effect.andThen(Report.appendJsonLine(log, { time: new Date().toISOString(), ...event })),
          Effect.catch(() => Effect.void)
        )
    }).pipe(
      Effect.ensuring(Effect.sync(() => progress.close())),
      // Train saves <out>/last on interruption (its own finalizer runs first); record where in the log
      Effect.onInterrupt(() =>
        begun
          ? Effect.andThen(
            interruptedLine(out).pipe(
              Effect.flatMap((line) => Report.appendJsonLine(log, line)),
              Effect.catch(() => Effect.void)
            ),
            say(
              `\ninterrupted: the last checkpoint is in ${dirs.last}; ` +
                `continue with: deq train --resume ${path.relative(process.cwd(), out) || "."}`
            )
          )
          : Effect.void
      )
    )
    if (beginError !== undefined) return yield* beginError
    return { summary, events }
  })
