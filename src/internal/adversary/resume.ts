/**
 * Resumable evaluation state: a JSONL file whose first line identifies the evaluation and each further line holds
 * the per-sample outcome of one finished batch. Lines are appended with fsync; a torn last line (a crash mid-write)
 * is dropped on the next run, which rewrites the file (temp file, then rename) before appending.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Result, Schema } from "effect"
import { ResumeError } from "./types.ts"

const Numbers = Schema.Array(Schema.Number)

/** The identity of an evaluation; a resume file written for another one is refused. */
export const Fingerprint = Schema.Struct({
  classifier: Schema.String,
  gradientSource: Schema.String,
  seed: Schema.Number,
  backend: Schema.String,
  batchSize: Schema.Number,
  total: Schema.Number,
  stages: Schema.Unknown,
  salt: Schema.optional(Schema.String)
})

/** @internal */
export type Fingerprint = typeof Fingerprint.Type

const Header = Schema.Struct({
  type: Schema.Literal("header"),
  version: Schema.Literal(1),
  fingerprint: Fingerprint
})

/** The outcome of one batch, enough to recompute every number of the result. */
export const BatchRecord = Schema.Struct({
  type: Schema.Literal("batch"),
  index: Schema.Number,
  start: Schema.Number,
  count: Schema.Number,
  /** hash of the batch's pixels and labels */
  hash: Schema.String,
  cleanCorrect: Numbers,
  brokenAt: Numbers,
  zeroGradient: Numbers,
  convergedClean: Schema.NullOr(Numbers),
  convergedAdv: Schema.NullOr(Numbers),
  backwardResidual: Schema.NullOr(Schema.Number),
  gradientCosine: Schema.NullOr(Schema.Number),
  /** per stage */
  queries: Numbers,
  /** coordinates with an exactly zero input gradient, and all coordinates (absent in older files) */
  zeroCoordinates: Schema.optional(Schema.Number),
  coordinates: Schema.optional(Schema.Number),
  /** per stage: forward / backward passes per sample, summed (absent in older files) */
  forward: Schema.optional(Numbers),
  backward: Schema.optional(Numbers),
  /** the evaluation's own [forward, backward] passes (clean prediction, zero-gradient probe) */
  overhead: Schema.optional(Numbers)
})

/** @internal */
export type BatchRecord = typeof BatchRecord.Type

const decodeHeader = Schema.decodeUnknownResult(Header)
const decodeBatch = Schema.decodeUnknownResult(BatchRecord)

const parse = (line: string): unknown => {
  try {
    return JSON.parse(line)
  } catch {
    return undefined
  }
}

const writeAtomically = (file: string, text: string): void => {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`)
  const fd = fs.openSync(tmp, "w")
  try {
    fs.writeSync(fd, text)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
}

const describe = (u: unknown): string => (u instanceof Error ? u.message : String(u))

/**
 * Opens (or creates) a resume file for `fingerprint`; returns the finished batches by index.
 */
export const open = (file: string, fingerprint: Fingerprint): Effect.Effect<Map<number, BatchRecord>, ResumeError> =>
  Effect.gen(function*() {
    const fail = (message: string) => new ResumeError({ file, message })
    const text = yield* Effect.try({
      try: () => (fs.existsSync(file) ? fs.readFileSync(file, "utf8") : undefined),
      catch: (u) => fail(`cannot read: ${describe(u)}`)
    })
    const headerLine = JSON.stringify({ type: "header", version: 1, fingerprint })
    if (text === undefined || text.trim().length === 0) {
      yield* Effect.try({
        try: () => {
          fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true })
          writeAtomically(file, headerLine + "\n")
        },
        catch: (u) => fail(`cannot create: ${describe(u)}`)
      })
      return new Map()
    }
    const lines = text.split("\n")
    if (lines[lines.length - 1] === "") lines.pop()
    const header = decodeHeader(parse(lines[0]!))
    if (Result.isFailure(header)) return yield* fail("line 1 is not an effect-deq evaluation header")
    const found = header.success.fingerprint
    for (const key of Object.keys(fingerprint) as Array<keyof Fingerprint>) {
      const a = JSON.stringify(found[key])
      const b = JSON.stringify(fingerprint[key])
      if (a !== b) {
        return yield* fail(`it belongs to another evaluation: ${key} is ${a} in the file but ${b} now`)
      }
    }
    const done = new Map<number, BatchRecord>()
    let valid = 1
    for (let i = 1; i < lines.length; i++) {
      const record = decodeBatch(parse(lines[i]!))
      if (Result.isFailure(record)) {
        if (i === lines.length - 1) break // torn last write: drop it
        return yield* fail(`line ${i + 1} is not a batch record`)
      }
      done.set(record.success.index, record.success)
      valid = i + 1
    }
    const endsClean = text.endsWith("\n")
    if (valid < lines.length || !endsClean) {
      yield* Effect.try({
        try: () => writeAtomically(file, lines.slice(0, valid).join("\n") + "\n"),
        catch: (u) => fail(`cannot repair: ${describe(u)}`)
      })
    }
    return done
  })

/** Appends one batch record (one write, then fsync). */
export const append = (file: string, record: BatchRecord): Effect.Effect<void, ResumeError> =>
  Effect.try({
    try: () => {
      const fd = fs.openSync(file, "a")
      try {
        fs.writeSync(fd, JSON.stringify(record) + "\n")
        fs.fsyncSync(fd)
      } finally {
        fs.closeSync(fd)
      }
    },
    catch: (u) => new ResumeError({ file, message: `cannot append: ${describe(u)}` })
  })

/** A 64-bit (two 32-bit lanes) hash of a batch's pixels and labels, as hex. */
export const hashBatch = (x: Float32Array, y: ArrayLike<number>): string => {
  const words = new Uint32Array(x.buffer, x.byteOffset, x.length)
  let h1 = 0x811c9dc5
  let h2 = 0x9747b28c
  const eat = (w: number) => {
    h1 = Math.imul(h1 ^ w, 0x01000193) >>> 0
    h2 = Math.imul(h2 ^ ((w >>> 16) | (w << 16)), 0x5bd1e995) >>> 0
  }
  for (let i = 0; i < words.length; i++) eat(words[i]!)
  for (let i = 0; i < y.length; i++) eat(y[i]! >>> 0)
  eat(x.length)
  return h1.toString(16).padStart(8, "0") + h2.toString(16).padStart(8, "0")
}
