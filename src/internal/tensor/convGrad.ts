/**
 * Fast NHWC conv gradients for the wasm backend.
 *
 * tfjs-backend-wasm 4.22 has no `Conv2DBackpropFilter` kernel (every conv weight gradient fails) and its
 * `Conv2DBackpropInput` is a naive loop. Both gradients are convolutions themselves, so we register kernels that
 * re-express them through wasm's fast (XNNPACK) `Conv2D` plus cheap `Transpose` / `Reverse` / `Slice`:
 *
 * - dW = transpose(conv2d(transpose(x, [3,1,2,0]), transpose(dy, [1,2,0,3]), pad, dilations = stride), [1,2,0,3]),
 *   where `pad` is the forward padding on top/left and just enough on bottom/right for KH x KW outputs
 *   (the result is sliced to [KH, KW, Ci, Co] when it is larger);
 * - dX (stride 1) = conv2d(dy, transpose(reverse(W, [0,1]), [0,1,3,2]), explicit padding K-1-pad), cropping dy
 *   where that padding is negative. Strides > 1 and NCHW keep the native kernel.
 *
 * The kernels call the wasm kernel functions directly (not through the engine): no tape, no engine bookkeeping,
 * and every intermediate is released with `backend.disposeData` before returning.
 */
import * as tf from "@tensorflow/tfjs"

type Info = tf.TensorInfo
type Shape4 = [number, number, number, number]
type Padding = tf.Conv2DBackpropFilterAttrs["pad"]

const BACKEND = "wasm"

/** Runs one registered wasm kernel directly on the backend; single-output kernels only. */
const run = (backend: tf.KernelBackend, kernelName: string, inputs: tf.NamedTensorInfoMap, attrs: object): Info => {
  const kernel = tf.getKernel(kernelName, BACKEND)
  if (kernel === undefined) throw new Error(`effect-deq convGrad: wasm kernel "${kernelName}" is not registered`)
  const out = kernel.kernelFunc({ inputs, backend, attrs: attrs as tf.NamedAttrMap })
  if (Array.isArray(out)) throw new Error(`effect-deq convGrad: kernel "${kernelName}" returned several outputs`)
  return out as Info
}

/**
 * Collects intermediate TensorInfos and frees them all, except the one returned, when `body` ends (also on throw).
 */
const scratch = (backend: tf.KernelBackend, body: (keep: (t: Info) => Info) => Info): Info => {
  const made: Array<Info> = []
  let result: Info | undefined
  try {
    result = body((t) => {
      made.push(t)
      return t
    })
    return result
  } finally {
    for (const t of made) if (t !== result) backend.disposeData(t.dataId)
  }
}

const pair = (v: number | [number, number] | undefined, name: string): [number, number] => {
  if (v === undefined) return [1, 1]
  if (typeof v === "number") return [v, v]
  if (v.length !== 2) throw new Error(`effect-deq convGrad: ${name} must be a number or a pair, got [${v}]`)
  return v
}

const explicit = (top: number, bottom: number, left: number, right: number): tf.backend_util.ExplicitPadding => [
  [0, 0],
  [top, bottom],
  [left, right],
  [0, 0]
]

const conv2d = (
  backend: tf.KernelBackend,
  x: Info,
  filter: Info,
  pad: tf.backend_util.ExplicitPadding,
  dilations: [number, number]
): Info =>
  run(backend, tf.Conv2D, { x, filter }, {
    strides: [1, 1],
    pad,
    dataFormat: "NHWC",
    dilations,
    dimRoundingMode: undefined
  })

/** Conv2DBackpropFilter for wasm, NHWC, any padding and stride, dilation 1. */
const conv2DBackpropFilter: tf.KernelFunc = ({ inputs, attrs, backend }) => {
  const { x, dy } = inputs as { x: Info; dy: Info }
  const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs as unknown as tf.Conv2DBackpropFilterAttrs
  const dilations = pair((attrs as { dilations?: number | [number, number] }).dilations, "dilations")
  if (dilations[0] !== 1 || dilations[1] !== 1) {
    throw new Error(
      `effect-deq convGrad: Conv2DBackpropFilter on wasm supports dilation 1 only, got dilations [${dilations}]`
    )
  }
  if (dataFormat !== undefined && dataFormat !== "NHWC") {
    throw new Error(
      `effect-deq convGrad: Conv2DBackpropFilter on wasm supports dataFormat NHWC only, got ${dataFormat}`
    )
  }
  const [kh, kw, ci, co] = filterShape
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as Shape4,
    filterShape,
    strides,
    1,
    pad as Padding,
    dimRoundingMode,
    false,
    "channelsLast"
  )
  const [, h, w] = x.shape as Shape4
  const [, oh, ow] = dy.shape as Shape4
  const { strideHeight: sh, strideWidth: sw } = info
  const { top, left } = info.padInfo
  // padding after x so that the last output row/column reads exactly filter row kh-1 / column kw-1;
  // negative means trailing rows of x are never read (handled by slicing the result)
  const bottom = (oh - 1) * sh + kh - h - top
  const right = (ow - 1) * sw + kw - w - left
  const b = backend as tf.KernelBackend
  return scratch(b, (keep) => {
    const xt = keep(run(b, tf.Transpose, { x }, { perm: [3, 1, 2, 0] })) // [Ci, H, W, B]
    const dyt = keep(run(b, tf.Transpose, { x: dy }, { perm: [1, 2, 0, 3] })) // [OH, OW, B, Co]
    const pads = explicit(top, Math.max(0, bottom), left, Math.max(0, right))
    let g = keep(conv2d(b, xt, dyt, pads, [sh, sw])) // [Ci, KH', KW', Co]
    if (g.shape[1] !== kh || g.shape[2] !== kw) {
      g = keep(run(b, tf.Slice, { x: g }, { begin: [0, 0, 0, 0], size: [ci, kh, kw, co] }))
    }
    return keep(run(b, tf.Transpose, { x: g }, { perm: [1, 2, 0, 3] })) // [KH, KW, Ci, Co]
  })
}

/** The wasm kernel we replaced; strides > 1 and NCHW go to it. */
let nativeInput: tf.KernelConfig | undefined

/** Conv2DBackpropInput for wasm: stride 1 NHWC as one forward conv, everything else delegated to the native kernel. */
const conv2DBackpropInput: tf.KernelFunc = (args) => {
  const { inputs, attrs, backend } = args
  const { dy, filter } = inputs as { dy: Info; filter: Info }
  const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs as unknown as tf.Conv2DBackpropInputAttrs
  const [strideH, strideW] = pair(strides, "strides")
  if (strideH !== 1 || strideW !== 1 || (dataFormat !== undefined && dataFormat !== "NHWC")) {
    if (nativeInput === undefined) {
      throw new Error("effect-deq convGrad: no native wasm Conv2DBackpropInput kernel to delegate to")
    }
    return nativeInput.kernelFunc(args)
  }
  const [kh, kw] = filter.shape as Shape4
  const info = tf.backend_util.computeConv2DInfo(
    inputShape,
    filter.shape as Shape4,
    1,
    1,
    pad as Padding,
    dimRoundingMode,
    false,
    "channelsLast"
  )
  const [, h, w] = inputShape
  const [nb, oh, ow, co] = dy.shape as Shape4
  // correlation of dy, padded by K-1-pad, with the flipped filter gives back H x W
  const top = kh - 1 - info.padInfo.top
  const left = kw - 1 - info.padInfo.left
  const bottom = h - oh + kh - 1 - top
  const right = w - ow + kw - 1 - left
  const b = backend as tf.KernelBackend
  return scratch(b, (keep) => {
    let src = dy
    if (top < 0 || left < 0 || bottom < 0 || right < 0) {
      // more padding than kernel: those dy rows/columns never reach dx
      const cropTop = Math.max(0, -top), cropLeft = Math.max(0, -left)
      const size = [nb, oh - cropTop - Math.max(0, -bottom), ow - cropLeft - Math.max(0, -right), co]
      src = keep(run(b, tf.Slice, { x: dy }, { begin: [0, cropTop, cropLeft, 0], size }))
    }
    const flipped = keep(run(b, tf.Reverse, { x: filter }, { dims: [0, 1] }))
    const ft = keep(run(b, tf.Transpose, { x: flipped }, { perm: [0, 1, 3, 2] })) // [KH, KW, Co, Ci]
    const pads = explicit(Math.max(0, top), Math.max(0, bottom), Math.max(0, left), Math.max(0, right))
    return keep(conv2d(b, src, ft, pads, [1, 1]))
  })
}

/**
 * Registers the fast `Conv2DBackpropFilter` and `Conv2DBackpropInput` kernels for the wasm backend.
 * Idempotent; requires `@tensorflow/tfjs-backend-wasm` to have been imported (its kernels registered).
 */
export const registerWasmConvGradients = (): void => {
  if (tf.getKernel(tf.Conv2D, BACKEND) === undefined) {
    throw new Error(
      "effect-deq convGrad: the wasm backend is not loaded; import \"@tensorflow/tfjs-backend-wasm\" first"
    )
  }
  const filterKernel = tf.getKernel(tf.Conv2DBackpropFilter, BACKEND)
  if (filterKernel?.kernelFunc !== conv2DBackpropFilter) {
    if (filterKernel !== undefined) tf.unregisterKernel(tf.Conv2DBackpropFilter, BACKEND)
    tf.registerKernel({ kernelName: tf.Conv2DBackpropFilter, backendName: BACKEND, kernelFunc: conv2DBackpropFilter })
  }
  const inputKernel = tf.getKernel(tf.Conv2DBackpropInput, BACKEND)
  if (inputKernel?.kernelFunc !== conv2DBackpropInput) {
    nativeInput = inputKernel
    if (inputKernel !== undefined) tf.unregisterKernel(tf.Conv2DBackpropInput, BACKEND)
    const config: tf.KernelConfig = {
      kernelName: tf.Conv2DBackpropInput,
      backendName: BACKEND,
      kernelFunc: conv2DBackpropInput
    }
    // if the wasm backend is initialised after this call, the native kernel still needs its set-up
    if (inputKernel?.setupFunc !== undefined) config.setupFunc = inputKernel.setupFunc
    tf.registerKernel(config)
  }
}

/**
 * Undoes {@link registerWasmConvGradients}: removes our weight-gradient kernel and restores the native wasm
 * input-gradient kernel. For benchmarks and tests that compare against the stock backend.
 */
export const unregisterWasmConvGradients = (): void => {
  if (tf.getKernel(tf.Conv2DBackpropFilter, BACKEND)?.kernelFunc === conv2DBackpropFilter) {
    tf.unregisterKernel(tf.Conv2DBackpropFilter, BACKEND)
  }
  if (tf.getKernel(tf.Conv2DBackpropInput, BACKEND)?.kernelFunc === conv2DBackpropInput) {
    tf.unregisterKernel(tf.Conv2DBackpropInput, BACKEND)
    if (nativeInput !== undefined) tf.registerKernel(nativeInput)
    nativeInput = undefined
  }
}

/**
 * Whether our kernels are the ones currently registered for wasm.
 */
export const wasmConvGradientsRegistered = (): boolean =>
  tf.getKernel(tf.Conv2DBackpropFilter, BACKEND)?.kernelFunc === conv2DBackpropFilter &&
  tf.getKernel(tf.Conv2DBackpropInput, BACKEND)?.kernelFunc === conv2DBackpropInput
