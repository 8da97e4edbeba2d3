/**
 * Reports: Markdown tables, JSON and SVG line plots, written atomically.
 *
 * Plots are Vega-Lite specs compiled to Vega and rendered headless with vega's `View.toSVG()` (renderer "none":
 * no browser, no canvas), drawn for a paper draft: one fixed colour per series name across every figure, labels
 * never truncated, percent axes for accuracies, log axes labelled at powers of ten, a subtitle for model, data, n
 * and seed. Every file is written to a temporary sibling and renamed into place, so a reader never
 * sees half a report and an interrupted write leaves nothing behind. This module knows results, not models: it
 * takes plain numbers (the CLI and the examples turn trajectories and evaluations into rows).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Report from "effect-deq/Report"
 *
 * const program = Effect.gen(function*() {
 *   const plot = Report.linePlot({
 *     title: "Entropy along the dynamics", x: "state n", y: "mean entropy",
 *     series: [{ name: "clean", points: [[1, 2.1], [2, 1.4], [3, 0.9]] }]
 *   })
 *   yield* Report.writeSvg("runs/demo/entropy.svg", plot)
 *   yield* Report.writeText("runs/demo/report.md", Report.table(["n", "H"], [[1, 2.1]]))
 * })
 * ```
 *
 * @since 0.1.0
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Schema } from "effect"
import { messageOf } from "./Errors.ts"
import * as plots from "./internal/report/plots.ts"
import * as vega from "vega"
import * as vegaLite from "vega-lite"

// ---------------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------------

/**
 * A report file could not be written or a plot could not be rendered; `path` names the file.
 *
 * @category errors
 */
export class ReportError extends Schema.TaggedError<ReportError>()("ReportError", {
  path: Schema.String,
  message: Schema.String
}) {}

// ---------------------------------------------------------------------------------------------------------------
// Atomic writes
// ---------------------------------------------------------------------------------------------------------------

/**
 * The temporary name a write goes through: a hidden sibling of the target (`.<name>.tmp-<pid>-<random>`).
 *
 * @category io
 */
export const tempNameFor = (file: string): string =>
  path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`)

/**
 * Writes `content` to `file` atomically: parent directories are created, the bytes go to a temporary sibling
 * which is flushed and renamed over the target. On failure (or interruption) the temporary file is removed and
 * the previous content of `file`, if any, is untouched.
 *
 * @category io
 */
export const writeText = (file: string, content: string | Uint8Array): Effect.Effect<void, ReportError> => {
  const target = path.resolve(file)
  const tmp = tempNameFor(target)
  const write = Effect.tryPromise({
    try: async () => {
      await fs.mkdir(path.dirname(target), { recursive: true })
      const fh = await fs.open(tmp, "wx")
      try {
        await fh.writeFile(content)
        await fh.sync()
      } finally {
        await fh.close()
      }
      await fs.rename(tmp, target)
    },
    catch: (e) => new ReportError({ path: target, message: `cannot write: ${messageOf(e)}` })
  })
  return write.pipe(Effect.onError(() => Effect.promise(() => fs.rm(tmp, { force: true }).catch(() => undefined))))
}

/**
 * Writes a value as pretty-printed JSON (atomically, see {@link writeText}). Non-finite numbers become null.
 *
 * @category io
 */
export const writeJson = (file: string, value: unknown): Effect.Effect<void, ReportError> =>
  Effect.suspend(() => writeText(file, toJson(value)))

/**
 * JSON text with a trailing newline; typed arrays become plain arrays and NaN / Infinity become null.
 *
 * @category formatting
 */
export const toJson = (value: unknown): string =>
  JSON.stringify(
    value,
    (_key, v) => {
      if (ArrayBuffer.isView(v) && !(v instanceof DataView)) return Array.from(v as unknown as ArrayLike<number>)
      if (typeof v === "number" && !Number.isFinite(v)) return null
      return v
    },
    2
  ) + "\n"

/**
 * Appends one JSON line to a file (a JSONL log). Not atomic by design: a log grows line by line, and a reader
 * skips an incomplete last line.
 *
 * @category io
 */
export const appendJsonLine = (file: string, value: unknown): Effect.Effect<void, ReportError> =>
  Effect.tryPromise({
    try: async () => {
      await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true })
      await fs.appendFile(file, JSON.stringify(value, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v)) + "\n")
    },
    catch: (e) => new ReportError({ path: file, message: `cannot append: ${messageOf(e)}` })
  })

// ---------------------------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------------------------

/**
 * A table cell: text, a number (printed as is; format it first), or missing ("-").
 *
 * @category formatting
 */
export type Cell = string | number | undefined | null

const cellText = (c: Cell): string =>
  c === undefined || c === null ? "-" : typeof c === "number" ? (Number.isFinite(c) ? String(c) : "-") : c

/**
 * A Markdown table; `|` in cells is escaped, missing cells print as "-".
 *
 * @category formatting
 */
export const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<Cell>>): string =>
  [
    `| ${headers.map((h) => h.replaceAll("|", "\\|")).join(" | ")} |`,
    `|${headers.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${headers.map((_, i) => cellText(r[i]).replaceAll("|", "\\|")).join(" | ")} |`)
  ].join("\n")

/**
 * A fraction as a percentage with `digits` decimals (default 1: "87.5"), for table cells under a "%" header;
 * missing values print as "-".
 *
 * @category formatting
 */
export const pct = (x: number | undefined | null, digits = 1): string =>
  x === undefined || x === null || !Number.isFinite(x) ? "-" : (100 * x).toFixed(digits)

/**
 * A fraction as a percentage with its sign, for running text ("87.5%"); missing values print as "-".
 *
 * @category formatting
 */
export const percent = (x: number | undefined | null, digits = 1): string => {
  const p = pct(x, digits)
  return p === "-" ? p : `${p}%`
}

/**
 * A number with `digits` significant decimals, or "-".
 *
 * @category formatting
 */
export const num = (x: number | undefined | null, digits = 3): string =>
  x === undefined || x === null || !Number.isFinite(x)
    ? "-"
    : Math.abs(x) !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)
    ? x.toExponential(Math.max(0, digits - 1))
    : x.toFixed(digits)

/**
 * An Linf radius as a decimal, or as "n/255" when it is a whole number of 8-bit levels (8/255, not 0.03137).
 *
 * @category formatting
 */
export const formatEps = (eps: number): string => {
  const n = eps * 255
  const whole = Math.round(n)
  return whole > 0 && Math.abs(n - whole) < 1e-6 ? `${whole}/255` : `${Number(eps.toPrecision(4))}`
}

/**
 * The machine a run happened on (CPU count and model, memory, OS, Node), for the header of a report.
 *
 * @category formatting
 */
export const machine = (): string => {
  const cpu = os.cpus()
  return `${cpu.length} vCPU ${cpu[0]?.model.trim() ?? "unknown CPU"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ` +
    `${os.type()} ${os.release()}, Node ${process.version}`
}

/**
 * Milliseconds as a human duration ("3m 12s", "850 ms"). `compact` (progress lines) rounds to whole seconds and
 * drops the spaces ("3m12s", "42s"). A negative or non-finite duration prints as "?".
 *
 * @category formatting
 */
export const duration = (ms: number, options: { readonly compact?: boolean } = {}): string => {
  if (!Number.isFinite(ms) || ms < 0) return "?"
  const compact = options.compact === true
  const sep = compact ? "" : " "
  if (!compact && ms < 1000) return `${Math.round(ms)} ms`
  const s = Math.round(ms / 1000)
  if (s < 60) return compact ? `${s}s` : `${(ms / 1000).toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m${sep}${String(s % 60).padStart(2, "0")}s`
  return `${Math.floor(m / 60)}h${sep}${String(m % 60).padStart(2, "0")}m`
}

/**
 * A fenced code block.
 *
 * @category formatting
 */
export const code = (text: string, lang = ""): string => "```" + lang + "\n" + text.replace(/\n$/, "") + "\n```"

// ---------------------------------------------------------------------------------------------------------------
// Plots
// ---------------------------------------------------------------------------------------------------------------

/**
 * One line of a plot: a name (shown in the legend) and its (x, y) points. Non-finite y values are dropped.
 *
 * @category plots
 */
export interface Series {
  readonly name: string
  readonly points: ReadonlyArray<readonly [number, number]>
  /** an optional shaded band (x, low, high) around the line, e.g. mean +- sd over seeds */
  readonly band?: ReadonlyArray<readonly [number, number, number]>
}

/**
 * A line plot: titles, the series, and axis options. `yScale: "log"` for residuals (ticks at powers of ten);
 * `yDomain` fixes the axis (accuracies in [0, 1]); `yFormat: "percent"` labels fractions as percentages (as the
 * tables print them); `xInteger` draws integer ticks (states, steps); `subtitle` says what the figure shows (model,
 * data, n, seed); `right` adds series on a second y axis at the right, drawn dashed (the loss next to accuracies).
 * A series keeps its colour in every plot (the names the reports use have fixed colours).
 *
 * @category plots
 */
export interface LinePlot {
  readonly title: string
  /** one line, or several */
  readonly subtitle?: string | ReadonlyArray<string>
  readonly x: string
  readonly y: string
  readonly series: ReadonlyArray<Series>
  readonly yScale?: "linear" | "log"
  readonly yDomain?: readonly [number, number]
  readonly yFormat?: "percent"
  readonly xInteger?: boolean
  readonly right?: {
    readonly y: string
    readonly series: ReadonlyArray<Series>
    readonly yScale?: "linear" | "log"
    readonly yDomain?: readonly [number, number]
  }
  readonly width?: number
  readonly height?: number
}

/**
 * A series from rows: the points (x(row), y(row)) of the rows where y is defined (absent values leave no point).
 *
 * @category plots
 */
export const series = <R>(
  name: string,
  rows: ReadonlyArray<R>,
  x: (row: R) => number,
  y: (row: R) => number | undefined
): Series => ({
  name,
  points: rows.flatMap((r) => {
    const v = y(r)
    return v === undefined ? [] : [[x(r), v] as const]
  })
})
/**
 * A figure's subtitle: what it shows was measured on ("FC DEQ, 26,538 parameters · mnist, n = 64 test images ·
 * seed 7"); `n` is left out when not given.
 *
 * @category plots
 */
export const subtitle = (o: { readonly model: string; readonly data: string; readonly n?: string; readonly seed: number }): string =>
  [o.model, o.n !== undefined ? `${o.data}, n = ${o.n}` : o.data, `seed ${o.seed}`].join(" · ")

/**
 * Builds a {@link LinePlot} (identity; gives the literal its type).
 *
 * @category plots
 */
export const linePlot = (plot: LinePlot): LinePlot => plot

/**
 * The Vega-Lite spec of a line plot: one line with points per series, each in its fixed colour (the reports' series
 * names have fixed colours, others take the next free one), shaded bands where a series has one, dashed lines on
 * the right axis, the legend at the bottom with labels never truncated.
 *
 * @category plots
 */
export const vegaLiteSpec = (plot: LinePlot): vegaLite.TopLevelSpec => plots.spec(plot)

/**
 * The fixed colours of the series names the reports use ("clean inputs", "adversarial inputs", "held-out clean",
 * "held-out PGD", "train (adv.)", "loss"): the same series is the same colour in every figure.
 *
 * @category plots
 */
export const seriesColours: Readonly<Record<string, string>> = plots.seriesColours

/**
 * Renders a line plot to an SVG string, headless (Vega-Lite -> Vega -> `View.toSVG()` with renderer "none").
 *
 * @category plots
 */
export const renderSvg = (plot: LinePlot): Effect.Effect<string, ReportError> =>
  Effect.tryPromise({
    try: async () => {
      const compiled = vegaLite.compile(vegaLiteSpec(plot)).spec
      const view = new vega.View(vega.parse(compiled), { renderer: "none", logLevel: vega.Error })
      try {
        return await view.toSVG()
      } finally {
        view.finalize()
      }
    },
    catch: (e) => new ReportError({ path: plot.title, message: `cannot render the plot: ${messageOf(e)}` })
  })

/**
 * Renders a line plot and writes it atomically as an SVG file.
 *
 * @category plots
 */
export const writeSvg = (file: string, plot: LinePlot): Effect.Effect<void, ReportError> =>
  Effect.flatMap(renderSvg(plot), (svg) => writeText(file, svg))

// ---------------------------------------------------------------------------------------------------------------
// Dynamics plots
// ---------------------------------------------------------------------------------------------------------------

/**
 * What one state z_n of the dynamics shows, averaged over the evaluated samples: clean accuracy, robust accuracy
 * (under the attack named in the report), mean prediction entropy on clean and adversarial inputs, and the mean
 * relative residual ||f(z_n) - z_n|| / ||f(z_n)||.
 *
 * @category dynamics
 */
export interface StateRow {
  readonly n: number
  readonly cleanAccuracy: number
  readonly robustAccuracy?: number
  readonly cleanEntropy: number
  readonly robustEntropy?: number
  readonly relResidual: number
  readonly robustRelResidual?: number
  /** each attack's robust accuracy at this state, when robustAccuracy is the per-sample worst case over them */
  readonly attacks?: Readonly<Record<string, number>>
}

/**
 * A named set of {@link StateRow}s (a model, or a model with a defence), so several can share one plot.
 *
 * @category dynamics
 */
export interface DynamicsSeries {
  readonly name: string
  readonly rows: ReadonlyArray<StateRow>
}

const seriesOf = (
  runs: ReadonlyArray<DynamicsSeries>,
  pick: ReadonlyArray<readonly [string, (r: StateRow) => number | undefined]>
): Array<Series> =>
  runs.flatMap((run) =>
    pick
      .map(([label, get]) => series(runs.length === 1 ? label : `${run.name}: ${label}`, run.rows, (r) => r.n, get))
      .filter((s) => s.points.length > 0)
  )

/**
 * The three plots of the neural-dynamics analysis (docs/method.md, "Dynamics analysis"): prediction entropy vs state,
 * accuracy vs state (in %) and relative residual vs solver step (log scale), each with a line for the clean and
 * one for the adversarial inputs (the same names and colours in all three). `subtitle` says what was measured
 * (model, data, n, seed); `attack` names the attack that made the adversarial inputs (a second subtitle line).
 *
 * @category dynamics
 */
export const dynamicsPlots = (
  runs: ReadonlyArray<DynamicsSeries>,
  options: { readonly attack?: string; readonly subtitle?: string } = {}
): { readonly entropy: LinePlot; readonly accuracy: LinePlot; readonly residual: LinePlot } => {
  const lines = [
    ...(options.subtitle !== undefined ? [options.subtitle] : []),
    ...(options.attack !== undefined ? [`adversarial inputs: ${options.attack}`] : [])
  ]
  const subtitle = lines.length > 0 ? { subtitle: lines } : {}
  const clean = "clean inputs", adversarial = "adversarial inputs"
  return {
    entropy: {
      title: "Prediction entropy along the dynamics",
      ...subtitle,
      x: "state n (solver step)",
      y: "mean prediction entropy (nats)",
      xInteger: true,
      series: seriesOf(runs, [[clean, (r) => r.cleanEntropy], [adversarial, (r) => r.robustEntropy]])
    },
    accuracy: {
      title: "Accuracy of each intermediate state",
      ...subtitle,
      x: "state n (solver step)",
      y: "accuracy of h(z_n)",
      xInteger: true,
      yDomain: [0, 1],
      yFormat: "percent",
      series: seriesOf(runs, [[clean, (r) => r.cleanAccuracy], [adversarial, (r) => r.robustAccuracy]])
    },
    residual: {
      title: "Relative residual along the solve",
      ...subtitle,
      x: "solver step n",
      y: "||f(z_n) - z_n|| / ||f(z_n)||",
      xInteger: true,
      yScale: "log",
      series: seriesOf(runs, [[clean, (r) => r.relResidual], [adversarial, (r) => r.robustRelResidual]])
    }
  }
}

/**
 * The per-state table of the dynamics (accuracies in %, entropy in nats, residual relative).
 *
 * @category dynamics
 */
export const dynamicsTable = (rows: ReadonlyArray<StateRow>): string => {
  const names = Object.keys(rows[0]?.attacks ?? {})
  return table(
    [
      "state n",
      "clean acc. %",
      names.length > 0 ? "robust acc. % (worst case)" : "robust acc. %",
      ...names.map((a) => `${a} %`),
      "entropy (clean)",
      "entropy (adv.)",
      "rel. residual (clean)",
      "rel. residual (adv.)"
    ],
    rows.map((r) => [
      r.n,
      pct(r.cleanAccuracy),
      pct(r.robustAccuracy),
      ...names.map((a) => pct(r.attacks?.[a])),
      num(r.cleanEntropy),
      num(r.robustEntropy),
      num(r.relResidual),
      num(r.robustRelResidual)
    ])
  )
}

/**
 * Writes the three dynamics plots into `dir` as entropy.svg, accuracy.svg and residual.svg; returns the file
 * names (relative to `dir`) for linking from Markdown.
 *
 * @category dynamics
 */
export const writeDynamicsPlots = (
  dir: string,
  runs: ReadonlyArray<DynamicsSeries>,
  options: { readonly attack?: string; readonly subtitle?: string; readonly prefix?: string } = {}
): Effect.Effect<{ readonly entropy: string; readonly accuracy: string; readonly residual: string }, ReportError> =>
  Effect.gen(function*() {
    const plots = dynamicsPlots(runs, options)
    const prefix = options.prefix ?? ""
    const names = { entropy: `${prefix}entropy.svg`, accuracy: `${prefix}accuracy.svg`, residual: `${prefix}residual.svg` }
    yield* writeSvg(path.join(dir, names.entropy), plots.entropy)
    yield* writeSvg(path.join(dir, names.accuracy), plots.accuracy)
    yield* writeSvg(path.join(dir, names.residual), plots.residual)
    return names
  })

// ---------------------------------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------------------------------

/**
 * A Markdown section: a heading and its body (paragraphs, tables, image links).
 *
 * @category documents
 */
export interface Section {
  readonly title: string
  readonly body: string
  /** heading level, default 2 */
  readonly level?: number
}

/**
 * A Markdown document from a title and sections.
 *
 * @category documents
 */
export const document = (title: string, sections: ReadonlyArray<Section>): string =>
  [`# ${title}`, ...sections.map((s) => `${"#".repeat(s.level ?? 2)} ${s.title}\n\n${s.body.trim()}`)].join("\n\n") + "\n"

/**
 * A Markdown image link.
 *
 * @category documents
 */
export const image = (file: string, alt: string): string => `![${alt.replaceAll("]", "")}](${file})`

/**
 * Writes a report directory: `report.md` and `report.json` (atomically), plus any plots given by file name.
 *
 * @category documents
 */
export const writeReport = (
  dir: string,
  report: {
    readonly markdown: string
    readonly json: unknown
    readonly plots?: Readonly<Record<string, LinePlot>>
    /** base name of the two report files, default "report" */
    readonly name?: string
  }
): Effect.Effect<{ readonly markdown: string; readonly json: string }, ReportError> =>
  Effect.gen(function*() {
    for (const [file, plot] of Object.entries(report.plots ?? {})) yield* writeSvg(path.join(dir, file), plot)
    const base = report.name ?? "report"
    const md = path.join(dir, `${base}.md`), json = path.join(dir, `${base}.json`)
    yield* writeJson(json, report.json)
    yield* writeText(md, report.markdown)
    return { markdown: md, json }
  })
