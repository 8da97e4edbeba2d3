/**
 * The "can the mechanism act" check (Evaluation.mechanismCheck): per state z_n, the relative distance of
 * tail(z_n) to tail(z_N) and the prediction agreement, recomputed here by hand from direct n-step solves and the
 * damped tail; the residual at z_N; the "nothing to regulate" verdict from numbers.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import { isIdle, mechanismCheck, mechanismSection } from "../src/Evaluation.ts"
import { makePicardSync } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import { leakCheck, tf, useBackend } from "../src/Tensor.ts"
import { randomSplit } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const B = 10, N = 5

const splitOf = (seed: number): Data.Split => randomSplit(B, seed)

/** By hand: z_n of an n-step Picard solve, read through f then k damped steps. */
const byHand = (deq: Dynamics.Deq, split: Data.Split, k: number, lambda: number) =>
  tf.tidy(() => {
    const x = tf.tensor4d(split.images, [B, 8, 8, 1])
    const u = deq.model.inject(x)
    const f = (z: tf.Tensor) => deq.model.cell(z, u)
    const tails: Array<tf.Tensor2D> = []
    let z = deq.model.initState(u)
    for (let n = 1; n <= N; n++) {
      z = f(z)
      let t = f(z)
      for (let i = 0; i < k; i++) t = tf.add(tf.mul(t, 1 - lambda), tf.mul(f(t), lambda))
      tails.push(tf.reshape(t, [B, -1]) as tf.Tensor2D)
    }
    const last = tails[N - 1]!.arraySync()
    const lastPred = tf.argMax(deq.model.head(tails[N - 1]!), 1).arraySync() as Array<number>
    const norm = (v: ReadonlyArray<number>) => Math.sqrt(v.reduce((a, b) => a + b * b, 0))
    const rows = tails.map((t, i) => {
      const v = t.arraySync()
      const pred = tf.argMax(deq.model.head(t), 1).arraySync() as Array<number>
      let d = 0, a = 0
      for (let b = 0; b < B; b++) {
        d += norm(v[b]!.map((x, j) => x - last[b]![j]!)) / (norm(last[b]!) + 1e-9)
        if (pred[b] === lastPred[b]) a++
      }
      return { n: i + 1, distance: d / B, agreement: a / B }
    })
    const zN = (tf.reshape(z, [B, -1]) as tf.Tensor2D).arraySync(), fz = (tf.reshape(f(z), [B, -1]) as tf.Tensor2D).arraySync()
    let r = 0
    for (let b = 0; b < B; b++) r += norm(fz[b]!.map((x, j) => x - zN[b]![j]!)) / (norm(fz[b]!) + 1e-9)
    return { rows, residual: r / B }
  })

describe("mechanismCheck", () => {
  it.effect("distances, agreements and the residual equal a by-hand computation", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      // a large wScale keeps the tiny FC cell from contracting fast: the states differ from z_N
      const model = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 16, classes: 4, wScale: 3 }, { seed: 3 })
      for (const [k, lambda] of [[5, 0.5], [0, 0.5]] as const) {
        const deq = Dynamics.makeWith(model, makePicardSync({}), { backward: Dynamics.unroll(k, lambda), solve: { maxIter: N } })
        const split = splitOf(7)
        const got = yield* mechanismCheck(deq, split, { steps: N, batchSize: 4 })
        const want = byHand(deq, split, k, lambda)
        expect(got.samples).toBe(B)
        expect(got.rows.map((r) => r.n)).toEqual([1, 2, 3, 4, 5])
        got.rows.forEach((r, i) => {
          expect(r.distance).toBeCloseTo(want.rows[i]!.distance, 4)
          expect(r.agreement).toBeCloseTo(want.rows[i]!.agreement, 6)
        })
        expect(got.rows[N - 1]!.distance).toBe(0)
        expect(got.rows[N - 1]!.agreement).toBe(1)
        // the early states are really different here, so the check has something to show
        expect(got.rows[0]!.distance).toBeGreaterThan(0.01)
        expect(got.residual).toBeCloseTo(want.residual, 4)
        expect(got.residual).toBeGreaterThan(0)
        expect(got.idle).toBe(isIdle(got.rows, 0.95))
        expect(got.tail).toBe(`f, then ${k} damped steps (lambda ${lambda})`)
      }
    }))))
})

describe("isIdle and the verdict", () => {
  const rows = (agreements: ReadonlyArray<number>) => agreements.map((agreement, i) => ({ n: i + 1, distance: 0.1, agreement }))
  it("says nothing to regulate only when every n >= 2 agrees above the threshold", () => {
    // z_1 may disagree: the check starts at n = 2
    expect(isIdle(rows([0.5, 0.96, 0.99, 1]), 0.95)).toBe(true)
    expect(isIdle(rows([0.99, 0.95, 0.99, 1]), 0.95)).toBe(false)
    expect(isIdle(rows([0.99, 0.99, 0.9, 1]), 0.95)).toBe(false)
    expect(isIdle(rows([1]), 0.95)).toBe(false)
    const base = { residual: 0.2, samples: 100, tail: "f", threshold: 0.95 }
    const idle = mechanismSection({ ...base, rows: rows([0.5, 0.96, 1]), idle: true })
    expect(idle).toContain("Random intermediate states have nothing to regulate here")
    expect(idle).toContain("residual at z_3: 0.2000")
    const active = mechanismSection({ ...base, rows: rows([0.5, 0.7, 1]), idle: false })
    expect(active).not.toContain("have nothing to regulate here")
    expect(active).toContain("The mechanism can act")
    expect(active).toContain("agree with z_3 on as few as 70.0% of clean inputs")
  })
})
