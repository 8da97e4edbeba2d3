/**
 * The per-state worst case of the dynamics analysis (Evaluation.analyseDynamics with `more` attacks): a sample
 * counts at state n only when h(z_n) is right under every attack. Checked against each attack's own per-state
 * accuracy (never above the lowest, never below the union bound), and exactly: the same attack twice gives that
 * attack's accuracy, two deterministic attacks give the intersection recomputed here from their inputs.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Adversary from "../src/Adversary.ts"
import type * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import { analyseDynamics } from "../src/Evaluation.ts"
import { makePicardSync } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import { leakCheck, Rng, tf, useBackend } from "../src/Tensor.ts"
import { randomSplit } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const B = 24, N = 4

const splitOf = (seed: number): Data.Split =>
  randomSplit(B, seed, Int32Array.from({ length: B }, (_, i) => (i * 7 + seed) % 4))

describe("analyseDynamics: per-state worst case over attacks", () => {
  it.effect("bounds, each attack's own column, and the exact intersection", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 16, classes: 4, wScale: 3 }, { seed: 5 })
      const deq = Dynamics.makeWith(model, makePicardSync({}), { backward: Dynamics.unroll(2, 0.5), solve: { maxIter: N } })
      const split = splitOf(3)
      const classifier = Adversary.deqClassifier(deq, {
        source: Adversary.GradientSource.intermediate(N, 2, 0.5),
        readOut: Dynamics.readOut.final,
        diagnostics: false
      })
      const fgsm = yield* Adversary.fgsm({ eps: 0.2 })
      const pgd = yield* Adversary.pgd({ eps: 0.2, steps: 3, randomStart: false })
      const run = (more: ReadonlyArray<typeof fgsm>) =>
        analyseDynamics(deq, split, { steps: N, batchSize: 10, attack: { attack: fgsm, classifier }, more }).pipe(
          Effect.provide(Rng.seeded(1))
        )
      const single = yield* run([])
      const twice = yield* run([fgsm])
      const both = yield* run([pgd])
      expect(single[0]!.attacks).toBeUndefined()
      twice.forEach((r, k) => expect(r.robustAccuracy).toBeCloseTo(single[k]!.robustAccuracy!, 10))

      // by hand: both attacks are deterministic (no random start), so their inputs can be made again here
      const byHand = yield* Effect.scoped(Effect.gen(function*() {
        const x = tf.tensor4d(split.images, [B, 8, 8, 1]), y = tf.tensor1d(split.labels, "int32")
        const keys = Array.from({ length: B }, (_, i) => i)
        const right = Array.from({ length: N }, () => new Array<boolean>(B).fill(true))
        const own: Array<Array<number>> = []
        for (const attack of [fgsm, pgd]) {
          const xs: Array<tf.Tensor4D> = []
          for (let s = 0; s < B; s += 10) {
            const idx = keys.slice(s, s + 10)
            const xb = tf.gather(x, idx) as tf.Tensor4D, yb = tf.gather(y, idx) as tf.Tensor1D
            const r = yield* attack.perturb(classifier, xb, yb, { keys: idx })
            xs.push(tf.clone(r.xAdv) as tf.Tensor4D)
            tf.dispose([xb, yb])
          }
          const all = tf.concat(xs, 0) as tf.Tensor4D
          const traj = Dynamics.trajectory(deq, all, undefined, { steps: N })
          all.dispose()
          own.push(traj.states.map((st, k) => {
            let c = 0
            for (let b = 0; b < B; b++) {
              const ok = st.predictions[b] === split.labels[b]
              if (ok) c++
              else right[k]![b] = false
            }
            return c / B
          }))
          tf.dispose(xs)
        }
        tf.dispose([x, y])
        return { own, worst: right.map((r) => r.filter(Boolean).length / B) }
      }).pipe(Effect.provide(Rng.seeded(1))))

      both.forEach((r, k) => {
        const a = r.attacks!
        expect(Object.keys(a)).toEqual([fgsm.name, pgd.name])
        expect(a[fgsm.name]).toBeCloseTo(byHand.own[0]![k]!, 10)
        expect(a[pgd.name]).toBeCloseTo(byHand.own[1]![k]!, 10)
        expect(r.robustAccuracy).toBeCloseTo(byHand.worst[k]!, 10)
        expect(r.robustAccuracy!).toBeLessThanOrEqual(Math.min(a[fgsm.name]!, a[pgd.name]!) + 1e-12)
        expect(r.robustAccuracy!).toBeGreaterThanOrEqual(a[fgsm.name]! + a[pgd.name]! - 1 - 1e-12)
        // entropy and residual of adversarial inputs stay the first attack's
        expect(r.robustEntropy).toBeCloseTo(single[k]!.robustEntropy!, 8)
      })
      // the worst case is really lower somewhere, so the check can tell an intersection from either column
      expect(both.some((r) => r.robustAccuracy! < Math.min(...Object.values(r.attacks!)) - 1e-9)).toBe(true)
    }))))
})

describe("the conv head's grid", () => {
  it.effect("pools to headGrid x headGrid before the linear layer; a grid that does not divide the state is a ConfigError", () =>
    Effect.scoped(Effect.gen(function*() {
      const model = yield* Models.conv({ channels: 4, groups: 2, headGrid: 7 }, { seed: 1 })
      const W = model.params.find((p) => p.name === "conv/head/W")!.variable
      expect(W.shape).toEqual([4 * 7 * 7, 10])
      expect(model.summary).toContain("avgpool to 7x7")
      const logits = tf.tidy(() => model.head(tf.ones([2, 14, 14, 4])).arraySync())
      // a constant state pools to ones: the logits are the column sums of W plus b (= 0)
      const colSums = tf.tidy(() => tf.sum(W, 0).arraySync() as Array<number>)
      logits[0]!.forEach((v, j) => expect(v).toBeCloseTo(colSums[j]!, 4))
      const error = yield* Effect.flip(Models.conv({ channels: 4, groups: 2, headGrid: 4 }))
      expect(error._tag).toBe("ConfigError")
      expect(error.path).toBe("model.headGrid")
      expect(error.message).toContain("4x4 head grid does not divide the 14x14 state")
    })))
})
