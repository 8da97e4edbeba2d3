/**
 * The figures are ready for a paper draft: the SVG text holds every label in full (no "…" from a label limit),
 * accuracies are labelled in percent, log axes at powers of ten, every figure has a subtitle, each series keeps
 * one colour in every figure, the training figure has its loss curve. Rendered to PNG by headless Chromium: no
 * text lies outside the picture, the PNG has the SVG's size, and the lines show in their colours. Without
 * /usr/bin/chromium the rendering checks print one line saying so (the SVG checks still run).
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { trainingPlot } from "../src/internal/cli/reports.ts"
import * as Report from "../src/Report.ts"

// page.evaluate's callbacks run in the browser (this project compiles without the DOM library)
declare const document: any
declare const Image: any

const chromiumPath = "/usr/bin/chromium"
const skip = fs.existsSync(chromiumPath) ? undefined : `${chromiumPath} is not installed (apt-get install chromium; .ci/run does it)`
if (skip !== undefined) console.log(`Plots: PNG rendering checks skipped: ${skip}`)

const rows: ReadonlyArray<Report.StateRow> = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => ({
  n,
  cleanAccuracy: 0.6 + n / 40,
  robustAccuracy: 0.1 + n / 50,
  cleanEntropy: 2 / n,
  robustEntropy: 2.2 / n,
  relResidual: 10 ** -n,
  robustRelResidual: 2 * 10 ** -n
}))
const subtitle = Report.subtitle({ model: "FC DEQ, 26,538 parameters", data: "mnist", n: "500 test images", seed: 42 })
// the longest attack description the CLI writes (the legend label the issue found cut: "robust (PGD-10 (ep...")
const attack = "PGD-10 (eps 0.1) through Munroll-7-5"
const dynamics = Report.dynamicsPlots([{ name: "model", rows }], { attack, subtitle })
const training = trainingPlot(
  [1, 2, 3, 4, 5].map((epoch) => ({ epoch, loss: 2 / epoch, accuracy: 0.5, advAccuracy: 0.2 + epoch / 20, clean: 0.7 + epoch / 50, robust: 0.4 + epoch / 30, seconds: 10 })),
  Report.subtitle({ model: "FC DEQ, 26,538 parameters", data: "mnist, 10000 training images", seed: 42 })
)
const figures = { entropy: dynamics.entropy, accuracy: dynamics.accuracy, residual: dynamics.residual, training }
const svgs: Record<string, string> = {}

const unescape = (s: string): string => s.replaceAll("&amp;", "&").replaceAll("&gt;", ">").replaceAll("&lt;", "<")

/** The text of every <text> element of an SVG (vega writes one per label; a multi-line one has a tspan per line). */
const texts = (svg: string): Array<string> =>
  [...svg.matchAll(/<text[^>]*>(.*?)<\/text>/g)].flatMap((m) =>
    m[1]!.includes("<tspan") ? [...m[1]!.matchAll(/<tspan[^>]*>([^<]*)<\/tspan>/g)].map((t) => unescape(t[1]!)) : [unescape(m[1]!)]
  )

/** The stroke colour and dash of each line mark, by series name (vega's aria labels name the series). */
const lines = (svg: string): Map<string, { stroke: string; dashed: boolean }> => {
  const out = new Map<string, { stroke: string; dashed: boolean }>()
  for (const m of svg.matchAll(/<path aria-label="[^"]*series: ([^"]*)" role="graphics-symbol" aria-roledescription="line mark"[^>]*>/g)) {
    const stroke = /stroke="([^"]+)"/.exec(m[0])?.[1] ?? ""
    out.set(m[1]!, { stroke, dashed: m[0].includes("stroke-dasharray") })
  }
  return out
}

const size = (svg: string) => ({ width: Number(/width="(\d+)"/.exec(svg)![1]), height: Number(/height="(\d+)"/.exec(svg)![1]) })

beforeAll(async () => {
  for (const [name, plot] of Object.entries(figures)) svgs[name] = await Effect.runPromise(Report.renderSvg(plot))
})

describe("figures (SVG text)", () => {
  it("every label is there in full: titles, subtitles, axis titles, legend names; nothing truncated", () => {
    for (const [name, plot] of Object.entries(figures)) {
      const t = texts(svgs[name]!)
      expect(t.some((s) => s.includes("…")), name).toBe(false)
      expect(t, name).toContain(plot.title)
      expect(t, name).toContain(plot.x)
      expect(t, name).toContain(plot.y)
      for (const s of [...plot.series, ...(plot.right?.series ?? [])]) expect(t, `${name}: ${s.name}`).toContain(s.name)
      expect(t.some((s) => s.includes("seed 42")), `${name} has no subtitle`).toBe(true)
    }
    expect(texts(svgs["accuracy"]!)).toContain(`adversarial inputs: ${attack}`)
  })

  it("the dynamics figures name their series for what they are: clean and adversarial inputs", () => {
    for (const name of ["entropy", "accuracy", "residual"]) {
      expect([...lines(svgs[name]!).keys()].sort()).toEqual(["adversarial inputs", "clean inputs"])
      expect(texts(svgs[name]!).some((s) => /^robust/.test(s))).toBe(false)
    }
  })

  it("accuracies are in percent, as the tables print them", () => {
    for (const name of ["accuracy", "training"]) {
      const t = texts(svgs[name]!)
      for (const tick of ["0%", "20%", "100%"]) expect(t, name).toContain(tick)
    }
    // the accuracy axis has no fractions (the training figure's right axis is the loss)
    expect(texts(svgs["accuracy"]!).some((s) => /^0\.\d$/.test(s))).toBe(false)
  })

  it("log ticks are powers of ten written short (1e-6), never 0.000001", () => {
    const t = texts(svgs["residual"]!)
    const ticks = t.filter((s) => /^1e-?\d+$/.test(s))
    expect(ticks).toEqual(expect.arrayContaining(["1e-1", "1e-4", "1e-8"]))
    expect(t.some((s) => /0\.0000/.test(s))).toBe(false)
    expect(Report.vegaLiteSpec({ title: "t", x: "x", y: "y", yScale: "log", series: [] })).toBeDefined()
  })

  it("one colour per series in every figure; the training figure has its loss, dashed on the right axis", () => {
    const seen = new Map<string, string>()
    for (const name of Object.keys(figures)) {
      for (const [series, { stroke }] of lines(svgs[name]!)) {
        expect(stroke, `${name}: ${series}`).toBe(Report.seriesColours[series])
        if (seen.has(series)) expect(stroke).toBe(seen.get(series))
        seen.set(series, stroke)
      }
    }
    // clean is one colour, adversarial another, in the dynamics and the training figures alike
    expect(Report.seriesColours["clean inputs"]).toBe(Report.seriesColours["held-out clean"])
    expect(Report.seriesColours["adversarial inputs"]).toBe(Report.seriesColours["held-out PGD"])
    expect(Report.seriesColours["clean inputs"]).not.toBe(Report.seriesColours["adversarial inputs"])
    const loss = lines(svgs["training"]!).get("loss")
    expect(loss?.dashed).toBe(true)
    expect(texts(svgs["training"]!)).toContain("training loss (dashed)")
  })
})

describe.skipIf(skip !== undefined)("figures (rendered to PNG by headless Chromium)", () => {
  let browser: import("playwright-core").Browser | undefined
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "deq-plots-"))
  afterAll(async () => {
    await browser?.close()
    fs.rmSync(out, { recursive: true, force: true })
  })

  it("no text outside the picture, a PNG of the SVG's size, the lines visible in their colours", async () => {
    const { chromium } = await import("playwright-core")
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    })
    const page = await browser.newPage({ deviceScaleFactor: 1 })
    for (const [name, svg] of Object.entries(svgs)) {
      const { width, height } = size(svg)
      await page.setViewportSize({ width, height })
      await page.setContent(`<html><body style="margin:0">${svg}</body></html>`)
      // every text's box inside the SVG's box: nothing is cut at an edge
      const outside = await page.evaluate(() => {
        const root = document.querySelector("svg")!.getBoundingClientRect()
        return [...document.querySelectorAll("text")].filter((t) => t.textContent !== "").flatMap((t) => {
          const r = t.getBoundingClientRect()
          return r.left < root.left - 0.5 || r.top < root.top - 0.5 || r.right > root.right + 0.5 || r.bottom > root.bottom + 0.5
            ? [t.textContent]
            : []
        })
      })
      expect(outside, name).toEqual([])
      const file = path.join(out, `${name}.png`)
      const png = await page.screenshot({ path: file, clip: { x: 0, y: 0, width, height } })
      expect(png.subarray(1, 4).toString("latin1")).toBe("PNG")
      expect([png.readUInt32BE(16), png.readUInt32BE(20)]).toEqual([width, height])
      expect(png.length).toBeGreaterThan(5000)
      // the lines' colours are in the picture (a blank or black render has none of them)
      const colours = [...lines(svg).values()].map((l) => l.stroke)
      const found = await page.evaluate(async ({ svg, colours }) => {
        const image = new Image()
        image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg)
        await image.decode()
        const canvas = document.createElement("canvas")
        canvas.width = image.width
        canvas.height = image.height
        const ctx = canvas.getContext("2d")!
        ctx.drawImage(image, 0, 0)
        const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data
        const rgb = colours.map((c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)))
        const counts = rgb.map(() => 0)
        for (let p = 0; p < data.length; p += 4) {
          rgb.forEach(([r, g, b], k) => {
            if (Math.abs(data[p]! - r!) + Math.abs(data[p + 1]! - g!) + Math.abs(data[p + 2]! - b!) < 30) counts[k]!++
          })
        }
        return counts
      }, { svg, colours })
      for (const [k, n] of found.entries()) expect(n, `${name}: ${colours[k]}`).toBeGreaterThan(50)
    }
  }, 60_000)
})
