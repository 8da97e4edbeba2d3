/**
 * Checkpoints: a model's parameters, its config and training metadata (epoch, seed, optimizer state as extra named
 * tensors, backend, library version) in a directory:
 *
 * - `checkpoint.json`: format and version, the model config, the metadata, and a manifest of every tensor
 *   (name, group, shape, dtype, byte offset and length in weights.bin) with the size and SHA-256 of weights.bin,
 *   and the SHA-256 of the manifest itself ({@link manifestChecksum}), so an edited config or metadata is refused;
 * - `weights.bin`: the raw little-endian tensor data, back to back, tiling the file exactly.
 *
 * Writes are atomic: everything goes to a temporary directory next to the target, is flushed to disk, and only then
 * renamed into place (an existing checkpoint is moved aside first and removed last), so a failed write never
 * destroys the previous checkpoint. A process killed between those two renames leaves the target absent and a
 * complete copy beside it: {@link read} then reads the newest complete copy, {@link recover} puts it back in place,
 * and the next save removes what killed saves left behind. Loading verifies everything (regular files, sizes by
 * stat before reading, JSON, both checksums, the tiling, finite values, every tensor's shape against the model)
 * before it assigns a single variable; every problem is a {@link CheckpointError} naming the file or tensor.
 * A `Dynamics.DeqModel` of your own is stored by its variables' names (config `{ _tag: "custom" }`): {@link load}
 * it into the model you build; {@link loadModel}, which builds from the config, refuses it.
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
import { createHash } from "node:crypto"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Schema, type Scope } from "effect"
import { decode, formatBytes, heapProblem, NonNegativeInt } from "./Config.ts"
import { CheckpointError } from "./Errors.ts"
import { exists, io, libraryVersion, readRegular, reason } from "./internal/checkpoint/io.ts"
import { hold, release, removeStale, type Sibling, siblingPath, siblings, syncDir, writerAlive } from "./internal/checkpoint/swap.ts"
import { firstNonFinite, manifestChecksum as checksumOf, tilingProblem } from "./internal/checkpoint/verify.ts"
import { checkEntries, type Entry, swapInto, writeManifest, writeWeights } from "./internal/checkpoint/write.ts"
import type { DeqModel } from "./Dynamics.ts"
import { build, decodeConfig, encodeConfig, isModel, type Model, type ModelConfig, parameterSpecs } from "./Models.ts"
import { tf } from "./Tensor.ts"

/** The manifest file of a checkpoint directory. */
export const MANIFEST = "checkpoint.json"
/** The data file of a checkpoint directory. */
export const WEIGHTS = "weights.bin"
const FORMAT = "effect-deq/checkpoint"
/** 2: the manifest carries its own checksum (version 1 covered weights.bin only) */
const VERSION = 2
/** the config a checkpoint of a custom `Dynamics.DeqModel` stores: its variables by name, nothing to build it from */
const CUSTOM = { _tag: "custom" } as const
const isCustom = (config: unknown): boolean =>
  typeof config === "object" && config !== null && (config as { _tag?: unknown })._tag === "custom" && Object.keys(config).length === 1
/** a manifest lists tensors, it is never large; a bigger file is refused before it is read */
const maxManifestBytes = 64 * 1024 ** 2

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
  tensors: Schema.Array(TensorEntry),
  /** SHA-256 of the manifest without this field ({@link manifestChecksum}) */
  checksum: Schema.String
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
 * A checkpoint read and verified: the directory actually read (the one asked for, or the newest complete copy an
 * interrupted save left beside it), its config, metadata, parameters and extras.
 *
 * @category models
 */
export interface Contents {
  readonly dir: string
  /** the model config; undefined for a custom `Dynamics.DeqModel` (its variables are stored by name only) */
  readonly config: ModelConfig | undefined
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
  /** the directory actually read (see {@link Contents}) */
  readonly dir: string
  /** the model config; undefined for a custom `Dynamics.DeqModel` */
  readonly config: ModelConfig | undefined
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
// Checksums
// ---------------------------------------------------------------------------------------------------------------

/**
 * The checksum a manifest must carry: SHA-256 (hex) of its canonical JSON (keys sorted, no whitespace) without
 * the `checksum` field. Anything that edits a manifest on purpose (a test, a migration) recomputes it with this.
 *
 * @category io
 */
export const manifestChecksum: (manifest: unknown) => string = checksumOf

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

/**
 * Writes a checkpoint of `model` to the directory `dir`, atomically: a temporary sibling directory is written and
 * flushed, then renamed into place; an existing checkpoint at `dir` is moved aside first and removed only once the
 * new one is in place (and moved back if that rename fails). On any failure the temporary directory is removed
 * and the previous checkpoint is untouched. After a successful swap, the temporary and aside copies that killed
 * saves left next to `dir` are removed. A non-finite value in any tensor is refused. Returns the manifest written.
 *
 * @category io
 */
export const save = (dir: string, model: Model | DeqModel, options: SaveOptions = {}): Effect.Effect<Manifest, CheckpointError> =>
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
    const tmp = siblingPath(target, "tmp")
    const write = Effect.gen(function*() {
      yield* io(tmp, "cannot create the temporary directory", () => fs.mkdir(tmp))
      const weights = yield* writeWeights(path.join(tmp, WEIGHTS), target, entries)
      const body = {
        format: FORMAT,
        version: VERSION,
        config: isModel(model) ? encodeConfig(model.config) : CUSTOM,
        metadata: { ...options.metadata, backend: tf.getBackend(), libraryVersion: version, createdAt: new Date().toISOString() },
        weights: { file: WEIGHTS, bytes: weights.bytes, sha256: weights.sha256, byteOrder: "little" },
        tensors: weights.tensors
      } as const
      const manifest: Manifest = { ...body, checksum: checksumOf(body) }
      yield* writeManifest(path.join(tmp, MANIFEST), manifest)
      yield* Effect.promise(() => syncDir(tmp))
      yield* swapInto(tmp, target)
      yield* Effect.promise(() => removeStale(target))
      return manifest
    })
    hold(tmp)
    // on failure or interruption: remove the temporary directory (the previous checkpoint was never touched, or
    // was moved back by the failed swap)
    return yield* write.pipe(
      Effect.onError(() => Effect.promise(() => fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined))),
      Effect.ensuring(Effect.sync(() => release(tmp)))
    )
  })

// ---------------------------------------------------------------------------------------------------------------
// Read and load
// ---------------------------------------------------------------------------------------------------------------

const sizeOf = (shape: ReadonlyArray<number>): number => shape.reduce((a, b) => a * b, 1)

/**
 * Reads, parses and verifies checkpoint.json: schema, model config, its own checksum, the tensors' tiling, and
 * that the parameters are exactly those of the stored config.
 */
const readManifest = (manifestFile: string) =>
  Effect.gen(function*() {
    const bytes = yield* readRegular(manifestFile, (size) =>
      size > maxManifestBytes ? `${formatBytes(size)}: a manifest is never larger than ${formatBytes(maxManifestBytes)}` : undefined)
    const json = yield* Effect.try({
      try: () => JSON.parse(new TextDecoder().decode(bytes)) as unknown,
      catch: (e) => new CheckpointError({ path: manifestFile, message: `invalid JSON: ${reason(e)}` })
    })
    const fail = (message: string, tensor?: string) =>
      new CheckpointError({ path: manifestFile, ...(tensor !== undefined ? { tensor } : {}), message })
    const version = (json as { version?: unknown } | null)?.version
    if (version === 1) {
      return yield* fail(`format version 1 does not protect its config and metadata by a checksum; load it with the effect-deq that wrote it and save it again`)
    }
    const manifest = yield* decode(Manifest, "checkpoint")(json).pipe(Effect.mapError((e) => fail(`invalid manifest: ${e.message}`)))
    const config = isCustom(manifest.config) ?
      undefined :
      yield* decodeConfig(manifest.config, "config").pipe(Effect.mapError((e) => fail(`invalid model config: ${e.message}`)))
    const checksum = checksumOf(json)
    if (checksum !== manifest.checksum) {
      return yield* fail(
        `manifest checksum mismatch: sha256 ${checksum}, the manifest says ${manifest.checksum} ` +
          `(its config, metadata or tensor list was changed after it was written)`
      )
    }
    const names = new Set<string>()
    for (const t of manifest.tensors) {
      if (names.has(t.name)) return yield* fail(`duplicate tensor "${t.name}"`, t.name)
      names.add(t.name)
      if (t.length !== sizeOf(t.shape) * 4) {
        return yield* fail(`tensor "${t.name}": ${t.length} bytes do not hold shape [${t.shape}] of ${t.dtype}`, t.name)
      }
      if (t.offset % 4 !== 0 || t.offset + t.length > manifest.weights.bytes) {
        return yield* fail(`tensor "${t.name}": bytes ${t.offset}..${t.offset + t.length} lie outside weights.bin (${manifest.weights.bytes} bytes)`, t.name)
      }
    }
    const tiling = tilingProblem(manifest.tensors, manifest.weights.bytes)
    if (tiling !== undefined) return yield* fail(tiling.message, tiling.tensor)
    // the parameters are exactly those the stored config describes (names and shapes; nothing is allocated)
    const stored = new Map(manifest.tensors.filter((t) => t.group === "param").map((t) => [t.name, t]))
    const specs = config === undefined ? [...stored.values()] : parameterSpecs(config)
    for (const spec of specs) {
      const t = stored.get(spec.name)
      if (t === undefined) return yield* fail(`parameter "${spec.name}" of the stored config is missing from the tensors`, spec.name)
      if (t.shape.join(",") !== spec.shape.join(",")) {
        return yield* fail(`parameter "${spec.name}": the checkpoint has shape [${t.shape}], its config [${spec.shape}]`, spec.name)
      }
    }
    const known = new Set(specs.map((spec) => spec.name))
    for (const name of stored.keys()) {
      if (!known.has(name)) return yield* fail(`the stored config has no parameter "${name}"`, name)
    }
    return { manifest, config }
  })

/** Reads weights.bin (its size checked by fstat first) and verifies its SHA-256. */
const readWeights = (weightsFile: string, manifest: Manifest) =>
  Effect.gen(function*() {
    const expected = manifest.weights.bytes
    const weights = yield* readRegular(weightsFile, (size) =>
      size !== expected
        ? `${size < expected ? "truncated" : "too long"}: ${size} bytes, the manifest says ${expected}`
        : heapProblem(size, `the weights (${size} bytes)`))
    const digest = createHash("sha256").update(weights).digest("hex")
    if (digest !== manifest.weights.sha256) {
      return yield* new CheckpointError({
        path: weightsFile,
        message: `checksum mismatch: sha256 ${digest}, the manifest says ${manifest.weights.sha256}`
      })
    }
    return weights
  })

/** Verifies and reads one checkpoint directory. */
const readDir = (root: string): Effect.Effect<Contents, CheckpointError> =>
  Effect.gen(function*() {
    const manifestFile = path.join(root, MANIFEST)
    const { manifest, config } = yield* readManifest(manifestFile)
    const weights = yield* readWeights(path.join(root, WEIGHTS), manifest)
    const params: Array<StoredTensor> = [], extras: Array<StoredTensor> = []
    for (const t of manifest.tensors) {
      // copy: every tensor gets its own buffer, aligned for its typed array
      const buf = weights.buffer.slice(weights.byteOffset + t.offset, weights.byteOffset + t.offset + t.length)
      const data = t.dtype === "float32" ? new Float32Array(buf) : new Int32Array(buf)
      const bad = firstNonFinite(data)
      if (bad >= 0) {
        return yield* new CheckpointError({
          path: path.join(root, WEIGHTS),
          tensor: t.name,
          message: `tensor "${t.name}" holds ${data[bad]} at index ${bad}; a checkpoint stores finite values only`
        })
      }
      const stored: StoredTensor = { name: t.name, shape: t.shape, dtype: t.dtype, data }
      if (t.group === "param") params.push(stored)
      else extras.push(stored)
    }
    return { dir: root, config, metadata: manifest.metadata, params, extras }
  })

/** When a copy was written, from its manifest (0 when that cannot be read: tried last). */
const createdAt = (dir: string): Effect.Effect<number> =>
  readRegular(path.join(dir, MANIFEST), (size) => (size > maxManifestBytes ? "too large" : undefined)).pipe(
    Effect.map((bytes) => {
      const parsed = JSON.parse(new TextDecoder().decode(bytes)) as { metadata?: { createdAt?: string } } | null
      return Date.parse(parsed?.metadata?.createdAt ?? "") || 0
    }),
    Effect.catchDefect(() => Effect.succeed(0)),
    Effect.orElseSucceed(() => 0)
  )

/**
 * The newest complete copy an interrupted save left next to `root` (its temporary directory or the previous
 * checkpoint moved aside), verified like any checkpoint; `dead` keeps only copies whose writer is gone.
 */
const newestCopy = (root: string, dead: boolean) =>
  Effect.gen(function*() {
    const copies = (yield* Effect.promise(() => siblings(root))).filter((s) => !dead || !writerAlive(s))
    const dated = yield* Effect.forEach(copies, (s) => Effect.map(createdAt(s.path), (at) => ({ s, at })))
    dated.sort((a, b) => b.at - a.at)
    const failures: Array<string> = []
    for (const { s } of dated) {
      const result = yield* Effect.result(readDir(s.path))
      if (result._tag === "Success") return { copy: s as Sibling, contents: result.success, failures }
      failures.push(`${s.path}: ${result.failure.message}`)
    }
    return { copy: undefined, contents: undefined, failures }
  })

/**
 * Reads and verifies a checkpoint directory without building anything: both files are regular files, their sizes
 * (by stat, before reading) are plausible and match the manifest, the manifest parses and decodes and matches its
 * own checksum, weights.bin matches its SHA-256, the tensors tile weights.bin exactly and agree with their shapes
 * and dtypes, names are unique, every value is finite, the model config decodes (its sizes within the wasm heap)
 * and its parameters are exactly the stored ones (names and shapes). When `dir` does not exist but an interrupted
 * save left complete copies next to it, the newest is read (`dir` of the result says which).
 *
 * @category io
 */
export const read = (dir: string): Effect.Effect<Contents, CheckpointError> =>
  Effect.gen(function*() {
    const root = path.resolve(dir)
    const stat = yield* Effect.promise(() => fs.stat(root).catch(() => undefined))
    if (stat !== undefined) {
      if (!stat.isDirectory()) return yield* new CheckpointError({ path: root, message: "not a directory" })
      return yield* readDir(root)
    }
    const { contents, failures } = yield* newestCopy(root, false)
    if (contents !== undefined) return contents
    return yield* new CheckpointError({
      path: root,
      message: "no checkpoint directory" +
        (failures.length > 0 ? `; no copy left by an interrupted save is complete (${failures.join("; ")})` : "")
    })
  })

/**
 * Whether `dir` holds a checkpoint or, when it is absent, an interrupted save left a copy next to it that
 * {@link read} would try (a cheap look at the files; `read` verifies).
 *
 * @category io
 */
export const present = (dir: string): Effect.Effect<boolean> =>
  Effect.promise(async () => {
    const root = path.resolve(dir)
    if (await exists(root)) return exists(path.join(root, MANIFEST))
    for (const s of await siblings(root)) if (await exists(path.join(s.path, MANIFEST))) return true
    return false
  })

/**
 * Finishes what an interrupted save left: when `dir` is absent and a complete copy whose writer is gone lies next
 * to it, the newest such copy is renamed into place; then the stale copies are removed. Returns `dir` when it now
 * holds a checkpoint, `undefined` when there is none. Resuming a run calls this first, so a kill inside a
 * checkpoint swap never loses the checkpoint.
 *
 * @category io
 */
export const recover = (dir: string): Effect.Effect<string | undefined, CheckpointError> =>
  Effect.gen(function*() {
    const root = path.resolve(dir)
    const stat = yield* Effect.promise(() => fs.stat(root).catch(() => undefined))
    if (stat !== undefined && !stat.isDirectory()) return yield* new CheckpointError({ path: root, message: "not a directory" })
    if (stat === undefined) {
      const { copy } = yield* newestCopy(root, true)
      if (copy === undefined) return undefined
      yield* io(root, `cannot move ${copy.path} into place`, () => fs.rename(copy.path, root))
      yield* Effect.promise(() => syncDir(path.dirname(root)))
    }
    yield* Effect.promise(() => removeStale(root))
    return root
  })

/**
 * Assigns checkpoint parameters to a model's variables in place, after checking every one: each model parameter
 * must be in the checkpoint with the same shape and dtype, and the checkpoint must hold no parameter the model
 * lacks. Nothing is assigned unless all match.
 *
 * @category io
 */
export const assign = (
  model: Model | DeqModel,
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
export const load = (dir: string, model: Model | DeqModel): Effect.Effect<Loaded, CheckpointError> =>
  Effect.gen(function*() {
    const contents = yield* read(dir)
    yield* assign(model, contents.params, path.join(contents.dir, MANIFEST))
    return { dir: contents.dir, config: contents.config, metadata: contents.metadata, extras: contents.extras }
  })

/**
 * Builds the model from the stored config (its variables owned by the current Scope), then loads the parameters.
 *
 * @category io
 */
export const loadModel = (
  dir: string
): Effect.Effect<Loaded & { readonly config: ModelConfig; readonly model: Model }, CheckpointError, Scope.Scope> =>
  Effect.gen(function*() {
    const contents = yield* read(dir)
    const manifestFile = path.join(contents.dir, MANIFEST)
    if (contents.config === undefined) {
      return yield* new CheckpointError({
        path: manifestFile,
        message: "the checkpoint holds a custom model's variables (no config to build it from): build the model and use Checkpoint.load"
      })
    }
    const model = yield* build(contents.config).pipe(
      Effect.mapError((e) => new CheckpointError({ path: manifestFile, message: `cannot build the stored model: ${e.message}` }))
    )
    yield* assign(model, contents.params, manifestFile)
    return { model, dir: contents.dir, config: contents.config, metadata: contents.metadata, extras: contents.extras }
  })
