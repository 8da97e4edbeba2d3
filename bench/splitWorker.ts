/**
 * The worker thread of the benchmark's workers lever (bench/split.ts): builds the model from its config and the
 * sent weights, the workloads on its half of the batch, and runs one workload on request.
 */
import { Effect, Scope } from "effect"
import { serve } from "../src/internal/tensor/poolWorker.ts"
import { registerNativeKernels } from "../src/internal/tensor/native.ts"
import * as Models from "../src/Models.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import type { SplitRequest } from "./split.ts"
import { makeWorkloads, type Workloads } from "./workloads.ts"

let workloads: Workloads | undefined
const scope = Scope.makeUnsafe()

serve((body) =>
  Effect.gen(function*() {
    const request = body as SplitRequest
    if (request.kind === "load") {
      yield* Effect.promise(() => useBackend("wasm"))
      const config = request.model.kind === "fc" ? new Models.FcConfig(request.model.fields as never) : new Models.ConvConfig(request.model.fields as never)
      const model = yield* Scope.provide(Models.build(config, { seed: 1 }), scope)
      for (const p of model.params) {
        const v = request.weights[p.name]
        if (v !== undefined) tf.tidy(() => p.variable.assign(tf.tensor(v, p.variable.shape)))
      }
      workloads = makeWorkloads(model, request.batch, request.spec)
      return { body: { ok: true } }
    }
    if (request.kind === "native") {
      registerNativeKernels({ ...process.env, ...request.env })
      return { body: { ok: true } }
    }
    for (let i = 0; i < request.reps; i++) workloads!.run[request.workload]()
    return { body: { ok: true } }
  })
)
