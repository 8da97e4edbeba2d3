/**
 * `npm run bench`: the benchmark suite (bench/suite.ts) on the wasm backend (or DEQ_BACKEND), printed as Markdown
 * and written to runs/bench/ (bench.md, bench.json, scaling.svg). `deq bench` runs the same code.
 *
 * Flags: `--quick` (small sizes, seconds), `--no-peer` (no PyTorch), `--levers all` (ours once per combination of
 * the switchable levers), `--sections peer,scaling,fixed-point,conv-grad` (a subset), `--out DIR`.
 */
import { Effect } from "effect"
import { type BackendName, useBackend } from "../src/Tensor.ts"
import { runBench, type Section, sections, writeBench } from "./suite.ts"

const args = process.argv.slice(2)
const value = (flag: string): string | undefined => {
  const i = args.indexOf(flag)
  return i >= 0 ? args[i + 1] : undefined
}
const chosen = value("--sections")?.split(",").filter((s) => s.length > 0)
const unknown = chosen?.filter((s) => !(sections as ReadonlyArray<string>).includes(s)) ?? []
if (unknown.length > 0) {
  console.error(`bench: unknown section ${unknown.join(", ")} (valid: ${sections.join(", ")})`)
  process.exit(1)
}
const levers = value("--levers") ?? "current"
if (levers !== "all" && levers !== "current") {
  console.error(`bench: --levers takes "all" or "current", got "${levers}"`)
  process.exit(1)
}
await useBackend((process.env["DEQ_BACKEND"] as BackendName | undefined) ?? "wasm")
const result = await runBench({
  quick: args.includes("--quick"),
  peer: !args.includes("--no-peer"),
  levers,
  ...(chosen !== undefined ? { sections: chosen as Array<Section> } : {}),
  onProgress: (m) => process.stderr.write(`bench: ${m}\n`)
})
console.log(result.markdown)
await Effect.runPromise(writeBench(result, value("--out") ?? "runs/bench"))
