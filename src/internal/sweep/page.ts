/**
 * The sweep's static results page, `DIR/index.html`: the per-arm table, the per-state plots and a table of runs
 * with links to each run's reports. No scripts and nothing fetched: it opens from the file system.
 *
 * @internal
 */
import * as path from "node:path"
import type { Effect } from "effect"
import * as Report from "../../Report.ts"
import type { Sweep } from "./grid.ts"
import { type ArmSummary, pctSd, type RunResult } from "./results.ts"

const escape = (s: string): string =>
  s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll("\"", "&quot;")

const table = (id: string, headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string =>
  [
    `<table id="${id}">`,
    `<thead><tr>${headers.map((h) => `<th>${escape(h)}</th>`).join("")}</tr></thead>`,
    "<tbody>",
    ...rows.map((r) => `<tr>${r.join("")}</tr>`),
    "</tbody>",
    "</table>"
  ].join("\n")

const td = (s: string | number): string => `<td>${escape(String(s))}</td>`
const link = (href: string, text: string): string => `<a href="${escape(href)}">${escape(text)}</a>`

const style = `
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5rem; }
.failed { color: #b00; }
`

/** The page's HTML. */
export const html = (
  sweep: Sweep,
  arms: ReadonlyArray<ArmSummary>,
  results: ReadonlyArray<RunResult>,
  states: ReadonlyMap<string, string>
): string => {
  const armRows = arms.map((a) => [td(a.arm), td(a.seeds.join(", ")), td(pctSd(a.clean)), td(pctSd(a.robust))])
  const runRows = sweep.runs.map((r) => {
    const x = results.find((y) => y.id === r.id)
    const state = states.get(r.id) ?? "-"
    const base = `runs/${r.id}`
    return [
      td(r.id),
      td(r.arm),
      td(r.seed),
      `<td class="${state === "failed" ? "failed" : ""}">${escape(state)}</td>`,
      td(Report.pct(x?.clean)),
      td(Report.pct(x?.robust)),
      `<td>${[link(`${base}/report.md`, "report"), link(`${base}/eval/report.md`, "evaluation"), link(`${base}/dynamics/report.md`, "dynamics"), link(`${base}/training.svg`, "training")].join(" · ")}</td>`
    ]
  })
  return [
    "<!doctype html>",
    `<html lang="en"><head><meta charset="utf-8"><title>${escape(`Sweep ${sweep.name}`)}</title><style>${style}</style></head>`,
    "<body>",
    `<h1>Sweep ${escape(sweep.name)}</h1>`,
    `<p>${escape(sweep.description)} Base preset <code>${escape(sweep.base)}</code>; axes ${escape(sweep.axes.join(", "))}; ` +
    `${sweep.runs.length} runs, ${results.length} done. Robust accuracy is the worst case of each run's evaluation.</p>`,
    "<h2>Arms (mean ± sd over seeds)</h2>",
    table("arms", ["arm", "seeds", "clean %", "robust % (worst case)"], armRows),
    "<h2>Per-state curves</h2>",
    `<figure><img id="plot-accuracy" src="accuracy.svg" alt="accuracy per state"><figcaption>accuracy of h(z_n)</figcaption></figure>`,
    `<figure><img id="plot-entropy" src="entropy.svg" alt="entropy per state"><figcaption>prediction entropy of h(z_n)</figcaption></figure>`,
    "<h2>Runs</h2>",
    table("runs", ["run", "arm", "seed", "state", "clean %", "robust %", "reports"], runRows),
    `<p>${link("summary.md", "summary.md")} · ${link("summary.json", "summary.json")}</p>`,
    "</body></html>",
    ""
  ].join("\n")
}

/** Writes `DIR/index.html` atomically. */
export const write = (
  out: string,
  sweep: Sweep,
  arms: ReadonlyArray<ArmSummary>,
  results: ReadonlyArray<RunResult>,
  states: ReadonlyMap<string, string>
): Effect.Effect<void, Report.ReportError> => Report.writeText(path.join(out, "index.html"), html(sweep, arms, results, states))
