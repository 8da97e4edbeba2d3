/**
 * Where the time of a workload goes: every wasm kernel is wrapped to count its calls and its exclusive wall time
 * (kernels that call other kernels, like our conv gradients, are charged only their own part), and the process'
 * page faults are read from /proc around the timed call. What no kernel accounts for is JS: the engine's
 * bookkeeping, the tape, tidy scopes and our own code.
 *
 * Run: `npx tsx bench/profile.ts [--model conv|fc] [--workload train-step|attack-step|...] [--batch 64]
 * [--channels 16] [--shapes]` (under the heavy-job lock; `--shapes` splits rows by input shapes).
 */
import * as fs from "node:fs"
import { pathToFileURL } from "node:url"
import { Effect } from "effect"
import * as Models from "../src/Models.ts"
import * as Report from "../src/Report.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import { defaultSpec, makeWorkloads, type WorkloadName, workloadNames } from "./workloads.ts"

/** Calls and exclusive milliseconds per kernel (and input shapes, when asked). */
export interface KernelStat {
  readonly kernel: string
  calls: number
  ms: number
}

/** An instrumented wasm backend: statistics since the last reset, and a way back to the plain kernels. */
export interface Instrumented {
  readonly reset: () => void
  readonly stats: () => ReadonlyArray<KernelStat>
  readonly restore: () => void
}

/** Wraps every registered wasm kernel (call it after the backend and the project's kernels are set up). */
export const instrument = (options: { readonly shapes?: boolean } = {}): Instrumented => {
  const originals = tf.getKernelsForBackend("wasm")
  const table = new Map<string, KernelStat>()
  // exclusive time: a kernel's children are subtracted from it
  const childMs: Array<number> = []
  for (const k of originals) {
    const inner = k.kernelFunc
    tf.unregisterKernel(k.kernelName, "wasm")
    tf.registerKernel({
      ...k,
      kernelFunc: (args) => {
        childMs.push(0)
        const start = performance.now()
        try {
          return inner(args)
        } finally {
          const total = performance.now() - start
          const own = total - childMs.pop()!
          if (childMs.length > 0) childMs[childMs.length - 1]! += total
          const shapes = options.shapes === true ?
            ` ${Object.values(args.inputs).map((t) => `[${(t as tf.TensorInfo).shape.join(",")}]`).join(" ")}` :
            ""
          const key = k.kernelName + shapes
          const s = table.get(key) ?? { kernel: key, calls: 0, ms: 0 }
          s.calls++
          s.ms += own
          table.set(key, s)
        }
      }
    })
  }
  return {
    reset: () => table.clear(),
    stats: () => [...table.values()].sort((a, b) => b.ms - a.ms),
    restore: () => {
      for (const k of originals) {
        tf.unregisterKernel(k.kernelName, "wasm")
        tf.registerKernel(k)
      }
    }
  }
}

/** Minor and major page faults of this process so far (Linux; zeros elsewhere). */
export const pageFaults = (): { readonly minor: number; readonly major: number } => {
  try {
    // fields after the parenthesised command name: state is field 3, minflt 10, majflt 12
    const stat = fs.readFileSync("/proc/self/stat", "utf8")
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return { minor: Number(f[7]), major: Number(f[9]) }
  } catch {
    return { minor: 0, major: 0 }
  }
}

/** One profile: wall time, kernel time by kernel, page faults. */
export interface Profile {
  readonly wallMs: number
  /** user + system CPU time of this process per call (robust to other processes on a busy machine) */
  readonly cpuMs: number
  readonly kernels: ReadonlyArray<KernelStat>
  readonly minorFaults: number
  readonly majorFaults: number
}

/** Profiles `runs` calls of `f` (after the caller's warm-up). */
export const profile = (ins: Instrumented, f: () => void, runs = 1): Profile => {
  ins.reset()
  const before = pageFaults()
  const cpu = process.cpuUsage()
  const start = performance.now()
  for (let i = 0; i < runs; i++) f()
  const wallMs = (performance.now() - start) / runs
  const used = process.cpuUsage(cpu)
  const after = pageFaults()
  return {
    wallMs,
    cpuMs: (used.user + used.system) / 1000 / runs,
    kernels: ins.stats().map((s) => ({ ...s, calls: s.calls / runs, ms: s.ms / runs })),
    minorFaults: (after.minor - before.minor) / runs,
    majorFaults: (after.major - before.major) / runs
  }
}

/** The profile as Markdown: the top kernels, the rest, and what no kernel accounts for. */
export const profileTable = (p: Profile, top = 20): string => {
  const kernelMs = p.kernels.reduce((a, k) => a + k.ms, 0)
  const shown = p.kernels.slice(0, top)
  const rest = p.kernels.slice(top)
  const pct = (ms: number) => `${((100 * ms) / p.wallMs).toFixed(1)}%`
  return [
    `wall ${p.wallMs.toFixed(1)} ms per call (CPU ${p.cpuMs.toFixed(1)} ms); kernels ${kernelMs.toFixed(1)} ms (${pct(kernelMs)}); ` +
    `outside kernels (JS, engine, tape) ${(p.wallMs - kernelMs).toFixed(1)} ms (${pct(p.wallMs - kernelMs)}); ` +
    `page faults ${p.minorFaults.toFixed(0)} minor, ${p.majorFaults.toFixed(0)} major per call`,
    "",
    Report.table(
      ["kernel", "calls", "ms", "% of wall"],
      [
        ...shown.map((k) => [k.kernel, k.calls.toFixed(0), k.ms.toFixed(1), pct(k.ms)]),
        ...(rest.length > 0 ?
          [[`${rest.length} others`, rest.reduce((a, k) => a + k.calls, 0).toFixed(0), rest.reduce((a, k) => a + k.ms, 0).toFixed(1), pct(rest.reduce((a, k) => a + k.ms, 0))]] :
          [])
      ]
    )
  ].join("\n")
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const args = process.argv.slice(2)
  const value = (flag: string, fallback: string) => {
    const i = args.indexOf(flag)
    return i >= 0 ? args[i + 1]! : fallback
  }
  const kind = value("--model", "conv")
  const workload = value("--workload", "train-step") as WorkloadName
  if (!workloadNames.includes(workload)) throw new Error(`unknown workload ${workload} (${workloadNames.join(", ")})`)
  const batch = Number(value("--batch", "64"))
  const runs = Number(value("--runs", "1"))
  await useBackend("wasm")
  const config = kind === "fc" ?
    new Models.FcConfig({ hidden: Number(value("--hidden", "256")) }) :
    new Models.ConvConfig({ channels: Number(value("--channels", "16")), groups: 4 })
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const model = yield* Models.build(config, { seed: 1 })
    const w = makeWorkloads(model, batch, defaultSpec)
    w.run[workload]()
    const ins = instrument({ shapes: args.includes("--shapes") })
    try {
      w.run[workload]()
      const p = profile(ins, w.run[workload], runs)
      console.log(`# ${workload} on ${model.summary}, batch ${batch}\n`)
      console.log(profileTable(p, Number(value("--top", "25"))))
    } finally {
      ins.restore()
      w.dispose()
    }
  })))
}
