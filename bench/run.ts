/**
 * `npm run bench`: the benchmark suite (bench/suite.ts) on the wasm backend (or DEQ_BACKEND), printed as Markdown
 * and written to runs/bench/bench.md and runs/bench/bench.json. `--quick` uses small sizes; `--no-peer` skips the
 * PyTorch peer. `deq bench` runs the same code.
 */
import { Effect } from "effect"
import * as Report from "../src/Report.ts"
import { useBackend, type BackendName } from "../src/Tensor.ts"
import { runBench } from "./suite.ts"

const args = process.argv.slice(2)
await useBackend((process.env["DEQ_BACKEND"] as BackendName | undefined) ?? "wasm")
const result = await runBench({
  quick: args.includes("--quick"),
  peer: !args.includes("--no-peer"),
  onProgress: (m) => process.stderr.write(`bench: ${m}\n`)
})
console.log(result.markdown)
const { markdown, ...json } = result
await Effect.runPromise(Effect.all([
  Report.writeText("runs/bench/bench.md", markdown),
  Report.writeJson("runs/bench/bench.json", json)
]))
