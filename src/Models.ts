/**
 * DEQ architectures: a fully connected DEQ, a convolutional DEQ with the MDEQ residual cell, and a small
 * two-branch multiscale DEQ.
 *
 * Each model is a Schema config class (decoded strictly: unknown keys are errors) and {@link build} turns a config
 * into a {@link Model}: seeded variables owned by the current Scope plus plain synchronous functions
 * (`inject`, `cell`, `head`, ...) that {@link Dynamics} composes with a solver. The same config and seed give
 * identical weights.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Models from "effect-deq/Models"
 *
 * const program = Effect.gen(function*() {
 *   const model = yield* Models.fc({ hidden: 128 }, { seed: 7 })
 *   yield* Effect.log(Models.describe(model))
 * }).pipe(Effect.scoped)
 * ```
 *
 * @since 0.1.0
 */
import { Effect, Schema, type Scope } from "effect"
import { decode, defaulted, heapProblem, PositiveInt } from "./Config.ts"
import type { DeqModel, Param } from "./Dynamics.ts"
import { ConfigError } from "./Errors.ts"
import { convCore, convModelSpecs, type ConvSettings } from "./internal/models/conv.ts"
import { fcCore, type FcSettings, fcSpecs } from "./internal/models/fc.ts"
import { makeInit, strided } from "./internal/models/layers.ts"
import { branchSizes, multiscaleCore, type MultiscaleSettings, multiscaleSpecs } from "./internal/models/multiscale.ts"
import { Rng, type tf, variable } from "./Tensor.ts"

// ---------------------------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------------------------


// ---------------------------------------------------------------------------------------------------------------
// Size bounds
// ---------------------------------------------------------------------------------------------------------------

/** the fields of any model config, before it is a class instance (what the size check sees) */
type ModelFields =
  | ({ readonly _tag: "fc" } & FcSettings)
  | ({ readonly _tag: "conv" } & ConvSettings)
  | ({ readonly _tag: "multiscale" } & MultiscaleSettings)

const product = (xs: ReadonlyArray<number>): number => xs.reduce((a, b) => a * b, 1)
const argmax = (xs: ReadonlyArray<number>): number => xs.indexOf(Math.max(...xs))
/** float32 and int32 values take 4 bytes */
const valueBytes = 4
/** training holds every parameter four times: the weights, their gradients and Adam's two moments */
const trainingCopies = 4

/** values of the state z per sample */
const stateValues = (c: ModelFields): number => {
  if (c._tag === "fc") return c.hidden
  const [h0, w0] = [strided(c.inputShape[0], c.stemStride), strided(c.inputShape[1], c.stemStride)]
  if (c._tag === "conv") return h0 * w0 * c.channels
  return h0 * w0 * c.channels[0] + strided(h0, 2) * strided(w0, 2) * c.channels[1]
}

/** The field that makes the parameter count large (the leaf a size error names). */
const paramDriver = (c: ModelFields): string => {
  const inputDim = `inputShape.${argmax(c.inputShape)}`
  if (c._tag === "fc") {
    const d = product(c.inputShape)
    const terms: Array<[string, number]> = [[inputDim, d * c.hidden], ["hidden", c.hidden * c.hidden], ["classes", c.hidden * c.classes]]
    return terms.reduce((a, b) => (b[1] > a[1] ? b : a))[0]
  }
  const widest = c._tag === "conv" ? c.channels : Math.max(...c.channels)
  const channels = c._tag === "conv" ? "channels" : `channels.${argmax(c.channels)}`
  const terms: Array<[string, number]> = [
    [channels, 9 * widest * widest * c.expansion],
    ["expansion", c.expansion > widest ? 9 * widest * widest * c.expansion + 1 : 0],
    ["inputShape.2", 9 * c.inputShape[2] * widest],
    ["classes", widest * c.classes]
  ]
  return terms.reduce((a, b) => (b[1] > a[1] ? b : a))[0]
}

/**
 * What of a model does not fit the wasm heap (Config.heapBytes): one input image, one sample's state, or the
 * parameters with what training keeps per parameter. Each problem names the leaf field that makes it large.
 */
const sizeProblems = (c: ModelFields): Array<{ readonly path: ReadonlyArray<string | number>; readonly issue: string }> => {
  const pathOf = (field: string) => field.split(".").map((k) => (/^[0-9]+$/.test(k) ? Number(k) : k))
  const image = product(c.inputShape)
  const imageProblem = heapProblem(image * valueBytes, `one input image (${c.inputShape.join("x")} = ${image} values, float32)`)
  if (imageProblem !== undefined) return [{ path: pathOf(`inputShape.${argmax(c.inputShape)}`), issue: imageProblem }]
  const state = stateValues(c)
  const stateProblem = heapProblem(state * valueBytes, `the state of one sample (${state} values, float32)`)
  if (stateProblem !== undefined) {
    const channels = c._tag === "fc" ? "hidden" : c._tag === "conv" ? "channels" : `channels.${argmax(c.channels)}`
    return [{ path: pathOf(channels), issue: stateProblem }]
  }
  const init = makeInit(0) // initialisers are thunks: nothing is allocated to count
  const specs = c._tag === "fc" ? fcSpecs(c, init) : c._tag === "conv" ? convModelSpecs(c, init) : multiscaleSpecs(c, init)
  const params = specs.reduce((n, spec) => n + product(spec.shape), 0)
  const paramProblem = heapProblem(
    params * valueBytes * trainingCopies,
    `training the model's ${params} parameters (weights, gradients and Adam's two moments, float32)`
  )
  return paramProblem === undefined ? [] : [{ path: pathOf(paramDriver(c)), issue: paramProblem }]
}

const InputShape = Schema.Tuple([PositiveInt, PositiveInt, PositiveInt])
const Classes = Schema.Int.check(Schema.isBetween({ minimum: 2, maximum: 100_000 }))
const Dropout = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1, exclusiveMaximum: true }))
const StemStride = Schema.Literals([1, 2])
const StemNorm = Schema.Literals(["group", "none"])

/** the fields the conv and multiscale DEQs share besides their input, classes and channels */
const convFields = {
  expansion: defaulted(PositiveInt, 2),
  groups: defaulted(PositiveInt, 4),
  weightNorm: defaulted(Schema.Boolean, true),
  dropout: defaulted(Dropout, 0),
  stemStride: defaulted(StemStride, 2),
  stemNorm: defaulted(StemNorm, "group")
}

/**
 * Fully connected DEQ: z' = act(norm(W z + U x + b)) on flattened images, with a linear head. Fast: the default
 * for quick runs.
 * - `hidden`: state width (64-1024 typical).
 * - `norm`: "layer" (LayerNorm with gain and bias) or "none".
 * - `wScale`: W starts as N(0, wScale^2 / hidden), spectral norm about 2 wScale, so the map starts contractive.
 * - `dropout`: variational dropout on W z (one mask per forward call), only when a dropout seed is given.
 *
 * @category config
 */
export class FcConfig extends Schema.TaggedClass<FcConfig>("FcConfig")(
  "fc",
  Schema.Struct({
    inputShape: defaulted(InputShape, [28, 28, 1]),
    classes: defaulted(Classes, 10),
    hidden: defaulted(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 8192 })), 128),
    norm: defaulted(Schema.Literals(["layer", "none"]), "layer"),
    act: defaulted(Schema.Literals(["relu", "tanh"]), "relu"),
    dropout: defaulted(Dropout, 0),
    wScale: defaulted(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 10, exclusiveMinimum: true })), 0.25)
  }).check(Schema.makeFilter((c) => sizeProblems({ _tag: "fc", ...c })))
) {}

/**
 * Convolutional DEQ with the MDEQ residual cell (docs/method.md, "The model") on one resolution:
 * conv3x3 -> GroupNorm -> ReLU -> conv3x3 -> (+ injection) -> GroupNorm -> (+ z) -> ReLU -> GroupNorm.
 * - `channels`: state channels; `expansion`: the inner width of the first conv is channels * expansion.
 * - `groups`: GroupNorm groups (must divide channels and channels * expansion).
 * - `weightNorm`: w = g v / ||v|| per output channel on the cell convs.
 * - `dropout`: variational (per-solve) dropout after the second conv, only when a dropout seed is given.
 * - `stemStride`: 2 runs MNIST at 14x14. `stemNorm`: GroupNorm or none in the injection stem (never BatchNorm).
 * - `headGrid`: the head average-pools the state to a headGrid x headGrid grid, then a linear layer. 1 (the
 *   default) is a global pool; on MNIST a 16-channel cell learns far faster with 7 (docs/results.md, "Conv ablation").
 *   Must divide the state's height and width.
 *
 * @category config
 */
export class ConvConfig extends Schema.TaggedClass<ConvConfig>("ConvConfig")(
  "conv",
  Schema.Struct({
    inputShape: defaulted(InputShape, [28, 28, 1]),
    classes: defaulted(Classes, 10),
    channels: defaulted(PositiveInt, 8),
    ...convFields,
    headGrid: defaulted(PositiveInt, 1)
  }).check(Schema.makeFilter((c) => sizeProblems({ _tag: "conv", ...c })))
) {}

/**
 * A small multiscale DEQ (MDEQ with 2 branches at full and half resolution): one residual block per branch,
 * fusion (conv1x1 + GroupNorm + nearest upsample; stride-2 conv3x3 + GroupNorm) and a post-fuse
 * ReLU -> conv1x1 -> GroupNorm(groups / 2, no affine). The state is both branches flattened into one [B, N] vector.
 * `channels` are the two branches' widths; the other fields are as in {@link ConvConfig}.
 *
 * @category config
 */
export class MultiscaleConfig extends Schema.TaggedClass<MultiscaleConfig>("MultiscaleConfig")(
  "multiscale",
  Schema.Struct({
    inputShape: defaulted(InputShape, [28, 28, 1]),
    classes: defaulted(Classes, 10),
    channels: defaulted(Schema.Tuple([PositiveInt, PositiveInt]), [8, 16]),
    ...convFields
  }).check(Schema.makeFilter((c) => sizeProblems({ _tag: "multiscale", ...c })))
) {}

/**
 * Any model config, tagged by `_tag`: "fc" | "conv" | "multiscale".
 *
 * @category config
 */
export const ModelConfig = Schema.Union([FcConfig, ConvConfig, MultiscaleConfig])

/**
 * A decoded model config of any kind.
 *
 * @category config
 */
export type ModelConfig = FcConfig | ConvConfig | MultiscaleConfig

/**
 * The model kinds.
 *
 * @category config
 */
export type ModelKind = ModelConfig["_tag"]

/**
 * Decodes a model config from unknown input (parsed JSON, CLI flags); `_tag` selects the kind. Unknown keys and
 * bad values are ConfigErrors naming the field under `prefix`.
 *
 * @category decoding
 */
export const decodeConfig = (input: unknown, prefix = "model"): Effect.Effect<ModelConfig, ConfigError> =>
  decode(ModelConfig, prefix)(input)

/**
 * A model config as plain JSON (what a checkpoint stores).
 *
 * @category decoding
 */
export const encodeConfig = (config: ModelConfig): unknown => Schema.encodeSync(ModelConfig)(config)

// ---------------------------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------------------------

/**
 * A built model: its config, its variables (with stable unique names, the checkpoint keys) and the functions
 * {@link Dynamics} needs. All functions are plain synchronous tfjs, differentiable w.r.t. their inputs and the
 * variables; the caller owns what they return.
 *
 * @category models
 */
export interface Model extends DeqModel {
  readonly config: ModelConfig
  /** per-sample shape of the state z (the solver sees [B, ...stateShape]) */
  readonly stateShape: ReadonlyArray<number>
  /** number of classes of the head */
  readonly classes: number
  /** one-line description of the architecture */
  readonly summary: string
}

/**
 * True for a built-in model (made by {@link build}: it carries its config), false for a `Dynamics.DeqModel` of
 * your own (checkpoints store its variables by name, with no config to rebuild it from).
 *
 * @category models
 */
export const isModel = (model: DeqModel): model is Model => {
  const c = (model as Partial<Model>).config
  return c instanceof FcConfig || c instanceof ConvConfig || c instanceof MultiscaleConfig
}

/**
 * One parameter of a model to create: a stable name (the checkpoint key), its shape and its seeded initial value.
 *
 * @category models
 */
export interface ParamSpec {
  readonly name: string
  readonly shape: ReadonlyArray<number>
  readonly init: () => tf.Tensor
}

/**
 * The functions of a model given its variables by name: what {@link Model} holds besides its config and variables.
 *
 * @category models
 */
export type ModelCore = Omit<DeqModel, "params" | "parameterCount"> & {
  /** per-sample shape of the state z */
  readonly stateShape: ReadonlyArray<number>
  /** one line per part, for `describe` */
  readonly summary: string
}

/**
 * How one model kind is specified, built and checked (an entry of {@link kinds}).
 *
 * @category models
 */
export interface Kind<C> {
  readonly specs: (config: C, seed: number) => ReadonlyArray<ParamSpec>
  readonly core: (config: C, params: ReadonlyMap<string, tf.Variable>) => ModelCore
  readonly validate: (config: C) => ReadonlyArray<{ readonly path: string; readonly message: string }>
}

const divides = (path: string, groups: number, channels: number, what: string) =>
  channels % groups === 0 ? [] : [{ path, message: `${groups} groups do not divide ${what} (${channels})` }]

/**
 * The registry of model kinds: how to specify parameters, build the functions and check a config.
 *
 * @category models
 */
export const kinds: {
  readonly fc: Kind<FcConfig>
  readonly conv: Kind<ConvConfig>
  readonly multiscale: Kind<MultiscaleConfig>
} = {
  fc: {
    specs: (c, seed) => fcSpecs(c, makeInit(seed)),
    core: fcCore,
    validate: () => []
  },
  conv: {
    specs: (c, seed) => convModelSpecs(c, makeInit(seed)),
    core: convCore,
    validate: (c) => [
      ...divides("groups", c.groups, c.channels, "channels"),
      ...divides("groups", c.groups, c.channels * c.expansion, "channels * expansion"),
      ...gridProblems(c)
    ]
  },
  multiscale: {
    specs: (c, seed) => multiscaleSpecs(c, makeInit(seed)),
    core: multiscaleCore,
    validate: (c) => {
      const post = Math.max(1, Math.floor(c.groups / 2))
      const [[h0, w0]] = branchSizes(c)
      return [
        ...c.channels.flatMap((ch, i) => [
          ...divides("groups", c.groups, ch, `channels[${i}]`),
          ...divides("groups", c.groups, ch * c.expansion, `channels[${i}] * expansion`),
          ...divides("groups", post, ch, `channels[${i}] (post-fuse GroupNorm uses groups / 2)`)
        ]),
        ...(h0 < 2 || w0 < 2 ? [{ path: "inputShape", message: `the full-resolution branch (${h0}x${w0}) is too small to halve` }] : [])
      ]
    }
  }
}

const gridProblems = (c: ConvConfig) => {
  const h = strided(c.inputShape[0], c.stemStride), w = strided(c.inputShape[1], c.stemStride)
  return h % c.headGrid === 0 && w % c.headGrid === 0 ? [] : [{
    path: "headGrid",
    message: `a ${c.headGrid}x${c.headGrid} head grid does not divide the ${h}x${w} state`
  }]
}

const kindOf = (config: ModelConfig): Kind<ModelConfig> => kinds[config._tag] as Kind<ModelConfig>

/**
 * The parameter specs of a config (names, shapes, seeded initialisers), without building anything.
 *
 * @category models
 */
export const parameterSpecs = (config: ModelConfig, seed = 0): ReadonlyArray<ParamSpec> => kindOf(config).specs(config, seed)

/**
 * The parameter count of a config, without building it.
 *
 * @category models
 */
export const countParameters = (config: ModelConfig): number =>
  parameterSpecs(config).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0)

/**
 * Builds a model: checks the config, creates its variables (seeded: the same seed gives identical weights; each
 * parameter's values depend only on the seed and its name) and owns them in the current Scope.
 *
 * @category constructors
 */
export const build = (
  config: ModelConfig,
  options: { readonly seed?: number } = {}
): Effect.Effect<Model, ConfigError, Scope.Scope> =>
  Effect.gen(function*() {
    const kind = kindOf(config)
    const problems = kind.validate(config)
    if (problems.length > 0) {
      const p = problems[0]!
      return yield* new ConfigError({ path: `model.${p.path}`, message: problems.map((q) => q.message).join("; ") })
    }
    const seed = options.seed ?? 0
    const specs = kind.specs(config, seed)
    const params: Array<Param> = []
    const byName = new Map<string, tf.Variable>()
    for (const spec of specs) {
      if (byName.has(spec.name)) throw new Error(`effect-deq internal: duplicate parameter name "${spec.name}"`)
      const v = yield* variable(spec.init, spec.name)
      if (v.shape.join(",") !== spec.shape.join(",")) {
        throw new Error(`effect-deq internal: parameter "${spec.name}" has shape [${v.shape}], spec says [${spec.shape}]`)
      }
      params.push({ name: spec.name, variable: v })
      byName.set(spec.name, v)
    }
    const core = kind.core(config, byName)
    const model: Model = {
      ...core,
      config,
      params,
      parameterCount: params.reduce((n, p) => n + p.variable.size, 0),
      classes: config.classes
    }
    return model
  })

/**
 * Builds a model seeded from the {@link Rng} service (`rng.seed("model", "init")`).
 *
 * @category constructors
 */
export const buildSeeded = (config: ModelConfig): Effect.Effect<Model, ConfigError, Scope.Scope | Rng> =>
  Effect.gen(function*() {
    const rng = yield* Rng
    return yield* build(config, { seed: rng.seed("model", "init") })
  })

const fromFields = <A>(schema: Schema.Decoder<A>, tag: string) =>
(fields: object = {}, options: { readonly seed?: number } = {}): Effect.Effect<Model, ConfigError, Scope.Scope> =>
  Effect.flatMap(decode(schema, "model")({ _tag: tag, ...fields }), (c) => build(c as ModelConfig, options))

/**
 * Decodes FC settings (unknown keys rejected) and builds the model.
 *
 * @category constructors
 */
export const fc: (
  fields?: Partial<Omit<FcConfig, "_tag">>,
  options?: { readonly seed?: number }
) => Effect.Effect<Model, ConfigError, Scope.Scope> = fromFields(FcConfig, "fc")

/**
 * Decodes conv settings (unknown keys rejected) and builds the model.
 *
 * @category constructors
 */
export const conv: (
  fields?: Partial<Omit<ConvConfig, "_tag">>,
  options?: { readonly seed?: number }
) => Effect.Effect<Model, ConfigError, Scope.Scope> = fromFields(ConvConfig, "conv")

/**
 * Decodes multiscale settings (unknown keys rejected) and builds the model.
 *
 * @category constructors
 */
export const multiscale: (
  fields?: Partial<Omit<MultiscaleConfig, "_tag">>,
  options?: { readonly seed?: number }
) => Effect.Effect<Model, ConfigError, Scope.Scope> = fromFields(MultiscaleConfig, "multiscale")

const parts: Record<string, string> = { inject: "injection", stem: "injection", cell: "f", head: "head" }

/**
 * A multi-line description for the CLI and reports: architecture, state shape, parameter counts per part.
 *
 * @category models
 */
export const describe = (model: Model): string => {
  const byPart = new Map<string, number>()
  for (const p of model.params) {
    const part = parts[p.name.split("/")[1] ?? ""] ?? "other"
    byPart.set(part, (byPart.get(part) ?? 0) + p.variable.size)
  }
  const fmt = (n: number) => n.toLocaleString("en-US")
  return [
    model.summary,
    `state per sample: [${model.stateShape.join(", ")}] (${fmt(model.stateShape.reduce((a, b) => a * b, 1))} values)`,
    `parameters: ${fmt(model.parameterCount)} (` +
    [...byPart].map(([k, n]) => `${k} ${fmt(n)}`).join(", ") + ")"
  ].join("\n")
}
