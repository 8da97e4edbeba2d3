/**
 * Strict decoding of user configuration.
 *
 * Every config of effect-deq is a Schema class. `decode` rejects unknown keys (a misspelt key is an error that
 * names it, never a silently ignored setting) and turns schema failures into a {@link ConfigError} whose `path`
 * names the field.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import * as Config from "effect-deq/Config"
 *
 * class Budget extends Schema.Class<Budget>("Budget")({
 *   steps: Config.defaulted(Config.PositiveInt, 8),
 *   tol: Config.defaulted(Config.NonNegative, 1e-3)
 * }) {}
 *
 * const program = Effect.gen(function*() {
 *   const budget = yield* Config.decode(Budget, "solver")({ tol: 1e-4 }) // steps: 8 from the default
 *   const typo = yield* Effect.flip(Config.decode(Budget, "solver")({ stpes: 4 }))
 *   yield* Effect.log(budget.steps, typo.path) // 8 "solver.stpes"
 * })
 * ```
 *
 * @since 0.1.0
 */
import { Effect, Schema, SchemaIssue } from "effect"
import { ConfigError } from "./Errors.ts"

const formatPath = (path: ReadonlyArray<PropertyKey>, prefix: string): string =>
  [prefix, ...path.map(String)].filter((s) => s.length > 0).join(".")

const firstPath = (issue: SchemaIssue.Issue): ReadonlyArray<PropertyKey> => {
  let current: SchemaIssue.Issue = issue
  const path: Array<PropertyKey> = []
  for (let i = 0; i < 64; i++) {
    switch (current._tag) {
      case "Pointer":
        path.push(...current.path)
        current = current.issue
        continue
      case "Composite":
      case "AnyOf":
        if (current._tag === "Composite" && current.issues.length > 0) {
          current = current.issues[0]!
          continue
        }
        return path
      case "Filter":
      case "Encoding":
        current = current.issue
        continue
      default:
        return path
    }
  }
  return path
}

/**
 * Decodes an unknown value (parsed JSON, CLI flags) with a Schema, rejecting unknown keys.
 * `prefix` is prepended to the reported path, e.g. `"solver"` gives `solver.maxIter`.
 *
 * @category decoding
 */
export const decode = <S extends Schema.Decoder<unknown>>(schema: S, prefix = "") =>
(input: unknown): Effect.Effect<S["Type"], ConfigError, S["DecodingServices"]> =>
  Schema.decodeUnknownEffect(schema)(input, { onExcessProperty: "error", errors: "all" }).pipe(
    Effect.mapError((error) => {
      const path = formatPath(firstPath(error.issue), prefix) || "<root>"
      return new ConfigError({ path, message: `${path}: ${error.message}` })
    })
  )

/**
 * A field default that applies both when decoding (key missing) and when constructing with `new`. Data-first, so
 * the schema's type checks the value: `defaulted(PositiveInt, 30)`.
 *
 * @category combinators
 */
export const defaulted = <S extends Schema.Top & Schema.WithoutConstructorDefault>(
  self: S,
  value: S["Type"] & S["Encoded"]
) =>
  self.pipe(
    Schema.withDecodingDefaultKey(Effect.succeed(value)),
    Schema.withConstructorDefault(Effect.succeed(value) as any)
  )

/**
 * Synchronous {@link decode} for code that is not inside an Effect (tests, examples); throws the ConfigError.
 *
 * @category decoding
 */
export const decodeSync = <S extends Schema.Decoder<unknown, never>>(schema: S, prefix = "") =>
(input: unknown): S["Type"] => Effect.runSync(decode(schema, prefix)(input))

// ---------------------------------------------------------------------------------------------------------------
// numeric schemas shared by every config
// ---------------------------------------------------------------------------------------------------------------

/**
 * An integer >= 1 (counts, sizes, steps).
 *
 * @category schemas
 */
export const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))

/**
 * An integer >= 0.
 *
 * @category schemas
 */
export const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/**
 * A finite number > 0 (radii, step sizes, learning rates).
 *
 * @category schemas
 */
export const Positive = Schema.Finite.check(Schema.isGreaterThan(0))

/**
 * A finite number >= 0.
 *
 * @category schemas
 */
export const NonNegative = Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0))

/**
 * A finite number in [0, 1] (probabilities, fractions).
 *
 * @category schemas
 */
export const Probability = Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 }))

