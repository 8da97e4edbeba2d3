/**
 * The checkpoint swap and what an interrupted one leaves behind. A save writes `.<name>.tmp-<pid>-<hex>` next to
 * the target, moves an existing target aside to `.<name>.old-<pid>-<hex>`, renames the temporary directory into
 * place and removes the aside copy. A kill between those steps leaves the target absent with a complete copy
 * beside it; these helpers list such copies, tell whether their writer still runs, and remove the stale ones.
 *
 * @internal
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import * as path from "node:path"

/**
 * A copy next to a checkpoint directory: its save's temporary directory or the previous checkpoint moved aside.
 *
 * @internal
 */
export interface Sibling {
  readonly path: string
  readonly kind: "tmp" | "old"
  readonly pid: number
}

/**
 * A fresh sibling name of `target` of the given kind, owned by this process.
 *
 * @internal
 */
export const siblingPath = (target: string, kind: "tmp" | "old"): string =>
  path.join(path.dirname(target), `.${path.basename(target)}.${kind}-${process.pid}-${randomBytes(4).toString("hex")}`)

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/**
 * The temporary and aside copies next to `target` (any process's).
 *
 * @internal
 */
export const siblings = async (target: string): Promise<Array<Sibling>> => {
  const pattern = new RegExp(`^\\.${escape(path.basename(target))}\\.(tmp|old)-(\\d+)-[0-9a-f]+$`)
  const names = await fs.readdir(path.dirname(target)).catch(() => [] as Array<string>)
  return names.flatMap((name) => {
    const m = pattern.exec(name)
    return m === null ? [] : [{ path: path.join(path.dirname(target), name), kind: m[1] as "tmp" | "old", pid: Number(m[2]) }]
  })
}

/** Siblings this process is writing right now (never removed as stale). */
const active = new Set<string>()

/**
 * Marks `p` as in use by a save of this process until `release`.
 *
 * @internal
 */
export const hold = (p: string): void => void active.add(p)

/**
 * Ends {@link hold}.
 *
 * @internal
 */
export const release = (p: string): void => void active.delete(p)

/**
 * Whether the process that wrote a sibling may still be writing it: this process's own siblings count only while
 * held; another pid counts while a process with that pid exists.
 *
 * @internal
 */
export const writerAlive = (s: Sibling): boolean => {
  if (s.pid === process.pid) return active.has(s.path)
  try {
    process.kill(s.pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * Removes the siblings of `target` whose writer is gone (what killed saves left behind); returns how many.
 *
 * @internal
 */
export const removeStale = async (target: string): Promise<number> => {
  let removed = 0
  for (const s of await siblings(target)) {
    if (writerAlive(s)) continue
    await fs.rm(s.path, { recursive: true, force: true }).then(() => removed++, () => undefined)
  }
  return removed
}

/**
 * A pause between moving the previous checkpoint aside and moving the new one in, set only by tests
 * (`DEQ_CHECKPOINT_SWAP_DELAY_MS`) so that a kill can land inside the swap.
 *
 * @internal
 */
export const swapDelay = (): Promise<void> => {
  const ms = Number(process.env["DEQ_CHECKPOINT_SWAP_DELAY_MS"] ?? 0)
  return Number.isFinite(ms) && ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve()
}

/** fsync a directory so the renames in it are durable; not every file system allows it, so failures are ignored */
export const syncDir = async (dir: string): Promise<void> => {
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
