/**
 * The workers lever of the benchmark: a workload split over 2 threads, as the `workers` setting splits a batch.
 * The calling thread runs the workload on the first half of the batch, a worker thread (bench/splitWorker.ts,
 * its own wasm backend with the project's kernels, the same weights and native setting) on the second half; one
 * timed call posts the worker's half, runs this thread's half and waits for the worker: the wall time of the
 * data-parallel call, message round trip included. Not included: summing the two halves' parameter gradients
 * (one add per parameter, and for the real step the gradients' transfer; the training measurement of
 * docs/performance.md, "Workers", includes both).
 *
 * @example
 * ```
 * const split = await makeSplit(m, model, spec) // a worker with the model's weights, half a batch each
 * const ms = await split.time("train-step", 1)
 * await split.close()
 * ```
 */
import { Effect, Exit, Scope } from "effect"
import type * as Models from "../src/Models.ts"
import { entryOf, make as makePool, type Pool } from "../src/internal/tensor/pool.ts"
import type { BenchModel } from "./compare.ts"
import { makeWorkloads, type StepSpec, type WorkloadName, type Workloads } from "./workloads.ts"

/** What a split worker answers (bench/splitWorker.ts). */
export type SplitRequest =
  | {
    readonly kind: "load"
    readonly model: { readonly kind: "fc" | "conv"; readonly fields: Record<string, unknown> }
    readonly weights: Record<string, Float32Array>
    readonly batch: number
    readonly spec: StepSpec
  }
  | { readonly kind: "native"; readonly env: Record<string, string> }
  | { readonly kind: "run"; readonly workload: WorkloadName; readonly reps: number }

/** A model's workloads split over this thread and one worker. */
export interface Split {
  /** one timed call of `reps` repetitions on both halves: wall ms per repetition and this process's CPU ms */
  readonly time: (workload: WorkloadName, reps: number) => Promise<{ readonly ms: number; readonly cpuMs: number }>
  /** the native setting of the worker (the same DEQ_NATIVE / DEQ_NATIVE_THREADS as this thread) */
  readonly native: (env: Record<string, string>) => Promise<void>
  readonly close: () => Promise<void>
}

/** Starts the worker (the model's weights, the second half of the batch) and builds this thread's half. */
export const makeSplit = async (m: BenchModel, model: Models.Model, spec: StepSpec): Promise<Split> => {
  const scope = Effect.runSync(Scope.make())
  const half = Math.ceil(m.batch / 2)
  const weights = Object.fromEntries(model.params.map((p) => [p.name, Float32Array.from(p.variable.dataSync() as Float32Array)]))
  const init: SplitRequest = { kind: "load", model: { kind: m.kind, fields: { ...m.config } }, weights, batch: m.batch - half, spec }
  const pool: Pool<never> = await Effect.runPromise(
    makePool<never>({ entry: entryOf(import.meta.url, "splitWorker"), size: 1, init: () => ({ body: init }) }).pipe(Scope.provide(scope))
  )
  const mine: Workloads = makeWorkloads(model, half, spec)
  let nativeNow = ""
  return {
    time: async (workload, reps) => {
      const cpu = process.cpuUsage()
      const start = performance.now()
      const wait = await Effect.runPromise(pool.post(1, { body: { kind: "run", workload, reps } satisfies SplitRequest }))
      for (let i = 0; i < reps; i++) mine.run[workload]()
      await Effect.runPromise(wait)
      const ms = (performance.now() - start) / reps
      const used = process.cpuUsage(cpu)
      return { ms, cpuMs: (used.user + used.system) / 1000 / reps }
    },
    native: async (env) => {
      const key = JSON.stringify(env)
      if (key === nativeNow) return
      nativeNow = key
      await Effect.runPromise(pool.request(1, { body: { kind: "native", env } satisfies SplitRequest }))
    },
    close: async () => {
      mine.dispose()
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }
}
