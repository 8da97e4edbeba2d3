/**
 * Native (oneDNN) kernels against the project's wasm kernels, one kernel call at a time.
 *
 * Cells: the conv cell sizes of the DEQs (batch 64, 32 channels at 28x28 and 16 channels at 14x14, 3x3, stride 1,
 * 'same'), a stride-2 downsampling conv, the GroupNorm channel sums (`matMul(ones[B,1,HW], x[B,HW,C])`), an FC
 * layer and square matmuls (for the small-matmul threshold). "wasm" is what the project runs without the addon:
 * XNNPACK's Conv2D and BatchMatMul, and our conv-gradient compositions (src/internal/tensor/convGrad.ts).
 * Each row is the median wall time of `runKernel` (synchronous on wasm, so it is the compute time) after a
 * warm-up; native rows are run with 2 threads and 1 thread. Outputs are compared against the wasm ones.
 *
 * Run (under the shared lock): `npx tsx bench/native.ts [--quick] [--json FILE]`
 */
import { writeFileSync } from "node:fs"
import { pathToFileURL } from "node:url"
import {
  nativeAddon,
  nativeKernels,
  registerNativeKernels,
  setMatMulMinWork,
  setNativeThreads,
  unregisterNativeKernels
} from "../src/internal/tensor/native.ts"
import * as Report from "../src/Report.ts"
import { groupNorm } from "../src/internal/models/layers.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import { median } from "./timing.ts"

/** One kernel on one cell: wasm and native medians, and the native result's error against wasm. */
export interface NativeRow {
  readonly cell: string
  readonly kernel: string
  readonly wasmMs: number
  readonly native2Ms: number
  readonly native1Ms: number
  /** max|native - wasm| / max|wasm| */
  readonly relErr: number
  /** the oneDNN implementation (e.g. "jit:avx512_core") */
  readonly impl: string
}

interface Case {
  readonly cell: string
  readonly kernel: string
  readonly inputs: () => tf.NamedTensorMap
  readonly attrs: object
  /** the addon's kind and params, to name the oneDNN implementation */
  readonly impl?: readonly [number, Int32Array]
}

type Shape4 = [number, number, number, number]

const rnd = (shape: ReadonlyArray<number>, seed: number) => tf.randomUniform([...shape], -1, 1, "float32", seed)

const convCases = (cell: string, x: Shape4, co: number, stride: number): ReadonlyArray<Case> => {
  const [n, h, w, ci] = x
  const oh = Math.ceil(h / stride), ow = Math.ceil(w / stride)
  const filterShape: Shape4 = [3, 3, ci, co]
  const padAlong = (o: number, i: number) => Math.max(0, (o - 1) * stride + 3 - i)
  const ph = padAlong(oh, h), pw = padAlong(ow, w)
  const params = Int32Array.of(n, h, w, ci, 3, 3, co, oh, ow, stride, stride, ph >> 1, pw >> 1, ph - (ph >> 1), pw - (pw >> 1))
  const common = { strides: stride, pad: "same", dataFormat: "NHWC", dimRoundingMode: undefined }
  return [
    { cell, kernel: tf.Conv2D, inputs: () => ({ x: rnd(x, 1), filter: rnd(filterShape, 2) }), attrs: { ...common, dilations: 1 }, impl: [0, params] },
    {
      cell,
      kernel: tf.Conv2DBackpropInput,
      inputs: () => ({ dy: rnd([n, oh, ow, co], 3), filter: rnd(filterShape, 2) }),
      attrs: { ...common, inputShape: x },
      impl: [1, params]
    },
    {
      cell,
      kernel: tf.Conv2DBackpropFilter,
      inputs: () => ({ x: rnd(x, 1), dy: rnd([n, oh, ow, co], 3) }),
      attrs: { ...common, filterShape },
      impl: [2, params]
    }
  ]
}

const matMulCase = (cell: string, a: ReadonlyArray<number>, b: ReadonlyArray<number>): Case => {
  const batch = a.length === 3 ? a[0]! : 1
  const [m, k] = a.slice(-2) as [number, number]
  const n = b[b.length - 1]!
  return {
    cell,
    kernel: tf.BatchMatMul,
    inputs: () => ({ a: rnd(a, 4), b: rnd(b, 5) }),
    attrs: { transposeA: false, transposeB: false },
    impl: [3, Int32Array.of(batch, b.length === 3 ? b[0]! : 1, m, k, n, 0, 0)]
  }
}

const cases = (batch: number): ReadonlyArray<Case> => [
  // a one-pixel image: what is left is the call overhead and the per-call weight reorder
  ...convCases("B1 32ch 1x1 3x3 (call + weight reorder)", [1, 1, 1, 32], 32, 1),
  ...convCases(`B${batch} 32ch 28x28 3x3`, [batch, 28, 28, 32], 32, 1),
  ...convCases(`B${batch} 16ch 14x14 3x3`, [batch, 14, 14, 16], 16, 1),
  ...convCases(`B${batch} 16ch 28x28 -> 14x14 stride 2`, [batch, 28, 28, 16], 16, 2),
  matMulCase(`GroupNorm sums B${batch} [1x784]x[784x32]`, [batch, 1, 784], [batch, 784, 32]),
  matMulCase(`FC [${batch}x256]x[256x256]`, [batch, 256], [256, 256]),
  // the solvers' per-sample dot products and Broyden's low-rank products on a 32ch 28x28 state
  matMulCase(`solver dot [${batch}x25088]x[25088x1]`, [batch, 25088], [25088, 1]),
  matMulCase(`Broyden B${batch} [8x25088]x[25088x1]`, [batch, 8, 25088], [batch, 25088, 1]),
  matMulCase("square 512", [512, 512], [512, 512]),
  matMulCase("square 64", [64, 64], [64, 64]),
  matMulCase("square 32", [32, 32], [32, 32]),
  matMulCase("square 16", [16, 16], [16, 16]),
  matMulCase("square 8", [8, 8], [8, 8])
]

/** Median ms of one kernel call and its last output's values. */
const timeKernel = (c: Case, inputs: tf.NamedTensorMap, warmup: number, runs: number) => {
  const call = () => tf.engine().runKernel(c.kernel, inputs, c.attrs as tf.NamedAttrMap) as tf.Tensor
  for (let i = 0; i < warmup; i++) call().dispose()
  const ms: Array<number> = []
  let values: Float32Array = new Float32Array(0)
  for (let i = 0; i < runs; i++) {
    const start = performance.now()
    const out = call()
    ms.push(performance.now() - start)
    if (i === runs - 1) values = out.dataSync() as Float32Array
    out.dispose()
  }
  return { ms: median(ms), values }
}

const relErr = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let diff = 0, scale = 0
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!))
    scale = Math.max(scale, Math.abs(b[i]!))
  }
  return diff / Math.max(scale, 1e-6)
}

/** Options of {@link runNativeBench}. */
export interface NativeBenchOptions {
  readonly batch?: number
  readonly warmup?: number
  readonly runs?: number
}

/**
 * Times every case on wasm and on the native kernels (2 threads, then 1), interleaved per case so load changes
 * hit both. Empty when the addon is not built or DEQ_NATIVE=0. Leaves the native kernels registered as the
 * environment says, with the default thread count.
 */
export const runNativeBench = async (options: NativeBenchOptions = {}): Promise<ReadonlyArray<NativeRow>> => {
  const { batch = 64, runs = 15, warmup = 3 } = options
  await useBackend("wasm")
  if (!nativeKernels().active) return []
  const threads = nativeKernels().threads
  const previousMin = setMatMulMinWork(0)
  const rows: Array<NativeRow> = []
  try {
    for (const c of cases(batch)) {
      const inputs = c.inputs()
      unregisterNativeKernels()
      const wasm = timeKernel(c, inputs, warmup, runs)
      registerNativeKernels()
      setNativeThreads(2)
      const native2 = timeKernel(c, inputs, warmup, runs)
      setNativeThreads(1)
      const native1 = timeKernel(c, inputs, warmup, runs)
      setNativeThreads(threads)
      const impl = c.impl === undefined ? "" : nativeAddon()!.implOf(c.impl[0], c.impl[1])
      tf.dispose(Object.values(inputs))
      rows.push({
        cell: c.cell,
        kernel: c.kernel,
        wasmMs: wasm.ms,
        native2Ms: native2.ms,
        native1Ms: native1.ms,
        relErr: relErr(native2.values, wasm.values),
        impl
      })
    }
  } finally {
    setMatMulMinWork(previousMin)
    registerNativeKernels()
  }
  return rows
}

/** One workload of the conv cell, with the native kernels off (wasm) and on (2 threads). */
export interface CellRow {
  readonly cell: string
  readonly workload: string
  readonly wasmMs: number
  readonly nativeMs: number
}

/**
 * The DEQ conv cell f(z) = relu(groupNorm(conv3x3(z) + u)) (the project's GroupNorm; 8 groups at 32 channels, 4 at
 * 16): one evaluation, and one VJP w.r.t. z and the weight (the unit of a backward pass). Rounds alternate
 * off / on so load changes hit both; each number is the median over rounds.
 */
export const runCellBench = async (options: { batch?: number; rounds?: number } = {}): Promise<ReadonlyArray<CellRow>> => {
  const { batch = 64, rounds = 5 } = options
  await useBackend("wasm")
  if (!nativeKernels().active) return []
  const rows: Array<CellRow> = []
  for (const [c, s, groups] of [[32, 28, 8], [16, 14, 4]] as const) {
    const name = `B${batch} ${c}ch ${s}x${s}`
    const w = tf.variable(tf.randomNormal([3, 3, c, c], 0, Math.sqrt(2 / (9 * c)), "float32", 1))
    const u = tf.randomNormal([batch, s, s, c], 0, 1, "float32", 2)
    const z = tf.randomNormal([batch, s, s, c], 0, 1, "float32", 3)
    const f = (zi: tf.Tensor, wi: tf.Tensor) =>
      tf.relu(groupNorm(tf.add(tf.conv2d(zi as tf.Tensor4D, wi as tf.Tensor4D, 1, "same"), u) as tf.Tensor4D, groups))
    const workloads: ReadonlyArray<readonly [string, () => void]> = [
      ["f(z)", () => tf.tidy(() => void f(z, w))],
      ["VJP of f w.r.t. z and W", () => tf.tidy(() => void tf.grads((zi: tf.Tensor, wi: tf.Tensor) => f(zi, wi).sum())([z, w]))]
    ]
    for (const [workload, run] of workloads) {
      const off: Array<number> = [], on: Array<number> = []
      for (let r = 0; r < rounds; r++) {
        for (const native of [false, true]) {
          if (native) registerNativeKernels()
          else unregisterNativeKernels()
          run()
          const start = performance.now()
          run()
          ;(native ? on : off).push(performance.now() - start)
        }
      }
      rows.push({ cell: name, workload, wasmMs: median(off), nativeMs: median(on) })
    }
    tf.dispose([w, u, z])
  }
  registerNativeKernels()
  return rows
}

/** The cell rows as a Markdown table. */
export const cellTable = (rows: ReadonlyArray<CellRow>): string =>
  Report.table(
    ["cell", "workload", "wasm ms", "native ms", "speed-up"],
    rows.map((r) => [r.cell, r.workload, Report.num(r.wasmMs, 2), Report.num(r.nativeMs, 2), `${(r.wasmMs / r.nativeMs).toFixed(1)}x`])
  )

/** The rows as a Markdown table. */
export const nativeTable = (rows: ReadonlyArray<NativeRow>): string =>
  Report.table(
    ["cell", "kernel", "wasm ms", "native 2 thr ms", "native 1 thr ms", "speed-up 2 thr", "speed-up 1 thr", "rel. err", "oneDNN impl"],
    rows.map((r) => [
      r.cell,
      r.kernel,
      Report.num(r.wasmMs, 3),
      Report.num(r.native2Ms, 3),
      Report.num(r.native1Ms, 3),
      `${(r.wasmMs / r.native2Ms).toFixed(1)}x`,
      `${(r.wasmMs / r.native1Ms).toFixed(1)}x`,
      r.relErr.toExponential(1),
      r.impl
    ])
  )

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const quick = process.argv.includes("--quick")
  const jsonAt = process.argv.indexOf("--json")
  const rows = await runNativeBench(quick ? { batch: 8, runs: 3, warmup: 1 } : {})
  if (rows.length === 0) {
    console.log(`bench/native: skipped: ${nativeKernels().reason}`)
  } else {
    console.log(`${Report.machine()}; oneDNN ${nativeKernels().version}; median of ${quick ? 3 : 15} runs after warm-up`)
    console.log(nativeTable(rows))
    const cells = await runCellBench(quick ? { batch: 8, rounds: 2 } : {})
    console.log("")
    console.log(cellTable(cells))
    if (jsonAt > 0 && process.argv[jsonAt + 1] !== undefined) {
      writeFileSync(process.argv[jsonAt + 1]!, JSON.stringify({ kernels: rows, cells }, null, 2))
    }
  }
}
