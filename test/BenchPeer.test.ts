/**
 * The PyTorch peer computes what effect-deq computes: on tiny FC and conv DEQs (the project's models, weights
 * exported from here), bench/peer.py's f(z), attack gradient w.r.t. x, training gradients at a random
 * intermediate state through the tail, and implicit gradients match ours to float32 rounding. Runs when
 * `/usr/bin/python3 -c "import torch"` works; otherwise one line says it is skipped and why.
 */
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Models from "../src/Models.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import { compareValues, type Peer, startPeer } from "../bench/peer.ts"
import { defaultSpec, makeWorkloads } from "../bench/workloads.ts"

let peer: Peer | undefined
let skipped = ""

beforeAll(async () => {
  await useBackend("wasm")
  const started = await startPeer()
  if (started._tag === "Ready") peer = started.peer
  else {
    skipped = started.reason
    console.log(`BenchPeer: skipped, the PyTorch peer is not available (${skipped})`)
  }
})

afterAll(async () => {
  await peer?.close()
})

const configs = {
  fc: new Models.FcConfig({ inputShape: [8, 8, 1], hidden: 16, classes: 5 }),
  // stride 2 on an odd size checks tfjs' 'same' padding (the extra row and column go after)
  conv: new Models.ConvConfig({ inputShape: [9, 9, 1], channels: 4, groups: 2, classes: 5 })
} as const

describe("bench/peer.py against effect-deq", () => {
  for (const [kind, config] of Object.entries(configs)) {
    it(`${kind}: f, attack gradient, training and implicit gradients agree`, async () => {
      if (peer === undefined) return
      const p = peer
      await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
        const model = yield* Models.build(config, { seed: 3 })
        const before = tf.memory().numTensors
        const w = makeWorkloads(model, 6, defaultSpec)
        const ours = w.values()
        yield* Effect.promise(() => p.load(kind, model, w, defaultSpec))
        const theirs = yield* Effect.promise(() => p.check(kind))
        yield* Effect.promise(() => p.drop(kind))
        // the comparison can fail: a changed weight on our side only is seen in every field
        const v = model.params.find((q) => q.name.includes("/cell/") && q.name.endsWith("/beta"))!.variable
        tf.tidy(() => v.assign(tf.add(v, 0.3)))
        const moved = compareValues(w.values(), theirs)
        w.dispose()
        expect(tf.memory().numTensors).toBe(before)
        // every parameter has a gradient on both sides
        expect(Object.keys(theirs.trainGrads).sort()).toEqual(model.params.map((q) => q.name).sort())
        const diff = compareValues(ours, theirs)
        // measured: at most 7e-7 relative (float32 rounding)
        for (const field of ["f", "trainLoss", "attackGrad", "trainGrads", "implicitGrads"] as const) {
          expect(diff[field]).toBeLessThan(1e-5)
        }
        expect(moved.trainLoss).toBeGreaterThan(1e-3)
        expect(moved.trainGrads).toBeGreaterThan(1e-3)
      })))
    })
  }
})
