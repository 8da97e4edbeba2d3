/**
 * The sizes of the reliability probes: small by default (so `npm test` stays fast), the issue's full counts with
 * `DEQ_RELIABILITY=long` (10,000 fuzzed configs, 1,000 corrupted checkpoints, 500 corrupted dataset files, 100
 * kills). Every probe prints one line with what it ran, so a long run's counts can be read off its output.
 */
import * as fs from "node:fs"

/** Whether the full counts run. */
export const long = process.env["DEQ_RELIABILITY"] === "long"

/** How many cases each probe runs. */
export const counts = long
  ? { configs: 10_000, suites: 2_000, checkpoints: 1_000, datasets: 500, kills: 100, solverOptions: 1_000 }
  : { configs: 2_000, suites: 300, checkpoints: 120, datasets: 60, kills: 2, solverOptions: 60 }

/** The seed of the probes' generators (DEQ_RELIABILITY_SEED overrides it to explore other cases). */
export const seed = Number(process.env["DEQ_RELIABILITY_SEED"] ?? 20230716)

/**
 * Prints one line of a probe's tally and, when DEQ_RELIABILITY_LOG names a file, appends it there as JSON (what
 * docs/reliability.md's table is made from).
 */
export const tally = (probe: string, fields: Record<string, number | string>): void => {
  const line = { probe, mode: long ? "long" : "default", ...fields }
  console.log(`reliability ${probe}: ${Object.entries(fields).map(([k, v]) => `${k} ${v}`).join(", ")}`)
  const log = process.env["DEQ_RELIABILITY_LOG"]
  if (log !== undefined && log.length > 0) fs.appendFileSync(log, JSON.stringify(line) + "\n")
}
