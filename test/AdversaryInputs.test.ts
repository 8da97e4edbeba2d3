/**
 * Bad inputs to attacks and evaluations (NaN, Inf, out-of-range pixels, fractional or out-of-range labels, wrong
 * shapes) are typed AttackErrors that name the sample; a classifier's declared bounds are respected.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as fc from "fast-check"
import { beforeAll } from "vitest"
import * as Adversary from "../src/Adversary.ts"
import type { Classifier } from "../src/Adversary.ts"
import { noLeaks, Rng, tf, useBackend } from "../src/Tensor.ts"
import { make, perturbSync } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const K = 4
const D = 16
/** a fixed linear classifier on 4x4x1 images that declares its classes and input shape */
const linear = (bounds?: readonly [number, number]): Classifier => {
  const w = tf.tidy(() => tf.tensor2d(Array.from({ length: D * K }, (_, i) => Math.sin(1 + 7 * i)), [D, K]))
  return {
    name: "linear",
    classes: K,
    inputShape: [4, 4, 1],
    ...(bounds !== undefined ? { bounds } : {}),
    logits: (x) => tf.tidy(() => tf.matMul(x.reshape([-1, D]), w))
  }
}

const attacks = (): Array<Adversary.Attack["Service"]> => [
  make(Adversary.fgsm({ eps: 0.1 })),
  make(Adversary.pgd({ eps: 0.1, steps: 2 })),
  make(Adversary.apgd({ eps: 0.1, steps: 2 })),
  make(Adversary.apgdTargeted({ eps: 0.1, steps: 2, targets: 1 })),
  make(Adversary.square({ eps: 0.1, queries: 5 })),
  make(Effect.flatMap(Adversary.autoAttack({ eps: 0.1, steps: 2, queries: 5, targets: 1 }), Adversary.ensemble))
]

/** The AttackError of one call (fails the test when the call succeeds). */
const errorOf = (attack: Adversary.Attack["Service"], c: Classifier, x: tf.Tensor4D, y: tf.Tensor1D) => {
  const exit = Effect.runSyncExit(Effect.scoped(attack.perturb(c, x, y)).pipe(Effect.provide(Rng.seeded(0))))
  expect(Exit.isFailure(exit)).toBe(true)
  if (!Exit.isFailure(exit)) throw new Error("unreachable")
  const e = (exit.cause as unknown as { reasons: ReadonlyArray<{ error?: unknown }> }).reasons[0]?.error
  expect(e).toBeInstanceOf(Adversary.AttackError)
  return e as Adversary.AttackError
}

const images = (n: number, fill: (i: number) => number) => tf.tensor4d(Float32Array.from({ length: n * D }, (_, i) => fill(i)), [n, 4, 4, 1])

describe("bad inputs are typed errors naming the sample", () => {
  const c = linear()
  const cases: ReadonlyArray<readonly [string, () => tf.Tensor4D, () => tf.Tensor1D, number | undefined, RegExp]> = [
    ["an all-NaN batch", () => images(3, () => NaN), () => tf.tensor1d([0, 1, 2], "int32"), 0, /sample 0: pixel 0 is NaN/],
    ["one NaN pixel", () => images(3, (i) => (i === 2 * D + 5 ? NaN : 0.5)), () => tf.tensor1d([0, 1, 2], "int32"), 2, /sample 2: pixel 5 is NaN/],
    ["+Inf pixels", () => images(3, (i) => (i === D + 1 ? Infinity : 0.5)), () => tf.tensor1d([0, 1, 2], "int32"), 1, /sample 1: pixel 1 is Infinity/],
    ["0..255 pixels", () => images(3, (i) => i % 256), () => tf.tensor1d([0, 1, 2], "int32"), 0, /sample 0: pixel 2 is 2, outside the input bounds \[0, 1\]/],
    ["[-1, 1] pixels", () => images(3, (i) => (i % 3) - 1), () => tf.tensor1d([0, 1, 2], "int32"), 0, /sample 0: pixel 0 is -1, outside/],
    ["a fractional label", () => images(3, () => 0.5), () => tf.tensor1d([0, 1.5, 2]), 1, /sample 1: label 1.5 is not a class index/],
    ["a NaN label", () => images(3, () => 0.5), () => tf.tensor1d([0, 1, NaN]), 2, /sample 2: label NaN is not a class index/],
    ["a label out of range", () => images(3, () => 0.5), () => tf.tensor1d([0, 4, 2], "int32"), 1, /sample 1: label 4 .*\[0, 4\)/],
    ["a negative label", () => images(3, () => 0.5), () => tf.tensor1d([-1, 1, 2], "int32"), 0, /sample 0: label -1/],
    ["the wrong image shape", () => tf.zeros([2, 28, 28, 1]) as tf.Tensor4D, () => tf.tensor1d([0, 1], "int32"), undefined,
      /per-sample shape \[28, 28, 1\] \(batch shape \[2, 28, 28, 1\]\), the classifier "linear" expects \[4, 4, 1\]/],
    ["a flat batch", () => tf.zeros([2, 16]) as unknown as tf.Tensor4D, () => tf.tensor1d([0, 1], "int32"), undefined,
      /4-D NHWC batch \[batch, 4, 4, 1\], got shape \[2, 16\]/],
    ["too few labels", () => images(3, () => 0.5), () => tf.tensor1d([0, 1], "int32"), undefined, /x has 3 samples, y has shape \[2\]/]
  ]
  for (const [what, xOf, yOf, sample, message] of cases) {
    it(`${what}: every attack and the ensemble refuse it`, () => {
      noLeaks(() => {
        const x = xOf()
        const y = yOf()
        try {
          for (const attack of attacks()) {
            const e = errorOf(attack, c, x, y)
            expect(e.message).toMatch(message)
            expect(e.sample).toBe(sample)
          }
        } finally {
          tf.dispose([x, y])
        }
      })
    })
  }

  it.effect("evaluate names the dataset index of the bad sample, also when no attack would run", () =>
    Effect.gen(function*() {
      const pgd = yield* Adversary.pgd({ eps: 0.1, steps: 2 })
      const x = Float32Array.from({ length: 10 * D }, (_, i) => (i === 7 * D + 3 ? NaN : 0.5))
      const bad = yield* Effect.flip(Adversary.evaluate(c, { x, shape: [4, 4, 1], y: [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] }, pgd, { batchSize: 4 }))
      expect(bad).toBeInstanceOf(Adversary.AttackError)
      expect((bad as Adversary.AttackError).sample).toBe(7)
      expect(bad.message).toMatch(/sample 7: pixel 3 is NaN/)
      const labels = yield* Effect.flip(Adversary.evaluate(c, { x: new Float32Array(4 * D).fill(0.5), shape: [4, 4, 1], y: [0, 1, 2, 9] }, pgd))
      expect((labels as Adversary.AttackError).sample).toBe(3)
      // an all-NaN batch used to report every sample as broken (all misclassified, no stage ran)
      const nan = yield* Effect.flip(Adversary.evaluate(c, { x: new Float32Array(4 * D).fill(NaN), shape: [4, 4, 1], y: [0, 1, 2, 3] }, pgd))
      expect((nan as Adversary.AttackError).sample).toBe(0)
    }).pipe(Effect.provide(Rng.seeded(0))))

  it("a classifier without a declared class count costs one forward pass on one sample", () => {
    noLeaks(() => {
      const undeclared: Classifier = { name: "plain", logits: c.logits }
      const x = images(3, () => 0.5)
      const y = tf.tensor1d([0, 1, 2], "int32")
      try {
        const fgsm = make(Adversary.fgsm({ eps: 0.1 }))
        const declared = perturbSync(fgsm, c, x, y, 0)
        const learnt = perturbSync(fgsm, undeclared, x, y, 0)
        expect(learnt.queries - declared.queries).toBe(1)
        expect(Array.from(learnt.xAdv)).toEqual(Array.from(declared.xAdv))
        const wrong = tf.tensor1d([0, 1, 7], "int32")
        expect(errorOf(fgsm, undeclared, x, wrong).message).toMatch(/sample 2: label 7 .*\[0, 4\)/)
        wrong.dispose()
      } finally {
        tf.dispose([x, y])
      }
    })
  })
})

describe("declared input bounds", () => {
  it("inputs in [-1, 1] are accepted by a [-1, 1] classifier and x_adv stays in its box and ball", () => {
    const c = linear([-1, 1])
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1_000_000 }), fc.integer({ min: 0, max: 5 }), fc.double({ min: 0, max: 0.8, noNaN: true }), (seed, which, eps) => {
        noLeaks(() => {
          const x = tf.randomUniform([3, 4, 4, 1], -1, 1, "float32", seed) as tf.Tensor4D
          const y = tf.tensor1d([seed % K, (seed + 1) % K, (seed + 2) % K], "int32")
          try {
            const all = [
              make(Adversary.fgsm({ eps })),
              make(Adversary.pgd({ eps, steps: 3 })),
              make(Adversary.pgd({ eps, steps: 3, norm: "L2" })),
              make(Adversary.apgd({ eps, steps: 3 })),
              make(Adversary.apgdTargeted({ eps, steps: 3, targets: 2 })),
              make(Adversary.square({ eps, queries: 10 }))
            ]
            const r = perturbSync(all[which]!, c, x, y, seed)
            const xs = x.dataSync()
            for (let i = 0; i < r.xAdv.length; i++) {
              expect(r.xAdv[i]!).toBeGreaterThanOrEqual(-1)
              expect(r.xAdv[i]!).toBeLessThanOrEqual(1)
              if (which !== 2) expect(Math.abs(r.xAdv[i]! - xs[i]!)).toBeLessThanOrEqual(eps + 1e-5)
            }
          } finally {
            tf.dispose([x, y])
          }
        })
      }),
      { numRuns: 30 }
    )
  })
})
