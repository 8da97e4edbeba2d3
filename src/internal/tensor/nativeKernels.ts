/**
 * The wasm kernels served by the oneDNN addon: Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter, BatchMatMul.
 *
 * Each kernel allocates its output with the wasm backend (`makeOutput`), then hands the addon Float32Array views
 * of the wasm heap for inputs and output: oneDNN reads and writes the tensors in place, no copy. The views are
 * taken after the output is allocated, because an allocation may grow (and so replace) the heap's buffer.
 *
 * A call the addon does not cover (not float32, NCHW, dilation > 1, shapes oneDNN rejects, matmul broadcasting
 * other than a batch of 1, matmuls too small to gain) goes to the kernel that was registered before ours, so the
 * answer is always the one wasm would give. See docs/performance.md for what each kernel gains.
 */
import * as tf from "@tensorflow/tfjs"

type Info = tf.TensorInfo
type Shape4 = [number, number, number, number]

/** The addon's interface (native/deq_native.cc). */
export interface Addon {
  /** c = kernel(a, b) for kernel `kind`, sizes in `params`; throws when oneDNN rejects the shapes */
  readonly run: (kind: number, params: Int32Array, a: Float32Array, b: Float32Array, c: Float32Array) => void
  /** the oneDNN implementation chosen for a kernel, e.g. "jit:avx512_core" */
  readonly implOf: (kind: number, params: Int32Array) => string
  /** sets this thread's OpenMP team size; returns it */
  readonly setThreads: (n: number) => number
  readonly threads: () => number
  readonly planCount: () => number
  readonly version: () => string
}

/** Kernel kinds as the addon numbers them. */
export const Kind = { conv: 0, convInput: 1, convFilter: 2, matMul: 3 } as const

/** The wasm backend's members we use (tfjs-backend-wasm 4.22's BackendWasm). */
interface WasmBackend {
  makeOutput(shape: ReadonlyArray<number>, dtype: "float32"): Info
  typedArrayFromHeap(info: Info): Float32Array
  disposeData(dataId: object): boolean
}

/** Per-kernel counters: calls served natively, and calls handed to the previous kernel. */
export interface KernelCounts {
  native: number
  fallback: number
}

/** What the kernels need from the loader: the addon, the kernels to fall back to, counters, a size threshold. */
export interface KernelContext {
  addon: Addon | undefined
  readonly previous: Map<string, tf.KernelConfig | undefined>
  readonly counts: Record<string, KernelCounts>
  /** matmuls with fewer multiply-adds than this stay on wasm (per-call overhead beats the gain) */
  matMulMinWork: number
  /** shapes oneDNN refused once; they go straight to the fallback */
  readonly refused: Set<string>
  lastError: string | undefined
}

/** Builds the four kernel functions over one context. */
export const makeKernels = (ctx: KernelContext): ReadonlyArray<readonly [string, tf.KernelFunc]> => {
  const depth = new Map<string, number>()

  const fallback = (name: string, args: Parameters<tf.KernelFunc>[0]): ReturnType<tf.KernelFunc> => {
    const prev = ctx.previous.get(name)
    if (prev === undefined) {
      throw new Error(`effect-deq native: ${name} on wasm: these attributes are not supported and there is no wasm kernel to fall back to`)
    }
    // a kernel registered over ours may delegate back to us (it saved ours as its fallback): stop the cycle
    if ((depth.get(name) ?? 0) > 0) {
      throw new Error(`effect-deq native: ${name} on wasm: unsupported attributes, and the fallback kernel delegated back to the native one`)
    }
    ctx.counts[name]!.fallback++
    depth.set(name, 1)
    try {
      return prev.kernelFunc(args)
    } finally {
      depth.set(name, 0)
    }
  }

  const runNative = (
    name: string,
    kind: number,
    args: Parameters<tf.KernelFunc>[0],
    params: Int32Array,
    outShape: ReadonlyArray<number>,
    a: Info,
    b: Info
  ): ReturnType<tf.KernelFunc> => {
    const addon = ctx.addon
    const key = `${kind}:${params.join(",")}`
    if (addon === undefined || ctx.refused.has(key)) return fallback(name, args)
    const backend = args.backend as unknown as WasmBackend
    const out = backend.makeOutput(outShape, "float32")
    try {
      addon.run(kind, params, backend.typedArrayFromHeap(a), backend.typedArrayFromHeap(b), backend.typedArrayFromHeap(out))
    } catch (e) {
      backend.disposeData(out.dataId)
      ctx.refused.add(key)
      ctx.lastError = `${name} [${params.join(",")}]: ${e instanceof Error ? e.message : String(e)}`
      return fallback(name, args)
    }
    ctx.counts[name]!.native++
    return out
  }

  const conv2D: tf.KernelFunc = (args) => {
    const { x, filter } = args.inputs as { x: Info; filter: Info }
    const a = args.attrs as unknown as tf.Conv2DAttrs
    const plan = float32(x, filter)
      ? convPlan(x.shape as Shape4, filter.shape as Shape4, a.strides, a.pad, a.dilations, a.dimRoundingMode, a.dataFormat)
      : undefined
    if (plan === undefined) return fallback(tf.Conv2D, args)
    return runNative(tf.Conv2D, Kind.conv, args, plan.params, plan.outShape, x, filter)
  }

  const conv2DBackpropInput: tf.KernelFunc = (args) => {
    const { dy, filter } = args.inputs as { dy: Info; filter: Info }
    const a = args.attrs as unknown as tf.Conv2DBackpropInputAttrs
    const plan = float32(dy, filter)
      ? convPlan(a.inputShape, filter.shape as Shape4, a.strides, a.pad, dilationsOf(a), a.dimRoundingMode, a.dataFormat)
      : undefined
    if (plan === undefined || !sameShape(plan.outShape, dy.shape)) return fallback(tf.Conv2DBackpropInput, args)
    return runNative(tf.Conv2DBackpropInput, Kind.convInput, args, plan.params, a.inputShape, dy, filter)
  }

  const conv2DBackpropFilter: tf.KernelFunc = (args) => {
    const { x, dy } = args.inputs as { x: Info; dy: Info }
    const a = args.attrs as unknown as tf.Conv2DBackpropFilterAttrs
    const plan = float32(x, dy)
      ? convPlan(x.shape as Shape4, a.filterShape, a.strides, a.pad, dilationsOf(a), a.dimRoundingMode, a.dataFormat)
      : undefined
    if (plan === undefined || !sameShape(plan.outShape, dy.shape)) return fallback(tf.Conv2DBackpropFilter, args)
    return runNative(tf.Conv2DBackpropFilter, Kind.convFilter, args, plan.params, a.filterShape, x, dy)
  }

  const batchMatMul: tf.KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: Info; b: Info }
    const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs
    const plan = float32(a, b) ? matMulPlan(a.shape, b.shape, transposeA, transposeB) : undefined
    if (plan === undefined || plan.work < ctx.matMulMinWork) return fallback(tf.BatchMatMul, args)
    return runNative(tf.BatchMatMul, Kind.matMul, args, plan.params, plan.outShape, a, b)
  }

  return [
    [tf.Conv2D, conv2D],
    [tf.Conv2DBackpropInput, conv2DBackpropInput],
    [tf.Conv2DBackpropFilter, conv2DBackpropFilter],
    [tf.BatchMatMul, batchMatMul]
  ]
}

const float32 = (a: Info, b: Info): boolean => a.dtype === "float32" && b.dtype === "float32"

const sameShape = (a: ReadonlyArray<number>, b: ReadonlyArray<number>): boolean =>
  a.length === b.length && a.every((v, i) => v === b[i])

const dilationsOf = (attrs: object): number | [number, number] =>
  (attrs as { dilations?: number | [number, number] }).dilations ?? 1

const INT32_MAX = 2 ** 31 - 1
const fits = (xs: ReadonlyArray<number>, min: number): boolean =>
  xs.every((v) => Number.isInteger(v) && v >= min && v <= INT32_MAX)

/**
 * The addon's conv parameters for an NHWC conv with HWIO filter, or undefined when the addon does not cover it.
 * tfjs's own shape arithmetic decides the output and the padding; oneDNN needs them to agree with
 * out = (in + padBefore + padAfter - kernel) / stride + 1, which is checked here rather than trusted.
 */
export const convPlan = (
  xShape: Shape4,
  filterShape: Shape4,
  strides: number | [number, number],
  pad: tf.Conv2DAttrs["pad"],
  dilations: number | [number, number] | undefined,
  dimRoundingMode: tf.Conv2DAttrs["dimRoundingMode"],
  dataFormat: string | undefined
): { readonly params: Int32Array; readonly outShape: Shape4 } | undefined => {
  if (dataFormat !== undefined && dataFormat !== "NHWC") return undefined
  if (xShape.length !== 4 || filterShape.length !== 4 || xShape[3] !== filterShape[2]) return undefined
  let info: tf.backend_util.Conv2DInfo
  try {
    info = tf.backend_util.computeConv2DInfo(xShape, filterShape, strides, dilations ?? 1, pad, dimRoundingMode, false, "channelsLast")
  } catch {
    return undefined
  }
  if (info.dilationHeight !== 1 || info.dilationWidth !== 1) return undefined
  const [n, h, w, ci] = xShape
  const [kh, kw, , co] = filterShape
  const { outHeight: oh, outWidth: ow, strideHeight: sh, strideWidth: sw } = info
  const { top, bottom, left, right } = info.padInfo
  if (!fits([n, h, w, ci, kh, kw, co, oh, ow, sh, sw], 1) || !fits([top, left, bottom, right], 0)) return undefined
  if (Math.floor((h + top + bottom - kh) / sh) + 1 !== oh || Math.floor((w + left + right - kw) / sw) + 1 !== ow) {
    return undefined
  }
  // the views must fit int32 indexing on the C++ side too
  if (!fits([n * h * w * ci, n * oh * ow * co, kh * kw * ci * co], 1)) return undefined
  return {
    params: Int32Array.of(n, h, w, ci, kh, kw, co, oh, ow, sh, sw, top, left, bottom, right),
    outShape: [n, oh, ow, co]
  }
}

/**
 * The addon's matmul parameters, or undefined when the addon does not cover it. Batch dimensions must be equal,
 * or one side's must be all 1 (broadcast); general broadcasting stays on wasm.
 */
export const matMulPlan = (
  aShape: ReadonlyArray<number>,
  bShape: ReadonlyArray<number>,
  transposeA: boolean,
  transposeB: boolean
): { readonly params: Int32Array; readonly outShape: ReadonlyArray<number>; readonly work: number } | undefined => {
  const ra = aShape.length, rb = bShape.length
  if (ra < 2 || rb < 2) return undefined
  const m = transposeA ? aShape[ra - 1]! : aShape[ra - 2]!
  const k = transposeA ? aShape[ra - 2]! : aShape[ra - 1]!
  const kb = transposeB ? bShape[rb - 1]! : bShape[rb - 2]!
  const n = transposeB ? bShape[rb - 2]! : bShape[rb - 1]!
  if (k !== kb) return undefined
  const outerA = aShape.slice(0, -2), outerB = bShape.slice(0, -2)
  let outer: Array<number>
  try {
    outer = tf.backend_util.assertAndGetBroadcastShape(outerA, outerB)
  } catch {
    return undefined
  }
  const size = (s: ReadonlyArray<number>) => s.reduce((p, v) => p * v, 1)
  const ba = size(outerA), bb = size(outerB), batch = size(outer)
  if ((ba !== batch && ba !== 1) || (bb !== batch && bb !== 1)) return undefined
  if (!fits([ba, bb, m, k, n], 1) || !fits([ba * m * k, bb * k * n, batch * m * n], 1)) return undefined
  return {
    params: Int32Array.of(ba, bb, m, k, n, transposeA ? 1 : 0, transposeB ? 1 : 0),
    outShape: [...outer, m, n],
    work: batch * m * n * k
  }
}
