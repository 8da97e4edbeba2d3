/**
 * The `deq` command's shared flag helpers, so every command checks its flags the same way: counts that must be at
 * least 1 (or 0) fail at parse time naming the flag; a flag that does nothing in the given combination is an error
 * naming it; a wrong invocation prints one line and a hint instead of the whole help.
 *
 * @internal
 */
import { Effect, Option } from "effect"
import { CliOutput, Flag } from "effect/cli"
import { ConfigError } from "../../Errors.ts"

/** An optional flag's value, or undefined. */
export const opt = <A>(o: Option.Option<A>): A | undefined => Option.getOrUndefined(o)

/** Options of {@link count}. */
export interface CountOptions {
  /** the smallest value accepted (default 1) */
  readonly min?: number
  /** the largest value accepted */
  readonly max?: number
}

const inRange = (n: number, o: CountOptions): boolean =>
  Number.isInteger(n) && n >= (o.min ?? 1) && (o.max === undefined || n <= o.max)

const rangeText = (o: CountOptions): string =>
  o.max === undefined ? `a whole number >= ${o.min ?? 1}` : `a whole number from ${o.min ?? 1} to ${o.max}`

/** An integer flag that must lie in a range (default: at least 1); out of range is a parse error naming it. */
const countFlag = (name: string, description: string, o: CountOptions = {}): Flag.Flag<number> =>
  Flag.Int(name).pipe(
    Flag.withDescription(description),
    Flag.filter((n) => inRange(n, o), (n) => `${rangeText(o)} (got ${n})`)
  )

/** An optional count flag (see {@link countFlag}): zero or a negative count is refused, naming the flag. */
export const count = (name: string, description: string, o: CountOptions = {}): Flag.Flag<Option.Option<number>> =>
  countFlag(name, description, o).pipe(Flag.optional)

/** A count flag with a default (see {@link countFlag}). */
export const countWithDefault = (name: string, description: string, fallback: number, o: CountOptions = {}): Flag.Flag<number> =>
  countFlag(name, `${description} (default ${fallback})`, o).pipe(Flag.withDefault(fallback))

/** A finite number flag that must be > 0 (a radius, a rate). */
export const positive = (name: string, description: string): Flag.Flag<Option.Option<number>> =>
  Flag.Finite(name).pipe(
    Flag.withDescription(description),
    Flag.filter((x) => x > 0, (x) => `a number > 0 (got ${x})`),
    Flag.optional
  )

/** `--force`: write into the output directory (given or default) even when it holds a report or a run. */
export const force = Flag.Boolean("force").pipe(
  Flag.withDescription("write into the output directory even when it already holds a report or a run (without it, nothing is replaced)"),
  Flag.withDefault(false)
)

/** One flag that only means something together with others. */
export interface Needs {
  /** the flag as typed, e.g. "--defended-samples" */
  readonly flag: string
  /** whether the user gave it */
  readonly given: boolean
  /** whether the rest of the command line uses it */
  readonly used: boolean
  /** why it does nothing when unused, e.g. "without --defence entropy" */
  readonly why: string
}

/**
 * Fails with a ConfigError naming the first flag given that does nothing in this combination ("--defended-samples
 * does nothing without --defence entropy"): a silently ignored flag is a result the user did not ask for.
 */
export const checkCombination = (flags: ReadonlyArray<Needs>): Effect.Effect<void, ConfigError> => {
  const idle = flags.find((f) => f.given && !f.used)
  return idle === undefined
    ? Effect.void
    : Effect.fail(new ConfigError({ path: idle.flag.replace(/^--/, ""), message: `${idle.flag} does nothing ${idle.why}` }))
}

/** The command named by a path ["deq", "eval"] as typed: "deq eval". */
const commandOf = (commandPath: ReadonlyArray<string>): string => commandPath.join(" ")

/**
 * Prints a wrong invocation (a missing or unknown flag, a value out of range) as one line per problem on stderr,
 * then one hint line, instead of the whole help followed by the error (`--help` still prints the help).
 */
export const presenter = CliOutput.layerPresenter({
  present: (event) => {
    if (event._tag !== "InvalidInvocation") return CliOutput.defaultPresenter.present(event)
    const command = commandOf(event.commandPath)
    return Effect.sync(() => {
      for (const e of event.errors) {
        const text = e.message.split("\n").map((l) => l.trim()).filter((l) => l.length > 0).join(" ")
        process.stderr.write(`${command}: error: ${text}\n`)
      }
      process.stderr.write(`hint: \`${command} --help\` lists the flags\n`)
    })
  }
})
