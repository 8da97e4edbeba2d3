/**
 * Where a command writes, so that nothing already written is replaced without being asked: a default output
 * directory that already holds a report (or a run) gives way to the next free `<dir>-2`, `<dir>-3`, ... with a
 * notice; an explicit `--out` that holds one is refused unless `--force` is given.
 *
 * @internal
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import * as Checkpoint from "../../Checkpoint.ts"
import { ConfigError } from "../../Errors.ts"
import { say } from "./train.ts"

/** Whether `dir` holds a report (report.md or report.json). */
export const holdsReport = (dir: string): boolean =>
  ["report.md", "report.json"].some((f) => fs.existsSync(path.join(dir, f)))

/** Whether `dir` holds a training run (a checkpoint in last/, what `--resume` continues). */
export const holdsCheckpoint = (dir: string): boolean => fs.existsSync(path.join(dir, "last", Checkpoint.MANIFEST))

/** Whether `dir` holds a run or a report. */
export const holdsRun = (dir: string): boolean => holdsReport(dir) || holdsCheckpoint(dir)

const shown = (p: string): string => path.relative(process.cwd(), p) || "."

/** Options of {@link chooseOut}. */
export interface OutOptions {
  /** the command as typed, for messages ("deq eval") */
  readonly command: string
  /** `--out` when given */
  readonly out: string | undefined
  /** the default directory */
  readonly fallback: string
  /** `--force`: the directory (given or default) is written into even when it holds something */
  readonly force: boolean
  /** what counts as taken */
  readonly holds: (dir: string) => boolean
  /** what a taken directory holds, for messages ("a report", "a run") */
  readonly what: string
  /** how else to go on with a taken directory, for messages (e.g. "--resume DIR continues it") */
  readonly alternative?: (dir: string) => string
}

/** A directory that exists and is not empty. */
const used = (dir: string): boolean => fs.existsSync(dir) && (!fs.statSync(dir).isDirectory() || fs.readdirSync(dir).length > 0)

/**
 * The directory to write into: `--out` (or the default) when it is free or `--force` is given; a taken `--out` is
 * a ConfigError naming `--out`; a taken default gives way to the first free numbered sibling, announced on stderr.
 */
export const chooseOut = (o: OutOptions): Effect.Effect<string, ConfigError> =>
  Effect.gen(function*() {
    const dir = path.resolve(o.out ?? o.fallback)
    if (o.force || !o.holds(dir)) return dir
    const alternative = o.alternative !== undefined ? o.alternative(shown(dir)) : undefined
    if (o.out !== undefined) {
      return yield* new ConfigError({
        path: "out",
        message: `--out ${o.out} already holds ${o.what}: give --force to overwrite it` +
          (alternative !== undefined ? `, ${alternative},` : "") + " or choose another --out"
      })
    }
    let k = 2
    while (o.holds(`${dir}-${k}`) || used(`${dir}-${k}`)) k++
    const next = `${dir}-${k}`
    yield* say(
      `${o.command}: ${shown(dir)} already holds ${o.what}; writing to ${shown(next)} ` +
        `(--force overwrites it${alternative !== undefined ? `; ${alternative}` : ""}; --out chooses)`
    )
    return next
  })
