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
import { exists, readBytes, requireDirectory, resolveMaybeGz } from "./files.ts"
import { checkCifarBatch, cifarSplit, idxSplit } from "./idx.ts"
import { prototypes, type SyntheticParams, syntheticSplit } from "./synthetic.ts"

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

/** Runs a synchronous parser; anything it throws that is not already a DatasetError is attributed to `file`. */
const parse = <A>(file: string, f: () => A): Effect.Effect<A, DatasetError> =>
  Effect.try({
    try: f,
    catch: (e) => (e instanceof DatasetError ? e : new DatasetError({ file, message: String(e) }))
  })

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
  const loadSplit = (prefix: string, size: number | undefined) =>
    Effect.gen(function*() {
      const [imagesFile, labelsFile] = yield* Effect.all([
        resolveMaybeGz(dir, `${prefix}-images-idx3-ubyte`),
        resolveMaybeGz(dir, `${prefix}-labels-idx1-ubyte`)
      ])
      const [images, labels] = yield* Effect.all([readBytes(imagesFile), readBytes(labelsFile)], {
        concurrency: 2
      })
      return yield* parse(
        imagesFile,
        () => idxSplit({ file: imagesFile, bytes: images }, { file: labelsFile, bytes: labels }, 10, size)
      )
    })
  const train = yield* loadSplit("train", options.trainSize)
  const test = yield* loadSplit("t10k", options.testSize)
  return yield* sameShape(name, train, test, path.join(dir, "t10k-images-idx3-ubyte"), classNames)
})

const cifarBatch = (file: string) =>
  readBytes(file).pipe(
    Effect.flatMap((bytes) => parse(file, () => ({ file, bytes, count: checkCifarBatch(bytes, file, 10) })))
  )

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
    const trainBatches = yield* Effect.forEach(trainFiles, cifarBatch, { concurrency: 2 })
    const testBatch = yield* cifarBatch(testFile)
    const train = yield* parse(trainFiles.join(", "), () => cifarSplit(trainBatches, 10, options.trainSize))
    const test = yield* parse(testFile, () => cifarSplit([testBatch], 10, options.testSize))
    return yield* sameShape("cifar10", train, test, testFile, cifarNames)
  })

const syntheticParams = (options: SyntheticOptions): Effect.Effect<SyntheticParams, DatasetError> => {
  const p: SyntheticParams = {
    classes: options.classes ?? 10,
    height: options.height ?? 28,
    width: options.width ?? 28,
    channels: options.channels ?? 1,
    trainSize: options.trainSize ?? 1000,
    testSize: options.testSize ?? 200,
    noise: options.noise ?? 0.3,
    seed: options.seed ?? 0
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
