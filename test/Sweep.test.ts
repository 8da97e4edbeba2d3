/**
 * Sweeps without processes: sweep files are decoded strictly (an unknown axis or key is a ConfigError naming it),
 * expand into runs with stable ids, the SQLite SqlClient under the embedded storage behaves as effect/sql
 * expects (parameters, booleans, transactions), and the per-arm aggregation and plots are what the summary says.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit } from "effect"
import * as SqlClient from "effect/sql/SqlClient"
import { describe, expect, it } from "vitest"
import { ConfigError } from "../src/Errors.ts"
import * as Report from "../src/Report.ts"
import * as Sqlite from "../src/internal/sweep/sqlite.ts"
import { counts, makeDisplay, type RunStatus, sweepEta, tableText } from "../src/internal/sweep/follow.ts"
import { defenceOf, plots, type RunResult } from "../src/internal/sweep/results.ts"
import { submissionOrder } from "../src/internal/sweep/run.ts"
import { decide, stateTable, verdicts, verdictTable } from "../src/internal/sweep/verdicts.ts"
import * as Sweep from "../src/Sweep.ts"

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-sweep-unit-"))
const quick = path.resolve("presets", "sweep-quick.json")

const writeSweep = (name: string, value: unknown): string => {
  const file = path.join(tmp, `${name}.json`)
  fs.writeFileSync(file, JSON.stringify(value))
  return file
}

const failure = <A>(effect: Effect.Effect<A, ConfigError>): ConfigError => {
  const exit = Effect.runSyncExit(effect)
  if (Exit.isSuccess(exit)) throw new Error("expected a ConfigError")
  const e = exit.cause.reasons[0]
  if (e?._tag !== "Fail") throw new Error(`expected a failure, got ${e?._tag}`)
  return e.error
}

describe("sweep files", () => {
  it("sweep-quick expands to 4 runs (2 arms x 2 seeds) with stable, distinct ids", () => {
    const a = Effect.runSync(Sweep.load(quick))
    const b = Effect.runSync(Sweep.load(quick))
    expect(a.runs.map((r) => r.id)).toEqual(b.runs.map((r) => r.id))
    expect(new Set(a.runs.map((r) => r.id)).size).toBe(4)
    expect([...new Set(a.runs.map((r) => r.arm))]).toEqual(["final", "ris"])
    expect(a.runs.map((r) => r.seed)).toEqual([1, 2, 1, 2])
    for (const r of a.runs) expect(r.id).toMatch(new RegExp(`^${r.arm}-s${r.seed}-[0-9a-f]{10}$`))
    // the axes land in the resolved training configs
    const ris = a.runs.find((r) => r.arm === "ris")!.train as { regularizers: { randomStates?: unknown }; seed: number }
    const fin = a.runs.find((r) => r.arm === "final")!.train as { regularizers: { randomStates?: unknown } }
    expect(ris.regularizers.randomStates).toBeDefined()
    expect(fin.regularizers.randomStates).toBeUndefined()
  })

  it("the id hashes the resolved config: a changed setting changes it, the arm and seed alone do not decide it", () => {
    const base = JSON.parse(fs.readFileSync(quick, "utf8"))
    const same = Effect.runSync(Sweep.load(writeSweep("same", base)))
    const changed = Effect.runSync(Sweep.load(writeSweep("lr", { ...base, train: { lr: 0.001 } })))
    const original = Effect.runSync(Sweep.load(quick))
    expect(same.runs.map((r) => r.id)).toEqual(original.runs.map((r) => r.id))
    for (let i = 0; i < 4; i++) {
      expect(changed.runs[i]!.arm).toBe(original.runs[i]!.arm)
      expect(changed.runs[i]!.id).not.toBe(original.runs[i]!.id)
    }
  })

  it("an unknown axis is a ConfigError naming it and the valid axes", () => {
    const e = failure(Sweep.load(writeSweep("axis", { base: "smoke", axes: { optimizer: ["adam"] } })))
    expect(e).toBeInstanceOf(ConfigError)
    expect(e.path).toBe("axes.optimizer")
    expect(e.message).toContain("unknown axis \"optimizer\"")
    expect(e.message).toContain("readOut")
  })

  it("an unknown key, a bad axis value, an unknown train key and an unknown base are ConfigErrors naming them", () => {
    const key = failure(Sweep.load(writeSweep("key", { base: "smoke", axes: {}, seeds: [1] })))
    expect(key.path).toBe("seeds")
    const value = failure(Sweep.load(writeSweep("value", { base: "smoke", axes: { readOut: ["middle"] } })))
    expect(value.path).toMatch(/^axes\.readOut/)
    expect(value.message).toContain("\"final\" | \"ris\"")
    const train = failure(Sweep.load(writeSweep("train", { base: "smoke", train: { epocs: 3 }, axes: {} })))
    expect(train.path).toBe("train.epocs")
    const base = failure(Sweep.load(writeSweep("base", { base: "nope", axes: {} })))
    expect(base.path).toBe("base")
    expect(base.message).toContain("smoke")
    const missing = failure(Sweep.load(path.join(tmp, "absent.json")))
    expect(missing.message).toContain("does not exist")
  })

  it("both shipped sweeps decode; the ablation is method x read-out x 3 seeds", () => {
    const paper = Effect.runSync(Sweep.load(path.resolve("presets", "sweep-paper-ablation.json")))
    expect(paper.runs.length).toBe(12)
    expect(new Set(paper.runs.map((r) => r.arm)).size).toBe(4)
    const conv = Effect.runSync(Sweep.load(path.resolve("presets", "sweep-paper-conv.json")))
    expect(conv.runs.length).toBe(12)
    expect([...new Set(conv.runs.map((r) => r.arm))]).toEqual(["pgd-at, final", "pgd-at, ris", "trades, final", "trades, ris"])
    expect(conv.runs.every((r) => (r.train as { model: { _tag: string } }).model._tag === "conv")).toBe(true)
    // each state's worst case over the eval's AutoAttack budgets; sweeps that do not ask keep their run ids
    expect(conv.runs.every((r) => JSON.stringify(r.dynamics.worstCase) === JSON.stringify({ apgdSteps: 10, targets: 2, squareQueries: 100 }))).toBe(true)
    expect(paper.runs.every((r) => r.dynamics.worstCase === undefined && !("worstCase" in r.dynamics))).toBe(true)
  })

  it("runs are submitted seed by seed, so a sweep cut short has every arm", () => {
    const conv = Effect.runSync(Sweep.load(path.resolve("presets", "sweep-paper-conv.json")))
    const order = submissionOrder(conv.runs)
    expect(order.map((r) => r.seed)).toEqual([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    expect(order.slice(0, 4).map((r) => r.arm)).toEqual(["pgd-at, final", "pgd-at, ris", "trades, final", "trades, ris"])
    expect(new Set(order.map((r) => r.id))).toEqual(new Set(conv.runs.map((r) => r.id)))
  })

  it("the tail axis sets k of the unrolled tail; the FC tail sweep is read-out x k x 2 seeds", () => {
    const tail = Effect.runSync(Sweep.load(path.resolve("presets", "sweep-fc-tail.json")))
    expect(tail.runs.length).toBe(8)
    expect([...new Set(tail.runs.map((r) => r.arm))]).toEqual(["final, tail k 0", "final, tail k 5", "ris, tail k 0", "ris, tail k 5"])
    const ks = tail.runs.map((r) => (r.train as { gradient: { _tag: string; k: number; lambda: number } }).gradient)
    expect(ks.map((g) => g.k)).toEqual([0, 0, 5, 5, 0, 0, 5, 5])
    expect(ks.every((g) => g._tag === "unroll" && g.lambda === 0.5)).toBe(true)
  })
})

describe("SQLite SqlClient (embedded storage)", () => {
  it("binds parameters and booleans, returns rows, rolls a failed transaction back", async () => {
    const file = path.join(tmp, "t.db")
    const program = Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, flag INTEGER)`
      yield* sql`INSERT INTO t ${sql.insert({ id: 1, name: "a", flag: true })}`
      yield* sql`INSERT INTO t (id, name, flag) VALUES (${2}, ${"b"}, ${false})`
      const failed = yield* sql.withTransaction(Effect.andThen(sql`INSERT INTO t (id, name) VALUES (3, 'c')`, Effect.fail("boom"))).pipe(Effect.flip)
      const rows = yield* sql<{ id: number; name: string; flag: number }>`SELECT * FROM t ORDER BY id`
      const values = yield* sql`SELECT name FROM t ORDER BY id`.values
      return { failed, rows, values }
    })
    const r = await Effect.runPromise(program.pipe(Effect.provide(Sqlite.layer(file))))
    expect(r.failed).toBe("boom")
    expect(r.rows).toEqual([{ id: 1, name: "a", flag: 1 }, { id: 2, name: "b", flag: 0 }])
    expect(r.values).toEqual([["a"], ["b"]])
    expect(fs.existsSync(file)).toBe(true)
  })
})

describe("results", () => {
  const result = (clean: number, robust: number, samples = 32) => ({ cleanAccuracy: clean, robustAccuracy: robust, samples })

  it("robustOf reads the evaluation's per-sample worst case, not the lowest row", () => {
    // per sample, the worst case can be below every single row (different attacks break different images)
    const report = {
      evaluation: {
        undefended: result(0.9, 0.25, 1000),
        rows: [
          { defence: "none", headline: true, result: result(0.9, 0.25, 1000) },
          { defence: "none", role: "white-box", result: result(0.9, 0.5, 1000) },
          { defence: "none", role: "white-box", result: result(0.9, 0.3, 1000) },
          { defence: "entropy reduction", result: result(0.9, 0.1, 200) }
        ]
      }
    }
    expect(Sweep.robustOf(report)).toEqual({ clean: 0.9, robust: 0.25, samples: 1000 })
    // without `undefended` (an older report) the undefended worst-case row; neither: NaN, never a single attack
    const { undefended: _, ...older } = report.evaluation
    expect(Sweep.robustOf({ evaluation: older })).toEqual({ clean: 0.9, robust: 0.25, samples: 1000 })
    const none = Sweep.robustOf({ evaluation: { rows: [{ defence: "none", result: result(0.9, 0.5) }] } })
    expect(Number.isNaN(none.robust)).toBe(true)
    expect(none.samples).toBe(0)
  })

  it("defenceOf reads the transfer row, the defended worst case and the undefended worst case on the same images", () => {
    const report = {
      evaluation: {
        defended: result(0.88, 0.4, 200),
        rows: [
          { defence: "entropy reduction", role: "transfer", protocol: "paper", result: result(0.88, 0.63, 200) },
          { defence: "entropy reduction", role: "adaptive", protocol: "adaptive: BPDA", result: result(0.88, 0.45, 200) },
          { defence: "none", protocol: "same 200 images: undefended worst case", result: result(0.9, 0.55, 200) }
        ]
      }
    }
    expect(defenceOf(report)).toEqual({ transfer: 0.63, worst: 0.4, undefended: 0.55, samples: 200 })
    expect(defenceOf({ evaluation: { rows: [] } })).toBeUndefined()
    expect(defenceOf(undefined)).toBeUndefined()
  })

  it("summarize gives mean +- sample sd per arm and per state; the plot has one band per arm and measure", () => {
    const sweep = Effect.runSync(Sweep.load(quick))
    const results = sweep.runs.map((run, i) => ({
      id: run.id, arm: run.arm, seed: run.seed, clean: 0.5 + 0.1 * i, robust: 0.2 + 0.1 * i, samples: 32, axes: run.axes,
      states: [1, 2].map((n) => ({ n, cleanAccuracy: 0.1 * n + 0.1 * i, robustAccuracy: 0.05 * n, cleanEntropy: 1 / n, robustEntropy: 2 / n }))
    }))
    const arms = Sweep.summarize(sweep, results)
    expect(arms.map((a) => a.arm)).toEqual(["final", "ris"])
    expect(arms[0]!.clean.mean).toBeCloseTo(0.55, 12)
    expect(arms[0]!.clean.sd).toBeCloseTo(Math.SQRT1_2 * 0.1, 12)
    expect(arms[1]!.states[1]!.cleanAccuracy.mean).toBeCloseTo(0.45, 12)
    const p = plots(arms)
    expect(p.accuracy.series.map((s) => s.name)).toEqual(["final (clean)", "ris (clean)", "final (robust)", "ris (robust)"])
    expect(p.accuracy.series[0]!.band).toEqual([[1, 0.15 - Math.SQRT1_2 * 0.1, 0.15 + Math.SQRT1_2 * 0.1], [2, 0.25 - Math.SQRT1_2 * 0.1, 0.25 + Math.SQRT1_2 * 0.1]].map(([n, lo, hi]) => [n, expect.closeTo(lo!, 12), expect.closeTo(hi!, 12)]))
  })

  it("per-state attack columns: each attack's mean over seeds beside the worst case, in the summary's state table", () => {
    const sweep = Effect.runSync(Sweep.load(quick))
    const results = sweep.runs.map((run, i) => ({
      id: run.id, arm: run.arm, seed: run.seed, clean: 0.5, robust: 0.2, samples: 32, axes: run.axes,
      states: [1, 2].map((n) => ({
        n, cleanAccuracy: 0.9, robustAccuracy: 0.1 * n, cleanEntropy: 1, robustEntropy: 2,
        attacks: { pgd: 0.1 * n + 0.02 * i, square: 0.5 }
      }))
    }))
    const arms = Sweep.summarize(sweep, results)
    // runs 0 and 1 are the "final" arm: pgd at n = 2 is 0.2 and 0.22
    expect(arms[0]!.states[1]!.attacks!.pgd!.mean).toBeCloseTo(0.21, 12)
    expect(arms[0]!.states[1]!.attacks!.square!.sd).toBe(0)
    const table = stateTable(arms)
    expect(table.split("\n")[0]).toBe("| arm | state n | clean acc. % | robust acc. % (worst case) | pgd % | square % | entropy (clean) | entropy (adv.) |")
    expect(table).toContain("| final | 2 | 90.0 ± 0.0 (2) | 20.0 ± 0.0 (2) | 21.0 ± 1.4 (2) | 50.0 ± 0.0 (2) |")
    const plain = stateTable(Sweep.summarize(sweep, results.map((r) => ({ ...r, states: r.states.map(({ attacks: _, ...s }) => s) }))))
    expect(plain.split("\n")[0]).toBe("| arm | state n | clean acc. % | robust acc. % | entropy (clean) | entropy (adv.) |")
  })

  it("a plot with bands renders to SVG with a shaded area per series", async () => {
    const svg = await Effect.runPromise(Report.renderSvg({
      title: "t", x: "n", y: "acc", series: [{ name: "a", points: [[1, 0.5], [2, 0.6]], band: [[1, 0.4, 0.6], [2, 0.5, 0.7]] }]
    }))
    expect(svg).toContain("<svg")
    expect(svg).toMatch(/class="mark-area/)
    expect(svg).toMatch(/class="mark-line/)
  })

  it("meanSd of one value has sd 0; of none is NaN", () => {
    expect(Sweep.meanSd([0.4])).toEqual({ mean: 0.4, sd: 0, n: 1 })
    expect(Number.isNaN(Sweep.meanSd([]).mean)).toBe(true)
  })
})

describe("verdicts", () => {
  const head = { claim: "b", scope: "s", measure: "m" }

  it("supported only when the difference exceeds twice the larger sd over seeds", () => {
    // means 0.6 and 0.5, sds 0.01 and 0.02: difference 0.1 > 2 x 0.02
    const yes = decide(head, [0.59, 0.6, 0.61], [0.48, 0.5, 0.52])
    expect(yes.outcome).toBe("supported")
    expect(yes.difference).toBeCloseTo(0.1, 12)
    expect(yes.sd).toBeCloseTo(0.02, 12)
    expect(yes.higher).toEqual({ mean: expect.closeTo(0.6, 12), sd: expect.closeTo(0.01, 12), n: 3 })
    // the same means with a noisy side: 0.1 < 2 x 0.1
    const noisy = decide(head, [0.5, 0.6, 0.7], [0.48, 0.5, 0.52], "the mechanism check found nothing to regulate")
    expect(noisy.outcome).toBe("not supported at this scale")
    expect(noisy.reason).toBe("the difference is within twice the seeds' sd (3 and 3 seeds); the mechanism check found nothing to regulate")
    // exactly twice the sd is not enough
    expect(decide(head, [0.7, 0.7], [0.58, 0.62]).outcome).toBe("supported")
    expect(decide(head, [0.64, 0.64], [0.58, 0.62]).outcome).toBe("not supported at this scale")
    // the wrong direction, one seed, nothing
    expect(decide(head, [0.4, 0.41], [0.5, 0.51]).reason).toBe("the difference has the opposite sign")
    expect(decide(head, [0.9], [0.1]).reason).toBe("only 1 seed (no sd over seeds)")
    expect(decide(head, [], [0.1]).outcome).toBe("not measured")
    // a side with no run is not measured, whatever the caller knows about the cause of a null result
    expect(decide(head, [], [0.1], "the mechanism could act").reason).toBe("no finished run measured one side")
  })

  it("verdicts computes (a) within the final-state arms, (b) ris vs final, (c) from defence reports", () => {
    const states = (robust: ReadonlyArray<number>, entropy: ReadonlyArray<number>) =>
      robust.map((r, i) => ({ n: i + 1, cleanAccuracy: 0.9, robustAccuracy: r, cleanEntropy: entropy[i]!, robustEntropy: 1 }))
    const run = (readOut: string, seed: number, robust: number, s: RunResult["states"], extra: Partial<RunResult> = {}): RunResult => ({
      id: `${readOut}-${seed}`, arm: `pgd-at, ${readOut}`, seed, clean: 0.9, robust, samples: 1000, states: s,
      axes: { method: "pgd-at", readOut, seed }, mechanism: { idle: readOut === "final", minAgreement: 0.97, residual: 0.2 }, ...extra
    })
    const defence = { transfer: 0.7, worst: 0.5, undefended: 0.55, samples: 200 }
    const runs = [
      // intermediate states 0.2 / 0.3 below z_N's 0.5, 0.52, 0.51; entropy 1.0 / 0.9 above z_N's 0.5
      run("final", 1, 0.40, states([0.2, 0.3, 0.5], [1, 0.9, 0.5]), { defence }),
      run("final", 2, 0.41, states([0.22, 0.32, 0.52], [1.01, 0.91, 0.5]), { defence: { ...defence, transfer: 0.71, worst: 0.49 } }),
      run("final", 3, 0.42, states([0.21, 0.31, 0.51], [1.02, 0.92, 0.51]), { defence: { ...defence, transfer: 0.72, worst: 0.51 } }),
      run("ris", 1, 0.40, states([0.4, 0.45, 0.5], [0.5, 0.5, 0.5])),
      run("ris", 2, 0.45, states([0.4, 0.45, 0.5], [0.5, 0.5, 0.5])),
      run("ris", 3, 0.50, states([0.4, 0.45, 0.5], [0.5, 0.5, 0.5]))
    ]
    const vs = verdicts(runs)
    const find = (claim: string, measure: string, scope?: string) =>
      vs.find((v) => v.claim === claim && v.measure.includes(measure) && (scope === undefined || v.scope === scope))!
    const robust = find("a", "robust")
    expect(robust.scope).toBe("pgd-at, final state")
    expect(robust.difference).toBeCloseTo(0.51 - 0.26, 12)
    expect(robust.outcome).toBe("supported")
    expect(find("a", "entropy").difference).toBeCloseTo(0.96 - (0.5 + 0.5 + 0.51) / 3, 12)
    expect(find("a", "entropy").outcome).toBe("supported")
    const b = find("b", "worst-case")
    expect(b.difference).toBeCloseTo(0.45 - 0.41, 12)
    expect(b.outcome).toBe("not supported at this scale")
    expect(b.reason).toContain("nothing to regulate in 3 of 6 runs")
    expect(b.reason).not.toContain("did not learn")
    // runs near chance are named as the likely reason
    const chance = verdicts(runs.map((r) => (r.arm === "pgd-at, ris" ? { ...r, clean: 0.1 } : r)))
    expect(chance.find((v) => v.claim === "b")!.reason).toContain("3 of 6 runs did not learn (clean accuracy below 20.0%: 10.0%, 10.0%, 10.0%)")
    // (c): transfer 0.71 vs 0.55 on the same images; (c'): the worst case 0.50 vs 0.55, the wrong way
    expect(find("c", "transfer", "pgd-at, final").outcome).toBe("supported")
    expect(find("c'", "adaptive", "pgd-at, final").reason).toBe("the difference has the opposite sign")
    // the ris arm has no defence report: measured nowhere, and the table says how to measure it
    const missing = find("c", "transfer", "pgd-at, ris")
    expect(missing.outcome).toBe("not measured")
    expect(missing.reason).toContain("deq eval --defence entropy")
    const table = verdictTable(vs)
    expect(table).toContain("| a | pgd-at, final state | robust accuracy: z_N vs mean of z_1..z_(N-1) | 51.0 ± 1.0 (3) | 26.0 ± 1.0 (3) | 25.0 pt | 2.0 pt | **supported** | - |")
  })
})

describe("live table", () => {
  const sweep = Effect.runSync(Sweep.load(quick))
  const rows: Array<RunStatus> = [
    { id: sweep.runs[0]!.id, state: "done", detail: "done" },
    { id: sweep.runs[1]!.id, state: "running", detail: "train epoch 2/2 (75%)", eta: 10, runner: "a:1" },
    { id: sweep.runs[2]!.id, state: "running", detail: "evaluate", runner: "b:2" },
    { id: sweep.runs[3]!.id, state: "queued", detail: "waiting for a runner" }
  ]

  it("counts states; the sweep ETA spreads the remaining work over the runners at work", () => {
    expect(counts(rows)).toEqual({ queued: 1, running: 2, done: 1, failed: 0 })
    // running: 10 s + (no ETA: the mean run) 30 s, queued: 30 s; two runners
    expect(sweepEta(rows, 30)).toBe(35)
    expect(sweepEta(rows, undefined)).toBeUndefined()
    const text = tableText(sweep, rows, 35)
    expect(text.split("\n")[0]).toBe("sweep sweep-quick: 1 queued, 2 running, 1 done, 0 failed; ETA 35s")
    expect(text).toContain(`| ${sweep.runs[1]!.id} | final | running | train epoch 2/2 (75%) | 10s | a:1 |`)
  })

  it("off a terminal it prints the table when a state changes, not on every poll", () => {
    const written: Array<string> = []
    const display = makeDisplay({ isTTY: false, write: (s) => written.push(s) })
    display.show(sweep, rows, 35)
    display.show(sweep, rows.map((r) => (r.state === "running" ? { ...r, detail: r.detail + "." } : r)), 30)
    expect(written.length).toBe(1)
    display.show(sweep, rows.map((r) => (r.state === "queued" ? { ...r, state: "running" as const } : r)), 20)
    expect(written.length).toBe(2)
    const tty: Array<string> = []
    const live = makeDisplay({ isTTY: true, write: (s) => tty.push(s) })
    live.show(sweep, rows, 35)
    live.show(sweep, rows, 35)
    // the second frame moves the cursor up over the first (7 lines: head, header, rule, 4 runs) and redraws
    expect(tty[1]!.startsWith("\x1b[7F\x1b[J")).toBe(true)
  })
})
