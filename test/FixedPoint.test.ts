/**
 * FixedPoint: constructors and strict options, typed failures through the error channel of `solve`, the Effect
 * seam (Scope ownership, Layers). Solver accuracy is in FixedPointSolvers.test.ts, gradients in
 * FixedPointGradients.test.ts.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import fc from "fast-check"
import { decode } from "../src/Config.ts"
import { ConfigError } from "../src/Errors.ts"
import * as FP from "../src/FixedPoint.ts"
import { leakCheck, noLeaks, tf, useBackend } from "../src/Tensor.ts"
import { anySchema, contraction, getSolver, read, solvers, tidy } from "./fixedPointFixtures.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

// ---------------------------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------------------------

describe("options", () => {
  it.effect("an unknown option key is a ConfigError naming it", () =>
    Effect.gen(function*() {
      const error: any = yield* Effect.flip(decode(anySchema(FP.AndersonOptions), "solver")({ m: 5, lamda: 1e-3 }))
      expect(error).toBeInstanceOf(ConfigError)
      expect(error.path).toBe("solver.lamda")
      const bad: any = yield* Effect.flip(decode(anySchema(FP.PicardOptions))({ tau: 1.5 }))
      expect(bad.path).toBe("tau")
      expect(() => FP.makeBroydenSync({ memroy: 3 } as FP.BroydenOptionsInput)).toThrow(/memroy/)
      const layerError = yield* Effect.flip(
        Effect.provide(getSolver, FP.Solver.anderson({ m: 0 }))
      )
      expect((layerError as ConfigError).path).toBe("anderson.m")
    }))

  it("defaults fill missing keys and per-call options override them", () => {
    const s = FP.makeAndersonSync({ maxIter: 7 })
    expect(s.options.maxIter).toBe(7)
    expect(s.options.tol).toBe(1e-4)
    expect((s.options as FP.AndersonOptions).m).toBe(5)
    const r = noLeaks(() =>
      tidy(() => {
        const res = s.run((z) => tf.add(tf.mul(z, 0.5), 1), tf.zeros([2, 3]), { maxIter: 2, tol: 0 })
        return res.stats.steps
      })
    )
    expect(r).toBe(2)
    // a misspelt per-call option is an error too, not a silently ignored setting
    expect(() =>
      tidy(() => s.run((z) => tf.mul(z, 0.5), tf.zeros([2, 3]), { maxiter: 2 } as Partial<FP.SolveOptions>))
    ).toThrow(/maxiter/)
  })
})

// ---------------------------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------------------------

describe("typed failures", () => {
  it.effect("NaN gives Diverged from solve; run returns a finite iterate with status diverged", () =>
    leakCheck(Effect.gen(function*() {
      // log: 2 -> 0.69 -> -0.37 -> NaN
      const f: FP.FixedPointMap = (z) => tf.log(z)
      const z0 = yield* Effect.acquireRelease(Effect.sync(() => tf.fill([2, 3], 2)), (t) => Effect.sync(() => t.dispose()))
      for (const make of Object.values(solvers)) {
        const error = yield* Effect.flip(make({ maxIter: 50 }).solve(f, z0))
        expect(error._tag).toBe("Diverged")
        expect((error as FP.Diverged).step).toBeGreaterThanOrEqual(1)
        const r = make({ maxIter: 50 }).run(f, z0)
        expect(r.stats.status).toBe("diverged")
        expect(read(r.z).every(Number.isFinite)).toBe(true)
        r.z.dispose()
      }
    }).pipe(Effect.scoped)))

  it.effect("a non-contractive map with a small budget gives NotConverged carrying the stats", () =>
    leakCheck(Effect.gen(function*() {
      const f: FP.FixedPointMap = (z) => tf.add(tf.mul(z, 2), 1)
      const z0 = yield* Effect.acquireRelease(Effect.sync(() => tf.zeros([2, 4])), (t) => Effect.sync(() => t.dispose()))
      const error = yield* Effect.flip(FP.makePicardSync({ maxIter: 6, onNotConverged: "fail" }).solve(f, z0))
      expect(error._tag).toBe("NotConverged")
      const nc = error as FP.NotConverged
      expect(nc.steps).toBe(6)
      expect(nc.stats!.steps).toBe(6)
      expect(nc.stats!.absTrace.length).toBe(6)
      expect(nc.relResidual).toBeGreaterThan(nc.tol)
      // with "return" the same solve succeeds and reports maxIter
      const ok = yield* FP.makePicardSync({ maxIter: 6 }).solve(f, z0)
      expect(ok.stats.status).toBe("maxIter")
    }).pipe(Effect.scoped)))

  it.effect("a singular Anderson system is SingularSystem; fallback(anderson, picard) recovers", () =>
    leakCheck(Effect.gen(function*() {
      // z -> min(z + 1, 3) from 0: every residual is exactly 1 until z = 3, so with lambda = 0 the Gram matrix
      // of two residuals is exactly singular
      const f: FP.FixedPointMap = (z) => tf.minimum(tf.add(z, 1), 3)
      const z0 = yield* Effect.acquireRelease(Effect.sync(() => tf.zeros([2, 4])), (t) => Effect.sync(() => t.dispose()))
      const anderson = FP.makeAndersonSync({ lambda: 0, maxIter: 20 })
      const error = yield* Effect.flip(anderson.solve(f, z0))
      expect(error._tag).toBe("SingularSystem")
      const combined = FP.fallback(anderson, FP.makePicardSync({ maxIter: 20 }))
      const r = yield* combined.solve(f, z0)
      expect(r.stats.status).toBe("converged")
      expect(r.stats.solver).toBe("picard")
      expect(r.stats.attempts!.map((a) => a.status)).toEqual(["singular", "converged"])
      expect(Array.from(read(r.z))).toEqual(new Array(8).fill(3))
      // the Layer form
      const viaLayer = yield* Effect.gen(function*() {
        const solver = yield* FP.Solver
        return yield* solver.solve(f, z0)
      }).pipe(Effect.provide(FP.Solver.fallback(anderson, FP.makePicardSync({ maxIter: 20 }))))
      expect(viaLayer.stats.status).toBe("converged")
    }).pipe(Effect.scoped)))
})

describe("bad inputs are typed failures of solve", () => {
  const zeros = (shape: Array<number>) =>
    Effect.acquireRelease(Effect.sync(() => tf.zeros(shape)), (t) => Effect.sync(() => t.dispose()))
  const contract: FP.FixedPointMap = (z) => tf.add(tf.mul(z, 0.5), 1)

  it.effect("constructors are Effects failing with a ConfigError; the Sync forms throw that ConfigError", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(FP.makeAnderson({ m: 0 }))
      expect(error).toBeInstanceOf(ConfigError)
      expect(error.path).toBe("anderson.m")
      const tau = yield* Effect.flip(FP.makePicard({ tau: 2 }))
      expect(tau.path).toBe("picard.tau")
      const ok = yield* FP.makeBroyden({ memory: 4 })
      expect((ok.options as FP.BroydenOptions).memory).toBe(4)
      let thrown: unknown
      try {
        FP.makePicardSync({ maxIter: -1 })
      } catch (e) {
        thrown = e
      }
      expect(thrown).toBeInstanceOf(ConfigError)
      expect((thrown as ConfigError).path).toBe("picard.maxIter")
    }))

  it.effect("an unknown, zero or NaN per-call option fails solve with a ConfigError naming the field, leak-free", () =>
    leakCheck(Effect.gen(function*() {
      const z0 = yield* zeros([2, 3])
      for (const make of Object.values(solvers)) {
        const solver = make({ maxIter: 10 })
        const cases: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
          [{ maxIters: 5 }, "maxIters"],
          [{ maxIter: 0 }, "maxIter"],
          [{ tol: Number.NaN }, "tol"],
          [{ stopMode: "max" }, "stopMode"]
        ]
        for (const [options, path] of cases) {
          const error = yield* Effect.flip(solver.solve(contract, z0, options as Partial<FP.SolveOptions>))
          expect(error).toBeInstanceOf(ConfigError)
          expect((error as ConfigError).path).toBe(path)
          expect(error.message).toContain(path)
          // run is synchronous: it throws the same typed error
          expect(() => solver.run(contract, z0, options as Partial<FP.SolveOptions>)).toThrow(ConfigError)
        }
        // a solver's own key is accepted per call (a whole AndersonOptions may be passed)
        const nonlinear: FP.FixedPointMap = (z) => tf.tanh(tf.add(tf.mul(z, 0.5), 1))
        const r = yield* solver.solve(nonlinear, z0, { maxIter: 3, tol: 0, m: 2 } as Partial<FP.SolveOptions>)
        expect(r.stats.steps).toBe(3)
      }
    }).pipe(Effect.scoped)))

  it.effect("property: any out-of-range maxIter or tol is a ConfigError at that field", () =>
    leakCheck(Effect.gen(function*() {
      const z0 = yield* zeros([1, 2])
      const solver = FP.makePicardSync({ maxIter: 4 })
      const badMaxIter = fc.oneof(fc.integer({ max: 0 }), fc.double({ min: 0.01, max: 100, noInteger: true }), fc.constant(Number.NaN))
      const badTol = fc.oneof(fc.double({ max: -1e-12, noNaN: true }), fc.constant(Number.NaN), fc.constant(Number.POSITIVE_INFINITY))
      const samples = fc.sample(fc.oneof(badMaxIter.map((v) => ["maxIter", v] as const), badTol.map((v) => ["tol", v] as const)), { numRuns: 60, seed: 7 })
      for (const [key, value] of samples) {
        const error = yield* Effect.flip(solver.solve(contract, z0, { [key]: value }))
        expect(error._tag).toBe("ConfigError")
        expect((error as ConfigError).path).toBe(key)
      }
    }).pipe(Effect.scoped)))

  it.effect("a map that changes the state size fails solve with StateSizeChanged; run throws it; nothing leaks", () =>
    leakCheck(Effect.gen(function*() {
      const z0 = yield* zeros([2, 3])
      const grow: FP.FixedPointMap = (z) => tf.concat([z, z], 1)
      for (const make of Object.values(solvers)) {
        const error = yield* Effect.flip(make({ maxIter: 5 }).solve(grow, z0))
        expect(error).toBeInstanceOf(FP.StateSizeChanged)
        const e = error as FP.StateSizeChanged
        expect([e.input, e.output]).toEqual([[2, 3], [2, 6]])
        expect(e.message).toMatch(/changed the state size/)
        expect(() => make({ maxIter: 5 }).run(grow, z0)).toThrow(FP.StateSizeChanged)
      }
      // a map that fails later (after a few good steps) is caught the same way
      let calls = 0
      const late: FP.FixedPointMap = (z) => (++calls > 3 ? tf.reshape(z, [-1]).slice(0, 3) : tf.add(tf.mul(z, 0.5), 1))
      const lateError = yield* Effect.flip(FP.makeAndersonSync({ maxIter: 10, tol: 0 }).solve(late, z0))
      expect(lateError._tag).toBe("StateSizeChanged")
    }).pipe(Effect.scoped)))
})

// ---------------------------------------------------------------------------------------------------------------
// Effect seam and leaks
// ---------------------------------------------------------------------------------------------------------------

describe("Effect seam", () => {
  it.effect("solve through a Layer owns its tensors in the Scope; gradients leak nothing", () =>
    Effect.gen(function*() {
      const W = tf.tensor2d(Float32Array.from(contraction(4, 6, 0.6)), [6, 6])
      const x = tf.randomNormal([2, 6], 0, 1, "float32", 4)
      const f: FP.FixedPointMap = (z) => tf.tanh(tf.add(tf.matMul(z, W), x))
      const before = tf.memory().numTensors
      for (const layer of [FP.Solver.picard({ maxIter: 100 }), FP.Solver.anderson(), FP.Solver.broyden()]) {
        yield* leakCheck(
          Effect.gen(function*() {
            const solver = yield* FP.Solver
            const z0 = tf.zeros([2, 6])
            const r = yield* solver.solve(f, z0, { recordTrajectory: true, returnState: true })
            z0.dispose()
            expect(r.stats.status).toBe("converged")
            expect(r.trajectory!.length).toBe(r.stats.steps)
            expect(tf.memory().numTensors).toBeGreaterThan(before)
          }).pipe(Effect.scoped, Effect.provide(layer))
        )
      }
      noLeaks(() => {
        for (const backward of [FP.Backward.implicit(), FP.Backward.phantom(3), FP.Backward.unrolled(5)]) {
          const g = tf.tidy(() =>
            tf.grad((xx: tf.Tensor) => {
              const fx: FP.FixedPointMap = (z) => tf.tanh(tf.add(tf.matMul(z, W), xx))
              const z = FP.makeBroydenSync().run(fx, tf.zeros([2, 6])).z
              return tf.sum(FP.attach(fx, z, backward))
            })(x)
          )
          expect(read(g).every(Number.isFinite)).toBe(true)
          g.dispose()
        }
      })
      tf.dispose([W, x])
    }))

  it("Layer.succeed-style composition: Solver layers build without a Backend", () => {
    const layer = Layer.mergeAll(FP.Solver.picard({ tau: 0.5 }))
    const solver = Effect.runSync(Effect.provide(getSolver, layer))
    expect(solver.name).toBe("picard")
    // defaults filled by the schema, the given option kept
    expect(solver.options.maxIter).toBe(30)
    expect((solver.options as FP.PicardOptions).tau).toBe(0.5)
  })
})
