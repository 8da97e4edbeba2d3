/**
 * `deq sweep` and `deq runner` as Effects: check the inputs before anything is written, submit every run of the
 * sweep as a workflow, follow them to the end with the live table, write the summary and the page; or join a
 * cluster as a runner until interrupted.
 *
 * @internal
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Layer, Schedule } from "effect"
import type { WorkflowEngine } from "effect/workflow"
import { ConfigError } from "../../Errors.ts"
import * as Report from "../../Report.ts"
import { Backend } from "../../Tensor.ts"
import { ActivityLog } from "./activities.ts"
import * as Cluster from "./cluster.ts"
import { counts, makeDisplay, payloadOf, type RunStatus, statusOf, sweepEta } from "./follow.ts"
import * as Grid from "./grid.ts"
import * as Page from "./page.ts"
import { armTable, writeSummary } from "./results.ts"
import { RunWorkflow } from "./workflow.ts"

/** Options of {@link sweepJob}. */
export interface SweepOptions {
  readonly grid: string
  readonly out: string
  /** a postgres:// URL; absent: the embedded SQLite storage in `out` */
  readonly storage?: string
  /** activities at once in the embedded process (default 1) */
  readonly workers?: number
  /** where the live table goes (default stderr) */
  readonly display?: { readonly isTTY?: boolean; write: (s: string) => unknown }
  /** seconds between polls (default 1) */
  readonly pollSeconds?: number
}

/** What a finished sweep reports. */
export interface SweepOutcome {
  readonly done: number
  readonly failed: number
  readonly summary: string
  readonly seconds: number
}

const say = (line: string) => Effect.sync(() => void process.stderr.write(line + "\n"))

/** Creates `out` if needed and proves it writable (a probe file), or fails naming it. */
export const checkWritable = (out: string): Effect.Effect<void, ConfigError> =>
  Effect.try({
    try: () => {
      fs.mkdirSync(out, { recursive: true })
      const probe = path.join(out, `.deq-write-test-${process.pid}`)
      fs.writeFileSync(probe, "")
      fs.rmSync(probe)
    },
    catch: (e) =>
      new ConfigError({ path: "out", message: `output directory ${out} is not writable: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` })
  })

/** One embedded `deq sweep` per output directory: a pid file, taken over when its process is gone. */
const lockEmbedded = (out: string) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const file = path.join(out, "sweep.lock")
        const pid = fs.existsSync(file) ? Number(fs.readFileSync(file, "utf8").trim()) : Number.NaN
        if (Number.isInteger(pid) && pid !== process.pid) {
          let alive = false
          try {
            process.kill(pid, 0)
            alive = true
          } catch {
            alive = false
          }
          if (alive) throw new Error(`another deq sweep (pid ${pid}) is running on ${out}`)
        }
        fs.writeFileSync(file, String(process.pid))
        return file
      },
      catch: (e) => new ConfigError({ path: "out", message: (e as Error).message })
    }),
    (file) => Effect.sync(() => fs.rmSync(file, { force: true }))
  )

/**
 * Submits one run (the same run submitted again is the same workflow execution). The cluster reports a storage
 * outage as a defect: retried every second for two minutes, then the sweep fails with one line.
 */
const submit = (out: string, run: Grid.RunSpec) =>
  RunWorkflow.execute(payloadOf(out, run), { discard: true }).pipe(
    Effect.catchCause((cause) => Effect.fail(cause)),
    Effect.retry({ schedule: Schedule.spaced("1 second"), times: 120 }),
    Effect.catch((cause) =>
      Effect.fail(new Cluster.StorageError({ storage: "cluster", message: `cannot submit run ${run.id}: ${Cluster.describeCause(cause)}` }))
    )
  )

/**
 * The runs seed by seed (every arm's first seed, then every arm's second, ...): a runner takes them in this order,
 * so a sweep cut short still has every arm, with fewer seeds.
 */
export const submissionOrder = (runs: ReadonlyArray<Grid.RunSpec>): Array<Grid.RunSpec> => {
  const seeds = [...new Set(runs.map((r) => r.seed))]
  return [...runs].sort((a, b) => seeds.indexOf(a.seed) - seeds.indexOf(b.seed))
}

/** Submits every run (a run already submitted is the same workflow execution) and follows them to the end. */
const submitAndFollow = (sweep: Grid.Sweep, out: string, options: SweepOptions, storage: string) =>
  Effect.gen(function*() {
    const started = performance.now()
    for (const run of submissionOrder(sweep.runs)) yield* submit(out, run)
    const display = makeDisplay(options.display ?? process.stderr)
    const firstRunning = new Map<string, number>()
    const durations: Array<number> = []
    let rows: ReadonlyArray<RunStatus> = []
    while (true) {
      rows = yield* Effect.forEach(sweep.runs, (run) => statusOf(out, run), { concurrency: 4 })
      const now = performance.now()
      for (const r of rows) {
        if (r.state === "running" && !firstRunning.has(r.id)) firstRunning.set(r.id, now)
        if (r.state === "done" && firstRunning.has(r.id)) {
          durations.push((now - firstRunning.get(r.id)!) / 1000)
          firstRunning.delete(r.id)
        }
      }
      const mean = durations.length > 0 ? durations.reduce((a, b) => a + b, 0) / durations.length : undefined
      display.show(sweep, rows, sweepEta(rows, mean))
      const c = counts(rows)
      if (c.done + c.failed === rows.length) break
      yield* Effect.sleep(`${options.pollSeconds ?? 1} seconds`)
    }
    const states = new Map(rows.map((r) => [r.id, r.state]))
    const seconds = (performance.now() - started) / 1000
    const { arms, results } = yield* writeSummary(out, sweep, states, { seconds, storage })
    yield* Page.write(out, sweep, arms, results, states)
    const c = counts(rows)
    for (const r of rows) if (r.state === "failed") yield* say(`run ${r.id} failed: ${r.error ?? "unknown error"}`)
    return { done: c.done, failed: c.failed, summary: armTable(arms), seconds } satisfies SweepOutcome
  })

/**
 * `deq sweep`: checks the sweep file, the output directory and the storage (each failure one ConfigError or
 * StorageError, nothing written), writes `out/sweep.json`, submits the runs and follows them; then writes
 * summary.md, summary.json, the SVG curves and index.html.
 */
export const sweepJob = (options: SweepOptions): Effect.Effect<SweepOutcome, ConfigError | Cluster.StorageError | Report.ReportError> =>
  Effect.scoped(Effect.gen(function*() {
    const sweep = yield* Grid.load(options.grid)
    const out = path.resolve(options.out)
    const storage = options.storage === undefined ? undefined : yield* Cluster.parseStorage(options.storage)
    if (storage !== undefined) yield* Cluster.ping(storage)
    yield* checkWritable(out)
    if (storage === undefined) yield* lockEmbedded(out)
    yield* Report.writeJson(path.join(out, "sweep.json"), { name: sweep.name, file: sweep.file, base: sweep.base, axes: sweep.axes, runs: sweep.runs })
    yield* say(
      `sweep ${sweep.name}: ${sweep.runs.length} runs -> ${out} (storage: ${storage === undefined ? `embedded ${Cluster.embeddedFile(out)}` : Cluster.redact(storage)})`
    )
    const label = storage === undefined ? `embedded SQLite (${path.relative(out, Cluster.embeddedFile(out))})` : `PostgreSQL ${Cluster.redact(storage)}`
    const engine: Layer.Layer<WorkflowEngine.WorkflowEngine, Cluster.StorageError> = storage === undefined
      ? Cluster.embedded(out, options.workers ?? 1)
      : Cluster.client(storage)
    const quiet = Cluster.loggerLayer(false, (l) => void process.stderr.write(l + "\n"))
    const follow = submitAndFollow(sweep, out, options, label)
    // the tfjs backend is chosen only where activities run: here when embedded, on the runners otherwise
    return yield* (storage === undefined
      ? Effect.andThen(Effect.service(Backend), follow.pipe(Effect.provide(engine))).pipe(Effect.provide(Backend.auto))
      : Effect.raceFirst(follow, Cluster.watchStorage(storage, say) as Effect.Effect<never>).pipe(Effect.provide(engine))).pipe(
        Effect.provide(quiet)
      )
  }))

/** Options of {@link runnerJob}. */
export interface RunnerJobOptions extends Cluster.RunnerOptions {
  readonly verbose?: boolean
}

/** `deq runner`: joins the cluster on `storage` and runs sweep workflows until interrupted. */
export const runnerJob = (options: RunnerJobOptions): Effect.Effect<never, Cluster.StorageError> =>
  Effect.gen(function*() {
    const storage = yield* Cluster.parseStorage(options.storage)
    yield* Cluster.ping(storage)
    yield* say(`runner ${options.host}:${options.port} joining ${Cluster.redact(storage)} (${options.workers} worker${options.workers === 1 ? "" : "s"})`)
    const stamp = () => new Date().toISOString().slice(11, 19)
    return yield* Effect.andThen(say("runner ready"), Cluster.watchStorage(storage, say)).pipe(
      Effect.provide(Cluster.runner({ ...options, storage })),
      Effect.provideService(ActivityLog, (line) => void process.stderr.write(`${stamp()} ${line}\n`)),
      Effect.provide(Cluster.loggerLayer(options.verbose === true, (l) => void process.stderr.write(l + "\n")))
    ) as Effect.Effect<never, Cluster.StorageError>
  })
