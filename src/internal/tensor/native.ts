/**
 * Optional native kernels for the wasm backend: the oneDNN addon in native/ (built by `npm ci` when Debian's
 * libdnnl-dev is installed), its loader, and the registration of its kernels over wasm's.
 *
 * Off when the addon is absent (pure wasm, the default on a machine without libdnnl-dev) or when `DEQ_NATIVE=0`.
 * `DEQ_NATIVE_THREADS` sets oneDNN's thread count (default: the machine's cores); each worker_thread that loads
 * the addon has its own count ({@link setNativeThreads}). See docs/performance.md for the measured gains.
 *
 * @example
 * ```ts
 * import * as Tensor from "effect-deq/Tensor"
 *
 * // starting the wasm backend registers the native kernels when the addon is built and DEQ_NATIVE is not 0
 * Tensor.useBackend("wasm").then(() => {
 *   const native = Tensor.nativeKernels()
 *   console.log(native.active ? `oneDNN for ${native.kernels.join(", ")}` : `wasm only: ${native.reason}`)
 * })
 * ```
 */
import * as tf from "@tensorflow/tfjs"
import { existsSync } from "node:fs"
import { createRequire } from "node:module"
import { availableParallelism } from "node:os"
import { fileURLToPath } from "node:url"
import { type Addon, type KernelContext, type KernelCounts, makeKernels } from "./nativeKernels.ts"

export type { Addon, KernelCounts } from "./nativeKernels.ts"

const BACKEND = "wasm"

/** Where `npm ci` (native/build.mjs) puts the addon. */
export const addonPath: string = fileURLToPath(new URL("../../../native/build/Release/deq_native.node", import.meta.url))

/** Environment variables as read here (`process.env`; no Node types in the published declarations). */
export type Env = Readonly<Record<string, string | undefined>>

/** The addon, or why it could not be loaded. */
export type Loaded = { readonly ok: true; readonly addon: Addon } | { readonly ok: false; readonly reason: string }

/**
 * Loads the addon at `path` (default {@link addonPath}); never throws.
 */
export const loadAddon = (path: string = addonPath): Loaded => {
  if (!existsSync(path)) {
    return {
      ok: false,
      reason: `addon not built (${path} is absent; it is built by npm ci when libdnnl-dev is installed, or by npm run build:native)`
    }
  }
  // OpenMP threads that spin while waiting make a 2-thread call up to 100x slower when the cores are shared
  // (measured, docs/performance.md); libgomp reads this once, when the addon loads it, so the variable is set
  // only around the load and child processes (e.g. a PyTorch peer) do not inherit it
  const policy = process.env["OMP_WAIT_POLICY"]
  if (policy === undefined) process.env["OMP_WAIT_POLICY"] = "passive"
  try {
    return { ok: true, addon: createRequire(import.meta.url)(path) as Addon }
  } catch (e) {
    return { ok: false, reason: `addon failed to load: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}` }
  } finally {
    if (policy === undefined) delete process.env["OMP_WAIT_POLICY"]
  }
}

/** Which kernels serve the wasm backend, and why native ones do not when they do not. */
export interface NativeStatus {
  readonly active: boolean
  /** the tfjs kernel names served by oneDNN (empty when not active) */
  readonly kernels: ReadonlyArray<string>
  /** oneDNN's thread count for this thread's calls (0 when not active) */
  readonly threads: number
  /** the oneDNN version, when the addon loaded */
  readonly version?: string
  /** why native kernels are not active */
  readonly reason?: string
  /** a setting that was ignored, e.g. a malformed DEQ_NATIVE_THREADS */
  readonly warning?: string
}

let loaded: Loaded | undefined
let status: NativeStatus = { active: false, kernels: [], threads: 0, reason: "not registered yet" }

const ctx: KernelContext = {
  addon: undefined,
  previous: new Map(),
  counts: {},
  matMulMinWork: 0,
  refused: new Set(),
  lastError: undefined
}
const kernels = makeKernels(ctx)
for (const [name] of kernels) ctx.counts[name] = { native: 0, fallback: 0 }

/**
 * Matmuls below this many multiply-adds stay on wasm: there XNNPACK's call is cheaper than the addon's
 * (measured by bench/native.ts; see docs/performance.md).
 */
export const defaultMatMulMinWork = 65_536
ctx.matMulMinWork = defaultMatMulMinWork

/** Whether `DEQ_NATIVE` in `env` switches the native kernels off ("0", "false", "off", "no"). */
export const nativeSwitchedOff = (env: Env = process.env): boolean => {
  const v = env["DEQ_NATIVE"]
  return v !== undefined && ["0", "false", "off", "no"].includes(v.trim().toLowerCase())
}

const threadsFrom = (env: Env): { threads: number; warning?: string } => {
  const cores = availableParallelism()
  const raw = env["DEQ_NATIVE_THREADS"]
  if (raw === undefined || raw.trim() === "") return { threads: cores }
  const n = Number(raw)
  if (Number.isInteger(n) && n >= 1) return { threads: n }
  return { threads: cores, warning: `DEQ_NATIVE_THREADS="${raw}" is not a positive integer; using ${cores}` }
}

const isOurs = (name: string, fn: tf.KernelFunc): boolean => tf.getKernel(name, BACKEND)?.kernelFunc === fn

/**
 * Registers the native kernels over the wasm backend's current ones (which become their fallbacks), or removes
 * them when `DEQ_NATIVE=0` or the addon is absent. Call after the wasm backend is active and the project's
 * conv-gradient kernels are registered. Idempotent; returns the resulting status.
 */
export const registerNativeKernels = (env: Env = process.env): NativeStatus => {
  if (nativeSwitchedOff(env)) {
    unregisterNativeKernels()
    status = { active: false, kernels: [], threads: 0, reason: `off (DEQ_NATIVE=${env["DEQ_NATIVE"]})` }
    return status
  }
  loaded ??= loadAddon()
  if (!loaded.ok) {
    unregisterNativeKernels()
    status = { active: false, kernels: [], threads: 0, reason: loaded.reason }
    return status
  }
  if (tf.getKernel(tf.Conv2D, BACKEND) === undefined) {
    status = { active: false, kernels: [], threads: 0, reason: "the wasm backend is not loaded" }
    return status
  }
  const addon = loaded.addon
  const { threads, warning } = threadsFrom(env)
  addon.setThreads(threads)
  ctx.addon = addon
  for (const [name, kernelFunc] of kernels) {
    if (isOurs(name, kernelFunc)) continue
    const current = tf.getKernel(name, BACKEND)
    ctx.previous.set(name, current)
    if (current !== undefined) tf.unregisterKernel(name, BACKEND)
    const config: tf.KernelConfig = { kernelName: name, backendName: BACKEND, kernelFunc }
    // if the backend is initialised again, the kernel we fall back to still needs its set-up
    if (current?.setupFunc !== undefined) config.setupFunc = current.setupFunc
    tf.registerKernel(config)
  }
  status = {
    active: true,
    kernels: kernels.map(([name]) => name),
    threads: addon.threads(),
    version: addon.version(),
    ...(warning === undefined ? {} : { warning })
  }
  return status
}

/**
 * Removes the native kernels and restores the ones they replaced (for on/off comparisons). Idempotent.
 */
export const unregisterNativeKernels = (): void => {
  for (const [name, kernelFunc] of kernels) {
    if (!isOurs(name, kernelFunc)) continue
    tf.unregisterKernel(name, BACKEND)
    const prev = ctx.previous.get(name)
    if (prev !== undefined) tf.registerKernel(prev)
  }
  if (status.active) status = { active: false, kernels: [], threads: 0, reason: "unregistered" }
}

/**
 * Whether native kernels are active and which: for the backend log line and the benchmarks' `levers`.
 * A kernel another registration replaced since is not listed.
 */
export const nativeKernels = (): NativeStatus => {
  if (!status.active) return status
  const live = kernels.filter(([name, fn]) => isOurs(name, fn)).map(([name]) => name)
  return { ...status, active: live.length > 0, kernels: live, threads: ctx.addon?.threads() ?? 0 }
}

/**
 * One phrase for the backend log line: which kernels are in use, native or wasm, and why.
 */
export const describeKernels = (): string => {
  const s = nativeKernels()
  const warning = s.warning === undefined ? "" : `; ${s.warning}`
  return s.active
    ? `kernels: oneDNN ${s.version} for ${s.kernels.join(", ")} (${s.threads} thread${s.threads === 1 ? "" : "s"})${warning}, wasm for the rest`
    : `kernels: wasm (native: ${s.reason})`
}

/**
 * Sets oneDNN's thread count for the calling thread (a worker_thread sets its own, e.g. 1 per worker).
 * Returns the count in effect; 0 when the addon is not loaded.
 */
export const setNativeThreads = (n: number): number => {
  if (!Number.isInteger(n) || n < 1) throw new Error(`effect-deq native: thread count must be a positive integer, got ${n}`)
  if (ctx.addon === undefined) return 0
  const t = ctx.addon.setThreads(n)
  if (status.active) status = { ...status, threads: t }
  return t
}

/**
 * Sets the matmul size (multiply-adds) below which matmuls stay on wasm; 0 sends every float32 matmul the addon
 * covers to oneDNN (the tests do, to check small shapes). Returns the previous value.
 */
export const setMatMulMinWork = (work: number): number => {
  const prev = ctx.matMulMinWork
  ctx.matMulMinWork = Math.max(0, work)
  return prev
}

/** Per-kernel counts of native and fallback calls since the last {@link resetNativeCounts}, and the last refusal. */
export const nativeCounts = (): { readonly counts: Record<string, KernelCounts>; readonly lastError?: string } => ({
  counts: Object.fromEntries(Object.entries(ctx.counts).map(([k, v]) => [k, { ...v }])),
  ...(ctx.lastError === undefined ? {} : { lastError: ctx.lastError })
})

/** Zeroes the counters of {@link nativeCounts}. */
export const resetNativeCounts = (): void => {
  for (const c of Object.values(ctx.counts)) c.native = c.fallback = 0
  ctx.lastError = undefined
}

/** The loaded addon itself (benchmarks and tests), or undefined. */
export const nativeAddon = (): Addon | undefined => ctx.addon

/**
 * Replaces the addon the registered kernels call and forgets the shapes refused so far; returns the previous
 * addon. For fault tests (an addon that throws must leave the answer and the heap as pure wasm would).
 */
export const replaceAddon = (addon: Addon | undefined): Addon | undefined => {
  const prev = ctx.addon
  ctx.addon = addon
  ctx.refused.clear()
  return prev
}
