/**
 * Your own models outside Effect: `Adversary.fromModel` (a tf.LayersModel or a function becomes a Classifier, its
 * shapes, class count and a final softmax read from the model) and the Promise facade `Adversary.promise` (same
 * numbers as the Effect API for the same seed, results the caller owns, typed errors as rejections).
 */
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Adversary from "../src/Adversary.ts"
import { ConfigError } from "../src/Errors.ts"
import { Rng, stream, tf, useBackend } from "../src/Tensor.ts"

/** 8x8x1 images in [0, 1], 4 classes (the bright quadrant), seeded */
const batch = (n: number, seed: number) => {
  const s = stream(seed)
  const x = new Float32Array(n * 64)
  const y = new Int32Array(n)
  for (let i = 0; i < n; i++) {
    const k = s.int(0, 3)
    y[i] = k
    for (let p = 0; p < 64; p++) {
      const q = (Math.floor(p / 8) < 4 ? 0 : 2) + (p % 8 < 4 ? 0 : 1)
      x[i * 64 + p] = (q === k ? 0.85 : 0.15) + (s.next() - 0.5) * 0.1
    }
  }
  return { x, y }
}

const layers = (options: { readonly flat?: boolean; readonly softmax?: boolean } = {}) => {
  const model = tf.sequential({
    layers: [
      ...(options.flat === true ? [] : [tf.layers.flatten({ inputShape: [8, 8, 1] })]),
      tf.layers.dense({ units: 16, activation: "relu", kernelInitializer: tf.initializers.glorotNormal({ seed: 1 }), ...(options.flat === true ? { inputShape: [64] } : {}) }),
      tf.layers.dense({ units: 4, kernelInitializer: tf.initializers.glorotNormal({ seed: 2 }), ...(options.softmax === true ? { activation: "softmax" } : {}) })
    ]
  })
  return model
}

let model: tf.Sequential
let x: tf.Tensor4D
let y: tf.Tensor1D

beforeAll(async () => {
  await useBackend("wasm")
  model = layers()
  const b = batch(12, 3)
  x = tf.tensor4d(b.x, [12, 8, 8, 1])
  y = tf.tensor1d(b.y, "int32")
})
afterAll(() => {
  tf.dispose([x, y])
  model.dispose()
})

const values = (t: tf.Tensor) => Array.from(t.dataSync())

describe("Adversary.fromModel", () => {
  it("reads a layers model's input shape and class count, and its logits are the model's outputs", () => {
    const c = Adversary.fromModel(model, { bounds: [0, 1] })
    expect(c.classes).toBe(4)
    expect(c.inputShape).toEqual([8, 8, 1])
    expect(c.bounds).toEqual([0, 1])
    expect(c.name).toBe(model.name)
    const before = tf.memory().numTensors
    const [a, b] = tf.tidy(() => [values(c.logits(x)), values(model.predict(x) as tf.Tensor)])
    expect(a).toEqual(b)
    expect(tf.memory().numTensors).toBe(before)
  })

  it("reshapes x for a model of flat inputs and turns a final softmax into log-probabilities", () => {
    const flat = layers({ flat: true, softmax: true })
    try {
      const c = Adversary.fromModel(flat, { bounds: [0, 1], inputShape: [8, 8, 1] })
      expect(c.inputShape).toEqual([8, 8, 1])
      const [logits, probs] = tf.tidy(() => [c.logits(x), flat.predict(tf.reshape(x, [12, 64])) as tf.Tensor].map(values))
      // softmax(log p) = p: the attacks' losses see the model's own prediction
      for (let i = 0; i < logits!.length; i++) expect(Math.exp(logits![i]!)).toBeCloseTo(probs![i]!, 5)
      expect(() => Adversary.fromModel(flat, { bounds: [0, 1], inputShape: [4, 4, 1] })).toThrow(/fromModel\.inputShape.*16 values.*takes 64/)
    } finally {
      flat.dispose()
    }
  })

  it("wraps a plain function, and rejects bad options with a ConfigError naming the option", () => {
    const fn = (t: tf.Tensor4D) => model.apply(t) as tf.Tensor2D
    const c = Adversary.fromModel(fn, { bounds: [0, 1], classes: 4, inputShape: [8, 8, 1], name: "fn" })
    expect({ name: c.name, classes: c.classes, inputShape: c.inputShape }).toEqual({ name: "fn", classes: 4, inputShape: [8, 8, 1] })
    const error = (f: () => unknown) => {
      try {
        f()
      } catch (e) {
        return e
      }
      return undefined
    }
    for (const [options, field] of [
      [{ bounds: [1, 0] }, "fromModel.bounds"],
      [{ bounds: [0, Number.NaN] }, "fromModel.bounds"],
      [{ bounds: [0, 1], classes: 1 }, "fromModel.classes"],
      [{ bounds: [0, 1], classes: 3 }, "fromModel.classes"],
      [{ bounds: [0, 1], inputShape: [8, 8] }, "fromModel.inputShape"]
    ] as const) {
      const e = error(() => Adversary.fromModel(model, options as unknown as Adversary.FromModelOptions))
      expect(e, JSON.stringify(options)).toBeInstanceOf(ConfigError)
      expect((e as ConfigError).path).toBe(field)
    }
    expect((error(() => Adversary.fromModel({} as tf.LayersModel, { bounds: [0, 1] })) as ConfigError).path).toBe("fromModel.model")
  })
})

describe("Adversary.promise", () => {
  it("gives the Effect API's x_adv for the same seed", async () => {
    const classifier = Adversary.fromModel(model, { bounds: [0, 1] })
    const options = { eps: 0.1, steps: 5, restarts: 2 }
    const expected = await Effect.runPromise(
      Effect.gen(function*() {
        const attack = yield* Adversary.pgd(options)
        const r = yield* attack.perturb(classifier, x, y)
        return { xAdv: values(r.xAdv), success: Array.from(r.success), forward: r.forward, backward: r.backward }
      }).pipe(Effect.scoped, Effect.provide(Rng.seeded(7)))
    )
    const pgd = Adversary.promise.pgd(options, { seed: 7 })
    const r = await pgd.run(classifier, x, y)
    try {
      expect(values(r.xAdv)).toEqual(expected.xAdv)
      expect({ success: Array.from(r.success), forward: r.forward, backward: r.backward }).toEqual({
        success: expected.success,
        forward: expected.forward,
        backward: expected.backward
      })
      expect(pgd.settings.steps).toBe(5)
    } finally {
      r.xAdv.dispose()
    }
    // another seed draws other random starts
    const other = await Adversary.promise.pgd(options, { seed: 8 }).run(classifier, x, y)
    expect(values(other.xAdv)).not.toEqual(expected.xAdv)
    other.xAdv.dispose()
  })

  it("leaves only the returned x_adv, which the caller owns: after disposing it the tensor count is back", async () => {
    const classifier = Adversary.fromModel(model, { bounds: [0, 1] })
    const aa = Adversary.promise.autoAttack({ eps: 0.1, norm: "Linf", steps: 3, queries: 20, targets: 2 }, { seed: 1 })
    const fgsm = Adversary.promise.fgsm({ eps: 0.1 }, { seed: 1 })
    for (const attack of [fgsm, aa]) {
      const before = tf.memory().numTensors
      const r = await attack.run(classifier, x, y)
      expect(tf.memory().numTensors, attack.name).toBe(before + 1)
      expect(r.xAdv.isDisposed).toBe(false)
      // usable after the promise settled: within eps of x and inside the bounds
      const [dist, lo, hi] = tf.tidy(() => [tf.max(tf.abs(tf.sub(r.xAdv, x))), tf.min(r.xAdv), tf.max(r.xAdv)].map((t) => t.dataSync()[0]!))
      expect(dist!).toBeLessThanOrEqual(0.1 + 1e-6)
      expect(lo!).toBeGreaterThanOrEqual(0)
      expect(hi!).toBeLessThanOrEqual(1)
      r.xAdv.dispose()
      expect(tf.memory().numTensors, attack.name).toBe(before)
    }
  })

  it("rejects with the AttackError itself, leaving no tensor, and throws a bad option's ConfigError", async () => {
    const classifier = Adversary.fromModel(model, { bounds: [0, 1] })
    const pgd = Adversary.promise.pgd({ eps: 0.1, steps: 2 }, { seed: 0 })
    const scaled = tf.mul(x, 255) as tf.Tensor4D
    const before = tf.memory().numTensors
    const e = await pgd.run(classifier, scaled, y).then(() => undefined, (u: unknown) => u)
    expect(e).toBeInstanceOf(Adversary.AttackError)
    expect((e as Adversary.AttackError).message).toMatch(/outside the input bounds \[0, 1\]/)
    expect((e as Adversary.AttackError).sample).toBe(0)
    expect(tf.memory().numTensors).toBe(before)
    scaled.dispose()
    // a classifier that throws: the same AttackError, with its message
    const broken = Adversary.fromModel(() => { throw new Error("out of memory") }, { bounds: [0, 1], classes: 4 })
    const thrown = await pgd.run(broken, x, y).then(() => undefined, (u: unknown) => u)
    expect(thrown).toBeInstanceOf(Adversary.AttackError)
    expect((thrown as Adversary.AttackError).message).toMatch(/out of memory/)
    expect(() => Adversary.promise.pgd({ eps: 0.1, stepz: 3 } as never, { seed: 0 })).toThrow(ConfigError)
    expect(() => Adversary.promise.pgd({ eps: 0.1 }, { seed: Number.NaN })).toThrow(/seed/)
  })

  it("evaluates as a promise with the Effect evaluation's numbers", async () => {
    const classifier = Adversary.fromModel(model, { bounds: [0, 1] })
    const b = batch(24, 9)
    const data = { x: b.x, shape: [8, 8, 1] as const, y: b.y }
    const expected = await Effect.runPromise(
      Effect.flatMap(Adversary.pgd({ eps: 0.1, steps: 3 }), (a) => Adversary.evaluate(classifier, data, a, { batchSize: 8 })).pipe(
        Effect.provide(Rng.seeded(4))
      )
    )
    const before = tf.memory().numTensors
    const result = await Adversary.promise.evaluate(classifier, data, Adversary.promise.pgd({ eps: 0.1, steps: 3 }, { seed: 0 }), {
      batchSize: 8,
      seed: 4
    })
    expect(tf.memory().numTensors).toBe(before)
    expect({ clean: result.cleanAccuracy, robust: result.robustAccuracy }).toEqual({
      clean: expected.cleanAccuracy,
      robust: expected.robustAccuracy
    })
  })
})
