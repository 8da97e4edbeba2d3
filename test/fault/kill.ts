/**
 * Kill-test helpers: a child process training a config through the CLI (`node --import tsx src/bin.ts train`, one
 * process, so SIGKILL kills the trainer itself), waiting for a moment to kill it (a random time into training,
 * inside a checkpoint swap, while a checkpoint is being written), and what a run directory holds afterwards.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

/** The smoke preset's model, solver and attack on 128 MNIST images for 5 epochs: 5 saves of last/, some of best/. */
export const killConfig = {
  model: { _tag: "fc", hidden: 32 },
  data: { name: "mnist", trainSize: 128, testSize: 32 },
  solver: { _tag: "broyden", maxIter: 4, tol: 0.001 },
  regularizers: { randomStates: { max: 4 } },
  attack: { eps: 0.1, stepSize: 0.04, steps: 3 },
  eval: { subset: 32, batchSize: 32, steps: 3 },
  epochs: 5,
  batchSize: 32,
  seed: 7,
  lr: 0.005
}

/** The environment of a trainer child: wasm, and the swap's rename window widened by `swapDelayMs`. */
export const childEnv = (swapDelayMs: number): NodeJS.ProcessEnv => ({
  ...process.env,
  DEQ_BACKEND: "wasm",
  DEQ_CHECKPOINT_SWAP_DELAY_MS: String(swapDelayMs)
})

/** Starts `deq train --config file --out out` in its own process group. */
export const spawnTrain = (file: string, out: string, env: NodeJS.ProcessEnv): ChildProcess =>
  spawn(process.execPath, ["--import", "tsx", path.join(root, "src", "bin.ts"), "train", "--config", file, "--out", out], {
    cwd: root,
    env,
    detached: true,
    stdio: ["ignore", "ignore", "pipe"]
  })

/** Kills the child's whole process group with SIGKILL (no finalizer runs); resolves when it is gone. */
export const kill = (child: ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    try {
      process.kill(-child.pid!, "SIGKILL")
    } catch {
      resolve()
    }
  })

/** Polls `test` every `everyMs` until it holds (true) or `timeoutMs` passes or the child exits (false). */
export const waitFor = async (test: () => boolean, child: ChildProcess, timeoutMs: number, everyMs = 5): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (test()) return true
    if (child.exitCode !== null || child.signalCode !== null) return false
    await new Promise((r) => setTimeout(r, everyMs))
  }
  return false
}

/** The events logged so far (complete lines only). */
export const events = (out: string): Array<Record<string, any>> => {
  const file = path.join(out, "events.jsonl")
  if (!fs.existsSync(file)) return []
  return fs.readFileSync(file, "utf8").split("\n").flatMap((l) => {
    try {
      return l.length > 0 ? [JSON.parse(l)] : []
    } catch {
      return []
    }
  })
}

/** The temporary and aside directories in a run directory. */
export const leftovers = (out: string): Array<string> =>
  fs.existsSync(out) ? fs.readdirSync(out).filter((n) => /\.(tmp|old)-/.test(n)) : []

/** Whether a swap is under way: the previous checkpoint is aside (between the two renames). */
export const inSwap = (out: string): boolean => leftovers(out).some((n) => n.includes(".old-"))

/** Whether a checkpoint is being written (its temporary directory exists). */
export const inWrite = (out: string): boolean => leftovers(out).some((n) => n.includes(".tmp-"))

/** Every file under a directory with its bytes (to compare a directory before and after a command). */
export const snapshot = (dir: string): Map<string, Buffer> => {
  const out = new Map<string, Buffer>()
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else out.set(path.relative(dir, p), fs.readFileSync(p))
    }
  }
  if (fs.existsSync(dir)) walk(dir)
  return out
}
