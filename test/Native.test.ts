/**
 * Native (oneDNN) kernels on wasm: the four kernels against the cpu backend over random shapes, strides and
 * paddings; gradients of a small conv network against pure wasm; fallbacks, faults, leaks, threads, a
 * worker_thread, the off switch and a missing addon.
 *
 * Relative error, as in test/Tensor.test.ts: max|a - b| / max(max|b|, 1e-6), bound 1e-5.
 * Without the addon (no libdnnl-dev, or native/build/Release/deq_native.node moved away) the kernel tests are
 * skipped with one line; the off-switch and missing-addon tests still run.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import { availableParallelism } from "node:os"
import { Worker } from "node:worker_threads"
import {
  addonPath,
  type Addon,
  describeKernels,
  loadAddon,
  nativeAddon,
  nativeCounts,
  nativeKernels,
  nativeSwitchedOff,
  registerNativeKernels,
  replaceAddon,
  resetNativeCounts,
  setMatMulMinWork,
  setNativeThreads,
  unregisterNativeKernels
} from "../src/internal/tensor/native.ts"
import { noLeaks, stream, tf, useBackend } from "../src/Tensor.ts"

type Shape4 = [number, number, number, number]
type Pad = "same" | "valid" | number | tf.backend_util.ExplicitPadding

const probe = loadAddon()
const built = probe.ok && !nativeSwitchedOff()
if (!built) console.info(`Native.test: oneDNN kernel tests skipped: ${probe.ok ? "DEQ_NATIVE=0" : probe.reason}`)

const relErr = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length)
  let diff = 0, scale = 0
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!))
    scale = Math.max(scale, Math.abs(b[i]!))
  }
  return diff / Math.max(scale, 1e-6)
}

const uniform = (n: number, seed: number): Float32Array => {
  const s = stream(seed)
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) out[i] = 2 * s.next() - 1
  return out
}

const size = (shape: ReadonlyArray<number>) => shape.reduce((a, b) => a * b, 1)

const liveCounts = () => [tf.memory().numTensors, tf.engine().backend.numDataIds()] as const

/** Runs `f` on `backend` and asserts nothing was left behind (engine tensors and backend buffers). */
const onBackend = async <A>(backend: "wasm" | "cpu", f: () => A): Promise<A> => {
  expect(await tf.setBackend(backend)).toBe(true)
  const before = liveCounts()
  const a = noLeaks(f)
  expect(liveCounts()).toEqual(before)
  return a
}

const counts = (name: string) => nativeCounts().counts[name]!

interface ConvCase {
  readonly x: Shape4
  readonly w: Shape4
  readonly stride: number
  readonly pad: Pad
  readonly seed: number
}

/** y = conv2d(x, W) and dL/dx, dL/dW of L = sum(y * R) for a fixed random R, on the active backend. */
const convAll = (c: ConvCase): { y: Float32Array; dx: Float32Array; dw: Float32Array } =>
  tf.tidy(() => {
    const x = tf.tensor4d(uniform(size(c.x), c.seed), c.x)
    const w = tf.tensor4d(uniform(size(c.w), c.seed + 1), c.w)
    const y = tf.conv2d(x, w, c.stride, c.pad)
    const r = tf.tensor(uniform(size(y.shape), c.seed + 2), y.shape)
    const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
      tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.stride, c.pad).mul(r).sum()
    )([x, w])
    return { y: y.dataSync() as Float32Array, dx: dx!.dataSync() as Float32Array, dw: dw!.dataSync() as Float32Array }
  })

const convCase: fc.Arbitrary<ConvCase> = fc
  .record({
    batch: fc.integer({ min: 1, max: 3 }),
    h: fc.integer({ min: 3, max: 12 }),
    w: fc.integer({ min: 3, max: 12 }),
    ci: fc.integer({ min: 1, max: 9 }),
    co: fc.integer({ min: 1, max: 9 }),
    kh: fc.integer({ min: 1, max: 5 }),
    kw: fc.integer({ min: 1, max: 5 }),
    stride: fc.integer({ min: 1, max: 2 }),
    pad: fc.oneof(
      fc.constant<"same">("same"),
      fc.constant<"valid">("valid"),
      fc.integer({ min: 0, max: 2 }),
      fc.tuple(
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 3 })
      )
    ),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 })
  })
  .map(({ batch, ci, co, h, kh, kw, pad, seed, stride, w }): ConvCase => {
    kh = Math.min(kh, h)
    kw = Math.min(kw, w)
    // tfjs 4.22 sizes a numeric-padding conv with the filter height on both axes (see test/Tensor.test.ts)
    if (typeof pad === "number") kh = kw = Math.min(kh, kw)
    const p: Pad = Array.isArray(pad) ? [[0, 0], [pad[0], pad[1]], [pad[2], pad[3]], [0, 0]] : pad
    return { x: [batch, h, w, ci], w: [kh, kw, ci, co], stride, pad: p, seed }
  })

interface MatMulCase {
  readonly a: ReadonlyArray<number>
  readonly b: ReadonlyArray<number>
  readonly ta: boolean
  readonly tb: boolean
  readonly seed: number
}

const matMulCase: fc.Arbitrary<MatMulCase> = fc
  .record({
    m: fc.integer({ min: 1, max: 9 }),
    k: fc.integer({ min: 1, max: 9 }),
    n: fc.integer({ min: 1, max: 9 }),
    batch: fc.constantFrom<ReadonlyArray<number>>([], [3], [2, 2]),
    // which side has all-1 batch dimensions (is broadcast), if any
    broadcast: fc.constantFrom("none", "a", "b"),
    ta: fc.boolean(),
    tb: fc.boolean(),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 })
  })
  .map(({ batch, broadcast, k, m, n, seed, ta, tb }): MatMulCase => {
    const ones = batch.map(() => 1)
    const outerA = broadcast === "a" ? ones : batch
    const outerB = broadcast === "b" ? ones : batch
    return { a: [...outerA, ...(ta ? [k, m] : [m, k])], b: [...outerB, ...(tb ? [n, k] : [k, n])], ta, tb, seed }
  })

const matMulOf = (c: MatMulCase): Float32Array =>
  tf.tidy(() => {
    const a = tf.tensor(uniform(size(c.a), c.seed), [...c.a])
    const b = tf.tensor(uniform(size(c.b), c.seed + 1), [...c.b])
    return tf.matMul(a, b, c.ta, c.tb).dataSync() as Float32Array
  })

const measured = { y: 0, dx: 0, dw: 0, mm: 0, net: 0 }

describe.skipIf(!built)("native oneDNN kernels", () => {
  beforeAll(async () => {
    const backend = await useBackend("wasm")
    expect(backend.name).toBe("wasm")
  })
  afterEach(async () => {
    await tf.setBackend("wasm")
    setMatMulMinWork(0)
    expect(registerNativeKernels().active).toBe(true)
  })
  afterAll(() => {
    console.info(
      `native vs cpu max relative error: conv ${measured.y.toExponential(2)}, dx ${measured.dx.toExponential(2)}, ` +
        `dW ${measured.dw.toExponential(2)}, matMul ${measured.mm.toExponential(2)}; ` +
        `network gradients vs pure wasm ${measured.net.toExponential(2)}`
    )
  })

  it("serves the four kernels, with the thread count of DEQ_NATIVE_THREADS or the cores", () => {
    const s = nativeKernels()
    expect(s.active).toBe(true)
    expect(s.kernels).toEqual(["Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "BatchMatMul"])
    const want = Number(process.env["DEQ_NATIVE_THREADS"] ?? availableParallelism())
    expect(s.threads).toBe(want)
    expect(describeKernels()).toContain("kernels: oneDNN")
    expect(describeKernels()).toContain("BatchMatMul")
    const one = registerNativeKernels({ ...process.env, DEQ_NATIVE_THREADS: "1" })
    expect(one.threads).toBe(1)
    expect(nativeAddon()!.threads()).toBe(1)
    const bad = registerNativeKernels({ ...process.env, DEQ_NATIVE_THREADS: "many" })
    expect(bad.warning).toMatch(/DEQ_NATIVE_THREADS="many" is not a positive integer/)
    expect(bad.threads).toBe(availableParallelism())
    expect(() => setNativeThreads(0)).toThrow(/positive integer/)
  })

  it("conv forward and both gradients match the cpu backend, all served natively (property)", async () => {
    setMatMulMinWork(0)
    await fc.assert(
      fc.asyncProperty(convCase, async (c) => {
        resetNativeCounts()
        const nat = await onBackend("wasm", () => convAll(c))
        const served = [counts("Conv2D"), counts("Conv2DBackpropInput"), counts("Conv2DBackpropFilter")]
        const cpu = await onBackend("cpu", () => convAll(c))
        const e = { y: relErr(nat.y, cpu.y), dx: relErr(nat.dx, cpu.dx), dw: relErr(nat.dw, cpu.dw) }
        measured.y = Math.max(measured.y, e.y)
        measured.dx = Math.max(measured.dx, e.dx)
        measured.dw = Math.max(measured.dw, e.dw)
        expect(e.y).toBeLessThanOrEqual(1e-5)
        expect(e.dx).toBeLessThanOrEqual(1e-5)
        expect(e.dw).toBeLessThanOrEqual(1e-5)
        // every conv of this case went to oneDNN, none fell back
        for (const s of served) {
          expect(s.native).toBeGreaterThanOrEqual(1)
          expect(s.fallback).toBe(0)
        }
      }),
      { seed: 7, numRuns: 40 }
    )
    expect(nativeCounts().lastError).toBeUndefined()
  })

  it("matMul with transposes and batch broadcasting matches the cpu backend (property)", async () => {
    setMatMulMinWork(0)
    await fc.assert(
      fc.asyncProperty(matMulCase, async (c) => {
        resetNativeCounts()
        const nat = await onBackend("wasm", () => matMulOf(c))
        expect(counts("BatchMatMul")).toEqual({ native: 1, fallback: 0 })
        const cpu = await onBackend("cpu", () => matMulOf(c))
        const e = relErr(nat, cpu)
        measured.mm = Math.max(measured.mm, e)
        expect(e).toBeLessThanOrEqual(1e-5)
      }),
      { seed: 11, numRuns: 60 }
    )
  })

  it("gradients of a small conv network (weights and input) match the pure-wasm path", async () => {
    setMatMulMinWork(0)
    const grads = () =>
      tf.tidy(() => {
        const x = tf.tensor4d(uniform(4 * 10 * 10 * 3, 21), [4, 10, 10, 3])
        const w1 = tf.tensor4d(uniform(3 * 3 * 3 * 8, 22), [3, 3, 3, 8])
        const w2 = tf.tensor4d(uniform(3 * 3 * 8 * 8, 23), [3, 3, 8, 8])
        const w3 = tf.tensor4d(uniform(3 * 3 * 8 * 6, 24), [3, 3, 8, 6])
        const wd = tf.tensor2d(uniform(6 * 5, 25), [6, 5])
        const ones = tf.ones([4, 1, 16])
        const loss = (xi: tf.Tensor, a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, d: tf.Tensor) => {
          const h1 = tf.relu(tf.conv2d(xi as tf.Tensor4D, a as tf.Tensor4D, 1, "same"))
          const h2 = tf.relu(tf.conv2d(h1, b as tf.Tensor4D, 2, "same")) // [4, 5, 5, 8]
          const h3 = tf.conv2d(h2, c as tf.Tensor4D, 1, [[0, 0], [1, 0], [0, 1], [0, 0]]) // [4, 4, 4, 6]
          // per-sample spatial sums as a batched matMul, as the models' GroupNorm does
          const pooled = tf.matMul(ones, tf.reshape(h3, [4, 16, 6])).reshape([4, 6])
          const logits = tf.matMul(pooled, d as tf.Tensor2D)
          return tf.logSoftmax(logits).slice([0, 0], [4, 1]).sum().neg()
        }
        return tf.grads(loss)([x, w1, w2, w3, wd]).map((g) => g.dataSync() as Float32Array)
      })
    resetNativeCounts()
    const nat = await onBackend("wasm", grads)
    for (const name of ["Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "BatchMatMul"]) {
      expect(counts(name).native).toBeGreaterThan(0)
      expect(counts(name).fallback).toBe(0)
    }
    unregisterNativeKernels()
    expect(nativeKernels().active).toBe(false)
    resetNativeCounts()
    const wasm = await onBackend("wasm", grads)
    expect(counts("Conv2D").native).toBe(0)
    for (let i = 0; i < wasm.length; i++) {
      const e = relErr(nat[i]!, wasm[i]!)
      measured.net = Math.max(measured.net, e)
      expect(e).toBeLessThanOrEqual(1e-5)
      // the gradient is not trivially zero
      expect(Math.max(...Array.from(wasm[i]!, Math.abs))).toBeGreaterThan(1e-5)
    }
  })

  it("falls back to the previous kernel for what it does not cover, with the same answer", async () => {
    const dilated = () =>
      tf.tidy(() =>
        tf.conv2d(tf.tensor4d(uniform(2 * 9 * 9 * 3, 31), [2, 9, 9, 3]), tf.tensor4d(uniform(36, 32), [2, 2, 3, 3]), 1, "same", "NHWC", 2)
          .dataSync()
      )
    resetNativeCounts()
    const nat = await onBackend("wasm", dilated)
    expect(counts("Conv2D")).toEqual({ native: 0, fallback: 1 })
    const cpu = await onBackend("cpu", dilated)
    expect(relErr(nat, cpu)).toBeLessThanOrEqual(1e-5)
    // small matmuls stay on wasm unless the threshold is lowered
    setMatMulMinWork(1_000_000)
    resetNativeCounts()
    const small = await onBackend("wasm", () => matMulOf({ a: [8, 8], b: [8, 8], ta: false, tb: false, seed: 3 }))
    expect(counts("BatchMatMul")).toEqual({ native: 0, fallback: 1 })
    expect(relErr(small, await onBackend("cpu", () => matMulOf({ a: [8, 8], b: [8, 8], ta: false, tb: false, seed: 3 }))))
      .toBeLessThanOrEqual(1e-5)
    // int32 matmul is not ours: wasm's own error surfaces
    await tf.setBackend("wasm")
    expect(() => noLeaks(() => tf.tidy(() => tf.matMul(tf.ones([2, 2], "int32"), tf.ones([2, 2], "int32")))))
      .toThrow(/non-float32|float32/)
  })

  it("an addon that throws leaves the answer and the heap as pure wasm would, and is not asked again", async () => {
    const real = nativeAddon()!
    let calls = 0
    const failing: Addon = {
      ...real,
      run: () => {
        calls++
        throw new Error("oneDNN: could not create a primitive (simulated)")
      }
    }
    const c: ConvCase = { x: [2, 7, 7, 3], w: [3, 3, 3, 4], stride: 2, pad: "same", seed: 41 }
    const want = await onBackend("cpu", () => convAll(c))
    replaceAddon(failing)
    try {
      resetNativeCounts()
      const first = await onBackend("wasm", () => convAll(c))
      const second = await onBackend("wasm", () => convAll(c))
      for (const got of [first, second]) {
        expect(relErr(got.y, want.y)).toBeLessThanOrEqual(1e-5)
        expect(relErr(got.dx, want.dx)).toBeLessThanOrEqual(1e-5)
        expect(relErr(got.dw, want.dw)).toBeLessThanOrEqual(1e-5)
      }
      // refused shapes are remembered: the second run did not call the addon again
      expect(calls).toBe(3)
      expect(counts("Conv2D").native).toBe(0)
      expect(counts("Conv2DBackpropInput")).toEqual({ native: 0, fallback: 2 })
      expect(counts("Conv2DBackpropFilter")).toEqual({ native: 0, fallback: 2 })
      expect(nativeCounts().lastError).toContain("simulated")
    } finally {
      replaceAddon(real)
    }
  })

  it("the addon checks its views against the shapes (never writes outside a tensor)", () => {
    const addon = nativeAddon()!
    const params = Int32Array.of(1, 1, 2, 2, 2, 0, 0)
    const c = new Float32Array(4)
    addon.run(3, params, Float32Array.of(1, 2, 3, 4), Float32Array.of(1, 0, 0, 1), c)
    expect(Array.from(c)).toEqual([1, 2, 3, 4])
    expect(() => addon.run(3, params, new Float32Array(4), new Float32Array(4), new Float32Array(3))).toThrow(/length/)
    expect(() => addon.run(3, Int32Array.of(1, 1, 0, 2, 2, 0, 0), new Float32Array(0), new Float32Array(4), new Float32Array(0)))
      .toThrow(/positive/)
    expect(() => addon.run(9, params, c, c, c)).toThrow(/kind/)
    expect(addon.implOf(0, Int32Array.of(1, 8, 8, 4, 3, 3, 4, 8, 8, 1, 1, 1, 1, 1, 1)).length).toBeGreaterThan(0)
  })

  it("leaves no tensors or wasm buffers behind over many native calls", async () => {
    setMatMulMinWork(0)
    const c: ConvCase = { x: [3, 9, 9, 4], w: [3, 3, 4, 5], stride: 1, pad: "valid", seed: 51 }
    await onBackend("wasm", () => convAll(c))
    const before = liveCounts()
    const heap = tf.memory().numBytes
    for (let i = 0; i < 20; i++) await onBackend("wasm", () => convAll(c))
    expect(liveCounts()).toEqual(before)
    expect(tf.memory().numBytes).toBe(heap)
  })

  it("loads in a worker_thread with its own thread count", async () => {
    const code = `
      const { parentPort, workerData } = require("node:worker_threads")
      const addon = require(workerData)
      const threads = addon.setThreads(1)
      const c = new Float32Array(4)
      addon.run(3, Int32Array.of(1, 1, 2, 2, 2, 0, 0), Float32Array.of(1, 2, 3, 4), Float32Array.of(0, 1, 1, 0), c)
      parentPort.postMessage({ threads, c: Array.from(c), plans: addon.planCount() })
    `
    const mainThreads = nativeAddon()!.threads()
    const result = await new Promise<{ threads: number; c: Array<number>; plans: number }>((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: addonPath })
      w.once("message", (m) => {
        resolve(m)
        void w.terminate()
      })
      w.once("error", reject)
    })
    expect(result).toEqual({ threads: 1, c: [2, 1, 4, 3], plans: 1 })
    // the worker's setting is its own
    expect(nativeAddon()!.threads()).toBe(mainThreads)
  })
})

describe("native kernels switched off or absent", () => {
  beforeAll(async () => {
    await useBackend("wasm")
  })
  afterAll(() => {
    registerNativeKernels()
  })

  it("DEQ_NATIVE=0 leaves wasm's kernels in place and says so", () => {
    const s = registerNativeKernels({ ...process.env, DEQ_NATIVE: "0" })
    expect(s.active).toBe(false)
    expect(s.reason).toBe("off (DEQ_NATIVE=0)")
    expect(nativeKernels().kernels).toEqual([])
    expect(describeKernels()).toBe("kernels: wasm (native: off (DEQ_NATIVE=0))")
    resetNativeCounts()
    const y = noLeaks(() => tf.tidy(() => tf.conv2d(tf.ones([1, 4, 4, 2]) as tf.Tensor4D, tf.ones([3, 3, 2, 2]) as tf.Tensor4D, 1, "same").dataSync()))
    expect(y[0]).toBe(8) // a corner: 2x2 window x 2 channels of ones
    expect(counts("Conv2D")).toEqual({ native: 0, fallback: 0 })
  })

  it("a missing addon file is reported, not thrown", () => {
    const r = loadAddon("/nonexistent/deq_native.node")
    expect(r.ok).toBe(false)
    if (!r.ok) expect(r.reason).toMatch(/addon not built .*\/nonexistent\/deq_native.node is absent/)
  })
})
