/**
 * Regularizers: random intermediate states against direct solves, input entropy reduction (entropy goes down on a
 * trained model, purified inputs stay in the ball and the box, R = 0 is the identity, gradients through the whole
 * defence), the Hutchinson Jacobian estimate against the exact Frobenius norm (value and parameter gradient), and
 * the penalty's schedule (probability, cut-off epoch).
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import { ConfigError } from "../src/Errors.ts"
import { makeBroydenSync, makePicardSync } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import * as Regularizers from "../src/Regularizers.ts"
import * as Train from "../src/Train.ts"
import { leakCheck, noLeaks, stream, tf, useBackend } from "../src/Tensor.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const B = 8, K = 4
const images = (seed = 3) => tf.randomUniform([B, 8, 8, 1], 0, 1, "float32", seed) as tf.Tensor4D
const fcModel = (seed = 1) => Models.fc({ inputShape: [8, 8, 1], hidden: 32, classes: K }, { seed })

const maxAbsDiff = (a: tf.Tensor, b: tf.Tensor): number => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!)

const entropyOf = (logits: tf.Tensor): number => tf.tidy(() => Regularizers.meanEntropy(logits).dataSync()[0]!)

/** z_n by a direct solve of exactly n steps, then the paper's tail (f, then 5 steps with lambda 0.5), then h */
const directTail = (deq: Dynamics.Deq, x: tf.Tensor4D, n: number): tf.Tensor2D =>
  tf.tidy(() => {
    const m = deq.model
    const u = m.inject(x)
    const f = (z: tf.Tensor) => m.cell(z, u)
    const r = deq.solver.run(f, m.initState(u), { maxIter: n, tol: 0, returnMode: "last" })
    let z = f(r.z)
    for (let k = 0; k < 5; k++) z = tf.add(tf.mul(z, 0.5), tf.mul(f(z), 0.5))
    return m.head(z)
  })

describe("random intermediate states", () => {
  it.effect("draws lie in 1..N, follow the seed, and the state read out is z_n plus the paper's tail", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const N = 6
      const ris = yield* Regularizers.TrainReadOut.pipe(Effect.provide(Regularizers.randomIntermediateStates({ max: N })))
      expect(ris.readOut).toEqual(Dynamics.readOut.randomState(N))
      // evaluation reads z_N
      expect(ris.evalReadOut).toEqual(Dynamics.readOut.state(N))
      const model = yield* fcModel()
      // Picard converges linearly, so neighbouring states stay distinguishable
      const deq = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: N } })
      const x = images()
      const drawsOf = (seed: number, calls: number) => {
        const s = stream(seed)
        const out: Array<number> = []
        for (let i = 0; i < calls; i++) {
          noLeaks(() => tf.dispose(Dynamics.logits(deq, x, ris.readOut, { stream: s, onDraw: (n) => out.push(n as number) })))
        }
        return out
      }
      const a = drawsOf(7, 40)
      expect(a).toHaveLength(40)
      for (const n of a) {
        expect(Number.isInteger(n)).toBe(true)
        expect(n).toBeGreaterThanOrEqual(1)
        expect(n).toBeLessThanOrEqual(N)
      }
      // every state gets drawn, the same seed repeats the draws, another seed does not
      expect(new Set(a).size).toBe(N)
      expect(drawsOf(7, 40)).toEqual(a)
      expect(drawsOf(8, 40)).not.toEqual(a)
      // the logits are those of z_n (direct n-step solve) through the tail
      for (const seed of [1, 2, 3, 4, 5]) {
        let drawn = 0
        const l = Dynamics.logits(deq, x, ris.readOut, { stream: stream(seed), onDraw: (n) => (drawn = n as number) })
        // the closest of the N direct read-outs is z_drawn's, and it matches
        const distances = Array.from({ length: N }, (_, i) => {
          const direct = directTail(deq, x, i + 1)
          const d = maxAbsDiff(l, direct)
          direct.dispose()
          return d
        })
        expect(distances[drawn - 1]!).toBeLessThan(1e-5)
        expect(distances.indexOf(Math.min(...distances))).toBe(drawn - 1)
        for (let i = 0; i < N; i++) if (i !== drawn - 1) expect(distances[i]!).toBeGreaterThan(1e-5)
        l.dispose()
      }
      x.dispose()
    }))))

  it.effect("per sample: one n per sample, each row read from its own z_n", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const N = 5
      const ris = yield* Regularizers.makeRandomIntermediateStates({ max: N, perSample: true })
      const model = yield* fcModel(2)
      const deq = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: N } })
      const x = images(5)
      let ns: Int32Array<ArrayBufferLike> = new Int32Array(0)
      const l = Dynamics.logits(deq, x, ris.readOut, { stream: stream(11), onDraw: (n) => (ns = n as Int32Array) })
      expect(ns).toHaveLength(B)
      expect(new Set(ns).size).toBeGreaterThan(1)
      for (let b = 0; b < B; b++) {
        const direct = directTail(deq, x, ns[b]!)
        const row = tf.tidy(() => tf.max(tf.abs(tf.sub(l.slice([b, 0], [1, -1]), direct.slice([b, 0], [1, -1])))).dataSync()[0]!)
        expect(row).toBeLessThan(1e-5)
        direct.dispose()
      }
      tf.dispose([l, x])
    }))))
})

/** a briefly trained FC DEQ (standard training on synthetic 8x8 data), owned by the caller's Scope */
const trainedModel = Effect.gen(function*() {
  const data = yield* Data.synthetic({ height: 8, width: 8, classes: K, trainSize: 256, testSize: 64, seed: 4 })
  const model = yield* fcModel(3)
  const config = Train.decodeConfigSync({
    model: { _tag: "fc", inputShape: [8, 8, 1], hidden: 32, classes: K },
    data: { name: "synthetic" },
    method: { _tag: "standard" },
    eval: { every: 0 },
    epochs: 3,
    batchSize: 32,
    lr: 3e-3
  })
  yield* Train.fit(model, data, config).pipe(Effect.provide(Layer.mergeAll(
    Train.layersFromConfig(config),
    Regularizers.finalState()
  )))
  return { model, data }
})

describe("input entropy reduction", () => {
  it.effect("lowers the prediction entropy of a trained model; purified inputs stay in the eps-ball and [0, 1]", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const { model, data } = yield* trainedModel
      const deq = Dynamics.makeWith(model, makeBroydenSync({}), { solve: { maxIter: 8 } })
      const eps = 0.1
      const defence = yield* Regularizers.makeEntropyReduction({ ...Regularizers.entropyReductionPresets.mnist, eps })
      expect(defence.enabled).toBe(true)
      const { x, y } = Data.toTensors(data.test, Array.from({ length: 32 }, (_, i) => i))
      // before: h(z_8) of the plain 8-step trajectory
      const before = Dynamics.trajectory(deq, x, undefined, { steps: 8 }).states[7]!.meanEntropy
      const out = defence.run(deq, x)
      const after = entropyOf(out.logits)
      console.log(`entropy reduction: mean prediction entropy ${before.toFixed(4)} -> ${after.toFixed(4)}`)
      expect(after).toBeLessThan(before)
      expect(after).toBeLessThan(0.9 * before)
      const [lo, hi, dist] = tf.tidy(() => [
        tf.min(out.purified).dataSync()[0]!,
        tf.max(out.purified).dataSync()[0]!,
        tf.max(tf.abs(tf.sub(out.purified, x))).dataSync()[0]!
      ])
      expect(lo).toBeGreaterThanOrEqual(0)
      expect(hi).toBeLessThanOrEqual(1)
      expect(dist).toBeLessThanOrEqual(eps + 1e-6)
      // the input really moved
      expect(dist).toBeGreaterThan(eps / 2)
      tf.dispose([x, y, out.logits, out.purified])
    }))))

  it.effect("with R = 0 it is the identity: the logits are the undefended read-out of the same state", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel(4)
      const x = images(9)
      for (const [solver, tol] of [[makePicardSync({}), 0], [makeBroydenSync({}), 1e-4]] as const) {
        const deq = Dynamics.makeWith(model, solver, { solve: { maxIter: 8 } })
        for (const state of [8, 5]) {
          const defence = yield* Regularizers.makeEntropyReduction({ inputSteps: 0, warmStart: "last", state })
          const out = defence.run(deq, x)
          const t = Dynamics.trajectory(deq, x, undefined, { steps: 8, keepLogits: true })
          const plain = t.states[state - 1]!.logits!
          const d = maxAbsDiff(out.logits, plain)
          if (tol === 0) expect(d).toBe(0)
          else expect(d).toBeLessThan(tol)
          expect(maxAbsDiff(out.purified, x)).toBe(0)
          tf.dispose([out.logits, out.purified, ...t.states.map((s) => s.logits!)])
        }
      }
      x.dispose()
    }))))

  it.effect("is differentiable w.r.t. x through the whole defence (finite, nonzero gradient inside tf.grad)", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* fcModel(5)
      const x = images(12)
      for (const solver of [makeBroydenSync({}), makePicardSync({})]) {
        const deq = Dynamics.makeWith(model, solver, { solve: { maxIter: 8 } })
        for (const readOut of ["state", "tail"] as const) {
          const defence = yield* Regularizers.makeEntropyReduction({ ...Regularizers.entropyReductionPresets.mnist, readOut })
          const g = tf.grad((xx: tf.Tensor) => {
            const out = defence.run(deq, xx as tf.Tensor4D)
            out.purified.dispose()
            return tf.sum(tf.mul(out.logits, tf.range(0, K).reshape([1, K])))
          })(x)
          const [finite, norm] = tf.tidy(() => [tf.all(tf.isFinite(g)).dataSync()[0]!, tf.norm(g).dataSync()[0]!])
          expect(finite).toBe(1)
          expect(norm).toBeGreaterThan(0)
          g.dispose()
        }
      }
      x.dispose()
    }))))

  it.effect("options are decoded strictly; noDefence returns x and the plain read-out", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const e = yield* Effect.flip(Regularizers.makeEntropyReduction({ rouds: 3 } as any))
      expect(e).toBeInstanceOf(ConfigError)
      expect(e.message).toContain("rouds")
      const none = yield* Regularizers.InputDefence.pipe(Effect.provide(Regularizers.noDefence))
      expect(none.enabled).toBe(false)
      const model = yield* fcModel(6)
      const deq = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: 8 } })
      const x = images(1)
      const out = none.run(deq, x)
      const plain = Dynamics.logits(deq, x, Dynamics.readOut.final)
      expect(maxAbsDiff(out.logits, plain)).toBe(0)
      expect(maxAbsDiff(out.purified, x)).toBe(0)
      tf.dispose([x, out.logits, out.purified, plain])
    }))))
})

describe("Jacobian penalty", () => {
  const N = 6
  const aValues = Array.from({ length: N * N }, (_, i) => Math.sin(1.7 * i + 0.3) * (1 + (i % 3)))
  const frob = aValues.reduce((s, v) => s + v * v, 0)

  it("the Hutchinson estimate matches ||J||_F^2 of a linear map in expectation (both probe kinds)", () => {
    noLeaks(() => {
      const A = tf.tensor2d(aValues, [N, N])
      const z = tf.randomNormal([3, N], 0, 1, "float32", 1)
      const f = (zz: tf.Tensor) => tf.matMul(zz as tf.Tensor2D, A)
      for (const distribution of ["normal", "rademacher"] as const) {
        const probes = 3000
        const raw = Regularizers.hutchinson(f, z, { probes, distribution, seed: 5, normalize: false })
        const normed = Regularizers.hutchinson(f, z, { probes, distribution, seed: 5 })
        // sum over the batch of ||J_b||_F^2 = 3 ||A||_F^2; normalised: / numel
        const exact = 3 * frob
        const tolerance = distribution === "normal" ? 0.05 : 0.03
        expect(Math.abs(raw.dataSync()[0]! / exact - 1)).toBeLessThan(tolerance)
        expect(normed.dataSync()[0]!).toBeCloseTo(raw.dataSync()[0]! / z.size, 4)
        // one probe is a noisy but unbiased draw: the same seed gives the same value
        const once = () => tf.tidy(() => Regularizers.hutchinson(f, z, { probes: 1, distribution, seed: 9 }).dataSync()[0]!)
        expect(once()).toBe(once())
        tf.dispose([raw, normed])
      }
      tf.dispose([A, z])
    })
  })

  it("is differentiable w.r.t. the parameters of f (double backward): d/dA of ||A||_F^2 is 2A", () => {
    const A = tf.variable(tf.tensor2d(aValues, [N, N]))
    noLeaks(() => {
      const z = tf.randomNormal([2, N], 0, 1, "float32", 2)
      const f = (zz: tf.Tensor) => tf.tanh(tf.matMul(zz as tf.Tensor2D, A)).mul(0).add(tf.matMul(zz as tf.Tensor2D, A))
      // many short calls: one call's tape grows with its probes, and each nested VJP scans the whole tape
      const calls = 25
      let value = 0
      let g: tf.Tensor = tf.zerosLike(A)
      for (let c = 0; c < calls; c++) {
        const out = tf.variableGrads(
          () => Regularizers.hutchinson(f, z, { probes: 40, distribution: "rademacher", seed: c, normalize: false }),
          [A]
        )
        value += out.value.dataSync()[0]! / calls
        const prev = g
        const next = tf.tidy(() => tf.add(prev, tf.div(out.grads[A.name]!, calls)))
        tf.dispose([g, out.value, out.grads[A.name]!])
        g = next
      }
      // value ~ 2 ||A||^2, gradient ~ 2 * 2A
      expect(Math.abs(value / (2 * frob) - 1)).toBeLessThan(0.05)
      const rel = tf.tidy(() => tf.norm(tf.sub(g, tf.mul(A, 4))).div(tf.norm(tf.mul(A, 4))).dataSync()[0]!)
      expect(rel).toBeLessThan(0.1)
      tf.dispose([z, g])
    })
    A.dispose()
  })

  it.effect("constructors are Effects that fail with a ConfigError naming the field (never a throw)", () =>
    Effect.gen(function*() {
      const jitter = yield* Effect.flip(Regularizers.makeJacobian({ jitter: [1, -2] }))
      expect(jitter).toBeInstanceOf(ConfigError)
      expect(jitter.path).toBe("jacobian.jitter")
      expect(jitter.message).toContain("lo > hi")
      const typo = yield* Effect.flip(Regularizers.makeJacobian({ wieght: 1 } as any))
      expect(typo.message).toContain("wieght")
      const max = yield* Effect.flip(Regularizers.makeRandomIntermediateStates({ max: 0 }))
      expect(max.path).toBe("randomIntermediateStates.max")
      const missing = yield* Effect.flip(Regularizers.makeRandomIntermediateStates({} as any))
      expect(missing.path).toBe("randomIntermediateStates.max")
      const gamma = yield* Effect.flip(Regularizers.makeFinalState({ correction: { gamma: 2 } }))
      expect(gamma.path.startsWith("finalState.correction")).toBe(true)
      expect(gamma.message).toContain("gamma")
      // the layer carries the same error
      const layer = yield* Effect.flip(Effect.provide(Effect.service(Regularizers.JacobianPenalty), Regularizers.jacobian({ probes: 0 })))
      expect(layer).toBeInstanceOf(ConfigError)
      expect(layer.path).toBe("jacobian.probes")
      // a TrainConfig checks the same class: the path is the config's
      const inConfig = yield* Effect.flip(Train.decodeConfig({
        model: { _tag: "fc", inputShape: [8, 8, 1], hidden: 8, classes: K },
        data: { name: "synthetic" },
        regularizers: { jacobian: { jitter: [2, 1] } }
      }))
      expect(inConfig.path).toContain("regularizers.jacobian")
      expect(inConfig.message).toContain("jitter")
      expect(inConfig.message).toContain("lo > hi")
      // defaults come from the class, once
      const paper = yield* Regularizers.makeJacobian()
      expect([paper.weight, paper.probability, paper.probes, paper.distribution]).toEqual([0.4, 0.02, 2, "normal"])
      const corr = yield* Regularizers.makeFinalState({ correction: {} })
      expect(corr.correction).toMatchObject({ states: 2, gamma: 0.8, weight: 1 })
      expect(corr.dropout).toBe(true)
    }))

  it.effect("is active with the given probability and off after the cut-off epoch; noJacobian never", () =>
    Effect.gen(function*() {
      const paper = yield* Regularizers.JacobianPenalty.pipe(Effect.provide(Regularizers.jacobian({ untilEpoch: 90 })))
      expect(paper.weight).toBe(0.4)
      expect(paper.probability).toBe(0.02)
      expect(paper.probes).toBe(2)
      const count = (j: Regularizers.JacobianPenalty["Service"], epoch: number) => {
        let on = 0
        for (let i = 0; i < 4000; i++) if (j.active(epoch, stream(i))) on++
        return on / 4000
      }
      expect(count(paper, 1)).toBeGreaterThan(0.01)
      expect(count(paper, 1)).toBeLessThan(0.03)
      expect(count(paper, 90)).toBe(0)
      expect(count(yield* Regularizers.makeJacobian({ probability: 0 }), 1)).toBe(0)
      const always = yield* Regularizers.makeJacobian({ probability: 1, untilEpoch: 3 })
      expect(count(always, 2)).toBe(1)
      expect(count(always, 3)).toBe(0)
      const none = yield* Regularizers.JacobianPenalty.pipe(Effect.provide(Regularizers.noJacobian))
      expect(none.enabled).toBe(false)
      expect(count(none, 1)).toBe(0)
    }))
})
