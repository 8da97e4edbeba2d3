/**
 * Reading dataset files: directory checks, `.gz`-or-raw resolution, and {@link scanFile}, which streams a file
 * (gunzipping gzip data on the way) chunk by chunk into a parser, so memory stays at what the parser keeps and a
 * gzip bomb is stopped as soon as it inflates past what the parser accepts. Only regular files are read (a FIFO
 * or a device would block a read forever). Every failure is a DatasetError naming the file.
 *
 * @internal
 */
import { Effect } from "effect"
import { constants } from "node:fs"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { pipeline, type Readable } from "node:stream"
import * as zlib from "node:zlib"
import { DatasetError, messageOf } from "../../Errors.ts"

const describe = (u: unknown): string => {
  const code = typeof u === "object" && u !== null && "code" in u ? String((u as { code: unknown }).code) : ""
  switch (code) {
    case "ENOENT":
      return "missing: no such file or directory"
    case "EISDIR":
      return "is a directory, expected a file"
    case "ENOTDIR":
      return "not a directory"
    case "EACCES":
    case "EPERM":
      return "permission denied"
    default:
      return messageOf(u)
  }
}

/** What a non-regular file is, for messages. */
const kindOf = (stat: { isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string =>
  stat.isDirectory() ? "a directory" :
  stat.isFIFO() ? "a FIFO (named pipe)" :
  stat.isSocket() ? "a socket" :
  stat.isCharacterDevice() || stat.isBlockDevice() ? "a device" :
  "not a regular file"

/**
 * Opens a file for reading only when it is a regular file, and returns its handle and size. O_NONBLOCK keeps the
 * open itself from blocking on a FIFO; fstat of the open handle (not a stat before the open) says what was
 * opened. Rejects with an Error (code `ENOTREG`) saying what the file is instead.
 *
 * @internal
 */
export const openRegularFile = async (file: string): Promise<{ readonly handle: fs.FileHandle; readonly size: number }> => {
  const handle = await fs.open(file, constants.O_RDONLY | constants.O_NONBLOCK)
  try {
    const stat = await handle.stat()
    if (!stat.isFile()) {
      throw Object.assign(new Error(`${kindOf(stat)}, not a regular file: refused before reading`), { code: "ENOTREG" })
    }
    return { handle, size: stat.size }
  } catch (e) {
    await handle.close().catch(() => undefined)
    throw e
  }
}

/**
 * Reads a regular file whole (see {@link openRegularFile}) after `check` has seen its size: a message from `check`
 * refuses it before a byte is read.
 *
 * @internal
 */
export const readRegularFile = async (
  file: string,
  check: (size: number) => string | undefined = () => undefined
): Promise<{ readonly bytes: Uint8Array } | { readonly refused: string }> => {
  const { handle, size } = await openRegularFile(file)
  try {
    const refused = check(size)
    if (refused !== undefined) return { refused }
    const bytes = new Uint8Array(size)
    let at = 0
    while (at < size) {
      const { bytesRead } = await handle.read(bytes, at, size - at, at)
      if (bytesRead === 0) return { refused: `truncated while reading: ${at} of ${size} bytes` }
      at += bytesRead
    }
    return { bytes }
  } finally {
    await handle.close().catch(() => undefined)
  }
}

/**
 * Succeeds when `dir` is an existing directory.
 *
 * @internal
 */
export const requireDirectory = (dir: string): Effect.Effect<void, DatasetError> =>
  Effect.tryPromise({
    try: () => fs.stat(dir),
    catch: (e) => new DatasetError({ file: dir, message: `dataset directory ${describe(e)}` })
  }).pipe(
    Effect.flatMap((stat) =>
      stat.isDirectory()
        ? Effect.void
        : Effect.fail(new DatasetError({ file: dir, message: "dataset directory is not a directory" }))
    )
  )

/**
 * Whether `file` exists (and is accessible).
 *
 * @internal
 */
export const exists = (file: string): Effect.Effect<boolean> =>
  Effect.promise(() => fs.access(file).then(() => true, () => false))

/**
 * The path of `name` in `dir`, preferring `name.gz` over the uncompressed `name`.
 *
 * @internal
 */
export const resolveMaybeGz = (dir: string, name: string): Effect.Effect<string, DatasetError> =>
  Effect.gen(function*() {
    const plain = path.join(dir, name)
    const gz = `${plain}.gz`
    if (yield* exists(gz)) return gz
    if (yield* exists(plain)) return plain
    return yield* new DatasetError({ file: plain, message: `missing: neither ${name}.gz nor ${name} is in ${dir}` })
  })

/**
 * A parser fed by {@link scanFile}: `chunk` sees the (decompressed) bytes in order and may throw a DatasetError to
 * stop reading; `end` runs after the last byte and returns what was parsed.
 *
 * @internal
 */
export interface Scanner<A> {
  readonly chunk: (bytes: Uint8Array) => void
  readonly end: () => A
}

/** Reads the first bytes of an open file (fewer when the file is shorter). */
const readHead = async (handle: fs.FileHandle, n: number): Promise<Uint8Array> => {
  const buffer = new Uint8Array(n)
  const { bytesRead } = await handle.read(buffer, 0, n, 0)
  return buffer.subarray(0, bytesRead)
}

/**
 * Streams a regular file through the parser `make` builds (told whether the file is gzip data and its size on
 * disk, which is the data's size when it is not compressed): gzip data (magic 1f 8b, whatever the file's name) is decompressed on
 * the way, 64 KiB at a time, so memory is what the parser keeps. A parser that throws stops the read at once (the
 * streams are destroyed), which bounds the work a gzip bomb can cause by what the parser accepts.
 *
 * @internal
 */
export const scanFile = <A>(
  file: string,
  make: (info: { readonly compressed: boolean; readonly size: number }) => Scanner<A>
): Effect.Effect<A, DatasetError> =>
  Effect.tryPromise({
    try: async () => {
      const { handle, size } = await openRegularFile(file)
      let source: Readable | undefined
      try {
        const head = await readHead(handle, 2)
        const compressed = head.length === 2 && head[0] === 0x1f && head[1] === 0x8b
        const scanner = make({ compressed, size })
        source = handle.createReadStream({ start: 0, highWaterMark: 64 * 1024, autoClose: false })
        const stream: Readable = compressed ? pipeline(source, zlib.createGunzip(), () => undefined) : source
        try {
          for await (const chunk of stream) scanner.chunk(chunk as Uint8Array)
        } catch (e) {
          if (e instanceof DatasetError) throw e
          throw new DatasetError({ file, message: compressed ? `corrupt gzip data: ${describe(e)}` : describe(e) })
        } finally {
          stream.destroy()
        }
        return scanner.end()
      } finally {
        source?.destroy()
        await handle.close().catch(() => undefined)
      }
    },
    catch: (e) => (e instanceof DatasetError ? e : new DatasetError({ file, message: describe(e) }))
  })
