/**
 * The per-sample worst case over evaluations and the `unreliable` checks, on made-up per-sample records (property
 * tests) and on a real suite run of a tiny DEQ.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import * as fc from "fast-check"
import { afterAll, beforeAll } from "vitest"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import * as Evaluation from "../src/Evaluation.ts"
import { makeBroydenSync } from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import { Rng, tf, useBackend } from "../src/Tensor.ts"

/** An evaluation result with the given per-sample record (clean-correct, first broken by stage). */
const result = (name: string, cleanCorrect: ReadonlyArray<number>, brokenAt: ReadonlyArray<number>, kind: "white-box" | "black-box" = "white-box"): Adversary.EvaluationResult => {
  const n = cleanCorrect.length
  const robust = brokenAt.filter((b) => b === -1).length / n
  return {
    classifier: "made-up",
    attack: name,
    gradientSource: name,
    norm: "Linf",
    eps: 0.1,
    steps: [10],
    restarts: [1],
    seed: 0,
    backend: "none",
    samples: n,
    total: n,
    complete: true,
    cleanAccuracy: cleanCorrect.filter((v) => v === 1).length / n,
    robustAccuracy: robust,
    stages: [{ name, settings: { kind, norm: "Linf", eps: 0.1, steps: 10, restarts: 1, options: {} }, robustAccuracy: robust, broken: 0, queries: 10 * n, forward: 10 * n, backward: 5 * n }],
    passes: { forward: 10 * n, backward: 5 * n },
    diagnostics: { zeroGradientFraction: 0 },
    flags: [],
    perSample: { cleanCorrect, brokenAt }
  }
}

/** Per-sample records of several evaluations of the same samples (clean correctness shared). */
const records = fc.integer({ min: 1, max: 30 }).chain((n) =>
  fc.record({
    clean: fc.array(fc.boolean(), { minLength: n, maxLength: n }),
    broken: fc.array(fc.array(fc.boolean(), { minLength: n, maxLength: n }), { minLength: 1, maxLength: 6 })
  })
)

describe("worstCase", () => {
  it("is at most every component's robust accuracy, robust only where every component is, and sums the passes", () => {
    fc.assert(
      fc.property(records, ({ clean, broken }) => {
        const cc = clean.map((c) => (c ? 1 : 0))
        const parts = broken.map((b, j) => ({
          label: `attack ${j}`,
          result: result(`attack ${j}`, cc, cc.map((c, i) => (c === 0 ? 0 : b[i] ? 1 : -1)))
        }))
        const w = Adversary.worstCase(parts, { label: "worst" })
        for (const p of parts) expect(w.robustAccuracy).toBeLessThanOrEqual(p.result.robustAccuracy)
        for (let i = 0; i < cc.length; i++) {
          const robust = parts.every((p) => p.result.perSample.brokenAt[i] === -1)
          expect(w.perSample.brokenAt[i] === -1).toBe(robust)
          if (cc[i] === 0) expect(w.perSample.brokenAt[i]).toBe(0)
          else if (!robust) {
            // the first component that broke it
            const j = parts.findIndex((p) => p.result.perSample.brokenAt[i]! > 0)
            expect(w.perSample.brokenAt[i]).toBe(j + 1)
          }
        }
        expect(w.cleanAccuracy).toBe(parts[0]!.result.cleanAccuracy)
        expect(w.stages.map((s) => s.name)).toEqual(parts.map((p) => p.label))
        expect(w.stages.at(-1)!.robustAccuracy).toBe(w.robustAccuracy)
        expect(w.passes.forward).toBe(parts.reduce((a, p) => a + p.result.passes.forward, 0))
        expect(w.flags.filter((f) => f.kind === "unreliable")).toEqual([])
      }),
      { numRuns: 200 }
    )
  })

  it("flags unreliable: adaptive above transfer, black-box below every white-box, accuracy not falling with eps", () => {
    const cc = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    const at = (robust: number, kind: "white-box" | "black-box" = "white-box") =>
      result(`r${robust}`, cc, cc.map((_, i) => (i < robust ? -1 : 1)), kind)
    const reliable = Adversary.worstCase(
      [{ label: "transfer", result: at(6), role: "transfer" }, { label: "bpda", result: at(5), role: "adaptive" }, { label: "square", result: at(7, "black-box"), role: "black-box" }],
      { label: "w", sweep: [{ ...at(9), eps: 0.05 }, { ...at(5), eps: 0.1 }, { ...at(1), eps: 0.2 }] }
    )
    expect(reliable.flags).toEqual([])
    expect(reliable.robustAccuracy).toBe(0.5)
    const adaptiveWeaker = Adversary.worstCase([{ label: "transfer", result: at(6), role: "transfer" }, { label: "full", result: at(8), role: "adaptive" }], { label: "w" })
    expect(adaptiveWeaker.flags.map((f) => f.kind)).toEqual(["unreliable"])
    expect(adaptiveWeaker.flags[0]!.message).toContain('"full" leaves 80.0% robust, above the non-adaptive transfer attack "transfer" (60.0%)')
    expect(adaptiveWeaker.flags[0]!.value).toBeCloseTo(0.2, 12)
    const blackBox = Adversary.worstCase([{ label: "pgd", result: at(6), role: "white-box" }, { label: "square", result: at(3, "black-box"), role: "black-box" }], { label: "w" })
    expect(blackBox.flags.map((f) => f.message)).toEqual([expect.stringContaining('black-box attack "square" (30.0%) beats every gradient-based attack (best 60.0%)')])
    // an ensemble whose last stage is black-box counts as gradient-based only up to its white-box stages
    const ensemble = { ...at(4), stages: [{ ...at(6).stages[0]!, name: "apgd" }, { ...at(4, "black-box").stages[0]!, name: "square" }] }
    expect(Adversary.worstCase([{ label: "aa", result: ensemble, role: "white-box" }, { label: "square", result: at(5, "black-box"), role: "black-box" }], { label: "w" })
      .flags.map((f) => f.kind)).toEqual(["unreliable"])
    const flat = Adversary.worstCase([{ label: "pgd", result: at(5), role: "white-box" }], {
      label: "w",
      sweep: [{ ...at(5), eps: 0.1 }, { ...at(6), eps: 0.2 }]
    })
    expect(flat.flags.map((f) => f.message)).toEqual([expect.stringContaining("does not fall as eps grows (eps 0.1: 50.0%, eps 0.2: 60.0%)")])
  })
})

// ---------------------------------------------------------------------------------------------------------------

let scope: Scope.Closeable
let deq: Dynamics.Deq
let split: Data.Split

beforeAll(async () => {
  await useBackend("wasm")
  scope = Effect.runSync(Scope.make())
  const ds = await Effect.runPromise(Data.mnist({ trainSize: 500, testSize: 24 }))
  split = ds.test
  const model = Effect.runSync(Models.fc({ inputShape: [28, 28, 1], hidden: 16, classes: 10 }, { seed: 3 }).pipe(Scope.provide(scope)))
  deq = Dynamics.makeWith(model, makeBroydenSync({ maxIter: 4, tol: 1e-3 }), { backward: Dynamics.paperTail })
  const opt = tf.train.adam(0.01)
  tf.tidy(() => {
    const x = tf.tensor4d(ds.train.images, [500, 28, 28, 1])
    const y = tf.oneHot(tf.tensor1d(ds.train.labels, "int32"), 10)
    for (let i = 0; i < 20; i++) opt.minimize(() => tf.losses.softmaxCrossEntropy(y, Dynamics.logits(deq, x, Dynamics.readOut.final)) as tf.Scalar)
  })
  opt.dispose()
})

afterAll(() => {
  Effect.runSync(Scope.close(scope, Exit.void))
})

describe("the evaluation suite's worst cases", () => {
  it.effect("lead the rows, are at most every evaluation they combine, and carry every flag", () =>
    Effect.gen(function*() {
      const suite = yield* Evaluation.runSuite(deq, Dynamics.readOut.state(4), split, {
        suite: new Evaluation.SuiteConfig({
          samples: 24,
          defendedSamples: 12,
          batchSize: 24,
          pgdSteps: 3,
          apgdSteps: 3,
          squareQueries: 10,
          targets: 2,
          defendedApgdSteps: 2,
          defendedSquareQueries: 4,
          defence: { rounds: 2, solverSteps: 2, inputSteps: 2 }
        }),
        eps: 0.1,
        steps: 4,
        families: new Set(["ready-made", "grid", "aa"] as const),
        defence: true,
        log: () => Effect.void
      })
      const [open, guarded] = suite.rows
      expect(open!.headline).toBe(true)
      expect(guarded!.headline).toBe(true)
      expect(suite.undefended).toBe(open!.result)
      expect(suite.defended).toBe(guarded!.result)
      const parts = (defence: string) => suite.rows.filter((r) => r.role !== undefined && r.defence === defence)
      expect(parts("none").map((r) => r.role)).toEqual(["white-box", "white-box", "white-box", "white-box", "black-box"])
      expect(parts("entropy reduction").map((r) => r.role)).toEqual(["transfer", "adaptive", "adaptive", "black-box", "adaptive"])
      for (const [worst, defence] of [[open!, "none"], [guarded!, "entropy reduction"]] as const) {
        expect(worst.result.stages).toHaveLength(parts(defence).length)
        for (const r of parts(defence)) {
          expect(worst.result.robustAccuracy).toBeLessThanOrEqual(r.result.robustAccuracy)
          expect(r.result.samples).toBe(worst.result.samples)
          // every component's flags are in the worst case
          for (const f of r.result.flags) expect(worst.result.flags).toContainEqual(f)
        }
        expect(worst.result.passes.forward).toBe(parts(defence).reduce((a, r) => a + r.result.passes.forward, 0))
      }
      expect(guarded!.result.samples).toBe(12)
      // the AutoAttack rows run the four attacks
      for (const r of suite.rows.filter((x) => x.attack.startsWith("AutoAttack"))) {
        expect(r.result.stages.map((s) => s.name)).toEqual(["apgd-ce", "apgd-t", "fab-t", "square"])
      }
      const table = Evaluation.suiteTable(suite)
      expect(table.split("\n")[2]).toContain("**per-sample worst case over every attack below (5)**")
      expect(table).toContain("passes fwd/bwd per sample")
      expect(suite.notes.join("\n")).toContain("**Undefended robust accuracy:")
      expect(suite.notes.join("\n")).toContain("**Defended robust accuracy (entropy reduction):")
      const json = Evaluation.suiteJson(suite) as { undefended: { robustAccuracy: number }; rows: Array<{ headline?: boolean }> }
      expect(json.undefended.robustAccuracy).toBe(open!.result.robustAccuracy)
      expect(json.rows.filter((r) => r.headline === true)).toHaveLength(2)
    }).pipe(Effect.provide(Rng.seeded(0))))
})
