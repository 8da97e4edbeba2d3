/**
 * Presets: named run configurations shipped in the package's `presets/` directory, and config files given with
 * `--config`. A preset file holds a description, a training config (Train's TrainConfig) and optionally the
 * settings of the evaluation suite; a `--config` file is a bare TrainConfig. Both are decoded strictly: an unknown
 * key is a ConfigError that names it.
 *
 * @internal
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Schema } from "effect"
import { decode } from "../../Config.ts"
import { ConfigError, messageOf } from "../../Errors.ts"
import * as Train from "../../Train.ts"
import { SuiteConfig } from "../../Evaluation.ts"

/** The directory of the shipped presets. */
export const presetsDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "presets")

/** The preset the main job (`npm start`, bare `deq`) runs. */
export const mainPreset = "mnist-fc-pgdat-ris"

const PresetFile = Schema.Struct({
  description: Schema.String,
  train: Schema.Unknown,
  suite: Schema.optional(Schema.Unknown)
})

/** A decoded preset (or config file): its name, description, training config and suite settings. */
export interface Preset {
  readonly name: string
  readonly description: string
  readonly file: string
  readonly train: Train.TrainConfig
  /** the training config exactly as given (JSON), for reports */
  readonly trainJson: unknown
  readonly suite: SuiteConfig
}

/** The names of the shipped presets (file names without `.json`, not the `sweep-*` sweep files), sorted. */
export const presetNames = (): Array<string> =>
  fs.existsSync(presetsDir)
    ? fs.readdirSync(presetsDir).filter((f) => f.endsWith(".json") && !f.startsWith("sweep-")).map((f) => f.slice(0, -5)).sort()
    : []

/** A file's text, read only when it is a regular file (a FIFO would block the read forever). */
const readRegular = (file: string): string => {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  try {
    if (!fs.fstatSync(fd).isFile()) throw Object.assign(new Error("not a regular file"), { code: "ENOTREG" })
    return fs.readFileSync(fd, "utf8")
  } finally {
    fs.closeSync(fd)
  }
}

const readJson = (file: string, what: string): Effect.Effect<unknown, ConfigError> =>
  Effect.try({
    try: () => JSON.parse(readRegular(file)) as unknown,
    catch: (e) => {
      const code = (e as NodeJS.ErrnoException).code
      return new ConfigError({
        path: file,
        message: code === "ENOENT"
          ? `${what} ${file} does not exist`
          : code === "ENOTREG"
          ? `${what} ${file} is not a regular file (a FIFO, device or directory): refused before reading`
          : `${what} ${file} is not valid JSON: ${messageOf(e)}`
      })
    }
  })

/** Prefixes a ConfigError's message with the file it came from. */
const inFile = (file: string) => (e: ConfigError) => new ConfigError({ path: e.path, message: `${file}: ${e.message}` })

/** Loads a shipped preset by name; an unknown name lists the valid ones. */
export const loadPreset = (name: string): Effect.Effect<Preset, ConfigError> =>
  Effect.gen(function*() {
    const names = presetNames()
    if (!names.includes(name)) {
      return yield* new ConfigError({ path: "preset", message: `unknown preset "${name}"; valid presets: ${names.join(", ")}` })
    }
    const file = path.join(presetsDir, `${name}.json`)
    const json = yield* readJson(file, "preset")
    const p = yield* decode(PresetFile)(json).pipe(Effect.mapError(inFile(file)))
    const train = yield* Train.decodeConfig(p.train).pipe(
      Effect.mapError((e) => new ConfigError({ path: `train.${e.path}`, message: `${file}: train.${e.message}` }))
    )
    const suite = yield* decode(SuiteConfig, "suite")(p.suite ?? {}).pipe(Effect.mapError(inFile(file)))
    return { name, description: p.description, file, train, trainJson: p.train, suite }
  })

/** Loads a `--config` file: a bare TrainConfig (suite settings default). */
export const loadConfigFile = (file: string): Effect.Effect<Preset, ConfigError> =>
  Effect.gen(function*() {
    const resolved = path.resolve(file)
    const json = yield* readJson(resolved, "config file")
    const train = yield* Train.decodeConfig(json).pipe(Effect.mapError(inFile(resolved)))
    const suite = yield* decode(SuiteConfig, "suite")({})
    const name = path.basename(resolved).replace(/\.json$/i, "")
    return { name, description: `config file ${resolved}`, file: resolved, train, trainJson: json, suite }
  })
