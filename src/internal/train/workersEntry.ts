/**
 * The program of a training worker thread (started by workers.ts through the pool): on "init" it activates its
 * own backend (with the project's kernels), decodes the run's config, builds its copy of the model and the run's
 * services from the config, and keeps the shared dataset; then it answers "step" (one shard of a batch: the shard
 * step, its gradients transferred back) and "eval" (some of the evaluation's batches: correct counts). Parameters
 * arrive with a request when they changed. An evaluation worker (workersEval.ts) gets "deq" (build the run's DEQ)
 * instead, then "batch" requests (one attack-evaluation batch each).
 *
 * @example
 * ```
 * // not imported: the pool starts it as a worker script (workers.ts)
 * const pool = yield* Pool.make({ entry: Pool.entryOf(import.meta.url, "workersEntry"), size: 1, init })
 * ```
 *
 * @internal
 */
import { Effect, Layer, Scope } from "effect"
import { decode } from "../../Config.ts"
import { gather } from "../../Data.ts"
import { ConfigError } from "../../Errors.ts"
import * as Models from "../../Models.ts"
import { Backend, tf } from "../../Tensor.ts"
import { serve } from "../tensor/poolWorker.ts"
import { TrainConfig } from "./config.ts"
import { evaluateBatches, type Evaluator, makeEvaluator } from "./evaluate.ts"
import { layersFromConfig } from "./layers.ts"
import { type ShardOutput, shardStep } from "./shard.ts"
import { makeStepContext, type StepContext } from "./step.ts"
import type { WorkerRequest } from "./workers.ts"
import { buildWorkerDeq, type EvalRequest, runWorkerBatch, type WorkerDeq } from "./workersEval.ts"

interface Ready {
  readonly context: StepContext
  readonly evaluator: Evaluator
  readonly train: Extract<WorkerRequest, { kind: "init" }>["train"]
}

let ready: Ready | undefined
let evaluating: WorkerDeq | undefined
// the worker's resources live as long as the thread (terminating it frees them)
const scope = Scope.makeUnsafe()

const setParams = (context: StepContext, params: Record<string, Float32Array> | undefined): void => {
  if (params === undefined) return
  for (const p of context.model.params) {
    const v = params[p.name]
    if (v !== undefined) tf.tidy(() => p.variable.assign(tf.tensor(v, p.variable.shape)))
  }
}

const init = (request: Extract<WorkerRequest, { kind: "init" }>) =>
  Effect.gen(function*() {
    yield* Layer.buildWithScope(Backend.named(request.backend), scope)
    const config = yield* decode(TrainConfig)(request.config)
    const services = yield* Layer.buildWithScope(layersFromConfig(config), scope)
    const model = yield* Scope.provide(Effect.provideContext(Models.buildSeeded(config.model), services), scope)
    const context = yield* Effect.provideContext(makeStepContext(model, config), services)
    const evaluator = yield* makeEvaluator(context, config, request.test)
    ready = { context, evaluator, train: request.train }
    return { body: { ok: true } }
  })

/** the transferable buffers of a shard's output (the gradients; each has its own buffer) */
const buffers = (out: ShardOutput): Array<ArrayBuffer> => [
  ...Object.values(out.grads).map((g) => g.buffer as ArrayBuffer),
  out.residual.buffer as ArrayBuffer
]

/** a copy when the array does not own its whole buffer (a view must not detach what it shares) */
const own = <A extends Float32Array>(a: A): Float32Array => (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice())

/**
 * Fault injection for the tests (docs/performance.md, "Workers"): DEQ_WORKER_FAULT="<kind>:<n>" makes the n-th step
 * (or batch) request of this worker throw ("throw"), exit the thread ("exit") or throw outside the request ("crash").
 */
const fault = (() => {
  const m = /^(throw|exit|crash):(\d+)$/.exec(process.env["DEQ_WORKER_FAULT"] ?? "")
  return m === null ? undefined : { kind: m[1]!, at: Number(m[2]) }
})()
let steps = 0

const injectFault = (): void => {
  steps++
  if (fault === undefined || steps !== fault.at) return
  if (fault.kind === "exit") process.exit(3)
  if (fault.kind === "crash") setImmediate(() => {
    throw new Error("injected crash")
  })
  else throw new Error("injected fault")
}

serve((body) =>
  Effect.gen(function*() {
    const request = body as WorkerRequest | EvalRequest
    if (request.kind === "init") return yield* init(request)
    if (request.kind === "deq") {
      yield* Layer.buildWithScope(Backend.named(request.backend), scope)
      evaluating = yield* buildWorkerDeq(request, scope)
      return { body: { ok: true } }
    }
    if (request.kind === "batch" || request.kind === "perturb") {
      if (evaluating === undefined) return yield* new ConfigError({ path: "worker", message: `a "${request.kind}" request before "deq"` })
      injectFault()
      const out = yield* runWorkerBatch(evaluating, request)
      return out instanceof Float32Array ? { body: out, transfer: [out.buffer as ArrayBuffer] } : { body: out }
    }
    const r = ready
    if (r === undefined) return yield* new ConfigError({ path: "worker", message: `a "${request.kind}" request before "init"` })
    setParams(r.context, request.params)
    if (request.kind === "eval") return { body: yield* evaluateBatches(r.evaluator, request.epoch, request.batches) }
    injectFault()
    const { kind: _kind, params: _params, ...input } = request
    const { x, y } = gather(r.train, input.keys)
    const out = yield* shardStep(r.context, { ...input, x, y })
    const grads = Object.fromEntries(Object.entries(out.grads).map(([k, g]) => [k, own(g)]))
    const result: ShardOutput = { ...out, grads, residual: own(out.residual) }
    return { body: result, transfer: buffers(result) }
  })
)
