/**
 * Reliability of checkpoints (issue 16, defects 1, 4-8): the corrupter (test/fault/checkpoints.ts) draws
 * corruptions of a good checkpoint; every one must be a typed CheckpointError or a load identical to the original,
 * no failed load may touch the model it loads into, no load may hang or read a huge file, and the tensor count is
 * flat on every path. Then the defects' own inputs as regressions, and what an interrupted swap leaves.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll } from "vitest"
import * as Checkpoint from "../src/Checkpoint.ts"
import { CheckpointError } from "../src/Errors.ts"
import * as Models from "../src/Models.ts"
import { tf, useBackend } from "../src/Tensor.ts"
import { corruption } from "./fault/checkpoints.ts"
import { counts, seed, tally } from "./fault/mode.ts"

let root = ""
let good = ""
let manifest: Record<string, any> = {}
/** the saved model's parameters and extras, as bytes */
let original: Map<string, Buffer>

const config = { _tag: "fc", inputShape: [8, 8, 1], hidden: 16, classes: 4 } as const
const buildModel = (seed: number) => Effect.flatMap(Models.decodeConfig(config), (c) => Models.build(c, { seed }))

const bytesOf = (data: ArrayLike<number> & { buffer: ArrayBufferLike; byteOffset: number; byteLength: number }) =>
  Buffer.from(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
const paramBytes = (model: Models.Model) => new Map(model.params.map((p) => [p.name, bytesOf(p.variable.dataSync() as Float32Array)]))
const storedBytes = (tensors: ReadonlyArray<Checkpoint.StoredTensor>) => new Map(tensors.map((t) => [t.name, bytesOf(t.data)]))

beforeAll(async () => {
  await useBackend("wasm")
  root = fs.mkdtempSync(path.join(os.tmpdir(), "deq-rel-ckpt-"))
  good = path.join(root, "good", "ckpt")
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const model = yield* buildModel(1)
    const m = tf.randomNormal([16, 4], 0, 1, "float32", 3)
    const step = tf.tensor1d([12], "int32")
    yield* Checkpoint.save(good, model, {
      metadata: { epoch: 3, step: 40, seed: 1, extra: { note: "reliability" } },
      extras: [{ name: "adam/m", tensor: m }, { name: "adam/step", tensor: step }]
    })
    tf.dispose([m, step])
  })))
  manifest = JSON.parse(fs.readFileSync(path.join(good, Checkpoint.MANIFEST), "utf8"))
  const read = await Effect.runPromise(Checkpoint.read(good))
  original = new Map([...storedBytes(read.params), ...storedBytes(read.extras)])
})

afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

let counter = 0
const copy = () => {
  const dir = path.join(root, `case-${counter++}`, "ckpt")
  fs.mkdirSync(path.dirname(dir), { recursive: true })
  fs.cpSync(good, dir, { recursive: true })
  return dir
}

/** The failure of an exit, which must be a typed CheckpointError (never a defect). */
const failureOf = (exit: Exit.Exit<unknown, unknown>, what: string): CheckpointError => {
  expect(Exit.isFailure(exit), what).toBe(true)
  const cause = (exit as Exit.Failure<unknown, unknown>).cause
  const fail = cause.reasons.find(Cause.isFailReason)
  expect(fail, `${what}: ${Cause.pretty(cause)}`).toBeDefined()
  expect(fail!.error, what).toBeInstanceOf(CheckpointError)
  return fail!.error as CheckpointError
}

const expectIdentical = (loaded: Map<string, Buffer>, what: string) => {
  for (const [name, bytes] of loaded) expect(bytes.equals(original.get(name)!), `${what}: ${name}`).toBe(true)
}

describe("checkpoint corrupter", () => {
  it("every corruption is a CheckpointError or an identical load; the target model is never touched", async () => {
    const cases = fc.sample(corruption(manifest), { numRuns: counts.checkpoints, seed })
    const kinds = new Map<string, number>()
    const loadedKinds = new Set<string>()
    const stats = { cases: 0, refused: 0, loaded: 0, maxMs: 0, maxRssMiB: 0 }
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const target = yield* buildModel(2)
      for (const c of cases) {
        stats.cases++
        kinds.set(c.kind, (kinds.get(c.kind) ?? 0) + 1)
        const dir = copy()
        c.apply(dir)
        const what = `${c.kind}: ${c.description}`
        const snapshot = paramBytes(target)
        const tensors = tf.memory().numTensors
        const rss = process.memoryUsage().rss
        const t0 = performance.now()
        const into = yield* Effect.exit(Checkpoint.load(dir, target))
        const built = yield* Effect.exit(Effect.scoped(Effect.map(Checkpoint.loadModel(dir), (l) => ({ params: paramBytes(l.model), extras: storedBytes(l.extras) }))))
        stats.maxMs = Math.max(stats.maxMs, performance.now() - t0)
        stats.maxRssMiB = Math.max(stats.maxRssMiB, (process.memoryUsage().rss - rss) / 1024 ** 2)
        expect(tf.memory().numTensors, what).toBe(tensors)
        if (Exit.isSuccess(into) || Exit.isSuccess(built)) {
          expect(c.mayLoad, `${what} loaded`).toBe(true)
          expect(Exit.isSuccess(into) && Exit.isSuccess(built), what).toBe(true)
          expectIdentical(paramBytes(target), what)
          if (Exit.isSuccess(built)) {
            expectIdentical(built.value.params, what)
            expectIdentical(built.value.extras, what)
          }
          stats.loaded++
          loadedKinds.add(c.kind)
        } else {
          stats.refused++
          failureOf(into, what)
          failureOf(built, what)
          // nothing was assigned
          for (const [name, bytes] of paramBytes(target)) expect(bytes.equals(snapshot.get(name)!), `${what}: ${name} changed`).toBe(true)
        }
        fs.rmSync(path.dirname(dir), { recursive: true, force: true })
      }
    })))
    tally("checkpoints", { ...stats, maxMs: Math.round(stats.maxMs), maxRssMiB: Math.round(stats.maxRssMiB), kinds: kinds.size, loadedKinds: [...loadedKinds].sort().join("/") || "none" })
    // a FIFO never blocks and a sparse 1.5 GiB weights.bin is never read: every case is quick and small
    expect(stats.maxMs).toBeLessThan(5000)
    expect(stats.maxRssMiB).toBeLessThan(256)
    expect(stats.refused).toBeGreaterThan(stats.cases / 2)
  }, 600_000)
})

describe("the defects' inputs (regressions)", () => {
  const rewrite = (dir: string, edit: (m: Record<string, any>) => Record<string, any>, seal = true) => {
    const m = edit(JSON.parse(fs.readFileSync(path.join(dir, Checkpoint.MANIFEST), "utf8")))
    fs.writeFileSync(path.join(dir, Checkpoint.MANIFEST), JSON.stringify(seal ? { ...m, checksum: Checkpoint.manifestChecksum(m) } : m))
  }
  const refused = (dir: string) => Effect.runPromise(Effect.flip(Effect.scoped(Checkpoint.loadModel(dir))))

  it("defect 5: duplicate offsets, an edited act, NaN weights with a recomputed sha256 are refused", async () => {
    const dup = copy()
    rewrite(dup, (m) => ({ ...m, tensors: m.tensors.map((t: any) => (t.name === "fc/inject/b" ? { ...t, offset: 0 } : t)) }))
    expect((await refused(dup)).message).toMatch(/overlaps/)
    const act = copy()
    rewrite(act, (m) => ({ ...m, config: { ...m.config, act: "tanh" } }), false)
    expect((await refused(act)).message).toMatch(/manifest checksum mismatch/)
    const nan = copy()
    const w = fs.readFileSync(path.join(nan, Checkpoint.WEIGHTS))
    new Float32Array(w.buffer, w.byteOffset, w.length / 4)[5] = Number.NaN
    fs.writeFileSync(path.join(nan, Checkpoint.WEIGHTS), w)
    const { createHash } = await import("node:crypto")
    rewrite(nan, (m) => ({ ...m, weights: { ...m.weights, sha256: createHash("sha256").update(w).digest("hex") } }))
    const e = await refused(nan)
    expect(e.message).toMatch(/NaN at index 5/)
    expect(e.tensor).toBe("fc/inject/U")
  })

  it("defect 5: a model with a non-finite weight is refused at save, and the previous checkpoint stays", async () => {
    const dir = copy()
    const e = await Effect.runPromise(Effect.flip(Effect.scoped(Effect.gen(function*() {
      const model = yield* buildModel(3)
      model.params[0]!.variable.assign(tf.fill(model.params[0]!.variable.shape as Array<number>, Number.POSITIVE_INFINITY))
      return yield* Checkpoint.save(dir, model)
    }))))
    expect(e.message).toMatch(/Infinity at index 0/)
    expect(fs.readdirSync(path.dirname(dir))).toEqual(["ckpt"])
    const read = await Effect.runPromise(Checkpoint.read(dir))
    expect(read.metadata.epoch).toBe(3)
  })

  it("defect 1: a huge inputShape in checkpoint.json is a CheckpointError naming the wasm heap, nothing allocated", async () => {
    const dir = copy()
    rewrite(dir, (m) => ({ ...m, config: { ...m.config, inputShape: [1099511627776, 28, 1] } }))
    const before = tf.memory().numTensors
    const e = await refused(dir)
    expect(e.message).toMatch(/model config.*inputShape\.0.*wasm heap holds 4 GiB/)
    expect(tf.memory().numTensors).toBe(before)
  })

  it("defects 4 and 6: FIFOs are refused at once; a sparse 1.5 GiB weights.bin is refused by its size", async () => {
    const { execFileSync } = await import("node:child_process")
    for (const file of [Checkpoint.WEIGHTS, Checkpoint.MANIFEST]) {
      const dir = copy()
      fs.rmSync(path.join(dir, file))
      execFileSync("mkfifo", [path.join(dir, file)])
      const t0 = performance.now()
      const e = await refused(dir)
      expect(performance.now() - t0).toBeLessThan(2000)
      expect(e.path).toBe(path.join(dir, file))
      expect(e.message).toMatch(/FIFO/)
    }
    const sparse = copy()
    fs.truncateSync(path.join(sparse, Checkpoint.WEIGHTS), 1.5 * 1024 ** 3)
    const rss = process.memoryUsage().rss
    const t0 = performance.now()
    const e = await refused(sparse)
    expect(performance.now() - t0).toBeLessThan(1000)
    expect(process.memoryUsage().rss - rss).toBeLessThan(64 * 1024 ** 2)
    expect(e.message).toMatch(/too long: 1610612736 bytes, the manifest says/)
  })

  it("defects 7 and 8: the newest complete copy next to an absent target is read, recovered, then cleaned up", async () => {
    const dir = copy()
    const parent = path.dirname(dir)
    // a kill between the two renames: the previous checkpoint aside, the new one complete in its temporary dir
    const aside = path.join(parent, ".ckpt.old-999999999-00000001")
    const tmp = path.join(parent, ".ckpt.tmp-999999999-00000002")
    fs.cpSync(dir, tmp, { recursive: true })
    rewrite(tmp, (m) => ({ ...m, metadata: { ...m.metadata, epoch: 4, createdAt: new Date(Date.now() + 1000).toISOString() } }))
    fs.renameSync(dir, aside)
    // and a stale, incomplete temporary directory of an older kill
    fs.mkdirSync(path.join(parent, ".ckpt.tmp-999999998-00000003"))
    expect(await Effect.runPromise(Checkpoint.present(dir))).toBe(true)
    const read = await Effect.runPromise(Checkpoint.read(dir))
    expect(read.dir).toBe(tmp)
    expect(read.metadata.epoch).toBe(4)
    // read never moves anything; recover completes the swap and removes the leftovers
    expect(fs.existsSync(dir)).toBe(false)
    expect(await Effect.runPromise(Checkpoint.recover(dir))).toBe(dir)
    expect(fs.readdirSync(parent)).toEqual(["ckpt"])
    expect((await Effect.runPromise(Checkpoint.read(dir))).metadata.epoch).toBe(4)
    // nothing to recover: undefined, and nothing created
    const empty = path.join(root, "empty-run", "last")
    expect(await Effect.runPromise(Checkpoint.recover(empty))).toBeUndefined()
    expect(fs.existsSync(empty)).toBe(false)
  })

  it("defect 8: a successful save removes what killed saves left; a live writer's copies are kept", async () => {
    const dir = copy()
    const parent = path.dirname(dir)
    fs.mkdirSync(path.join(parent, ".ckpt.tmp-999999999-0000aaaa"))
    fs.mkdirSync(path.join(parent, ".ckpt.old-999999999-0000bbbb"))
    // this test's parent process is alive: its copies are not stale
    const live = path.join(parent, `.ckpt.tmp-${process.ppid}-0000cccc`)
    fs.mkdirSync(live)
    await Effect.runPromise(Effect.scoped(Effect.flatMap(buildModel(4), (m) => Checkpoint.save(dir, m))))
    expect(fs.readdirSync(parent).sort()).toEqual([path.basename(live), "ckpt"].sort())
  })
})
