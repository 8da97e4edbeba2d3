/**
 * Report: plots are well-formed SVG whose line marks are exactly the expected series (with the expected number of
 * points), log-scale plots drop non-positive values, tables escape pipes, and atomic writes leave no temporary
 * files behind (also when the write fails).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Report from "../src/Report.ts"

/** A small XML well-formedness check: one root <svg>, every opened tag closed in order. */
const checkWellFormed = (svg: string): void => {
  expect(svg.startsWith("<svg")).toBe(true)
  expect(svg.trimEnd().endsWith("</svg>")).toBe(true)
  const stack: Array<string> = []
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"]*")*)\s*(\/?)>/g
  let consumed = 0
  for (const m of svg.matchAll(tag)) {
    // nothing but text between tags: no stray "<"
    expect(svg.slice(consumed, m.index).includes("<")).toBe(false)
    consumed = m.index + m[0].length
    const [, close, name, , self] = m
    if (self === "/") continue
    if (close === "/") expect(stack.pop()).toBe(name)
    else stack.push(name!)
  }
  expect(svg.slice(consumed).trim()).toBe("")
  expect(stack).toEqual([])
}

/** The series of a rendered line plot, from the aria labels vega gives each line mark, with point counts. */
const linesOf = (svg: string): Map<string, number> => {
  const lines = new Map<string, number>()
  for (const m of svg.matchAll(/<path aria-label="[^"]*series: ([^"]*)" role="graphics-symbol" aria-roledescription="line mark" d="([^"]*)"/g)) {
    const points = (m[2]!.match(/[ML]/g) ?? []).length
    lines.set(m[1]!, points)
  }
  return lines
}

const rows: ReadonlyArray<Report.StateRow> = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => ({
  n,
  cleanAccuracy: 0.6 + n / 40,
  robustAccuracy: 0.1 + n / 50,
  cleanEntropy: 2 / n,
  robustEntropy: 2.2 / n,
  relResidual: 10 ** -n,
  robustRelResidual: 2 * 10 ** -n
}))

describe("Report plots", () => {
  it.effect("dynamics plots are valid SVG with one line per expected series", () =>
    Effect.gen(function*() {
      const plots = Report.dynamicsPlots([{ name: "pgd-at", rows }], { attack: "PGD-10" })
      for (const plot of [plots.entropy, plots.accuracy, plots.residual]) {
        const svg = yield* Report.renderSvg(plot)
        checkWellFormed(svg)
        expect(svg).toContain(plot.title)
        expect(linesOf(svg)).toEqual(new Map([["clean inputs", 8], ["adversarial inputs", 8]]))
      }
    }))

  it.effect("several runs share a plot with prefixed series; missing robust values are omitted", () =>
    Effect.gen(function*() {
      const plain = rows.map(({ robustAccuracy: _a, robustEntropy: _e, robustRelResidual: _r, ...r }) => r)
      const plots = Report.dynamicsPlots([{ name: "AT", rows }, { name: "standard", rows: plain }])
      const svg = yield* Report.renderSvg(plots.accuracy)
      checkWellFormed(svg)
      expect([...linesOf(svg).keys()].sort()).toEqual(["AT: adversarial inputs", "AT: clean inputs", "standard: clean inputs"])
    }))

  it.effect("a log-scale plot drops non-positive and non-finite points", () =>
    Effect.gen(function*() {
      const svg = yield* Report.renderSvg({
        title: "residual",
        x: "step",
        y: "r",
        yScale: "log",
        series: [{ name: "s", points: [[1, 1e-1], [2, 0], [3, Number.NaN], [4, 1e-3]] }]
      })
      checkWellFormed(svg)
      expect(linesOf(svg)).toEqual(new Map([["s", 2]]))
    }))

  it("tables escape pipes and print missing cells as '-'", () => {
    const t = Report.table(["a|b", "c"], [["x|y", undefined], [1, Number.NaN]])
    expect(t.split("\n")).toEqual(["| a\\|b | c |", "|---|---|", "| x\\|y | - |", "| 1 | - |"])
    expect(Report.pct(0.8766)).toBe("87.7")
    expect(Report.duration(125_000)).toBe("2m 05s")
  })

  it("percentages and durations have one formatter each: cells, running text and compact progress forms", () => {
    expect(Report.pct(0.5, 0)).toBe("50")
    expect(Report.percent(0.8766)).toBe("87.7%")
    expect(Report.percent(undefined)).toBe("-")
    expect(Report.percent(0.05, 0).padStart(4)).toBe("  5%")
    expect(Report.duration(850)).toBe("850 ms")
    expect(Report.duration(42_400, { compact: true })).toBe("42s")
    expect(Report.duration(185_000, { compact: true })).toBe("3m05s")
    expect(Report.duration(3_725_000, { compact: true })).toBe("1h02m")
    expect(Report.duration(Number.NaN)).toBe("?")
    expect(Report.duration(-1, { compact: true })).toBe("?")
  })

  it("series keeps the rows where y is defined, in order", () => {
    const rows = [{ e: 1, v: 0.5 }, { e: 2 }, { e: 3, v: 0.75 }] as ReadonlyArray<{ e: number; v?: number }>
    expect(Report.series("s", rows, (r) => r.e, (r) => r.v)).toEqual({ name: "s", points: [[1, 0.5], [3, 0.75]] })
  })
})

describe("Report atomic writes", () => {
  const dir = () => fs.mkdtempSync(path.join(os.tmpdir(), "deq-report-"))

  it.effect("writeReport writes report.md, report.json and the plots, and leaves no temporary files", () =>
    Effect.gen(function*() {
      const d = dir()
      const plots = Report.dynamicsPlots([{ name: "m", rows }])
      yield* Report.writeReport(d, {
        markdown: Report.document("t", [{ title: "s", body: Report.dynamicsTable(rows) }]),
        json: { rows, residual: new Float32Array([1, Number.POSITIVE_INFINITY]) },
        plots: { "entropy.svg": plots.entropy }
      })
      // rewriting replaces the content atomically
      yield* Report.writeText(path.join(d, "report.md"), "second\n")
      expect(fs.readdirSync(d).sort()).toEqual(["entropy.svg", "report.json", "report.md"])
      expect(fs.readFileSync(path.join(d, "report.md"), "utf8")).toBe("second\n")
      const json = JSON.parse(fs.readFileSync(path.join(d, "report.json"), "utf8"))
      expect(json.residual).toEqual([1, null])
      expect(json.rows).toHaveLength(8)
    }))

  it.effect("a failed write leaves the old file and no temporary file", () =>
    Effect.gen(function*() {
      const d = dir()
      const target = path.join(d, "report.md")
      fs.writeFileSync(target, "old\n")
      // the rename fails: the target is replaced by a non-empty directory of the same name
      const blocked = path.join(d, "blocked")
      fs.mkdirSync(path.join(blocked, "inside"), { recursive: true })
      const exit = yield* Effect.exit(Report.writeText(blocked, "new"))
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) expect(String(exit.cause)).toContain("ReportError")
      expect(fs.readdirSync(d).sort()).toEqual(["blocked", "report.md"])
      expect(fs.readFileSync(target, "utf8")).toBe("old\n")
    }))
})
