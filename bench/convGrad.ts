/**
 * Conv-gradient kernels: our wasm compositions against the stock wasm input kernel and the cpu backend.
 *
 * Workload: batch 64, 28x28, 32 -> 32 channels, 3x3, stride 1, 'same' (the conv cell of a DEQ on MNIST).
 * Each row is the median wall time of one kernel call after a warm-up. wasm kernels are synchronous, so the
 * time of `runKernel` is the compute time; only the last output of a row is read back (for the error check).
 * The stock cpu weight gradient takes about a minute at batch 64, so it is compared at a smaller batch.
 *
 * Run: `npx tsx bench/convGrad.ts`
 */
import { pathToFileURL } from "node:url"
import { registerWasmConvGradients, unregisterWasmConvGradients } from "../src/internal/tensor/convGrad.ts"
import * as Report from "../src/Report.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import { median } from "./timing.ts"

/** One measured kernel: what was timed, on which backend and implementation, and the median time. */
export interface ConvGradRow {
  readonly op: string
  readonly batch: number
  readonly backend: string
  readonly kernel: string
  readonly runs: number
  readonly medianMs: number
  /** for our kernels: max|ours - reference| / max|reference| against the row named in `reference` */
  readonly relErr?: number
  readonly reference?: string
}

/** Sizes and repeat counts of {@link runConvGradBench}. */
export interface ConvGradBenchOptions {
  readonly batch?: number
  readonly size?: number
  readonly channels?: number
  readonly kernel?: number
  /** timed runs per wasm row, after 2 warm-up runs */
  readonly runs?: number
  /** timed runs of the cpu row (no warm-up); 0 skips it */
  readonly cpuRuns?: number
  /** batch of the cpu comparison: the cpu kernel takes about a minute at batch 64 */
  readonly cpuBatch?: number
}

type Shape4 = [number, number, number, number]

/** Median ms of `runs` timed calls after `warmup` untimed ones, and the values of the last output. */
const time = (f: () => tf.Tensor, warmup: number, runs: number): { ms: number; values: Float32Array } => {
  for (let i = 0; i < warmup; i++) f().dispose()
  const ms: Array<number> = []
  let values: Float32Array = new Float32Array(0)
  for (let i = 0; i < runs; i++) {
    const start = performance.now()
    const out = f()
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

const OURS = "effect-deq composition"

/**
 * Times the conv weight gradient (`Conv2DBackpropFilter`) and input gradient (`Conv2DBackpropInput`) on wasm
 * with our kernels, the stock wasm input kernel, a forward conv for scale, and the stock cpu weight gradient at
 * `cpuBatch` next to ours at the same size. Our rows carry their relative error against the stock result.
 * Leaves the wasm backend active with our kernels registered.
 */
export const runConvGradBench = async (options: ConvGradBenchOptions = {}): Promise<ReadonlyArray<ConvGradRow>> => {
  const { batch = 64, channels = 32, cpuBatch = 8, cpuRuns = 3, kernel = 3, runs = 10, size = 28 } = options
  const wShape: Shape4 = [kernel, kernel, channels, channels]
  const common = { strides: 1, pad: "same", dataFormat: "NHWC", dimRoundingMode: undefined }
  const filterAttrs = { ...common, filterShape: wShape } as unknown as tf.NamedAttrMap
  const dW = (x: tf.Tensor, dy: tf.Tensor) => () =>
    tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, filterAttrs) as tf.Tensor
  const dX = (dy: tf.Tensor, filter: tf.Tensor, inputShape: Shape4) => () =>
    tf.engine().runKernel("Conv2DBackpropInput", { dy, filter }, {
      ...common,
      inputShape
    } as unknown as tf.NamedAttrMap) as tf.Tensor
  const rows: Array<ConvGradRow> = []

  await useBackend("wasm")
  const xShape: Shape4 = [batch, size, size, channels]
  const x = tf.randomNormal(xShape, 0, 1, "float32", 1) as tf.Tensor4D
  const w = tf.randomNormal(wShape, 0, 0.1, "float32", 2) as tf.Tensor4D
  const dy = tf.randomNormal(xShape, 0, 1, "float32", 3) as tf.Tensor4D
  const row = (op: string, n: number, backend: string, kernelName: string, t: { ms: number }) =>
    rows.push({ op, batch: n, backend, kernel: kernelName, runs: backend === "cpu" ? cpuRuns : runs, medianMs: t.ms })

  const fwd = time(() => tf.conv2d(x, w, 1, "same"), 2, runs)
  row("forward conv2d (reference)", batch, "wasm", "stock Conv2D", fwd)
  const oursDw = time(dW(x, dy), 2, runs)
  row("weight gradient", batch, "wasm", OURS, oursDw)
  const oursDx = time(dX(dy, w, xShape), 2, runs)
  unregisterWasmConvGradients()
  let stockDx: { ms: number; values: Float32Array }
  try {
    stockDx = time(dX(dy, w, xShape), 2, runs)
  } finally {
    registerWasmConvGradients()
  }
  rows.push({
    op: "input gradient",
    batch,
    backend: "wasm",
    kernel: OURS,
    runs,
    medianMs: oursDx.ms,
    relErr: relErr(oursDx.values, stockDx.values),
    reference: "stock wasm"
  })
  row("input gradient", batch, "wasm", "stock (naive loop)", stockDx)
  tf.dispose([x, w, dy])

  if (cpuRuns > 0) {
    // the cpu kernel is ~1000x slower than ours: compare at a smaller batch, with ours at the same size
    const smallShape: Shape4 = [cpuBatch, size, size, channels]
    const xs = tf.randomNormal(smallShape, 0, 1, "float32", 4)
    const dys = tf.randomNormal(smallShape, 0, 1, "float32", 5)
    const ours = time(dW(xs, dys), 2, runs)
    const data = { x: xs.dataSync(), dy: dys.dataSync() }
    tf.dispose([xs, dys])
    await tf.setBackend("cpu")
    const xc = tf.tensor4d(data.x, smallShape), dyc = tf.tensor4d(data.dy, smallShape)
    const cpu = time(dW(xc, dyc), 0, cpuRuns)
    tf.dispose([xc, dyc])
    await tf.setBackend("wasm")
    rows.push({
      op: "weight gradient",
      batch: cpuBatch,
      backend: "wasm",
      kernel: OURS,
      runs,
      medianMs: ours.ms,
      relErr: relErr(ours.values, cpu.values),
      reference: "stock cpu"
    })
    row("weight gradient", cpuBatch, "cpu", "stock", cpu)
  }
  return rows
}

/** The rows as a Markdown table. */
export const convGradTable = (rows: ReadonlyArray<ConvGradRow>): string =>
  Report.table(
    ["op", "batch", "backend", "kernel", "runs", "median ms", "rel. error vs"],
    rows.map((r) => [
      r.op,
      r.batch,
      r.backend,
      r.kernel,
      r.runs,
      r.medianMs.toFixed(1),
      r.relErr === undefined ? "" : `${r.relErr.toExponential(1)} (${r.reference})`
    ])
  )

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const rows = await runConvGradBench()
  console.log("\nconv gradients: 28x28, 32->32 channels, 3x3, stride 1, 'same'; median ms of one kernel call\n")
  console.log(convGradTable(rows))
}
