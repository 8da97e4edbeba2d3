/**
 * Checkpoints: a model's parameters, its config and training metadata (epoch, seed, optimizer state as extra named
 * tensors, backend, library version) in a directory:
 *
 * - `checkpoint.json`: format and version, the model config, the metadata, and a manifest of every tensor
 *   (name, group, shape, dtype, byte offset and length in weights.bin) with the size and SHA-256 of weights.bin;
 * - `weights.bin`: the raw little-endian tensor data, back to back.
 *
 * Writes are atomic: everything goes to a temporary directory next to the target, is flushed to disk, and only then
 * renamed into place (an existing checkpoint is moved aside first and removed last), so a failed write never
 * destroys the previous checkpoint. Loading verifies everything (files, JSON, checksum, sizes, every tensor's shape
 * against the model) before it assigns a single variable; every problem is a {@link CheckpointError} naming the
 * file or tensor.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Checkpoint from "effect-deq/Checkpoint"
 * import * as Models from "effect-deq/Models"
 *
 * const program = Effect.gen(function*() {
 *   const model = yield* Models.fc({ hidden: 64 }, { seed: 1 })
 *   yield* Checkpoint.save("runs/fc/checkpoint", model, { metadata: { epoch: 3, seed: 1 } })
 *   const { model: restored, metadata } = yield* Checkpoint.loadModel("runs/fc/checkpoint")
 * }).pipe(Effect.scoped)
 * ```
 *
 * @since 0.1.0
 */
import { createHash, randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Schema, type Scope } from "effect"
import { decode, NonNegativeInt } from "./Config.ts"
import { CheckpointError, messageOf } from "./Errors.ts"
import { build, decodeConfig, encodeConfig, type Model, type ModelConfig } from "./Models.ts"
import { tf } from "./Tensor.ts"

/** The manifest file of a checkpoint directory. */
export const MANIFEST = "checkpoint.json"
/** The data file of a checkpoint directory. */
export const WEIGHTS = "weights.bin"
const FORMAT = "effect-deq/checkpoint"
const VERSION = 1

// ---------------------------------------------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------------------------------------------


/**
 * Training metadata stored with a checkpoint. `backend`, `libraryVersion` and `createdAt` are filled in by
 * {@link save}; `extra` holds any JSON the caller wants to keep (learning-rate schedule position, run id, ...).
 *
 * @category models
 */
export const Metadata = Schema.Struct({
  epoch: Schema.optional(NonNegativeInt),
  step: Schema.optional(NonNegativeInt),
  seed: Schema.optional(Schema.Number),
  backend: Schema.String,
  libraryVersion: Schema.String,
  createdAt: Schema.String,
  extra: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
})

/**
 * The decoded metadata of a checkpoint.
 *
 * @category models
 */
export type Metadata = typeof Metadata.Type

/**
 * What the caller gives {@link save}: the metadata without the fields save fills in.
 *
 * @category models
 */
export type MetadataInput = Omit<Metadata, "backend" | "libraryVersion" | "createdAt">

const Dtype = Schema.Literals(["float32", "int32"])

/**
 * One tensor of the manifest: `group` "param" (a model variable) or "extra" (e.g. optimizer state).
 *
 * @category models
 */
export const TensorEntry = Schema.Struct({
  name: Schema.String,
  group: Schema.Literals(["param", "extra"]),
  shape: Schema.Array(NonNegativeInt),
  dtype: Dtype,
  offset: NonNegativeInt,
  length: NonNegativeInt
})

/**
 * One decoded manifest entry.
 *
 * @category models
 */
export type TensorEntry = typeof TensorEntry.Type

/**
 * The content of `checkpoint.json`. The model config is decoded separately (by `Models.decodeConfig`).
 *
 * @category models
 */
export const Manifest = Schema.Struct({
  format: Schema.Literal(FORMAT),
  version: Schema.Literal(VERSION),
  config: Schema.Unknown,
  metadata: Metadata,
  weights: Schema.Struct({
    file: Schema.Literal(WEIGHTS),
    bytes: NonNegativeInt,
    sha256: Schema.String,
    byteOrder: Schema.Literal("little")
  }),
  tensors: Schema.Array(TensorEntry)
})

/**
 * The decoded content of `checkpoint.json`.
 *
 * @category models
 */
export type Manifest = typeof Manifest.Type

// ---------------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------------

/**
 * A tensor to store next to the parameters (optimizer moments, step counters, ...). Names must be unique among
 * the parameters and extras.
 *
 * @category models
 */
export interface NamedTensor {
  readonly name: string
  readonly tensor: tf.Tensor
}

/**
 * A tensor read back from a checkpoint, as plain data (no tfjs tensor, nothing to dispose).
 *
 * @category models
 */
export interface StoredTensor {
  readonly name: string
  readonly shape: ReadonlyArray<number>
  readonly dtype: "float32" | "int32"
  readonly data: Float32Array | Int32Array
}

/**
 * A checkpoint read and verified: its config, metadata, parameters and extras.
 *
 * @category models
 */
export interface Contents {
  readonly config: ModelConfig
  readonly metadata: Metadata
  readonly params: ReadonlyArray<StoredTensor>
  readonly extras: ReadonlyArray<StoredTensor>
}

/**
 * What a load returns besides the model: the metadata and the extra tensors (as data; see {@link toTensor}).
 *
 * @category models
 */
export interface Loaded {
  readonly config: ModelConfig
  readonly metadata: Metadata
  readonly extras: ReadonlyArray<StoredTensor>
}

/**
 * A stored tensor as a new tfjs tensor (the caller owns it).
 *
 * @category constructors
 */
export const toTensor = (t: StoredTensor): tf.Tensor => tf.tensor(t.data, t.shape as Array<number>, t.dtype)

// ---------------------------------------------------------------------------------------------------------------
// IO helpers
// ---------------------------------------------------------------------------------------------------------------

const reason = (u: unknown): string => {
  const code = u instanceof Error ? (u as NodeJS.ErrnoException).code : undefined
  return code !== undefined ? `${code}: ${messageOf(u)}` : messageOf(u)
}

const io = <A>(file: string, what: string, f: () => Promise<A>, tensor?: string): Effect.Effect<A, CheckpointError> =>
  Effect.tryPromise({
    try: f,
    catch: (e) =>
      new CheckpointError({ path: file, ...(tensor !== undefined ? { tensor } : {}), message: `${what}: ${reason(e)}` })
  })

const exists = (p: string): Promise<boolean> => fs.stat(p).then(() => true, () => false)

/** fsync a directory so the renames in it are durable; not every file system allows it, so failures are ignored */
const syncDir = async (dir: string): Promise<void> => {
  let fh: fs.FileHandle | undefined
  try {
    fh = await fs.open(dir, "r")
    await fh.sync()
  } catch {
    // e.g. EISDIR / EINVAL on some platforms: durability is then best effort
  } finally {
    await fh?.close().catch(() => undefined)
  }
}

let versionCache: string | undefined

const libraryVersion = async (): Promise<string> => {
  if (versionCache !== undefined) return versionCache
  try {
    const pkg = JSON.parse(await fs.readFile(new URL("../package.json", import.meta.url), "utf8")) as { version?: unknown }
    versionCache = typeof pkg.version === "string" ? pkg.version : "unknown"
  } catch {
    versionCache = "unknown"
  }
  return versionCache
}

const bytesOf = (data: Float32Array | Int32Array): Uint8Array => new Uint8Array(data.buffer, data.byteOffset, data.byteLength)

const isLittleEndian = os.endianness() === "LE"

// ---------------------------------------------------------------------------------------------------------------
// Save
// ---------------------------------------------------------------------------------------------------------------

/**
 * Options of {@link save}.
 *
 * @category models
 */
export interface SaveOptions {
  readonly metadata?: MetadataInput
  /** extra tensors (optimizer state, ...); read back as `extras` */
  readonly extras?: ReadonlyArray<NamedTensor>
}

type Entry = { readonly name: string; readonly group: "param" | "extra"; readonly tensor: tf.Tensor }

/** Every tensor has a non-empty unique name and a storable dtype. */
const checkEntries = (target: string, entries: ReadonlyArray<Entry>): Effect.Effect<void, CheckpointError> =>
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

/** Writes the tensors one after another into `file` (fsynced); returns their manifest entries, size and hash. */
const writeWeights = (file: string, target: string, entries: ReadonlyArray<Entry>) =>
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

/** Writes and fsyncs the manifest as JSON. */
const writeManifest = (file: string, manifest: Manifest): Effect.Effect<void, CheckpointError> =>
  io(file, "write failed", async () => {
    const mh = await fs.open(file, "wx")
    try {
      await mh.writeFile(JSON.stringify(manifest, null, 2) + "\n", "utf8")
      await mh.sync()
    } finally {
      await mh.close()
    }
  })

/** Swaps the written directory `tmp` into `target`: old aside, new in, old removed; a failed swap puts the old back. */
const swapInto = (tmp: string, target: string): Effect.Effect<void, CheckpointError> =>
  Effect.gen(function*() {
    const parent = path.dirname(target)
    if (yield* Effect.promise(() => exists(target))) {
      const aside = path.join(parent, `.${path.basename(target)}.old-${process.pid}-${randomBytes(4).toString("hex")}`)
      yield* io(target, "cannot move the previous checkpoint aside", () => fs.rename(target, aside))
      yield* io(target, "cannot move the new checkpoint into place", () => fs.rename(tmp, target)).pipe(
        Effect.tapError(() => Effect.promise(() => fs.rename(aside, target).catch(() => undefined)))
      )
      yield* Effect.promise(() => syncDir(parent))
      yield* io(aside, "cannot remove the previous checkpoint", () => fs.rm(aside, { recursive: true, force: true }))
    } else {
      yield* io(target, "cannot move the new checkpoint into place", () => fs.rename(tmp, target))
      yield* Effect.promise(() => syncDir(parent))
    }
  })

/**
 * Writes a checkpoint of `model` to the directory `dir`, atomically: a temporary sibling directory is written and
 * flushed, then renamed into place; an existing checkpoint at `dir` is moved aside first and removed only once the
 * new one is in place (and moved back if that rename fails). On any failure the temporary directory is removed
 * and the previous checkpoint is untouched. Returns the manifest written.
 *
 * @category io
 */
export const save = (dir: string, model: Model, options: SaveOptions = {}): Effect.Effect<Manifest, CheckpointError> =>
  Effect.gen(function*() {
    const target = path.resolve(dir)
    if (!isLittleEndian) {
      return yield* new CheckpointError({ path: target, message: "checkpoints are little-endian; this machine is big-endian" })
    }
    const entries: Array<Entry> = [
      ...model.params.map((p) => ({ name: p.name, group: "param" as const, tensor: p.variable as tf.Tensor })),
      ...(options.extras ?? []).map((e) => ({ name: e.name, group: "extra" as const, tensor: e.tensor }))
    ]
    yield* checkEntries(target, entries)
    const parent = path.dirname(target)
    yield* io(parent, "cannot create the parent directory", () => fs.mkdir(parent, { recursive: true }))
    const existing = yield* io(target, "cannot inspect the target", () => fs.stat(target).catch(() => undefined))
    if (existing !== undefined && !existing.isDirectory()) {
      return yield* new CheckpointError({ path: target, message: "the target exists and is not a directory" })
    }
    const version = yield* Effect.promise(libraryVersion)
    const tmp = path.join(parent, `.${path.basename(target)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`)
    const write = Effect.gen(function*() {
      yield* io(tmp, "cannot create the temporary directory", () => fs.mkdir(tmp))
      const weights = yield* writeWeights(path.join(tmp, WEIGHTS), target, entries)
      const manifest: Manifest = {
        format: FORMAT,
        version: VERSION,
        config: encodeConfig(model.config),
        metadata: { ...options.metadata, backend: tf.getBackend(), libraryVersion: version, createdAt: new Date().toISOString() },
        weights: { file: WEIGHTS, bytes: weights.bytes, sha256: weights.sha256, byteOrder: "little" },
        tensors: weights.tensors
      }
      yield* writeManifest(path.join(tmp, MANIFEST), manifest)
      yield* Effect.promise(() => syncDir(tmp))
      yield* swapInto(tmp, target)
      return manifest
    })
    // on failure or interruption: remove the temporary directory (the previous checkpoint was never touched, or
    // was moved back by the failed swap)
    return yield* write.pipe(
      Effect.onError(() => Effect.promise(() => fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined)))
    )
  })

// ---------------------------------------------------------------------------------------------------------------
// Read and load
// ---------------------------------------------------------------------------------------------------------------

const sizeOf = (shape: ReadonlyArray<number>): number => shape.reduce((a, b) => a * b, 1)

/**
 * Reads and verifies a checkpoint directory without building anything: both files exist, the manifest parses and
 * decodes, weights.bin has the recorded size and SHA-256, every tensor's extent lies inside weights.bin and matches
 * its shape and dtype, names are unique, and the model config decodes.
 *
 * @category io
 */
export const read = (dir: string): Effect.Effect<Contents, CheckpointError> =>
  Effect.gen(function*() {
    const root = path.resolve(dir)
    const manifestFile = path.join(root, MANIFEST)
    const weightsFile = path.join(root, WEIGHTS)
    const stat = yield* Effect.promise(() => fs.stat(root).catch(() => undefined))
    if (stat === undefined || !stat.isDirectory()) {
      // an interrupted swap leaves the previous checkpoint next to it under .<name>.old-*
      const siblings = yield* Effect.promise(() => fs.readdir(path.dirname(root)).catch(() => [] as Array<string>))
      const aside = siblings.filter((s) => s.startsWith(`.${path.basename(root)}.old-`))
      return yield* new CheckpointError({
        path: root,
        message: (stat === undefined ? "no checkpoint directory" : "not a directory") +
          (aside.length > 0 ? `; a previous checkpoint was left aside at ${path.join(path.dirname(root), aside[0]!)}` : "")
      })
    }
    const text = yield* io(manifestFile, "cannot read", () => fs.readFile(manifestFile, "utf8"))
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (e) => new CheckpointError({ path: manifestFile, message: `invalid JSON: ${reason(e)}` })
    })
    const manifest = yield* decode(Manifest, "checkpoint")(json).pipe(
      Effect.mapError((e) => new CheckpointError({ path: manifestFile, message: `invalid manifest: ${e.message}` }))
    )
    const config = yield* decodeConfig(manifest.config, "config").pipe(
      Effect.mapError((e) => new CheckpointError({ path: manifestFile, message: `invalid model config: ${e.message}` }))
    )
    const weights = yield* io(weightsFile, "cannot read", () => fs.readFile(weightsFile))
    if (weights.length !== manifest.weights.bytes) {
      return yield* new CheckpointError({
        path: weightsFile,
        message: `${weights.length < manifest.weights.bytes ? "truncated" : "too long"}: ${weights.length} bytes, ` +
          `the manifest says ${manifest.weights.bytes}`
      })
    }
    const digest = createHash("sha256").update(weights).digest("hex")
    if (digest !== manifest.weights.sha256) {
      return yield* new CheckpointError({
        path: weightsFile,
        message: `checksum mismatch: sha256 ${digest}, the manifest says ${manifest.weights.sha256}`
      })
    }
    const names = new Set<string>()
    const params: Array<StoredTensor> = [], extras: Array<StoredTensor> = []
    for (const t of manifest.tensors) {
      const fail = (message: string) => new CheckpointError({ path: manifestFile, tensor: t.name, message })
      if (names.has(t.name)) return yield* fail(`duplicate tensor "${t.name}"`)
      names.add(t.name)
      if (t.length !== sizeOf(t.shape) * 4) {
        return yield* fail(`tensor "${t.name}": ${t.length} bytes do not hold shape [${t.shape}] of ${t.dtype}`)
      }
      if (t.offset % 4 !== 0 || t.offset + t.length > weights.length) {
        return yield* fail(`tensor "${t.name}": bytes ${t.offset}..${t.offset + t.length} lie outside weights.bin (${weights.length} bytes)`)
      }
      // copy: a Buffer's byteOffset need not be aligned for a typed-array view
      const buf = weights.buffer.slice(weights.byteOffset + t.offset, weights.byteOffset + t.offset + t.length)
      const data = t.dtype === "float32" ? new Float32Array(buf) : new Int32Array(buf)
      const stored: StoredTensor = { name: t.name, shape: t.shape, dtype: t.dtype, data }
      if (t.group === "param") params.push(stored)
      else extras.push(stored)
    }
    return { config, metadata: manifest.metadata, params, extras }
  })

/**
 * Assigns checkpoint parameters to a model's variables in place, after checking every one: each model parameter
 * must be in the checkpoint with the same shape and dtype, and the checkpoint must hold no parameter the model
 * lacks. Nothing is assigned unless all match.
 *
 * @category io
 */
export const assign = (
  model: Model,
  params: ReadonlyArray<StoredTensor>,
  where = "<checkpoint>"
): Effect.Effect<void, CheckpointError> =>
  Effect.gen(function*() {
    const stored = new Map(params.map((p) => [p.name, p]))
    for (const p of model.params) {
      const s = stored.get(p.name)
      if (s === undefined) {
        return yield* new CheckpointError({ path: where, tensor: p.name, message: `parameter "${p.name}" is missing from the checkpoint` })
      }
      if (s.shape.length !== p.variable.shape.length || s.shape.some((d, i) => d !== p.variable.shape[i])) {
        return yield* new CheckpointError({
          path: where,
          tensor: p.name,
          message: `parameter "${p.name}": the checkpoint has shape [${s.shape}], the model [${p.variable.shape}]`
        })
      }
      if (s.dtype !== p.variable.dtype) {
        return yield* new CheckpointError({
          path: where,
          tensor: p.name,
          message: `parameter "${p.name}": the checkpoint has dtype ${s.dtype}, the model ${p.variable.dtype}`
        })
      }
    }
    const known = new Set(model.params.map((p) => p.name))
    for (const s of params) {
      if (!known.has(s.name)) {
        return yield* new CheckpointError({ path: where, tensor: s.name, message: `the model has no parameter "${s.name}"` })
      }
    }
    for (const p of model.params) {
      const s = stored.get(p.name)!
      tf.tidy(() => p.variable.assign(tf.tensor(s.data, s.shape as Array<number>, s.dtype)))
    }
  })

/**
 * Loads a checkpoint into an existing model (variables assigned in place). Every parameter's shape is checked
 * against the model first; a mismatch is a CheckpointError naming the tensor.
 *
 * @category io
 */
export const load = (dir: string, model: Model): Effect.Effect<Loaded, CheckpointError> =>
  Effect.gen(function*() {
    const contents = yield* read(dir)
    yield* assign(model, contents.params, path.join(path.resolve(dir), MANIFEST))
    return { config: contents.config, metadata: contents.metadata, extras: contents.extras }
  })

/**
 * Builds the model from the stored config (its variables owned by the current Scope), then loads the parameters.
 *
 * @category io
 */
export const loadModel = (dir: string): Effect.Effect<Loaded & { readonly model: Model }, CheckpointError, Scope.Scope> =>
  Effect.gen(function*() {
    const contents = yield* read(dir)
    const manifestFile = path.join(path.resolve(dir), MANIFEST)
    const model = yield* build(contents.config).pipe(
      Effect.mapError((e) => new CheckpointError({ path: manifestFile, message: `cannot build the stored model: ${e.message}` }))
    )
    yield* assign(model, contents.params, manifestFile)
    return { model, config: contents.config, metadata: contents.metadata, extras: contents.extras }
  })
