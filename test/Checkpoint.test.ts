/**
 * Checkpoint: bit-exact round trips (parameters, config, metadata, extras), in-place loading, atomic overwrite,
 * failed writes that leave the previous checkpoint intact, and every corruption case as a CheckpointError naming
 * the file or tensor.
 */
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointError } from "../src/Errors.ts"
import * as Models from "../src/Models.ts"
import { leakCheck, tf, useBackend } from "../src/Tensor.ts"

let root = ""

beforeAll(async () => {
  await useBackend("wasm")
  root = await fs.mkdtemp(path.join(os.tmpdir(), "effect-deq-ckpt-"))
})

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true })
})

let counter = 0
const fresh = (name: string) => path.join(root, `${name}-${counter++}`, "ckpt")

const small = {
  fc: { _tag: "fc", inputShape: [8, 8, 1], hidden: 16, classes: 5 },
  conv: { _tag: "conv", inputShape: [8, 8, 1], channels: 4, expansion: 2, groups: 2, stemStride: 1, classes: 5 },
  multiscale: { _tag: "multiscale", inputShape: [8, 8, 1], channels: [4, 8], groups: 2, stemStride: 1, classes: 5 }
} as const

const buildSmall = (kind: keyof typeof small, seed: number, extra: object = {}) =>
  Effect.flatMap(Models.decodeConfig({ ...small[kind], ...extra }), (c) => Models.build(c, { seed }))

const values = (m: Models.Model) => m.params.map((p) => ({ name: p.name, data: p.variable.dataSync() as Float32Array }))

const expectSameParams = (a: Models.Model, b: Models.Model) => {
  expect(b.params.map((p) => p.name)).toEqual(a.params.map((p) => p.name))
  const va = values(a), vb = values(b)
  for (let i = 0; i < va.length; i++) {
    // bit-exact: compare the raw bytes, not approximately
    expect(new Uint8Array(vb[i]!.data.buffer.slice(0))).toEqual(new Uint8Array(va[i]!.data.buffer.slice(0)))
  }
}

const expectCheckpointError = <A>(
  effect: Effect.Effect<A, CheckpointError, any>,
  check: (e: CheckpointError) => void
) =>
  Effect.gen(function*() {
    const e = yield* Effect.flip(effect)
    expect(e).toBeInstanceOf(CheckpointError)
    check(e)
  })

/** a manifest edited on purpose, with its own checksum recomputed (so the deeper checks are what refuse it) */
const sealed = (m: Record<string, unknown>) => JSON.stringify({ ...m, checksum: Checkpoint.manifestChecksum(m) })

/** copies a checkpoint directory (so a corruption test never touches the original) */
const copyDir = (from: string, to: string) => Effect.promise(() => fs.cp(from, to, { recursive: true }))

describe("round trip", () => {
  it.effect("parameters, config, metadata and extras come back bit-exact", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const pkg = JSON.parse(yield* Effect.promise(() => fs.readFile(new URL("../package.json", import.meta.url), "utf8")))
      for (const kind of ["fc", "conv", "multiscale"] as const) {
        const model = yield* buildSmall(kind, 3)
        const dir = fresh(kind)
        const moment = tf.randomNormal([3, 4], 0, 1, "float32", 9)
        const steps = tf.tensor1d([7, -2, 2147483647], "int32")
        const manifest = yield* Checkpoint.save(dir, model, {
          metadata: { epoch: 4, step: 1200, seed: 3, extra: { lr: 0.001, note: "warm" } },
          extras: [{ name: "adam/m", tensor: moment }, { name: "adam/iter", tensor: steps }]
        })
        expect(manifest.tensors).toHaveLength(model.params.length + 2)
        const files = (yield* Effect.promise(() => fs.readdir(dir))).sort()
        expect(files).toEqual([Checkpoint.MANIFEST, Checkpoint.WEIGHTS])

        const loaded = yield* Checkpoint.loadModel(dir)
        expectSameParams(model, loaded.model)
        expect(Models.encodeConfig(loaded.config)).toEqual(Models.encodeConfig(model.config))
        expect(loaded.model.config).toBeInstanceOf(model.config.constructor)
        expect(loaded.metadata).toMatchObject({
          epoch: 4,
          step: 1200,
          seed: 3,
          extra: { lr: 0.001, note: "warm" },
          backend: "wasm",
          libraryVersion: pkg.version
        })
        expect(Number.isNaN(Date.parse(loaded.metadata.createdAt))).toBe(false)
        const byName = new Map(loaded.extras.map((e) => [e.name, e]))
        expect(byName.get("adam/m")!.data).toEqual(moment.dataSync())
        expect(byName.get("adam/m")!.shape).toEqual([3, 4])
        expect(byName.get("adam/iter")!.dtype).toBe("int32")
        expect(Array.from(byName.get("adam/iter")!.data)).toEqual([7, -2, 2147483647])
        const back = Checkpoint.toTensor(byName.get("adam/iter")!)
        expect(back.dtype).toBe("int32")
        tf.dispose([moment, steps, back])
      }
    }))))

  it.effect("loading into an existing model assigns its variables in place", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const source = yield* buildSmall("conv", 1)
      const target = yield* buildSmall("conv", 2)
      const before = target.params.map((p) => p.variable)
      const dir = fresh("inplace")
      yield* Checkpoint.save(dir, source, { metadata: { epoch: 1 } })
      const info = yield* Checkpoint.load(dir, target)
      expect(info.metadata.epoch).toBe(1)
      expect(target.params.map((p) => p.variable)).toEqual(before) // same variable objects
      expectSameParams(source, target)
    }))))

  it.effect("overwriting replaces the checkpoint and leaves no temporary directories", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const a = yield* buildSmall("fc", 1)
      const b = yield* buildSmall("fc", 2)
      const dir = fresh("overwrite")
      yield* Checkpoint.save(dir, a, { metadata: { epoch: 1 } })
      yield* Checkpoint.save(dir, b, { metadata: { epoch: 2 } })
      const loaded = yield* Checkpoint.loadModel(dir)
      expect(loaded.metadata.epoch).toBe(2)
      expectSameParams(b, loaded.model)
      expect(yield* Effect.promise(() => fs.readdir(path.dirname(dir)))).toEqual(["ckpt"])
    }))))
})

describe("failed writes keep the previous checkpoint", () => {
  it.effect("a tensor that cannot be read mid-write, a duplicate name, a bad dtype", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const a = yield* buildSmall("fc", 1)
      const b = yield* buildSmall("fc", 2)
      const dir = fresh("failed")
      yield* Checkpoint.save(dir, a, { metadata: { epoch: 1 } })
      const gone = tf.zeros([2])
      gone.dispose()
      const ok = tf.ones([2])
      const bools = tf.tensor1d([true, false], "bool")
      // the disposed tensor comes after every parameter: the failure happens half-way through weights.bin
      yield* expectCheckpointError(
        Checkpoint.save(dir, b, { metadata: { epoch: 2 }, extras: [{ name: "opt/ok", tensor: ok }, { name: "opt/gone", tensor: gone }] }),
        (e) => {
          expect(e.tensor).toBe("opt/gone")
          expect(e.message).toContain("disposed")
        }
      )
      yield* expectCheckpointError(
        Checkpoint.save(dir, b, { extras: [{ name: "fc/cell/W", tensor: ok }] }),
        (e) => expect(e.tensor).toBe("fc/cell/W")
      )
      yield* expectCheckpointError(
        Checkpoint.save(dir, b, { extras: [{ name: "mask", tensor: bools }] }),
        (e) => expect(e.message).toContain("bool")
      )
      // the old checkpoint is intact, and no temporary directory is left behind
      expect(yield* Effect.promise(() => fs.readdir(path.dirname(dir)))).toEqual(["ckpt"])
      const loaded = yield* Checkpoint.loadModel(dir)
      expect(loaded.metadata.epoch).toBe(1)
      expectSameParams(a, loaded.model)
      tf.dispose([ok, bools])
    }))))

  it.effect("a target that is a file is refused", () =>
    Effect.gen(function*() {
      const file = fresh("file")
      yield* Effect.promise(async () => {
        await fs.mkdir(path.dirname(file), { recursive: true })
        await fs.writeFile(file, "not a checkpoint")
      })
      yield* expectCheckpointError(
        Effect.scoped(Effect.flatMap(Effect.orDie(buildSmall("fc", 1)), (m) => Checkpoint.save(file, m))),
        (e) => expect(e.message).toContain("not a directory")
      )
      expect(yield* Effect.promise(() => fs.readFile(file, "utf8"))).toBe("not a checkpoint")
    }))
})

describe("corruption", () => {
  it.effect("every broken file is a CheckpointError naming it; the original stays loadable", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const model = yield* buildSmall("fc", 1)
      const good = fresh("good")
      yield* Checkpoint.save(good, model, { metadata: { epoch: 5 } })
      const manifestText = yield* Effect.promise(() => fs.readFile(path.join(good, Checkpoint.MANIFEST), "utf8"))
      const manifest = JSON.parse(manifestText)

      const cases: ReadonlyArray<{
        readonly name: string
        readonly corrupt: (dir: string) => Promise<void>
        readonly file: string
        readonly tensor?: string
        readonly message: RegExp
      }> = [
        {
          name: "truncated weights",
          corrupt: async (d) => {
            const w = await fs.readFile(path.join(d, Checkpoint.WEIGHTS))
            await fs.writeFile(path.join(d, Checkpoint.WEIGHTS), w.subarray(0, w.length - 10))
          },
          file: Checkpoint.WEIGHTS,
          message: /truncated/
        },
        {
          name: "flipped byte",
          corrupt: async (d) => {
            const w = await fs.readFile(path.join(d, Checkpoint.WEIGHTS))
            w[100] = w[100]! ^ 0xff
            await fs.writeFile(path.join(d, Checkpoint.WEIGHTS), w)
          },
          file: Checkpoint.WEIGHTS,
          message: /checksum/
        },
        {
          name: "bad JSON",
          corrupt: (d) => fs.writeFile(path.join(d, Checkpoint.MANIFEST), manifestText.slice(0, 50)),
          file: Checkpoint.MANIFEST,
          message: /invalid JSON/
        },
        {
          name: "unknown manifest key",
          corrupt: (d) => fs.writeFile(path.join(d, Checkpoint.MANIFEST), JSON.stringify({ ...manifest, extraKey: 1 })),
          file: Checkpoint.MANIFEST,
          message: /extraKey/
        },
        {
          name: "bad model config",
          corrupt: (d) =>
            fs.writeFile(path.join(d, Checkpoint.MANIFEST), JSON.stringify({ ...manifest, config: { ...manifest.config, hidden: -1 } })),
          file: Checkpoint.MANIFEST,
          message: /model config/
        },
        {
          name: "missing weights",
          corrupt: (d) => fs.rm(path.join(d, Checkpoint.WEIGHTS)),
          file: Checkpoint.WEIGHTS,
          message: /ENOENT/
        },
        {
          name: "missing manifest",
          corrupt: (d) => fs.rm(path.join(d, Checkpoint.MANIFEST)),
          file: Checkpoint.MANIFEST,
          message: /ENOENT/
        },
        {
          name: "tensor extent outside weights.bin",
          corrupt: (d) => {
            const tensors = manifest.tensors.map((t: any, i: number) => (i === 1 ? { ...t, offset: manifest.weights.bytes } : t))
            return fs.writeFile(path.join(d, Checkpoint.MANIFEST), sealed({ ...manifest, tensors }))
          },
          file: Checkpoint.MANIFEST,
          tensor: manifest.tensors[1].name,
          message: /outside/
        },
        {
          name: "shape inconsistent with its bytes",
          corrupt: (d) => {
            const tensors = manifest.tensors.map((t: any, i: number) => (i === 2 ? { ...t, shape: [3, 3] } : t))
            return fs.writeFile(path.join(d, Checkpoint.MANIFEST), sealed({ ...manifest, tensors }))
          },
          file: Checkpoint.MANIFEST,
          tensor: manifest.tensors[2].name,
          message: /do not hold/
        },
        {
          name: "config edited (act changed), checksum not recomputed",
          corrupt: (d) =>
            fs.writeFile(path.join(d, Checkpoint.MANIFEST), JSON.stringify({ ...manifest, config: { ...manifest.config, act: "tanh" } })),
          file: Checkpoint.MANIFEST,
          message: /manifest checksum mismatch/
        },
        {
          name: "config and tensors disagree (hidden changed, resealed)",
          corrupt: (d) =>
            fs.writeFile(path.join(d, Checkpoint.MANIFEST), sealed({ ...manifest, config: { ...manifest.config, hidden: 8 } })),
          file: Checkpoint.MANIFEST,
          tensor: "fc/inject/U",
          message: /shape \[64,16\].*\[64,8\]/
        }
      ]
      for (const c of cases) {
        const dir = fresh("corrupt")
        yield* copyDir(good, dir)
        yield* Effect.promise(() => c.corrupt(dir))
        yield* expectCheckpointError(Checkpoint.loadModel(dir), (e) => {
          expect(e.path, c.name).toBe(path.join(dir, c.file))
          expect(e.message, c.name).toMatch(c.message)
          if (c.tensor !== undefined) expect(e.tensor, c.name).toBe(c.tensor)
        })
      }
      const missing = path.join(root, "nowhere", "ckpt")
      yield* expectCheckpointError(Checkpoint.read(missing), (e) => expect(e.path).toBe(missing))

      // the original still loads after all of that
      const loaded = yield* Checkpoint.loadModel(good)
      expect(loaded.metadata.epoch).toBe(5)
      expectSameParams(model, loaded.model)
    }))))

  it.effect("loading into a model of another shape names the tensor and assigns nothing", () =>
    leakCheck(Effect.scoped(Effect.gen(function*() {
      const source = yield* buildSmall("fc", 1, { hidden: 16 })
      const dir = fresh("mismatch")
      yield* Checkpoint.save(dir, source)
      const other = yield* buildSmall("fc", 2, { hidden: 8 })
      const snapshot = values(other)
      yield* expectCheckpointError(Checkpoint.load(dir, other), (e) => {
        expect(e.tensor).toBe("fc/inject/U")
        expect(e.message).toContain("[64,16]")
      })
      expect(values(other)).toEqual(snapshot)
      // a model with a parameter the checkpoint lacks (LayerNorm gain) and vice versa
      const noNorm = yield* buildSmall("fc", 2, { norm: "none" })
      yield* expectCheckpointError(Checkpoint.load(dir, noNorm), (e) => expect(e.tensor).toBe("fc/cell/norm/gamma"))
      const plainDir = fresh("plain")
      yield* Checkpoint.save(plainDir, noNorm)
      yield* expectCheckpointError(Checkpoint.load(plainDir, source), (e) => {
        expect(e.tensor).toBe("fc/cell/norm/gamma")
        expect(e.message).toContain("missing")
      })
      const conv = yield* buildSmall("conv", 1)
      yield* expectCheckpointError(Checkpoint.load(dir, conv), (e) => expect(e.tensor).toMatch(/^conv\//))
    }))))
})
