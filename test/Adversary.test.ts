import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as fc from "fast-check"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll } from "vitest"
import * as Adversary from "../src/Adversary.ts"
import type { Classifier } from "../src/Adversary.ts"
import { ConfigError } from "../src/Errors.ts"
import { acquire, leakCheck, noLeaks, Rng, stream, tf, useBackend } from "../src/Tensor.ts"
import { make, perturbSync } from "./support.ts"

// ---------------------------------------------------------------------------------------------------------------
// tiny models and data: 8x8x1 images, 4 classes (a bright quadrant per class)
// ---------------------------------------------------------------------------------------------------------------

const K = 4
const D = 64

const synthetic = (n: number, seed: number) => {
  const s = stream(seed)
  const x = new Float32Array(n * D)
  const y = new Int32Array(n)
  for (let i = 0; i < n; i++) {
    const k = s.int(0, K - 1)
    y[i] = k
    for (let r = 0; r < 8; r++) {
      for (let c = 0; c < 8; c++) {
        const q = (r < 4 ? 0 : 2) + (c < 4 ? 0 : 1)
        x[i * D + r * 8 + c] = (q === k ? 0.9 : 0.1) + (s.next() - 0.5) * 0.1
      }
    }
  }
  return { x, y }
}

interface Mlp {
  readonly params: ReadonlyArray<tf.Tensor>
  readonly net: (x: tf.Tensor) => tf.Tensor2D
}

const mlp = (seed: number, trainable: boolean, hidden = 16): Mlp => {
  const wrap = (t: tf.Tensor) => (trainable ? tf.variable(t) : t)
  const w1 = wrap(tf.randomNormal([D, hidden], 0, 0.3, "float32", seed))
  const b1 = wrap(tf.zeros([hidden]))
  const w2 = wrap(tf.randomNormal([hidden, K], 0, 0.3, "float32", seed + 1))
  const b2 = wrap(tf.zeros([K]))
  return {
    params: [w1, b1, w2, b2],
    net: (x) => tf.tidy(() => tf.add(tf.matMul(tf.relu(tf.add(tf.matMul(x.reshape([-1, D]), w1), b1)), w2), b2))
  }
}

const classifierOf = (m: Mlp, name = "mlp"): Classifier => ({ name, logits: (x) => m.net(x) })

let trained: Mlp
let model: Classifier
/** the same network behind a read-out that rounds its input: zero gradients everywhere */
let masked: Classifier
const test = synthetic(64, 2)
const data = { x: test.x, shape: [8, 8, 1] as const, y: test.y }

beforeAll(async () => {
  await useBackend("wasm")
  const train = synthetic(256, 1)
  trained = mlp(1, true)
  const opt = tf.train.adam(0.05)
  tf.tidy(() => {
    const x = tf.tensor4d(train.x, [256, 8, 8, 1])
    const y = tf.oneHot(tf.tensor1d(train.y, "int32"), K)
    for (let i = 0; i < 60; i++) opt.minimize(() => tf.losses.softmaxCrossEntropy(y, trained.net(x)) as tf.Scalar)
  })
  opt.dispose()
  model = classifierOf(trained)
  masked = { name: "rounded", logits: (x) => tf.tidy(() => trained.net(tf.div(tf.round(tf.mul(x, 2)), 2))) }
})

afterAll(() => {
  tf.dispose(trained.params as Array<tf.Tensor>)
})

const seeded = <A, E>(self: Effect.Effect<A, E, Rng>, seed = 0) => Effect.provide(self, Rng.seeded(seed))

// ---------------------------------------------------------------------------------------------------------------

describe("attack invariants", () => {
  const attacks = (eps: number): Array<Adversary.Attack["Service"]> => [
    make(Adversary.fgsm({ eps })),
    make(Adversary.fgsm({ eps, norm: "L2" })),
    make(Adversary.pgd({ eps, steps: 3, restarts: 2, randomStartClamp: false })),
    make(Adversary.pgd({ eps, norm: "L2", steps: 3, loss: "dlr" })),
    make(Adversary.pgd({ eps, steps: 2, keepBest: false, randomStartClamp: false })),
    make(Adversary.apgd({ eps, steps: 5 })),
    make(Adversary.apgd({ eps, norm: "L2", steps: 5, loss: "dlr", restarts: 2 })),
    make(Adversary.apgdTargeted({ eps, steps: 4, targets: 2 })),
    make(Adversary.square({ eps, queries: 25 })),
    make(Adversary.fabTargeted({ eps, steps: 4, targets: 2 }))
  ]

  it("x_adv stays in the eps-ball of its norm and in [0, 1], for random models and inputs", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 1_000_000 }),
        fc.double({ min: 0, max: 0.6, noNaN: true }),
        fc.integer({ min: 0, max: 9 }),
        (seed, eps, which) => {
          noLeaks(() => {
            const m = mlp(seed, false)
            const x = tf.randomUniform([4, 8, 8, 1], 0, 1, "float32", seed) as tf.Tensor4D
            const y = tf.tensor1d(Array.from({ length: 4 }, (_, i) => (seed + i) % K), "int32")
            try {
              const attack = attacks(eps)[which]!
              const r = perturbSync(attack, classifierOf(m), x, y, seed)
              const xs = x.dataSync()
              for (let i = 0; i < 4; i++) {
                let linf = 0
                let l2 = 0
                for (let j = 0; j < D; j++) {
                  const v = r.xAdv[i * D + j]!
                  expect(v).toBeGreaterThanOrEqual(0)
                  expect(v).toBeLessThanOrEqual(1)
                  const d = Math.abs(v - xs[i * D + j]!)
                  linf = Math.max(linf, d)
                  l2 += d * d
                }
                const norm = attack.settings.norm === "Linf" ? linf : Math.sqrt(l2)
                expect(norm).toBeLessThanOrEqual(eps + 1e-6)
              }
              expect(r.success.length).toBe(4)
              expect(r.queries).toBeGreaterThan(0)
            } finally {
              tf.dispose([x, y, ...m.params])
            }
          })
        }
      ),
      { seed: 42, numRuns: 40 }
    )
  })

  it("APGD checkpoints follow p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)", () => {
    expect(Adversary.checkpoints(100)).toEqual([0, 22, 41, 57, 70, 80, 87, 93, 99])
  })
})

describe("evaluation", () => {
  it.effect("robust <= clean; the ensemble is at least as strong as each of its stages alone", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const eps = 0.3
      const stages = [
        yield* Adversary.apgd({ eps, steps: 20 }),
        yield* Adversary.apgdTargeted({ eps, steps: 20, targets: 3 }),
        yield* Adversary.square({ eps, queries: 200 })
      ]
      const all = yield* Adversary.evaluate(model, data, stages, { batchSize: 32 })
      expect(all.cleanAccuracy).toBeGreaterThan(0.9)
      expect(all.robustAccuracy).toBeLessThanOrEqual(all.cleanAccuracy)
      expect(all.stages.map((s) => s.name)).toEqual(["apgd-ce", "apgd-t", "square"])
      const after = all.stages.map((s) => s.robustAccuracy)
      for (let k = 1; k < after.length; k++) expect(after[k]!).toBeLessThanOrEqual(after[k - 1]!)
      expect(after[after.length - 1]).toBe(all.robustAccuracy)
      for (const stage of stages) {
        const alone = yield* Adversary.evaluate(model, data, stage, { batchSize: 32 })
        expect(alone.robustAccuracy).toBeLessThanOrEqual(alone.cleanAccuracy)
        expect(all.robustAccuracy).toBeLessThanOrEqual(alone.robustAccuracy)
      }
      // the record says what was run
      expect(all).toMatchObject({ classifier: "mlp", eps, norm: "Linf", steps: [20, 20, 200], restarts: [1, 1, 1], seed: 0 })
      expect(all.backend).toBe("wasm")
      expect(all.flags).toEqual([])
      const table = Adversary.toMarkdown([all])
      expect(table.split("\n")).toHaveLength(3)
      expect(table).toContain("apgd-ce+apgd-t+square")
      expect(JSON.parse(Adversary.toJson(all)).robustAccuracy).toBe(all.robustAccuracy)
    }))))

  it.effect("eps = 1 (the whole box) drives accuracy to chance; more PGD steps are never weaker", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const box = yield* Adversary.evaluate(model, data, yield* Adversary.pgd({ eps: 1, steps: 20 }))
      expect(box.robustAccuracy).toBeLessThanOrEqual(1 / K)
      // the same step size: 20 steps extend the path of 5 (same seed, same random start)
      const few = yield* Adversary.evaluate(model, data, yield* Adversary.pgd({ eps: 0.3, steps: 5, stepSize: 0.03 }))
      const many = yield* Adversary.evaluate(model, data, yield* Adversary.pgd({ eps: 0.3, steps: 20, stepSize: 0.03 }))
      expect(many.robustAccuracy).toBeLessThanOrEqual(few.robustAccuracy + 1e-9)
      expect(few.robustAccuracy).toBeLessThan(few.cleanAccuracy)
      // per sample too: what 5 steps break, 20 steps break
      for (let i = 0; i < few.perSample.brokenAt.length; i++) {
        if (few.perSample.brokenAt[i] === 1) expect(many.perSample.brokenAt[i]).toBe(1)
      }
    }))))

  it.effect("on linear classifiers the exact Linf robust accuracy is reached, never undercut", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const eps = 0.05
      for (const seed of [1, 2]) {
        const w = tf.randomNormal([D, K], 0, 1, "float32", seed)
        const x = tf.randomUniform([48, 8, 8, 1], 0, 1, "float32", seed + 10) as tf.Tensor4D
        try {
          const linear: Classifier = { name: "linear", logits: (t) => tf.tidy(() => tf.matMul(t.reshape([-1, D]), w) as tf.Tensor2D) }
          const wd = w.dataSync()
          const xd = x.dataSync()
          const z = tf.tidy(() => linear.logits(x).arraySync())
          const y = z.map((row) => row.indexOf(Math.max(...row)))
          // the worst point for the pair (y, j) moves every pixel against sign(w_y - w_j), clipped to the box
          let exact = 0
          for (let i = 0; i < y.length; i++) {
            let robust = true
            for (let j = 0; j < K; j++) {
              if (j === y[i]) continue
              let m = 0
              for (let c = 0; c < D; c++) {
                const d = wd[c * K + y[i]!]! - wd[c * K + j]!
                m += d * Math.min(1, Math.max(0, xd[i * D + c]! - eps * Math.sign(d)))
              }
              if (m <= 0) robust = false
            }
            if (robust) exact++
          }
          exact /= y.length
          const attacks = [
            yield* Adversary.apgdTargeted({ eps, steps: 20, targets: 3 }),
            yield* Adversary.apgd({ eps, steps: 20, loss: "dlr" }),
            yield* Adversary.pgd({ eps, steps: 20 }),
            yield* Adversary.square({ eps, queries: 300 }),
            yield* Adversary.fabTargeted({ eps, steps: 20, targets: 3 })
          ]
          for (const attack of attacks) {
            const r = yield* Adversary.evaluate(linear, { x, y }, attack)
            expect(r.cleanAccuracy).toBe(1)
            expect(r.robustAccuracy).toBeGreaterThanOrEqual(exact - 1e-9)
            if (attack.name === "apgd-t" || attack.name === "fab-t") expect(r.robustAccuracy).toBeCloseTo(exact, 9)
          }
        } finally {
          tf.dispose([w, x])
        }
      }
    }))))

  it.effect("attacks are services: a Layer provides one, its options decoded at build time", () =>
    Effect.gen(function*() {
      const attack = yield* Adversary.Attack
      expect(attack.name).toBe("pgd-l2")
      expect(attack.settings).toMatchObject({ kind: "white-box", norm: "L2", eps: 0.5, steps: 4, restarts: 2 })
      expect(attack.settings.options["stepSize"]).toBeCloseTo(2.5 * 0.5 / 4, 12)
      const bad = yield* Effect.flip(Effect.provide(Effect.service(Adversary.Attack), Adversary.Attack.apgd({ eps: 0.1, rho: 2 })))
      expect(bad.path).toBe("apgd.rho")
    }).pipe(Effect.provide(Adversary.Attack.pgd({ eps: 0.5, norm: "L2", steps: 4, restarts: 2 }))))

  it("same seed, same result (random starts and Square); another seed, another result", () => {
    noLeaks(() => {
      const x = tf.tensor4d(test.x.slice(0, 8 * D), [8, 8, 8, 1])
      const y = tf.tensor1d(test.y.slice(0, 8), "int32")
      try {
        for (const attack of [make(Adversary.pgd({ eps: 0.2, steps: 3 })), make(Adversary.square({ eps: 0.2, queries: 30 }))]) {
          const a = perturbSync(attack, model, x, y, 7)
          const b = perturbSync(attack, model, x, y, 7)
          const c = perturbSync(attack, model, x, y, 8)
          expect(Array.from(b.xAdv)).toEqual(Array.from(a.xAdv))
          expect(Array.from(b.success)).toEqual(Array.from(a.success))
          expect(Array.from(c.xAdv)).not.toEqual(Array.from(a.xAdv))
        }
      } finally {
        tf.dispose([x, y])
      }
    })
  })

  it("a sample's perturbation does not depend on its batch (keyed randomness)", () => {
    noLeaks(() => {
      const x = tf.tensor4d(test.x.slice(0, 8 * D), [8, 8, 8, 1])
      const y = tf.tensor1d(test.y.slice(0, 8), "int32")
      const rows = [5, 2, 7]
      const xs = tf.gather(x, rows) as tf.Tensor4D
      const ys = tf.gather(y, rows) as tf.Tensor1D
      try {
        const attack = make(Adversary.square({ eps: 0.2, queries: 30 }))
        const full = perturbSync(attack, model, x, y, 3)
        const sub = Effect.runSync(
          Effect.scoped(Effect.map(attack.perturb(model, xs, ys, { keys: rows }), (r) => r.xAdv.dataSync().slice())).pipe(
            Effect.provide(Rng.seeded(3))
          )
        )
        rows.forEach((row, j) => {
          expect(Array.from(sub.slice(j * D, (j + 1) * D))).toEqual(Array.from(full.xAdv.slice(row * D, (row + 1) * D)))
        })
      } finally {
        tf.dispose([x, y, xs, ys])
      }
    })
  })

  it.effect("EOT averages gradients over fresh draws of a randomized classifier", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const noisy: Classifier = {
        name: "noisy",
        randomized: true,
        logits: (x, context) =>
          tf.tidy(() => trained.net(tf.add(x, tf.randomNormal(x.shape, 0, 0.05, "float32", context?.seed ?? 0))))
      }
      const x = yield* acquire(() => tf.tensor4d(test.x.slice(0, 8 * D), [8, 8, 8, 1]))
      const y = yield* acquire(() => tf.tensor1d(test.y.slice(0, 8), "int32"))
      const one = yield* Effect.scoped(Effect.map((yield* Adversary.fgsm({ eps: 0.1 })).perturb(noisy, x, y), (r) => r.queries))
      const four = yield* Effect.scoped(Effect.map((yield* Adversary.fgsm({ eps: 0.1, eot: 4 })).perturb(noisy, x, y), (r) => r.queries))
      // one gradient draw (8 queries) or four (32), plus the success check (8)
      expect(four - one).toBe(3 * 8)
      const r = yield* Adversary.evaluate(noisy, data, yield* Adversary.pgd({ eps: 0.1, steps: 2, eot: 2 }))
      expect(r.flags.map((f) => f.kind)).toContain("randomized-defence")
    }).pipe(Effect.scoped))))
})

describe("gradient-masking flags", () => {
  it.effect("a rounding read-out raises zero-gradients (and black-box-stronger when Square wins)", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const eps = 0.3
      const stages = [yield* Adversary.apgd({ eps, steps: 10 }), yield* Adversary.square({ eps, queries: 200 })]
      const r = yield* Adversary.evaluate(masked, data, stages, { gradientSource: "round-readout" })
      expect(r.cleanAccuracy).toBeGreaterThan(0.9)
      expect(r.diagnostics.zeroGradientFraction).toBe(1)
      const kinds = r.flags.map((f) => f.kind)
      expect(kinds).toContain("zero-gradients")
      expect(r.stages[1]!.broken > 0).toBe(kinds.includes("black-box-stronger"))
      expect(kinds).toContain("black-box-stronger")
      expect(r.gradientSource).toBe("round-readout")
      // a read-out computed off the tape (through JS arrays) has no gradient at all: zeros, not a crash
      const detached: Classifier = { name: "detached", logits: (x) => tf.tidy(() => trained.net(tf.tensor4d(x.dataSync(), x.shape))) }
      const d = yield* Adversary.evaluate(detached, data, yield* Adversary.fgsm({ eps }))
      expect(d.robustAccuracy).toBe(d.cleanAccuracy)
      // every coordinate of every sample is zero: both the per-sample and the per-coordinate flag
      expect(d.flags.map((f) => f.kind)).toEqual(["zero-gradients", "zero-gradient-coordinates"])
      expect(d.diagnostics.zeroCoordinateFraction).toBe(1)
      // the same attacks on the plain model raise neither
      const plain = yield* Adversary.evaluate(model, data, stages)
      expect(plain.flags.map((f) => f.kind)).not.toContain("zero-gradients")
      expect(plain.flags.map((f) => f.kind)).not.toContain("zero-gradient-coordinates")
      expect(plain.diagnostics.zeroCoordinateFraction).toBe(0)
    }))))

  it.effect("solver diagnostics and dynamic defences raise their flags", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const deqLike: Classifier = {
        ...model,
        name: "deq-like",
        dynamic: true,
        diagnostics: (x) => ({
          forwardConverged: Uint8Array.from({ length: x.shape[0] }, (_, i) => (i % 2 === 0 ? 1 : 0)),
          backwardResidual: 0.3,
          gradientCosine: 0.1
        })
      }
      const r = yield* Adversary.evaluate(deqLike, data, yield* Adversary.fgsm({ eps: 0.05 }))
      expect(r.diagnostics.forwardNotConvergedClean).toBeCloseTo(0.5, 1)
      expect(r.diagnostics.backwardResidual).toBe(0.3)
      expect(r.flags.map((f) => f.kind).sort()).toEqual(
        ["backward-residual-high", "dynamic-defence", "forward-not-converged", "gradient-cosine-low"]
      )
    }))))

  it.effect("accuracy that does not fall as eps grows is flagged", () =>
    seeded(leakCheck(Effect.gen(function*() {
      // rounding to halves: moves below 0.25 change nothing
      const sweep = yield* Adversary.evaluateSweep(masked, data, [0.05, 0.1], (eps) => Adversary.pgd({ eps, steps: 3 }))
      expect(sweep.map((r) => r.robustAccuracy)).toEqual([sweep[0]!.cleanAccuracy, sweep[0]!.cleanAccuracy])
      for (const r of sweep) expect(r.flags.map((f) => f.kind)).toContain("accuracy-not-decreasing")
      const good = yield* Adversary.evaluateSweep(model, data, [0.05, 0.3], (eps) => Adversary.pgd({ eps, steps: 10 }))
      for (const r of good) expect(r.flags.map((f) => f.kind)).not.toContain("accuracy-not-decreasing")
    }))))
})

describe("resume", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-deq-adversary-"))
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it.effect("an interrupted evaluation, resumed, gives the numbers of an uninterrupted one", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const stages = [yield* Adversary.pgd({ eps: 0.2, steps: 5 }), yield* Adversary.square({ eps: 0.2, queries: 60 })]
      const file = path.join(dir, "eval.jsonl")
      const whole = yield* Adversary.evaluate(model, data, stages, { batchSize: 16 })
      const half = yield* Adversary.evaluate(model, data, stages, { batchSize: 16, resumeFile: file, maxBatches: 2 })
      expect(half.complete).toBe(false)
      expect(half.samples).toBe(32)
      expect(fs.readFileSync(file, "utf8").trim().split("\n")).toHaveLength(3)
      // a crash in the middle of the next write leaves a torn line
      fs.appendFileSync(file, "{\"type\":\"batch\",\"index\":2,\"sta")
      const resumed = yield* Adversary.evaluate(model, data, stages, { batchSize: 16, resumeFile: file })
      expect(resumed.complete).toBe(true)
      const numbers = (r: Adversary.EvaluationResult) => ({
        clean: r.cleanAccuracy,
        robust: r.robustAccuracy,
        stages: r.stages,
        perSample: r.perSample,
        diagnostics: r.diagnostics,
        flags: r.flags
      })
      expect(numbers(resumed)).toEqual(numbers(whole))
      expect(fs.readFileSync(file, "utf8").trim().split("\n")).toHaveLength(5)
      // a finished file: nothing is recomputed, same numbers
      const again = yield* Adversary.evaluate(model, data, stages, { batchSize: 16, resumeFile: file })
      expect(numbers(again)).toEqual(numbers(whole))
      // another evaluation's file is refused, naming the field
      const other = yield* Effect.flip(
        Adversary.evaluate(model, data, stages, { batchSize: 16, resumeFile: file }).pipe(Effect.provide(Rng.seeded(1)))
      )
      expect(other._tag).toBe("ResumeError")
      expect(other.message).toContain("seed")
    }))))
})

describe("configuration", () => {
  it.effect("an unknown option key is a ConfigError naming it", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(Adversary.pgd({ eps: 0.1, stepz: 3 } as any))
      expect(e).toBeInstanceOf(ConfigError)
      expect(e.path).toBe("pgd.stepz")
      const s = yield* Effect.flip(Adversary.square({ eps: 0.1, norm: "L2" } as any))
      expect(s.path).toBe("square.norm")
      const o = yield* Effect.flip(seeded(Adversary.evaluate(model, data, yield* Adversary.fgsm({ eps: 0.1 }), { batchsize: 8 } as any)))
      expect(o._tag).toBe("ConfigError")
      expect((o as ConfigError).path).toBe("evaluate.batchsize")
      const mixed = yield* Effect.flip(Adversary.ensemble([yield* Adversary.fgsm({ eps: 0.1 }), yield* Adversary.fgsm({ eps: 0.2 })]))
      expect(mixed.path).toBe("ensemble[1].eps")
    }))

  it.effect("bad inputs are AttackErrors that say what is wrong", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const attack = yield* Adversary.apgdTargeted({ eps: 0.1, steps: 2 })
      const threeClasses: Classifier = { name: "k3", logits: (x) => tf.tidy(() => trained.net(x).slice([0, 0], [-1, 3])) }
      const exit = yield* Effect.exit(Effect.scoped(Effect.gen(function*() {
        const x = yield* acquire(() => tf.zeros([2, 8, 8, 1]) as tf.Tensor4D)
        const y = yield* acquire(() => tf.tensor1d([0, 1], "int32"))
        return yield* attack.perturb(threeClasses, x, y)
      })))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("at least 4 classes")
    }))))

  it.effect("the ensemble is an attack: perturb gives the per-sample worst case", () =>
    seeded(leakCheck(Effect.gen(function*() {
      const aa = yield* Adversary.ensemble(yield* Adversary.autoAttack({ eps: 0.3, steps: 10, queries: 50, targets: 3 }))
      // AutoAttack's four attacks, in its order
      expect(aa.name).toBe("apgd-ce+apgd-t+fab-t+square")
      const r = yield* Effect.scoped(Effect.gen(function*() {
        const x = yield* acquire(() => tf.tensor4d(test.x.slice(0, 16 * D), [16, 8, 8, 1]))
        const y = yield* acquire(() => tf.tensor1d(test.y.slice(0, 16), "int32"))
        const out = yield* aa.run(model, x, y)
        const check = tf.tidy(() => tf.notEqual(tf.argMax(model.logits(out.xAdv), 1), y).dataSync())
        return { out, check: Array.from(check), brokenAt: Array.from(out.brokenAt) }
      }))
      expect(Array.from(r.out.success)).toEqual(r.check)
      expect(r.brokenAt.every((b) => b >= -1 && b <= 3)).toBe(true)
      expect(r.out.stages.reduce((s, st) => s + st.broken, 0)).toBe(r.brokenAt.filter((b) => b > 0).length)
    }))))
})
