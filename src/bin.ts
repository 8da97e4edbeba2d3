/**
 * Entry point of `npm start` and the `deq` command. The full CLI (train / eval / dynamics / bench) lands with the
 * CLI issue; until then this reports the backend and what the library already provides, and exits cleanly.
 */
import { Effect, Layer } from "effect"
import { NodeRuntime } from "@effect/platform-node"
import { Backend } from "./Tensor.ts"

const main = Effect.gen(function*() {
  const backend = yield* Backend
  yield* Effect.log(
    [
      `effect-deq on backend "${backend.name}".`,
      "Available: Tensor (backends, scoped tensors, Rng), Data, FixedPoint, Dynamics, Models, Checkpoint.",
      "The main job (PGD-AT + random intermediate states on MNIST, with reports) arrives with the training and CLI",
      "issues; see README.md for the roadmap."
    ].join("\n")
  )
})

main.pipe(Effect.provide(Layer.mergeAll(Backend.auto)), NodeRuntime.runMain)
