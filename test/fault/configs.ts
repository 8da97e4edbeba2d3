/**
 * The config fuzzer's generators: valid base configs (the shipped presets and hand-made ones that switch every
 * optional section on), their leaf paths, and fast-check arbitraries of mutated configs (bad values at leaves,
 * deleted keys, unknown keys, whole sections replaced, huge sizes), each remembering the paths it changed.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import fc from "fast-check"
import { presetNames, presetsDir } from "../../src/internal/cli/presets.ts"
import * as Train from "../../src/Train.ts"

export type Json = null | boolean | number | string | ReadonlyArray<Json> | { readonly [k: string]: Json }
export type Path = ReadonlyArray<string | number>

/** The shipped presets' files (the CLI's list: sweep files are not presets), parsed. */
export const presetFiles = (): Array<{ readonly name: string; readonly json: { train: Json; suite?: Json } }> =>
  presetNames().map((name) => ({
    name,
    json: JSON.parse(fs.readFileSync(path.join(presetsDir, `${name}.json`), "utf8"))
  }))

/** Hand-made configs that switch on what the presets leave off (every model kind, solver, gradient, method). */
const handMade: ReadonlyArray<Json> = [
  {
    model: { _tag: "conv", channels: 4, groups: 2, inputShape: [8, 8, 1], classes: 4, stemStride: 1, dropout: 0.1 },
    data: { name: "synthetic", height: 8, width: 8, classes: 4, trainSize: 64, testSize: 16, noise: 0.2, seed: 1, channels: 1 },
    solver: { _tag: "anderson", maxIter: 6 },
    gradient: { _tag: "implicit", maxIter: 10, solver: "broyden" },
    method: { _tag: "trades", beta: 3 },
    regularizers: {
      randomStates: { max: 4, perSample: true },
      jacobian: { weight: 0.1, jitter: [-1, 1], untilEpoch: 3 },
      correction: { states: 2 }
    },
    attack: { eps: 0.1, stepSize: 0.02, steps: 2, start: "normal" },
    eval: { eps: 0.1, stepSize: 0.02, subset: 16, batchSize: 16 },
    clip: 5,
    pretrainSteps: 2
  },
  {
    model: { _tag: "multiscale", channels: [4, 8], groups: 2, inputShape: [8, 8, 1], classes: 3 },
    data: { name: "fashion-mnist", dir: "/nonexistent", trainSize: 100 },
    solver: { _tag: "picard", maxIter: 5, tau: 0.5 },
    gradient: { _tag: "phantom", k: 3, tau: 0.6 },
    method: { _tag: "standard" }
  },
  {
    model: { _tag: "fc", hidden: 8, inputShape: [4, 4, 3], norm: "none", act: "tanh" },
    data: { name: "cifar10", dir: "/nonexistent", testSize: 10 },
    gradient: { _tag: "unrolled", n: 4 },
    adam: { beta1: 0.8, weightDecay: 0.01 },
    dropLast: true
  }
]

/** Valid base configs, fully encoded (every default written out, so every field is a leaf to mutate). */
export const baseConfigs = (): ReadonlyArray<Json> =>
  [...presetFiles().map((p) => p.json.train), ...handMade].map((c) => Train.encodeConfig(Train.decodeConfigSync(c)) as Json)

const isRecord = (u: unknown): u is Record<string, Json> => typeof u === "object" && u !== null && !Array.isArray(u)

/** Every path of a JSON value: containers (objects, arrays) and leaves. */
export const pathsOf = (value: Json, at: Path = []): { readonly leaves: Array<Path>; readonly containers: Array<Path> } => {
  const leaves: Array<Path> = [], containers: Array<Path> = []
  const walk = (v: Json, p: Path) => {
    if (Array.isArray(v) || isRecord(v)) {
      containers.push(p)
      const entries: Array<[string | number, Json]> = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v)
      if (entries.length === 0) leaves.push(p)
      for (const [k, x] of entries) walk(x, [...p, k])
    } else {
      leaves.push(p)
    }
  }
  walk(value, at)
  return { leaves, containers }
}

/** The value at a path (undefined when it is not there). */
export const valueAt = (value: unknown, p: Path): unknown => {
  let v = value
  for (const k of p) v = typeof v === "object" && v !== null ? (v as any)[k] : undefined
  return v
}

/** A copy with the value at `p` replaced (`undefined` deletes the key; an array element stays in place). */
const setAt = (value: Json, p: Path, next: Json | undefined): Json => {
  if (p.length === 0) return next === undefined ? {} : next
  const [head, ...rest] = p
  if (Array.isArray(value)) {
    const copy = [...value] as Array<Json>
    copy[head as number] = setAt(copy[head as number]!, rest, next) as Json
    return copy
  }
  const copy = { ...(value as Record<string, Json>) }
  if (rest.length === 0 && next === undefined) delete copy[head as string]
  else copy[head as string] = setAt(copy[head as string] ?? {}, rest, next) as Json
  return copy
}

/** Values that are wrong almost everywhere, and the sizes that do not fit anything. */
const badValues: ReadonlyArray<Json | number> = [
  "NaN", "", "x", "8", null, true, false, [], {}, [1, 2], { a: 1 },
  -1, 0, 0.5, -0.5, 1.5, 1e-300, 1e12, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53), 1099511627776, 100_000,
  Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY
]

/** Sizes: valid in range for small fields, huge for the ones bounded by the wasm heap. */
const sizes: ReadonlyArray<number> = [1, 2, 3, 7, 64, 1000, 8192, 65_536, 100_000, 1_000_000, 1e9, 2 ** 31, 1099511627776]

/** One mutation and the paths it touched. */
export interface Mutated {
  readonly input: Json
  readonly touched: ReadonlyArray<Path>
  readonly description: string
}

const mutation = (base: Json) => {
  const { leaves, containers } = pathsOf(base)
  const objects = containers.filter((p) => isRecord(valueAt(base, p)))
  const leaf = fc.constantFrom(...leaves)
  const inner = containers.filter((p) => p.length > 0)
  const object = fc.constantFrom(...objects)
  const tagged = objects.filter((p) => typeof valueAt(base, [...p, "_tag"]) === "string")
  const bad = fc.constantFrom(...badValues) as fc.Arbitrary<Json>
  const paths = inner.length > 0 ? fc.oneof(leaf, fc.constantFrom(...inner)) : leaf
  return fc.oneof(
    fc.tuple(leaf, bad).map(([p, v]) => ({ p, v, d: `set ${p.join(".")} = ${JSON.stringify(v)}` })),
    fc.tuple(leaf, fc.constantFrom(...sizes)).map(([p, v]) => ({ p, v: v as Json, d: `size ${p.join(".")} = ${v}` })),
    fc.tuple(paths, bad).map(([p, v]) => ({ p, v, d: `replace ${p.join(".")} = ${JSON.stringify(v)}` })),
    paths.map((p) => ({ p, v: undefined, d: `delete ${p.join(".")}` })),
    fc.tuple(object, fc.constantFrom("maxIters", "hiddn", "extra", "_tag", "epoch", "stpes")).map(([p, k]) => ({
      p: [...p, k],
      v: 1 as Json,
      d: `add ${[...p, k].join(".")}`
    })),
    ...(tagged.length > 0
      ? [fc.tuple(fc.constantFrom(...tagged), fc.constantFrom("fc", "conv", "broyden", "picard", "anderson", "unroll", "trades", "pgd", "x")).map(([p, t]) => ({
        p: [...p, "_tag"],
        v: t as Json,
        d: `retag ${p.join(".")} = ${t}`
      }))]
      : [])
  )
}

/** A base config with 1-3 mutations. */
export const mutatedConfig = (bases: ReadonlyArray<Json>): fc.Arbitrary<Mutated> =>
  fc.constantFrom(...bases).chain((base) =>
    fc.array(mutation(base), { minLength: 1, maxLength: 3 }).map((ms) => {
      let input = base
      for (const m of ms) input = setAt(input, m.p, m.v)
      return { input, touched: ms.map((m) => m.p), description: ms.map((m) => m.d).join("; ") }
    })
  )

/** Whether `p` starts with `prefix`. */
export const startsWith = (p: Path, prefix: Path): boolean => prefix.every((k, i) => String(p[i]) === String(k))

/**
 * Whether an error path names a leaf of the input: the value there is a primitive, missing, or an empty container,
 * or it is (under) a path the mutation touched (a replaced section is itself the wrong value), an unknown key, or a
 * section given where a plain value belongs (the schema's own location of the issue no deeper than the path).
 */
export const namesLeaf = (input: unknown, errorPath: Path, touched: ReadonlyArray<Path>, message = ""): boolean => {
  if (touched.some((t) => startsWith(errorPath, t))) return true
  // an unknown key is itself the field that is wrong, whatever it holds
  if (/excess property/.test(message)) return true
  const v = valueAt(input, errorPath)
  if (Array.isArray(v) ? v.length === 0 : !isRecord(v) || Object.keys(v).length === 0) return true
  // a tuple of plain values (a shape, a [lo, hi] range) is one field when the issue is about the tuple as a whole
  if (Array.isArray(v) && v.every((x) => x === null || typeof x !== "object") && !/Expected|Missing key/.test(message.split("\n")[0]!.replace(/^[^:]*: /, "").slice(0, 12))) return true
  // a section or list given where a plain value belongs is itself the wrong field, unless the schema's own
  // location of the issue (`at ["a"]["b"]` in the message) lies deeper than the path reported
  const deeper = [...message.matchAll(/at ((?:\[[^\]]*\])+)/g)].some((m) => (m[1]!.match(/\[/g) ?? []).length > errorPath.length)
  return !deeper && /Expected (number|string|boolean|an integer|a finite number|array|"[^"]*"( \| "[^"]*")*)\b/.test(message)
}
