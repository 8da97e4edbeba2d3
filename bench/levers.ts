/**
 * The speed levers the benchmark reports and can switch: which are on in this process, and the settings
 * `--levers all` runs as separate columns. A lever is one entry of {@link levers}; adding one (or wiring a lever
 * to its real switch once it exists) is one line there.
 *
 * - native: oneDNN conv/matMul kernels on the wasm backend (src/internal/tensor/native*.ts, env DEQ_NATIVE=0/1);
 * - workers: the workload's batch split over this thread and a worker thread (bench/split.ts), as the `workers`
 *   setting splits a training batch.
 */

/** One setting of a lever: its label in the tables and how to switch to it. */
export interface LeverSetting {
  readonly label: string
  readonly apply: () => Promise<void>
}

/** A lever: what is on now (e.g. "on", "off", "2", "not available") and the settings it can be run with. */
export interface Lever {
  readonly name: string
  readonly current: () => Promise<string>
  /** the settings `--levers all` compares; empty when the lever cannot be switched here */
  readonly settings: () => Promise<ReadonlyArray<LeverSetting>>
  /** back to the setting the environment asks for */
  readonly reset: () => Promise<void>
}

/** A module that may not exist yet (another part of the project adds it); undefined when it does not. */
const optionalImport = async (specifier: string): Promise<Record<string, unknown> | undefined> => {
  try {
    return (await import(specifier)) as Record<string, unknown>
  } catch {
    return undefined
  }
}

interface NativeModule {
  readonly nativeKernels: () => {
    readonly active: boolean
    readonly kernels: ReadonlyArray<string>
    readonly threads: number
    readonly version?: string
    readonly reason?: string
  }
  readonly registerNativeKernels: (env?: NodeJS.ProcessEnv) => unknown
}

const nativeModule = async (): Promise<NativeModule | undefined> => {
  const m = await optionalImport(new URL("../src/internal/tensor/native.ts", import.meta.url).href)
  return typeof m?.["nativeKernels"] === "function" && typeof m["registerNativeKernels"] === "function" ?
    (m as unknown as NativeModule) :
    undefined
}

/**
 * Native kernels (src/internal/tensor/native.ts: `nativeKernels()` tells whether they serve the wasm backend,
 * `registerNativeKernels(env)` switches them by DEQ_NATIVE); "not available" while that module is absent.
 */
const native: Lever = {
  name: "native",
  current: async () => {
    const m = await nativeModule()
    if (m === undefined) return "not available"
    const s = m.nativeKernels()
    return s.active ?
      `on (oneDNN ${s.version ?? "?"} for ${s.kernels.join(", ")}, ${s.threads} thread${s.threads === 1 ? "" : "s"})` :
      `off (${s.reason ?? "inactive"})`
  },
  settings: async () => {
    const m = await nativeModule()
    if (m === undefined) return []
    // a machine without the addon can only run "off"
    m.registerNativeKernels({ ...process.env, DEQ_NATIVE: "1" })
    const can = m.nativeKernels().active
    m.registerNativeKernels(process.env)
    if (!can) return []
    return [false, true].map((on) => ({
      label: on ? "native on" : "native off",
      apply: async () => {
        nativeAsked = { DEQ_NATIVE: on ? "1" : "0" }
        m.registerNativeKernels({ ...process.env, ...nativeEnv() })
      }
    }))
  },
  reset: async () => {
    nativeAsked = {}
    ;(await nativeModule())?.registerNativeKernels(process.env)
  }
}

/** The native setting the last column asked for (the workers lever re-applies it with one oneDNN thread). */
let nativeAsked: Record<string, string> = {}
/** Threads of the data-parallel split the current column runs (bench/split.ts); 1: this thread alone. */
let splitThreads = 1

/** The threads the current column splits each workload over (compare.ts reads it per sample). */
export const benchWorkers = (): number => splitThreads

/** The native setting every thread of the current column uses (DEQ_NATIVE, DEQ_NATIVE_THREADS). */
export const nativeEnv = (): Record<string, string> =>
  ({ ...nativeAsked, ...(splitThreads > 1 ? { DEQ_NATIVE_THREADS: "1" } : {}) })

/**
 * Workers: 1 (this thread) or 2 (the batch split over this thread and a worker thread, bench/split.ts); with 2,
 * each thread's native kernels use one oneDNN thread, as in the `workers` setting.
 */
const workers: Lever = {
  name: "workers",
  current: async () => `${splitThreads}`,
  settings: async () =>
    [1, 2].map((n) => ({
      label: `workers ${n}`,
      apply: async () => {
        splitThreads = n
        const m = await nativeModule()
        m?.registerNativeKernels({ ...process.env, ...nativeEnv() })
      }
    })),
  reset: async () => {
    splitThreads = 1
  }
}

/** The levers, in table order. */
export const levers: ReadonlyArray<Lever> = [native, workers]

/** "native: not available, workers: 1": the current state of every lever. */
export const describeLevers = async (): Promise<Record<string, string>> => {
  const out: Record<string, string> = {}
  for (const l of levers) out[l.name] = await l.current()
  return out
}

/** Puts every lever back to what the environment asks for (after a `--levers all` run). */
export const resetLevers = async (): Promise<void> => {
  for (const l of levers) await l.reset()
}

/** One column of a `--levers all` run: its label and how to switch every lever to it. */
export interface Combination {
  readonly label: string
  readonly apply: () => Promise<void>
}

/**
 * The columns to measure: with `all`, every combination of the switchable levers' settings (the current
 * configuration alone when none can be switched); otherwise only the current configuration.
 */
export const combinations = async (all: boolean): Promise<ReadonlyArray<Combination>> => {
  const current: Combination = { label: "ours", apply: async () => undefined }
  if (!all) return [current]
  let combos: Array<Array<LeverSetting>> = [[]]
  for (const l of levers) {
    const s = await l.settings()
    if (s.length > 0) combos = combos.flatMap((c) => s.map((x) => [...c, x]))
  }
  if (combos.length === 1 && combos[0]!.length === 0) return [current]
  return combos.map((c) => ({
    label: `ours (${c.map((x) => x.label).join(", ")})`,
    apply: async () => {
      for (const x of c) await x.apply()
    }
  }))
}
