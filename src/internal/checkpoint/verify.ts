/**
 * What makes a checkpoint trustworthy besides its files being there: the manifest's own checksum (so the config and
 * the metadata are covered, not only weights.bin), tensors that tile weights.bin exactly, and finite values.
 * Plain functions; src/Checkpoint.ts turns their answers into CheckpointErrors.
 *
 * @internal
 */
import { createHash } from "node:crypto"

const sortKeys = (u: unknown): unknown => {
  if (Array.isArray(u)) return u.map(sortKeys)
  if (typeof u === "object" && u !== null) {
    const out: Record<string, unknown> = {}
    for (const k of Object.keys(u).sort()) out[k] = sortKeys((u as Record<string, unknown>)[k])
    return out
  }
  return u
}

/**
 * The manifest's checksum: SHA-256 (hex) of its canonical JSON (keys sorted at every level, no whitespace)
 * without the `checksum` field itself. The value goes through JSON first, so what is hashed at save time is what
 * a reader parses back.
 *
 * @internal
 */
export const manifestChecksum = (manifest: unknown): string => {
  const { checksum: _, ...rest } = JSON.parse(JSON.stringify(manifest)) as Record<string, unknown>
  return createHash("sha256").update(JSON.stringify(sortKeys(rest))).digest("hex")
}

/**
 * The first way the tensors fail to tile `bytes` bytes exactly (every byte belongs to exactly one tensor, in
 * any order): a gap, an overlap (two tensors reading the same bytes) or a tail no tensor covers.
 *
 * @internal
 */
export const tilingProblem = (
  tensors: ReadonlyArray<{ readonly name: string; readonly offset: number; readonly length: number }>,
  bytes: number
): { readonly tensor?: string; readonly message: string } | undefined => {
  const sorted = [...tensors].sort((a, b) => a.offset - b.offset || a.length - b.length)
  let end = 0
  let previous: string | undefined
  for (const t of sorted) {
    if (t.offset < end) {
      return { tensor: t.name, message: `tensor "${t.name}" (bytes ${t.offset}..${t.offset + t.length}) overlaps "${previous}" (which ends at ${end})` }
    }
    if (t.offset > end) {
      return { tensor: t.name, message: `bytes ${end}..${t.offset} of weights.bin belong to no tensor (a gap before "${t.name}")` }
    }
    end = t.offset + t.length
    previous = t.name
  }
  return end === bytes ? undefined : { message: `bytes ${end}..${bytes} of weights.bin belong to no tensor` }
}

/**
 * The index of the first value that is NaN or infinite, or -1.
 *
 * @internal
 */
export const firstNonFinite = (data: Float32Array | Int32Array): number => {
  if (data instanceof Int32Array) return -1
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) return i
  }
  return -1
}
