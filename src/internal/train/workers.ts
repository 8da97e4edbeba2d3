/**
 * Data-parallel training on worker threads: each batch is split into contiguous row ranges, one per thread; the
 * calling thread computes the first with its own model, worker threads (workersEntry.ts, each with its own
 * backend, kernels and copy of the model) the others, all with the shard step (shard.ts); the gradients are summed
 * here and the caller applies the update. Parameters travel as transferable Float32Arrays, only when they changed
 * (once per step); the dataset is shared once, at start-up. The periodic evaluation is split by whole evaluation
 * batches, so its counts are exactly the single-thread ones. See docs/performance.md, "Workers".
 *
 * @example
 * ```
 * const sharder = yield* makeSharder({ model, data, config, context, evaluator }, 2) // lives as long as the Scope
 * const out = yield* sharder.step(indices, position) // the summed gradients of the batch
 * sharder.updated() // after applying them: the next message carries the new parameters
 * ```
 *
 * @internal
 */
import * as os from "node:os"
import { Effect, Schema, type Scope } from "effect"
import { AttackError } from "../../Adversary.ts"
import { type Dataset, gather, type Split } from "../../Data.ts"
import { ConfigError, WorkerError } from "../../Errors.ts"
import type { Model } from "../../Models.ts"
import { tf } from "../../Tensor.ts"
import { entryOf, make as makePool, type Pool, type RemoteFailure } from "../tensor/pool.ts"
import { TrainConfig, type WorkersSetting } from "./config.ts"
import { type Counts, evaluateBatches, evaluationBatches, type Evaluator } from "./evaluate.ts"
import type { Position } from "./schedule.ts"
import { combineShards, type ShardInput, type ShardOutput, shardStep } from "./shard.ts"
import type { StepContext } from "./step.ts"

/** A split as plain data a worker can rebuild (images and labels on shared memory). */
export type SplitData = Split

/** The messages a training worker answers (workersEntry.ts). */
export type WorkerRequest =
  | {
    readonly kind: "init"
    readonly backend: string
    readonly config: unknown
    readonly train: SplitData
    readonly test: SplitData
  }
  | ({ readonly kind: "step"; readonly params?: Record<string, Float32Array> } & Omit<ShardInput, "x" | "y" | "params">)
  | { readonly kind: "eval"; readonly params?: Record<string, Float32Array>; readonly epoch: number; readonly batches: ReadonlyArray<Int32Array> }

/** What a run's data-parallel step offers its loop. */
export interface Sharder {
  /** threads computing each batch (the calling thread included) */
  readonly threads: number
  /** one step's gradients and counts on the batch `indices`, summed over the shards */
  readonly step: (indices: Int32Array, position: Position) => Effect.Effect<ShardOutput, AttackError | ConfigError | WorkerError>
  /** the evaluation's counts, its batches split over the threads */
  readonly evaluate: (ev: Evaluator, epoch: number) => Effect.Effect<Counts, AttackError | ConfigError | WorkerError>
  /** the parameters changed (an update was applied): the next message to each worker carries them */
  readonly updated: () => void
}

/** What a sharded run shares with its workers. */
export interface ShardedRun {
  readonly model: Model
  readonly data: Dataset
  readonly config: TrainConfig
  readonly context: StepContext
  readonly evaluator: Evaluator
}

// ---------------------------------------------------------------------------------------------------------------
// the setting
// ---------------------------------------------------------------------------------------------------------------

/**
 * The thread count of a run's `stage`: an explicit `workers` as given; "auto": `DEQ_WORKERS` when set (a positive
 * integer or "auto"), else the measured choice (docs/performance.md, "Workers"): one thread when the 1-minute
 * load average (`load`, less this process's own thread before an evaluation) leaves no second core free (other
 * jobs hold them: a second thread only waits), on other backends (they thread themselves) and for FC training;
 * else one thread per free core. The evaluation's threads are worker threads only (the calling one waits).
 */
export const resolveWorkers = (
  setting: WorkersSetting,
  model: TrainConfig["model"],
  env: NodeJS.ProcessEnv = process.env,
  stage: "training" | "evaluation" = "training",
  load: number = os.loadavg()[0] ?? 0
): Effect.Effect<number, ConfigError> => {
  if (setting !== "auto") return Effect.succeed(setting)
  const raw = env["DEQ_WORKERS"]?.trim().toLowerCase()
  if (raw !== undefined && raw !== "" && raw !== "auto") {
    const n = Number(raw)
    if (!(Number.isInteger(n) && n >= 1)) {
      return Effect.fail(new ConfigError({ path: "DEQ_WORKERS", message: `DEQ_WORKERS="${env["DEQ_WORKERS"]}" is not a positive integer or "auto"` }))
    }
    return Effect.succeed(n)
  }
  const backend = tf.getBackend()
  if (backend !== "wasm" && backend !== "cpu") return Effect.succeed(1)
  const cores = os.availableParallelism()
  // an evaluation follows this process's own work (training, loading), which the load average still counts
  const others = Math.max(0, load - (stage === "evaluation" ? 1 : 0))
  const free = Math.floor(cores - others + 0.5)
  if (free < 2 || (model._tag === "fc" && stage === "training")) return Effect.succeed(1)
  return Effect.succeed(Math.min(cores, free))
}

/** `n` rows in `parts` contiguous ranges [from, to) whose sizes differ by at most one (no empty range). */
export const splitRows = (n: number, parts: number): Array<readonly [number, number]> => {
  const k = Math.max(1, Math.min(parts, n))
  const out: Array<readonly [number, number]> = []
  for (let i = 0, from = 0; i < k; i++) {
    const size = Math.floor(n / k) + (i < n % k ? 1 : 0)
    out.push([from, from + size])
    from += size
  }
  return out
}

// ---------------------------------------------------------------------------------------------------------------
// the pool
// ---------------------------------------------------------------------------------------------------------------

/** The first `count` images of a split, copied once onto shared memory (every worker reads the same copy). */
const shared = (split: Split, count = split.count): SplitData => {
  const n = Math.min(count, split.count)
  const per = split.height * split.width * split.channels
  const images = new Float32Array(new SharedArrayBuffer(n * per * 4))
  images.set(split.images.subarray(0, n * per))
  const labels = new Int32Array(new SharedArrayBuffer(n * 4))
  labels.set(split.labels.subarray(0, n))
  return { ...split, images, labels, count: n }
}

/** A worker's typed failure as the error it was (the shard step's errors), else a WorkerError. */
const revive = (f: RemoteFailure): AttackError | ConfigError | undefined => {
  if (f._tag === "AttackError") return new AttackError({ attack: String(f.fields["attack"] ?? "?"), message: f.message })
  if (f._tag === "ConfigError") return new ConfigError({ path: String(f.fields["path"] ?? ""), message: f.message })
  return undefined
}

/** the reply of a worker, checked for the shape this module sent for (a wrong shape is a defect of the protocol) */
const asOutput = (u: unknown): ShardOutput => u as ShardOutput
const asCounts = (u: unknown): Counts => u as Counts

/**
 * The data-parallel step of a run over `threads` threads (the calling one and threads - 1 workers), alive as
 * long as the Scope: the workers are spawned here (each builds its model and services from the config) and
 * terminated when the Scope closes.
 */
export const makeSharder = (run: ShardedRun, threads: number): Effect.Effect<Sharder, WorkerError, Scope.Scope> =>
  Effect.gen(function*() {
    const { model, data, config, context, evaluator } = run
    const init: WorkerRequest = {
      kind: "init",
      backend: tf.getBackend(),
      config: Schema.encodeSync(TrainConfig)(config),
      train: shared(data.train),
      test: shared(evaluator.test, evaluator.subset)
    }
    const pool: Pool<AttackError | ConfigError> = yield* makePool({
      entry: entryOf(import.meta.url, "workersEntry"),
      size: threads - 1,
      init: () => ({ body: init }),
      // each worker is one thread: native kernels (when built) must not start their own
      env: { DEQ_NATIVE_THREADS: "1" },
      revive
    })
    let version = 0
    let values: { readonly version: number; readonly byName: Record<string, Float32Array> } | undefined
    const sent = new Array<number>(threads).fill(-1)
    /** the current parameters for worker k when it has not got them yet (fresh copies: they are transferred) */
    const paramsFor = (k: number): { params?: Record<string, Float32Array>; transfer: Array<ArrayBuffer> } => {
      if (sent[k] === version) return { transfer: [] }
      if (values?.version !== version) {
        values = { version, byName: Object.fromEntries(model.params.map((p) => [p.name, p.variable.dataSync() as Float32Array])) }
      }
      sent[k] = version
      const params = Object.fromEntries(Object.entries(values.byName).map(([name, v]) => [name, new Float32Array(v)]))
      return { params, transfer: Object.values(params).map((v) => v.buffer as ArrayBuffer) }
    }
    const seed = context.rng.root

    const step = (indices: Int32Array, position: Position) =>
      Effect.gen(function*() {
        const ranges = splitRows(indices.length, threads)
        const common = { batchSize: indices.length, ...position, seed }
        // the workers start first, then this thread computes its own rows
        const waits = yield* Effect.forEach(ranges.slice(1), ([from, to], i) => {
          const { params, transfer } = paramsFor(i + 1)
          const keys = indices.slice(from, to)
          const body: WorkerRequest = { kind: "step", ...(params !== undefined ? { params } : {}), keys, offset: from, ...common }
          return pool.post(i + 1, { body, transfer: [...transfer, keys.buffer as ArrayBuffer] })
        })
        const [from, to] = ranges[0]!
        const keys = indices.slice(from, to)
        const { x, y } = gather(data.train, keys)
        const mine = yield* shardStep(context, { x, y, keys, offset: from, ...common })
        const others = yield* Effect.forEach(waits, (w) => Effect.map(w, asOutput))
        return combineShards([mine, ...others])
      })

    const evaluate = (ev: Evaluator, epoch: number) =>
      Effect.gen(function*() {
        const batches = evaluationBatches(ev)
        const groups = splitRows(batches.length, threads).map(([from, to]) => batches.slice(from, to))
        const waits = yield* Effect.forEach(groups.slice(1), (group, i) => {
          const { params, transfer } = paramsFor(i + 1)
          const body: WorkerRequest = { kind: "eval", ...(params !== undefined ? { params } : {}), epoch, batches: group }
          return pool.post(i + 1, { body, transfer })
        })
        const mine = yield* evaluateBatches(ev, epoch, groups[0] ?? [])
        const others = yield* Effect.forEach(waits, (w) => Effect.map(w, asCounts))
        return [mine, ...others].reduce((a, c) => ({ clean: a.clean + c.clean, robust: a.robust + c.robust }), { clean: 0, robust: 0 })
      })

    const sharder: Sharder = {
      threads,
      step,
      evaluate,
      updated: () => {
        version++
      }
    }
    return sharder
  })
