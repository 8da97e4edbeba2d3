import * as tf from "@tensorflow/tfjs"
import { Effect, Scope } from "effect"
import * as Data from "../src/Data.ts"
import * as Models from "../src/Models.ts"
import * as Tensor from "../src/Tensor.ts"

const variant = process.argv[2] ?? "gap"
const steps = Number(process.argv[3] ?? 150)
const extra = JSON.parse(process.argv[4] ?? "{}")
await Tensor.useBackend("auto")
const prog = Effect.gen(function*() {
  const ds = yield* Data.mnist({ trainSize: 5000, testSize: 1000 })
  const model = yield* Models.conv({ channels: 16, expansion: 2, groups: 2, stemStride: 2, ...extra }, { seed: 1 })
  const C = 16
  const pool = variant === "gap" ? 14 : variant === "p7" ? 7 : variant === "p2" ? 2 : 1
  const cells = (14 / pool) ** 2 * C
  const W = tf.variable(tf.randomNormal([cells, 10], 0, 1 / Math.sqrt(cells), "float32", 3))
  const b = tf.variable(tf.zeros([10]))
  const head = (z: tf.Tensor4D) => {
    const p = pool === 1 ? z : tf.avgPool(z, pool, pool, "valid")
    return tf.add(tf.matMul(tf.reshape(p, [z.shape[0], cells]), W), b) as tf.Tensor2D
  }
  const fwd = (x: tf.Tensor4D) => {
    const u = model.inject(x)
    const ctx = model.prepare?.({ batch: x.shape[0] })
    let z = model.initState(u)
    for (let i = 0; i < 8; i++) z = model.cell(z, u, ctx)
    return variant === "gap" ? model.head(z) : head(z as tf.Tensor4D)
  }
  const vars = [...model.params.map((p) => p.variable), ...(variant === "gap" ? [] : [W, b])]
  const opt = tf.train.adam(0.005)
  const t0 = Date.now()
  const idx = Data.batchIndices(ds.train.count, { batchSize: 64, shuffle: true, seed: 1 } as any)
  for (let s = 0; s < steps; s++) {
    const { x, y } = Data.toTensors(ds.train, idx[s % idx.length]!)
    const loss = opt.minimize(() => tf.losses.softmaxCrossEntropy(tf.oneHot(y, 10), fwd(x)), true, vars)
    if (s % 25 === 0) console.log(s, loss!.dataSync()[0]!.toFixed(3))
    tf.dispose([x, y, loss!])
  }
  const { x, y } = Data.toTensors(ds.test, Array.from({ length: 500 }, (_, i) => i))
  const acc = tf.tidy(() => tf.mean(tf.cast(tf.equal(tf.argMax(fwd(x), 1), y), "float32")).dataSync()[0])
  console.log(variant, JSON.stringify(extra), "steps", steps, "test acc", acc, "sec", (Date.now() - t0) / 1000)
})
await Effect.runPromise(Effect.scoped(prog))
