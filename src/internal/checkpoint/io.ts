/**
 * The file operations of src/Checkpoint.ts as Effects failing with a CheckpointError naming the file: reading a
 * regular file whole after checking its size, and the library version stamped into every manifest.
 *
 * @internal
 */
import * as fs from "node:fs/promises"
import { Effect } from "effect"
import { openRegularFile } from "../../Data.ts"
import { CheckpointError, messageOf } from "../../Errors.ts"

/**
 * A caught value's one-line message, with its errno code when it has one (`ENOENT: ...`).
 *
 * @internal
 */
export const reason = (u: unknown): string => {
  const code = u instanceof Error ? (u as NodeJS.ErrnoException).code : undefined
  return code !== undefined ? `${code}: ${messageOf(u)}` : messageOf(u)
}

/**
 * A promise as an Effect failing with a CheckpointError: `what` failed at `file` (for `tensor`), and why.
 *
 * @internal
 */
export const io = <A>(file: string, what: string, f: () => Promise<A>, tensor?: string): Effect.Effect<A, CheckpointError> =>
  Effect.tryPromise({
    try: f,
    catch: (e) =>
      new CheckpointError({ path: file, ...(tensor !== undefined ? { tensor } : {}), message: `${what}: ${reason(e)}` })
  })

/**
 * Whether a path exists.
 *
 * @internal
 */
export const exists = (p: string): Promise<boolean> => fs.stat(p).then(() => true, () => false)

/**
 * Reads a regular file whole after checking its size by fstat: a FIFO or device is refused before reading, and
 * `check` may refuse the size (a message) before a byte is read.
 *
 * @internal
 */
export const readRegular = (file: string, check: (size: number) => string | undefined): Effect.Effect<Buffer, CheckpointError> =>
  Effect.gen(function*() {
    const { handle, size } = yield* io(file, "cannot read", () => openRegularFile(file))
    return yield* Effect.gen(function*() {
      const problem = check(size)
      if (problem !== undefined) return yield* new CheckpointError({ path: file, message: problem })
      const buffer = Buffer.allocUnsafe(size)
      let at = 0
      while (at < size) {
        const { bytesRead } = yield* io(file, "cannot read", () => handle.read(buffer, at, size - at, at))
        if (bytesRead === 0) return yield* new CheckpointError({ path: file, message: `truncated while reading: ${at} of ${size} bytes` })
        at += bytesRead
      }
      return buffer
    }).pipe(Effect.ensuring(Effect.promise(() => handle.close().catch(() => undefined))))
  })

let versionCache: string | undefined

/**
 * The version in package.json ("unknown" when it cannot be read), read once.
 *
 * @internal
 */
export const libraryVersion = async (): Promise<string> => {
  if (versionCache !== undefined) return versionCache
  try {
    const pkg = JSON.parse(await fs.readFile(new URL("../../../package.json", import.meta.url), "utf8")) as { version?: unknown }
    versionCache = typeof pkg.version === "string" ? pkg.version : "unknown"
  } catch {
    versionCache = "unknown"
  }
  return versionCache
}

/**
 * The bytes of a typed array (a view, no copy).
 *
 * @internal
 */
export const bytesOf = (data: Float32Array | Int32Array): Uint8Array => new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
