/**
 * Ctrl-C for tests: runs a command in its own process group and sends SIGINT when the run's events.jsonl shows
 * the moment asked for, as a terminal's Ctrl-C would (to the group) or as `kill -INT PID` would (to the process).
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"

/** One line of a run's events.jsonl. */
export interface LoggedEvent {
  readonly _tag: string
  readonly step?: number
  readonly resumed?: boolean
  readonly [key: string]: unknown
}

/** The complete lines of an events.jsonl (a line still being appended is left out). */
export const readEvents = (file: string): Array<LoggedEvent> => {
  if (!fs.existsSync(file)) return []
  const lines = fs.readFileSync(file, "utf8").split("\n")
  return lines.slice(0, -1).filter((l) => l.trim().length > 0).map((l) => JSON.parse(l) as LoggedEvent)
}

/** What an interrupted (or finished) run left. */
export interface Outcome {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  /** whether SIGINT was sent (false: the run ended first) */
  readonly interrupted: boolean
  /** the executable names of the command's child processes just before the signal (Linux /proc; empty elsewhere) */
  readonly children: ReadonlyArray<string>
}

const read = (file: string): string => {
  try {
    return fs.readFileSync(file, "utf8").trim()
  } catch {
    return ""
  }
}

const childrenOf = (pid: number): Array<string> =>
  fs.existsSync(`/proc/${pid}/task`)
    ? fs.readdirSync(`/proc/${pid}/task`)
      .flatMap((t) => read(path.join(`/proc/${pid}/task`, t, "children")).split(/\s+/).filter((s) => s.length > 0))
      .map((child) => read(`/proc/${child}/comm`))
    : []

/** Options of {@link runUntil}. */
export interface RunUntilOptions {
  readonly cwd: string
  readonly env: NodeJS.ProcessEnv
  /** the run's events.jsonl */
  readonly events: string
  /** when to send SIGINT; never: let the run finish */
  readonly when?: (events: ReadonlyArray<LoggedEvent>) => boolean
  /** "group" (a terminal's Ctrl-C, the default) or "process" */
  readonly target?: "group" | "process"
  readonly timeoutMs?: number
}

/** Runs `command args`, sends SIGINT once `when` holds for its events, and resolves when it has exited. */
export const runUntil = (command: string, args: ReadonlyArray<string>, options: RunUntilOptions): Promise<Outcome> =>
  new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env, detached: true, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = "", stderr = "", interrupted = false, children: Array<string> = [], exited = false
    child.stdout.on("data", (d) => (stdout += String(d)))
    child.stderr.on("data", (d) => (stderr += String(d)))
    const timer = setTimeout(() => {
      if (!exited) process.kill(-child.pid!, "SIGKILL")
      reject(new Error(`${command} ${args.join(" ")} did not end within ${options.timeoutMs ?? 120_000} ms:\n${stderr}`))
    }, options.timeoutMs ?? 120_000)
    const poll = setInterval(() => {
      if (exited || interrupted || options.when === undefined || !options.when(readEvents(options.events))) return
      children = childrenOf(child.pid!)
      interrupted = true
      process.kill(options.target === "process" ? child.pid! : -child.pid!, "SIGINT")
    }, 20)
    child.on("error", reject)
    child.on("close", (code, signal) => {
      exited = true
      clearInterval(poll)
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, interrupted, children })
    })
  })
