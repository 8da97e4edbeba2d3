/**
 * Writing a checkpoint: checking the tensors, writing weights.bin and checkpoint.json (each fsynced) into the
 * temporary directory, and the swap into place (see src/internal/checkpoint/swap.ts for its names and leftovers).
 *
 * @internal
 */
import { createHash } from "node:crypto"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { Effect } from "effect"
import type { Manifest, TensorEntry } from "../../Checkpoint.ts"
import { CheckpointError } from "../../Errors.ts"
import type { tf } from "../../Tensor.ts"
import { bytesOf, exists, io } from "./io.ts"
import { hold, release, siblingPath, swapDelay, syncDir } from "./swap.ts"
import { firstNonFinite } from "./verify.ts"

/**
 * One tensor to write: a model parameter or an extra.
 *
 * @internal
 */
export type Entry = { readonly name: string; readonly group: "param" | "extra"; readonly tensor: tf.Tensor }

/**
 * Every tensor has a non-empty unique name and a storable dtype.
 *
 * @internal
 */
export const checkEntries = (target: string, entries: ReadonlyArray<Entry>): Effect.Effect<void, CheckpointError> =>
  Effect.suspend(() => {
    const seen = new Set<string>()
    for (const e of entries) {
      const fail = (message: string) => Effect.fail(new CheckpointError({ path: target, tensor: e.name, message }))
      if (e.name.length === 0) return fail("empty tensor name")
      if (seen.has(e.name)) return fail(`duplicate tensor name "${e.name}"`)
      seen.add(e.name)
      if (e.tensor.dtype !== "float32" && e.tensor.dtype !== "int32") {
        return fail(`tensor "${e.name}" has dtype ${e.tensor.dtype}; checkpoints store float32 and int32`)
      }
    }
    return Effect.void
  })

/**
 * Writes the tensors one after another into `file` (fsynced), refusing non-finite values; returns their manifest
 * entries, size and hash.
 *
 * @internal
 */
export const writeWeights = (file: string, target: string, entries: ReadonlyArray<Entry>) =>
  Effect.gen(function*() {
    const hash = createHash("sha256")
    const tensors: Array<TensorEntry> = []
    let offset = 0
    const fh = yield* io(file, "cannot open for writing", () => fs.open(file, "wx"))
    yield* Effect.ensuring(
      Effect.gen(function*() {
        for (const e of entries) {
          const data = yield* io(target, `cannot read tensor "${e.name}"`, async () => {
            if (e.tensor.isDisposed) throw new Error("the tensor is disposed")
            return (await e.tensor.data()) as Float32Array | Int32Array
          }, e.name)
          const bad = firstNonFinite(data)
          if (bad >= 0) {
            return yield* new CheckpointError({
              path: target,
              tensor: e.name,
              message: `tensor "${e.name}" holds ${data[bad]} at index ${bad}; a checkpoint stores finite values only`
            })
          }
          const bytes = bytesOf(data)
          yield* io(file, "write failed", () => fh.write(bytes, 0, bytes.length), e.name)
          hash.update(bytes)
          tensors.push({
            name: e.name,
            group: e.group,
            shape: [...e.tensor.shape],
            dtype: e.tensor.dtype as "float32" | "int32",
            offset,
            length: bytes.length
          })
          offset += bytes.length
        }
        yield* io(file, "fsync failed", () => fh.sync())
      }),
      Effect.promise(() => fh.close().catch(() => undefined))
    )
    return { tensors, bytes: offset, sha256: hash.digest("hex") }
  })

/**
 * Writes and fsyncs the manifest as JSON.
 *
 * @internal
 */
export const writeManifest = (file: string, manifest: Manifest): Effect.Effect<void, CheckpointError> =>
  io(file, "write failed", async () => {
    const mh = await fs.open(file, "wx")
    try {
      await mh.writeFile(JSON.stringify(manifest, null, 2) + "\n", "utf8")
      await mh.sync()
    } finally {
      await mh.close()
    }
  })

/**
 * Swaps the written directory `tmp` into `target`: old aside, new in, old removed; a failed swap puts the old back.
 * Uninterruptible: once the old checkpoint is aside, the new one goes in.
 *
 * @internal
 */
export const swapInto = (tmp: string, target: string): Effect.Effect<void, CheckpointError> =>
  Effect.uninterruptible(Effect.gen(function*() {
    const parent = path.dirname(target)
    if (yield* Effect.promise(() => exists(target))) {
      const aside = siblingPath(target, "old")
      hold(aside)
      yield* Effect.gen(function*() {
        yield* io(target, "cannot move the previous checkpoint aside", () => fs.rename(target, aside))
        yield* Effect.promise(swapDelay)
        yield* io(target, "cannot move the new checkpoint into place", () => fs.rename(tmp, target)).pipe(
          Effect.tapError(() => Effect.promise(() => fs.rename(aside, target).catch(() => undefined)))
        )
        yield* Effect.promise(() => syncDir(parent))
        yield* io(aside, "cannot remove the previous checkpoint", () => fs.rm(aside, { recursive: true, force: true }))
      }).pipe(Effect.ensuring(Effect.sync(() => release(aside))))
    } else {
      yield* io(target, "cannot move the new checkpoint into place", () => fs.rename(tmp, target))
      yield* Effect.promise(() => syncDir(parent))
    }
  }))
