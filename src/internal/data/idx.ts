/**
 * Parsers for the raw dataset formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10 binary batches.
 *
 * Plain synchronous functions over bytes; a bad file throws a {@link DatasetError} naming the file and the
 * problem, which the loaders in src/Data.ts turn into a typed failure.
 *
 * @internal
 */
import { DatasetError } from "../../Errors.ts"

/**
 * A parsed IDX file of unsigned bytes: its dimensions (first = count) and a view of its data.
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
 * Parses an IDX file of unsigned bytes with `rank` dimensions (1: labels, 3: images). Checks the magic number
 * (0x00000801 / 0x00000803), that the header and data are complete, and that nothing follows the data.
 *
 * @internal
 */
export const parseIdx = (bytes: Uint8Array, file: string, rank: 1 | 3): Idx => {
  const kind = rank === 1 ? "labels" : "images"
  if (bytes.length < 4) {
    return fail(file, `truncated: ${bytes.length} byte(s), too short for the 4-byte IDX magic number`)
  }
  const magic = u32(bytes, 0)
  const expected = 0x00000800 | rank
  if (magic !== expected) {
    return fail(
      file,
      `wrong magic number ${hex(magic)}, expected ${hex(expected)} (IDX ${kind}: unsigned bytes, ${rank} dimension(s))`
    )
  }
  const header = 4 + 4 * rank
  if (bytes.length < header) {
    return fail(file, `truncated: ${bytes.length} bytes, the IDX header alone needs ${header}`)
  }
  const dims: Array<number> = []
  for (let i = 0; i < rank; i++) dims.push(u32(bytes, 4 + 4 * i))
  if (dims.some((d) => d === 0)) return fail(file, `empty: the header declares dimensions ${dims.join("x")}`)
  const size = dims.reduce((a, b) => a * b, 1)
  const total = header + size
  if (bytes.length < total) {
    return fail(
      file,
      `truncated: the header declares ${dims.join("x")} ${kind} (${total} bytes) but the file has ${bytes.length} bytes`
    )
  }
  if (bytes.length > total) {
    return fail(file, `${bytes.length - total} unexpected byte(s) after the declared ${dims.join("x")} ${kind}`)
  }
  return { dims, data: bytes.subarray(header, total) }
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
 * Copies labels to int32, checking each is in 0..classes-1.
 *
 * @internal
 */
export const checkLabels = (bytes: Uint8Array, file: string, classes: number): Int32Array => {
  const out = new Int32Array(bytes.length)
  for (let i = 0; i < bytes.length; i++) {
    const label = bytes[i]!
    if (label >= classes) {
      return fail(file, `label ${label} at index ${i} is out of range 0..${classes - 1}`)
    }
    out[i] = label
  }
  return out
}

/**
 * One split read from an IDX images file and an IDX labels file; `size` keeps the first `size` images.
 *
 * @internal
 */
export const idxSplit = (
  images: { readonly file: string; readonly bytes: Uint8Array },
  labels: { readonly file: string; readonly bytes: Uint8Array },
  classes: number,
  size: number | undefined
) => {
  const img = parseIdx(images.bytes, images.file, 3)
  const lab = parseIdx(labels.bytes, labels.file, 1)
  const [n, height, width] = img.dims as [number, number, number]
  if (lab.dims[0] !== n) {
    return fail(labels.file, `count mismatch: ${lab.dims[0]} labels but ${images.file} has ${n} images`)
  }
  const y = checkLabels(lab.data, labels.file, classes)
  const count = size === undefined ? n : size
  if (count > n) return fail(images.file, `a subset of ${count} images was requested but the file has ${n}`)
  return {
    images: toUnit(img.data.subarray(0, count * height * width)),
    labels: count === n ? y : y.slice(0, count),
    count,
    height,
    width,
    channels: 1,
    classes
  }
}

/**
 * Bytes per CIFAR-10 record: one label byte, then 32x32 red, 32x32 green, 32x32 blue.
 *
 * @internal
 */
export const cifarRecord = 1 + 3 * 32 * 32

/**
 * Checks one CIFAR-10 binary batch: whole records only, labels in range. Returns its record count.
 *
 * @internal
 */
export const checkCifarBatch = (bytes: Uint8Array, file: string, classes: number): number => {
  if (bytes.length === 0) return fail(file, "empty file: no CIFAR-10 records")
  if (bytes.length % cifarRecord !== 0) {
    return fail(
      file,
      `truncated: ${bytes.length} bytes is not a whole number of ${cifarRecord}-byte records ` +
        `(${Math.floor(bytes.length / cifarRecord)} records and ${bytes.length % cifarRecord} extra bytes)`
    )
  }
  const n = bytes.length / cifarRecord
  for (let i = 0; i < n; i++) {
    const label = bytes[i * cifarRecord]!
    if (label >= classes) return fail(file, `label ${label} of record ${i} is out of range 0..${classes - 1}`)
  }
  return n
}

/**
 * Concatenates CIFAR-10 batches (already checked) into NHWC 32x32x3 float32 images and int32 labels, keeping the
 * first `size` records. The files are channel-major (R plane, G plane, B plane); NHWC interleaves them per pixel.
 *
 * @internal
 */
export const cifarSplit = (
  batches: ReadonlyArray<{ readonly file: string; readonly bytes: Uint8Array; readonly count: number }>,
  classes: number,
  size: number | undefined
) => {
  const total = batches.reduce((a, b) => a + b.count, 0)
  const count = size === undefined ? total : size
  if (count > total) {
    return fail(
      batches.map((b) => b.file).join(", "),
      `a subset of ${count} images was requested but the files hold ${total}`
    )
  }
  const plane = 32 * 32
  const images = new Float32Array(count * plane * 3)
  const labels = new Int32Array(count)
  let n = 0
  for (const batch of batches) {
    for (let r = 0; r < batch.count && n < count; r++, n++) {
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
