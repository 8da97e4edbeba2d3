/**
 * The hot-path changes keep the numbers (docs/performance.md): the hand-written GroupNorm backward equals autodiff
 * through the tf.moments reference (values and gradients w.r.t. x, gamma and beta, to ~1e-5 relative, over random
 * shapes, groups and offsets), the conv and multiscale cells build their GroupNorm averagers once per forward call
 * (f with the per-call context creates no averager), and f is the same with and without that context.
 */
import * as fc from "fast-check"
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import * as Dynamics from "../src/Dynamics.ts"
import { groupNorm, groupNormReference } from "../src/internal/models/layers.ts"
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
