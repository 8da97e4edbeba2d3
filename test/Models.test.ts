/**
 * Models: config decoding, output shapes, parameter counts against hand counts, seeded initialisation, GroupNorm
 * and weight norm against references, variational dropout, gradients reaching every parameter (fc, conv,
 * multiscale; phantom and implicit), scoped variables.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as Dynamics from "../src/Dynamics.ts"
import { ConfigError } from "../src/Errors.ts"
import { Backward, makePicardSync } from "../src/FixedPoint.ts"
import { groupNorm, groupNormReference, weightNorm } from "../src/internal/models/layers.ts"
import * as Models from "../src/Models.ts"
import { leakCheck, noLeaks, tf, useBackend } from "../src/Tensor.ts"
import { maxAbsDiff } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const images = (b: number, h: number, w: number, c: number, seed = 11) =>
  tf.randomUniform([b, h, w, c], 0, 1, "float32", seed) as tf.Tensor4D

/** small configs used throughout (8x8 inputs keep conv work tiny) */
const small = {
  fc: { _tag: "fc", inputShape: [8, 8, 1], hidden: 16, classes: 5 },
  conv: { _tag: "conv", inputShape: [8, 8, 1], channels: 4, expansion: 2, groups: 2, stemStride: 1, classes: 5 },
  multiscale: { _tag: "multiscale", inputShape: [8, 8, 1], channels: [4, 8], expansion: 2, groups: 2, stemStride: 1, classes: 5 }
} as const

const buildSmall = (kind: keyof typeof small, extra: object = {}, seed = 1) =>
  Effect.flatMap(Models.decodeConfig({ ...small[kind], ...extra }), (c) => Models.build(c, { seed }))

describe("configs", () => {
  it.effect("decode fills defaults and constructors agree", () =>
    Effect.gen(function*() {
      const c = yield* Models.decodeConfig({ _tag: "fc" })
      expect(c).toBeInstanceOf(Models.FcConfig)
      expect(c).toMatchObject({ hidden: 128, norm: "layer", act: "relu", inputShape: [28, 28, 1], classes: 10, dropout: 0 })
      const conv = yield* Models.decodeConfig({ _tag: "conv" })
      expect(conv).toMatchObject({ channels: 8, stemStride: 2, stemNorm: "group", weightNorm: true })
      expect(Models.encodeConfig(conv)).toEqual(Models.encodeConfig(new Models.ConvConfig({})))
    }))

  it.effect("unknown keys and bad values are ConfigErrors naming the field", () =>
    Effect.gen(function*() {
      const unknown = yield* Effect.flip(Models.decodeConfig({ _tag: "fc", hiden: 32 }))
      expect(unknown).toBeInstanceOf(ConfigError)
      expect(unknown.message).toContain("hiden")
      const bad = yield* Effect.flip(Models.decodeConfig({ _tag: "conv", channels: 0 }))
      expect(bad.message).toContain("channels")
      const tag = yield* Effect.flip(Models.decodeConfig({ _tag: "resnet" }))
      expect(tag).toBeInstanceOf(ConfigError)
      // constructors decode too
      const viaFc = yield* Effect.flip(Effect.scoped(Models.fc({ hidden: 16, typo: 1 } as any)))
      expect(viaFc.message).toContain("typo")
    }))

  it.effect("groups must divide every normalised width", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(Effect.scoped(buildSmall("conv", { channels: 6, groups: 4 })))
      expect(e).toBeInstanceOf(ConfigError)
      expect(e.path).toBe("model.groups")
      expect(e.message).toContain("channels (6)")
      const m = yield* Effect.flip(Effect.scoped(buildSmall("multiscale", { channels: [4, 6], groups: 4 })))
      expect(m.message).toContain("channels[1]")
    }))
})

describe("shapes and parameter counts", () => {
  it.effect("inject, cell, head and initState have the documented shapes", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const x = images(3, 8, 8, 1)
      const expected: Record<keyof typeof small, ReadonlyArray<number>> = {
        fc: [16],
        conv: [8, 8, 4],
        multiscale: [8 * 8 * 4 + 4 * 4 * 8]
      }
      for (const kind of ["fc", "conv", "multiscale"] as const) {
        const model = yield* buildSmall(kind)
        expect(model.stateShape).toEqual(expected[kind])
        noLeaks(() =>
          tf.tidy(() => {
            const u = model.inject(x)
            const z0 = model.initState(u)
            expect(z0.shape).toEqual([3, ...expected[kind]])
            expect(tf.max(tf.abs(z0)).dataSync()[0]).toBe(0)
            const z1 = model.cell(z0, u)
            expect(z1.shape).toEqual(z0.shape)
            expect(model.cell(z1, u).shape).toEqual(z0.shape)
            expect(model.head(z1).shape).toEqual([3, 5])
            expect(Array.from(model.head(z1).dataSync()).every(Number.isFinite)).toBe(true)
          })
        )
      }
      x.dispose()
    }))))

  it.effect("MNIST sizes: a stride-2 stem runs the conv DEQ at 14x14; odd multiscale sizes work", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const conv = yield* Models.conv({ channels: 4, groups: 2 })
      expect(conv.stateShape).toEqual([14, 14, 4])
      const ms = yield* Models.multiscale({ inputShape: [10, 10, 1], channels: [4, 8], groups: 2, stemStride: 2 })
      // 10 -> 5 (stride 2) -> 3 (half): upsampling 3 -> 6 is cropped back to 5
      expect(ms.stateShape).toEqual([5 * 5 * 4 + 3 * 3 * 8])
      const x = images(2, 10, 10, 1)
      noLeaks(() =>
        tf.tidy(() => {
          const u = ms.inject(x)
          expect(ms.cell(ms.initState(u), u).shape).toEqual([2, 5 * 5 * 4 + 3 * 3 * 8])
        })
      )
      x.dispose()
    }))))

  it.effect("parameter counts match hand counts", () =>
    Effect.scoped(Effect.gen(function*() {
      // FC: U (64x16) + b + W (16x16) + LayerNorm gain/bias + head (16x5) + bias
      const D = 64, H = 16, K = 5
      const fc = yield* buildSmall("fc")
      expect(fc.parameterCount).toBe(D * H + H + H * H + 2 * H + H * K + K)
      const fcNone = yield* buildSmall("fc", { norm: "none" })
      expect(fcNone.parameterCount).toBe(D * H + H + H * H + H * K + K)

      // conv, C = 4, inner 8, weight norm, GroupNorm stem
      const C = 4, E = 8
      const stem = 9 * 1 * C + 2 * C + 9 * C * C + 2 * C
      const block = (c: number, e: number) => 9 * c * e + e + 2 * e + 9 * e * c + c + 2 * c + 2 * c
      const conv = yield* buildSmall("conv")
      expect(conv.parameterCount).toBe(stem + block(C, E) + C * K + K)
      const convPlain = yield* buildSmall("conv", { weightNorm: false, stemNorm: "none" })
      expect(convPlain.parameterCount).toBe(9 * C + 9 * C * C + (9 * C * E + 2 * E + 9 * E * C + 2 * C + 2 * C) + C * K + K)

      // multiscale, C0 = 4, C1 = 8
      const C0 = 4, C1 = 8
      const fusion = C1 * C0 + 2 * C0 + 9 * C0 * C1 + 2 * C1
      const post = C0 * C0 + C0 + C1 * C1 + C1
      const ms = yield* buildSmall("multiscale")
      expect(ms.parameterCount).toBe(stem + block(C0, 2 * C0) + block(C1, 2 * C1) + fusion + post + (C0 + C1) * K + K)

      for (const m of [fc, fcNone, conv, convPlain, ms]) {
        expect(Models.countParameters(m.config)).toBe(m.parameterCount)
        expect(m.params.reduce((n, p) => n + p.variable.size, 0)).toBe(m.parameterCount)
        expect(new Set(m.params.map((p) => p.name)).size).toBe(m.params.length)
        expect(Models.describe(m)).toContain(`parameters: ${m.parameterCount.toLocaleString("en-US")}`)
      }
    })))
})

describe("initialisation", () => {
  it.effect("the same seed gives identical weights, another seed different ones", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      for (const kind of ["fc", "conv", "multiscale"] as const) {
        const a = yield* buildSmall(kind, {}, 7)
        const b = yield* buildSmall(kind, {}, 7)
        const c = yield* buildSmall(kind, {}, 8)
        expect(a.params.map((p) => p.name)).toEqual(b.params.map((p) => p.name))
        let differs = 0
        for (let i = 0; i < a.params.length; i++) {
          const va = a.params[i]!.variable.dataSync(), vb = b.params[i]!.variable.dataSync()
          expect(vb).toEqual(va)
          if (maxAbsDiff(va, c.params[i]!.variable.dataSync()) > 0) differs++
        }
        expect(differs).toBeGreaterThan(0)
      }
    }))))

  it.effect("the FC map starts contractive: Picard converges from z0 = 0", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 32 }, { seed: 3 })
      const deq = Dynamics.makeWith(model, makePicardSync({}))
      const x = images(4, 8, 8, 1)
      const t = Dynamics.trajectory(deq, x, undefined, { steps: 25 })
      expect(t.states.at(-1)!.meanRelResidual).toBeLessThan(1e-4)
      for (let i = 1; i < 10; i++) expect(t.states[i]!.meanRelResidual).toBeLessThan(t.states[i - 1]!.meanRelResidual)
      x.dispose()
    }))))

  it.effect("weight-normed convs start at w = v and w has per-output-channel norm g", () =>
    Effect.scoped(Effect.gen(function*() {
      const model = yield* buildSmall("conv")
      const get = (name: string) => model.params.find((p) => p.name === name)!.variable
      noLeaks(() =>
        tf.tidy(() => {
          const v = get("conv/cell/conv1/v") as tf.Tensor4D
          const g = get("conv/cell/conv1/g") as tf.Tensor1D
          const w = weightNorm(v, g)
          expect(maxAbsDiff(w.dataSync(), v.dataSync())).toBeLessThan(1e-6)
          const g2 = tf.mul(g, tf.linspace(0.5, 2, g.size))
          const norms = tf.sqrt(tf.sum(tf.square(weightNorm(v, g2 as tf.Tensor1D)), [0, 1, 2]))
          expect(maxAbsDiff(norms.dataSync(), g2.dataSync())).toBeLessThan(1e-5)
        })
      )
    })))
})

describe("GroupNorm", () => {
  const cases: ReadonlyArray<readonly [number, number, number, number, number]> = [
    [2, 5, 5, 8, 4],
    [3, 4, 6, 6, 1],
    [2, 3, 3, 4, 4]
  ]
  it("matches the tf.moments reference, values and gradients", () => {
    for (const [b, h, w, c, g] of cases) {
      noLeaks(() =>
        tf.tidy(() => {
          // an offset mean stresses E[x^2] - E[x]^2
          const x = tf.add(tf.randomNormal([b, h, w, c], 0, 2, "float32", 5), 3) as tf.Tensor4D
          const gamma = tf.randomNormal([c], 1, 0.3, "float32", 6), beta = tf.randomNormal([c], 0, 0.3, "float32", 7)
          const dy = tf.randomNormal([b, h, w, c], 0, 1, "float32", 8)
          const fast = groupNorm(x, g, { gamma, beta }), ref = groupNormReference(x, g, { gamma, beta })
          expect(maxAbsDiff(fast.dataSync(), ref.dataSync())).toBeLessThan(2e-4)
          expect(maxAbsDiff(groupNorm(x, g).dataSync(), groupNormReference(x, g).dataSync())).toBeLessThan(2e-4)
          const loss = (f: typeof groupNorm) => (xx: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor) =>
            tf.sum(tf.mul(f(xx as tf.Tensor4D, g, { gamma: gg, beta: bb }), dy))
          const gf = tf.grads(loss(groupNorm))([x, gamma, beta])
          const gr = tf.grads(loss(groupNormReference))([x, gamma, beta])
          for (let i = 0; i < 3; i++) {
            const scale = Math.max(1, tf.max(tf.abs(gr[i]!)).dataSync()[0]!)
            expect(maxAbsDiff(gf[i]!.dataSync(), gr[i]!.dataSync()) / scale).toBeLessThan(2e-3)
          }
        })
      )
    }
  })
})

describe("FC linearisation", () => {
  it.effect("linearize(z).vjp equals the autodiff VJP of f at z", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const variants = [{}, { norm: "none", act: "tanh" }, { dropout: 0.3 }, { act: "tanh" }]
      for (const extra of variants) {
        const model = yield* buildSmall("fc", extra, 5)
        const x = images(4, 8, 8, 1)
        noLeaks(() =>
          tf.tidy(() => {
            const ctx = model.prepare?.({ batch: 4, dropoutSeed: 2 })
            const u = model.inject(x)
            // a point off the origin with some negative pre-activations
            const z = tf.randomNormal([4, 16], 0, 1, "float32", 3)
            const v = tf.randomNormal([4, 16], 0, 1, "float32", 4)
            const auto = tf.grad((zz: tf.Tensor) => tf.sum(tf.mul(model.cell(zz, u, ctx), v)))(z)
            const lin = model.linearize!(z, u, ctx)
            const fast = lin.vjp(v)
            lin.dispose()
            expect(maxAbsDiff(fast.dataSync(), auto.dataSync())).toBeLessThan(1e-5)
          })
        )
        x.dispose()
      }
    }))))
})

describe("variational dropout", () => {
  it.effect("one mask per call, scaled by 1/(1-p), seeded, shared by every application of f", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* buildSmall("conv", { dropout: 0.5 })
      const plain = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: 3 } })
      const x = images(4, 8, 8, 1)
      noLeaks(() =>
        tf.tidy(() => {
          const mask = model.dropoutMask!(4, 9)
          expect(mask).toHaveLength(1)
          expect(mask[0]!.shape).toEqual([4, 1, 1, 4])
          expect(new Set(Array.from(mask[0]!.dataSync()))).toEqual(new Set([0, 2]))
          const state = Dynamics.readOut.state(3)
          const a = Dynamics.logits(plain, x, state, { dropoutSeed: 9 })
          const b = Dynamics.logits(plain, x, state, { dropoutSeed: 9 })
          const c = Dynamics.logits(plain, x, state, { dropoutSeed: 10 })
          const off = Dynamics.logits(plain, x, state)
          expect(b.dataSync()).toEqual(a.dataSync())
          expect(maxAbsDiff(a.dataSync(), c.dataSync())).toBeGreaterThan(0)
          expect(maxAbsDiff(a.dataSync(), off.dataSync())).toBeGreaterThan(0)
          // the same mask in every f application: replay the read-out by hand with the model's own context
          const ctx = model.prepare!({ batch: 4, dropoutSeed: 9 })
          const u = model.inject(x)
          const f = (z: tf.Tensor) => model.cell(z, u, ctx)
          let z = model.initState(u)
          for (let i = 0; i < 3; i++) z = f(z)
          const manual = model.head(Dynamics.applyGradient(f, z, Dynamics.paperTail, model.initState(u)))
          expect(maxAbsDiff(manual.dataSync(), a.dataSync())).toBeLessThan(1e-5)
        })
      )
      x.dispose()
    }))))
})

describe("gradients reach every parameter", () => {
  for (const kind of ["fc", "conv", "multiscale"] as const) {
    for (const [label, backward] of [["phantom", Backward.phantom(3, 0.5)], ["implicit", Backward.implicit({ maxIter: 15 })]] as const) {
      it.effect(`${kind}, ${label}`, () =>
        leakCheck(Effect.scoped(Effect.gen(function*() {
          const model = yield* buildSmall(kind, kind === "fc" ? {} : { dropout: 0.2 })
          const deq = Dynamics.makeWith(model, makePicardSync({}), { backward, solve: { maxIter: 6, tol: 0 } })
          const x = images(4, 8, 8, 1)
          const y = tf.tidy(() => tf.oneHot(tf.tensor1d([0, 1, 2, 3], "int32"), 5))
          noLeaks(() => {
            const { value, grads } = tf.variableGrads(() =>
              tf.losses.softmaxCrossEntropy(y, Dynamics.logits(deq, x, Dynamics.readOut.final, { dropoutSeed: 3 })) as tf.Scalar
            )
            expect(Number.isFinite(value.dataSync()[0]!)).toBe(true)
            for (const p of model.params) {
              const g = grads[p.variable.name]
              expect(g, p.name).toBeDefined()
              const values = g!.dataSync()
              expect(Array.from(values).every(Number.isFinite), p.name).toBe(true)
              expect(Math.max(...Array.from(values, Math.abs)), p.name).toBeGreaterThan(0)
            }
            tf.dispose([value, ...Object.values(grads)])
          })
          tf.dispose([x, y])
        }))))
    }
  }
})

describe("scoped variables", () => {
  it("closing the Scope disposes every variable", async () => {
    const before = tf.memory().numTensors
    const names = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const m = yield* buildSmall("multiscale")
      expect(tf.memory().numTensors).toBe(before + m.params.length)
      return m.params.map((p) => p.variable)
    })))
    expect(tf.memory().numTensors).toBe(before)
    expect(names.every((v) => v.isDisposed)).toBe(true)
  })

  it("a bad config builds nothing", async () => {
    const before = tf.memory().numTensors
    const exit = await Effect.runPromiseExit(Effect.scoped(buildSmall("conv", { groups: 3 })))
    expect(Exit.isFailure(exit)).toBe(true)
    expect(tf.memory().numTensors).toBe(before)
  })
})
