/**
 * The package as a user gets it: `npm pack` of a staged copy of the repository (its prepare script builds dist/;
 * the repository itself is only read), the tarball installed into a scratch project with npm, which brings the peer
 * dependencies, then:
 * - a plain-node ESM program (no tsx, no loader) that builds an FC DEQ, solves and attacks 8 synthetic images;
 * - a strict `tsc --noEmit` of a consumer file against the installed types (NodeNext, no
 *   allowImportingTsExtensions), with `@ts-expect-error` lines proving the types are not `any`;
 * - the installed `deq` command with plain node: presets, the bench message, a Ctrl-C that saves a checkpoint.
 * There must be exactly one copy of tfjs and of effect, and no "already registered" warning.
 *
 * npm installs with --prefer-offline: the cache `npm ci` filled answers most requests.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { readEvents, runUntil } from "./interrupt.ts"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-package-"))
const stage = path.join(tmp, "stage")
const consumer = path.join(tmp, "consumer")
const installed = path.join(consumer, "node_modules", "effect-deq")
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")

// the nested npm and node must not inherit `npm test`'s lifecycle settings nor a loader
const env: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith("npm_") && k !== "NODE_OPTIONS")
)
// the installed bin's `#!/usr/bin/env node` finds this node
const nodeEnv = { ...env, DEQ_BACKEND: "wasm", PATH: `${path.dirname(process.execPath)}${path.delimiter}${env.PATH ?? ""}` }

const run = (command: string, args: ReadonlyArray<string>, cwd: string, e: NodeJS.ProcessEnv = env) => {
  const r = spawnSync(command, args, { cwd, env: e, encoding: "utf8", timeout: 240_000 })
  return { code: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" }
}

const npm = (args: ReadonlyArray<string>, cwd: string) => {
  const r = run("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], cwd)
  if (r.code !== 0) throw new Error(`npm ${args.join(" ")} failed (${r.code}):\n${r.stderr}`)
  return r.stdout
}

let packed: { filename: string; files: ReadonlyArray<{ path: string }> }

beforeAll(() => {
  // what a clone has: the files git tracks or would track (not dist/, runs/ nor other tests' temp directories)
  const listed = run("git", ["ls-files", "--cached", "--others", "--exclude-standard", "-z"], root)
  if (listed.code !== 0) throw new Error(`git ls-files failed: ${listed.stderr}`)
  for (const file of listed.stdout.split("\0").filter((f) => f.length > 0 && fs.existsSync(path.join(root, f)))) {
    fs.mkdirSync(path.dirname(path.join(stage, file)), { recursive: true })
    fs.copyFileSync(path.join(root, file), path.join(stage, file))
  }
  fs.symlinkSync(path.join(root, "node_modules"), path.join(stage, "node_modules"))
  packed = JSON.parse(npm(["pack", "--json", "--pack-destination", tmp], stage))[0]
  fs.mkdirSync(consumer)
  fs.writeFileSync(path.join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }))
  npm(["install", "--prefer-offline", path.join(tmp, packed.filename)], consumer)
}, 300_000)

// the scratch project holds about 500 MB of dependencies
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

describe("the packed package", () => {
  it("holds the build with its types, the presets, the bin and the README; no sources, tests or benchmarks", () => {
    const files = packed.files.map((f) => f.path)
    for (const f of ["package.json", "README.md", "LICENSE", "bin/deq.js", "dist/bin.js", "dist/Tensor.js", "dist/Tensor.d.ts", "dist/Adversary.d.ts", "presets/smoke.json"]) {
      expect(files).toContain(f)
    }
    expect(files.filter((f) => !/^(bin\/deq\.js|dist\/|presets\/|package\.json$|README\.md$|LICENSE$)/.test(f))).toEqual([])
    expect(files.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))).toEqual([])
    // tsc rewrote the sources' relative .ts imports to .js
    const js = files.filter((f) => f.endsWith(".js")).map((f) => fs.readFileSync(path.join(installed, f), "utf8"))
    expect(js.join("\n")).toContain(`from "./Config.js"`)
    expect(js.filter((text) => /(from |import\()"\.{1,2}\/[^"]*\.ts"/.test(text))).toEqual([])
  })

  it("installs one copy of tfjs and of effect (the peers), hoisted beside it", () => {
    const copies = (name: string) =>
      run("npm", ["ls", name, "--all", "--parseable"], consumer).stdout.split("\n").filter((l) => l.endsWith(path.join("node_modules", name)))
    for (const name of ["@tensorflow/tfjs-core", "@tensorflow/tfjs", "@tensorflow/tfjs-backend-wasm", "effect"]) {
      expect(new Set(copies(name))).toEqual(new Set([path.join(consumer, "node_modules", name)]))
    }
    const manifest = JSON.parse(fs.readFileSync(path.join(installed, "package.json"), "utf8"))
    expect(Object.keys(manifest.peerDependencies)).toEqual(expect.arrayContaining(["@tensorflow/tfjs", "@tensorflow/tfjs-backend-wasm", "effect"]))
    expect(manifest.dependencies?.["@tensorflow/tfjs"]).toBeUndefined()
  })
})

const program = `
import * as tf from "@tensorflow/tfjs"
import { Effect, Layer } from "effect"
import * as Adversary from "effect-deq/Adversary"
import * as Data from "effect-deq/Data"
import * as Dynamics from "effect-deq/Dynamics"
import { Solver } from "effect-deq/FixedPoint"
import * as Models from "effect-deq/Models"
import { Backend, Rng, tf as deqTf } from "effect-deq/Tensor"

const program = Effect.gen(function*() {
  const backend = yield* Backend
  const data = yield* Data.synthetic({ classes: 4, height: 8, width: 8, channels: 1, trainSize: 8, testSize: 8, seed: 3 })
  const model = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 16, classes: 4 }, { seed: 1 })
  const deq = yield* Dynamics.make(model, { solve: { maxIter: 30, tol: 1e-4 } })
  const x = tf.tensor4d(data.test.images, [8, 8, 8, 1])
  const y = tf.tensor1d(data.test.labels, "int32")
  const trajectory = Dynamics.trajectory(deq, x, y, { steps: 12 })
  const loss = (input) => tf.tidy(() => tf.mean(Adversary.losses.crossEntropy(Dynamics.logits(deq, input, Dynamics.readOut.final), y)).dataSync()[0])
  const pgd = yield* Adversary.pgd({ eps: 0.1, stepSize: 0.1, steps: 1, randomStart: false })
  const result = yield* pgd.perturb(Adversary.deqClassifier(deq, { source: Adversary.GradientSource.implicit() }), x, y)
  const xa = result.xAdv.dataSync(), x0 = x.dataSync()
  let linf = 0, min = Infinity, max = -Infinity
  for (let i = 0; i < xa.length; i++) {
    linf = Math.max(linf, Math.abs(xa[i] - x0[i]))
    min = Math.min(min, xa[i])
    max = Math.max(max, xa[i])
  }
  return {
    backend: backend.name,
    oneEngine: tf.engine() === deqTf.engine(),
    shape: result.xAdv.shape,
    linf, min, max,
    success: result.success.length,
    residuals: trajectory.states.map((s) => s.meanRelResidual),
    lossBefore: loss(x),
    lossAfter: loss(result.xAdv)
  }
}).pipe(
  Effect.scoped,
  Effect.provide(Layer.mergeAll(Solver.broyden({ maxIter: 30, tol: 1e-4 }), Rng.seeded(0), Backend.named("wasm")))
)

console.log(JSON.stringify(await Effect.runPromise(program)))
`

const consumerTs = `
import { Effect, Layer } from "effect"
import * as Adversary from "effect-deq/Adversary"
import * as Data from "effect-deq/Data"
import * as Dynamics from "effect-deq/Dynamics"
import { Solver } from "effect-deq/FixedPoint"
import * as Models from "effect-deq/Models"
import { Rng, tf } from "effect-deq/Tensor"
import * as Train from "effect-deq/Train"

const program = Effect.gen(function*() {
  const data = yield* Data.synthetic({ classes: 4, height: 8, width: 8, trainSize: 8, testSize: 8 })
  const model: Models.Model = yield* Models.fc({ inputShape: [8, 8, 1], hidden: 16, classes: 4 }, { seed: 1 })
  const deq: Dynamics.Deq = yield* Dynamics.make(model, { solve: { maxIter: 8 } })
  const x = tf.tensor4d(data.test.images, [8, 8, 8, 1])
  const y = tf.tensor1d(data.test.labels, "int32")
  const pgd = yield* Adversary.pgd({ eps: 0.1, stepSize: 0.1, steps: 1 })
  const classifier: Adversary.Classifier = Adversary.deqClassifier(deq, { source: Adversary.GradientSource.implicit() })
  const result: Adversary.AttackResult = yield* pgd.perturb(classifier, x, y)
  const shape: [number, number, number, number] = result.xAdv.shape
  return shape
}).pipe(Effect.scoped, Effect.provide(Layer.mergeAll(Solver.broyden({ maxIter: 8 }), Rng.seeded(0))))

export const shape: Promise<[number, number, number, number]> = Effect.runPromise(program)
export const config: Effect.Effect<Train.TrainConfig, unknown> = Train.decodeConfig({ model: { _tag: "fc" } })
// @ts-expect-error an unknown option is a type error: the types are real, not any
Adversary.pgd({ epz: 0.1 })
// @ts-expect-error a DEQ needs a Solver: without one provided the program does not type-check
export const unprovided = Effect.runPromise(Effect.scoped(Effect.flatMap(Models.fc({}, { seed: 1 }), (m) => Dynamics.make(m, {}))))
`

describe("a consumer of the installed package", () => {
  it("runs a plain-node ESM program: an FC DEQ converges, one PGD step stays in the eps-ball and raises the loss", () => {
    fs.writeFileSync(path.join(consumer, "main.mjs"), program)
    const r = run(process.execPath, ["main.mjs"], consumer, nodeEnv)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).not.toMatch(/already registered|Platform node has already been set/)
    const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!)
    expect(out.backend).toBe("wasm")
    expect(out.oneEngine).toBe(true)
    expect(out.shape).toEqual([8, 8, 8, 1])
    expect(out.success).toBe(8)
    expect(out.linf).toBeGreaterThan(0.09)
    expect(out.linf).toBeLessThanOrEqual(0.1 + 1e-6)
    expect(out.min).toBeGreaterThanOrEqual(0)
    expect(out.max).toBeLessThanOrEqual(1)
    expect(out.residuals).toHaveLength(12)
    expect(out.residuals.at(-1)).toBeLessThan(1e-3)
    expect(out.residuals.at(-1)).toBeLessThan(out.residuals[0])
    expect(out.lossAfter).toBeGreaterThan(out.lossBefore)
  })

  it("runs the README's example as written", () => {
    const readme = fs.readFileSync(path.join(root, "README.md"), "utf8")
    const section = readme.slice(readme.indexOf("## Use it in your project"))
    const example = /```js\n([\s\S]*?)```/.exec(section)![1]!
    fs.writeFileSync(path.join(consumer, "readme.mjs"), example)
    const r = run(process.execPath, ["readme.mjs"], consumer, nodeEnv)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/shape: \[ 8, 8, 8, 1 \]/)
    expect(r.stdout).toMatch(/fooled: \[(\s*[01],?){8}\s*\]/)
  })

  it("type-checks a strict consumer file (NodeNext, no allowImportingTsExtensions) against the installed types", () => {
    fs.writeFileSync(path.join(consumer, "consumer.ts"), consumerTs)
    fs.writeFileSync(path.join(consumer, "tsconfig.json"), JSON.stringify({
      compilerOptions: {
        target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", lib: ["ES2022", "DOM"], types: [],
        strict: true, noEmit: true, skipLibCheck: false
      },
      files: ["consumer.ts"]
    }))
    const r = run(process.execPath, [tsc, "-p", "tsconfig.json"], consumer)
    const errors = r.stdout.split("\n").filter((l) => /error TS\d+/.test(l))
    // tfjs' own declarations do not pass skipLibCheck: false (its consumers set skipLibCheck); every other file must
    expect(errors.filter((l) => !l.startsWith("node_modules/@tensorflow/"))).toEqual([])
    expect(r.stderr).toBe("")
  })

  it("runs the installed deq with plain node: presets, the bench message, Ctrl-C saving a checkpoint", async () => {
    const deq = path.join(consumer, "node_modules", ".bin", "deq")
    const presets = run(deq, ["presets"], consumer, nodeEnv)
    expect(presets.code, presets.stderr).toBe(0)
    for (const name of ["smoke", "mnist-fc-pgdat-ris"]) expect(presets.stdout).toContain(name)
    const bench = run(deq, ["bench", "--quick"], consumer, nodeEnv)
    expect(bench.code).toBe(1)
    expect(bench.stderr).toContain("deq bench: error: ConfigError: the benchmarks (bench/) are not part of the installed package")
    // a run that a Ctrl-C interrupts after two batches, then resumes to the end
    const config = path.join(consumer, "tiny.json")
    fs.writeFileSync(config, JSON.stringify({
      model: { _tag: "fc", hidden: 32, inputShape: [14, 14, 1] },
      data: { name: "synthetic", height: 14, width: 14, trainSize: 256, testSize: 32 },
      solver: { _tag: "broyden", maxIter: 6, tol: 0.0001 },
      attack: { eps: 0.1, stepSize: 0.04, steps: 4 },
      eval: { subset: 32, batchSize: 32, steps: 2 },
      epochs: 2, batchSize: 32, seed: 2
    }))
    const out = path.join(consumer, "runs", "tiny")
    const events = path.join(out, "events.jsonl")
    const r = await runUntil(deq, ["train", "--config", config, "--out", out], {
      cwd: consumer, env: nodeEnv, events, when: (e) => e.filter((x) => x._tag === "Batch").length >= 2
    })
    expect(r.interrupted).toBe(true)
    expect(r.children.filter((name) => name.startsWith("node"))).toEqual([])
    expect(r.code, r.stderr).toBe(130)
    expect(r.stderr).toContain("interrupted: the last checkpoint is in")
    expect(readEvents(events).at(-1)!._tag).toBe("Interrupted")
    const resumed = run(deq, ["train", "--resume", out], consumer, nodeEnv)
    expect(resumed.code, resumed.stderr).toBe(0)
    expect(readEvents(events).at(-1)!._tag).toBe("Finished")
  }, 120_000)
})
