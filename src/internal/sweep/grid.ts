/**
 * Sweep files: a base preset, overrides, axes and the evaluation settings, decoded strictly, and their expansion
 * into runs with stable ids (a hash of the resolved config), docs/sweeps.md, "The sweep file".
 *
 * @internal
 */
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Schema } from "effect"
import { decode, NonNegativeInt, Positive, PositiveInt } from "../../Config.ts"
import { ConfigError } from "../../Errors.ts"
import { attackFamilies, SuiteConfig } from "../../Evaluation.ts"
import * as Train from "../../Train.ts"
import { loadPreset, presetNames } from "../cli/presets.ts"

/** The axes a sweep may vary, with the values each takes (docs/sweeps.md, "The sweep file"). */
export const Axes = Schema.Struct({
  readOut: Schema.optional(Schema.Array(Schema.Literals(["final", "ris"]))),
  method: Schema.optional(Schema.Array(Schema.Literals(["standard", "pgd-at", "trades"]))),
  solver: Schema.optional(Schema.Array(Schema.Literals(["broyden", "anderson", "picard"]))),
  seed: Schema.optional(Schema.Array(Schema.Int)),
  eps: Schema.optional(Schema.Array(Positive)),
  lr: Schema.optional(Schema.Array(Positive)),
  epochs: Schema.optional(Schema.Array(PositiveInt)),
  /** k of the unrolled tail (f, then k damped steps) the loss reads a state through */
  tail: Schema.optional(Schema.Array(NonNegativeInt))
})

/** The names of the axes, in the order they are expanded (seed last: the seeds of one arm are adjacent). */
export const axisNames = ["method", "readOut", "tail", "solver", "eps", "lr", "epochs", "seed"] as const
/** One axis. */
export type AxisName = typeof axisNames[number]

/** What the evaluation activity runs on each trained run (the suite's settings plus the attack families). */
export const EvalSettings = Schema.Struct({
  families: Schema.optional(Schema.Array(Schema.Literals(attackFamilies))),
  samples: Schema.optional(PositiveInt),
  batchSize: Schema.optional(PositiveInt),
  pgdSteps: Schema.optional(PositiveInt),
  grid: Schema.optional(Schema.Literals(["small", "paper", "none"])),
  apgdSteps: Schema.optional(PositiveInt),
  squareQueries: Schema.optional(PositiveInt),
  targets: Schema.optional(PositiveInt)
})

/** What the dynamics activity observes. */
export const DynamicsSettings = Schema.Struct({
  samples: Schema.optional(PositiveInt),
  attackSteps: Schema.optional(PositiveInt),
  /** per-state robust accuracy as the worst case over PGD, APGD-CE, APGD-T, FAB-T and Square (the eval's budgets) */
  worstCase: Schema.optional(Schema.Boolean)
})

/** A sweep file as written (decoded strictly: an unknown key is a ConfigError naming it). */
export const SweepFile = Schema.Struct({
  description: Schema.optional(Schema.String),
  base: Schema.String,
  train: Schema.optional(Schema.Record(Schema.String, Schema.Unknown)),
  axes: Axes,
  eval: Schema.optional(EvalSettings),
  dynamics: Schema.optional(DynamicsSettings)
})
/** A decoded sweep file. */
export type SweepFile = typeof SweepFile.Type

/** One run of a sweep: its id, its arm (the axes' values except the seed), the resolved settings. */
export interface RunSpec {
  /** stable: `<arm slug>-s<seed>-<hash of the resolved config>` */
  readonly id: string
  /** the arm's label, e.g. "pgd-at, ris" (runs of one arm differ only in their seed) */
  readonly arm: string
  readonly seed: number
  /** the axes' values of this run */
  readonly axes: Readonly<Record<string, string | number>>
  /** the training config, encoded (JSON) */
  readonly train: unknown
  readonly eval: {
    readonly families: ReadonlyArray<typeof attackFamilies[number]>
    readonly suite: typeof SuiteConfig.Encoded
  }
  readonly dynamics: {
    readonly samples: number
    readonly attackSteps: number
    /** present only when asked (older sweeps' run ids stay as they were) */
    readonly worstCase?: { readonly apgdSteps: number; readonly targets: number; readonly squareQueries: number }
  }
}

/** A sweep expanded into runs. */
export interface Sweep {
  readonly name: string
  readonly description: string
  readonly file: string
  readonly base: string
  readonly axes: ReadonlyArray<AxisName>
  readonly runs: ReadonlyArray<RunSpec>
}

type Json = null | boolean | number | string | ReadonlyArray<Json> | { readonly [k: string]: Json }

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v)

/** Deep merge of JSON objects (arrays and scalars are replaced). */
const merge = (base: unknown, over: unknown): unknown => {
  if (!isObject(base) || !isObject(over)) return over
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) out[k] = merge(base[k], v)
  return out
}

/** JSON with sorted keys: the same config always hashes the same. */
export const canonical = (v: unknown): string =>
  JSON.stringify(v, (_k, value) =>
    isObject(value) ? Object.fromEntries(Object.keys(value).sort().map((k) => [k, value[k]])) : value)

const shortHash = (v: unknown): string => createHash("sha256").update(canonical(v)).digest("hex").slice(0, 10)

/** Applies one axis value to an encoded training config. */
const applyAxis = (train: Record<string, any>, axis: AxisName, value: string | number): Record<string, any> => {
  switch (axis) {
    case "readOut": {
      const regularizers = { ...(train.regularizers ?? {}) }
      if (value === "ris") regularizers.randomStates = { ...(regularizers.randomStates ?? {}) }
      else delete regularizers.randomStates
      return { ...train, regularizers }
    }
    case "method":
      return { ...train, method: value === (train.method?._tag) ? train.method : { _tag: value } }
    case "solver":
      return { ...train, solver: { ...(train.solver ?? {}), _tag: value } }
    case "seed":
      return { ...train, seed: value }
    case "eps":
      return { ...train, attack: { ...(train.attack ?? {}), eps: value } }
    case "lr":
      return { ...train, lr: value }
    case "epochs":
      return { ...train, epochs: value }
    case "tail":
      return { ...train, gradient: { ...(train.gradient?._tag === "unroll" ? train.gradient : { _tag: "unroll" }), k: value } }
  }
}

const slug = (s: string): string => s.toLowerCase().replace(/[^a-z0-9.]+/g, "-").replace(/^-+|-+$/g, "")

/** Reads and decodes a sweep file; unknown keys and axes are ConfigErrors naming them and the file. */
export const readSweepFile = (file: string): Effect.Effect<SweepFile, ConfigError> =>
  Effect.gen(function*() {
    const resolved = path.resolve(file)
    const text = yield* Effect.try({
      try: () => fs.readFileSync(resolved, "utf8"),
      catch: (e) =>
        new ConfigError({
          path: "grid",
          message: (e as NodeJS.ErrnoException).code === "ENOENT"
            ? `sweep file ${resolved} does not exist`
            : `cannot read sweep file ${resolved}: ${(e as Error).message}`
        })
    })
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (e) => new ConfigError({ path: "grid", message: `sweep file ${resolved} is not valid JSON: ${(e as Error).message}` })
    })
    if (isObject(json) && isObject(json.axes)) {
      const unknown = Object.keys(json.axes).find((k) => !(axisNames as ReadonlyArray<string>).includes(k))
      if (unknown !== undefined) {
        return yield* new ConfigError({
          path: `axes.${unknown}`,
          message: `${resolved}: unknown axis "${unknown}"; valid axes: ${axisNames.join(", ")}`
        })
      }
    }
    return yield* decode(SweepFile)(json).pipe(
      Effect.mapError((e) => new ConfigError({ path: e.path, message: `${resolved}: ${e.message}` }))
    )
  })

/** Every combination of the axes' values, in {@link axisNames} order (the last axis varies fastest). */
const combinations = (axes: ReadonlyArray<readonly [AxisName, ReadonlyArray<string | number>]>) =>
  axes.reduce<Array<Array<readonly [AxisName, string | number]>>>(
    (acc, [name, values]) => acc.flatMap((c) => values.map((v) => [...c, [name, v] as const])),
    [[]]
  )

/** Expands a decoded sweep file into its runs (each resolved config decoded strictly by Train). */
export const expand = (file: string, sweep: SweepFile): Effect.Effect<Sweep, ConfigError> =>
  Effect.gen(function*() {
    const where = path.resolve(file)
    if (!presetNames().includes(sweep.base)) {
      return yield* new ConfigError({ path: "base", message: `${where}: unknown base preset "${sweep.base}"; valid: ${presetNames().join(", ")}` })
    }
    const preset = yield* loadPreset(sweep.base)
    const base = merge(preset.trainJson, sweep.train ?? {}) as Record<string, any>
    const axes = axisNames.flatMap((name) => {
      const values = sweep.axes[name] as ReadonlyArray<string | number> | undefined
      return values === undefined ? [] : [[name, values] as const]
    })
    const empty = axes.find(([, values]) => values.length === 0)
    if (empty !== undefined) {
      return yield* new ConfigError({ path: `axes.${empty[0]}`, message: `${where}: axis "${empty[0]}" has no values` })
    }
    const e = sweep.eval ?? {}
    const { families: _, ...suiteOverrides } = e
    const suite = yield* decode(SuiteConfig, "eval")({ ...Schema.encodeSync(SuiteConfig)(preset.suite), ...suiteOverrides }).pipe(
      Effect.mapError((err) => new ConfigError({ path: err.path, message: `${where}: ${err.message}` }))
    )
    const evalSpec = {
      families: e.families ?? ["ready-made", "grid"],
      suite: Schema.encodeSync(SuiteConfig)(suite)
    }
    const dynamics = {
      samples: sweep.dynamics?.samples ?? suite.dynamicsSamples,
      attackSteps: sweep.dynamics?.attackSteps ?? suite.dynamicsAttackSteps,
      ...(sweep.dynamics?.worstCase === true
        ? { worstCase: { apgdSteps: suite.apgdSteps, targets: suite.targets, squareQueries: suite.squareQueries } }
        : {})
    }
    const runs: Array<RunSpec> = []
    for (const combo of combinations(axes)) {
      const raw = combo.reduce((t, [name, v]) => applyAxis(t, name, v), base)
      const decoded = yield* Train.decodeConfig(raw).pipe(
        Effect.mapError((err) => new ConfigError({ path: `train.${err.path}`, message: `${where}: ${err.message}` }))
      )
      const train = Train.encodeConfig(decoded)
      const values = Object.fromEntries(combo)
      const armParts = combo.filter(([n]) => n !== "seed").map(([n, v]) => (n === "method" || n === "readOut" || n === "solver" ? String(v) : n === "tail" ? `tail k ${v}` : `${n} ${v}`))
      const arm = armParts.length > 0 ? armParts.join(", ") : sweep.base
      const hash = shortHash({ train, eval: evalSpec, dynamics })
      const id = `${slug(armParts.join("-") || sweep.base)}-s${decoded.seed}-${hash}`
      runs.push({ id, arm, seed: decoded.seed, axes: values, train, eval: evalSpec, dynamics })
    }
    const ids = new Set(runs.map((r) => r.id))
    if (ids.size !== runs.length) {
      return yield* new ConfigError({ path: "axes", message: `${where}: two runs resolve to the same config (an axis repeats a value)` })
    }
    return {
      name: path.basename(where).replace(/\.json$/i, ""),
      description: sweep.description ?? `sweep over ${axes.map(([n]) => n).join(", ")} from ${sweep.base}`,
      file: where,
      base: sweep.base,
      axes: axes.map(([n]) => n),
      runs
    } satisfies Sweep
  })

/** Reads, decodes and expands a sweep file. */
export const load = (file: string): Effect.Effect<Sweep, ConfigError> =>
  Effect.flatMap(readSweepFile(file), (s) => expand(file, s))

/** The JSON of a run's spec (what the workflow payload carries). */
export const specJson = (run: RunSpec): Json => JSON.parse(JSON.stringify(run)) as Json
