/**
 * DEQ-aware attacks: gradient sources against direct computation and finite differences, implicit vs unrolled at
 * convergence, attack invariants over every source, the (i, K_a, lambda) grid's worst case, adaptive attacks on
 * inference-time defences (paper / BPDA / full / EOT), the DEQ masking flags, and no tensor leaks.
 *
 * Models are tiny FC DEQs (hidden 16) on 8x8 synthetic images (4 classes), trained for a few Adam steps here.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import * as fc from "fast-check"
import { afterAll, beforeAll } from "vitest"
import * as Adversary from "../src/Adversary.ts"
import { GradientSource } from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import { makePicardSync } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import { leakCheck, noLeaks, Rng, tf, untaped, useBackend } from "../src/Tensor.ts"
import { cosine, make, perturbSync } from "./support.ts"

const K = 4
const D = 64
const N = 30 // the main deq's budget; it converges (rel 1e-4) in about 13 Picard steps

let scope: Scope.Closeable
let model: Models.Model
/** trained, converging: Picard, maxIter 30, tol 1e-4 */
let deq: Dynamics.Deq
let test: Data.Split
let data: Adversary.EvaluationData

const final = Dynamics.readOut.final

beforeAll(async () => {
  await useBackend("wasm")
  scope = Effect.runSync(Scope.make())
  const ds = Effect.runSync(Data.synthetic({ classes: K, height: 8, width: 8, channels: 1, trainSize: 256, testSize: 32, noise: 0.2, seed: 3 }))
  test = ds.test
  data = { x: test.images, shape: [8, 8, 1], y: test.labels }
  model = Effect.runSync(Models.fc({ inputShape: [8, 8, 1], hidden: 16, classes: K }, { seed: 1 }).pipe(Scope.provide(scope)))
  deq = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: N, tol: 1e-4 } })
  // a few Adam steps through the deq's default gradient (the paper's unroll tail)
  const opt = tf.train.adam(0.03)
  tf.tidy(() => {
    const x = tf.tensor4d(ds.train.images, [256, 8, 8, 1])
    const y = tf.oneHot(tf.tensor1d(ds.train.labels, "int32"), K)
    for (let i = 0; i < 25; i++) {
      opt.minimize(() => tf.losses.softmaxCrossEntropy(y, Dynamics.logits(deq, x, final)) as tf.Scalar)
    }
  })
  opt.dispose()
})

afterAll(() => {
  Effect.runSync(Scope.close(scope, Exit.void))
})

const seeded = <A, E>(self: Effect.Effect<A, E, Rng>, seed = 0) => Effect.provide(self, Rng.seeded(seed))

const batch = (n: number, from = 0) => ({
  x: tf.tensor4d(test.images.slice(from * D, (from + n) * D), [n, 8, 8, 1]),
  y: tf.tensor1d(test.labels.slice(from, from + n), "int32")
})

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length)
  let d = 0
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!))
  return d
}

const ce = (logits: tf.Tensor2D, y: tf.Tensor1D) => Adversary.losses.crossEntropy(logits, y)

/** The input gradient of the summed cross-entropy of a classifier's logits (or of its objective). */
const inputGradient = (c: Adversary.Classifier, x: tf.Tensor4D, y: tf.Tensor1D, seed = 0): Float32Array =>
  tf.tidy(() =>
    tf.grad((xx: tf.Tensor) => {
      const x4 = xx as tf.Tensor4D
      if (c.objective !== undefined) return tf.sum(c.objective(x4, (l) => ce(l, y), { seed }).loss)
      return tf.sum(ce(c.logits(x4, { seed }), y))
    })(x).dataSync() as Float32Array
  )

// ---------------------------------------------------------------------------------------------------------------
// test defences
// ---------------------------------------------------------------------------------------------------------------

const meanEntropy = (logits: tf.Tensor2D): tf.Scalar =>
  tf.tidy(() => {
    const logp = tf.logSoftmax(logits)
    return tf.mean(tf.neg(tf.sum(tf.mul(tf.exp(logp), logp), 1))) as tf.Scalar
  })

/**
 * A few steps of sign-gradient entropy descent on x (inside the eps-ball and [0, 1]), then the plain read-out
 * with the deq's gradient. The sign has zero derivative, so it is computed off the tape (tape restored).
 */
const entropyDefence = (steps = 3, alpha = 0.02, eps = 0.06): Dynamics.Defence => ({
  name: "entropy-descent",
  randomized: false,
  run: (d, x) =>
    tf.tidy(() => {
      let xp = x
      for (let t = 0; t < steps; t++) {
        const xc = xp
        const sign = untaped(() =>
          tf.tidy(() => tf.sign(tf.grad((xx: tf.Tensor) => meanEntropy(Dynamics.logits(d, xx as tf.Tensor4D, final)))(xc)))
        )
        const moved = tf.sub(xp, tf.mul(sign, alpha))
        xp = tf.clipByValue(tf.minimum(tf.maximum(moved, tf.sub(x, eps)), tf.add(x, eps)), 0, 1) as tf.Tensor4D
      }
      return { logits: Dynamics.logits(d, xp, final), purified: xp === x ? (x.clone() as tf.Tensor4D) : xp }
    })
})

/** Gaussian input noise drawn from the call's seed (recorded in `seen`), then the plain read-out. */
const noiseDefence = (sigma: number, seen: Array<number>): Dynamics.Defence => ({
  name: "noise",
  randomized: true,
  run: (d, x, options) =>
    tf.tidy(() => {
      const seed = options?.seed ?? 0
      seen.push(seed)
      const xp = tf.clipByValue(tf.add(x, tf.randomNormal(x.shape, 0, sigma, "float32", seed)), 0, 1) as tf.Tensor4D
      return { logits: Dynamics.logits(d, xp, final), purified: xp }
    })
})

// ---------------------------------------------------------------------------------------------------------------

describe("gradient sources", () => {
  it("labels, readable forms, the papers' strings and bad parameters", () => {
    // labels are the papers' strings: their entry i (results_list[i], counted from 0) is our z_{i+1}
    expect(GradientSource.label(GradientSource.intermediate(4, 5, 0.5))).toBe("Munroll-3-5")
    expect(GradientSource.label(GradientSource.intermediate(8, 5, 0.5))).toBe("Munroll-7-5")
    expect(GradientSource.label(GradientSource.intermediate(1, 1))).toBe("Funroll-0-1")
    expect(GradientSource.label(GradientSource.intermediate(0, 1))).toBe("Funroll-init-1")
    expect(GradientSource.label(GradientSource.implicit())).toBe("implicit")
    expect(GradientSource.label(GradientSource.phantom(5))).toBe("phantom-5-0.5")
    expect(GradientSource.label(GradientSource.unrolled(8))).toBe("unrolled-8")
    expect(GradientSource.label(GradientSource.unroll(9))).toBe("Munroll-out-9")
    expect(GradientSource.label(GradientSource.ensemble(1, 8))).toBe("Funroll-es-0-7-1")
    expect(GradientSource.describe(GradientSource.intermediate(3, 5, 0.5))).toContain("z_3")
    expect(GradientSource.describe(GradientSource.intermediate(3, 5, 0.5))).toContain("entry 2")
    // the papers' index is their results_list position, one iterate ahead of ours
    expect(GradientSource.fromPaper("Munroll-3-5")).toEqual(GradientSource.intermediate(4, 5, 0.5))
    for (const paper of ["Munroll-0-1", "Funroll-3-5", "Munroll-7-9"]) {
      expect(GradientSource.label(GradientSource.fromPaper(paper))).toBe(paper)
    }
    expect(GradientSource.fromPaper("Funroll-es-0")).toEqual(GradientSource.ensemble(1, 8, 1, 1))
    expect(() => GradientSource.intermediate(-1, 1)).toThrow(/intermediate.n/)
    expect(() => GradientSource.intermediate(1, 1, 0)).toThrow(/lambda/)
    expect(() => GradientSource.ensemble(4, 2)).toThrow(/from/)
    expect(() => GradientSource.fromPaper("pgd")).toThrow(/paper/)
    expect(() => Adversary.deqClassifier(deq, { source: GradientSource.implicit(), readOut: Dynamics.readOut.randomState(3) }))
      .toThrow(/RandomState/)
  })

  it("the intermediate source's logits equal i solver steps, f, K_a damped steps and the head, computed directly", () => {
    noLeaks(() => {
      const { x, y } = batch(6)
      try {
        tf.tidy(() => {
          const u = model.inject(x)
          const f = (z: tf.Tensor) => model.cell(z, u)
          for (const i of [0, 1, 4]) {
            for (const k of [0, 2]) {
              for (const lambda of [1, 0.5]) {
                // Picard with tau 1: z_{n+1} = f(z_n)
                let z = model.initState(u)
                for (let n = 0; n < i; n++) z = f(z)
                let t = f(z)
                for (let n = 0; n < k; n++) t = tf.add(tf.mul(t, 1 - lambda), tf.mul(f(t), lambda))
                const expected = model.head(t).dataSync()
                const source = GradientSource.intermediate(i, k, lambda)
                expect(maxAbsDiff(GradientSource.logits(deq, x, source).dataSync(), expected), `i ${i} k ${k}`).toBeLessThan(1e-5)
                const c = Adversary.deqClassifier(deq, { source })
                expect(maxAbsDiff(c.logits(x).dataSync(), expected)).toBeLessThan(1e-5)
                expect(c.gradientSource).toBe(GradientSource.label(source))
              }
            }
          }
          // the ensemble source's logits: the mean of the intermediate heads; its objective: the summed losses
          const ens = Adversary.deqClassifier(deq, { source: GradientSource.ensemble(1, 3, 1, 1) })
          const parts = [1, 2, 3].map((i) => GradientSource.logits(deq, x, GradientSource.intermediate(i, 1, 1)))
          expect(maxAbsDiff(ens.logits(x).dataSync(), tf.div(tf.addN(parts), 3).dataSync())).toBeLessThan(1e-5)
          const summed = inputGradient(ens, x, y)
          const each = [1, 2, 3].map((i) =>
            inputGradient(Adversary.deqClassifier(deq, { source: GradientSource.intermediate(i, 1, 1) }), x, y)
          )
          const sum = summed.map((_, j) => each[0]![j]! + each[1]![j]! + each[2]![j]!)
          expect(maxAbsDiff(summed, sum)).toBeLessThan(1e-5)
        })
      } finally {
        tf.dispose([x, y])
      }
    })
  })

  it("its input gradient matches central finite differences (z_i held fixed, as Eq. (11) treats it)", () => {
    noLeaks(() =>
      Effect.runSync(Effect.scoped(Effect.gen(function*() {
        // smooth and tiny: tanh, no LayerNorm
        const small = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 8, classes: K, act: "tanh", norm: "none", wScale: 0.5 }, { seed: 5 })
        const d = Dynamics.makeWith(small, makePicardSync({}), { solve: { maxIter: 10, tol: 1e-5 } })
        const { x, y } = batch(2)
        const h = 1e-2
        tf.tidy(() => {
          for (const [i, k, lambda] of [[0, 2, 0.5], [3, 2, 1], [2, 0, 1]] as const) {
            const source = GradientSource.intermediate(i, k, lambda)
            const g = inputGradient(Adversary.deqClassifier(d, { source }), x, y)
            // the surrogate as a function of x with z_i frozen at its value at x
            const u0 = small.inject(x)
            let zi = small.initState(u0)
            for (let n = 0; n < i; n++) zi = small.cell(zi, u0)
            const surrogate = (xx: tf.Tensor4D) => {
              const u = small.inject(xx)
              let t = small.cell(zi, u)
              for (let n = 0; n < k; n++) t = tf.add(tf.mul(t, 1 - lambda), tf.mul(small.cell(t, u), lambda))
              return tf.sum(ce(small.head(t), y)).dataSync()[0]!
            }
            for (const seed of [1, 2, 3]) {
              const v = tf.randomNormal(x.shape, 0, 1, "float32", seed) as tf.Tensor4D
              const fd = (surrogate(tf.add(x, tf.mul(v, h)) as tf.Tensor4D) - surrogate(tf.sub(x, tf.mul(v, h)) as tf.Tensor4D)) / (2 * h)
              const vd = v.dataSync()
              let analytic = 0
              for (let j = 0; j < g.length; j++) analytic += g[j]! * vd[j]!
              expect(Math.abs(fd - analytic), `i ${i} k ${k}: fd ${fd} analytic ${analytic}`).toBeLessThan(2e-3 + 2e-2 * Math.abs(analytic))
            }
            // with i = 0 the state is z_0 = 0 for every input: the library function itself is the surrogate
            if (i === 0) {
              const lib = (xx: tf.Tensor4D) => tf.sum(ce(GradientSource.logits(d, xx, source), y)).dataSync()[0]!
              const v = tf.randomNormal(x.shape, 0, 1, "float32", 9) as tf.Tensor4D
              const fd = (lib(tf.add(x, tf.mul(v, h)) as tf.Tensor4D) - lib(tf.sub(x, tf.mul(v, h)) as tf.Tensor4D)) / (2 * h)
              const vd = v.dataSync()
              let analytic = 0
              for (let j = 0; j < g.length; j++) analytic += g[j]! * vd[j]!
              expect(Math.abs(fd - analytic)).toBeLessThan(2e-3 + 2e-2 * Math.abs(analytic))
            }
          }
        })
        tf.dispose([x, y])
      })))
    )
  })

  it("predict is the read-out itself: h(z*), h(z_n) of an early exit, the mean over an ensemble of states", () => {
    noLeaks(() => {
      const { x, y } = batch(6)
      y.dispose()
      try {
        const t = Dynamics.trajectory(deq, x, undefined, { steps: 6, keepLogits: true })
        tf.tidy(() => {
          const early = Adversary.deqClassifier(deq, { source: GradientSource.implicit(), readOut: Dynamics.readOut.state(4) })
          expect(maxAbsDiff(early.predict!(x).dataSync(), t.states[3]!.logits!.dataSync())).toBeLessThan(1e-6)
          const ens = Adversary.deqClassifier(deq, { source: GradientSource.ensemble(2, 6), readOut: Dynamics.readOut.ensemble(2, 6) })
          const mean = tf.div(tf.addN(t.states.slice(1, 6).map((s) => s.logits!)), 5)
          expect(maxAbsDiff(ens.predict!(x).dataSync(), mean.dataSync())).toBeLessThan(1e-5)
          // Final: h of the solver's returned state, no extra application of f
          const long = Dynamics.trajectory(deq, x, undefined, { steps: N, solve: { tol: 1e-4, returnMode: "best" }, keepLogits: true })
          const fin = Adversary.deqClassifier(deq, { source: GradientSource.implicit() })
          expect(maxAbsDiff(fin.predict!(x).dataSync(), long.states.at(-1)!.logits!.dataSync())).toBeLessThan(1e-5)
          tf.dispose(long.states.map((s) => s.logits!))
        })
        tf.dispose(t.states.map((s) => s.logits!))
      } finally {
        x.dispose()
      }
    })
  })

  it("at convergence the implicit input gradient matches the unrolled one (cosine > 0.99); diagnostics report it", () => {
    noLeaks(() => {
      const { x, y } = batch(8)
      try {
        const tight = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: 80, tol: 1e-6 } })
        const implicit = Adversary.deqClassifier(tight, { source: GradientSource.implicit({ maxIter: 80, tol: 1e-7 }) })
        const unrolled = Adversary.deqClassifier(tight, { source: GradientSource.unrolled(80) })
        const gi = inputGradient(implicit, x, y), gu = inputGradient(unrolled, x, y)
        expect(Math.max(...Array.from(gi, Math.abs))).toBeGreaterThan(0)
        expect(cosine(gi, gu)).toBeGreaterThan(0.99)
        const d = implicit.diagnostics!(x)
        expect(d.gradientCosine!).toBeGreaterThan(0.99)
        expect(d.backwardResidual!).toBeLessThan(1e-2)
        expect(Array.from(d.forwardConverged!)).toEqual(new Array(8).fill(1))
        // two solver steps are far from the fixed point: no sample converged
        const short = Adversary.deqClassifier(Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: 2, tol: 1e-4 } }), {
          source: GradientSource.implicit()
        })
        const s = short.diagnostics!(x)
        expect(Array.from(s.forwardConverged!)).toEqual(new Array(8).fill(0))
      } finally {
        tf.dispose([x, y])
      }
    })
  })

  it("every source keeps x_adv in the eps-ball and in [0, 1]", () => {
    const sources = fc.oneof(
      fc.constant(GradientSource.implicit({ maxIter: 10 })),
      fc.integer({ min: 0, max: 3 }).map((k) => GradientSource.phantom(k, 0.5)),
      fc.integer({ min: 1, max: 4 }).map((n) => GradientSource.unrolled(n)),
      fc.integer({ min: 0, max: 3 }).map((k) => GradientSource.unroll(k, 0.5)),
      fc.tuple(fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 5 }), fc.constantFrom(1, 0.5))
        .map(([i, k, l]) => GradientSource.intermediate(i, k, l)),
      fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 3 })).map(([a, b]) => GradientSource.ensemble(a, a + b))
    )
    const readOuts = fc.constantFrom(final, Dynamics.readOut.state(3), Dynamics.readOut.ensemble(2, 4))
    fc.assert(
      fc.property(sources, readOuts, fc.double({ min: 0, max: 0.3, noNaN: true }), fc.integer({ min: 0, max: 1000 }), (source, readOut, eps, seed) => {
        noLeaks(() => {
          const { x, y } = batch(4, seed % 28)
          try {
            const attack = make(Adversary.pgd({ eps, steps: 2, randomStartClamp: false }))
            const r = perturbSync(attack, Adversary.deqClassifier(deq, { source, readOut, diagnostics: false }), x, y, seed)
            const xs = x.dataSync()
            for (let j = 0; j < xs.length; j++) {
              const v = r.xAdv[j]!
              expect(v).toBeGreaterThanOrEqual(0)
              expect(v).toBeLessThanOrEqual(1)
              expect(Math.abs(v - xs[j]!)).toBeLessThanOrEqual(eps + 1e-6)
            }
          } finally {
            tf.dispose([x, y])
          }
        })
      }),
      { seed: 7, numRuns: 14 }
    )
  })
})

describe("evaluation", () => {
  it.effect("evaluate records the DEQ classifier's gradient source unless told otherwise", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const attack = yield* Adversary.fgsm({ eps: 0.05 })
      const c = Adversary.deqClassifier(deq, { source: GradientSource.intermediate(3, 5, 0.5), diagnostics: false })
      const r = yield* Adversary.evaluate(c, data, attack)
      expect(r.gradientSource).toBe("Munroll-2-5")
      expect(r.classifier).toBe("deq")
      expect(r.cleanAccuracy).toBeGreaterThan(0.8)
      const named = yield* Adversary.evaluate(c, data, attack, { gradientSource: "mine" })
      expect(named.gradientSource).toBe("mine")
    }))))

  it.effect("the grid's worst case is at most every grid point's robust accuracy, and robust <= clean", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const attack = yield* Adversary.pgd({ eps: 0.15, steps: 5 })
      const grid = Adversary.Grid.small(8)
      // the small grid holds the read-out state z_8 and no z_0
      expect(grid).toEqual({ lambda: [1, 0.5], states: [2, 4, 8], k: [1, 5] })
      expect(Adversary.Grid.small(4).states).toEqual([1, 2, 4])
      expect(Adversary.Grid.sources(Adversary.Grid.paper())).toHaveLength(2 * 8 * 9)
      const g = yield* Adversary.evaluateGrid(deq, data, attack, { grid, diagnostics: { samples: 2 } })
      expect(g.points.map((p) => p.label)).toEqual(Adversary.Grid.sources(grid).map(GradientSource.label))
      expect(g.points.map((p) => p.result.gradientSource)).toEqual(g.points.map((p) => p.label))
      const w = g.worst
      expect(w.robustAccuracy).toBeLessThanOrEqual(w.cleanAccuracy)
      for (const p of g.points) {
        expect(p.result.robustAccuracy).toBeLessThanOrEqual(p.result.cleanAccuracy)
        expect(w.robustAccuracy).toBeLessThanOrEqual(p.result.robustAccuracy)
        expect(p.result.cleanAccuracy).toBe(w.cleanAccuracy)
      }
      expect(w.robustAccuracy).toBeLessThan(w.cleanAccuracy) // eps 0.15 breaks something
      // the stages of the combined result are the grid points, robust accuracy falling as points are added
      expect(w.stages.map((s) => s.name)).toEqual(g.points.map((p) => p.label))
      for (let j = 1; j < w.stages.length; j++) expect(w.stages[j]!.robustAccuracy).toBeLessThanOrEqual(w.stages[j - 1]!.robustAccuracy)
      expect(w.stages.at(-1)!.robustAccuracy).toBe(w.robustAccuracy)
      expect(w.gradientSource).toBe("worst of 12: lambda {1, 0.5} x state {z_2, z_4, z_8} x K_a {1, 5}")
      // which point broke each sample: the first that did, consistent with every point's own record
      g.brokenBy.forEach((b, s) => {
        if (b === null) for (const p of g.points) expect(p.result.perSample.brokenAt[s]).toBe(-1)
        else if (b !== "clean") {
          const j = g.points.findIndex((p) => p.label === b)
          expect(g.points[j]!.result.perSample.brokenAt[s]).toBeGreaterThan(0)
          for (const p of g.points.slice(0, j)) expect(p.result.perSample.brokenAt[s]).toBe(-1)
        }
      })
      expect(g.brokenBy.filter((b) => b === null).length / g.brokenBy.length).toBe(w.robustAccuracy)
      expect(Adversary.toMarkdown([w, ...g.points.map((p) => p.result)])).toContain("Munroll-7-5")
    }))))

  it("a call's salt gives it its own random starts (grid points are salted with their labels)", () => {
    noLeaks(() => {
      const { x, y } = batch(8)
      try {
        const c = Adversary.deqClassifier(deq, { source: GradientSource.intermediate(4, 1), diagnostics: false })
        const pgd = make(Adversary.pgd({ eps: 0.1, steps: 1 }))
        const run = (salt?: string) =>
          Effect.runSync(Effect.scoped(Effect.map(pgd.perturb(c, x, y, salt === undefined ? {} : { salt }), (r) => Array.from(r.xAdv.dataSync())))
            .pipe(Effect.provide(Rng.seeded(1))))
        expect(run("grid:Funroll-3-1")).toEqual(run("grid:Funroll-3-1"))
        expect(run("grid:Funroll-3-1")).not.toEqual(run("grid:Munroll-3-1"))
        expect(run()).not.toEqual(run("grid:Funroll-3-1"))
      } finally {
        tf.dispose([x, y])
      }
    })
  })

  it.effect("attacks on an ensemble read-out use the summed-loss ensemble source", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const attack = yield* Adversary.pgd({ eps: 0.15, steps: 5 })
      const r = yield* Adversary.evaluateDeq(deq, data, attack, {
        readOut: Dynamics.readOut.ensemble(1, 8),
        sources: [GradientSource.fromPaper("Funroll-es-0"), GradientSource.implicit()],
        diagnostics: false
      })
      expect(r.map((x) => x.gradientSource)).toEqual(["Funroll-es-0-7-1", "implicit"])
      for (const x of r) {
        expect(x.robustAccuracy).toBeLessThanOrEqual(x.cleanAccuracy)
        expect(x.flags).toEqual([])
      }
      expect(r[0]!.robustAccuracy).toBeLessThan(r[0]!.cleanAccuracy)
    }))))
})

describe("defences", () => {
  it.effect("every defended classifier is dynamic; evaluateDeq runs paper, bpda and full", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const attack = yield* Adversary.pgd({ eps: 0.1, steps: 3 })
      const results = yield* Adversary.evaluateDeq(deq, data, attack, {
        defence: entropyDefence(),
        sources: [GradientSource.intermediate(4, 2, 0.5)],
        diagnostics: false,
        evaluate: { batchSize: 16 }
      })
      expect(results.map((r) => r.gradientSource)).toEqual(["paper:Munroll-3-2", "bpda:Munroll-3-2", "full"])
      for (const r of results) {
        expect(r.classifier).toBe("deq+entropy-descent")
        expect(r.flags.map((f) => f.kind)).toContain("dynamic-defence")
        expect(r.robustAccuracy).toBeLessThanOrEqual(r.cleanAccuracy)
      }
      for (const mode of ["paper", "bpda", "full"] as const) {
        const c = Adversary.deqClassifier(deq, { source: GradientSource.implicit(), defence: entropyDefence(), mode })
        expect(c.dynamic).toBe(true)
        expect(c.randomized).toBe(false)
      }
    }))))

  it("BPDA's gradient is the undefended gradient at the purified input; full mode's is finite; paper mode's is the undefended one", () => {
    noLeaks(() => {
      const { x, y } = batch(6)
      const defence = entropyDefence()
      const source = GradientSource.intermediate(3, 2, 0.5)
      try {
        const purified = tf.tidy(() => defence.run(deq, x).purified)
        const plain = Adversary.deqClassifier(deq, { source })
        const bpda = Adversary.deqClassifier(deq, { source, defence, mode: "bpda" })
        expect(maxAbsDiff(purified.dataSync(), x.dataSync())).toBeGreaterThan(0.01) // the defence moved x
        const gb = inputGradient(bpda, x, y), gp = inputGradient(plain, purified, y)
        const scale = Math.max(...Array.from(gp, Math.abs))
        expect(scale).toBeGreaterThan(0)
        expect(maxAbsDiff(gb, gp) / scale).toBeLessThan(1e-4)
        // paper mode: the undefended DEQ's gradient at x itself
        const paper = Adversary.deqClassifier(deq, { source, defence, mode: "paper" })
        expect(maxAbsDiff(inputGradient(paper, x, y), inputGradient(plain, x, y))).toBe(0)
        // full mode: through the defence's loop and read-out
        const full = Adversary.deqClassifier(deq, { source, defence, mode: "full" })
        const gf = inputGradient(full, x, y)
        expect(Array.from(gf).every(Number.isFinite)).toBe(true)
        expect(Math.max(...Array.from(gf, Math.abs))).toBeGreaterThan(0)
        // predictions come from the defended run in every mode
        tf.tidy(() => {
          const defended = defence.run(deq, x).logits.dataSync()
          for (const c of [paper, bpda, full]) expect(maxAbsDiff(c.predict!(x).dataSync(), defended)).toBe(0)
        })
        purified.dispose()
      } finally {
        tf.dispose([x, y])
      }
    })
  })

  it("EOT over a randomized defence: fresh seeds per draw, queries counted, same seed same result", () => {
    noLeaks(() => {
      const { x, y } = batch(8)
      const seen: Array<number> = []
      try {
        const c = Adversary.deqClassifier(deq, { source: GradientSource.implicit(), defence: noiseDefence(0.05, seen), mode: "bpda", diagnostics: false })
        expect(c.randomized).toBe(true)
        const one = perturbSync(make(Adversary.fgsm({ eps: 0.1 })), c, x, y, 3)
        seen.length = 0
        const four = perturbSync(make(Adversary.fgsm({ eps: 0.1, eot: 4 })), c, x, y, 3)
        // one gradient draw (8 queries) or four (32), plus the success check (8)
        expect(four.queries - one.queries).toBe(3 * 8)
        // 4 gradient draws and the success check, each with its own seed; no shape-check pass: the DEQ classifier
        // declares its classes
        expect(c.classes).toBe(4)
        expect(seen).toHaveLength(5)
        expect(new Set(seen).size).toBe(5)
        const again = perturbSync(make(Adversary.fgsm({ eps: 0.1, eot: 4 })), c, x, y, 3)
        expect(Array.from(again.xAdv)).toEqual(Array.from(four.xAdv))
        expect(Array.from(again.success)).toEqual(Array.from(four.success))
        const other = perturbSync(make(Adversary.fgsm({ eps: 0.1, eot: 4 })), c, x, y, 4)
        expect(Array.from(other.xAdv)).not.toEqual(Array.from(four.xAdv))
        // full mode also hands each draw its seed to the defence
        seen.length = 0
        const full = Adversary.deqClassifier(deq, { source: GradientSource.implicit(), defence: noiseDefence(0.05, seen), mode: "full", diagnostics: false })
        perturbSync(make(Adversary.fgsm({ eps: 0.1, eot: 3 })), full, x, y, 3)
        // 3 gradient draws and the success check
        expect(new Set(seen).size).toBe(4)
      } finally {
        tf.dispose([x, y])
      }
    })
  })

  it.effect("a randomized defence evaluated with EOT raises the randomized and dynamic flags", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const r = yield* Adversary.evaluate(
        Adversary.deqClassifier(deq, { source: GradientSource.implicit(), defence: noiseDefence(0.05, []), diagnostics: false }),
        data,
        yield* Adversary.pgd({ eps: 0.1, steps: 2, eot: 2 })
      )
      expect(r.flags.map((f) => f.kind).sort()).toEqual(["dynamic-defence", "randomized-defence"])
      expect(r.gradientSource).toBe("bpda:implicit")
    }))))
})

describe("masking flags", () => {
  it.effect("a rounded DEQ read-out raises zero-gradients; too few solver steps raise forward-not-converged", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const attack = yield* Adversary.fgsm({ eps: 0.1 })
      const rounded = Dynamics.makeWith({ ...model, head: (z: tf.Tensor) => tf.tidy(() => model.head(tf.round(tf.mul(z, 4)))) }, makePicardSync({}), {
        solve: { maxIter: N, tol: 1e-4 }
      })
      const masked = yield* Adversary.evaluate(Adversary.deqClassifier(rounded, { source: GradientSource.implicit() }), data, attack)
      expect(masked.diagnostics.zeroGradientFraction).toBe(1)
      expect(masked.robustAccuracy).toBe(masked.cleanAccuracy)
      expect(masked.flags.map((f) => f.kind)).toContain("zero-gradients")
      expect(masked.flags.map((f) => f.kind)).not.toContain("forward-not-converged")
      // the healthy, converging deq raises nothing
      const healthy = yield* Adversary.evaluateDeq(deq, data, attack, { sources: [GradientSource.implicit()] })
      expect(healthy[0]!.flags).toEqual([])
      expect(healthy[0]!.diagnostics.forwardNotConvergedClean).toBe(0)
      expect(healthy[0]!.diagnostics.gradientCosine!).toBeGreaterThan(0.9)
      // two solver steps: no forward solve converges, on x or on x_adv
      const short = Dynamics.makeWith(model, makePicardSync({}), { solve: { maxIter: 2, tol: 1e-4 } })
      // (a stricter cosine threshold than the default 0.5: this toy model stays fairly aligned)
      const [r] = yield* Adversary.evaluateDeq(short, data, attack, {
        sources: [GradientSource.intermediate(1, 1)],
        evaluate: { gradientCosine: 0.95 }
      })
      expect(r!.diagnostics.forwardNotConvergedClean).toBe(1)
      expect(r!.diagnostics.forwardNotConvergedAdv).toBe(1)
      expect(r!.diagnostics.gradientCosine!).toBeLessThan(0.95)
      expect(r!.flags.map((f) => f.kind).sort()).toEqual(["forward-not-converged", "gradient-cosine-low"])
      expect(r!.flags.find((f) => f.kind === "gradient-cosine-low")!.message).toContain("implicit vs unrolled")
    }))))
})
