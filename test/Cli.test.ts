/**
 * The `deq` command through its real entry point (`node bin/deq.js ...`, as a user runs it): the smoke preset's
 * whole pipeline, then train / resume, eval, dynamics and bench on its outputs; failures (an unknown config key,
 * a missing checkpoint, an unknown preset) exit nonzero with one line naming the problem; Ctrl-C during training
 * saves a checkpoint that `--resume` continues from.
 */
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { beforeAll, describe, expect, it } from "vitest"
import { Effect, Exit } from "effect"
import { chooseOut, holdsReport } from "../src/internal/cli/outputs.ts"
import { evaluationTicker, formatEta, makeProgress, makeStageProgress } from "../src/internal/cli/progress.ts"
import type { TrainEvent } from "../src/Train.ts"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const bin = path.join(root, "bin", "deq.js")
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-cli-"))
const env = { ...process.env, DEQ_BACKEND: "wasm", GLIBC_TUNABLES: "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296" }

const deq = (...args: Array<string>) => {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: root, env, encoding: "utf8", timeout: 180_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

const smokeRun = path.join(tmp, "smoke")

/** Runs `deq args` in this process (Cli.runArgs) and returns its failure as text ("" when it succeeded). */
const inProcess = async (...args: Array<string>): Promise<string> => {
  const { runArgs } = await import("../src/Cli.ts")
  const write = process.stderr.write
  process.stderr.write = (() => true) as typeof process.stderr.write // its one error line is not this test's output
  try {
    const exit = await Effect.runPromiseExit(runArgs(args))
    return Exit.isFailure(exit) ? JSON.stringify(exit.cause) + String(exit.cause) : ""
  } finally {
    process.stderr.write = write
  }
}

beforeAll(() => {
  const r = deq("main", "--preset", "smoke", "--out", smokeRun)
  if (r.code !== 0) throw new Error(`deq main --preset smoke failed (${r.code}):\n${r.stderr}`)
}, 180_000)

describe("deq main (smoke preset: the whole pipeline)", () => {
  it("writes the report with its tables, plots and exact config, a JSONL log and checkpoints", () => {
    const md = fs.readFileSync(path.join(smokeRun, "report.md"), "utf8")
    for (const section of ["## Summary", "## Training", "## Robustness", "## Neural dynamics", "## Exact config"]) {
      expect(md).toContain(section)
    }
    expect(md).toMatch(/Wall time: \*\*[\d.]+ ?(s|ms|m \d+s)\*\*/)
    for (const protocol of ["intermediate states (grid worst case)", "paper (non-adaptive", "adaptive: BPDA", "adaptive: full differentiation"]) {
      expect(md).toContain(protocol)
    }
    for (const svg of ["entropy.svg", "accuracy.svg", "residual.svg", "training.svg"]) {
      const text = fs.readFileSync(path.join(smokeRun, svg), "utf8")
      expect(text.startsWith("<svg")).toBe(true)
      expect(md).toContain(`](${svg})`)
    }
    const json = JSON.parse(fs.readFileSync(path.join(smokeRun, "report.json"), "utf8"))
    expect(json.config.model.hidden).toBe(32)
    expect(json.dynamics.rows).toHaveLength(4)
    for (const row of json.dynamics.rows) {
      expect(row.cleanAccuracy).toBeGreaterThanOrEqual(0)
      expect(row.cleanAccuracy).toBeLessThanOrEqual(1)
      expect(row.robustAccuracy).toBeLessThanOrEqual(row.cleanAccuracy + 1e-9 + 0.5)
      expect(row.cleanEntropy).toBeLessThanOrEqual(Math.log(10) + 1e-6)
    }
    for (const row of json.evaluation.rows) expect(row.result.robustAccuracy).toBeLessThanOrEqual(row.result.cleanAccuracy)
    const events = fs.readFileSync(path.join(smokeRun, "events.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l))
    expect(events[0]._tag).toBe("Started")
    expect(events.at(-1)._tag).toBe("Finished")
    expect(events.filter((e) => e._tag === "Batch")).toHaveLength(32)
    expect(fs.existsSync(path.join(smokeRun, "last", "checkpoint.json"))).toBe(true)
    expect(fs.readdirSync(smokeRun).filter((f) => f.includes(".tmp-"))).toEqual([])
  })
})

describe("deq eval / dynamics on a checkpoint", () => {
  it("eval writes report.md and report.json with the paper protocol and adaptive rows", () => {
    const out = path.join(tmp, "eval")
    const r = deq(
      "eval", "--checkpoint", smokeRun, "--defence", "entropy", "--attacks", "grid",
      "--samples", "16", "--defended-samples", "8", "--pgd-steps", "2", "--out", out
    )
    expect(r.stderr).not.toContain("error")
    expect(r.code).toBe(0)
    // the training bar's progress: each stage on its own line, then done/total and the stage's ETA
    expect(r.stderr).toMatch(/eval \[1\] \S.*\(elapsed \d/)
    expect(r.stderr).toMatch(/eval \[\d+\] \d+\/\d+ batches of evaluation \d+ +\d+% ETA \d\S*/)
    expect(r.stderr).toMatch(/eval \[\d+\] done in \d\S*/)
    const md = fs.readFileSync(path.join(out, "report.md"), "utf8")
    expect(md).toContain("adaptive: BPDA")
    expect(md).toContain("paper (non-adaptive")
    const json = JSON.parse(fs.readFileSync(path.join(out, "report.json"), "utf8"))
    const protocols = json.evaluation.rows.map((row: { protocol: string }) => row.protocol)
    expect(protocols).toContain("intermediate states (grid worst case)")
    expect(protocols).toContain("adaptive: full differentiation")
    expect(protocols.some((p: string) => p.startsWith("ready-made"))).toBe(false)
    expect(json.evaluation.rows[0].result.samples).toBe(16)
  })

  it("dynamics writes a per-state table and three SVG plots, with progress and one backend line on stderr", () => {
    const out = path.join(tmp, "dynamics")
    const r = deq("dynamics", "--checkpoint", path.join(smokeRun, "last"), "--samples", "16", "--attack-steps", "2", "--out", out)
    expect(r.code).toBe(0)
    expect(r.stdout).toContain("| state n |")
    // stdout carries the results only; the stage, done/total and ETA go to stderr
    expect(r.stdout).not.toContain("INFO")
    expect(r.stderr).toMatch(/dynamics \[1\] 4 states on 16 test images/)
    expect(r.stderr).toMatch(/dynamics \[1\] 1\/1 batches 100% ETA \d+s/)
    const backend = r.stderr.split("\n").filter((l) => l.includes("backend"))
    expect(backend).toHaveLength(1)
    expect(backend[0]).toMatch(/INFO .*effect-deq backend: wasm/)
    expect(r.stderr).not.toContain("Cannot find package")
    for (const svg of ["entropy.svg", "accuracy.svg", "residual.svg"]) {
      expect(fs.readFileSync(path.join(out, svg), "utf8")).toContain("aria-roledescription=\"line mark\"")
    }
    const json = JSON.parse(fs.readFileSync(path.join(out, "report.json"), "utf8"))
    expect(json.rows.map((row: { n: number }) => row.n)).toEqual([1, 2, 3, 4])
  })

  it("a missing checkpoint fails with exit code 1 and names the path", () => {
    const missing = path.join(tmp, "no-such-run")
    for (const command of ["eval", "dynamics"]) {
      const r = deq(command, "--checkpoint", missing)
      expect(r.code).toBe(1)
      expect(r.stderr).toContain(`deq ${command}: error: CheckpointError`)
      expect(r.stderr).toContain(missing)
    }
  })
})

describe("a CLI that never surprises", () => {
  it("bare deq prints the usage and exits 0 without starting any job", () => {
    const r = deq()
    expect(r.code).toBe(0)
    expect(r.stdout).toContain("USAGE")
    for (const command of ["main", "train", "eval", "dynamics", "bench", "presets"]) expect(r.stdout).toMatch(new RegExp(`\\n  ${command} `))
    expect(r.stdout).toContain("npm start")
    expect(r.stderr).not.toContain("training")
    // the main job is what `npm start` asks for by name, never a bare `deq`'s default
    const scripts = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")).scripts as Record<string, string>
    expect(scripts["start"]).toMatch(/node bin\/deq\.js main$/)
  })

  it("a missing required flag is one line and a hint, not the whole help", () => {
    const r = deq("eval")
    expect(r.code).toBe(1)
    expect(r.stdout).toBe("")
    expect(r.stderr.trim().split("\n")).toEqual([
      "deq eval: error: Missing required flag: --checkpoint",
      "hint: `deq eval --help` lists the flags"
    ])
  })

  it("a zero count is refused naming the flag, and the previous report stays as it was", () => {
    const report = path.join(tmp, "dynamics", "report.md")
    const before = fs.existsSync(report) ? fs.readFileSync(report, "utf8") : undefined
    const r = deq("dynamics", "--checkpoint", smokeRun, "--samples", "0", "--out", path.join(tmp, "dynamics"))
    expect(r.code).toBe(1)
    expect(r.stderr.trim().split("\n")).toEqual([
      `deq dynamics: error: Invalid value for flag --samples: "0". Expected: a whole number >= 1 (got 0)`,
      "hint: `deq dynamics --help` lists the flags"
    ])
    if (before !== undefined) expect(fs.readFileSync(report, "utf8")).toBe(before)
  })

  it("every count flag refuses 0 the same way (in-process: the same command line, no process start)", async () => {
    for (const [command, flag] of [["dynamics", "--attack-steps"], ["dynamics", "--steps"], ["eval", "--pgd-steps"], ["eval", "--samples"]] as const) {
      const failure = await inProcess(command, "--checkpoint", smokeRun, flag, "0")
      expect(failure, `${command} ${flag}`).toContain(`"_tag":"InvalidValue","option":"${flag.slice(2)}","value":"0","expected":"a whole number >= 1 (got 0)"`)
    }
  })

  it("more samples than the test split holds is an error naming the flag; a default beyond it is a warning", () => {
    const r = deq("eval", "--checkpoint", smokeRun, "--samples", "1000", "--attacks", "ready-made", "--out", path.join(tmp, "too-many"))
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("deq eval: error: ConfigError: --samples 1000: the test split of mnist holds only 64 images")
    expect(fs.existsSync(path.join(tmp, "too-many", "report.md"))).toBe(false)
    const d = deq("dynamics", "--checkpoint", smokeRun, "--attack-steps", "1", "--out", path.join(tmp, "dynamics-all"))
    expect(d.code).toBe(0)
    expect(d.stderr).toContain("dynamics: warning: the test split of mnist holds only 64 images, fewer than the default 200: using all 64")
    expect(JSON.parse(fs.readFileSync(path.join(tmp, "dynamics-all", "report.json"), "utf8")).samples).toBe(64)
  })

  it("a flag that does nothing with the others is an error naming it", () => {
    const r = deq("eval", "--checkpoint", smokeRun, "--defended-samples", "8")
    expect(r.code).toBe(1)
    expect(r.stderr.trim()).toBe("deq eval: error: ConfigError: --defended-samples does nothing without --defence entropy")
  })

  it("the other idle combinations are refused the same way (in-process)", async () => {
    const cases: Array<[Array<string>, string]> = [
      [["eval", "--checkpoint", smokeRun, "--attacks", "grid", "--apgd-steps", "3"], "--apgd-steps does nothing without aa in --attacks"],
      [["eval", "--checkpoint", smokeRun, "--attacks", "grid", "--square-queries", "3"], "--square-queries does nothing without aa in --attacks"],
      [["eval", "--checkpoint", smokeRun, "--attacks", "aa", "--grid", "paper"], "--grid does nothing without grid in --attacks"],
      [["eval", "--checkpoint", smokeRun, "--attacks", "aa", "--pgd-steps", "3"], "--pgd-steps does nothing without ready-made or grid"],
      [["train", "--resume", smokeRun, "--force"], "--force does nothing with --resume"]
    ]
    for (const [args, message] of cases) expect(await inProcess(...args), args.join(" ")).toContain(message)
  })

  it("an existing report is never overwritten silently: the default directory gives way, an explicit --out needs --force", () => {
    const first = deq("dynamics", "--checkpoint", smokeRun, "--samples", "8", "--attack-steps", "1")
    expect(first.code).toBe(0)
    const second = deq("dynamics", "--checkpoint", smokeRun, "--samples", "8", "--attack-steps", "1")
    expect(second.code).toBe(0)
    expect(second.stderr).toMatch(/deq dynamics: \S*dynamics already holds a report; writing to \S*dynamics-2 /)
    expect(fs.existsSync(path.join(smokeRun, "dynamics", "report.md"))).toBe(true)
    expect(fs.existsSync(path.join(smokeRun, "dynamics-2", "report.md"))).toBe(true)
    const refused = deq("dynamics", "--checkpoint", smokeRun, "--out", path.join(smokeRun, "dynamics"))
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain("already holds a report: give --force to overwrite it")
    const train = deq("train", "--preset", "smoke", "--out", smokeRun)
    expect(train.code).toBe(1)
    expect(train.stderr).toContain(`deq train --resume`)
  })

  it("the backend is one INFO line; why the others were skipped is at DEBUG", () => {
    const { DEQ_BACKEND: _, ...auto } = env
    const run = (...args: Array<string>) => spawnSync(process.execPath, [bin, ...args], { cwd: root, env: auto, encoding: "utf8" })
    // a command that chooses the backend, then fails at once
    const r = run("train", "--resume", path.join(tmp, "nothing-here"))
    const lines = r.stderr.split("\n").filter((l) => l.includes("backend"))
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/INFO .*effect-deq backend: \w+/)
    expect(r.stderr).not.toContain("Cannot find package")
    const debug = run("train", "--resume", path.join(tmp, "nothing-here"), "--log-level", "debug")
    expect(debug.stderr.split("\n").filter((l) => l.includes("DEBUG") && l.includes("backends skipped")).length).toBeLessThanOrEqual(1)
    if (lines[0]!.includes("skipped")) expect(debug.stderr).toContain("backends skipped:")
  })
})

describe("deq train", () => {
  it("rejects a config with an unknown key, naming the key, with a nonzero exit", () => {
    const file = path.join(tmp, "bad.json")
    fs.writeFileSync(file, JSON.stringify({ model: { _tag: "fc", hidden: 8, hiddn: 4 }, data: { name: "synthetic" } }))
    const r = deq("train", "--config", file, "--out", path.join(tmp, "bad"))
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain("ConfigError")
    expect(r.stderr).toContain("hiddn")
    expect(fs.existsSync(path.join(tmp, "bad", "last"))).toBe(false)
  })

  it("rejects an unknown preset, listing the valid ones", () => {
    const r = deq("train", "--preset", "no-such-preset")
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("unknown preset \"no-such-preset\"")
    expect(r.stderr).toContain("smoke")
  })

  it("--resume of a directory without a checkpoint fails and says so", () => {
    const r = deq("train", "--resume", path.join(tmp, "nothing-here"))
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("nothing to resume")
  })

  it("Ctrl-C saves a checkpoint and exits cleanly; --resume continues to the end", async () => {
    const out = path.join(tmp, "interrupted")
    const file = path.join(tmp, "long.json")
    fs.writeFileSync(file, JSON.stringify({
      model: { _tag: "fc", hidden: 16, inputShape: [14, 14, 1] },
      data: { name: "synthetic", height: 14, width: 14, trainSize: 256, testSize: 32 },
      solver: { _tag: "picard", maxIter: 4, tol: 0.001 },
      attack: { eps: 0.1, stepSize: 0.05, steps: 2 },
      eval: { subset: 32, batchSize: 32, steps: 0 },
      epochs: 12,
      batchSize: 16,
      seed: 3
    }))
    // the process group gets the signal, as a terminal's Ctrl-C does (bin/deq.js runs the command in its own
    // process, as `npm start` does)
    const child = spawn(process.execPath, [bin, "train", "--config", file, "--out", out], {
      cwd: root,
      env,
      detached: true
    })
    let stderr = ""
    child.stderr.on("data", (d) => (stderr += String(d)))
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
    const log = path.join(out, "events.jsonl")
    const deadline = Date.now() + 60_000
    while (Date.now() < deadline) {
      if (fs.existsSync(log) && fs.readFileSync(log, "utf8").split("\n").filter((l) => l.includes("\"Batch\"")).length >= 3) break
      await new Promise((r) => setTimeout(r, 100))
    }
    process.kill(-child.pid!, "SIGINT")
    const code = await exited
    expect(code).toBe(130)
    expect(stderr).toContain("interrupted: the last checkpoint is in")
    const events = fs.readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l))
    const saved = events.filter((e) => e._tag === "Interrupted")
    expect(saved).toHaveLength(1)
    // the checkpoint holds the position of the last finished batch
    const batches = events.filter((e) => e._tag === "Batch")
    expect(saved[0].step).toBe(batches.at(-1).step)
    const manifest = JSON.parse(fs.readFileSync(path.join(out, "last", "checkpoint.json"), "utf8"))
    expect(manifest.metadata.step).toBe(saved[0].step)
    expect(events.some((e) => e._tag === "Finished")).toBe(false)
    // resume with fewer epochs is a different config: the stored one is used when none is given
    const resumed = spawnSync(process.execPath, [bin, "train", "--resume", out], { cwd: root, env, encoding: "utf8", timeout: 170_000 })
    expect(resumed.status).toBe(0)
    const after = fs.readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l))
    const started = after.filter((e) => e._tag === "Started")
    expect(started).toHaveLength(2)
    expect(started[1].resumed).toBe(true)
    expect(started[1].step).toBe(saved[0].step)
    expect(after.at(-1)._tag).toBe("Finished")
  }, 240_000)
})

describe("the training progress display", () => {
  const started: TrainEvent = {
    _tag: "Started", epoch: 1, step: 0, batch: 0, epochs: 2, batchesPerEpoch: 10, totalSteps: 20, resumed: false,
    parameterCount: 1234, backend: "wasm", method: "pgd-at", readOut: "final", jacobian: "none", attack: "pgd"
  }
  const batch = (step: number): TrainEvent => ({
    _tag: "Batch", phase: "train", epoch: 1 + Math.floor((step - 1) / 10), step, batch: (step - 1) % 10, batches: 10,
    loss: 1.5, accuracy: 0.25, advAccuracy: 0.125, solverSteps: 8, residual: 1e-3, lr: 1e-3, gradNorm: 1, seconds: 0.1
  })

  it("on a TTY rewrites one line in place with the bar, ETA, loss and accuracy", () => {
    let t = 0
    const out: Array<string> = []
    const p = makeProgress({ isTTY: true, columns: 120, write: (s) => out.push(s) }, { now: () => t })
    p.onEvent(started)
    t = 5000
    p.onEvent(batch(5)) // 5 of 20 steps in 5 s: 15 s to go
    const line = out.at(-1)!
    expect(line.startsWith("\r\x1b[2K[")).toBe(true)
    expect(line).not.toContain("\n")
    expect(line).toContain("ETA 15s")
    expect(line).toContain("loss 1.5000 acc 25.0% adv 12.5%")
    expect(line).toContain(" 25% ")
    p.onEvent({ _tag: "Epoch", epoch: 1, step: 10, batches: 10, loss: 1.2, accuracy: 0.5, lr: 1e-3, seconds: 10 })
    // the bar is cleared before a full line is printed
    expect(out.at(-2)).toBe("\r\x1b[2K")
    expect(out.at(-1)).toMatch(/^epoch 1\/2 done in 10s: loss 1.2000 acc 50.0%/)
    p.close()
  })

  it("without a TTY logs a plain line at most every logEvery seconds", () => {
    let t = 0
    const out: Array<string> = []
    const p = makeProgress({ isTTY: false, write: (s) => out.push(s) }, { now: () => t, logEvery: 10 })
    p.onEvent(started)
    for (let step = 1; step <= 20; step++) {
      t = step * 1000
      p.onEvent(batch(step))
    }
    const lines = out.filter((l) => l.startsWith("epoch "))
    expect(lines).toHaveLength(2) // at 1 s and 11 s
    for (const l of out) {
      expect(l.endsWith("\n")).toBe(true)
      expect(l).not.toContain("\r")
    }
    expect(formatEta(3725)).toBe("1h02m")
    expect(formatEta(Number.NaN)).toBe("?")
  })
})

describe("the stage progress of eval and dynamics", () => {
  it("on a TTY: a line per stage, a bar with done/total and the stage's ETA, the stage's time at its end", () => {
    let t = 0
    const out: Array<string> = []
    const p = makeStageProgress({ isTTY: true, columns: 100, write: (s) => out.push(s) }, "eval", { now: () => t })
    p.stage("PGD-20 on 64 images")
    t = 4000
    p.tick(1, 4) // 1 of 4 batches in 4 s: 12 s to go
    expect(out.at(-1)!.startsWith("\r\x1b[2K[")).toBe(true)
    expect(out.at(-1)).toContain("eval [1] 1/4 batches  25% ETA 12s")
    t = 10_000
    p.stage("Square on 64 images")
    expect(out).toContain("eval [1] done in 10s\n")
    expect(out.at(-1)).toBe("eval [2] Square on 64 images (elapsed 10s)\n")
    t = 13_000
    p.close()
    expect(out.at(-1)).toBe("eval [2] done in 3s\n")
  })

  it("without a TTY: plain lines, a tick at most every logEvery seconds and at the end of a stage", () => {
    let t = 0
    const out: Array<string> = []
    const p = makeStageProgress({ isTTY: false, write: (s) => out.push(s) }, "dynamics", { now: () => t, logEvery: 10 })
    p.stage("8 states on 200 images")
    for (let i = 1; i <= 20; i++) {
      t = i * 1000
      p.tick(i, 20)
    }
    const ticks = out.filter((l) => l.includes("batches"))
    expect(ticks.map((l) => l.split(" ")[2])).toEqual(["1/20", "11/20", "20/20"])
    for (const l of out) expect(l.endsWith("\n") && !l.includes("\r")).toBe(true)
  })

  it("the evaluations of a stage are counted, each with its own ETA (Evaluation.BatchProgress)", () => {
    let t = 0
    const out: Array<string> = []
    const p = makeStageProgress({ isTTY: false, write: (s) => out.push(s) }, "eval", { now: () => t, logEvery: 100 })
    const ticker = evaluationTicker(p, () => t)
    ticker.stage("PGD-2 over 2 surrogates on 8 images")
    for (const evaluation of [0, 1]) {
      t = 10_000 * evaluation + 1000
      ticker.batch(0, 2) // an evaluation starts at 1 s (and 11 s)
      t += 2000
      ticker.batch(1, 2) // its first batch took 2 s: 2 s to go, whatever came before in the stage
      t += 2000
      ticker.batch(2, 2)
    }
    ticker.stage("Square on 8 images")
    ticker.batch(0, 1)
    t += 500
    ticker.batch(1, 1)
    expect(out.filter((l) => l.includes("batches"))).toEqual([
      "eval [1] 1/2 batches of evaluation 1  50% ETA 2s\n", // the stage's first tick, then at most every logEvery
      "eval [1] 2/2 batches of evaluation 1 100% ETA 0s\n",
      "eval [1] 2/2 batches of evaluation 2 100% ETA 0s\n",
      "eval [2] 1/1 batches of evaluation 1 100% ETA 0s\n"
    ])
    const progress = makeStageProgress({ isTTY: true, columns: 120, write: (s) => out.push(s) }, "eval", { now: () => t })
    const tty = evaluationTicker(progress, () => t)
    tty.stage("PGD")
    t += 1000
    tty.batch(0, 4)
    t += 3000
    tty.batch(1, 4)
    expect(out.at(-1)).toContain("eval [1] 1/4 batches of evaluation 1  25% ETA 9s")
  })
})

describe("the output directory of a command", () => {
  const options = (out: string | undefined, fallback: string, force = false) =>
    ({ command: "deq eval", out, fallback, force, holds: holdsReport, what: "a report" })
  it("uses a free directory, numbers a taken default, refuses a taken --out unless --force", () => {
    const base = path.join(tmp, "outputs", "eval")
    expect(Effect.runSync(chooseOut(options(undefined, base)))).toBe(base)
    fs.mkdirSync(base, { recursive: true })
    fs.writeFileSync(path.join(base, "report.md"), "old")
    expect(Effect.runSync(chooseOut(options(undefined, base)))).toBe(`${base}-2`)
    fs.mkdirSync(`${base}-2`)
    fs.writeFileSync(path.join(`${base}-2`, "notes.txt"), "someone's file")
    expect(Effect.runSync(chooseOut(options(undefined, base)))).toBe(`${base}-3`)
    const refused = Effect.runSyncExit(chooseOut(options(base, base)))
    expect(Exit.isFailure(refused)).toBe(true)
    expect(String(refused)).toContain("--out")
    expect(Effect.runSync(chooseOut(options(base, base, true)))).toBe(base)
    expect(Effect.runSync(chooseOut(options(undefined, base, true)))).toBe(base)
    expect(fs.readFileSync(path.join(base, "report.md"), "utf8")).toBe("old")
  })
})

describe("deq bench and deq presets", () => {
  it("bench --quick prints every section and the PyTorch peer beside ours, or why it was skipped", () => {
    const out = path.join(tmp, "bench")
    const r = deq("bench", "--quick", "--out", out)
    expect(r.code).toBe(0)
    for (const section of ["## Fixed-point solvers and gradients", "## Attack and training steps", "## PyTorch peer"]) {
      expect(r.stdout).toContain(section)
    }
    expect(r.stdout).toContain("training step (PGD-AT")
    const torch = spawnSync("/usr/bin/python3", ["-c", "import torch"]).status === 0
    if (torch) expect(r.stdout).toMatch(/\| fc \(B 16, hidden 64\) \| one f evaluation \| [\d.]+ \| [\d.]+ \| [\d.]+ \|/)
    else expect(r.stdout).toContain("PyTorch peer skipped")
    const json = JSON.parse(fs.readFileSync(path.join(out, "bench.json"), "utf8"))
    expect(json.steps.length).toBeGreaterThanOrEqual(2)
    expect(json.peer._tag).toBe(torch ? "Ran" : "Skipped")
  })

  it("presets lists every shipped preset", () => {
    const r = deq("presets")
    expect(r.code).toBe(0)
    for (const name of ["smoke", "mnist-fc-pgdat", "mnist-fc-pgdat-ris", "mnist-conv-trades"]) expect(r.stdout).toContain(name)
  })
})
