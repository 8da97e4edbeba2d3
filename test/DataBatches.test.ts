import { describe, expect, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import { beforeAll } from "vitest"
import * as Data from "../src/Data.ts"
import { deriveSeed, leakCheck, noLeaks, tf, useBackend } from "../src/Tensor.ts"

// Splits and batch plans (src/Data.ts "splits" and "batches"); the loaders are tested in DataLoaders.test.ts.

let mnist: Data.Dataset

beforeAll(async () => {
  await useBackend("wasm")
  // the MNIST epoch test reads the first 512 training images only
  mnist = await Effect.runPromise(Data.mnist({ trainSize: 512, testSize: 1 }))
})

// ---------------------------------------------------------------------------------------------------------------
// splits and batches
// ---------------------------------------------------------------------------------------------------------------

const small = Data.makeSplit({
  images: Float32Array.from({ length: 10 * 2 * 2 }, (_, k) => k / 40),
  labels: Int32Array.from({ length: 10 }, (_, i) => i % 3),
  height: 2,
  width: 2,
  channels: 1,
  classes: 3
})

const sorted = (a: ReadonlyArray<number>): Array<number> => [...a].sort((x, y) => x - y)
const flat = (plan: ReadonlyArray<Int32Array>): Array<number> => plan.flatMap((b) => Array.from(b))

describe("splits", () => {
  it("makeSplit checks lengths and labels; take / sample / select copy images", () => {
    expect(small.count).toBe(10)
    expect(() => Data.makeSplit({ ...small, images: new Float32Array(39) })).toThrow(RangeError)
    expect(() => Data.makeSplit({ ...small, labels: Int32Array.from([0, 1, 2, 3, 0, 0, 0, 0, 0, 0]) })).toThrow(
      /label 3 at index 3/
    )
    const first = Data.take(small, 3)
    expect(first.count).toBe(3)
    expect(first.images).toEqual(small.images.slice(0, 12))
    expect(Data.take(small, 99).count).toBe(10)
    const s1 = Data.sample(small, 4, 5), s2 = Data.sample(small, 4, 5), s3 = Data.sample(small, 4, 6)
    expect(s1.labels).toEqual(s2.labels)
    expect(s1.images).toEqual(s2.images)
    expect(s1.images).not.toEqual(s3.images)
    // sampled images are distinct images of the split, in split order
    const ids = Array.from({ length: 4 }, (_, j) => Math.round(s1.images[j * 4]! * 10))
    expect(ids).toEqual(sorted(ids))
    expect(new Set(ids).size).toBe(4)
    const picked = Data.select(small, [9, 0])
    expect(Array.from(picked.labels)).toEqual([0, 0])
    expect(picked.images[0]).toBeCloseTo(36 / 40, 6)
  })
})

describe("batches", () => {
  it("batchIndices: seeded, one pass over every index, dropLast", () => {
    const a = Data.batchIndices(103, { batchSize: 10, seed: 7 })
    expect(a.map((b) => b.length)).toEqual([...new Array(10).fill(10), 3])
    expect(sorted(flat(a))).toEqual(Array.from({ length: 103 }, (_, i) => i))
    expect(flat(Data.batchIndices(103, { batchSize: 10, seed: 7 }))).toEqual(flat(a))
    expect(flat(Data.batchIndices(103, { batchSize: 10, seed: 8 }))).not.toEqual(flat(a))
    expect(flat(Data.batchIndices(103, { batchSize: 10, seed: deriveSeed(7, "epoch", 1) }))).not.toEqual(flat(a))
    const dropped = Data.batchIndices(103, { batchSize: 10, seed: 7, dropLast: true })
    expect(dropped.map((b) => b.length)).toEqual(new Array(10).fill(10))
    expect(flat(dropped)).toEqual(flat(a).slice(0, 100))
    expect(Data.batchIndices(100, { batchSize: 10, seed: 7, dropLast: true }).length).toBe(10)
    expect(Data.batchIndices(5, { batchSize: 10, seed: 7, dropLast: true })).toEqual([])
    expect(flat(Data.batchIndices(7, { batchSize: 3, seed: 7, shuffle: false }))).toEqual([0, 1, 2, 3, 4, 5, 6])
    expect(() => Data.batchIndices(7, { batchSize: 0 })).toThrow(RangeError)
  })

  it("toTensors inside tf.tidy leaves nothing behind", () => {
    const sum = noLeaks(() =>
      tf.tidy(() => {
        const { x, y } = Data.toTensors(small, [4, 1])
        expect(x.shape).toEqual([2, 2, 2, 1])
        expect(y.dtype).toBe("int32")
        expect(Array.from(y.dataSync())).toEqual([1, 1])
        return x.sum().dataSync()[0]!
      })
    )
    expect(sum).toBeCloseTo((16 + 17 + 18 + 19 + 4 + 5 + 6 + 7) / 40, 5)
  })

  it.effect("the stream yields the seeded plan as tensors and disposes every batch", () =>
    leakCheck(Effect.gen(function*() {
      const options = { batchSize: 4, seed: 3 }
      const plan = Data.batchIndices(small.count, { batchSize: 4, seed: 3 })
      const seen: Array<{ index: number; indices: Array<number>; x: Array<number>; y: Array<number> }> = []
      const live: Array<Data.Batch> = []
      const before = tf.memory().numTensors
      yield* Data.batches(small, options).pipe(
        Stream.runForEach((batch) =>
          Effect.sync(() => {
            // only the current batch's two tensors are alive
            expect(tf.memory().numTensors).toBe(before + 2)
            expect(batch.x.shape).toEqual([batch.indices.length, 2, 2, 1])
            expect(batch.y.dtype).toBe("int32")
            live.push(batch)
            seen.push({
              index: batch.index,
              indices: Array.from(batch.indices),
              x: Array.from(batch.x.dataSync()),
              y: Array.from(batch.y.dataSync())
            })
          })
        )
      )
      expect(live.every((b) => b.x.isDisposed && b.y.isDisposed)).toBe(true)
      expect(seen.map((b) => b.index)).toEqual([0, 1, 2])
      expect(seen.map((b) => b.indices)).toEqual(plan.map((b) => Array.from(b)))
      for (const b of seen) {
        const g = Data.gather(small, b.indices)
        expect(b.x).toEqual(Array.from(g.x))
        expect(b.y).toEqual(Array.from(g.y))
      }
      // same seed, same order; another seed, another order
      const order = (seed: number) =>
        Data.batches(small, { batchSize: 4, seed }).pipe(
          Stream.map((b) => Array.from(b.indices)),
          Stream.runCollect,
          Effect.map((bs) => bs.flat())
        )
      expect(yield* order(3)).toEqual(seen.flatMap((b) => b.indices))
      expect(yield* order(4)).not.toEqual(seen.flatMap((b) => b.indices))
      expect(sorted(yield* order(4))).toEqual(Array.from({ length: 10 }, (_, i) => i))
    })))

  it.effect("dropLast, subset, shuffle=false, early stop and failure do not leak", () =>
    leakCheck(Effect.gen(function*() {
      const sizes = (options: Data.BatchOptions) =>
        Data.batches(small, options).pipe(Stream.map((b) => b.indices.length), Stream.runCollect)
      expect(yield* sizes({ batchSize: 4 })).toEqual([4, 4, 2])
      expect(yield* sizes({ batchSize: 4, dropLast: true })).toEqual([4, 4])
      expect(yield* sizes({ batchSize: 5, dropLast: true })).toEqual([5, 5])
      expect(Data.batchCount(small, { batchSize: 4 })).toBe(3)
      expect(Data.batchCount(small, { batchSize: 4, dropLast: true })).toBe(2)
      expect(Data.batchCount(small, { batchSize: 3, subset: 7 })).toBe(3)
      const subset = yield* Data.batches(small, { batchSize: 3, subset: 7, seed: 1 }).pipe(
        Stream.map((b) => Array.from(b.indices)),
        Stream.runCollect
      )
      expect(subset.map((b) => b.length)).toEqual([3, 3, 1])
      expect(sorted(subset.flat())).toEqual([0, 1, 2, 3, 4, 5, 6])
      const ordered = yield* Data.batches(small, { batchSize: 4, shuffle: false }).pipe(
        Stream.map((b) => Array.from(b.y.dataSync())),
        Stream.runCollect
      )
      expect(ordered.flat()).toEqual(Array.from(small.labels))
      // early stop: the last pulled batch is released with the stream
      const firstTwo = yield* Data.batches(small, { batchSize: 2 }).pipe(Stream.take(2), Stream.runCollect)
      expect(firstTwo.length).toBe(2)
      expect(firstTwo.every((b) => b.x.isDisposed)).toBe(true)
      // a failing consumer
      const failed = yield* Effect.flip(
        Data.batches(small, { batchSize: 2 }).pipe(
          Stream.runForEach((b) => (b.index === 1 ? Effect.fail("stop" as const) : Effect.void))
        )
      )
      expect(failed).toBe("stop")
    })))

  it.effect("MNIST epoch over a subset, per-epoch seeds", () =>
    leakCheck(Effect.gen(function*() {
      const epoch = (e: number) =>
        Data.batches(mnist.train, { batchSize: 64, seed: deriveSeed(1, "epoch", e), subset: 512 }).pipe(
          Stream.runFold(() => [] as Array<number>, (acc, b) => {
            expect(b.x.shape).toEqual([64, 28, 28, 1])
            return [...acc, ...b.indices]
          })
        )
      const e0 = yield* epoch(0)
      const e1 = yield* epoch(1)
      expect(sorted(e0)).toEqual(Array.from({ length: 512 }, (_, i) => i))
      expect(e1).not.toEqual(e0)
      expect(yield* epoch(0)).toEqual(e0)
    })))
})
