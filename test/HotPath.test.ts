/**
 * The hot-path changes keep the numbers (docs/performance.md): the hand-written GroupNorm backward equals autodiff
 * through the tf.moments reference (values and gradients w.r.t. x, gamma and beta, to ~1e-5 relative, over random
 * shapes, groups and offsets), the conv and multiscale cells build their GroupNorm averagers once per forward call
 * (f with the per-call context creates no averager), and f is the same with and without that context; `linear`
 * (a matMul with an explicitly transposing backward) equals tf.matMul; LayerNorm's hand-written backward equals
 * autodiff; spatialMean's backward equals tf.mean's; the implicit backward's Broyden memory is its
 * own setting.
 */
import * as fc from "fast-check"
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import * as Dynamics from "../src/Dynamics.ts"
import { Backward, makePicardSync } from "../src/FixedPoint.ts"
import { groupNorm, groupNormReference, layerNorm, linear, spatialMean } from "../src/internal/models/layers.ts"
import * as Models from "../src/Models.ts"
import { noLeaks, tf, useBackend } from "../src/Tensor.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

/** max |a - b| / max(1, max |b|) */
const relDiff = (a: tf.Tensor, b: tf.Tensor): number => {
  const x = a.dataSync(), y = b.dataSync()
  expect(x.length).toBe(y.length)
  let d = 0, m = 1
  for (let i = 0; i < x.length; i++) {
    d = Math.max(d, Math.abs(x[i]! - y[i]!))
    m = Math.max(m, Math.abs(y[i]!))
  }
  return d / m
}

describe("GroupNorm with the hand-written backward", () => {
  it("equals autodiff through the tf.moments reference (values and gradients)", () => {
    fc.assert(
      fc.property(
        fc.record({
          b: fc.integer({ min: 1, max: 3 }),
          h: fc.integer({ min: 1, max: 6 }),
          w: fc.integer({ min: 2, max: 6 }),
          perGroup: fc.integer({ min: 1, max: 4 }),
          groups: fc.integer({ min: 1, max: 4 }),
          offset: fc.double({ min: -2, max: 2, noNaN: true }),
          affine: fc.boolean(),
          seed: fc.integer({ min: 1, max: 10_000 })
        }),
        ({ b, h, w, perGroup, groups, offset, affine, seed }) => {
          const c = perGroup * groups
          noLeaks(() =>
            tf.tidy(() => {
              const x = tf.add(tf.randomNormal([b, h, w, c], 0, 1.5, "float32", seed), offset) as tf.Tensor4D
              const gamma = tf.randomNormal([c], 1, 0.3, "float32", seed + 1)
              const beta = tf.randomNormal([c], 0, 0.3, "float32", seed + 2)
              const dy = tf.randomNormal([b, h, w, c], 0, 1, "float32", seed + 3)
              const loss = (f: typeof groupNorm) => (xx: tf.Tensor, gg?: tf.Tensor, bb?: tf.Tensor) =>
                tf.sum(tf.mul(f(xx as tf.Tensor4D, groups, gg !== undefined && bb !== undefined ? { gamma: gg, beta: bb } : undefined), dy))
              const ours = groupNorm(x, groups, affine ? { gamma, beta } : undefined)
              const ref = groupNormReference(x, groups, affine ? { gamma, beta } : undefined)
              expect(relDiff(ours, ref)).toBeLessThan(1e-5)
              const inputs = affine ? [x, gamma, beta] : [x]
              const go = tf.grads(loss(groupNorm))(inputs)
              const gr = tf.grads(loss(groupNormReference))(inputs)
              for (let i = 0; i < inputs.length; i++) expect(relDiff(go[i]!, gr[i]!)).toBeLessThan(2e-5)
            })
          )
        }
      ),
      { numRuns: 40, seed: 11 }
    )
  })
})

/** LayerNorm by autodiff through tf.moments (what layerNorm computed before its hand-written backward) */
const layerNormReference = (x: tf.Tensor2D, affine?: { readonly gamma: tf.Tensor; readonly beta: tf.Tensor }): tf.Tensor2D => {
  const { mean, variance } = tf.moments(x, -1, true)
  const y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-5))) as tf.Tensor2D
  return affine === undefined ? y : tf.add(tf.mul(y, affine.gamma), affine.beta)
}

describe("LayerNorm with the hand-written backward", () => {
  it("equals autodiff through tf.moments (values and gradients)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 2, max: 40 }), fc.boolean(), fc.integer({ min: 1, max: 10_000 }), (b, n, affine, seed) =>
        noLeaks(() =>
          tf.tidy(() => {
            const x = tf.add(tf.randomNormal([b, n], 0, 2, "float32", seed), 1) as tf.Tensor2D
            const gamma = tf.randomNormal([n], 1, 0.3, "float32", seed + 1), beta = tf.randomNormal([n], 0, 0.3, "float32", seed + 2)
            const dy = tf.randomNormal([b, n], 0, 1, "float32", seed + 3)
            const a = affine ? { gamma, beta } : undefined
            expect(relDiff(layerNorm(x, a), layerNormReference(x, a))).toBeLessThan(1e-6)
            const loss = (f: typeof layerNorm) => (xx: tf.Tensor, gg?: tf.Tensor, bb?: tf.Tensor) =>
              tf.sum(tf.mul(f(xx as tf.Tensor2D, gg !== undefined && bb !== undefined ? { gamma: gg, beta: bb } : undefined), dy))
            const inputs = affine ? [x, gamma, beta] : [x]
            const ours = tf.grads(loss(layerNorm))(inputs), ref = tf.grads(loss(layerNormReference))(inputs)
            for (let i = 0; i < inputs.length; i++) expect(relDiff(ours[i]!, ref[i]!)).toBeLessThan(1e-5)
          })
        )),
      { numRuns: 30, seed: 7 }
    )
  })
})

describe("spatialMean with a broadcast backward", () => {
  it("equals tf.mean over H and W in value and gradient", () =>
    noLeaks(() =>
      tf.tidy(() => {
        const x = tf.randomNormal([3, 5, 4, 6], 0, 1, "float32", 1) as tf.Tensor4D
        const dy = tf.randomNormal([3, 6], 0, 1, "float32", 2)
        expect(relDiff(spatialMean(x), tf.mean(x, [1, 2]))).toBeLessThan(1e-6)
        const g = (f: (t: tf.Tensor4D) => tf.Tensor) => tf.grad((t: tf.Tensor) => tf.sum(tf.mul(f(t as tf.Tensor4D), dy)))(x)
        expect(relDiff(g(spatialMean), g((t) => tf.mean(t, [1, 2])))).toBeLessThan(1e-6)
      })
    ))
})

describe("linear (a matMul whose backward transposes explicitly)", () => {
  it("equals tf.matMul in value and in both gradients", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 17 }), fc.integer(), (b, k, n, seed) =>
        noLeaks(() =>
          tf.tidy(() => {
            const a = tf.randomNormal([b, k], 0, 1, "float32", seed), w = tf.randomNormal([k, n], 0, 1, "float32", seed + 1)
            const dy = tf.randomNormal([b, n], 0, 1, "float32", seed + 2)
            expect(relDiff(linear(a, w), tf.matMul(a, w))).toBeLessThan(1e-6)
            const loss = (f: (x: tf.Tensor, y: tf.Tensor) => tf.Tensor) => (x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(f(x, y), dy))
            const ours = tf.grads(loss(linear))([a, w])
            const ref = tf.grads(loss((x, y) => tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D)))([a, w])
            for (let i = 0; i < 2; i++) expect(relDiff(ours[i]!, ref[i]!)).toBeLessThan(1e-6)
          })
        )),
      { numRuns: 30, seed: 5 }
    )
  })
})

const tensorsCreated = (f: () => void): number => {
  // tfjs 4.22 numbers tensors from a static counter of its Engine class
  const engine = tf.engine().constructor as unknown as { nextTensorId: number }
  const before = engine.nextTensorId
  f()
  return engine.nextTensorId - before
}

describe("per-call GroupNorm averagers", () => {
  const configs = [
    new Models.ConvConfig({ inputShape: [8, 8, 1], channels: 4, groups: 2, stemStride: 1, classes: 5 }),
    new Models.MultiscaleConfig({ inputShape: [8, 8, 1], channels: [4, 8], groups: 2, stemStride: 1, classes: 5 })
  ]
  for (const config of configs) {
    it(`${config._tag}: f builds no averager when the context has them, and its value does not change`, () =>
      Effect.runSync(Effect.scoped(Effect.gen(function*() {
        const model = yield* Models.build(config, { seed: 2 })
        noLeaks(() =>
          tf.tidy(() => {
            const x = tf.randomUniform([3, 8, 8, 1], 0, 1, "float32", 4) as tf.Tensor4D
            const u = model.inject(x)
            const ctx = Dynamics.contextOf(model, 3)!
            const z = tf.randomNormal([3, ...model.stateShape], 0, 1, "float32", 5)
            const withCtx = tensorsCreated(() => tf.tidy(() => void model.cell(z, u, ctx)))
            // the same f with only the filters (no averagers): one averager tensor per GroupNorm call
            const filtersOnly = { ...ctx, averagers: {} } as Dynamics.CellContext
            const withoutAveragers = tensorsCreated(() => tf.tidy(() => void model.cell(z, u, filtersOnly)))
            const norms = config._tag === "conv" ? 3 : 10
            expect(withoutAveragers - withCtx).toBe(norms)
            expect(relDiff(model.cell(z, u, ctx), model.cell(z, u, filtersOnly))).toBe(0)
            expect(relDiff(model.cell(z, u, ctx), model.cell(z, u))).toBeLessThan(1e-6)
          })
        )
      }))))
  }
})

describe("the implicit backward's Broyden memory", () => {
  it("is its own setting: any memory reaches the same gradient, and the memory changes the adjoint iterates", () =>
    Effect.runSync(Effect.scoped(Effect.gen(function*() {
      const model = yield* Models.build(new Models.FcConfig({ inputShape: [6, 6, 1], hidden: 24, classes: 4, wScale: 0.6 }), { seed: 3 })
      const x = tf.randomUniform([5, 6, 6, 1], 0, 1, "float32", 9) as tf.Tensor4D
      const y = tf.oneHot(tf.tensor1d([0, 1, 2, 3, 0], "int32"), 4)
      const vars = model.params.map((p) => p.variable)
      const gradOf = (backward: Backward) => {
        let steps = 0
        const b = backward._tag === "Implicit" ? { ...backward, onStats: (s: { steps: number }) => (steps = s.steps) } : backward
        const deq = Dynamics.makeWith(model, makePicardSync({ maxIter: 30, tol: 0 }), { backward: b })
        const { value, grads } = tf.variableGrads(() =>
          tf.losses.softmaxCrossEntropy(y, Dynamics.logits(deq, x, Dynamics.readOut.final)) as tf.Scalar, vars)
        const flat = tf.concat(Object.values(grads).map((g) => tf.reshape(g, [-1])))
        tf.dispose([value, ...Object.values(grads)])
        return { flat, steps }
      }
      const exact = gradOf(Backward.implicit({ solver: "picard", maxIter: 200, tol: 1e-9 }))
      const small = gradOf(Backward.implicit({ solver: "broyden", maxIter: 60, tol: 1e-7, memory: 2 }))
      const large = gradOf(Backward.implicit({ solver: "broyden", maxIter: 60, tol: 1e-7, memory: 60 }))
      const byDefault = gradOf(Backward.implicit({ solver: "broyden", maxIter: 60, tol: 1e-7 }))
      const thirty = gradOf(Backward.implicit({ solver: "broyden", maxIter: 60, tol: 1e-7, memory: 30 }))
      expect(relDiff(small.flat, exact.flat)).toBeLessThan(1e-4)
      expect(relDiff(large.flat, exact.flat)).toBeLessThan(1e-4)
      // measured: 28 adjoint steps with 2 pairs, 17 with 60
      expect(small.steps).toBeGreaterThan(large.steps)
      // the default is 30 pairs (the Broyden solver's default), not maxIter
      expect(byDefault.steps).toBe(thirty.steps)
      expect(relDiff(byDefault.flat, thirty.flat)).toBe(0)
      tf.dispose([exact.flat, small.flat, large.flat, byDefault.flat, thirty.flat, x, y])
    }))))
})
