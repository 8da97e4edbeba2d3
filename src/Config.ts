/**
 * Strict decoding of user configuration.
 *
 * Every config of effect-deq is a Schema class. `decode` rejects unknown keys (a misspelt key is an error that
 * names it, never a silently ignored setting) and turns schema failures into a {@link ConfigError} whose `path`
 * names the leaf field (`solver.maxIter`, not `solver`), through unions and optional fields. Sizes are bounded by
 * what fits the wasm heap ({@link heapBytes}).
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
import { Effect, Schema, SchemaAST, SchemaIssue } from "effect"
import { ConfigError } from "./Errors.ts"

const formatPath = (path: ReadonlyArray<PropertyKey>, prefix: string): string =>
  [prefix, ...path.map(String)].filter((s) => s.length > 0).join(".")

const isRecord = (u: unknown): u is Record<PropertyKey, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/** A union whose members are all objects told apart by a literal `_tag` (the tagged classes of every config). */
const isTaggedUnion = (ast: SchemaAST.Union): boolean =>
  ast.types.length > 0 && ast.types.every((t) => {
    const encoded = SchemaAST.toEncoded(t)
    return encoded._tag === "Objects" &&
      encoded.propertySignatures.some((p) => p.name === "_tag" && p.type._tag === "Literal")
  })

/**
 * The path of an issue down to the field that is wrong, walking the input alongside: through unions and
 * optional fields (whose member issues say which field failed) and, when no member of a tagged union applies,
 * to the object's `_tag`.
 */
const leafPath = (issue: SchemaIssue.Issue, input: unknown, depth = 0): Array<PropertyKey> => {
  if (depth > 64) return []
  switch (issue._tag) {
    case "Pointer": {
      let value = input
      for (const key of issue.path) value = isRecord(value) || Array.isArray(value) ? (value as any)[key] : undefined
      return [...issue.path, ...leafPath(issue.issue, value, depth + 1)]
    }
    case "Filter":
    case "Encoding":
      return leafPath(issue.issue, input, depth + 1)
    case "Composite":
      return leafPath(issue.issues[0], input, depth + 1)
    case "AnyOf": {
      if (issue.issues.length === 0) return isRecord(input) && isTaggedUnion(issue.ast) ? ["_tag"] : []
      // the member that got furthest into the input names the field
      let best: Array<PropertyKey> = []
      for (const member of issue.issues) {
        const p = leafPath(member, input, depth + 1)
        if (p.length > best.length) best = p
      }
      return best
    }
    default:
      return []
  }
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
      const path = formatPath(leafPath(error.issue, input), prefix) || "<root>"
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


// ---------------------------------------------------------------------------------------------------------------
// sizes
// ---------------------------------------------------------------------------------------------------------------

/**
 * The wasm heap: 4 GiB (wasm32 addresses 2^32 bytes). Every size a config or a file declares is bounded by it (an
 * image, a model's training state, a split, a checkpoint's weights), so a huge size is a typed error naming the
 * field or file, never a crash when the memory is allocated.
 *
 * @category sizes
 */
export const heapBytes = 4 * 1024 ** 3

const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"] as const

/**
 * A byte count for messages: `"4 GiB"`, `"1.5 TiB"`, `"812 bytes"`.
 *
 * @category sizes
 */
export const formatBytes = (bytes: number): string => {
  if (!Number.isFinite(bytes)) return `${bytes} bytes`
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${bytes} bytes` : `${Number(value.toPrecision(3))} ${units[unit]}`
}

/**
 * `undefined` when `bytes` fit the wasm heap ({@link heapBytes}), else the message saying what does not fit:
 * `"one image (3.08e+13 values) needs 112 TiB as float32; the wasm heap holds 4 GiB"`.
 *
 * @category sizes
 */
export const heapProblem = (bytes: number, what: string): string | undefined =>
  bytes <= heapBytes ? undefined : `${what} needs ${formatBytes(bytes)}; the wasm heap holds ${formatBytes(heapBytes)}`
