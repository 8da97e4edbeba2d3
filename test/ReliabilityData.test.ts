/**
 * Reliability of dataset files (issue 16, defects 3, 4 and 6): the IDX corrupter (test/fault/datasets.ts) draws
 * corruptions of one file of a small IDX directory (gzipped or raw); every one must be a DatasetError naming that
 * file (or, for a count that no longer matches, its partner), or a load identical to the clean one, quickly and in
 * bounded memory. Then the defects' inputs: the issue's gzip bomb (972 KB inflating to 1,275,510 images) with
 * trainSize 512 in bounded memory, a header declaring more than the heap, FIFOs, and the error lines at the CLI.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
import fc from "fast-check"
import { afterAll, beforeAll } from "vitest"
import * as Data from "../src/Data.ts"
import { DatasetError } from "../src/Errors.ts"
import { useBackend } from "../src/Tensor.ts"
import { cleanFiles, dataCorruption, idx, writeBomb, writeDir } from "./fault/datasets.ts"
import { counts, seed, tally } from "./fault/mode.ts"

let root = ""
let clean: Data.Dataset

beforeAll(async () => {
  await useBackend("wasm")
  root = fs.mkdtempSync(path.join(os.tmpdir(), "deq-rel-data-"))
  writeDir(path.join(root, "clean"), cleanFiles(), true)
  clean = await Effect.runPromise(Data.fashionMnist({ dir: path.join(root, "clean") }))
})
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

let counter = 0

const sameSplit = (a: Data.Split, b: Data.Split) =>
  a.count === b.count && a.height === b.height && a.width === b.width &&
  Buffer.from(a.images.buffer).equals(Buffer.from(b.images.buffer)) && Buffer.from(a.labels.buffer).equals(Buffer.from(b.labels.buffer))

describe("IDX corrupter", () => {
  it("every corruption is a DatasetError naming the file, or an identical load; quick, bounded memory", async () => {
    const cases = fc.sample(fc.tuple(dataCorruption, fc.constantFrom(undefined, 3, 20)), { numRuns: counts.datasets, seed })
    const stats = { cases: 0, refused: 0, loaded: 0, maxMs: 0, maxRssMiB: 0 }
    const kinds = new Set<string>()
    for (const [c, trainSize] of cases) {
      stats.cases++
      kinds.add(c.kind)
      const dir = path.join(root, `case-${counter++}`)
      writeDir(dir, cleanFiles(), c.gz)
      c.apply(dir)
      const what = `${c.kind}: ${c.description} (trainSize ${trainSize})`
      const rss = process.memoryUsage().rss
      const t0 = performance.now()
      const exit = await Effect.runPromiseExit(Data.fashionMnist({ dir, ...(trainSize !== undefined ? { trainSize } : {}) }))
      stats.maxMs = Math.max(stats.maxMs, performance.now() - t0)
      stats.maxRssMiB = Math.max(stats.maxRssMiB, (process.memoryUsage().rss - rss) / 1024 ** 2)
      if (Exit.isSuccess(exit)) {
        stats.loaded++
        const expected = trainSize === undefined ? clean.train : Data.take(clean.train, trainSize)
        expect(sameSplit(exit.value.train, expected) && sameSplit(exit.value.test, clean.test), `${what} loaded different data`).toBe(true)
      } else {
        stats.refused++
        const fail = exit.cause.reasons.find(Cause.isFailReason)
        expect(fail, `${what}: ${Cause.pretty(exit.cause)}`).toBeDefined()
        const e = fail!.error
        expect(e, what).toBeInstanceOf(DatasetError)
        const blamed = c.blame.flatMap((f) => [path.join(dir, f), path.join(dir, `${f}.gz`)])
        expect(blamed, `${what}: blamed ${e.file}: ${e.message}`).toContain(e.file)
        expect(e.message.length).toBeGreaterThan(0)
      }
      fs.rmSync(dir, { recursive: true, force: true })
    }
    tally("datasets", { ...stats, maxMs: Math.round(stats.maxMs), maxRssMiB: Math.round(stats.maxRssMiB), kinds: kinds.size })
    expect(stats.maxMs).toBeLessThan(5000)
    expect(stats.maxRssMiB).toBeLessThan(256)
    expect(stats.refused).toBeGreaterThan(stats.cases / 2)
  }, 600_000)
})

describe("the defects' inputs (regressions)", () => {
  it("defect 6: the issue's gzip bomb with trainSize 512 loads 512 images in bounded memory", async () => {
    const dir = path.join(root, "bomb")
    await writeBomb(dir, 1_275_510)
    expect(fs.statSync(path.join(dir, "train-images-idx3-ubyte.gz")).size).toBeLessThan(1024 ** 2)
    global.gc?.()
    const rss = process.memoryUsage().rss
    let peak = rss
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20)
    const data = await Effect.runPromise(Data.fashionMnist({ dir, trainSize: 512 }))
    clearInterval(timer)
    peak = Math.max(peak, process.memoryUsage().rss)
    expect(data.train.count).toBe(512)
    expect(data.test.count).toBe(4)
    // 512 images are 1.6 MB of float32; the whole file would be 1 GB of bytes and 4 GB of floats
    expect((peak - rss) / 1024 ** 2).toBeLessThan(200)
    tally("gzip-bomb", { images: 1_275_510, kept: 512, peakRssMiB: Math.round((peak - rss) / 1024 ** 2) })
  }, 120_000)

  it("defect 6: a header declaring more than the heap is refused before its data is read", async () => {
    const dir = path.join(root, "huge-header")
    writeDir(dir, cleanFiles(), true)
    fs.writeFileSync(path.join(dir, "train-images-idx3-ubyte.gz"), (await import("node:zlib")).gzipSync(idx([2 ** 31, 28, 28], new Uint8Array(100))))
    const e = await Effect.runPromise(Effect.flip(Data.fashionMnist({ dir })))
    expect(e.file).toBe(path.join(dir, "train-images-idx3-ubyte.gz"))
    expect(e.message).toMatch(/wasm heap holds 4 GiB/)
    // raw: the size on disk is compared with the header before reading (a sparse 5 GiB file is not read)
    const raw = path.join(root, "sparse")
    writeDir(raw, cleanFiles(), false)
    fs.truncateSync(path.join(raw, "train-images-idx3-ubyte"), 5 * 1024 ** 3)
    const t0 = performance.now()
    const sparse = await Effect.runPromise(Effect.flip(Data.fashionMnist({ dir: raw })))
    expect(performance.now() - t0).toBeLessThan(1000)
    expect(sparse.message).toMatch(/unexpected byte\(s\) after the declared 20x6x5 images/)
  })

  it("defects 4 and 3: FIFOs are refused at once, naming the file; subset errors name trainSize / testSize", async () => {
    const { execFileSync } = await import("node:child_process")
    const dir = path.join(root, "fifo")
    writeDir(dir, cleanFiles(), false)
    const file = path.join(dir, "t10k-labels-idx1-ubyte")
    fs.rmSync(file)
    execFileSync("mkfifo", [file])
    const t0 = performance.now()
    const e = await Effect.runPromise(Effect.flip(Data.fashionMnist({ dir })))
    expect(performance.now() - t0).toBeLessThan(2000)
    expect(e.file).toBe(file)
    expect(e.message).toMatch(/FIFO/)
    const subset = await Effect.runPromise(Effect.flip(Data.fashionMnist({ dir: path.join(root, "clean"), testSize: 2147483648 })))
    expect(subset.message).toMatch(/testSize 2147483648 asks for more images than the file holds \(8\)/)
    // CIFAR-10 batches go through the same reader
    const cifar = path.join(root, "cifar-fifo")
    fs.mkdirSync(cifar)
    execFileSync("mkfifo", [path.join(cifar, "data_batch_1.bin")])
    const ce = await Effect.runPromise(Effect.flip(Data.cifar10({ dir: cifar })))
    expect(ce.file).toBe(path.join(cifar, "data_batch_1.bin"))
    expect(ce.message).toMatch(/FIFO/)
  })

  it("defect 1: a synthetic set too large for the heap is a DatasetError naming the key", async () => {
    const e = await Effect.runPromise(Effect.flip(Data.synthetic({ height: 100000, width: 100000 })))
    expect(e.message).toMatch(/^height: .*wasm heap holds 4 GiB/)
  })
})
