/**
 * Examples: each example's main runs in-process in its `smoke` mode (the sizes of examples/common.ts
 * `scaleFor("smoke")`, so the suite stays fast) and writes runs/examples/<name>.smoke.json whose shape and values are sane: accuracies in [0, 1], robust <= clean,
 * entropies in [0, log 10], and the rows each claim needs.
 */
import * as fs from "node:fs/promises"
import { beforeAll, describe, expect, it } from "vitest"
import { Effect } from "effect"
import { main as dynamicsMain } from "../examples/dynamics-under-at.ts"
import { main as entropyMain } from "../examples/entropy-reduction.ts"
import { main as sourcesMain } from "../examples/gradient-sources.ts"
import { main as risMain } from "../examples/random-intermediate-states.ts"
import { main as solversMain } from "../examples/solvers.ts"
import { outputFile } from "../examples/common.ts"
import { tf, useBackend } from "../src/Tensor.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const LOG10 = Math.log(10)
const fraction = (x: number) => {
  expect(Number.isFinite(x)).toBe(true)
  expect(x).toBeGreaterThanOrEqual(0)
  expect(x).toBeLessThanOrEqual(1)
}
const entropy = (h: number) => {
  expect(h).toBeGreaterThanOrEqual(0)
  expect(h).toBeLessThanOrEqual(LOG10 + 1e-6)
}

/** Runs a main, checks the common envelope and that the JSON on disk is the returned output; no tensor left. */
const run = async <A>(name: string, main: (o: { smoke: boolean; silent: boolean }) => Effect.Effect<{ result: A }, unknown>) => {
  const before = tf.memory().numTensors
  const out = await Effect.runPromise(main({ smoke: true, silent: true }) as Effect.Effect<any, unknown>)
  expect(tf.memory().numTensors).toBe(before)
  const written = JSON.parse(await fs.readFile(outputFile(name, "smoke"), "utf8"))
  expect(written.example).toBe(name)
  expect(written.mode).toBe("smoke")
  expect(written.backend).toBe("wasm")
  expect(typeof written.markdown).toBe("string")
  expect(written.markdown).toContain("|")
  expect(written.result).toEqual(JSON.parse(JSON.stringify(out.result)))
  return written.result as A
}

describe("examples (smoke mode)", { timeout: 400_000 }, () => {
  it("dynamics-under-at: per-state accuracy and entropy for standard and PGD-AT", async () => {
    const r = await run<import("../examples/dynamics-under-at.ts").DynamicsResult>("dynamics-under-at", dynamicsMain)
    expect(r.models.map((m) => m.model)).toEqual(["standard", "PGD-AT"])
    for (const m of r.models) {
      expect(m.states.map((s) => s.n)).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
      for (const s of m.states) {
        fraction(s.cleanAccuracy)
        fraction(s.robustAccuracy)
        expect(s.robustAccuracy).toBeLessThanOrEqual(s.cleanAccuracy + 1e-9)
        entropy(s.cleanEntropy)
        entropy(s.advEntropy)
        expect(s.relResidual).toBeGreaterThanOrEqual(0)
      }
    }
  })

  it("random-intermediate-states: PGD-AT / TRADES with and without RIS", async () => {
    const r = await run<import("../examples/random-intermediate-states.ts").RisResult>("random-intermediate-states", risMain)
    expect(r.rows.map((x) => x.model)).toEqual(["PGD-AT", "PGD-AT + RIS", "TRADES", "TRADES + RIS"])
    for (const x of r.rows) {
      for (const v of [x.clean, x.grid, x.autoAttack, x.worst]) fraction(v)
      expect(x.grid).toBeLessThanOrEqual(x.clean)
      expect(x.autoAttack).toBeLessThanOrEqual(x.clean)
      // the worst case over both attacks is never above either
      expect(x.worst).toBeLessThanOrEqual(Math.min(x.grid, x.autoAttack) + 1e-9)
    }
  })

  it("entropy-reduction: undefended, paper (non-adaptive), BPDA, full, EOT, Square and both worst cases", async () => {
    const r = await run<import("../examples/entropy-reduction.ts").EntropyReductionResult>("entropy-reduction", entropyMain)
    expect(r.rows.map((x) => `${x.defence}/${x.protocol}`)).toEqual([
      "none/single source",
      "none/grid worst",
      "none/square",
      "none/worst case",
      "entropy-reduction/paper",
      "entropy-reduction/bpda",
      "entropy-reduction/full",
      "entropy-reduction/bpda+eot",
      "entropy-reduction/square",
      "entropy-reduction/worst case"
    ])
    for (const x of r.rows) {
      fraction(x.clean)
      fraction(x.robust)
      expect(x.robust).toBeLessThanOrEqual(x.clean)
    }
    // the grid's worst case is never above its single source; each worst case is never above a row it combines
    expect(r.rows[1]!.robust).toBeLessThanOrEqual(r.rows[0]!.robust)
    for (const x of r.rows.slice(0, 3)) expect(r.rows[3]!.robust).toBeLessThanOrEqual(x.robust)
    for (const x of r.rows.slice(4, 9)) expect(r.rows[9]!.robust).toBeLessThanOrEqual(x.robust)
    // every defended row is flagged a dynamic defence; the worst case carries its parts' flags
    for (const x of r.rows.slice(4)) expect(x.flags).toContain("dynamic-defence")
    entropy(r.entropy.undefended)
    entropy(r.entropy.defended)
  })

  it("gradient-sources: ready-made, intermediate, grid and black-box rows against one worst case", async () => {
    const r = await run<import("../examples/gradient-sources.ts").GradientSourcesResult>("gradient-sources", sourcesMain)
    const kinds = new Set(r.rows.map((x) => x.kind))
    expect([...kinds]).toEqual(["ready-made", "intermediate", "grid", "black-box"])
    expect(r.rows.slice(0, 4).map((x) => x.source)).toEqual(["implicit", "phantom-5-0.5", "Munroll-out-5", "unrolled-8"])
    fraction(r.worst)
    expect(r.worst).toBeLessThanOrEqual(Math.min(...r.rows.map((x) => x.robust)) + 1e-9)
    for (const x of r.rows) {
      fraction(x.clean)
      fraction(x.robust)
      expect(x.robust).toBeLessThanOrEqual(x.clean)
      expect(x.overstatement).toBeGreaterThanOrEqual(-1e-9)
    }
    const grid = r.rows.find((x) => x.kind === "grid")!
    for (const x of r.rows.filter((x) => x.kind === "intermediate")) expect(grid.robust).toBeLessThanOrEqual(x.robust)
    expect(r.rows[0]!.gradientCosine).toBeGreaterThanOrEqual(-1)
  })

  it("solvers: Picard, Anderson and Broyden on clean and PGD inputs", async () => {
    const r = await run<import("../examples/solvers.ts").SolversResult>("solvers", solversMain)
    expect(r.rows.map((x) => `${x.solver.split(" ")[0]}/${x.inputs}`)).toEqual([
      "picard/clean",
      "anderson/clean",
      "broyden/clean",
      "picard/pgd",
      "anderson/pgd",
      "broyden/pgd"
    ])
    for (const x of r.rows) {
      fraction(x.accuracy)
      fraction(x.converged)
      expect(x.meanSteps).toBeGreaterThanOrEqual(1)
      expect(x.meanSteps).toBeLessThanOrEqual(r.maxIter)
      expect(x.seconds).toBeGreaterThanOrEqual(0)
    }
    // the same converged fixed point gives (nearly) the same accuracy whatever the solver
    const clean = r.rows.filter((x) => x.inputs === "clean" && x.converged === 1).map((x) => x.accuracy)
    if (clean.length > 1) expect(Math.max(...clean) - Math.min(...clean)).toBeLessThanOrEqual(0.05)
    // PGD inputs never raise accuracy above clean for the same solver
    for (let k = 0; k < 3; k++) expect(r.rows[k + 3]!.accuracy).toBeLessThanOrEqual(r.rows[k]!.accuracy)
  })
})

describe("compose (the README's program)", () => {
  it("trains both arms of the ablation from layers and evaluates them", async () => {
    const { main } = await import("../examples/compose.ts")
    const before = tf.memory().numTensors
    const table = await Effect.runPromise(main)
    expect(tf.memory().numTensors).toBe(before)
    const rows = table.split("\n").filter((l) => l.startsWith("| PGD-AT"))
    expect(rows.length).toBe(6)
    for (const row of rows) {
      const cells = row.split("|").map((c) => c.trim())
      const clean = Number(cells[9]), robust = Number(cells[10])
      // well above chance (25%) after training; robust never above clean
      expect(clean).toBeGreaterThan(60)
      expect(robust).toBeLessThanOrEqual(clean)
    }
  }, 120_000)
})
