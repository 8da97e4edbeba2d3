/**
 * Reliability of configuration (issue 16, defects 1, 2 and 13): a fast-check fuzzer over TrainConfig, the preset
 * and config files and the evaluation suite's settings. Every mutated config either decodes, with every size
 * within the wasm heap (and the small ones build into a model without a leak), or fails with a typed ConfigError
 * whose path names the leaf field, never an untyped throw or a hang. Solver per-call options are fuzzed the same
 * way through `solve`. Counts: test/fault/mode.ts (DEQ_RELIABILITY=long runs the full counts).
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll } from "vitest"
import { decode, heapBytes } from "../src/Config.ts"
import { ConfigError } from "../src/Errors.ts"
import { SuiteConfig } from "../src/Evaluation.ts"
import * as FP from "../src/FixedPoint.ts"
import { loadConfigFile } from "../src/internal/cli/presets.ts"
import * as Models from "../src/Models.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import * as Train from "../src/Train.ts"
import { baseConfigs, type Json, mutatedConfig, namesLeaf, type Path, presetFiles, startsWith } from "./fault/configs.ts"
import { counts, seed, tally } from "./fault/mode.ts"

let tmp = ""
beforeAll(async () => {
  await useBackend("wasm")
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-rel-config-"))
})
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

/** A ConfigError's path as keys (`<root>` is the empty path). */
const keysOf = (p: string, prefix = ""): Path => {
  const rest = prefix.length > 0 && p.startsWith(prefix) ? p.slice(prefix.length).replace(/^\./, "") : p
  return rest === "<root>" || rest.length === 0 ? [] : rest.split(".")
}

/** What an Exit holds: a value, a typed failure, or something untyped (a defect, a throw). */
const outcome = <A>(run: () => Exit.Exit<A, unknown>): { ok: A } | { error: unknown } | { untyped: unknown } => {
  try {
    const exit = run()
    if (Exit.isSuccess(exit)) return { ok: exit.value }
    const failure = exit.cause.reasons.find(Cause.isFailReason)
    return failure !== undefined ? { error: failure.error } : { untyped: Cause.pretty(exit.cause) }
  } catch (e) {
    return { untyped: e }
  }
}

const product = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a * b, 1)

/** An accepted config is one that can be allocated: the model's training state and the data fit the heap. */
const expectFits = (c: Train.TrainConfig) => {
  expect(product(c.model.inputShape) * 4).toBeLessThanOrEqual(heapBytes)
  expect(Models.countParameters(c.model) * 16).toBeLessThanOrEqual(heapBytes)
  if (c.data.name === "synthetic") {
    const pixels = (c.data.height ?? 28) * (c.data.width ?? 28) * (c.data.channels ?? 1)
    expect((c.data.trainSize ?? 1000) * pixels * 4).toBeLessThanOrEqual(heapBytes)
    expect((c.data.testSize ?? 200) * pixels * 4).toBeLessThanOrEqual(heapBytes)
  }
}

describe("config fuzzer", () => {
  it("mutated TrainConfigs: decoded within the heap, or a ConfigError at a leaf; never untyped, never slow", () => {
    const bases = baseConfigs()
    const stats = { cases: 0, accepted: 0, refused: 0, built: 0, files: 0, untyped: 0, maxMs: 0 }
    fc.assert(
      fc.property(mutatedConfig(bases), fc.nat(24), (m, lane) => {
        stats.cases++
        const t0 = performance.now()
        const viaFile = lane === 0
        let result: ReturnType<typeof outcome<Train.TrainConfig>>
        if (viaFile) {
          // the same through a --config file (JSON turns NaN and Infinity into null)
          stats.files++
          const file = path.join(tmp, `case-${stats.cases}.json`)
          fs.writeFileSync(file, JSON.stringify(m.input))
          result = outcome(() => Effect.runSyncExit(Effect.map(loadConfigFile(file), (p) => p.train)))
          fs.rmSync(file)
        } else {
          result = outcome(() => Effect.runSyncExit(Train.decodeConfig(m.input)))
        }
        stats.maxMs = Math.max(stats.maxMs, performance.now() - t0)
        if ("untyped" in result) stats.untyped++
        expect(result, m.description).not.toHaveProperty("untyped")
        if ("ok" in result) {
          stats.accepted++
          expectFits(result.ok)
          // the small ones are built: a build failure must be typed too, and nothing may leak
          if (Models.countParameters(result.ok.model) <= 20_000 && stats.built < 60) {
            stats.built++
            const before = tf.memory().numTensors
            const built = outcome(() => Effect.runSyncExit(Effect.scoped(Models.build(result.ok.model, { seed: 1 }))))
            expect(built, m.description).not.toHaveProperty("untyped")
            if ("error" in built) expect(built.error, m.description).toBeInstanceOf(ConfigError)
            expect(tf.memory().numTensors).toBe(before)
          }
          return
        }
        stats.refused++
        const e = "error" in result ? result.error : undefined
        expect(e, m.description).toBeInstanceOf(ConfigError)
        const ce = e as ConfigError
        expect(ce.message.length, m.description).toBeGreaterThan(0)
        if (viaFile && !ce.path.includes(".json") && ce.path !== "<root>") {
          // a file's values went through JSON: judge the path against what was written
          const written = JSON.parse(JSON.stringify(m.input)) as Json
          expect(namesLeaf(written, keysOf(ce.path), m.touched, ce.message), `${m.description}: path ${ce.path}`).toBe(true)
        } else if (!viaFile) {
          const keys = keysOf(ce.path)
          expect(namesLeaf(m.input, keys, m.touched, ce.message), `${m.description}: path ${ce.path}`).toBe(true)
          // never the section above a field that was changed (defect 2: "solver" for solver.maxIter)
          const replaced = m.touched.some((t) => startsWith(keys, t))
          for (const t of m.touched) {
            if (!replaced && t.length > keys.length && startsWith(t, keys) && !namesLeaf(m.input, keys, [], ce.message)) {
              expect.fail(`${m.description}: path ${ce.path} stops above ${t.join(".")}`)
            }
          }
        }
      }),
      { numRuns: counts.configs, seed }
    )
    tally("configs", { ...stats, maxMs: Math.round(stats.maxMs) })
    expect(stats.untyped).toBe(0)
    // decoding is a pure check of a small value: no case comes near a hang
    expect(stats.maxMs).toBeLessThan(2000)
    expect(stats.accepted).toBeGreaterThan(0)
    expect(stats.refused).toBeGreaterThan(stats.cases / 4)
  }, 600_000)

  it("mutated suite settings of every preset: decoded, or a ConfigError at a leaf", () => {
    const decodeSuite = decode(SuiteConfig, "suite")
    const bases = presetFiles().map((p) => p.json.suite ?? {}).concat([{ defence: { rounds: 2, solverSteps: 2, inputSteps: 1, alpha: 0.1, eps: 0.1 }, eps: 0.1 }])
      .map((s) => JSON.parse(JSON.stringify(Effect.runSync(decodeSuite(s)))) as Json)
    const stats = { cases: 0, accepted: 0, refused: 0, untyped: 0 }
    fc.assert(
      fc.property(mutatedConfig(bases), (m) => {
        stats.cases++
        const result = outcome(() => Effect.runSyncExit(decodeSuite(m.input)))
        if ("untyped" in result) stats.untyped++
        expect(result, m.description).not.toHaveProperty("untyped")
        if (!("error" in result)) return void stats.accepted++
        stats.refused++
        expect(result.error).toBeInstanceOf(ConfigError)
        const p = (result.error as ConfigError).path
        expect(p.startsWith("suite"), p).toBe(true)
        expect(namesLeaf(m.input, keysOf(p, "suite"), m.touched, (result.error as ConfigError).message), `${m.description}: path ${p}`).toBe(true)
      }),
      { numRuns: counts.suites, seed }
    )
    tally("suites", stats)
    expect(stats.untyped).toBe(0)
  }, 600_000)
})

describe("the defects' inputs (regressions)", () => {
  const base = { model: { _tag: "fc" }, data: { name: "synthetic" } }
  const refused = (input: unknown) => {
    const r = outcome(() => Effect.runSyncExit(Train.decodeConfig(input)))
    expect(r).toHaveProperty("error")
    const e = "error" in r ? r.error : undefined
    expect(e).toBeInstanceOf(ConfigError)
    return e as ConfigError
  }

  it("defect 1: huge sizes are ConfigErrors at the field, saying what does not fit the 4 GiB wasm heap", () => {
    const image = refused({ ...base, model: { _tag: "fc", inputShape: [1099511627776, 28, 1] } })
    expect(image.path).toBe("model.inputShape.0")
    expect(image.message).toMatch(/wasm heap holds 4 GiB/)
    const data = refused({ ...base, data: { name: "synthetic", height: 100000, width: 100000 } })
    expect(data.path).toBe("data.height")
    expect(data.message).toMatch(/wasm heap holds 4 GiB/)
    const split = refused({ ...base, data: { name: "synthetic", trainSize: 2_000_000, height: 28, width: 28 } })
    expect(split.path).toBe("data.trainSize")
    expect(refused({ ...base, model: { _tag: "conv", channels: 100000 } }).path).toBe("model.channels")
    expect(refused({ ...base, model: { _tag: "multiscale", channels: [8, 200000] } }).path).toBe("model.channels.1")
    expect(refused({ ...base, model: { _tag: "fc", hidden: 8192, classes: 100000 } }).path).toBe("model.classes")
    // the models' own constructors refuse it the same way (nothing is allocated)
    const before = tf.memory().numTensors
    const direct = Effect.runSyncExit(Effect.scoped(Models.fc({ inputShape: [1099511627776, 28, 1] })))
    expect(Exit.isFailure(direct)).toBe(true)
    expect(tf.memory().numTensors).toBe(before)
  })

  it("defect 4: a FIFO given as --config is refused at once, naming the file", async () => {
    const { execFileSync } = await import("node:child_process")
    const fifo = path.join(tmp, "config.fifo")
    execFileSync("mkfifo", [fifo])
    const t0 = performance.now()
    const e = await Effect.runPromise(Effect.flip(loadConfigFile(fifo)))
    expect(performance.now() - t0).toBeLessThan(2000)
    expect(e.path).toBe(fifo)
    expect(e.message).toMatch(/not a regular file/)
  })

  it("defect 2: the path names the leaf through unions and optional fields", () => {
    expect(refused({ ...base, solver: { _tag: "broyden", maxIter: "NaN" } }).path).toBe("solver.maxIter")
    expect(refused({ ...base, solver: { _tag: "broydn" } }).path).toBe("solver._tag")
    expect(refused({ ...base, regularizers: { randomStates: { max: -1 } } }).path).toBe("regularizers.randomStates.max")
    expect(refused({ ...base, regularizers: { jacobian: { jitter: [1, "a"] } } }).path).toBe("regularizers.jacobian.jitter.1")
    expect(refused({ ...base, gradient: { _tag: "implicit", tol: -1 } }).path).toBe("gradient.tol")
    expect(refused({ ...base, model: { _tag: "conv", stemNorm: "batch" } }).path).toBe("model.stemNorm")
    expect(refused({ ...base, clip: "x" }).path).toBe("clip")
  })
})

describe("solver per-call options (defect 13)", () => {
  const solvers = {
    picard: () => FP.makePicardSync({ maxIter: 6 }),
    anderson: () => FP.makeAndersonSync({ maxIter: 6 }),
    broyden: () => FP.makeBroydenSync({ maxIter: 6 })
  }
  const contract: FP.FixedPointMap = (z) => tf.add(tf.mul(z, 0.5), 1)

  it.effect("fuzzed options: a result or a typed error (ConfigError at the key, StateSizeChanged), leak-free", () =>
    Effect.gen(function*() {
      const keys = ["maxIter", "maxIters", "tol", "stopMode", "returnMode", "tau", "m", "memory", "recordTrajectory", "x"]
      const values: ReadonlyArray<unknown> = [0, -1, 1, 3, 0.5, Number.NaN, Number.POSITIVE_INFINITY, "abs", "rel", "max", null, true, 1e9]
      const cases = fc.sample(
        fc.tuple(fc.constantFrom(...Object.keys(solvers) as Array<keyof typeof solvers>), fc.dictionary(fc.constantFrom(...keys), fc.constantFrom(...values), { maxKeys: 3 })),
        { numRuns: counts.solverOptions, seed }
      )
      const stats = { cases: 0, solved: 0, configErrors: 0, untyped: 0 }
      const before = tf.memory().numTensors
      for (const [name, options] of cases) {
        stats.cases++
        const z0 = tf.zeros([2, 3])
        const exit = yield* Effect.exit(Effect.scoped(solvers[name]().solve(contract, z0, options as Partial<FP.SolveOptions>)))
        z0.dispose()
        if (Exit.isSuccess(exit)) {
          stats.solved++
          continue
        }
        const failure = exit.cause.reasons.find(Cause.isFailReason)
        if (failure === undefined) stats.untyped++
        expect(failure, JSON.stringify(options)).toBeDefined()
        const e = failure!.error
        if (e instanceof ConfigError) {
          stats.configErrors++
          expect(Object.keys(options)).toContain(e.path)
        } else {
          // a huge budget on a contraction converges; any other failure must still be one of the solve errors
          expect(["NotConverged", "Diverged", "SingularSystem"]).toContain((e as { _tag: string })._tag)
        }
      }
      expect(tf.memory().numTensors).toBe(before)
      tally("solver-options", stats)
      expect(stats.untyped).toBe(0)
      expect(stats.configErrors).toBeGreaterThan(0)
    }))

  it.effect("the probes of defect 13 stay typed: maxIters, maxIter 0, tol NaN, a map that changes the state size", () =>
    Effect.gen(function*() {
      const before = tf.memory().numTensors
      const z0 = tf.zeros([2, 3])
      for (const make of Object.values(solvers)) {
        for (const [options, key] of [[{ maxIters: 5 }, "maxIters"], [{ maxIter: 0 }, "maxIter"], [{ tol: Number.NaN }, "tol"]] as const) {
          const e = yield* Effect.flip(Effect.scoped(make().solve(contract, z0, options as Partial<FP.SolveOptions>)))
          expect(e).toBeInstanceOf(ConfigError)
          expect((e as ConfigError).path).toBe(key)
        }
        const grow = yield* Effect.flip(Effect.scoped(make().solve((z) => tf.concat([z, z], 1), z0)))
        expect(grow).toBeInstanceOf(FP.StateSizeChanged)
        // diverging and NaN maps keep their typed errors (or a reported status), never a throw
        for (const bad of [(z: tf.Tensor) => tf.mul(tf.add(z, 1), 10), (z: tf.Tensor) => tf.mul(z, Number.NaN)]) {
          const exit = yield* Effect.exit(Effect.scoped(make().solve(bad, z0, { onNotConverged: "fail" } as Partial<FP.SolveOptions>)))
          if (Exit.isFailure(exit)) expect(exit.cause.reasons.some(Cause.isFailReason)).toBe(true)
        }
      }
      z0.dispose()
      expect(tf.memory().numTensors).toBe(before)
    }))
})
