/**
 * FixedPoint: solvers against closed forms and float64 references, acceleration engaged, gradients against
 * float64 finite differences, typed failures, Broyden memory export / resume / lift, stats semantics, leaks.
 *
 * Every random problem is built in plain JS from a seeded stream, so references can be computed in float64.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import fc from "fast-check"
import { decode } from "../src/Config.ts"
import { ConfigError } from "../src/Errors.ts"
import * as FP from "../src/FixedPoint.ts"
import { solveDense } from "../src/internal/fixedPoint/linalg.ts"
import { leakCheck, noLeaks, stream, tf, useBackend } from "../src/Tensor.ts"
import { cosine } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

// ---------------------------------------------------------------------------------------------------------------
// float64 helpers
// ---------------------------------------------------------------------------------------------------------------

type Mat = Float64Array // row-major

const gaussian = (seed: number) => {
  const s = stream(seed)
  return () => {
    const u = Math.max(s.next(), 1e-12)
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * s.next())
  }
}

const randn = (seed: number, n: number): Float64Array => {
  const g = gaussian(seed)
  return Float64Array.from({ length: n }, g)
}

/** y = M x for an r x c row-major M. */
const mv = (M: Mat, r: number, c: number, x: ArrayLike<number>): Float64Array => {
  const y = new Float64Array(r)
  for (let i = 0; i < r; i++) {
    let s = 0
    for (let j = 0; j < c; j++) s += M[i * c + j]! * x[j]!
    y[i] = s
  }
  return y
}

/** y = M^T x for an r x c row-major M. */
const mtv = (M: Mat, r: number, c: number, x: ArrayLike<number>): Float64Array => {
  const y = new Float64Array(c)
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) y[j] = y[j]! + M[i * c + j]! * x[i]!
  return y
}

const norm = (x: ArrayLike<number>): number => {
  let s = 0
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!
  return Math.sqrt(s)
}

/** Spectral norm by power iteration on M^T M. */
const spectralNorm = (M: Mat, r: number, c: number): number => {
  let v = Float64Array.from({ length: c }, (_, i) => 1 + i * 0.01)
  for (let it = 0; it < 300; it++) {
    const w = mtv(M, r, c, mv(M, r, c, v))
    const n = norm(w)
    v = w.map((x) => x / n)
  }
  return norm(mv(M, r, c, v))
}

/** A random n x n matrix with spectral norm exactly `rho`. */
const contraction = (seed: number, n: number, rho: number): Mat => {
  const M = randn(seed, n * n)
  const s = spectralNorm(M, n, n)
  return M.map((x) => (x * rho) / s)
}

/** A random symmetric n x n matrix with eigenvalues spread over [lo, hi] (Gram-Schmidt basis). */
const symmetricWithSpectrum = (seed: number, n: number, lo: number, hi: number): Mat => {
  const g = gaussian(seed)
  const Q: Array<Float64Array> = []
  while (Q.length < n) {
    const v = Float64Array.from({ length: n }, g)
    for (const q of Q) {
      let d = 0
      for (let i = 0; i < n; i++) d += v[i]! * q[i]!
      for (let i = 0; i < n; i++) v[i] = v[i]! - d * q[i]!
    }
    const nv = norm(v)
    if (nv > 1e-6) Q.push(v.map((x) => x / nv))
  }
  const M = new Float64Array(n * n)
  for (let k = 0; k < n; k++) {
    const lam = hi - ((hi - lo) * k) / Math.max(1, n - 1)
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) M[i * n + j] = M[i * n + j]! + lam * Q[k]![i]! * Q[k]![j]!
  }
  return M
}

const relDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let d = 0, s = 0
  for (let i = 0; i < b.length; i++) {
    d += (a[i]! - b[i]!) ** 2
    s += b[i]! ** 2
  }
  return Math.sqrt(d) / Math.max(Math.sqrt(s), 1e-12)
}

const read = (t: tf.Tensor): Float32Array => t.dataSync() as Float32Array

/** tf.tidy for blocks that return plain JS values (tidy's own type only admits tensor containers). */
const tidy = <A>(f: () => A): A => {
  let out: A | undefined
  tf.tidy(() => {
    out = f()
  })
  return out as A
}

const anySchema = <S>(s: S) => s as unknown as Schema.Decoder<unknown>

const getSolver = Effect.gen(function*() {
  return yield* FP.Solver
})

/**
 * An affine map z -> z A^T + b on [B, N] (row vectors), i.e. per sample z = A z + b, and its fixed point
 * (I - A)^{-1} b per sample in float64.
 */
const affine = (A: Mat, N: number, b: Float64Array, B: number) => {
  const At = tf.tensor2d(Float32Array.from({ length: N * N }, (_, k) => A[(k % N) * N + Math.floor(k / N)]!), [N, N])
  const bt = tf.tensor2d(Float32Array.from(b), [B, N])
  const f: FP.FixedPointMap = (z) => tf.add(tf.matMul(z, At), bt)
  const exact = (): Float64Array => {
    const out = new Float64Array(B * N)
    for (let s = 0; s < B; s++) {
      const IA = new Float64Array(N * N)
      for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) IA[i * N + j] = (i === j ? 1 : 0) - A[i * N + j]!
      const z = solveDense(IA, b.subarray(s * N, (s + 1) * N), N)!
      out.set(z, s * N)
    }
    return out
  }
  return { f, exact, dispose: () => tf.dispose([At, bt]) }
}

const solvers = {
  picard: (o: FP.SolveOptionsInput) => FP.makePicard(o),
  anderson: (o: FP.SolveOptionsInput) => FP.makeAnderson(o),
  broyden: (o: FP.SolveOptionsInput) => FP.makeBroyden(o)
} as const

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
      expect(() => FP.makeBroyden({ memroy: 3 } as FP.BroydenOptionsInput)).toThrow(/memroy/)
      const layerError = yield* Effect.flip(
        Effect.provide(getSolver, FP.Solver.anderson({ m: 0 }))
      )
      expect((layerError as ConfigError).path).toBe("anderson.m")
    }))

  it("defaults fill missing keys and per-call options override them", () => {
    const s = FP.makeAnderson({ maxIter: 7 })
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
// Convergence
// ---------------------------------------------------------------------------------------------------------------

describe("solvers on contractive affine maps", () => {
  it("every solver reaches tol and matches (I - A)^{-1} b", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 30 }),
        fc.integer({ min: 2, max: 4 }),
        fc.integer({ min: 3, max: 12 }),
        fc.double({ min: 0.5, max: 0.9, noNaN: true }),
        (seed, B, N, rho) => {
          const A = contraction(seed, N, rho)
          const b = randn(seed + 1, B * N)
          const map = affine(A, N, b, B)
          const exact = map.exact()
          try {
            for (const [name, make] of Object.entries(solvers)) {
              const tol = 1e-5
              const solver = make({ maxIter: 400, tol })
              const { zv, stats } = noLeaks(() =>
                tidy(() => {
                  const z0 = tf.zeros([B, N])
                  const r = solver.run(map.f, z0)
                  return { zv: read(r.z), stats: r.stats }
                })
              )
              expect(stats.status, name).toBe("converged")
              expect(stats.globalRelTrace[stats.returnedStep - 1]!, name).toBeLessThanOrEqual(tol)
              // ||z - z*|| <= ||g|| / (1 - rho): tol-level residual means ~tol / (1 - rho) error, plus float32
              for (let s = 0; s < B; s++) {
                expect(
                  relDiff(zv.subarray(s * N, (s + 1) * N), exact.subarray(s * N, (s + 1) * N)),
                  `${name} sample ${s}`
                ).toBeLessThan(2e-4)
              }
              expect(stats.stepsPerSample.every((k) => k === stats.steps)).toBe(true)
            }
          } finally {
            map.dispose()
          }
        }
      ),
      { seed: 1234, numRuns: 12 }
    )
  })

  it("acceleration is engaged: Anderson and Broyden need at most half of Picard's steps at radius 0.98", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 30 }), fc.integer({ min: 8, max: 16 }), (seed, N) => {
        const B = 3
        const A = symmetricWithSpectrum(seed, N, -0.5, 0.98)
        const map = affine(A, N, randn(seed + 7, B * N), B)
        const exact = map.exact()
        try {
          const steps: Record<string, number> = {}
          for (const [name, make] of Object.entries(solvers)) {
            const r = tidy(() => {
              const res = make({ maxIter: 1000, tol: 1e-4 }).run(map.f, tf.zeros([B, N]))
              return { status: res.stats.status, steps: res.stats.steps, z: Array.from(read(res.z)) }
            })
            expect(r.status, name).toBe("converged")
            expect(relDiff(r.z, exact), name).toBeLessThan(1e-2)
            steps[name] = r.steps
          }
          expect(steps["anderson"]!).toBeLessThanOrEqual(steps["picard"]! / 2)
          expect(steps["broyden"]!).toBeLessThanOrEqual(steps["picard"]! / 2)
        } finally {
          map.dispose()
        }
      }),
      { seed: 99, numRuns: 4 }
    )
  })

  it("works on any state shape [B, ...]: f sees the original shape", () => {
    const B = 2
    const shapes: Array<Array<number>> = []
    const b = tf.randomNormal([B, 2, 3, 2], 0, 1, "float32", 5)
    const f: FP.FixedPointMap = (z) => {
      shapes.push(z.shape)
      return tf.add(tf.mul(tf.tanh(z), 0.5), b)
    }
    for (const make of Object.values(solvers)) {
      shapes.length = 0
      const out = tidy(() => {
        const r = make({ maxIter: 100, tol: 1e-5 }).run(f, tf.zeros([B, 2, 3, 2]))
        return { shape: r.z.shape, status: r.stats.status }
      })
      expect(out.shape).toEqual([B, 2, 3, 2])
      expect(out.status).toBe("converged")
      expect(shapes.every((s) => s.join() === [B, 2, 3, 2].join())).toBe(true)
    }
    b.dispose()
  })
})

// ---------------------------------------------------------------------------------------------------------------
// Broyden reference, resume and lift
// ---------------------------------------------------------------------------------------------------------------

/** Naive "bad Broyden" (locuslab/deq) in float64 with a cyclic memory of `cap` pairs; returns z_1..z_n per sample. */
const naiveBroyden = (
  f: (z: Float64Array) => Float64Array,
  z0: Float64Array,
  steps: number,
  cap: number
): Array<Float64Array> => {
  const us: Array<Float64Array> = []
  const vs: Array<Float64Array> = []
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + x * b[i]!, 0)
  const H = (x: Float64Array, skip: number) => {
    const y = x.map((v) => -v)
    us.forEach((u, i) => {
      if (i === skip) return
      const c = dot(vs[i]!, x)
      for (let j = 0; j < y.length; j++) y[j] = y[j]! + u[j]! * c
    })
    return y
  }
  const Ht = (x: Float64Array, skip: number) => {
    const y = x.map((v) => -v)
    vs.forEach((v, i) => {
      if (i === skip) return
      const c = dot(us[i]!, x)
      for (let j = 0; j < y.length; j++) y[j] = y[j]! + v[j]! * c
    })
    return y
  }
  let z = z0
  let g = f(z).map((v, i) => v - z[i]!)
  const out: Array<Float64Array> = []
  for (let k = 0; k < steps; k++) {
    const h = H(g, -1)
    const zn = z.map((v, i) => v - h[i]!)
    const gn = f(zn).map((v, i) => v - zn[i]!)
    const dz = zn.map((v, i) => v - z[i]!)
    const dg = gn.map((v, i) => v - g[i]!)
    const slot = us.length < cap ? us.length : k % cap
    const skip = us.length < cap ? -1 : slot
    const v = Ht(dz, skip)
    const Pdg = H(dg, skip)
    const den = dot(v, dg)
    const u = dz.map((x, i) => (x - Pdg[i]!) / den)
    us[slot] = u
    vs[slot] = v
    z = zn
    g = gn
    out.push(z)
  }
  return out
}

describe("Broyden", () => {
  it("matches a naive float64 bad-Broyden, including the cyclic memory", () => {
    const B = 2, N = 6, steps = 7, cap = 3
    const A = contraction(11, N, 0.6)
    const b = randn(12, B * N)
    const map = affine(A, N, b, B)
    const traj = tidy(() => {
      const r = FP.makeBroyden({ memory: cap, maxIter: steps, tol: 0, recordTrajectory: true, returnMode: "last" })
        .run(map.f, tf.zeros([B, N]))
      return r.trajectory!.map((t) => Array.from(read(t)))
    })
    map.dispose()
    expect(traj.length).toBe(steps)
    for (let s = 0; s < B; s++) {
      const bs = b.subarray(s * N, (s + 1) * N)
      const ref = naiveBroyden((z) => mv(A, N, N, z).map((v, i) => v + bs[i]!), new Float64Array(N), steps, cap)
      ref.forEach((zk, k) => expect(relDiff(traj[k]!.slice(s * N, (s + 1) * N), zk), `step ${k + 1}`).toBeLessThan(1e-4))
    }
  })

  const deq = (seed: number, B: number, N: number) => {
    const W = tf.tensor2d(Float32Array.from(contraction(seed, N, 0.7)), [N, N])
    const x = tf.randomNormal([B, N], 0, 1, "float32", seed)
    const f: FP.FixedPointMap = (z) => tf.tanh(tf.add(tf.matMul(z, W), x))
    return { f, W, x, dispose: () => tf.dispose([W, x]) }
  }

  it("a split solve (n1 steps, export, resume n2 steps) equals one solve of n1 + n2 steps", () => {
    const { f, dispose } = deq(3, 3, 8)
    noLeaks(() => {
      const opts = { tol: 0, returnMode: "last" as const }
      const solver = FP.makeBroyden({ memory: 20 })
      const [single, split] = tidy(() => {
        const one = solver.run(f, tf.zeros([3, 8]), { ...opts, maxIter: 9 })
        const first = solver.run(f, tf.zeros([3, 8]), { ...opts, maxIter: 4, returnState: true })
        const state = first.state as FP.BroydenState
        expect(state._tag).toBe("BroydenState")
        expect(state.steps).toBe(4)
        expect(state.U.shape).toEqual([3, 4, 8])
        const second = solver.run(f, first.z, { ...opts, maxIter: 5 }, state)
        state.dispose()
        return [read(one.z), read(second.z)]
      })
      expect(relDiff(split!, single!)).toBeLessThan(1e-4)
    })
    dispose()
  })

  it("lift: unchanged map leaves the memory; a new map gets a pair that satisfies the new secant equation", () => {
    const B = 2, N = 6
    const { f, W, dispose } = deq(5, B, N)
    noLeaks(() =>
      tidy(() => {
        const r = FP.makeBroyden({ memory: 8 }).run(f, tf.zeros([B, N]), {
          maxIter: 3,
          tol: 0,
          returnMode: "last",
          returnState: true
        })
        const s = r.state as FP.BroydenState
        // same map at the same point: g' = g_last, nothing changes
        const same = FP.liftBroyden(s, tf.sub(f(r.z), r.z))
        expect(relDiff(read(same.U), read(s.U))).toBeLessThan(1e-4)
        expect(relDiff(read(same.V), read(s.V))).toBeLessThan(1e-4)
        same.dispose()
        // new input: F_new(z) = tanh(z W + x'), lifted pair must map dg' to dz
        const x2 = tf.randomNormal([B, N], 0, 1, "float32", 77)
        const fNew = (z: tf.Tensor) => tf.tanh(tf.add(tf.matMul(z, W), x2))
        const lifted = FP.liftBroyden(s, tf.sub(fNew(r.z), r.z))
        const Hdg = tf.sub(
          tf.squeeze(tf.matMul(lifted.U, tf.matMul(lifted.V, tf.expandDims(lifted.dg, 2)), true, false), [2]),
          lifted.dg
        )
        expect(relDiff(read(Hdg), read(lifted.dz))).toBeLessThan(1e-4)
        expect(relDiff(read(lifted.dg), read(s.dg))).toBeGreaterThan(1e-3)
        lifted.dispose()
        s.dispose()
        return []
      })
    )
    dispose()
  })
})

// ---------------------------------------------------------------------------------------------------------------
// Stats semantics
// ---------------------------------------------------------------------------------------------------------------

describe("stats", () => {
  it("trajectory has one entry per step; best returns the lowest-residual iterate, last the last one", () => {
    // Picard on z -> 2z + 1 moves away from the fixed point (-1): the abs residual grows, so best = z_1
    noLeaks(() =>
      tidy(() => {
        const r = FP.makePicard({ maxIter: 5, stopMode: "abs", recordTrajectory: true }).run((z) => tf.add(tf.mul(z, 2), 1), tf.zeros([2, 3]))
        expect(r.stats.returnedStep).toBe(1)
        expect(Array.from(read(r.z))).toEqual(Array.from(read(r.trajectory![0]!)))
        return []
      })
    )
    const W = tf.tensor2d(Float32Array.from(contraction(8, 3, 1.5)), [3, 3])
    const f: FP.FixedPointMap = (z) => tf.tanh(tf.add(tf.matMul(z, W), 0.3))
    noLeaks(() =>
      tidy(() => {
        for (const make of Object.values(solvers)) {
          const best = make({ maxIter: 6, tol: 0, recordTrajectory: true }).run(f, tf.ones([2, 3]))
          expect(best.trajectory!.length).toBe(best.stats.steps)
          expect(best.stats.status).toBe("maxIter")
          const trace = best.stats.globalRelTrace
          const argmin = trace.indexOf(Math.min(...trace))
          expect(best.stats.returnedStep).toBe(argmin + 1)
          expect(Array.from(read(best.z))).toEqual(Array.from(read(best.trajectory![argmin]!)))
          expect(Array.from(best.stats.absResidual)).toEqual(Array.from(best.stats.absTrace[argmin]!))
          const last = make({ maxIter: 6, tol: 0, recordTrajectory: true, returnMode: "last" }).run(f, tf.ones([2, 3]))
          expect(last.stats.steps).toBe(6)
          expect(last.stats.returnedStep).toBe(last.stats.steps)
          expect(Array.from(read(last.z))).toEqual(Array.from(read(last.trajectory![last.stats.steps - 1]!)))
          expect(Array.from(last.stats.relResidual)).toEqual(Array.from(last.stats.relTrace[last.stats.steps - 1]!))
        }
        return []
      })
    )
    W.dispose()
  })

  it("per-sample stopping freezes converged samples", () => {
    // per-sample contraction factors 0.1 and 0.95 (nonlinear, so no solver is exact in two steps)
    const a = tf.tensor2d([[0.1, 0.1, 0.1], [0.95, 0.95, 0.95]])
    const f: FP.FixedPointMap = (z) => tf.add(tf.mul(tf.tanh(z), a), 1)
    noLeaks(() =>
      tidy(() => {
        for (const make of Object.values(solvers)) {
          const r = make({ maxIter: 300, tol: 1e-5, stopMode: "abs", stopping: "sample", recordTrajectory: true })
            .run(f, tf.zeros([2, 3]))
          expect(r.stats.status).toBe("converged")
          const k0 = r.stats.stepsPerSample[0]!
          expect(k0).toBeLessThan(r.stats.stepsPerSample[1]!)
          expect(r.stats.stepsPerSample[1]).toBe(r.stats.steps)
          expect(r.stats.converged[0]).toBe(1)
          expect(r.stats.converged[1]).toBe(1)
          const frozen = Array.from(read(r.trajectory![k0 - 1]!)).slice(0, 3)
          for (let k = k0; k < r.stats.steps; k++) {
            expect(Array.from(read(r.trajectory![k]!)).slice(0, 3)).toEqual(frozen)
            expect(r.stats.absTrace[k]![0]).toBe(r.stats.absTrace[k0 - 1]![0])
          }
        }
        return []
      })
    )
    a.dispose()
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
      const error = yield* Effect.flip(FP.makePicard({ maxIter: 6, onNotConverged: "fail" }).solve(f, z0))
      expect(error._tag).toBe("NotConverged")
      const nc = error as FP.NotConverged
      expect(nc.steps).toBe(6)
      expect(nc.stats!.steps).toBe(6)
      expect(nc.stats!.absTrace.length).toBe(6)
      expect(nc.relResidual).toBeGreaterThan(nc.tol)
      // with "return" the same solve succeeds and reports maxIter
      const ok = yield* FP.makePicard({ maxIter: 6 }).solve(f, z0)
      expect(ok.stats.status).toBe("maxIter")
    }).pipe(Effect.scoped)))

  it.effect("a singular Anderson system is SingularSystem; fallback(anderson, picard) recovers", () =>
    leakCheck(Effect.gen(function*() {
      // z -> min(z + 1, 3) from 0: every residual is exactly 1 until z = 3, so with lambda = 0 the Gram matrix
      // of two residuals is exactly singular
      const f: FP.FixedPointMap = (z) => tf.minimum(tf.add(z, 1), 3)
      const z0 = yield* Effect.acquireRelease(Effect.sync(() => tf.zeros([2, 4])), (t) => Effect.sync(() => t.dispose()))
      const anderson = FP.makeAnderson({ lambda: 0, maxIter: 20 })
      const error = yield* Effect.flip(anderson.solve(f, z0))
      expect(error._tag).toBe("SingularSystem")
      const combined = FP.fallback(anderson, FP.makePicard({ maxIter: 20 }))
      const r = yield* combined.solve(f, z0)
      expect(r.stats.status).toBe("converged")
      expect(r.stats.solver).toBe("picard")
      expect(r.stats.attempts!.map((a) => a.status)).toEqual(["singular", "converged"])
      expect(Array.from(read(r.z))).toEqual(new Array(8).fill(3))
      // the Layer form
      const viaLayer = yield* Effect.gen(function*() {
        const solver = yield* FP.Solver
        return yield* solver.solve(f, z0)
      }).pipe(Effect.provide(FP.Solver.fallback(anderson, FP.makePicard({ maxIter: 20 }))))
      expect(viaLayer.stats.status).toBe("converged")
    }).pipe(Effect.scoped)))
})

// ---------------------------------------------------------------------------------------------------------------
// Gradients
// ---------------------------------------------------------------------------------------------------------------

/**
 * A small DEQ z = tanh(W z + U x + b) per sample, with loss L = sum c . z*, in float64 JS: used for central
 * finite differences of every parameter and input entry.
 */
const jsDeq = (H: number, D: number, B: number) => (W: Mat, U: Mat, bias: Float64Array, x: Float64Array, c: Float64Array) => {
  let loss = 0
  for (let s = 0; s < B; s++) {
    const xs = x.subarray(s * D, (s + 1) * D)
    const inj = mv(U, H, D, xs).map((v, i) => v + bias[i]!)
    let z = new Float64Array(H)
    for (let it = 0; it < 2000; it++) {
      const zn = mv(W, H, H, z).map((v, i) => Math.tanh(v + inj[i]!))
      const d = relDiff(zn, z)
      z = zn
      if (d < 1e-15) break
    }
    for (let i = 0; i < H; i++) loss += c[s * H + i]! * z[i]!
  }
  return loss
}

describe("gradients", () => {
  const H = 5, D = 3, B = 3
  const problem = (seed: number, rho: number) => {
    const Wj = contraction(seed, H, rho)
    const Uj = randn(seed + 1, H * D).map((v) => v * 0.5)
    const bj = randn(seed + 2, H).map((v) => v * 0.3)
    const xj = randn(seed + 3, B * D)
    const cj = randn(seed + 4, B * H)
    // row-vector layout: z W^T + x U^T + b
    const tr = (M: Mat, r: number, cc: number) =>
      Float32Array.from({ length: r * cc }, (_, k) => M[(k % r) * cc + Math.floor(k / r)]!)
    const W = tf.variable(tf.tensor2d(tr(Wj, H, H), [H, H]))
    const U = tf.variable(tf.tensor2d(tr(Uj, H, D), [D, H]))
    const b = tf.variable(tf.tensor1d(Float32Array.from(bj)))
    const x = tf.tensor2d(Float32Array.from(xj), [B, D])
    const c = tf.tensor2d(Float32Array.from(cj), [B, H])
    return { Wj, Uj, bj, xj, cj, W, U, b, x, c, dispose: () => tf.dispose([W, U, b, x, c]) }
  }

  /** tfjs gradients of L w.r.t. [x, W, U, b] in the JS layouts (W, U row-major as in z = W z + U x + b). */
  const tfGrads = (
    p: ReturnType<typeof problem>,
    backward: FP.Backward,
    solver: FP.Solver["Service"] = FP.makeAnderson({ maxIter: 200, tol: 1e-6 })
  ) =>
    tidy(() => {
      const vars = [p.W, p.U, p.b]
      const lossOf = (x: tf.Tensor) => {
        const inj = tf.add(tf.matMul(x, p.U), p.b)
        const f: FP.FixedPointMap = (z) => tf.tanh(tf.add(tf.matMul(z, p.W), inj))
        const zStar = solver.run(f, tf.zeros([B, H])).z
        return tf.sum(tf.mul(FP.attach(f, zStar, backward), p.c)) as tf.Scalar
      }
      const gx = tf.grad(lossOf)(p.x)
      const vg = tf.variableGrads(() => lossOf(p.x), vars)
      const T = (t: tf.Tensor, r: number, cc: number) => {
        // tfjs holds W^T / U^T: back to row-major W [r, cc]
        const a = read(t)
        return Float64Array.from({ length: r * cc }, (_, k) => a[(k % cc) * r + Math.floor(k / cc)]!)
      }
      return {
        x: Float64Array.from(read(gx)),
        W: T(vg.grads[p.W.name]!, H, H),
        U: T(vg.grads[p.U.name]!, H, D),
        b: Float64Array.from(read(vg.grads[p.b.name]!))
      }
    })

  const fdGrads = (p: ReturnType<typeof problem>) => {
    const L = jsDeq(H, D, B)
    const eps = 1e-6
    const fd = (arr: Float64Array, call: () => number) =>
      arr.map((v, i) => {
        arr[i] = v + eps
        const lp = call()
        arr[i] = v - eps
        const lm = call()
        arr[i] = v
        return (lp - lm) / (2 * eps)
      })
    const call = () => L(p.Wj, p.Uj, p.bj, p.xj, p.cj)
    return { x: fd(p.xj, call), W: fd(p.Wj, call), U: fd(p.Uj, call), b: fd(p.bj, call) }
  }

  it("implicit gradient w.r.t. x and the parameters matches float64 central differences", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 30 }),
        fc.double({ min: 0.3, max: 0.8, noNaN: true }),
        (seed, rho) => {
          const p = problem(seed, rho)
          try {
            const ref = fdGrads(p)
            for (const solver of ["picard", "anderson", "broyden"] as const) {
              const g = noLeaks(() => tfGrads(p, FP.Backward.implicit({ solver, maxIter: 200, tol: 1e-6 })))
              for (const k of ["x", "W", "U", "b"] as const) {
                // measured ~1e-6; float32 with tol 1e-6 allows ~1e-5
                expect(relDiff(g[k], ref[k]), `${k} (${solver})`).toBeLessThan(1e-4)
              }
            }
          } finally {
            p.dispose()
          }
        }
      ),
      { seed: 7, numRuns: 6 }
    )
  })

  it("implicit matches the unrolled gradient at convergence, and phantom(k large) approaches it", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 30 }), fc.double({ min: 0.3, max: 0.7, noNaN: true }), (seed, rho) => {
        const p = problem(seed, rho)
        try {
          const flat = (g: ReturnType<typeof tfGrads>) => [...g.x, ...g.W, ...g.U, ...g.b]
          const implicit = flat(tfGrads(p, FP.Backward.implicit({ tol: 1e-6, maxIter: 200 })))
          const unrolled = flat(tfGrads(p, FP.Backward.unrolled(80)))
          const phantom = flat(tfGrads(p, FP.Backward.phantom(60, 0.5)))
          const jfb = flat(tfGrads(p, FP.Backward.phantom(1, 1)))
          expect(cosine(implicit, unrolled)).toBeGreaterThan(0.999)
          expect(cosine(implicit, phantom)).toBeGreaterThan(0.999)
          expect(relDiff(phantom, implicit)).toBeLessThan(relDiff(jfb, implicit))
        } finally {
          p.dispose()
        }
      }),
      { seed: 21, numRuns: 5 }
    )
  })

  it("uses f.linearize when the map provides it", () => {
    const p = problem(5, 0.6)
    let calls = 0
    // noLeaks: the linearization is freed by the engine's tape cleanup (a sentinel node), not by the test
    const g = noLeaks(() => tidy(() => {
      const inj = tf.add(tf.matMul(p.x, p.U), p.b)
      const f = Object.assign((z: tf.Tensor) => tf.tanh(tf.add(tf.matMul(z, p.W), inj)), {
        linearize: (z: tf.Tensor): FP.Linearization => {
          // J^T v for tanh(z W + inj): (v * (1 - y^2)) W^T
          const y = tf.tanh(tf.add(tf.matMul(z, p.W), inj))
          const d = tf.keep(tf.sub(1, tf.square(y)))
          return {
            vjp: (v) => {
              calls++
              return tf.matMul(tf.mul(v, d), p.W, false, true)
            },
            dispose: () => d.dispose()
          }
        }
      }) satisfies FP.FixedPointMap
      const autodiff = (z: tf.Tensor) => f(z)
      const zStar = FP.makeAnderson({ maxIter: 100, tol: 1e-6 }).run(f, tf.zeros([B, H])).z
      const withLin = tf.variableGrads(() => tf.sum(tf.mul(FP.attach(f, zStar, FP.Backward.implicit()), p.c)) as tf.Scalar, [p.W])
      const withAd = tf.variableGrads(
        () => tf.sum(tf.mul(FP.attach(autodiff, zStar, FP.Backward.implicit()), p.c)) as tf.Scalar,
        [p.W]
      )
      return relDiff(read(withLin.grads[p.W.name]!), read(withAd.grads[p.W.name]!))
    }))
    expect(calls).toBeGreaterThan(0)
    expect(g).toBeLessThan(1e-4)
    p.dispose()
  })

  it("the forward solve stays off the tape: tape size does not depend on the number of iterations", () => {
    const p = problem(9, 0.6)
    const tapeLength = (maxIter: number) => {
      let length = -1
      tf.tidy(() => {
        tf.variableGrads(() => {
          const inj = tf.add(tf.matMul(p.x, p.U), p.b)
          const f: FP.FixedPointMap = (z) => tf.tanh(tf.add(tf.matMul(z, p.W), inj))
          const zStar = FP.makePicard({ maxIter, tol: 0 }).run(f, tf.zeros([B, H])).z
          const out = tf.sum(tf.mul(FP.attach(f, zStar, FP.Backward.implicit()), p.c)) as tf.Scalar
          length = ((tf.engine() as unknown as { state: { activeTape: Array<unknown> } }).state.activeTape).length
          return out
        }, [p.W])
      })
      return length
    }
    expect(tapeLength(5)).toBe(tapeLength(50))
    p.dispose()
  })
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
              const z = FP.makeBroyden().run(fx, tf.zeros([2, 6])).z
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
