/**
 * How fast the conv DEQ's cell learns with each head: clean training through 8 unrolled applications of f (the
 * pre-training phase of the conv presets), Adam lr 5e-3, batch 64, then the accuracy of h(z_8) on the first 500
 * test images. docs/results.md ("Conv ablation", sizing) reports its numbers.
 *
 *   npx tsx scripts/head-probe.ts [headGrid] [steps]     # headGrid 1 (global pool), 2 or 7; default 7 and 150
 */
import { Effect } from "effect"
import * as Data from "../src/Data.ts"
import * as Models from "../src/Models.ts"
import { tf, useBackend } from "../src/Tensor.ts"

const headGrid = Number(process.argv[2] ?? 7)
const steps = Number(process.argv[3] ?? 150)
await useBackend("auto")

const program = Effect.gen(function*() {
  const ds = yield* Data.mnist({ trainSize: 5000, testSize: 500 })
  const model = yield* Models.conv({ channels: 16, expansion: 2, groups: 2, stemStride: 2, headGrid }, { seed: 1 })
  const forward = (x: tf.Tensor4D) => {
    const u = model.inject(x)
    const ctx = model.prepare?.({ batch: x.shape[0] })
    let z = model.initState(u)
    for (let i = 0; i < 8; i++) z = model.cell(z, u, ctx)
    return model.head(z)
  }
  const optimizer = tf.train.adam(0.005)
  const plan = Data.batchIndices(ds.train.count, { batchSize: 64, shuffle: true, seed: 1 })
  const started = performance.now()
  for (let s = 0; s < steps; s++) {
    const { x, y } = Data.toTensors(ds.train, plan[s % plan.length]!)
    const loss = optimizer.minimize(() => tf.losses.softmaxCrossEntropy(tf.oneHot(y, 10), forward(x)), true, model.params.map((p) => p.variable))
    tf.dispose([x, y, loss!])
  }
  const { x, y } = Data.toTensors(ds.test, Array.from({ length: ds.test.count }, (_, i) => i))
  const accuracy = tf.tidy(() => tf.mean(tf.cast(tf.equal(tf.argMax(forward(x), 1), y), "float32")).dataSync()[0]!)
  tf.dispose([x, y])
  optimizer.dispose()
  console.log(`headGrid ${headGrid}: ${steps} steps, test accuracy ${(100 * accuracy).toFixed(1)}% on ${ds.test.count} images, ${((performance.now() - started) / 1000).toFixed(0)} s`)
})
await Effect.runPromise(Effect.scoped(program))
