/**
 * Memory over 200 training steps (a benchmark, not a test): the main job's model and method (FC DEQ, hidden 128,
 * Broyden 8 steps, PGD-AT with 7 steps and random intermediate states) on 3,200 MNIST images (50 batches of 64,
 * 4 epochs, no periodic evaluation), `tf.memory().numTensors` and the process RSS after step 1, 100 and 200.
 * Flat memory: numTensors identical, RSS not growing between 100 and 200 (the first steps grow the wasm heap and
 * the JIT's code).
 *
 *   npx tsx bench/memory.ts [--workers N] [--model fc|conv]
 */
import { Effect } from "effect"
import * as Train from "../src/Train.ts"
import { tf, useBackend } from "../src/Tensor.ts"

const args = process.argv.slice(2)
const value = (flag: string) => {
  const i = args.indexOf(flag)
  return i >= 0 ? args[i + 1] : undefined
}
const workers = Number(value("--workers") ?? 1)
const conv = value("--model") === "conv"

await useBackend("wasm")
const config = Train.decodeConfigSync({
  model: conv ? { _tag: "conv", channels: 8, groups: 4 } : { _tag: "fc", hidden: 128 },
  data: { name: "mnist", trainSize: 3200, testSize: 100 },
  solver: { _tag: "broyden", maxIter: 8, tol: 1e-3 },
  gradient: { _tag: "unroll", k: 5, lambda: 0.5 },
  method: { _tag: "pgd-at" },
  regularizers: { randomStates: { max: 8 } },
  attack: { eps: 0.1, stepSize: 0.025, steps: 7 },
  eval: { every: 0, subset: 100, steps: 0 },
  epochs: 4,
  batchSize: 64,
  lr: 0.002,
  seed: 42,
  workers
})

const rows: Array<{ step: number; numTensors: number; rssMiB: number; heapMiB: number }> = []
const started = performance.now()
await Effect.runPromise(Train.run(config, {
  onEvent: (e) =>
    Effect.sync(() => {
      if (e._tag === "Batch" && (e.step === 1 || e.step % 100 === 0)) {
        const m = process.memoryUsage()
        rows.push({ step: e.step, numTensors: tf.memory().numTensors, rssMiB: m.rss / 2 ** 20, heapMiB: m.heapUsed / 2 ** 20 })
        process.stderr.write(`memory: step ${e.step}: ${rows.at(-1)!.numTensors} tensors, RSS ${rows.at(-1)!.rssMiB.toFixed(0)} MiB\n`)
      }
    })
}))
const seconds = (performance.now() - started) / 1000
console.log(`| step | tf.memory().numTensors | RSS (MiB) | JS heap used (MiB) |`)
console.log(`|---|---|---|---|`)
for (const r of rows) console.log(`| ${r.step} | ${r.numTensors} | ${r.rssMiB.toFixed(0)} | ${r.heapMiB.toFixed(0)} |`)
const flat = rows.length >= 3 && rows.every((r) => r.numTensors === rows[0]!.numTensors)
const growth = rows.length >= 3 ? rows.at(-1)!.rssMiB - rows.at(-2)!.rssMiB : NaN
console.log(`\n${conv ? "conv" : "fc"}, workers ${workers}, ${rows.at(-1)?.step ?? 0} steps in ${seconds.toFixed(0)} s: numTensors ${flat ? "constant" : "NOT constant"}; RSS ${growth >= 0 ? "+" : ""}${growth.toFixed(1)} MiB from step 100 to 200.`)
