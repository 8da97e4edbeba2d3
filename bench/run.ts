/**
 * `npm run bench`: the benchmark suite (bench/suite.ts) on the wasm backend (or DEQ_BACKEND), printed as Markdown
 * and written to runs/bench/ (bench.md, bench.json, scaling.svg). `deq bench` runs the same code.
 *
 * Flags: `--quick` (small sizes, seconds), `--no-peer` (no PyTorch), `--levers all` (ours once per combination of
 * the switchable levers), `--sections peer,scaling,fixed-point,conv-grad` (a subset), `--workloads
 * f,solve,implicit,attack-step,train-step` and `--models fc,conv` (a subset of the comparison), `--out DIR`.
 */
import { Effect } from "effect"
import { type BackendName, useBackend } from "../src/Tensor.ts"
import { runBench, type Section, sections, workloadNames, writeBench } from "./suite.ts"
import type { WorkloadName } from "./workloads.ts"

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
const workloads = value("--workloads")?.split(",").filter((s) => s.length > 0)
const badWorkload = workloads?.filter((w) => !(workloadNames as ReadonlyArray<string>).includes(w)) ?? []
if (badWorkload.length > 0) {
  console.error(`bench: unknown workload ${badWorkload.join(", ")} (valid: ${workloadNames.join(", ")})`)
  process.exit(1)
}
const models = value("--models")?.split(",").filter((s) => s.length > 0)
if (models !== undefined && models.some((m) => m !== "fc" && m !== "conv")) {
  console.error(`bench: --models takes fc and/or conv, got "${models.join(",")}"`)
  process.exit(1)
}
const levers = value("--levers") ?? "current"
if (levers !== "all" && levers !== "current") {
  console.error(`bench: --levers takes "all" or "current", got "${levers}"`)
  process.exit(1)
}
await useBackend((process.env["DEQ_BACKEND"] as BackendName | undefined) ?? "wasm")
const result = await runBench({
  command: ["npm run bench", ...(args.length > 0 ? ["--", ...args] : [])].join(" "),
  quick: args.includes("--quick"),
  peer: !args.includes("--no-peer"),
  levers,
  ...(chosen !== undefined ? { sections: chosen as Array<Section> } : {}),
  ...(workloads !== undefined ? { workloads: workloads as Array<WorkloadName> } : {}),
  ...(models !== undefined ? { models: models as Array<"fc" | "conv"> } : {}),
  onProgress: (m) => process.stderr.write(`bench: ${m}\n`)
})
console.log(result.markdown)
await Effect.runPromise(writeBench(result, value("--out") ?? "runs/bench"))
