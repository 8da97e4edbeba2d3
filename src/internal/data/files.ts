/**
 * Reading dataset files: directory checks, `.gz`-or-raw resolution, gunzip. Every failure is a DatasetError
 * naming the file.
 *
 * @internal
 */
import { Effect } from "effect"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { promisify } from "node:util"
import * as zlib from "node:zlib"
import { DatasetError, messageOf } from "../../Errors.ts"

const gunzip = promisify(zlib.gunzip)

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
 * Reads a file whole; gzip data (magic 1f 8b) is decompressed whatever the file's name.
 *
 * @internal
 */
export const readBytes = (file: string): Effect.Effect<Uint8Array, DatasetError> =>
  Effect.tryPromise({
    try: () => fs.readFile(file),
    catch: (e) => new DatasetError({ file, message: describe(e) })
  }).pipe(
    Effect.flatMap((raw) =>
      raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b
        ? Effect.tryPromise({
          try: () => gunzip(raw),
          catch: (e) => new DatasetError({ file, message: `corrupt gzip data: ${describe(e)}` })
        })
        : Effect.succeed(raw)
    ),
    Effect.map((bytes) => new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength))
  )
