/**
 * Parsers for the raw dataset formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10 binary batches.
 *
 * Incremental: each is a {@link Scanner} fed the file's bytes chunk by chunk (src/internal/data/files.ts
 * `scanFile`), keeping only the images a split uses, and throwing a {@link DatasetError} naming the file and the
 * problem as soon as it is seen. Declared sizes are checked against the wasm heap (Config.heapBytes) and, for an
 * uncompressed file, against its size on disk, before any data is read.
 *
 * @internal
 */
import { formatBytes, heapBytes, heapProblem } from "../../Config.ts"
import { DatasetError } from "../../Errors.ts"
import type { Scanner } from "./files.ts"

/**
 * A parsed IDX file of unsigned bytes: its dimensions (first = count) and the bytes of the items kept.
 *
 * @internal
 */
export interface Idx {
  readonly dims: ReadonlyArray<number>
  readonly data: Uint8Array
}

const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, "0")}`

const u32 = (bytes: Uint8Array, offset: number): number =>
  ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>> 0

/**
 * Throws a DatasetError for `file`.
 *
 * @internal
 */
export const fail = (file: string, message: string): never => {
  throw new DatasetError({ file, message })
}

/**
 * Options of {@link idxScanner}: how many leading items to keep once the dimensions are known (it may throw to
 * refuse them), and an optional check of every data byte (labels).
 *
 * @internal
 */
export interface IdxOptions {
  readonly keep: (dims: ReadonlyArray<number>) => number
  readonly check?: (value: number, index: number) => void
}

/**
 * An IDX parser of unsigned bytes with `rank` dimensions (1: labels, 3: images). Checks the magic number
 * (0x00000801 / 0x00000803), the header, that the declared data fits the heap and (uncompressed) the file's size,
 * that the data is complete and that nothing follows it; keeps the bytes of the first `keep(dims)` items.
 *
 * @internal
 */
export const idxScanner = (
  file: string,
  rank: 1 | 3,
  info: { readonly compressed: boolean; readonly size: number },
  options: IdxOptions
): Scanner<Idx> => {
  const kind = rank === 1 ? "labels" : "images"
  const headerBytes = 4 + 4 * rank
  const head = new Uint8Array(headerBytes)
  let seen = 0
  let dims: Array<number> | undefined
  let total = 0 // header + declared data
  let itemBytes = 1
  let kept = new Uint8Array(0)
  const declared = () => `${dims!.join("x")} ${kind}`

  const checkMagic = () => {
    const magic = u32(head, 0)
    const expected = 0x00000800 | rank
    if (magic !== expected) {
      fail(file, `wrong magic number ${hex(magic)}, expected ${hex(expected)} (IDX ${kind}: unsigned bytes, ${rank} dimension(s))`)
    }
  }

  const onHeader = () => {
    checkMagic()
    dims = Array.from({ length: rank }, (_, i) => u32(head, 4 + 4 * i))
    if (dims.some((d) => d === 0)) fail(file, `empty: the header declares dimensions ${dims.join("x")}`)
    const data = dims.reduce((a, b) => a * b, 1)
    total = headerBytes + data
    itemBytes = data / dims[0]!
    const tooBig = heapProblem(data, `the header's ${declared()} (${data} bytes)`)
    if (tooBig !== undefined) fail(file, tooBig)
    if (!info.compressed && info.size !== total) {
      fail(
        file,
        info.size < total
          ? `truncated: the header declares ${declared()} (${total} bytes) but the file has ${info.size} bytes`
          : `${info.size - total} unexpected byte(s) after the declared ${declared()}`
      )
    }
    const items = options.keep(dims)
    const keepBytes = heapProblem(items * itemBytes * 4, `${items} ${kind} as float32`)
    if (keepBytes !== undefined) fail(file, keepBytes)
    kept = new Uint8Array(items * itemBytes)
  }

  return {
    chunk: (bytes) => {
      let i = 0
      if (dims === undefined) {
        const n = Math.min(headerBytes - seen, bytes.length)
        head.set(bytes.subarray(0, n), seen)
        seen += n
        i = n
        if (seen < headerBytes) return
        onHeader()
      }
      if (i >= bytes.length) return
      const start = seen - headerBytes // data index of bytes[i]
      const end = start + (bytes.length - i)
      if (seen + (bytes.length - i) > total) {
        fail(file, `unexpected bytes after the declared ${declared()} (the data goes on past byte ${total})`)
      }
      if (start < kept.length) kept.set(bytes.subarray(i, i + Math.min(kept.length - start, end - start)), start)
      if (options.check !== undefined) {
        for (let j = i; j < bytes.length; j++) options.check(bytes[j]!, start + j - i)
      }
      seen += bytes.length - i
    },
    end: () => {
      if (dims === undefined) {
        if (seen < 4) fail(file, `truncated: ${seen} byte(s), too short for the 4-byte IDX magic number`)
        checkMagic() // a short file of another format says so, not only "truncated"
        return fail(file, `truncated: ${seen} bytes, the IDX header alone needs ${headerBytes}`)
      }
      if (seen < total) {
        fail(file, `truncated: the header declares ${declared()} (${total} bytes) but the file has ${seen} bytes`)
      }
      return { dims, data: kept }
    }
  }
}

const unit = (() => {
  const lut = new Float32Array(256)
  for (let i = 0; i < 256; i++) lut[i] = i / 255
  return lut
})()

/**
 * Bytes 0..255 to float32 in [0, 1].
 *
 * @internal
 */
export const toUnit = (bytes: Uint8Array): Float32Array => {
  const out = new Float32Array(bytes.length)
  for (let i = 0; i < bytes.length; i++) out[i] = unit[bytes[i]!]!
  return out
}

/**
 * Bytes per CIFAR-10 record: one label byte, then 32x32 red, 32x32 green, 32x32 blue.
 *
 * @internal
 */
export const cifarRecord = 1 + 3 * 32 * 32

/**
 * One CIFAR-10 binary batch as read: the records kept (the first `keep`) and how many the file holds.
 *
 * @internal
 */
export interface CifarBatch {
  readonly file: string
  readonly bytes: Uint8Array
  readonly kept: number
  readonly count: number
}

/**
 * A parser of one CIFAR-10 binary batch: whole records only, every label in range, at most the wasm heap of data
 * (a gzip bomb stops there); keeps the first `keep` records.
 *
 * @internal
 */
export const cifarScanner = (
  file: string,
  info: { readonly compressed: boolean; readonly size: number },
  classes: number,
  keep: number
): Scanner<CifarBatch> => {
  const limit = info.compressed ? heapBytes : info.size
  const keepBytes = Math.min(keep * cifarRecord, limit - (limit % cifarRecord))
  let kept = new Uint8Array(info.compressed ? Math.min(keepBytes, 1 << 20) : keepBytes)
  let keptBytes = 0
  let seen = 0
  const store = (bytes: Uint8Array) => {
    const n = Math.min(bytes.length, keepBytes - keptBytes)
    if (n <= 0) return
    if (keptBytes + n > kept.length) {
      const grown = new Uint8Array(Math.min(keepBytes, Math.max(kept.length * 2, keptBytes + n)))
      grown.set(kept.subarray(0, keptBytes))
      kept = grown
    }
    kept.set(bytes.subarray(0, n), keptBytes)
    keptBytes += n
  }
  return {
    chunk: (bytes) => {
      if (seen + bytes.length > heapBytes) {
        fail(file, `the data inflates past ${formatBytes(heapBytes)}, more than the wasm heap holds (a gzip bomb?)`)
      }
      // the label byte of every record that starts in this chunk
      for (let first = Math.ceil(seen / cifarRecord) * cifarRecord; first < seen + bytes.length; first += cifarRecord) {
        const label = bytes[first - seen]!
        if (label >= classes) fail(file, `label ${label} of record ${first / cifarRecord} is out of range 0..${classes - 1}`)
      }
      store(bytes)
      seen += bytes.length
    },
    end: () => {
      if (seen === 0) return fail(file, "empty file: no CIFAR-10 records")
      if (seen % cifarRecord !== 0) {
        return fail(
          file,
          `truncated: ${seen} bytes is not a whole number of ${cifarRecord}-byte records ` +
            `(${Math.floor(seen / cifarRecord)} records and ${seen % cifarRecord} extra bytes)`
        )
      }
      return { file, bytes: kept.subarray(0, keptBytes), kept: keptBytes / cifarRecord, count: seen / cifarRecord }
    }
  }
}

/**
 * Concatenates CIFAR-10 batches (already checked) into NHWC 32x32x3 float32 images and int32 labels: the records
 * kept, which are the first `count` of the files in order. The files are channel-major (R plane, G plane, B
 * plane); NHWC interleaves them per pixel.
 *
 * @internal
 */
export const cifarSplit = (batches: ReadonlyArray<CifarBatch>, classes: number) => {
  const count = batches.reduce((a, b) => a + b.kept, 0)
  const plane = 32 * 32
  const images = new Float32Array(count * plane * 3)
  const labels = new Int32Array(count)
  let n = 0
  for (const batch of batches) {
    for (let r = 0; r < batch.kept; r++, n++) {
      const offset = r * cifarRecord
      labels[n] = batch.bytes[offset]!
      const out = n * plane * 3
      for (let p = 0; p < plane; p++) {
        images[out + 3 * p] = unit[batch.bytes[offset + 1 + p]!]!
        images[out + 3 * p + 1] = unit[batch.bytes[offset + 1 + plane + p]!]!
        images[out + 3 * p + 2] = unit[batch.bytes[offset + 1 + 2 * plane + p]!]!
      }
    }
  }
  return { images, labels, count, height: 32, width: 32, channels: 3, classes }
}
