import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { existsSync } from "node:fs"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import * as zlib from "node:zlib"
import { afterAll, beforeAll } from "vitest"
import { decode } from "../src/Config.ts"
import * as Data from "../src/Data.ts"
import { DatasetError } from "../src/Errors.ts"
import { useBackend } from "../src/Tensor.ts"

// ---------------------------------------------------------------------------------------------------------------
// fixtures
// ---------------------------------------------------------------------------------------------------------------

let tmp = ""
let mnist: Data.Dataset

beforeAll(async () => {
  await useBackend("wasm")
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), "effect-deq-data-"))
  mnist = await Effect.runPromise(Data.mnist())
})

afterAll(async () => {
  if (tmp !== "") await fs.rm(tmp, { recursive: true, force: true })
})

let dirCounter = 0
/** A fresh directory under the test's temp dir. */
const freshDir = async (): Promise<string> => {
  const dir = path.join(tmp, `case-${dirCounter++}`)
  await fs.mkdir(dir)
  return dir
}

const u32be = (n: number): Uint8Array => new Uint8Array([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255])

const concat = (...parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** An IDX file of unsigned bytes. */
const idx = (dims: ReadonlyArray<number>, data: Uint8Array, magic = 0x0800 | dims.length): Uint8Array =>
  concat(u32be(magic), ...dims.map(u32be), data)

/** Pixel byte of image i at position p of a small fixture. */
const pixel = (i: number, p: number): number => (i * 37 + p * 11) % 256

const idxImages = (n: number, h: number, w: number): Uint8Array =>
  idx([n, h, w], Uint8Array.from({ length: n * h * w }, (_, k) => pixel(Math.floor(k / (h * w)), k % (h * w))))

const idxLabels = (labels: ReadonlyArray<number>): Uint8Array => idx([labels.length], Uint8Array.from(labels))

interface IdxFixture {
  readonly trainImages?: Uint8Array
  readonly trainLabels?: Uint8Array
  readonly testImages?: Uint8Array
  readonly testLabels?: Uint8Array
  /** which files to gzip (default: all) */
  readonly gz?: (name: string) => boolean
}

const trainLabels = [0, 1, 2, 9, 4]
const testLabels = [3, 8, 7]

/** Writes a small Fashion-MNIST-like directory (5 train / 3 test images of 4x3) and returns its path. */
const writeIdxDir = async (fixture: IdxFixture = {}): Promise<string> => {
  const dir = await freshDir()
  const files: Record<string, Uint8Array | undefined> = {
    "train-images-idx3-ubyte": "trainImages" in fixture ? fixture.trainImages : idxImages(5, 4, 3),
    "train-labels-idx1-ubyte": "trainLabels" in fixture ? fixture.trainLabels : idxLabels(trainLabels),
    "t10k-images-idx3-ubyte": "testImages" in fixture ? fixture.testImages : idxImages(3, 4, 3),
    "t10k-labels-idx1-ubyte": "testLabels" in fixture ? fixture.testLabels : idxLabels(testLabels)
  }
  for (const [name, bytes] of Object.entries(files)) {
    if (bytes === undefined) continue
    const gz = fixture.gz?.(name) ?? true
    await fs.writeFile(path.join(dir, gz ? `${name}.gz` : name), gz ? zlib.gzipSync(bytes) : bytes)
  }
  return dir
}

const cifarPlane = 32 * 32
/** Byte of channel c at pixel p of CIFAR record n (n counts across files). */
const cifarByte = (n: number, c: number, p: number): number => (n * 29 + c * 83 + p * 7) % 256

/** CIFAR-10 records n0, n0+1, ... with labels `labels`. */
const cifarRecords = (n0: number, labels: ReadonlyArray<number>): Uint8Array => {
  const out = new Uint8Array(labels.length * (1 + 3 * cifarPlane))
  labels.forEach((label, r) => {
    const o = r * (1 + 3 * cifarPlane)
    out[o] = label
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < cifarPlane; p++) out[o + 1 + c * cifarPlane + p] = cifarByte(n0 + r, c, p)
    }
  })
  return out
}

const cifarTrainLabels = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]

/** A CIFAR-10 directory with 2 records per batch file; `edit` may replace or remove files. */
const writeCifarDir = async (
  edit: (files: Map<string, Uint8Array>) => void = () => {},
  nested = false
): Promise<{ root: string; dir: string }> => {
  const root = await freshDir()
  const dir = nested ? path.join(root, "cifar-10-batches-bin") : root
  if (nested) await fs.mkdir(dir)
  const files = new Map<string, Uint8Array>()
  for (let b = 0; b < 5; b++) {
    files.set(`data_batch_${b + 1}.bin`, cifarRecords(2 * b, cifarTrainLabels.slice(2 * b, 2 * b + 2)))
  }
  files.set("test_batch.bin", cifarRecords(100, [3, 5]))
  edit(files)
  for (const [name, bytes] of files) await fs.writeFile(path.join(dir, name), bytes)
  return { root, dir }
}

const range01 = (a: Float32Array): boolean => {
  let lo = Infinity, hi = -Infinity
  for (let i = 0; i < a.length; i++) {
    const v = a[i]!
    if (v < lo) lo = v
    if (v > hi) hi = v
  }
  return lo >= 0 && hi <= 1 && hi > lo
}

// ---------------------------------------------------------------------------------------------------------------
// MNIST
// ---------------------------------------------------------------------------------------------------------------

describe("MNIST (embedded)", () => {
  it("loads 60000/10000 28x28x1 images in [0, 1] with the known class counts", () => {
    expect(mnist.name).toBe("mnist")
    expect(mnist.shape).toEqual([28, 28, 1])
    expect(mnist.classes).toBe(10)
    for (const [split, count] of [[mnist.train, 60000], [mnist.test, 10000]] as const) {
      expect(split.count).toBe(count)
      expect(split.labels.length).toBe(count)
      expect(split.images.length).toBe(count * 28 * 28)
      expect([split.height, split.width, split.channels, split.classes]).toEqual([28, 28, 1, 10])
      expect(range01(split.images)).toBe(true)
    }
    const train = Array.from(Data.classCounts(mnist.train))
    const test = Array.from(Data.classCounts(mnist.test))
    expect(train).toEqual([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    expect(test).toEqual([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    expect(train.reduce((a, b) => a + b)).toBe(60000)
    expect(test.reduce((a, b) => a + b)).toBe(10000)
    // the first training digit is a 5 and first test digit a 7; pixels are bytes / 255 (exactly k/255)
    expect(mnist.train.labels[0]).toBe(5)
    expect(mnist.test.labels[0]).toBe(7)
    const first = mnist.train.images.subarray(0, 784)
    expect(first.every((v) => Math.abs(v * 255 - Math.round(v * 255)) < 1e-4)).toBe(true)
    expect(first.some((v) => v === 1)).toBe(true)
  })

  it.effect("trainSize / testSize keep the first N images", () =>
    Effect.gen(function*() {
      const small = yield* Data.mnist({ trainSize: 100, testSize: 30 })
      expect([small.train.count, small.test.count]).toEqual([100, 30])
      expect(small.train.labels).toEqual(mnist.train.labels.slice(0, 100))
      expect(small.test.images).toEqual(mnist.test.images.slice(0, 30 * 784))
      const tooMany = yield* Effect.flip(Data.mnist({ testSize: 10001 }))
      expect(tooMany.file).toMatch(/t10k-images-idx3-ubyte$/)
      expect(tooMany.message).toMatch(/10001/)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// Fashion-MNIST and IDX errors
// ---------------------------------------------------------------------------------------------------------------

describe("Fashion-MNIST (IDX files)", () => {
  it.effect("loads small .gz IDX files, and uncompressed ones", () =>
    Effect.gen(function*() {
      const gzDir = yield* Effect.promise(() => writeIdxDir())
      const rawTest = yield* Effect.promise(() => writeIdxDir({ gz: (name) => name.startsWith("train") }))
      for (const dir of [gzDir, rawTest]) {
        const data = yield* Data.fashionMnist({ dir })
        expect(data.name).toBe("fashion-mnist")
        expect(data.shape).toEqual([4, 3, 1])
        expect(data.classNames[9]).toBe("Ankle boot")
        expect(Array.from(data.train.labels)).toEqual(trainLabels)
        expect(Array.from(data.test.labels)).toEqual(testLabels)
        expect(data.train.count).toBe(5)
        expect(data.test.count).toBe(3)
        // image 2, row 1, col 2 is pixel p = 1*3 + 2
        expect(data.train.images[2 * 12 + 5]).toBeCloseTo(pixel(2, 5) / 255, 6)
        expect(data.test.images[2 * 12 + 11]).toBeCloseTo(pixel(2, 11) / 255, 6)
      }
      const subset = yield* Data.fashionMnist({ dir: gzDir, trainSize: 2 })
      expect(Array.from(subset.train.labels)).toEqual([0, 1])
      expect(subset.train.images.length).toBe(2 * 12)
    }))

  const fashionInstalled = existsSync(Data.defaultFashionMnistDir)
  if (!fashionInstalled) console.log(`skipped: loading the installed Fashion-MNIST (${Data.defaultFashionMnistDir} is absent; no package ships it)`)
  it.effect.skipIf(!fashionInstalled)("loads the installed Fashion-MNIST", () =>
    Effect.gen(function*() {
      const data = yield* Data.fashionMnist()
      expect([data.train.count, data.test.count]).toEqual([60000, 10000])
      expect(data.shape).toEqual([28, 28, 1])
      expect(Array.from(Data.classCounts(data.train))).toEqual(new Array(10).fill(6000))
      expect(Array.from(Data.classCounts(data.test))).toEqual(new Array(10).fill(1000))
      expect(range01(data.test.images)).toBe(true)
    }))
})

/** Loads a Fashion-MNIST fixture and returns its DatasetError. */
const idxFailure = (fixture: IdxFixture) =>
  Effect.gen(function*() {
    const dir = yield* Effect.promise(() => writeIdxDir(fixture))
    const error = yield* Effect.flip(Data.fashionMnist({ dir }))
    expect(error).toBeInstanceOf(DatasetError)
    expect(error._tag).toBe("DatasetError")
    return { dir, error }
  })

describe("bad dataset files give a DatasetError naming the file", () => {
  it.effect("missing directory", () =>
    Effect.gen(function*() {
      const dir = path.join(tmp, "does-not-exist")
      for (const load of [Data.fashionMnist, Data.mnist, Data.cifar10]) {
        const error = yield* Effect.flip(load({ dir }))
        expect(error._tag).toBe("DatasetError")
        expect(error.file).toBe(dir)
        expect(error.message).toMatch(/missing/)
      }
    }))

  it.effect("missing file", () =>
    Effect.gen(function*() {
      const { dir, error } = yield* idxFailure({ trainLabels: undefined })
      expect(error.file).toBe(path.join(dir, "train-labels-idx1-ubyte"))
      expect(error.message).toMatch(/missing/)
    }))

  it.effect("wrong magic number", () =>
    Effect.gen(function*() {
      const { dir, error } = yield* idxFailure({ trainImages: idx([5, 4, 3], new Uint8Array(60), 0x0801) })
      expect(error.file).toBe(path.join(dir, "train-images-idx3-ubyte.gz"))
      expect(error.message).toMatch(/magic number 0x00000801, expected 0x00000803/)
    }))

  it.effect("truncated file", () =>
    Effect.gen(function*() {
      const { dir, error } = yield* idxFailure({ testImages: idxImages(3, 4, 3).subarray(0, 16 + 30) })
      expect(error.file).toBe(path.join(dir, "t10k-images-idx3-ubyte.gz"))
      expect(error.message).toMatch(/truncated/)
      const header = yield* idxFailure({ testLabels: u32be(0x0801) })
      expect(header.error.file).toBe(path.join(header.dir, "t10k-labels-idx1-ubyte.gz"))
      expect(header.error.message).toMatch(/truncated/)
    }))

  it.effect("truncated gzip stream", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.promise(() => writeIdxDir())
      const file = path.join(dir, "train-images-idx3-ubyte.gz")
      const gz = yield* Effect.promise(() => fs.readFile(file))
      yield* Effect.promise(() => fs.writeFile(file, gz.subarray(0, gz.length - 12)))
      const error = yield* Effect.flip(Data.fashionMnist({ dir }))
      expect(error.file).toBe(file)
      expect(error.message).toMatch(/gzip/)
    }))

  it.effect("label / image count mismatch", () =>
    Effect.gen(function*() {
      const { dir, error } = yield* idxFailure({ trainLabels: idxLabels([0, 1, 2, 3]) })
      expect(error.file).toBe(path.join(dir, "train-labels-idx1-ubyte.gz"))
      expect(error.message).toMatch(/count mismatch: 4 labels but .*train-images-idx3-ubyte.gz has 5 images/)
    }))

  it.effect("label out of range", () =>
    Effect.gen(function*() {
      const { dir, error } = yield* idxFailure({ testLabels: idxLabels([3, 10, 7]) })
      expect(error.file).toBe(path.join(dir, "t10k-labels-idx1-ubyte.gz"))
      expect(error.message).toMatch(/label 10 at index 1 is out of range 0\.\.9/)
    }))

  it.effect("train and test image shapes differ", () =>
    Effect.gen(function*() {
      const { error } = yield* idxFailure({ testImages: idxImages(3, 3, 4) })
      expect(error.file).toMatch(/t10k-images-idx3-ubyte$/)
      expect(error.message).toMatch(/3x4x1 but train images are 4x3x1/)
    }))

  it.effect("CIFAR-10: missing, truncated, out-of-range files", () =>
    Effect.gen(function*() {
      const missing = yield* Effect.promise(() => writeCifarDir((files) => files.delete("data_batch_3.bin")))
      const e1 = yield* Effect.flip(Data.cifar10({ dir: missing.dir }))
      expect(e1.file).toBe(path.join(missing.dir, "data_batch_3.bin"))
      expect(e1.message).toMatch(/missing/)

      const truncated = yield* Effect.promise(() =>
        writeCifarDir((files) => files.set("test_batch.bin", files.get("test_batch.bin")!.subarray(0, 5000)))
      )
      const e2 = yield* Effect.flip(Data.cifar10({ dir: truncated.dir }))
      expect(e2.file).toBe(path.join(truncated.dir, "test_batch.bin"))
      expect(e2.message).toMatch(/truncated: 5000 bytes/)

      const label = yield* Effect.promise(() =>
        writeCifarDir((files) => files.set("data_batch_5.bin", cifarRecords(8, [0, 12])))
      )
      const e3 = yield* Effect.flip(Data.cifar10({ dir: label.dir }))
      expect(e3.file).toBe(path.join(label.dir, "data_batch_5.bin"))
      expect(e3.message).toMatch(/label 12 of record 1 is out of range/)

      const empty = yield* Effect.promise(() =>
        writeCifarDir((files) => files.set("data_batch_1.bin", new Uint8Array(0)))
      )
      const e4 = yield* Effect.flip(Data.cifar10({ dir: empty.dir }))
      expect(e4.file).toBe(path.join(empty.dir, "data_batch_1.bin"))
      expect(e4.message).toMatch(/empty/)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// CIFAR-10
// ---------------------------------------------------------------------------------------------------------------

describe("CIFAR-10 (binary batches)", () => {
  it.effect("converts channel-major records to NHWC 32x32x3", () =>
    Effect.gen(function*() {
      const { root } = yield* Effect.promise(() => writeCifarDir(undefined, true))
      // the directory holding cifar-10-batches-bin is accepted too
      const data = yield* Data.cifar10({ dir: root })
      expect(data.shape).toEqual([32, 32, 3])
      expect(data.classNames[0]).toBe("airplane")
      expect(data.train.count).toBe(10)
      expect(data.test.count).toBe(2)
      expect(Array.from(data.train.labels)).toEqual(cifarTrainLabels)
      expect(Array.from(data.test.labels)).toEqual([3, 5])
      // a known pixel: record 7 (second record of data_batch_4), row 5, column 9, green
      const p = 5 * 32 + 9
      expect(data.train.images[(7 * cifarPlane + p) * 3 + 1]).toBeCloseTo(cifarByte(7, 1, p) / 255, 6)
      // and every value of the test split
      const expected = new Float32Array(2 * cifarPlane * 3)
      for (let n = 0; n < 2; n++) {
        for (let q = 0; q < cifarPlane; q++) {
          for (let c = 0; c < 3; c++) expected[(n * cifarPlane + q) * 3 + c] = cifarByte(100 + n, c, q) / 255
        }
      }
      expect(data.test.images).toEqual(expected)
      // trainSize keeps the first N records across batch files
      const subset = yield* Data.cifar10({ dir: root, trainSize: 3 })
      expect(Array.from(subset.train.labels)).toEqual([1, 2, 3])
      expect(subset.train.images).toEqual(data.train.images.slice(0, 3 * cifarPlane * 3))
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// synthetic
// ---------------------------------------------------------------------------------------------------------------

/** Accuracy on `test` of the nearest class mean of `train`. */
const nearestMeanAccuracy = (train: Data.Split, test: Data.Split): number => {
  const pixels = train.height * train.width * train.channels
  const means = Array.from({ length: train.classes }, () => new Float64Array(pixels))
  const counts = Data.classCounts(train)
  for (let i = 0; i < train.count; i++) {
    const m = means[train.labels[i]!]!
    for (let j = 0; j < pixels; j++) m[j]! += train.images[i * pixels + j]! / counts[train.labels[i]!]!
  }
  let correct = 0
  for (let i = 0; i < test.count; i++) {
    let best = -1, bestD = Infinity
    means.forEach((m, k) => {
      let d = 0
      for (let j = 0; j < pixels; j++) d += (test.images[i * pixels + j]! - m[j]!) ** 2
      if (d < bestD) [best, bestD] = [k, d]
    })
    if (best === test.labels[i]) correct++
  }
  return correct / test.count
}

describe("synthetic", () => {
  it.effect("is seeded, in [0, 1], balanced and learnable", () =>
    Effect.gen(function*() {
      const options = { classes: 4, height: 8, width: 10, channels: 3, trainSize: 200, testSize: 100, noise: 0.3 }
      const a = yield* Data.synthetic({ ...options, seed: 1 })
      const b = yield* Data.synthetic({ ...options, seed: 1 })
      const c = yield* Data.synthetic({ ...options, seed: 2 })
      expect(a.shape).toEqual([8, 10, 3])
      expect(a.train.images.length).toBe(200 * 8 * 10 * 3)
      expect(a.train.images).toEqual(b.train.images)
      expect(a.test.images).toEqual(b.test.images)
      expect(a.train.images).not.toEqual(c.train.images)
      expect(a.train.images).not.toEqual(a.test.images.slice(0, a.train.images.length))
      expect(range01(a.train.images)).toBe(true)
      expect(Array.from(Data.classCounts(a.train))).toEqual([50, 50, 50, 50])
      expect(nearestMeanAccuracy(a.train, a.test)).toBeGreaterThan(0.9)
      // default size, more classes and more noise: still far above chance (0.1)
      const d = yield* Data.synthetic({ trainSize: 300, testSize: 100, noise: 0.6 })
      expect(d.shape).toEqual([28, 28, 1])
      expect(nearestMeanAccuracy(d.train, d.test)).toBeGreaterThan(0.6)
    }))

  it.effect("rejects bad options", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Data.synthetic({ classes: 1 }))
      expect(error._tag).toBe("DatasetError")
      expect(error.message).toMatch(/classes must be an integer >= 2/)
      const noise = yield* Effect.flip(Data.synthetic({ noise: -1 }))
      expect(noise.message).toMatch(/noise/)
    }))
})

// ---------------------------------------------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------------------------------------------

describe("DatasetConfig", () => {
  const decodeData = decode(Data.DatasetConfig, "data")

  it.effect("rejects unknown keys, naming them", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(decodeData({ name: "mnist", trainSzie: 100 }))
      expect(error._tag).toBe("ConfigError")
      expect(error.path).toBe("data.trainSzie")
      const name = yield* Effect.flip(decodeData({ name: "imagenet" }))
      expect(name.path).toBe("data.name")
      const wrongDataset = yield* Effect.flip(decodeData({ name: "mnist", noise: 0.1 }))
      expect(wrongDataset.path).toBe("data.noise")
      const dir = yield* Effect.flip(decodeData({ name: "synthetic", dir: "/tmp" }))
      expect(dir.path).toBe("data.dir")
      const size = yield* Effect.flip(decodeData({ name: "mnist", trainSize: 0 }))
      expect(size.path).toBe("data.trainSize")
    }))

  it.effect("load dispatches on the name", () =>
    Effect.gen(function*() {
      const defaults = yield* decodeData({})
      expect(defaults.name).toBe("mnist")
      const synthetic = yield* Data.load(
        yield* decodeData({ name: "synthetic", classes: 3, height: 6, width: 6, trainSize: 30, testSize: 9, seed: 4 })
      )
      expect(synthetic.name).toBe("synthetic")
      expect(synthetic.shape).toEqual([6, 6, 1])
      expect([synthetic.train.count, synthetic.test.count, synthetic.classes]).toEqual([30, 9, 3])
      const dir = yield* Effect.promise(() => writeIdxDir())
      const fashion = yield* Data.load(yield* decodeData({ name: "fashion-mnist", dir, testSize: 2 }))
      expect([fashion.name, fashion.train.count, fashion.test.count]).toEqual(["fashion-mnist", 5, 2])
      const digits = yield* Data.load(yield* decodeData({ trainSize: 10, testSize: 10 }))
      expect(Array.from(digits.train.labels)).toEqual(Array.from(mnist.train.labels.slice(0, 10)))
      const cifar = yield* Effect.flip(Data.load(yield* decodeData({ name: "cifar10", dir: path.join(tmp, "nope") })))
      expect(cifar.file).toBe(path.join(tmp, "nope"))
    }))
})
