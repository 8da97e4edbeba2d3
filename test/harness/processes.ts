/**
 * `deq` child processes for the sweep tests: started with their output in files, waited for by condition,
 * SIGKILLed on demand, and all stopped at teardown (every process a test starts is tracked here).
 *
 * @example
 * ```ts
 * const runner = Processes.deq(["runner", "--storage", url], dir)
 * await Processes.waitFor(() => runner.stderr().includes("runner ready"), 30_000)
 * runner.kill("SIGKILL")
 * Processes.stopAll()
 * ```
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
const started = new Set<ChildProcess>()
let count = 0

/** A started `deq` process. */
export interface Deq {
  readonly pid: number
  readonly stdout: () => string
  readonly stderr: () => string
  /** resolves with the exit code (or the signal's name) */
  readonly exited: Promise<number | string>
  readonly kill: (signal?: NodeJS.Signals) => void
}

const read = (file: string): string => {
  try {
    return fs.readFileSync(file, "utf8")
  } catch {
    return ""
  }
}

/** Starts `deq ARGS` (src/bin.ts through tsx) with stdout and stderr written to files in `logs`. */
export const deq = (args: ReadonlyArray<string>, logs: string, env: Record<string, string> = {}): Deq => {
  fs.mkdirSync(logs, { recursive: true })
  const n = ++count
  const out = path.join(logs, `deq-${n}.out`), err = path.join(logs, `deq-${n}.err`)
  const child = spawn(process.execPath, ["--import", "tsx", path.join(root, "src", "bin.ts"), ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", fs.openSync(out, "w"), fs.openSync(err, "w")]
  })
  started.add(child)
  const exited = new Promise<number | string>((resolve) =>
    child.on("exit", (code, signal) => {
      started.delete(child)
      resolve(code ?? signal ?? -1)
    })
  )
  return {
    pid: child.pid ?? -1,
    stdout: () => read(out),
    stderr: () => read(err),
    exited,
    kill: (signal = "SIGTERM") => void child.kill(signal)
  }
}

/** Polls `condition` every 100 ms until it holds; rejects with `what` after `timeoutMs`. */
export const waitFor = async (condition: () => boolean, timeoutMs: number, what = "condition"): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** SIGKILLs every process started here that is still running. */
export const stopAll = (): void => {
  for (const child of started) child.kill("SIGKILL")
  started.clear()
}
