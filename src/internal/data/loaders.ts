/**
 * The dataset loaders behind src/Data.ts: the IDX datasets (MNIST, Fashion-MNIST), CIFAR-10's binary batches
 * and the synthetic set, each an Effect failing with a DatasetError that names the file and the problem.
 *
 * @internal
 */
import { Effect } from "effect"
import * as path from "node:path"
import type { Dataset, DatasetName, FileOptions, Split, SyntheticOptions } from "../../Data.ts"
import { DatasetError } from "../../Errors.ts"
import { exists, requireDirectory, resolveMaybeGz, scanFile } from "./files.ts"
import { type CifarBatch, cifarScanner, cifarSplit, fail, idxScanner, toUnit } from "./idx.ts"
import { prototypes, sizeProblem, type SyntheticParams, syntheticSplit } from "./synthetic.ts"

/** Class names of the loaders. */
export const digits = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
export const fashionNames = [
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot"
]
export const cifarNames = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

const checkSize = (file: string, key: string, value: number | undefined): Effect.Effect<void, DatasetError> =>
  value === undefined || (Number.isInteger(value) && value >= 1)
    ? Effect.void
    : Effect.fail(new DatasetError({ file, message: `${key} must be a positive integer, got ${value}` }))

const sameShape = (name: DatasetName, train: Split, test: Split, file: string, classNames: ReadonlyArray<string>) =>
  train.height === test.height && train.width === test.width && train.channels === test.channels
    ? Effect.succeed<Dataset>({
      name,
      train,
      test,
      classes: train.classes,
      shape: [train.height, train.width, train.channels],
      classNames
    })
    : Effect.fail(
      new DatasetError({
        file,
        message: `test images are ${test.height}x${test.width}x${test.channels} but train images are ` +
          `${train.height}x${train.width}x${train.channels}`
      })
    )

/** The split key a size came from, for messages. */
type SizeKey = "trainSize" | "testSize"

/**
 * One IDX split: the images file first (its header says how many images there are and how large), then the labels
 * file (its count must match before its data is read; every label is checked). Only the first `size` images are
 * kept in memory; the rest of each file is streamed through and checked.
 */
const idxSplit = (imagesFile: string, labelsFile: string, classes: number, size: number | undefined, key: SizeKey) =>
  Effect.gen(function*() {
    let n = 0
    let count = 0
    const images = yield* scanFile(imagesFile, (info) =>
      idxScanner(imagesFile, 3, info, {
        keep: (dims) => {
          n = dims[0]!
          count = size ?? n
          if (count > n) fail(imagesFile, `${key} ${count} asks for more images than the file holds (${n})`)
          return count
        }
      }))
    const labels = yield* scanFile(labelsFile, (info) =>
      idxScanner(labelsFile, 1, info, {
        keep: (dims) => {
          if (dims[0] !== n) fail(labelsFile, `count mismatch: ${dims[0]} labels but ${imagesFile} has ${n} images`)
          return count
        },
        check: (label, i) => {
          if (label >= classes) fail(labelsFile, `label ${label} at index ${i} is out of range 0..${classes - 1}`)
        }
      }))
    const [, height, width] = images.dims as [number, number, number]
    return {
      images: toUnit(images.data),
      labels: Int32Array.from(labels.data),
      count,
      height,
      width,
      channels: 1,
      classes
    }
  })

/** An IDX dataset (train-* and t10k-* images and labels, `.gz` or raw) from `dir`. */
export const idxDataset = Effect.fnUntraced(function*(
  name: DatasetName,
  dir: string,
  options: FileOptions,
  classNames: ReadonlyArray<string>
) {
  yield* checkSize(dir, "trainSize", options.trainSize)
  yield* checkSize(dir, "testSize", options.testSize)
  yield* requireDirectory(dir)
  const loadSplit = (prefix: string, size: number | undefined, key: SizeKey) =>
    Effect.gen(function*() {
      const [imagesFile, labelsFile] = yield* Effect.all([
        resolveMaybeGz(dir, `${prefix}-images-idx3-ubyte`),
        resolveMaybeGz(dir, `${prefix}-labels-idx1-ubyte`)
      ])
      return yield* idxSplit(imagesFile, labelsFile, 10, size, key)
    })
  const train = yield* loadSplit("train", options.trainSize, "trainSize")
  const test = yield* loadSplit("t10k", options.testSize, "testSize")
  return yield* sameShape(name, train, test, path.join(dir, "t10k-images-idx3-ubyte"), classNames)
})

/**
 * CIFAR-10 batches read in order, keeping the first `size` records across them (all without `size`); a `size`
 * beyond what they hold is an error naming the files and the key.
 */
const cifarSplitOf = (files: ReadonlyArray<string>, size: number | undefined, key: SizeKey) =>
  Effect.gen(function*() {
    const batches: Array<CifarBatch> = []
    let wanted = size ?? Infinity
    for (const file of files) {
      const batch = yield* scanFile(file, (info) => cifarScanner(file, info, 10, wanted))
      wanted -= batch.kept
      batches.push(batch)
    }
    const total = batches.reduce((a, b) => a + b.count, 0)
    if (size !== undefined && size > total) {
      return yield* new DatasetError({
        file: files.join(", "),
        message: `${key} ${size} asks for more images than the files hold (${total})`
      })
    }
    return cifarSplit(batches, 10)
  })

/** CIFAR-10 from `given` or its `cifar-10-batches-bin` folder. */
export const cifarDataset = (given: string, options: FileOptions): Effect.Effect<Dataset, DatasetError> =>
  Effect.gen(function*() {
    yield* checkSize(given, "trainSize", options.trainSize)
    yield* checkSize(given, "testSize", options.testSize)
    yield* requireDirectory(given)
    const nested = path.join(given, "cifar-10-batches-bin")
    const useNested = !(yield* exists(path.join(given, "data_batch_1.bin"))) &&
      (yield* exists(path.join(nested, "data_batch_1.bin")))
    const dir = useNested ? nested : given
    const trainFiles = [1, 2, 3, 4, 5].map((i) => path.join(dir, `data_batch_${i}.bin`))
    const testFile = path.join(dir, "test_batch.bin")
    const train = yield* cifarSplitOf(trainFiles, options.trainSize, "trainSize")
    const test = yield* cifarSplitOf([testFile], options.testSize, "testSize")
    return yield* sameShape("cifar10", train, test, testFile, cifarNames)
  })

/** The defaults of the synthetic dataset's options. */
export const syntheticDefaults: SyntheticParams = {
  classes: 10,
  height: 28,
  width: 28,
  channels: 1,
  trainSize: 1000,
  testSize: 200,
  noise: 0.3,
  seed: 0
}

const syntheticParams = (options: SyntheticOptions): Effect.Effect<SyntheticParams, DatasetError> => {
  const d = syntheticDefaults
  const p: SyntheticParams = {
    classes: options.classes ?? d.classes,
    height: options.height ?? d.height,
    width: options.width ?? d.width,
    channels: options.channels ?? d.channels,
    trainSize: options.trainSize ?? d.trainSize,
    testSize: options.testSize ?? d.testSize,
    noise: options.noise ?? d.noise,
    seed: options.seed ?? d.seed
  }
  const bad = (["classes", "height", "width", "channels", "trainSize", "testSize"] as const).find((k) =>
    !Number.isInteger(p[k]) || p[k] < (k === "classes" ? 2 : 1)
  )
  if (bad !== undefined) {
    return Effect.fail(
      new DatasetError({
        file: "synthetic",
        message: `${bad} must be an integer >= ${bad === "classes" ? 2 : 1}, got ${p[bad]}`
      })
    )
  }
  if (p.classes > 256 || p.channels > 4) {
    return Effect.fail(new DatasetError({ file: "synthetic", message: "at most 256 classes and 4 channels" }))
  }
  if (!Number.isFinite(p.noise) || p.noise < 0) {
    return Effect.fail(new DatasetError({ file: "synthetic", message: `noise must be >= 0, got ${p.noise}` }))
  }
  const size = sizeProblem(p)
  if (size !== undefined) {
    return Effect.fail(new DatasetError({ file: "synthetic", message: `${size.key}: ${size.message}` }))
  }
  if (!Number.isInteger(p.seed)) {
    return Effect.fail(new DatasetError({ file: "synthetic", message: `seed must be an integer, got ${p.seed}` }))
  }
  return Effect.succeed(p)
}

/** The synthetic dataset of validated options. */
export const syntheticDataset = (options: SyntheticOptions): Effect.Effect<Dataset, DatasetError> =>
  Effect.flatMap(syntheticParams(options), (p) =>
    Effect.sync((): Dataset => {
      const protos = prototypes(p)
      return {
        name: "synthetic",
        train: syntheticSplit(p, protos, p.trainSize, "train"),
        test: syntheticSplit(p, protos, p.testSize, "test"),
        classes: p.classes,
        shape: [p.height, p.width, p.channels],
        classNames: Array.from({ length: p.classes }, (_, k) => `class ${k}`)
      }
    }))
