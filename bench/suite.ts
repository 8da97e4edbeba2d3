/**
 * The benchmark suite behind `npm run bench` and `deq bench`:
 *
 * - PyTorch peer: the project's FC and conv DEQs (bench/workloads.ts: f, a Picard solve, solve + implicit
 *   backward, a PGD attack step, a PGD-AT + random-intermediate-states training step) against bench/peer.py on the
 *   same weights, batch and settings, with 1 and 2 torch threads, rounds alternating (bench/compare.ts); the peer
 *   is first checked to compute the same values. `ratios` = ours / torch with 2 threads.
 * - Scaling: the conv training step over batch 16 / 64 / 256 and channels 8 / 16 / 32, ours and torch (2 threads),
 *   with a plot (scaling.svg).
 * - Fixed-point solvers and gradients (bench/fixedPoint.ts) and the conv-gradient kernels (bench/convGrad.ts).
 *
 * Which speed levers were on is read from bench/levers.ts; `levers: "all"` measures ours once per combination of
 * the switchable levers (one column each). Without torch the peer columns are replaced by one line saying why.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import * as Models from "../src/Models.ts"
import * as Report from "../src/Report.ts"
import { tf } from "../src/Tensor.ts"
import { type BenchModel, compare, type CompareRow, scaling, type ScalingRow } from "./compare.ts"
import { convGradTable, type ConvGradRow, runConvGradBench } from "./convGrad.ts"
import { runFixedPointBench, type FixedPointBenchResult } from "./fixedPoint.ts"
import { combinations, describeLevers, resetLevers } from "./levers.ts"
import { type Peer, peerWaitPolicy, python, startPeer } from "./peer.ts"
import { defaultSpec, type StepSpec, type WorkloadName, workloadNames } from "./workloads.ts"

export { workloadNames }

export { glibcTunables, torchAvailable } from "./peer.ts"

/** The parts of the suite. */
export const sections = ["peer", "scaling", "fixed-point", "conv-grad"] as const

/** One part of the suite. */
export type Section = typeof sections[number]

/** Options of {@link runBench}. */
export interface BenchOptions {
  /** small sizes and few repetitions (seconds); for tests and smoke runs; no scaling table */
  readonly quick?: boolean
  /** run the PyTorch peer when torch is importable (default true) */
  readonly peer?: boolean
  /** "all": ours once per combination of the switchable levers; "current" (default): as configured */
  readonly levers?: "current" | "all"
  /** the parts to run (default: all) */
  readonly sections?: ReadonlyArray<Section>
  /** the models of the comparison (default: both) */
  readonly models?: ReadonlyArray<"fc" | "conv">
  /** the workloads of the comparison (default: all) */
  readonly workloads?: ReadonlyArray<WorkloadName>
  /** the command line that ran the suite, for the report */
  readonly command?: string
  /** told what is being measured */
  readonly onProgress?: (message: string) => void
}

/** One step measurement of ours (the attack and training rows of the comparison). */
export interface StepRow {
  readonly workload: string
  readonly model: string
  readonly batch: number
  readonly medianMs: number
  readonly runs: number
}

/** What the PyTorch peer did: versions and the value check, or why it was skipped. */
export type PeerResult =
  | {
    readonly _tag: "Ran"
    readonly torch: string
    readonly python: string
    /** per model kind, the largest relative difference of each checked value (bench/peer.ts compareValues) */
    readonly check: Readonly<Record<string, Readonly<Record<string, number>>>>
  }
  | { readonly _tag: "Skipped"; readonly reason: string }

/** Everything the suite measured, and its Markdown report. */
export interface BenchResult {
  readonly command: string
  readonly backend: string
  readonly quick: boolean
  readonly machine: string
  readonly environment: {
    readonly versions: Readonly<Record<string, string>>
    readonly cpus: number
    readonly cpuModel: string
    readonly memoryGiB: number
    readonly os: string
    /** 1, 5 and 15 minute load averages at the start and the end of the run */
    readonly loadStart: ReadonlyArray<number>
    readonly loadEnd: ReadonlyArray<number>
    readonly glibcTunables: string | undefined
    /** OpenMP's wait policy of the PyTorch peer (bench/peer.ts) */
    readonly peerOmpWaitPolicy: string
  }
  readonly levers: Readonly<Record<string, string>>
  readonly spec: StepSpec
  readonly comparison: ReadonlyArray<CompareRow>
  /** "<fc|conv>/<workload>": ours (the last column: every switchable lever on with `levers: "all"`) / torch 2 threads */
  readonly ratios: Readonly<Record<string, number>>
  /** with `levers: "all"`: the same per column */
  readonly ratiosByColumn: Readonly<Record<string, Readonly<Record<string, number>>>>
  readonly steps: ReadonlyArray<StepRow>
  readonly scaling: ReadonlyArray<ScalingRow>
  readonly fixedPoint?: FixedPointBenchResult
  readonly convGrad: ReadonlyArray<ConvGradRow>
  readonly peer: PeerResult
  readonly seconds: number
  readonly markdown: string
}

const fmt = (x: number | undefined, digits = 1): string =>
  x === undefined || !Number.isFinite(x) ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(digits)

const versionOf = (pkg: string): string => {
  try {
    const file = path.join(process.cwd(), "node_modules", pkg, "package.json")
    return (JSON.parse(fs.readFileSync(file, "utf8")) as { version: string }).version
  } catch {
    return "unknown"
  }
}

const load = (): Array<number> => os.loadavg().map((x) => Math.round(x * 100) / 100)

const modelsOf = (quick: boolean, skipConv: boolean): Array<BenchModel> => {
  const fc: BenchModel = quick ?
    { name: "fc (B 16, hidden 64)", kind: "fc", batch: 16, config: new Models.FcConfig({ hidden: 64 }) } :
    { name: "fc (B 64, hidden 256)", kind: "fc", batch: 64, config: new Models.FcConfig({ hidden: 256 }) }
  const conv: BenchModel = quick ?
    { name: "conv (B 16, 4 ch, 14x14)", kind: "conv", batch: 16, config: new Models.ConvConfig({ channels: 4, groups: 2 }) } :
    { name: "conv (B 64, 16 ch, 14x14)", kind: "conv", batch: 64, config: new Models.ConvConfig({ channels: 16, groups: 4 }) }
  return skipConv ? [fc] : [fc, conv]
}

const roundsOf = (quick: boolean) => ({
  rounds: (w: WorkloadName) => (quick ? 1 : w === "train-step" ? 3 : w === "f" || w === "solve" ? 7 : 5),
  warmup: (w: WorkloadName) => (quick || w === "train-step" || w === "implicit" ? 1 : 2)
})

const comparisonTable = (rows: ReadonlyArray<CompareRow>, columns: ReadonlyArray<string>, peer: PeerResult): string => {
  const ran = peer._tag === "Ran"
  // the ratio and CPU columns are of the last column: every switchable lever on with --levers all
  const last = columns[columns.length - 1]!
  const name = (c: string) => (c === "ours" ? "effect-deq" : c)
  const headers = ["model", "workload", ...columns.map((c) => `${name(c)} (ms)`), `${name(last)} CPU (ms)`]
  if (ran) headers.push("torch 1 thread (ms)", "torch 2 threads (ms)", `ratio (${name(last)} / torch 2 threads)`)
  return Report.table(
    headers,
    rows.map((r) => {
      const ours = columns.map((c) => r.ours[c])
      const mine = r.ours[last]
      const cells = [r.model, r.label, ...ours.map((o) => fmt(o)), fmt(r.oursCpu[last])]
      if (ran) cells.push(fmt(r.torch1), fmt(r.torch2), r.torch2 !== undefined && mine !== undefined ? `${(mine / r.torch2).toFixed(2)}x` : "-")
      return cells
    })
  )
}

const scalingTable = (rows: ReadonlyArray<ScalingRow>): string => {
  const batches = [...new Set(rows.map((r) => r.batch))]
  const channels = [...new Set(rows.map((r) => r.channels))]
  const at = (b: number, c: number) => rows.find((r) => r.batch === b && r.channels === c)
  return Report.table(
    ["batch", ...channels.flatMap((c) => [`${c} ch: ours (ms)`, `${c} ch: torch 2 thr. (ms)`, `${c} ch: ratio`])],
    batches.map((b) => [
      b,
      ...channels.flatMap((c) => {
        const r = at(b, c)
        return [fmt(r?.ours), fmt(r?.torch2), r?.torch2 !== undefined ? `${(r.ours / r.torch2).toFixed(2)}x` : "-"]
      })
    ])
  )
}

/** The scaling plot: ms per training step against the batch, one line per channel count and side. */
export const scalingPlot = (rows: ReadonlyArray<ScalingRow>): Report.LinePlot =>
  Report.linePlot({
    title: "Conv DEQ training step (PGD-AT 3 steps + RIS), ms per step",
    x: "batch",
    y: "ms per step",
    yScale: "log",
    series: [...new Set(rows.map((r) => r.channels))].flatMap((c) => {
      const mine = rows.filter((r) => r.channels === c)
      return [
        { name: `effect-deq, ${c} ch`, points: mine.map((r) => [r.batch, r.ours] as const) },
        { name: `torch 2 threads, ${c} ch`, points: mine.flatMap((r) => (r.torch2 === undefined ? [] : [[r.batch, r.torch2] as const])) }
      ].filter((s) => s.points.length > 0)
    })
  })

/**
 * Runs the suite on the current tfjs backend (activate one first, e.g. `useBackend("wasm")`).
 */
export const runBench = async (options: BenchOptions = {}): Promise<BenchResult> => {
  const quick = options.quick === true
  const log = options.onProgress ?? (() => undefined)
  const want = new Set<Section>(options.sections ?? sections)
  const started = performance.now()
  const loadStart = load()
  const backend = tf.getBackend()
  const skipConv = backend === "cpu"
  // quick: one training step per call (a smoke run, not a measurement)
  const spec: StepSpec = quick ? { ...defaultSpec, trainStates: [4] } : defaultSpec
  const levers = await describeLevers()
  const combos = await combinations(options.levers === "all")
  const columns = combos.map((c) => c.label)

  let peerResult: PeerResult = { _tag: "Skipped", reason: "disabled (--no-peer)" }
  let peer: Peer | undefined
  if (options.peer !== false && (want.has("peer") || want.has("scaling"))) {
    log("starting the PyTorch peer")
    const s = await startPeer()
    if (s._tag === "Ready") peer = s.peer
    else peerResult = { _tag: "Skipped", reason: s.reason }
  }
  let comparison: Array<CompareRow> = []
  let scalingRows: Array<ScalingRow> = []
  try {
    if (want.has("peer")) {
      const out = await compare(modelsOf(quick, skipConv).filter((m) => options.models?.includes(m.kind) ?? true), spec, combos, peer, roundsOf(quick), log, options.workloads)
      comparison = out.rows
      if (peer !== undefined) peerResult = { _tag: "Ran", torch: peer.torch, python: peer.python, check: out.check }
    }
    if (want.has("scaling") && !quick && !skipConv) {
      scalingRows = await scaling({ ...new Models.ConvConfig({}), groups: 4 }, [16, 64, 256], [8, 16, 32], spec, peer, 1, log)
    }
  } finally {
    await resetLevers()
    await peer?.close()
  }
  let fixedPoint: FixedPointBenchResult | undefined
  if (want.has("fixed-point")) {
    log(`fixed-point solvers (${quick ? "quick" : "full"} sizes)`)
    fixedPoint = runFixedPointBench(
      quick ?
        { batch: 16, channels: 8, size: 14, hidden: 64, convIterations: 8, fcIterations: 10, convRuns: 2, fcRuns: 3, skipConv } :
        { batch: 64, channels: 32, size: 28, hidden: 256, convIterations: 20, fcIterations: 30, convRuns: 5, fcRuns: 15, skipConv }
    )
  }
  let convGrad: ReadonlyArray<ConvGradRow> = []
  if (want.has("conv-grad") && backend === "wasm") {
    log("conv-gradient kernels")
    convGrad = await runConvGradBench(quick ? { batch: 8, channels: 8, size: 14, runs: 3, cpuRuns: 1, cpuBatch: 2 } : {})
  }

  const ratiosOf = (column: string) =>
    Object.fromEntries(comparison.flatMap((r) => {
      const o = r.ours[column]
      return o !== undefined && r.torch2 !== undefined ? [[`${r.kind}/${r.workload}`, Math.round((o / r.torch2) * 1000) / 1000]] : []
    }))
  const primary = columns[columns.length - 1]!
  const ratios = ratiosOf(primary)
  const ratiosByColumn = columns.length > 1 ? Object.fromEntries(columns.map((c) => [c, ratiosOf(c)])) : {}
  const steps: Array<StepRow> = comparison
    .filter((r) => r.workload === "attack-step" || r.workload === "train-step")
    .map((r) => ({ workload: r.label, model: r.model, batch: r.batch, medianMs: r.ours[primary]!, runs: r.rounds }))
  const seconds = (performance.now() - started) / 1000
  const loadEnd = load()
  const environment = {
    versions: {
      node: process.version,
      "@tensorflow/tfjs": versionOf("@tensorflow/tfjs"),
      "@tensorflow/tfjs-backend-wasm": versionOf("@tensorflow/tfjs-backend-wasm"),
      effect: versionOf("effect"),
      ...(peerResult._tag === "Ran" ? { torch: peerResult.torch, python: peerResult.python } : {})
    },
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? "unknown CPU",
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    loadStart,
    loadEnd,
    glibcTunables: process.env["GLIBC_TUNABLES"],
    peerOmpWaitPolicy: peerWaitPolicy()
  }
  const machine = Report.machine()
  const leverLine = Object.entries(levers).map(([k, v]) => `${k}: ${v}`).join(", ")
  const checkLine = peerResult._tag === "Ran" ?
    "Peer check (same weights, batch of 8, before any update): largest relative difference " +
      Object.entries(peerResult.check).map(([kind, d]) =>
        `${kind}: ${Object.entries(d).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(", ")}`
      ).join("; ") + "." :
    `PyTorch peer skipped: ${peerResult.reason}.`
  const markdown = [
    `# effect-deq benchmarks${quick ? " (quick sizes)" : ""}`,
    "",
    `Backend ${backend}; ${machine}; load average ${loadStart.join(" ")} at the start, ${loadEnd.join(" ")} at the end; ` +
    `${seconds.toFixed(0)} s in total. Levers: ${leverLine}. Command: \`${options.command ?? "npm run bench"}\`.`,
    `Versions: ${Object.entries(environment.versions).map(([k, v]) => `${k} ${v}`).join(", ")}.`,
    "",
    "## PyTorch peer",
    "",
    checkLine,
    "",
    ...(want.has("peer") ?
      [
        comparisonTable(comparison, columns, peerResult),
        "",
        `Same models, weights, batch and settings on both sides: budget N = ${spec.budget} Picard steps (tol 0), the tail ` +
        `f + ${spec.tailK} damped steps (lambda ${spec.tailLambda}), eps ${spec.eps}, step ${spec.alpha}, Adam lr ${spec.lr}. ` +
        `Medians over rounds that alternate ours, torch 1 thread, torch 2 threads (${quick ? "1 round" : "3-7 rounds"} after a warm-up). ` +
        `PyTorch ${peerResult._tag === "Ran" ? peerResult.torch : "-"} on CPU (${python}, GLIBC_TUNABLES set, ` +
        `OMP_WAIT_POLICY=${peerWaitPolicy()}); wasm here is ` +
        "single-threaded. Torch with 2 threads suffers most when other processes share the 2 cores."
      ] :
      ["not run"]),
    "",
    "## Attack and training steps",
    "",
    Report.table(["workload", "model", "batch", "median ms", "rounds"], steps.map((s) => [s.workload, s.model, s.batch, fmt(s.medianMs), s.runs])),
    "",
    "## Scaling",
    "",
    scalingRows.length > 0 ?
      [
        "Conv DEQ training step (as above), ms per step, one sample after a warm-up, alternating ours and torch.",
        "",
        scalingTable(scalingRows),
        "",
        Report.image("scaling.svg", "training step time against batch")
      ].join("\n") :
      quick ? "skipped with --quick (run `npm run bench`)" : "not run",
    "",
    "## Fixed-point solvers and gradients",
    "",
    fixedPoint?.markdown ?? "not run",
    "",
    "## Conv-gradient kernels",
    "",
    convGrad.length > 0 ? convGradTable(convGrad) : "not run (wasm only)",
    ""
  ].join("\n")
  return {
    command: options.command ?? "npm run bench",
    backend,
    quick,
    machine,
    environment,
    levers,
    spec,
    comparison,
    ratios,
    ratiosByColumn,
    steps,
    scaling: scalingRows,
    ...(fixedPoint !== undefined ? { fixedPoint } : {}),
    convGrad,
    peer: peerResult,
    seconds,
    markdown
  }
}

/** Writes `<out>/bench.md`, `<out>/bench.json` and, when the scaling ran, `<out>/scaling.svg`. */
export const writeBench = (result: BenchResult, out: string): Effect.Effect<void, Report.ReportError> => {
  const { markdown, ...json } = result
  return Effect.all([
    Report.writeText(path.join(out, "bench.md"), markdown),
    Report.writeJson(path.join(out, "bench.json"), json),
    ...(result.scaling.length > 0 ? [Report.writeSvg(path.join(out, "scaling.svg"), scalingPlot(result.scaling))] : [])
  ], { discard: true })
}
