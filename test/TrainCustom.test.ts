/**
 * Train.fit over a `Dynamics.DeqModel` of your own (not a built-in Models.Model): it trains, its checkpoint holds
 * its variables by name (and Adam's moments) with no model config, Checkpoint.load puts them back into a model
 * built by hand, an interrupted run resumes byte-identical to an uninterrupted one, and what cannot work (worker
 * threads, a head of the wrong width, two variables of one name, a checkpoint of another cell) is a typed error.
 */
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Logger } from "effect"
import * as Checkpoint from "../src/Checkpoint.ts"
import * as Data from "../src/Data.ts"
import * as Models from "../src/Models.ts"
import type * as Dynamics from "../src/Dynamics.ts"
import { CheckpointError, ConfigError } from "../src/Errors.ts"
import * as Train from "../src/Train.ts"
import { leakCheck, tf, useBackend, variable } from "../src/Tensor.ts"

beforeAll(async () => {
  await useBackend("wasm")
})

const dataset = Effect.runSync(Data.synthetic({ height: 8, width: 8, classes: 4, trainSize: 128, testSize: 64, seed: 2 }))

/** f(z, u) = tanh(z W + u), u = x U + b, logits z H; `prefix` names the variables */
const tanhCell = (o: { readonly classes?: number; readonly prefix?: string; readonly names?: ReadonlyArray<string> } = {}) =>
  Effect.gen(function*() {
    const prefix = o.prefix ?? "mycell"
    const [nU, nb, nW, nH] = o.names ?? ["U", "b", "W", "head"]
    const normal = (shape: [number, number], scale: number, seed: number) => () => tf.randomNormal(shape, 0, scale, "float32", seed)
    const U = yield* variable(normal([64, 16], 1 / 8, 1), `${prefix}/${nU}`)
    const b = yield* variable(() => tf.zeros([16]), `${prefix}/${nb}`)
    const W = yield* variable(normal([16, 16], 0.3 / 4, 2), `${prefix}/${nW}`)
    const H = yield* variable(normal([16, o.classes ?? 4], 1 / 4, 3), `${prefix}/${nH}`)
    const params = [
      { name: `${prefix}/${nU}`, variable: U },
      { name: `${prefix}/${nb}`, variable: b },
      { name: `${prefix}/${nW}`, variable: W },
      { name: `${prefix}/${nH}`, variable: H }
    ]
    const model: Dynamics.DeqModel = {
      params,
      parameterCount: params.reduce((n, p) => n + p.variable.size, 0),
      inject: (x) => tf.tidy(() => tf.add(tf.matMul(tf.reshape(x, [x.shape[0], 64]), U), b)),
      cell: (z, u) => tf.tidy(() => tf.tanh(tf.add(tf.matMul(z as tf.Tensor2D, W), u))),
      head: (z) => tf.tidy(() => tf.matMul(z as tf.Tensor2D, H)),
      initState: (u) => tf.zerosLike(u)
    }
    return model
  })

const config = (overrides: Record<string, unknown> = {}) =>
  Train.decodeConfigSync({
    data: { name: "synthetic", height: 8, width: 8, classes: 4, trainSize: 128, testSize: 64, seed: 2 },
    solver: { _tag: "anderson", maxIter: 6, tol: 1e-3 },
    method: { _tag: "pgd-at" },
    regularizers: { randomStates: {}, jacobian: { probability: 0.5 } },
    attack: { eps: 0.1, stepSize: 0.05, steps: 2 },
    eval: { subset: 32, batchSize: 32, steps: 2, every: 1 },
    epochs: 2,
    batchSize: 32,
    lr: 1e-2,
    seed: 3,
    ...overrides
  })

/** fit on a fresh cell in its own Scope, with the config's services; returns the summary and the final values */
const fitCell = (c: Train.TrainConfig, options: Train.FitOptions = {}, cell = tanhCell()) =>
  Effect.scoped(Effect.gen(function*() {
    const model = yield* cell
    const summary = yield* Train.fit(model, dataset, c, options)
    return { summary, values: new Map(model.params.map((p) => [p.name, Array.from(p.variable.dataSync())])) }
  })).pipe(Effect.provide(Train.layersFromConfig(c)))

const tempDir = () => Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "effect-deq-custom-")))
const bits = (dir: string) =>
  Effect.map(Checkpoint.read(dir), (k) =>
    new Map([...k.params, ...k.extras].map((t) => [t.name, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)])))

describe("Train.fit over a custom DeqModel", () => {
  it.effect("a built-in model with workers > 1 trains on this thread and says why in a warning", () =>
    Effect.gen(function*() {
      const warnings: Array<string> = []
      const capture = Logger.layer([
        Logger.make(({ message, logLevel }) => {
          if (logLevel === "Warn") warnings.push((Array.isArray(message) ? message : [message]).join(" "))
        })
      ])
      const c = config({ workers: 2, epochs: 1, model: { _tag: "fc", inputShape: [8, 8, 1], classes: 4, hidden: 16 } })
      const summary = yield* Effect.scoped(Effect.gen(function*() {
        const model = yield* Models.build(c.model, { seed: 1 })
        return yield* Train.fit(model, dataset, c)
      })).pipe(Effect.provide(Train.layersFromConfig(c)), Effect.provide(capture))
      expect(summary.complete).toBe(true)
      expect(warnings).toHaveLength(1)
      expect(warnings[0]).toMatch(/^workers 2 ignored: Train\.fit .* Train\.run\(config\) trains with the workers$/)
    }))


  it.effect("trains, checkpoints its variables by name, and Checkpoint.load restores them into a hand-built cell", () =>
    leakCheck(Effect.gen(function*() {
      const out = yield* tempDir()
      const c = config({ method: { _tag: "standard" }, regularizers: {}, epochs: 3 })
      const events: Array<Train.TrainEvent> = []
      const { summary, values } = yield* fitCell(c, { out, onEvent: (e) => Effect.sync(() => events.push(e)) })
      expect(summary.complete).toBe(true)
      expect((events[0] as Train.Started).parameterCount).toBe(64 * 16 + 16 + 16 * 16 + 16 * 4)
      const epochs = events.filter((e): e is Train.EpochDone => e._tag === "Epoch")
      expect(epochs.at(-1)!.loss).toBeLessThan(epochs[0]!.loss)
      expect(summary.lastEvaluation!.clean).toBeGreaterThan(0.5) // 4 classes: chance is 0.25
      const read = yield* Checkpoint.read(Train.checkpointDirs(out).last)
      expect(read.config).toBeUndefined()
      expect(read.params.map((p) => p.name).sort()).toEqual(["mycell/U", "mycell/W", "mycell/b", "mycell/head"])
      expect(read.extras.map((t) => t.name)).toContain("adam/m/mycell/W")
      // the training state's config has no model: it does not describe a custom cell
      expect(Object.keys(read.metadata.extra!["config"] as object)).not.toContain("model")
      const refused = yield* Effect.flip(Effect.scoped(Checkpoint.loadModel(Train.checkpointDirs(out).last)))
      expect(refused).toBeInstanceOf(CheckpointError)
      expect(refused.message).toMatch(/custom model.*Checkpoint\.load/)
      yield* Effect.scoped(Effect.gen(function*() {
        const fresh = yield* tanhCell()
        yield* Checkpoint.load(Train.checkpointDirs(out).last, fresh)
        for (const p of fresh.params) expect(Array.from(p.variable.dataSync()), p.name).toEqual(values.get(p.name))
      }))
      yield* Effect.promise(() => fs.rm(out, { recursive: true, force: true }))
    })))

  it.effect("an interrupted run (untilEpoch 1, then resume) ends byte-identical to an uninterrupted one", () =>
    leakCheck(Effect.gen(function*() {
      const c = config()
      const full = yield* tempDir(), out = yield* tempDir()
      const whole = yield* fitCell(c, { out: full })
      const first = yield* fitCell(c, { out, untilEpoch: 1 })
      expect(first.summary).toMatchObject({ epoch: 1, complete: false })
      const rest = yield* fitCell(c, { out, resume: true })
      expect(rest.summary).toMatchObject({ resumed: true, complete: true, step: whole.summary.step })
      expect(rest.summary.lastEvaluation!.robust).toBe(whole.summary.lastEvaluation!.robust)
      const a = yield* bits(Train.checkpointDirs(out).last), b = yield* bits(Train.checkpointDirs(full).last)
      expect([...a.keys()].sort()).toEqual([...b.keys()].sort())
      expect(a.size).toBe(4 * 3) // the variables and Adam's two moments of each
      for (const [name, buf] of a) expect(buf.equals(b.get(name)!), name).toBe(true)
      yield* Effect.promise(() => Promise.all([out, full].map((d) => fs.rm(d, { recursive: true, force: true }))))
    })))

  it.effect("worker threads, a head of the wrong width, duplicate names and another cell's checkpoint are typed errors", () =>
    leakCheck(Effect.gen(function*() {
      const workers = yield* Effect.flip(fitCell(config({ workers: 2 })))
      expect(workers).toBeInstanceOf(ConfigError)
      expect((workers as ConfigError).path).toBe("workers")
      expect(workers.message).toMatch(/custom DeqModel trains on the calling thread/)
      const wide = yield* Effect.flip(fitCell(config(), {}, tanhCell({ classes: 5 })))
      expect((wide as ConfigError).path).toBe("model")
      expect(wide.message).toMatch(/logits of shape \[1,5\].*4 classes/)
      const twice = yield* Effect.flip(fitCell(config(), {}, tanhCell({ names: ["U", "b", "W", "W"] })))
      expect((twice as ConfigError).path).toBe("model.params")
      const out = yield* tempDir()
      yield* fitCell(config({ epochs: 1 }), { out })
      const other = yield* Effect.flip(fitCell(config({ epochs: 1 }), { out, resume: true }, tanhCell({ prefix: "othercell" })))
      expect(other).toBeInstanceOf(CheckpointError)
      expect(other.message).toMatch(/othercell\/U.*missing/)
      yield* Effect.promise(() => fs.rm(out, { recursive: true, force: true }))
    })))
})
