/**
 * FixedPoint solvers against closed forms and float64 references: convergence and acceleration on contractive
 * affine maps, Broyden against a naive float64 bad-Broyden with memory export / resume / lift, stats semantics.
 *
 * Every random problem is built in plain JS from a seeded stream, so references can be computed in float64.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import * as FP from "../src/FixedPoint.ts"
import { noLeaks, tf, useBackend } from "../src/Tensor.ts"
import { affine, contraction, mv, randn, read, relDiff, solvers, symmetricWithSpectrum, tidy } from "./fixedPointFixtures.ts"

beforeAll(async () => {
  await useBackend("wasm")
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
      const r = FP.makeBroydenSync({ memory: cap, maxIter: steps, tol: 0, recordTrajectory: true, returnMode: "last" })
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
      const solver = FP.makeBroydenSync({ memory: 20 })
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
        const r = FP.makeBroydenSync({ memory: 8 }).run(f, tf.zeros([B, N]), {
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
        const r = FP.makePicardSync({ maxIter: 5, stopMode: "abs", recordTrajectory: true }).run((z) => tf.add(tf.mul(z, 2), 1), tf.zeros([2, 3]))
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
