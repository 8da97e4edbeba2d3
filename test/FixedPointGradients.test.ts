/**
 * FixedPoint gradients: implicit, phantom and unrolled against float64 central differences and each other,
 * `linearize`, and the forward solve kept off the tape.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import * as FP from "../src/FixedPoint.ts"
import { noLeaks, tf, useBackend } from "../src/Tensor.ts"
import { contraction, type Mat, mv, randn, read, relDiff, tidy } from "./fixedPointFixtures.ts"
import { cosine } from "./support.ts"

beforeAll(async () => {
  await useBackend("wasm")
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
    solver: FP.Solver["Service"] = FP.makeAndersonSync({ maxIter: 200, tol: 1e-6 })
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
      const zStar = FP.makeAndersonSync({ maxIter: 100, tol: 1e-6 }).run(f, tf.zeros([B, H])).z
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
          const zStar = FP.makePicardSync({ maxIter, tol: 0 }).run(f, tf.zeros([B, H])).z
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
