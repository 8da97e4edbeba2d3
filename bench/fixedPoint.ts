/**
 * Fixed-point solvers: cost of one solver iteration relative to one evaluation of f, and forward + implicit
 * backward time, on a conv DEQ cell and a fully connected one.
 *
 * Cells (implemented here, injection precomputed once per solve as a DEQ does):
 * - conv: z' = relu(groupnorm(conv3x3(z) + u)), batch 64, 32 channels, 28x28, 8 groups; GroupNorm from per-channel
 *   sums (matMul with ones), broadcast only as [B, 1, 1, C] (docs/performance.md, "GroupNorm").
 * - fc: z' = tanh(z W + u), batch 64, hidden 256.
 *
 * Per solver: median wall time of a solve with tol 0 and K iterations (so every solver does K + 1 f evaluations),
 * after a warm-up; "per iteration" = (solve - f) / K, "overhead" = per iteration / f - 1. wasm kernels are
 * synchronous, so nothing is read back inside timed regions.
 *
 * Run: `npx tsx bench/fixedPoint.ts`
 */
import { cpus, loadavg } from "node:os"
import { pathToFileURL } from "node:url"
import * as FP from "../src/FixedPoint.ts"
import * as Report from "../src/Report.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import { median, timeIt } from "./timing.ts"

/** One solver row of a cell. */
export interface SolverRow {
  readonly cell: string
  readonly solver: string
  readonly iterations: number
  readonly solveMs: number
  readonly perIterationMs: number
  /** per-iteration cost over one f call, minus 1 */
  readonly overhead: number
}

/** One gradient row of a cell. */
export interface GradientRow {
  readonly cell: string
  readonly mode: string
  readonly wrt: string
  readonly forwardMs: number
  readonly totalMs: number | undefined
  /** forward + backward minus a forward solve timed in the same round (includes attach's own f applications) */
  readonly backwardMs: number | undefined
  readonly backwardIterations: number | undefined
  readonly note: string
}

/** Everything {@link runFixedPointBench} measured. */
export interface FixedPointBenchResult {
  readonly backend: string
  readonly fMs: Record<string, number>
  readonly solvers: ReadonlyArray<SolverRow>
  readonly gradients: ReadonlyArray<GradientRow>
  readonly markdown: string
}

/** Sizes and repeat counts of {@link runFixedPointBench}. */
export interface FixedPointBenchOptions {
  readonly batch?: number
  readonly channels?: number
  readonly size?: number
  readonly hidden?: number
  /** solver iterations per timed solve: conv, fc */
  readonly convIterations?: number
  readonly fcIterations?: number
  /** timed repetitions: conv, fc */
  readonly convRuns?: number
  readonly fcRuns?: number
  /** skip the conv cell (e.g. on the slow cpu backend) */
  readonly skipConv?: boolean
}

interface Cell {
  readonly name: string
  readonly f: FP.FixedPointMap
  readonly z0: tf.Tensor
  /** the weight variable and the injection (for gradients) */
  readonly weight: tf.Variable
  readonly u: tf.Tensor
  /** the same map with another injection (gradient w.r.t. u) */
  readonly withInjection: (u: tf.Tensor) => FP.FixedPointMap
  readonly dispose: () => void
}

/** GroupNorm (no affine) from per-channel sums: two [B,1,HW] x [B,HW,C] matMuls, stats broadcast as [B,1,1,C]. */
const groupNorm = (x: tf.Tensor4D, groups: number, ones: tf.Tensor3D, eps = 1e-5): tf.Tensor4D => {
  const [B, H, W, C] = x.shape
  const per = C / groups
  const n = H * W * per
  const x3 = tf.reshape(x, [B, H * W, C]) as tf.Tensor3D
  const s1 = tf.sum(tf.reshape(tf.matMul(ones, x3), [B, groups, per]), 2)
  const s2 = tf.sum(tf.reshape(tf.matMul(ones, tf.square(x3)), [B, groups, per]), 2)
  const mean = tf.div(s1, n)
  const variance = tf.relu(tf.sub(tf.div(s2, n), tf.square(mean)))
  const inv = tf.rsqrt(tf.add(variance, eps))
  const perChannel = (t: tf.Tensor) => tf.reshape(tf.tile(tf.reshape(t, [B, groups, 1]), [1, 1, per]), [B, 1, 1, C])
  const a = perChannel(inv)
  const b = perChannel(tf.neg(tf.mul(mean, inv)))
  return tf.add(tf.mul(x, a), b) as tf.Tensor4D
}

const convCell = (B: number, C: number, S: number): Cell => {
  const weight = tf.variable(tf.randomNormal([3, 3, C, C], 0, Math.sqrt(2 / (9 * C)), "float32", 1))
  const u = tf.randomNormal([B, S, S, C], 0, 1, "float32", 2)
  const ones = tf.ones([B, 1, S * S]) as tf.Tensor3D
  const withInjection = (inj: tf.Tensor): FP.FixedPointMap => (z) =>
    tf.relu(groupNorm(tf.add(tf.conv2d(z as tf.Tensor4D, weight as tf.Tensor4D, 1, "same"), inj) as tf.Tensor4D, 8, ones))
  return {
    name: `conv (B ${B}, ${C} ch, ${S}x${S})`,
    f: withInjection(u),
    z0: tf.zeros([B, S, S, C]),
    weight,
    u,
    withInjection,
    dispose: () => tf.dispose([weight, u, ones])
  }
}

const fcCell = (B: number, H: number): Cell => {
  // spectral norm of a Gaussian H x H matrix is about 2 sqrt(H) sigma: sigma for ~0.9
  const weight = tf.variable(tf.randomNormal([H, H], 0, 0.9 / (2 * Math.sqrt(H)), "float32", 3))
  const u = tf.randomNormal([B, H], 0, 1, "float32", 4)
  const withInjection = (inj: tf.Tensor): FP.FixedPointMap => (z) => tf.tanh(tf.add(tf.matMul(z, weight), inj))
  return {
    name: `fc (B ${B}, hidden ${H})`,
    f: withInjection(u),
    z0: tf.zeros([B, H]),
    weight,
    u,
    withInjection,
    dispose: () => tf.dispose([weight, u])
  }
}

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e)).split("\n")[0]!.slice(0, 90)

const measureCell = (cell: Cell, iterations: number, runs: number) => {
  const evalF = () => tf.tidy(() => cell.f(cell.z0)).dispose()
  const makers: ReadonlyArray<readonly [string, FP.Solver["Service"]]> = [
    ["picard", FP.makePicardSync({ maxIter: iterations, tol: 0 })],
    ["anderson m=5", FP.makeAndersonSync({ m: 5, maxIter: iterations, tol: 0 })],
    ["anderson m=3", FP.makeAndersonSync({ m: 3, maxIter: iterations, tol: 0 })],
    ["broyden memory=8", FP.makeBroydenSync({ memory: 8, maxIter: iterations, tol: 0 })],
    ["broyden memory=30", FP.makeBroydenSync({ memory: 30, maxIter: iterations, tol: 0 })]
  ]
  const solve = (solver: FP.Solver["Service"]) => () => solver.run(cell.f, cell.z0).z.dispose()
  // warm-up (wasm heap growth), then rounds that interleave f and every solver, so load from other processes
  // hits all rows alike; each row reports the median over rounds of (solve - f) / K relative to that round's f
  for (let i = 0; i < 3; i++) evalF()
  makers.forEach(([, solver]) => solve(solver)())
  const fRounds: Array<number> = []
  const solveRounds = makers.map(() => [] as Array<number>)
  const overheadRounds = makers.map(() => [] as Array<number>)
  for (let r = 0; r < runs; r++) {
    const fMs = timeIt(evalF, 0, 3)
    fRounds.push(fMs)
    makers.forEach(([, solver], i) => {
      const ms = timeIt(solve(solver), 0, 1)
      solveRounds[i]!.push(ms)
      overheadRounds[i]!.push((ms - fMs) / iterations / fMs - 1)
    })
  }
  const fMs = median(fRounds)
  const solvers: Array<SolverRow> = makers.map(([name], i) => {
    const solveMs = median(solveRounds[i]!)
    return {
      cell: cell.name,
      solver: name,
      iterations,
      solveMs,
      perIterationMs: (solveMs - fMs) / iterations,
      overhead: median(overheadRounds[i]!)
    }
  })

  const gradients: Array<GradientRow> = []
  const forward = FP.makeAndersonSync({ m: 5, maxIter: iterations, tol: 0 })
  const forwardMs = solvers.find((s) => s.solver === "anderson m=5")!.solveMs
  const modes: ReadonlyArray<readonly [string, FP.Backward]> = [
    ["implicit (anderson, <= 20 adjoint it.)", FP.Backward.implicit({ maxIter: 20, tol: 1e-6 })],
    ["phantom k=5 tau=0.5", FP.Backward.phantom(5, 0.5)]
  ]
  for (const [mode, backward] of modes) {
    for (const wrt of ["weight", "injection u"] as const) {
      let adjoint: number | undefined
      const b: FP.Backward = backward._tag === "Implicit"
        ? { ...backward, onStats: (s) => (adjoint = s.steps) }
        : backward
      const step = () =>
        tf.tidy(() => {
          if (wrt === "weight") {
            const { grads, value } = tf.variableGrads(() => {
              const z = forward.run(cell.f, cell.z0).z
              return tf.mean(FP.attach(cell.f, z, b)) as tf.Scalar
            }, [cell.weight])
            return [value, grads[cell.weight.name]!]
          }
          return tf.grad((inj: tf.Tensor) => {
            const f = cell.withInjection(inj)
            const z = forward.run(f, cell.z0).z
            return tf.mean(FP.attach(f, z, b)) as tf.Scalar
          })(cell.u)
        })
      try {
        // interleave forward-only and forward + backward rounds; backward = median of the per-round differences
        const rounds = Math.max(2, Math.floor(runs / 2))
        tf.dispose(step())
        const totals: Array<number> = []
        const diffs: Array<number> = []
        for (let r = 0; r < rounds; r++) {
          const fwd = timeIt(() => forward.run(cell.f, cell.z0).z.dispose(), 0, 1)
          const total = timeIt(() => tf.dispose(step()), 0, 1)
          totals.push(total)
          diffs.push(total - fwd)
        }
        gradients.push({
          cell: cell.name,
          mode,
          wrt,
          forwardMs,
          totalMs: median(totals),
          backwardMs: median(diffs),
          backwardIterations: adjoint,
          note: ""
        })
      } catch (e) {
        gradients.push({
          cell: cell.name,
          mode,
          wrt,
          forwardMs,
          totalMs: undefined,
          backwardMs: undefined,
          backwardIterations: undefined,
          note: `failed: ${message(e)}`
        })
      }
    }
  }
  return { fMs, solvers, gradients }
}

const fmt = (x: number, digits = 1): string => x.toFixed(digits)

/**
 * Runs the benchmark on the current backend (call `useBackend` first) and returns the rows and a Markdown report.
 */
export const runFixedPointBench = (options: FixedPointBenchOptions = {}): FixedPointBenchResult => {
  const B = options.batch ?? 64
  const cells: Array<readonly [Cell, number, number]> = []
  if (options.skipConv !== true) {
    cells.push([convCell(B, options.channels ?? 32, options.size ?? 28), options.convIterations ?? 20, options.convRuns ?? 5])
  }
  cells.push([fcCell(B, options.hidden ?? 256), options.fcIterations ?? 30, options.fcRuns ?? 15])
  const fMs: Record<string, number> = {}
  const solvers: Array<SolverRow> = []
  const gradients: Array<GradientRow> = []
  try {
    for (const [cell, iterations, runs] of cells) {
      const before = tf.memory().numTensors
      const m = measureCell(cell, iterations, runs)
      fMs[cell.name] = m.fMs
      solvers.push(...m.solvers)
      gradients.push(...m.gradients)
      const leaked = tf.memory().numTensors - before
      if (leaked !== 0) throw new Error(`bench leaked ${leaked} tensors on ${cell.name}`)
    }
  } finally {
    cells.forEach(([cell]) => {
      cell.z0.dispose()
      cell.dispose()
    })
  }
  const lines: Array<string> = []
  lines.push(
    `Backend: ${tf.getBackend()}; load average at the end ${loadavg().map((x) => x.toFixed(1)).join(" ")} on ${cpus().length} CPUs. ` +
      "Median wall times in ms; overhead = median over interleaved rounds of per-iteration cost / f - 1.",
    ""
  )
  lines.push(Report.table(
    ["cell", "f (ms)", "solver", "iterations", "solve (ms)", "per iteration (ms)", "overhead vs f"],
    solvers.map((r) => [
      r.cell,
      fmt(fMs[r.cell]!, 2),
      r.solver,
      r.iterations,
      fmt(r.solveMs),
      fmt(r.perIterationMs, 2),
      `${fmt(r.overhead * 100)}%`
    ])
  ))
  lines.push(
    "",
    Report.table(
      ["cell", "gradient", "w.r.t.", "forward solve (ms)", "forward + backward (ms)", "backward incl. attach (ms)", "adjoint iterations"],
      gradients.map((g) => [
        g.cell,
        g.mode,
        g.wrt,
        fmt(g.forwardMs),
        g.totalMs !== undefined ? fmt(g.totalMs) : g.note,
        g.backwardMs !== undefined ? fmt(g.backwardMs) : "-",
        g.backwardIterations ?? "-"
      ])
    )
  )
  return { backend: tf.getBackend(), fMs, solvers, gradients, markdown: lines.join("\n") }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  await useBackend((process.env["DEQ_BACKEND"] as "wasm" | "cpu" | undefined) ?? "wasm")
  const result = runFixedPointBench()
  console.log(result.markdown)
}
