/**
 * Dynamics: trajectory invariants (shapes, entropy range, residuals and accuracy against direct recomputation,
 * the last state against the Final read-out), read-outs against direct solves (State, Ensemble, RandomState),
 * gradients (w.r.t. x; implicit against a long unroll), memory independent of the solver budget, no leaks.
 *
 * Definitions used by the "early exit" test: trajectory(deq, x, { steps: N }) records z_1..z_N of one solve
 * with tol 0; `logits(Final)` with solve options { maxIter: N, tol: 0, returnMode: "last" } solves the same N
 * steps. Its value is h(attach(z_N)): with Phantom(k = 0) the gradient tail is the identity in value, so the
 * logits equal h(z_N) exactly; with Implicit the hook's value is f(z_N), so the logits equal h(f(z_N)).
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Dynamics from "../src/Dynamics.ts"
import { Backward, makePicardSync, Solver } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import { leakCheck, noLeaks, stream, tf, useBackend } from "../src/Tensor.ts"
import { maxAbsDiff } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const B = 6, K = 5
const images = (seed = 11) => tf.randomUniform([B, 8, 8, 1], 0, 1, "float32", seed) as tf.Tensor4D
const labels = () => tf.tensor1d([0, 1, 2, 3, 4, 0], "int32")

const fcModel = (extra: object = {}, seed = 1) =>
  Models.fc({ inputShape: [8, 8, 1], hidden: 24, classes: K, ...extra }, { seed })
const convModel = (seed = 1) =>
  Models.conv({ inputShape: [8, 8, 1], channels: 4, expansion: 2, groups: 2, stemStride: 1, classes: K }, { seed })

const identityTail = Backward.phantom(0, 1)

/** z_n by a direct solve of exactly n steps, with everything needed to recompute a read-out by hand */
const direct = (deq: Dynamics.Deq, x: tf.Tensor4D, n: number) => {
  const u = deq.model.inject(x)
  const f = (z: tf.Tensor) => deq.model.cell(z, u)
  const z0 = deq.model.initState(u)
  const r = deq.solver.run(f, z0, { ...deq.solveOptions, maxIter: n, tol: 0, returnMode: "last" })
  return { u, f, z0, zn: r.z }
}

describe("trajectory", () => {
  it.effect("states, entropies, residuals and accuracy agree with direct recomputation", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      for (const build of [fcModel(), convModel()]) {
        const model = yield* build
        const deq = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: 7 } })
        const x = images(), y = labels()
        const t = yield* Dynamics.trajectoryScoped(deq, x, y)
        expect(t.states.map((s) => s.n)).toEqual([1, 2, 3, 4, 5, 6, 7])
        expect(t.batch).toBe(B)
        expect(t.classes).toBe(K)
        expect(t.stats.steps).toBe(7)
        const yv = y.dataSync()
        for (const s of t.states) {
          expect(s.logits!.shape).toEqual([B, K])
          expect(s.entropy).toHaveLength(B)
          for (const e of s.entropy) {
            expect(e).toBeGreaterThanOrEqual(-1e-6)
            expect(e).toBeLessThanOrEqual(Math.log(K) + 1e-5)
          }
          expect(s.meanEntropy).toBeCloseTo(s.entropy.reduce((a, b) => a + b, 0) / B, 5)
          // accuracy from a direct argmax of the kept logits
          const logits = s.logits!.dataSync()
          let correct = 0
          for (let b = 0; b < B; b++) {
            let best = 0
            for (let c = 1; c < K; c++) if (logits[b * K + c]! > logits[b * K + best]!) best = c
            expect(s.predictions[b]).toBe(best)
            if (best === yv[b]) correct++
          }
          expect(s.accuracy).toBe(correct / B)
        }
        noLeaks(() =>
          tf.tidy(() => {
            for (const n of [1, 4, 7]) {
              const d = direct(deq, x, n)
              const s = t.states[n - 1]!
              // the state: h(z_n) of an n-step solve
              expect(maxAbsDiff(model.head(d.zn).dataSync(), s.logits!.dataSync())).toBeLessThan(1e-5)
              // entropy and relative residual recomputed from z_n
              const p = tf.softmax(model.head(d.zn))
              const ent = tf.neg(tf.sum(tf.mul(p, tf.log(tf.maximum(p, 1e-30))), 1))
              expect(maxAbsDiff(ent.dataSync(), s.entropy)).toBeLessThan(1e-4)
              const fz = tf.reshape(d.f(d.zn), [B, -1]), zf = tf.reshape(d.zn, [B, -1])
              const rel = tf.div(tf.norm(tf.sub(fz, zf), "euclidean", 1), tf.norm(fz, "euclidean", 1))
              expect(maxAbsDiff(rel.dataSync(), s.relResidual)).toBeLessThan(1e-5)
              expect(s.meanRelResidual).toBeCloseTo(s.relResidual.reduce((a, b) => a + b, 0) / B, 6)
            }
          })
        )
        // one-hot labels give the same accuracies
        const oneHot = tf.oneHot(y, K)
        const t2 = Dynamics.trajectory(deq, x, oneHot)
        expect(t2.states.map((s) => s.accuracy)).toEqual(t.states.map((s) => s.accuracy))
        expect(t2.states.every((s) => s.logits === undefined)).toBe(true)
        tf.dispose([x, y, oneHot])
      }
    }))))

  it.effect("early exit: the last state equals the Final read-out under the same budget", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel()
      const x = images()
      const N = 6
      const solve = { maxIter: N, tol: 0, returnMode: "last" as const }
      const t = Dynamics.trajectory(Dynamics.makeWith(model, makePicardSync({}), { solve }), x, undefined, { keepLogits: true })
      const last = t.states.at(-1)!.logits!
      noLeaks(() =>
        tf.tidy(() => {
          const exact = Dynamics.logits(Dynamics.makeWith(model, makePicardSync({}), { solve, backward: identityTail }), x, Dynamics.readOut.final)
          expect(exact.dataSync()).toEqual(last.dataSync())
          const implicit = Dynamics.logits(
            Dynamics.makeWith(model, makePicardSync({}), { solve, backward: Backward.implicit() }),
            x,
            Dynamics.readOut.final
          )
          const d = direct(Dynamics.makeWith(model, makePicardSync({}), { solve }), x, N)
          expect(maxAbsDiff(implicit.dataSync(), model.head(d.f(d.zn)).dataSync())).toBeLessThan(1e-6)
        })
      )
      tf.dispose([x, ...t.states.map((s) => s.logits!)])
    }))))

  it.effect("a tolerance in the trajectory's solve options ends it early", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel()
      const deq = Dynamics.makeWith(model, makePicardSync({}))
      const x = images()
      const t = Dynamics.trajectory(deq, x, undefined, { steps: 60, solve: { tol: 1e-3 } })
      expect(t.stats.status).toBe("converged")
      expect(t.states.length).toBeLessThan(60)
      expect(t.states.length).toBe(t.stats.steps)
      x.dispose()
    }))))
})

describe("predictionEntropy", () => {
  it("is log C for uniform logits, near 0 for a confident row, and matches -sum p log p", () => {
    const [uniform, confident, mixed] = noLeaks(() =>
      tf.tidy(() => {
        const h = Dynamics.predictionEntropy(tf.tensor2d([[0, 0, 0, 0], [50, 0, 0, 0], [1, 2, 0, -1]]))
        return Array.from(h.dataSync())
      })
    )
    expect(uniform).toBeCloseTo(Math.log(4), 5)
    expect(confident).toBeLessThan(1e-6)
    const z = [1, 2, 0, -1].map(Math.exp), s = z.reduce((a, b) => a + b, 0)
    expect(mixed).toBeCloseTo(-z.map((v) => v / s).reduce((a, p) => a + p * Math.log(p), 0), 5)
  })
})

describe("read-outs", () => {
  it.effect("State(n) equals solving n steps directly, then the tail", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      for (const build of [fcModel(), convModel()]) {
        const model = yield* build
        const deq = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: 30, tol: 1e-2 } })
        const x = images()
        noLeaks(() =>
          tf.tidy(() => {
            for (const n of [1, 3, 5]) {
              for (const tail of [Dynamics.paperTail, Backward.phantom(2, 0.5), identityTail]) {
                const d = direct(deq, x, n)
                const expected = model.head(Dynamics.applyGradient(d.f, d.zn, tail, d.z0))
                let steps = -1
                const got = Dynamics.logits(deq, x, Dynamics.readOut.state(n), { tail, onStats: (st) => (steps = st.steps) })
                expect(maxAbsDiff(got.dataSync(), expected.dataSync())).toBeLessThan(1e-5)
                expect(steps).toBe(n) // exactly n steps, even though the deq's own tol would stop earlier
              }
            }
            // the default tail is the deq's gradient (paperTail): h(f(z_n)) then 5 damped steps, not h(z_n)
            const d = direct(deq, x, 2)
            const f = d.f
            let next = f(d.zn)
            for (let i = 0; i < 5; i++) next = tf.add(tf.mul(next, 0.5), tf.mul(f(next), 0.5))
            const dflt = Dynamics.logits(deq, x, Dynamics.readOut.state(2))
            expect(maxAbsDiff(dflt.dataSync(), model.head(next).dataSync())).toBeLessThan(1e-5)
          })
        )
        x.dispose()
      }
    }))))

  it.effect("Ensemble(from, to) is the mean of the per-state logits", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel()
      const deq = Dynamics.makeWith(model, makePicardSync({}), { backward: Dynamics.unroll(1, 1) })
      const x = images()
      noLeaks(() =>
        tf.tidy(() => {
          const ens = Dynamics.logits(deq, x, Dynamics.readOut.ensemble(2, 5))
          const each = [2, 3, 4, 5].map((n) => Dynamics.logits(deq, x, Dynamics.readOut.state(n)))
          expect(maxAbsDiff(ens.dataSync(), tf.div(tf.addN(each), 4).dataSync())).toBeLessThan(1e-5)
          const one = Dynamics.logits(deq, x, Dynamics.readOut.ensemble(3, 3))
          expect(maxAbsDiff(one.dataSync(), each[1]!.dataSync())).toBeLessThan(1e-6)
        })
      )
      expect(() => Dynamics.logits(deq, x, Dynamics.readOut.ensemble(4, 2))).toThrow(/from/)
      x.dispose()
    }))))

  it.effect("RandomState draws n in {1..max} from the stream and reads out State(n)", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel()
      const deq = Dynamics.makeWith(model, makePicardSync({}))
      const x = images()
      const max = 4
      const drawsOf = (seed: number, calls: number) => {
        const s = stream(seed)
        const draws: Array<number> = []
        noLeaks(() => {
          for (let i = 0; i < calls; i++) {
            const l = Dynamics.logits(deq, x, Dynamics.readOut.randomState(max), {
              stream: s,
              onDraw: (n) => draws.push(n as number)
            })
            const ref = Dynamics.logits(deq, x, Dynamics.readOut.state(draws.at(-1)!))
            expect(maxAbsDiff(l.dataSync(), ref.dataSync())).toBe(0)
            tf.dispose([l, ref])
          }
        })
        return draws
      }
      const a = drawsOf(5, 12)
      expect(a.every((n) => Number.isInteger(n) && n >= 1 && n <= max)).toBe(true)
      expect(new Set(a).size).toBeGreaterThan(1)
      expect(drawsOf(5, 12)).toEqual(a) // same seed, same draws
      const reference = stream(5)
      expect(a).toEqual(a.map(() => reference.int(1, max)))
      expect(drawsOf(6, 12)).not.toEqual(a)
      // `draw` resolves the read-out up front, from the same stream position
      expect(Dynamics.draw(Dynamics.readOut.randomState(max), stream(5))).toEqual(Dynamics.readOut.state(a[0]!))
      expect(() => Dynamics.logits(deq, x, Dynamics.readOut.randomState(max))).toThrow(/stream/)
      x.dispose()
    }))))

  it.effect("RandomState per sample: one n per sample, each row read out at its own state", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel()
      const deq = Dynamics.makeWith(model, makePicardSync({}))
      const x = images()
      noLeaks(() =>
        tf.tidy(() => {
          let ns: Int32Array = new Int32Array(0)
          const l = Dynamics.logits(deq, x, Dynamics.readOut.randomState(5, { perSample: true }), {
            stream: stream(3),
            onDraw: (n) => (ns = n as Int32Array)
          })
          expect(ns).toHaveLength(B)
          expect(Array.from(ns).every((n) => n >= 1 && n <= 5)).toBe(true)
          const rows = l.arraySync()
          for (let b = 0; b < B; b++) {
            const ref = Dynamics.logits(deq, x, Dynamics.readOut.state(ns[b]!)).arraySync()[b]!
            expect(maxAbsDiff(rows[b]!, ref)).toBeLessThan(1e-5)
          }
        })
      )
      x.dispose()
    }))))

  it.effect("make takes the Solver from the context; logitsScoped owns its result", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel()
      const deq = yield* Dynamics.make(model, { solve: { maxIter: 4 } })
      expect(deq.solver.name).toBe("picard")
      expect(deq.backward).toEqual(Dynamics.paperTail)
      const x = images()
      const l = yield* Dynamics.logitsScoped(deq, x, Dynamics.readOut.final)
      expect(l.shape).toEqual([B, K])
      x.dispose()
    })).pipe(Effect.provide(Solver.picard({})))))
})

describe("gradients", () => {
  it.effect("every read-out is differentiable w.r.t. x, inside and outside the tape, without leaks", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* convModel()
      const x = images()
      const s = stream(1)
      for (const backward of [Dynamics.paperTail, Backward.implicit({ maxIter: 10 }), Backward.phantom(2), Backward.unrolled(3)]) {
        const deq = Dynamics.makeWith(model, makePicardSync({}), { backward, solve: { maxIter: 4 } })
        for (const r of [Dynamics.readOut.final, Dynamics.readOut.state(2), Dynamics.readOut.ensemble(1, 3), Dynamics.readOut.randomState(3)]) {
          noLeaks(() => {
            const g = tf.grad((xx: tf.Tensor) =>
              // a caller's own tidy inside the gradient function must not break the implicit backward
              tf.tidy(() => tf.sum(tf.square(Dynamics.logits(deq, xx as tf.Tensor4D, r, { stream: s }))))
            )(x)
            const v = g.dataSync()
            expect(Array.from(v).every(Number.isFinite)).toBe(true)
            expect(Math.max(...Array.from(v, Math.abs)), `${backward._tag} ${r._tag}`).toBeGreaterThan(0)
            g.dispose()
          })
        }
      }
      x.dispose()
    }))))

  it.effect("the implicit gradient matches backprop through a long unroll at a converged fixed point", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel({ norm: "none", act: "tanh", hidden: 16 }, 4)
      const x = images()
      const y = tf.tidy(() => tf.oneHot(labels(), K))
      const gradsOf = (backward: Backward) => {
        const deq = Dynamics.makeWith(model, makePicardSync({}), { backward, solve: { maxIter: 80, tol: 1e-7 } })
        const { value, grads } = tf.variableGrads(() =>
          tf.losses.softmaxCrossEntropy(y, Dynamics.logits(deq, x, Dynamics.readOut.final)) as tf.Scalar
        )
        value.dispose()
        return grads
      }
      noLeaks(() => {
        const implicit = gradsOf(Backward.implicit({ maxIter: 80, tol: 1e-7, solver: "picard" }))
        const unrolled = gradsOf(Backward.unrolled(80))
        for (const p of model.params) {
          const a = implicit[p.variable.name]!.dataSync(), b = unrolled[p.variable.name]!.dataSync()
          const scale = Math.max(...Array.from(b, Math.abs), 1e-6)
          expect(maxAbsDiff(a, b) / scale, p.name).toBeLessThan(2e-3)
        }
        tf.dispose([...Object.values(implicit), ...Object.values(unrolled)])
      })
      tf.dispose([x, y])
    }))))

  it("the forward solve stays off the tape: peak memory does not grow with the budget", async () => {
    const peak = (maxIter: number) =>
      Effect.runPromise(Effect.scoped(Effect.gen(function*() {
        const model = yield* convModel()
        const deq = Dynamics.makeWith(model, makePicardSync({}), { backward: Backward.phantom(1, 1), solve: { maxIter, tol: 0 } })
        const x = images()
        const info = yield* Effect.promise(() =>
          tf.profile(() => {
            const { value, grads } = tf.variableGrads(() => tf.sum(Dynamics.logits(deq, x, Dynamics.readOut.final)) as tf.Scalar)
            tf.dispose([value, ...Object.values(grads)])
          })
        )
        x.dispose()
        return info.peakBytes
      })))
    const short = await peak(3)
    const long = await peak(30)
    // an on-tape solve would keep ~27 more iterations of activations alive
    expect(long).toBeLessThan(short * 1.2)
  })
})
