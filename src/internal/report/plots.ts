/**
 * The Vega-Lite specs behind Report's line plots, made for a paper draft: a fixed colour per series name (the
 * same series has the same colour in every figure), legend and axis labels never truncated, percent axes for
 * accuracies, log axes labelled at powers of ten ("1e-6", not "0.000001"), an optional right axis (the loss of
 * the training plot) and a subtitle (model, data, n, seed).
 *
 * @internal
 */
import type * as vegaLite from "vega-lite"
import type { LinePlot, Series } from "../../Report.ts"

/** The colours of the series every report draws, by name (Tableau 10). */
export const seriesColours: Readonly<Record<string, string>> = {
  "clean inputs": "#4c78a8",
  "held-out clean": "#4c78a8",
  "adversarial inputs": "#e45756",
  "held-out PGD": "#e45756",
  "train (adv.)": "#f58518",
  "loss": "#54a24b"
}

/** Colours for other series, in order of appearance (Tableau 10 without the reserved ones first). */
const palette = ["#72b7b2", "#b279a2", "#9d755d", "#eeca3b", "#ff9da6", "#bab0ac", "#4c78a8", "#e45756", "#f58518", "#54a24b"]

/** The colour of every series of a plot: the fixed one for a known name, else the next unused palette colour. */
export const coloursOf = (names: ReadonlyArray<string>): Array<string> => {
  const taken = new Set(names.map((n) => seriesColours[n]).filter((c): c is string => c !== undefined))
  const free = [...palette.filter((c) => !taken.has(c)), ...palette]
  let next = 0
  return names.map((n) => seriesColours[n] ?? free[next++ % free.length]!)
}

/**
 * Tick values of a log axis over [lo, hi]: the powers of ten when the data spans at least two decades (every
 * other one past eight), else 1-2-5 steps, so every label is short and exact.
 */
export const logTicks = (lo: number, hi: number): Array<number> => {
  if (!(lo > 0) || !(hi >= lo)) return []
  const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi))
  if (b - a >= 2) {
    const every = b - a > 8 ? 2 : 1
    const ticks: Array<number> = []
    for (let e = b; e >= a; e -= every) ticks.unshift(Number(`1e${e}`))
    return ticks
  }
  const ticks: Array<number> = []
  for (let e = a; e <= b; e++) {
    for (const m of [1, 2, 5]) {
      const v = Number(`${m}e${e}`)
      if (v >= lo / 1.0001 && v <= hi * 1.0001) ticks.push(v)
    }
  }
  return ticks
}

/** A log tick's label: "1e-6" for a power of ten, else the shortest decimal ("0.02"). */
const logLabel = "abs(log(datum.value) / LN10 - round(log(datum.value) / LN10)) < 1e-9 ? " +
  "'1e' + round(log(datum.value) / LN10) : format(datum.value, '~g')"

/** The finite points of a series (positive only on a log axis), as data rows. */
const rowsOf = (series: ReadonlyArray<Series>, log: boolean) =>
  series.flatMap((s) =>
    s.points
      .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!log || y > 0))
      .map(([x, y]) => ({ x, y, series: s.name }))
  )

const bandsOf = (series: ReadonlyArray<Series>) =>
  series.flatMap((s) =>
    (s.band ?? []).filter((b) => b.every(Number.isFinite)).map(([x, lo, hi]) => ({ x, lo, hi, series: s.name }))
  )

/** The y encoding of one axis: title, scale (linear or log, domain), ticks and their format. */
const yAxis = (
  title: string,
  o: { readonly yScale?: "linear" | "log"; readonly yDomain?: readonly [number, number]; readonly yFormat?: "percent" },
  values: ReadonlyArray<{ readonly y: number }>,
  orient: "left" | "right"
) => {
  const log = o.yScale === "log"
  const ys = values.map((v) => v.y)
  const ticks = log && ys.length > 0 ? logTicks(Math.min(...ys), Math.max(...ys)) : []
  return {
    field: "y",
    type: "quantitative",
    title,
    scale: {
      type: log ? "log" : "linear",
      ...(o.yDomain !== undefined ? { domain: [...o.yDomain] } : log ? {} : { zero: false })
    },
    axis: {
      orient,
      titleLimit: 0,
      labelLimit: 0,
      ...(o.yFormat === "percent" ? { format: ".0%" } : {}),
      ...(log && ticks.length > 0 ? { values: ticks, labelExpr: logLabel } : {})
    }
  }
}

/**
 * The Vega-Lite spec of a line plot: a line with points per series coloured by the fixed map, a dashed line per
 * series of the right axis, shaded bands where a series has one, the legend at the bottom in as many columns as
 * its longest label allows.
 */
export const spec = (plot: LinePlot): vegaLite.TopLevelSpec => {
  const width = plot.width ?? 420
  const right = plot.right
  const names = [...plot.series, ...(right?.series ?? [])].map((s) => s.name)
  const longest = Math.max(8, ...names.map((n) => n.length))
  const color = {
    field: "series",
    type: "nominal",
    title: null,
    scale: { domain: names, range: coloursOf(names) },
    legend: {
      orient: "bottom",
      labelLimit: 0,
      columns: Math.max(1, Math.min(3, names.length, Math.floor(width / (7 * longest + 40))))
    }
  }
  const x = {
    field: "x",
    type: "quantitative",
    title: plot.x,
    scale: { zero: false },
    axis: { titleLimit: 0, ...(plot.xInteger === true ? { tickMinStep: 1, format: "d" } : {}) }
  }
  const left = rowsOf(plot.series, plot.yScale === "log")
  const line = {
    data: { values: left },
    mark: { type: "line", point: true, strokeWidth: 2 },
    encoding: { x, y: yAxis(plot.y, plot, left, "left"), color }
  }
  const bands = bandsOf(plot.series)
  // a band shares its line's y scale: both sit in one layer, apart from the right axis's own scale
  const main = bands.length === 0 ? line : {
    layer: [{
      data: { values: bands },
      mark: { type: "area", opacity: 0.2 },
      encoding: { x, y: { ...yAxis(plot.y, plot, left, "left"), field: "lo" }, y2: { field: "hi" }, color }
    }, line]
  }
  const layers: Array<Record<string, unknown>> = [main]
  if (right !== undefined) {
    const values = rowsOf(right.series, right.yScale === "log")
    layers.push({
      data: { values },
      mark: { type: "line", point: true, strokeWidth: 2, strokeDash: [6, 3] },
      encoding: { x, y: yAxis(right.y, right, values, "right"), color }
    })
  }
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: {
      text: plot.title,
      ...(plot.subtitle !== undefined ? { subtitle: plot.subtitle, subtitleColor: "#555", subtitleFontSize: 11 } : {}),
      limit: 0
    },
    width,
    height: plot.height ?? 260,
    background: "white",
    layer: layers,
    ...(right !== undefined ? { resolve: { scale: { y: "independent" } } } : {})
  } as unknown as vegaLite.TopLevelSpec
}
