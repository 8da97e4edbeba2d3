/**
 * The benchmark suite behind `npm run bench` and `deq bench`: the fixed-point and conv-gradient benchmarks
 * (bench/fixedPoint.ts, bench/convGrad.ts), an attack step and a training step on real DEQ models, and the
 * PyTorch peer (bench/peer.py) on the same cells when `/usr/bin/python3 -c "import torch"` works.
 *
 * - attack step: one PGD step on a batch: the forward solve (8 Picard steps), the gradient w.r.t. x through the
 *   intermediate-state unroll (f, then 5 damped steps with lambda 0.5: the paper's attack gradient), sign,
 *   projection.
 * - training step: one PGD-AT step with random intermediate states: a 3-step PGD inner maximisation (each step as
 *   above), then the parameter gradient of the cross-entropy at a random state n ~ U{1..8} through the same tail,
 *   and an Adam update.
 *
 * Median wall times after a warm-up. The peer runs in a child process with the GLIBC_TUNABLES of package.json's
 * bench script (torch timings are unstable without them on these VMs).
 */
import { spawnSync } from "node:child_process"
import { cpus, loadavg } from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import * as Dynamics from "../src/Dynamics.ts"
import { makePicardSync } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import * as Report from "../src/Report.ts"
import { stream, tf } from "../src/Tensor.ts"
import { convGradTable, runConvGradBench } from "./convGrad.ts"
import { runFixedPointBench, type FixedPointBenchResult } from "./fixedPoint.ts"
import { timeIt } from "./timing.ts"

/** The GLIBC_TUNABLES the peer (and `npm run bench` / `npm start`) run with. */
export const glibcTunables = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"

/** Options of {@link runBench}. */
export interface BenchOptions {
  /** small sizes and few repetitions (about a minute); for tests and smoke runs */
  readonly quick?: boolean
  /** run the PyTorch peer when torch is importable (default true) */
  readonly peer?: boolean
  /** skip the conv-gradient kernel benchmark */
  readonly skipConvGrad?: boolean
  /** told what is being measured */
  readonly onProgress?: (message: string) => void
}

/** One step measurement of a DEQ model. */
export interface StepRow {
  readonly workload: string
  readonly model: string
  readonly batch: number
  readonly medianMs: number
  readonly runs: number
}

/** One peer row (milliseconds; see bench/peer.py). */
export interface PeerRow {
  readonly cell: string
  readonly threads: number
  readonly iterations: number
  readonly fMs: number
  readonly picardMs: number
  readonly andersonMs: number
  readonly implicitMs: number
  readonly phantomMs: number
}

/** What the PyTorch peer did: its rows, or why it was skipped. */
export type PeerResult =
  | { readonly _tag: "Ran"; readonly torch: string; readonly rows: ReadonlyArray<PeerRow>; readonly seconds: number }
  | { readonly _tag: "Skipped"; readonly reason: string }

/** Everything the suite measured, and its Markdown report. */
export interface BenchResult {
  readonly backend: string
  readonly quick: boolean
  readonly machine: string
  readonly fixedPoint: FixedPointBenchResult
  readonly convGrad: ReadonlyArray<import("./convGrad.ts").ConvGradRow>
  readonly steps: ReadonlyArray<StepRow>
  readonly peer: PeerResult
  readonly seconds: number
  readonly markdown: string
}

const peerScript = path.join(path.dirname(fileURLToPath(import.meta.url)), "peer.py")
const python = "/usr/bin/python3"

/** Whether `/usr/bin/python3 -c "import torch"` works here, with the reason when it does not. */
export const torchAvailable = (): { readonly ok: boolean; readonly reason: string } => {
  const r = spawnSync(python, ["-c", "import torch"], { encoding: "utf8", timeout: 60_000 })
  if (r.error !== undefined) return { ok: false, reason: `${python} cannot run: ${r.error.message}` }
  if (r.status !== 0) return { ok: false, reason: `torch is not importable: ${(r.stderr ?? "").trim().split("\n").pop()}` }
  return { ok: true, reason: "" }
}

/** Runs bench/peer.py with the same cell sizes; never throws (a failure is a Skipped result with the reason). */
export const runPeer = (sizes: {
  readonly batch: number
  readonly channels: number
  readonly size: number
  readonly hidden: number
  readonly convIterations: number
  readonly fcIterations: number
  readonly quick: boolean
  readonly skipConv?: boolean
}): PeerResult => {
  const available = torchAvailable()
  if (!available.ok) return { _tag: "Skipped", reason: available.reason }
  const args = [
    peerScript,
    "--threads",
    "1,2",
    "--batch",
    String(sizes.batch),
    "--channels",
    String(sizes.channels),
    "--size",
    String(sizes.size),
    "--hidden",
    String(sizes.hidden),
    "--conv-iterations",
    String(sizes.convIterations),
    "--fc-iterations",
    String(sizes.fcIterations),
    ...(sizes.quick ? ["--quick"] : []),
    ...(sizes.skipConv === true ? ["--skip-conv"] : [])
  ]
  const start = performance.now()
  const r = spawnSync(python, args, {
    encoding: "utf8",
    timeout: 15 * 60_000,
    env: { ...process.env, GLIBC_TUNABLES: glibcTunables }
  })
  const seconds = (performance.now() - start) / 1000
  if (r.error !== undefined) return { _tag: "Skipped", reason: `the peer failed to run: ${r.error.message}` }
  if (r.status !== 0) return { _tag: "Skipped", reason: `the peer exited with ${r.status}: ${(r.stderr ?? "").trim().split("\n").pop()}` }
  try {
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as { torch: string; rows: Array<PeerRow> }
    return { _tag: "Ran", torch: out.torch, rows: out.rows, seconds }
  } catch (e) {
    return { _tag: "Skipped", reason: `the peer printed no JSON: ${String(e)}` }
  }
}

/** Median ms of one PGD step and one PGD-AT + random-intermediate-states training step on a built DEQ model. */
const measureSteps = (model: Models.Model, name: string, batch: number, runs: number): Array<StepRow> => {
  const deq = Dynamics.makeWith(model, makePicardSync({ maxIter: 8, tol: 0 }), { backward: Dynamics.paperTail })
  const [h, w, c] = model.config.inputShape
  const x = tf.randomUniform([batch, h, w, c], 0, 1, "float32", 5) as tf.Tensor4D
  const y = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % model.classes), "int32")
  const onehot = tf.oneHot(y, model.classes)
  const eps = 0.1, alpha = 0.025
  const state8 = Dynamics.readOut.state(8)
  const pgdStep = (xAdv: tf.Tensor4D): tf.Tensor4D =>
    tf.tidy(() => {
      const g = tf.grad((xi: tf.Tensor) => tf.losses.softmaxCrossEntropy(onehot, Dynamics.logits(deq, xi as tf.Tensor4D, state8)))(xAdv)
      const moved = tf.add(xAdv, tf.mul(tf.sign(g), alpha))
      return tf.clipByValue(tf.minimum(tf.maximum(moved, tf.sub(x, eps)), tf.add(x, eps)), 0, 1) as tf.Tensor4D
    })
  const optimizer = tf.train.adam(1e-3)
  const vars = model.params.map((p) => p.variable)
  const rng = stream(7)
  const trainStep = () => {
    let xAdv = tf.clone(x)
    for (let i = 0; i < 3; i++) {
      const next = pgdStep(xAdv)
      xAdv.dispose()
      xAdv = next
    }
    const cost = optimizer.minimize(
      () => tf.losses.softmaxCrossEntropy(onehot, Dynamics.logits(deq, xAdv, Dynamics.readOut.randomState(8), { stream: rng })) as tf.Scalar,
      true,
      vars
    )
    cost?.dispose()
    xAdv.dispose()
  }
  try {
    const attackMs = timeIt(() => pgdStep(x).dispose(), 2, runs)
    const trainMs = timeIt(trainStep, 1, Math.max(1, Math.ceil(runs / 2)))
    return [
      { workload: "attack step (PGD, 8 Picard steps + unroll-5 gradient)", model: name, batch, medianMs: attackMs, runs },
      {
        workload: "training step (PGD-AT 3 steps + RIS, Adam)",
        model: name,
        batch,
        medianMs: trainMs,
        runs: Math.max(1, Math.ceil(runs / 2))
      }
    ]
  } finally {
    optimizer.dispose()
    tf.dispose([x, y, onehot])
  }
}

const fmt = (x: number | undefined, digits = 1): string => (x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(digits))

const peerTable = (fp: FixedPointBenchResult, peer: PeerResult): string => {
  if (peer._tag === "Skipped") return `PyTorch peer skipped: ${peer.reason}.`
  const ours = (cell: string, what: string): number | undefined => {
    switch (what) {
      case "f":
        return fp.fMs[cell]
      case "picard":
        return fp.solvers.find((s) => s.cell === cell && s.solver === "picard")?.solveMs
      case "anderson":
        return fp.solvers.find((s) => s.cell === cell && s.solver === "anderson m=5")?.solveMs
      case "implicit":
        return fp.gradients.find((g) => g.cell === cell && g.wrt === "weight" && g.mode.startsWith("implicit"))?.totalMs
      case "phantom":
        return fp.gradients.find((g) => g.cell === cell && g.wrt === "weight" && g.mode.startsWith("phantom"))?.totalMs
    }
    return undefined
  }
  const torch = (cell: string, threads: number) => peer.rows.find((r) => r.cell === cell && r.threads === threads)
  const cells = [...new Set(peer.rows.map((r) => r.cell))]
  const lines = [
    `PyTorch ${peer.torch} on CPU (${python}, GLIBC_TUNABLES set), same cells and iteration counts, run in the same ` +
    `process tree right after ours (${fmt(peer.seconds, 0)} s). ratio = ours / the faster torch column. Torch with 2 ` +
    "threads suffers most when other processes share the 2 cores (its worker threads spin).",
    ""
  ]
  const rows: Array<ReadonlyArray<string>> = []
  const workloads: ReadonlyArray<readonly [string, string, keyof PeerRow]> = [
    ["f", "one f evaluation", "fMs"],
    ["picard", "Picard solve", "picardMs"],
    ["anderson", "Anderson (m=5) solve", "andersonMs"],
    ["implicit", "Anderson solve + implicit backward (weight)", "implicitMs"],
    ["phantom", "Anderson solve + phantom backward k=5 (weight)", "phantomMs"]
  ]
  for (const cell of cells) {
    for (const [key, label, field] of workloads) {
      const t1 = torch(cell, 1)?.[field] as number | undefined
      const t2 = torch(cell, 2)?.[field] as number | undefined
      const o = ours(cell, key)
      const iterations = torch(cell, 1)?.iterations
      rows.push([
        cell,
        `${label}${key === "f" ? "" : ` (${iterations} it.)`}`,
        fmt(o),
        fmt(t1),
        fmt(t2),
        o !== undefined && t1 !== undefined && t2 !== undefined ? `${fmt(o / Math.min(t1, t2))}x` : "-"
      ])
    }
  }
  lines.push(
    Report.table(["cell", "workload", "effect-deq (ms)", "torch 1 thread (ms)", "torch 2 threads (ms)", "ratio"], rows),
    "",
    "Notes: the peer's implicit backward runs 20 Picard adjoint iterations through autograd VJPs; ours runs Anderson " +
      "adjoint iterations to tol 1e-6 (at most 20). wasm here is single-threaded."
  )
  return lines.join("\n")
}

/**
 * Runs the whole suite on the current tfjs backend (activate one first, e.g. `useBackend("wasm")`).
 */
export const runBench = async (options: BenchOptions = {}): Promise<BenchResult> => {
  const quick = options.quick === true
  const log = options.onProgress ?? (() => undefined)
  const started = performance.now()
  const sizes = quick
    ? { batch: 16, channels: 8, size: 14, hidden: 64, convIterations: 8, fcIterations: 10, convRuns: 2, fcRuns: 3 }
    : { batch: 64, channels: 32, size: 28, hidden: 256, convIterations: 20, fcIterations: 30, convRuns: 5, fcRuns: 15 }
  const backend = tf.getBackend()
  const skipConv = backend === "cpu"
  log(`fixed-point solvers (${quick ? "quick" : "full"} sizes)`)
  const fixedPoint = runFixedPointBench({ ...sizes, skipConv })
  let convGrad: ReadonlyArray<import("./convGrad.ts").ConvGradRow> = []
  if (options.skipConvGrad !== true && backend === "wasm") {
    log("conv-gradient kernels")
    convGrad = await runConvGradBench(quick ? { batch: 8, channels: 8, size: 14, runs: 3, cpuRuns: 1, cpuBatch: 2 } : {})
  }
  log("attack and training steps")
  const steps: Array<StepRow> = []
  const stepBatch = quick ? 16 : 64
  const stepRuns = quick ? 2 : 5
  {
    const models: Array<readonly [string, Models.ModelConfig]> = [
      ["fc hidden " + (quick ? 64 : 256), new Models.FcConfig({ hidden: quick ? 64 : 256 })],
      ...(skipConv ? [] : [["conv " + (quick ? 4 : 16) + " ch (14x14)", new Models.ConvConfig({ channels: quick ? 4 : 16, groups: 4 })] as const])
    ]
    for (const [name, config] of models) {
      Effect.runSync(Effect.scoped(Effect.gen(function*() {
        const model = yield* Models.build(config, { seed: 1 })
        steps.push(...measureSteps(model, name, stepBatch, stepRuns))
      })))
    }
  }
  let peer: PeerResult
  if (options.peer === false) peer = { _tag: "Skipped", reason: "disabled (--no-peer)" }
  else {
    log("PyTorch peer")
    peer = runPeer({ ...sizes, quick, skipConv })
  }
  const seconds = (performance.now() - started) / 1000
  const machine = `${cpus().length} x ${cpus()[0]?.model ?? "unknown CPU"}, Node ${process.version}, load ${
    loadavg().map((x) => x.toFixed(1)).join(" ")
  }`
  const markdown = [
    `# effect-deq benchmarks${quick ? " (quick sizes)" : ""}`,
    "",
    `Backend ${backend}; ${machine}; ${seconds.toFixed(0)} s in total.`,
    "",
    "## Fixed-point solvers and gradients",
    "",
    fixedPoint.markdown,
    "",
    "## Conv-gradient kernels",
    "",
    convGrad.length > 0 ? convGradTable(convGrad) : "skipped (wasm only)",
    "",
    "## Attack and training steps",
    "",
    Report.table(["workload", "model", "batch", "median ms", "runs"], steps.map((s) => [s.workload, s.model, s.batch, fmt(s.medianMs), s.runs])),
    "",
    "## PyTorch peer",
    "",
    peerTable(fixedPoint, peer),
    ""
  ].join("\n")
  return { backend, quick, machine, fixedPoint, convGrad, steps, peer, seconds, markdown }
}
