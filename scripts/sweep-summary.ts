/**
 * Writes a sweep's summary (summary.md, summary.json, the SVG curves, index.html) from the runs that have finished
 * so far (their `runs/<id>/report.json` is written), without touching the sweep's storage: for committing each
 * finished arm while the sweep goes on. The sweep writes the same files itself when it ends.
 *
 *   npx tsx scripts/sweep-summary.ts presets/sweep-paper-conv.json runs/sweep-paper-conv [COPY_DIR]
 *
 * With COPY_DIR, also copies the summary and the plots there (e.g. docs/results/sweep-paper-conv).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import * as Grid from "../src/internal/sweep/grid.ts"
import * as Page from "../src/internal/sweep/page.ts"
import { runDir, writeSummary } from "../src/internal/sweep/results.ts"

const [file, out, copy] = process.argv.slice(2)
if (file === undefined || out === undefined) {
  console.error("usage: tsx scripts/sweep-summary.ts SWEEP_FILE OUT_DIR [COPY_DIR]")
  process.exit(1)
}
const dir = path.resolve(out)

const program = Effect.gen(function*() {
  const sweep = yield* Grid.load(file)
  const states = new Map(sweep.runs.map((r) => [r.id, fs.existsSync(path.join(runDir(dir, r.id), "report.json")) ? "done" : "-"]))
  const { arms, results } = yield* writeSummary(dir, sweep, states, { storage: "summary of the runs finished so far (scripts/sweep-summary.ts)" })
  yield* Page.write(dir, sweep, arms, results, states)
  if (copy !== undefined) {
    fs.mkdirSync(copy, { recursive: true })
    for (const f of ["summary.md", "summary.json", "accuracy.svg", "entropy.svg"]) fs.copyFileSync(path.join(dir, f), path.join(copy, f))
  }
  return `${results.length} of ${sweep.runs.length} runs done; arms: ${arms.map((a) => `${a.arm} (${a.seeds.length})`).join(", ")}`
})

console.log(await Effect.runPromise(program))
