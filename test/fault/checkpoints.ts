/**
 * The checkpoint corrupter: from a good checkpoint directory, fast-check draws corruptions of every kind the issue
 * lists (bit flips and truncations of either file, appended bytes, manifest edits with and without a recomputed
 * checksum: duplicate offsets, overlaps, gaps, shapes, dtypes, names, groups, sizes, config and metadata; NaN and
 * Inf weights with a recomputed SHA-256; FIFOs, directories and devices in place of the files; a sparse huge
 * weights.bin; an interrupted swap), and applies one to a copy.
 */
import { execFileSync } from "node:child_process"
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import fc from "fast-check"
import * as Checkpoint from "../../src/Checkpoint.ts"

/** What a corrupted copy must give: a CheckpointError, or (`loads`) a load identical to the original. */
export interface Corruption {
  readonly kind: string
  readonly description: string
  /** whether a correct reader may load it (then the load must be identical to the original) */
  readonly mayLoad: boolean
  readonly apply: (dir: string) => void
}

type Manifest = Record<string, any>

const readManifest = (dir: string): Manifest => JSON.parse(fs.readFileSync(path.join(dir, Checkpoint.MANIFEST), "utf8"))
const writeManifest = (dir: string, m: Manifest, seal: boolean) =>
  fs.writeFileSync(path.join(dir, Checkpoint.MANIFEST), JSON.stringify(seal ? { ...m, checksum: Checkpoint.manifestChecksum(m) } : m))
const weightsOf = (dir: string) => fs.readFileSync(path.join(dir, Checkpoint.WEIGHTS))

/** Replaces `file` by a FIFO (nobody ever writes to it: a blocking read would never return). */
const fifo = (file: string) => {
  fs.rmSync(file, { force: true })
  execFileSync("mkfifo", [file])
}

/** Edits one tensor entry of the manifest. */
const editTensor = (i: number, edit: (t: Manifest, all: Array<Manifest>) => Manifest, seal: boolean) => (dir: string) => {
  const m = readManifest(dir)
  const tensors = m.tensors.map((t: Manifest, j: number) => (j === i % m.tensors.length ? edit(t, m.tensors) : t))
  writeManifest(dir, { ...m, tensors }, seal)
}

/** Writes a value into weights.bin at float index `at` and recomputes both checksums (only the finiteness check is left). */
const poison = (value: number, at: number) => (dir: string) => {
  const w = weightsOf(dir)
  const floats = new Float32Array(w.buffer, w.byteOffset, w.length / 4)
  floats[at % floats.length] = value
  fs.writeFileSync(path.join(dir, Checkpoint.WEIGHTS), w)
  const m = readManifest(dir)
  writeManifest(dir, { ...m, weights: { ...m.weights, sha256: createHash("sha256").update(w).digest("hex") } }, true)
}

/** The corruptions of a checkpoint whose manifest is `m` (used to size the draws). */
export const corruption = (m: Manifest): fc.Arbitrary<Corruption> => {
  const bytes: number = m.weights.bytes
  const n: number = m.tensors.length
  const params: number = m.tensors.filter((t: Manifest) => t.group === "param").length
  const tensor = fc.nat(n - 1)
  const param = fc.nat(params - 1)
  const floats: Array<{ name: string; offset: number; length: number }> = m.tensors.filter((t: Manifest) => t.dtype === "float32")
  const seal = fc.boolean()
  const make = (kind: string, description: string, apply: (dir: string) => void, mayLoad = false): Corruption =>
    ({ kind, description, apply, mayLoad })
  return fc.oneof(
    fc.tuple(fc.nat(bytes - 1), fc.nat(7)).map(([at, bit]) =>
      make("flip-weights", `flip bit ${bit} of weights byte ${at}`, (d) => {
        const w = weightsOf(d)
        w[at] = w[at]! ^ (1 << bit)
        fs.writeFileSync(path.join(d, Checkpoint.WEIGHTS), w)
      })),
    fc.tuple(fc.nat(100_000), fc.nat(7)).map(([at, bit]) =>
      make("flip-manifest", `flip bit ${bit} of a manifest byte`, (d) => {
        const file = path.join(d, Checkpoint.MANIFEST)
        const b = fs.readFileSync(file)
        const i = at % b.length
        b[i] = b[i]! ^ (1 << bit)
        fs.writeFileSync(file, b)
      })),
    fc.tuple(fc.constantFrom(Checkpoint.WEIGHTS, Checkpoint.MANIFEST), fc.double({ min: 0, max: 0.999, noNaN: true })).map(([file, f]) =>
      make("truncate", `truncate ${file} to ${Math.round(f * 100)}%`, (d) => {
        const p = path.join(d, file)
        fs.truncateSync(p, Math.floor(fs.statSync(p).size * f))
      })),
    fc.tuple(fc.constantFrom(Checkpoint.WEIGHTS, Checkpoint.MANIFEST), fc.integer({ min: 1, max: 64 })).map(([file, k]) =>
      make("append", `append ${k} bytes to ${file}`, (d) => fs.appendFileSync(path.join(d, file), Buffer.alloc(k, 7)))),
    fc.tuple(tensor, fc.nat(n - 1), seal).map(([i, j, s]) =>
      make("duplicate-offset", `tensor ${i} takes tensor ${j}'s offset${s ? " (resealed)" : ""}`,
        editTensor(i, (t, all) => ({ ...t, offset: all[(i === j ? j + 1 : j) % all.length]!.offset }), s))),
    fc.tuple(tensor, fc.constantFrom(-8, -4, 4, 8), seal).map(([i, delta, s]) =>
      make("shift", `shift tensor ${i} by ${delta} bytes${s ? " (resealed)" : ""}`, editTensor(i, (t) => ({ ...t, offset: t.offset + delta }), s))),
    fc.tuple(tensor, seal).map(([i, s]) =>
      make("length", `tensor ${i} claims 4 bytes more${s ? " (resealed)" : ""}`, editTensor(i, (t) => ({ ...t, length: t.length + 4, shape: [...t.shape.slice(0, -1), (t.shape.at(-1) ?? 1) + 1] }), s))),
    // a transposed square matrix is the same tensor: it may load, and must then be identical
    fc.tuple(param, seal).map(([i, s]) =>
      make("shape", `tensor ${i} gets a transposed shape${s ? " (resealed)" : ""}`, editTensor(i, (t) => ({ ...t, shape: [...t.shape].reverse().concat(t.shape.length === 1 ? [1] : []) }), s), true)),
    fc.tuple(param, seal).map(([i, s]) =>
      make("dtype", `parameter ${i} changes dtype${s ? " (resealed)" : ""}`, editTensor(i, (t) => ({ ...t, dtype: t.dtype === "float32" ? "int32" : "float32" }), s))),
    fc.tuple(param, fc.nat(n - 1), seal).map(([i, j, s]) =>
      make("name", `parameter ${i} is renamed${s ? " (resealed)" : ""}`, editTensor(i, (t, all) => ({ ...t, name: i % n === j % n ? `${t.name}/x` : all[j % n]!.name }), s))),
    fc.tuple(param, seal).map(([i, s]) =>
      make("group", `parameter ${i} becomes an extra${s ? " (resealed)" : ""}`, editTensor(i, (t) => ({ ...t, group: t.group === "param" ? "extra" : "param" }), s))),
    // unsealed: any edit is caught by the manifest's checksum; resealed: only edits a correct reader can still
    // tell from the tensors (a resealed act or wScale is a valid checkpoint of another model, not corruption)
    fc.tuple(fc.constantFrom<[string, unknown]>(
      ["act", "tanh"], ["wScale", 0.5], ["dropout", 0.2], ["hidden", 8], ["norm", "none"], ["classes", 3],
      ["inputShape", [1099511627776, 28, 1]], ["inputShape", [8, 8, 2]], ["_tag", "conv"], ["wScale", -1]
    ), seal).filter(([[key, value], s]) => !s || !(key === "act" || key === "dropout" || (key === "wScale" && value === 0.5))).map(([[key, value], s]) =>
      make("config", `config.${key} = ${JSON.stringify(value)}${s ? " (resealed)" : ""}`, (d) => {
        const m = readManifest(d)
        writeManifest(d, { ...m, config: { ...m.config, [key]: value } }, s)
      })),
    fc.constantFrom<[string, unknown]>(["epoch", 99], ["step", 0], ["seed", 3], ["createdAt", "1970-01-01T00:00:00.000Z"], ["extra", { config: {} }]).map(([key, value]) =>
      make("metadata", `metadata.${key} = ${JSON.stringify(value)} (not resealed)`, (d) => {
        const m = readManifest(d)
        writeManifest(d, { ...m, metadata: { ...m.metadata, [key]: value } }, false)
      })),
    fc.constantFrom<[string, unknown]>(
      ["bytes", bytes + 4], ["bytes", 0], ["sha256", "0".repeat(64)], ["file", "other.bin"], ["byteOrder", "big"]
    ).map(([key, value]) =>
      make("weights-entry", `weights.${key} = ${JSON.stringify(value)} (resealed)`, (d) => {
        const m = readManifest(d)
        writeManifest(d, { ...m, weights: { ...m.weights, [key]: value } }, true)
      })),
    fc.constantFrom<[string, unknown]>(["version", 1], ["version", 3], ["format", "other"], ["checksum", undefined], ["checksum", "x"], ["tensors", []]).map(([key, value]) =>
      make("manifest-field", `manifest ${key} = ${JSON.stringify(value)}`, (d) => {
        const m = readManifest(d)
        writeManifest(d, { ...m, [key]: value }, false)
      })),
    // only float32 values can be non-finite (an int32's bits are always a valid int32)
    fc.tuple(fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY), fc.constantFrom(...floats), fc.nat(1 << 20)).map(([v, t, k]) =>
      make("non-finite", `${t.name}[${k % (t.length / 4)}] = ${v}, both checksums recomputed`, poison(v, t.offset / 4 + (k % (t.length / 4))))),
    fc.constantFrom(Checkpoint.WEIGHTS, Checkpoint.MANIFEST).map((file) => make("fifo", `${file} is a FIFO`, (d) => fifo(path.join(d, file)))),
    fc.constantFrom(Checkpoint.WEIGHTS, Checkpoint.MANIFEST).map((file) =>
      make("directory", `${file} is a directory`, (d) => {
        fs.rmSync(path.join(d, file))
        fs.mkdirSync(path.join(d, file))
      })),
    fc.constantFrom(Checkpoint.WEIGHTS, Checkpoint.MANIFEST).map((file) =>
      make("device", `${file} is a symlink to /dev/zero`, (d) => {
        fs.rmSync(path.join(d, file))
        fs.symlinkSync("/dev/zero", path.join(d, file))
      })),
    fc.constantFrom(Checkpoint.WEIGHTS, Checkpoint.MANIFEST).map((file) =>
      make("missing", `${file} is missing`, (d) => fs.rmSync(path.join(d, file)))),
    fc.constantFrom(Checkpoint.WEIGHTS, Checkpoint.MANIFEST).map((file) =>
      make("empty", `${file} is empty`, (d) => fs.writeFileSync(path.join(d, file), ""))),
    fc.constantFrom("null", "[]", "\"x\"", "{}", "{\"format\":").map((text) =>
      make("manifest-json", `the manifest is ${text}`, (d) => fs.writeFileSync(path.join(d, Checkpoint.MANIFEST), text))),
    fc.constant(make("sparse", "weights.bin is a sparse 1.5 GiB file", (d) => {
      fs.truncateSync(path.join(d, Checkpoint.WEIGHTS), 1.5 * 1024 ** 3)
    })),
    fc.constantFrom("old", "tmp").map((kind) =>
      make("swap", `killed inside the swap: only a complete .${kind} copy is left`, (d) => {
        fs.renameSync(d, path.join(path.dirname(d), `.${path.basename(d)}.${kind}-999999999-abcd0123`))
      }, true)),
    fc.constant(make("swap-incomplete", "killed inside the swap: the copy left has no manifest", (d) => {
      const aside = path.join(path.dirname(d), `.${path.basename(d)}.tmp-999999999-00ff00ff`)
      fs.renameSync(d, aside)
      fs.rmSync(path.join(aside, Checkpoint.MANIFEST))
    }))
  )
}
