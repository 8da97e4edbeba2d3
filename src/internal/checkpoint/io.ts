/**
 * The file operations of src/Checkpoint.ts as Effects failing with a CheckpointError naming the file: reading a
 * regular file whole after checking its size, and the library version stamped into every manifest.
 *
 * @internal
 */
import * as fs from "node:fs/promises"
import { Effect } from "effect"
import { readRegularFile } from "../../Data.ts"
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
export const readRegular = (file: string, check: (size: number) => string | undefined): Effect.Effect<Uint8Array, CheckpointError> =>
  Effect.flatMap(io(file, "cannot read", () => readRegularFile(file, check)), (r) =>
    "refused" in r ? Effect.fail(new CheckpointError({ path: file, message: r.refused })) : Effect.succeed(r.bytes))

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
