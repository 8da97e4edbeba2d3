/**
 * The IDX corrupter: a small Fashion-MNIST-like directory of the four IDX files (gzipped or raw), and fast-check
 * corruptions of one file (magic, dimensions, truncation, appended bytes, count mismatch, labels out of range,
 * broken gzip streams, a gzip stream that goes on past its header, FIFOs and directories in place of a file), with
 * the file that the DatasetError must name.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import * as zlib from "node:zlib"
import fc from "fast-check"

export const files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] as const
export type IdxFile = typeof files[number]

const u32be = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n >>> 0)
  return b
}

/** An IDX file of unsigned bytes. */
export const idx = (dims: ReadonlyArray<number>, data: Uint8Array, magic = 0x0800 | dims.length): Buffer =>
  Buffer.concat([u32be(magic), ...dims.map(u32be), data])

/** The clean files: 20 train / 8 test images of 6x5 with labels 0..9. */
export const cleanFiles = (): Record<IdxFile, Buffer> => {
  const images = (n: number, salt: number) => idx([n, 6, 5], Uint8Array.from({ length: n * 30 }, (_, k) => (k * 37 + salt) % 256))
  const labels = (n: number, salt: number) => idx([n], Uint8Array.from({ length: n }, (_, k) => (k * 3 + salt) % 10))
  return {
    "train-images-idx3-ubyte": images(20, 1),
    "train-labels-idx1-ubyte": labels(20, 2),
    "t10k-images-idx3-ubyte": images(8, 3),
    "t10k-labels-idx1-ubyte": labels(8, 4)
  }
}

/** Writes a dataset directory: every file gzipped (`name.gz`) or raw. */
export const writeDir = (dir: string, contents: Record<IdxFile, Buffer>, gz: boolean): void => {
  fs.mkdirSync(dir, { recursive: true })
  for (const name of files) {
    fs.writeFileSync(path.join(dir, gz ? `${name}.gz` : name), gz ? zlib.gzipSync(contents[name]) : contents[name])
  }
}

/** One corruption: what it does to the directory and which files the DatasetError may name. */
export interface DataCorruption {
  readonly kind: string
  readonly description: string
  readonly gz: boolean
  readonly apply: (dir: string) => void
  /** the files (without `.gz`) an error may name */
  readonly blame: ReadonlyArray<IdxFile>
}

const partner = (f: IdxFile): IdxFile => (f.includes("images") ? f.replace("images-idx3", "labels-idx1") : f.replace("labels-idx1", "images-idx3")) as IdxFile

type Make = (kind: string, description: string, apply: (dir: string) => void) => DataCorruption

/** Corruptions of the gzip stream itself. */
const gzipCorruptions = (bytes: Buffer, fileName: string, make: Make): Array<fc.Arbitrary<DataCorruption>> => [
  fc.tuple(fc.nat(10_000), fc.nat(7)).map(([at, bit]) =>
    make("gzip-flip", `bit ${bit} of a compressed byte flipped`, (dir) => {
      const z = zlib.gzipSync(bytes)
      const i = 10 + (at % (z.length - 10))
      z[i] = z[i]! ^ (1 << bit)
      fs.writeFileSync(path.join(dir, fileName), z)
    })),
  fc.double({ min: 0.05, max: 0.95, noNaN: true }).map((f) =>
    make("gzip-truncate", `the gzip stream cut at ${Math.round(f * 100)}%`, (dir) => {
      const z = zlib.gzipSync(bytes)
      fs.writeFileSync(path.join(dir, fileName), z.subarray(0, Math.max(2, Math.floor(z.length * f))))
    })),
  fc.integer({ min: 1, max: 64 }).map((mib) =>
    make("gzip-overrun", `the header's data followed by ${mib} MiB more`, (dir) => {
      fs.writeFileSync(path.join(dir, fileName), zlib.gzipSync(Buffer.concat([bytes, Buffer.alloc(mib * 1024 ** 2)])))
    }))
]

/** The corruptions of the clean directory. */
export const dataCorruption: fc.Arbitrary<DataCorruption> = fc.tuple(fc.constantFrom(...files), fc.boolean()).chain(([file, gz]) => {
  const clean = cleanFiles()
  const bytes = clean[file]
  const rank = file.includes("images") ? 3 : 1
  const header = 4 + 4 * rank
  const fileName = gz ? `${file}.gz` : file
  /** rewrites `file` with new (uncompressed) contents */
  const put = (contents: Uint8Array) => (dir: string) =>
    fs.writeFileSync(path.join(dir, fileName), gz ? zlib.gzipSync(contents) : contents)
  const make = (kind: string, description: string, apply: (dir: string) => void, blame: ReadonlyArray<IdxFile> = [file]): DataCorruption =>
    ({ kind, description: `${fileName}: ${description}`, gz, apply, blame })
  return fc.oneof(
    fc.tuple(fc.nat(3), fc.nat(7)).map(([at, bit]) => {
      const b = Buffer.from(bytes)
      b[at] = b[at]! ^ (1 << bit)
      return make("magic", `bit ${bit} of magic byte ${at} flipped`, put(b))
    }),
    fc.tuple(fc.nat(rank - 1), fc.constantFrom(0, 1, 7, 1000, 2 ** 31, 2 ** 32 - 1)).map(([d, value]) => {
      const b = Buffer.from(bytes)
      b.writeUInt32BE(value >>> 0, 4 + 4 * d)
      // a count that no longer matches the other file is blamed on the labels file
      return make("dims", `dimension ${d} = ${value}`, put(b), [file, partner(file)])
    }),
    fc.nat(bytes.length - 1).map((n) => make("truncate", `truncated to ${n} bytes`, put(bytes.subarray(0, n)))),
    fc.integer({ min: 1, max: 40 }).map((k) => make("append", `${k} bytes appended`, put(Buffer.concat([bytes, Buffer.alloc(k, 9)])))),
    fc.integer({ min: -3, max: 3 }).filter((k) => k !== 0).map((k) => {
      const n = bytes.readUInt32BE(4)
      const data = Buffer.alloc((n + k) * (bytes.length - header) / n, 1)
      const other = rank === 1 ? idx([n + k], data) : idx([n + k, 6, 5], data)
      return make("count", `count ${n} -> ${n + k}`, put(other), [file, partner(file)])
    }),
    ...(rank === 1 ? [fc.tuple(fc.nat(1000), fc.integer({ min: 10, max: 255 })).map(([i, label]) => {
      const b = Buffer.from(bytes)
      b[header + (i % (b.length - header))] = label
      return make("label", `a label set to ${label}`, put(b))
    })] : []),
    ...(gz ? gzipCorruptions(bytes, fileName, make) : []),
    fc.constant(make("fifo", "a FIFO", (dir) => {
      fs.rmSync(path.join(dir, fileName))
      execFileSync("mkfifo", [path.join(dir, fileName)])
    })),
    fc.constant(make("directory", "a directory", (dir) => {
      fs.rmSync(path.join(dir, fileName))
      fs.mkdirSync(path.join(dir, fileName))
    })),
    fc.constant(make("missing", "missing", (dir) => fs.rmSync(path.join(dir, fileName)))),
    fc.constant(make("empty", "empty", put(new Uint8Array(0))))
  )
})

/**
 * Writes a gzipped IDX images file whose header declares `count` images of 28x28 (all zeros) and a matching
 * labels file, streaming (a 1 GB payload compresses to about 1 MB, the gzip bomb).
 */
export const writeBomb = async (dir: string, count: number): Promise<void> => {
  fs.mkdirSync(dir, { recursive: true })
  const write = (file: string, head: Buffer, payload: number) =>
    new Promise<void>((resolve, reject) => {
      const gz = zlib.createGzip({ level: 9 })
      const out = fs.createWriteStream(path.join(dir, file))
      gz.pipe(out).on("finish", resolve).on("error", reject)
      gz.write(head)
      const chunk = Buffer.alloc(1 << 22)
      let left = payload
      const pump = () => {
        while (left > 0) {
          const k = Math.min(left, chunk.length)
          left -= k
          if (!gz.write(k === chunk.length ? chunk : chunk.subarray(0, k))) return void gz.once("drain", pump)
        }
        gz.end()
      }
      pump()
    })
  await write("train-images-idx3-ubyte.gz", idx([count, 28, 28], new Uint8Array(0)), count * 784)
  await write("train-labels-idx1-ubyte.gz", idx([count], new Uint8Array(0)), count)
  await write("t10k-images-idx3-ubyte.gz", idx([4, 28, 28], new Uint8Array(0)), 4 * 784)
  await write("t10k-labels-idx1-ubyte.gz", idx([4], new Uint8Array(0)), 4)
}
