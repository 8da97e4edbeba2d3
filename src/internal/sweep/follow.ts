/**
 * Following a sweep: each run's state (queued, running, done, failed) from its workflow and its progress file,
 * and the live table on stderr (redrawn in place on a terminal, a line per change otherwise).
 *
 * @internal
 */
import * as fs from "node:fs"
import { Effect, Option } from "effect"
import type { WorkflowEngine } from "effect/workflow"
import * as Report from "../../Report.ts"
import { formatEta } from "../cli/progress.ts"
import { type Progress, progressFile } from "./activities.ts"
import type { RunSpec, Sweep } from "./grid.ts"
import { runDir } from "./results.ts"
import { RunWorkflow } from "./workflow.ts"

/** A run's state in the live table. */
export type State = "queued" | "running" | "done" | "failed"

/** What the table shows of one run. */
export interface RunStatus {
  readonly id: string
  readonly state: State
  readonly detail: string
  /** seconds left in this run (undefined when unknown) */
  readonly eta?: number
  readonly runner?: string
  readonly error?: string
}

/** The workflow payload of a run in `out`. */
export const payloadOf = (out: string, run: RunSpec) => ({ out, id: run.id, spec: JSON.parse(JSON.stringify(run)) as unknown })

const readProgress = (out: string, id: string): Progress | undefined => {
  try {
    return JSON.parse(fs.readFileSync(progressFile(runDir(out, id)), "utf8")) as Progress
  } catch {
    return undefined
  }
}

/** Seconds left in the phase a progress file describes (training only: from the attempt's step rate). */
const etaOf = (p: Progress): number | undefined => {
  if (p.phase !== "train" || p.step === undefined || p.totalSteps === undefined) return undefined
  const done = p.step - (p.firstStep ?? 0)
  if (done <= 0) return undefined
  return ((p.updated - p.started) / 1000 / done) * (p.totalSteps - p.step)
}

/** Polls a run's workflow and reads its progress. */
export const statusOf = (out: string, run: RunSpec): Effect.Effect<RunStatus, never, WorkflowEngine.WorkflowEngine> =>
  Effect.gen(function*() {
    const executionId = yield* RunWorkflow.executionId(payloadOf(out, run))
    // an unreachable storage is a defect of poll: the state then comes from the run's files until it is back
    const polled = yield* RunWorkflow.poll(executionId).pipe(Effect.catchCause(() => Effect.succeed(Option.none())))
    if (Option.isSome(polled) && polled.value._tag === "Complete") {
      const exit = polled.value.exit
      if (exit._tag === "Success") return { id: run.id, state: "done", detail: "done" }
      const e = exit.cause.reasons.map((r) => (r._tag === "Fail" ? (r.error as { message?: string }).message : r._tag === "Die" ? String(r.defect) : "interrupted"))[0]
      return { id: run.id, state: "failed", detail: "failed", error: e ?? "failed" }
    }
    const p = readProgress(out, run.id)
    if (p === undefined || p.phase === "done") return { id: run.id, state: "queued", detail: p === undefined ? "waiting for a runner" : "finishing" }
    const detail = p.phase === "train"
      ? `train epoch ${p.epoch ?? "?"}/${p.epochs ?? "?"}${p.step !== undefined && p.totalSteps ? ` (${Math.round((100 * p.step) / p.totalSteps)}%)` : ""}`
      : p.phase
    const eta = etaOf(p)
    return { id: run.id, state: "running", detail, runner: p.runner, ...(eta !== undefined ? { eta } : {}) }
  })

/** Counts per state. */
export const counts = (rows: ReadonlyArray<RunStatus>): Record<State, number> => {
  const c: Record<State, number> = { queued: 0, running: 0, done: 0, failed: 0 }
  for (const r of rows) c[r.state]++
  return c
}

/** The sweep's ETA: running runs' own ETAs, queued runs at the mean duration of the runs that finished. */
export const sweepEta = (rows: ReadonlyArray<RunStatus>, meanRunSeconds: number | undefined): number | undefined => {
  const running = rows.filter((r) => r.state === "running")
  const queued = rows.filter((r) => r.state === "queued").length
  const parallel = Math.max(1, new Set(running.map((r) => r.runner)).size)
  if (meanRunSeconds === undefined && queued > 0) return undefined
  const left = running.reduce((a, r) => a + (r.eta ?? meanRunSeconds ?? 0), 0) + queued * (meanRunSeconds ?? 0)
  return left / parallel
}

/** The live table's text. */
export const tableText = (sweep: Sweep, rows: ReadonlyArray<RunStatus>, eta: number | undefined): string => {
  const c = counts(rows)
  const head = `sweep ${sweep.name}: ${c.queued} queued, ${c.running} running, ${c.done} done, ${c.failed} failed` +
    (c.done + c.failed < rows.length ? `; ETA ${eta === undefined ? "?" : formatEta(eta)}` : "")
  const body = Report.table(
    ["run", "arm", "state", "progress", "ETA", "runner"],
    rows.map((r, i) => [r.id, sweep.runs[i]!.arm, r.state, r.error ?? r.detail, r.eta === undefined ? "" : formatEta(r.eta), r.runner ?? ""])
  )
  return `${head}\n${body}`
}

/** A live display on a stream: redraws in place on a TTY, prints changed lines otherwise. */
export const makeDisplay = (stream: { readonly isTTY?: boolean; write: (s: string) => unknown }) => {
  let lines = 0
  let lastStates = ""
  let lastDetails = ""
  let lastPrint = 0
  return {
    show: (sweep: Sweep, rows: ReadonlyArray<RunStatus>, eta: number | undefined) => {
      const text = tableText(sweep, rows, eta)
      if (stream.isTTY === true) {
        stream.write((lines > 0 ? `\x1b[${lines}F\x1b[J` : "") + text + "\n")
        lines = text.split("\n").length
        return
      }
      // not a terminal (CI logs, pipes): the table when a state changes, at most every 15 s otherwise
      const states = rows.map((r) => r.state).join("|")
      const details = rows.map((r) => r.detail).join("|")
      const now = Date.now()
      if (states !== lastStates || (details !== lastDetails && now - lastPrint > 15_000)) {
        stream.write(text + "\n")
        lastPrint = now
        lastStates = states
        lastDetails = details
      }
    }
  }
}
