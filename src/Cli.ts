/**
 * The `deq` command line (effect/cli):
 *
 * - `deq` / `deq main [--preset NAME | --config FILE] [--out DIR] [--resume] [--workers N|auto]`: the main job:
 *   train, evaluate (paper protocol and adaptive attacks, with and without the entropy defence), analyse the
 *   dynamics, write `runs/<name>/report.md`. Bare `deq` (and `npm start`) runs the `mnist-fc-pgdat-ris` preset.
 * - `deq train --config FILE.json | --preset NAME [--out DIR] [--resume DIR] [--workers N|auto]`: training with a
 *   progress bar, a JSONL event log and checkpoints; Ctrl-C saves a checkpoint and exits (code 130). `--workers`
 *   sets how many threads compute each batch (docs/training.md, "Workers").
 * - `deq eval --checkpoint DIR [--attacks ready-made,grid,aa] [--defence entropy]`: the evaluation suite.
 * - `deq dynamics --checkpoint DIR`: per-state accuracy, entropy and residual, a table and SVG plots.
 * - `deq bench [--quick] [--no-peer]`: the benchmarks, with the PyTorch peer when torch is importable.
 * - `deq presets`: the shipped presets.
 *
 * Failures print one line naming the problem (a config key, a file, a checkpoint) and exit with code 1.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Cli from "effect-deq/Cli"
 *
 * // the same as `deq eval --checkpoint runs/smoke --defence entropy`
 * await Effect.runPromise(Cli.runArgs(["eval", "--checkpoint", "runs/smoke", "--defence", "entropy"]))
 * ```
 *
 * @since 0.1.0
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { NodeServices } from "@effect/platform-node"
import { Effect, Option, Runtime, Schema } from "effect"
import { Command, Flag } from "effect/cli"
import { ConfigError } from "./Errors.ts"
import { benchJob, dynamicsJob, evalJob, pipelineJob } from "./internal/cli/jobs.ts"
import { loadConfigFile, loadPreset, mainPreset, type Preset, presetNames } from "./internal/cli/presets.ts"
import { attackFamilies as families, type AttackFamily as Family } from "./Evaluation.ts"
import { resumableConfig, say, trainRun } from "./internal/cli/train.ts"
import * as Report from "./Report.ts"
import { Backend } from "./Tensor.ts"
import * as Train from "./Train.ts"

// ---------------------------------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------------------------------

/**
 * A command failed and its message was printed: the process exits with `exitCode` without a second report.
 *
 * @category errors
 */
export class CommandFailed extends Schema.TaggedError<CommandFailed>()("CommandFailed", {
  command: Schema.String,
  message: Schema.String,
  exitCode: Schema.Number
}) {
  /** false tells runMain not to log it again (the runtime's marker means "report this error") */
  override get [Runtime.errorReported](): boolean {
    return false
  }
  override get [Runtime.errorExitCode](): number {
    return this.exitCode
  }
}

/** "Tag (at path): message" on one line, for any of the library's typed errors. */
const describeError = (e: unknown): string => {
  if (typeof e === "object" && e !== null) {
    const tag = (e as { _tag?: unknown })._tag
    const message = (e as { message?: unknown }).message
    const at = (e as { path?: unknown }).path
    if (typeof message === "string" && message.length > 0) {
      const where = typeof at === "string" && at.length > 0 && !message.includes(at) ? ` (at ${at})` : ""
      const text = message.split("\n").map((l) => l.trim()).filter((l) => l.length > 0).join(" ")
      return typeof tag === "string" ? `${tag}${where}: ${text}` : text
    }
  }
  return String(e)
}

/** Prints a failure as one line on stderr and turns it into {@link CommandFailed} (exit code 1). */
const reported = (command: string) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, CommandFailed, R> =>
  self.pipe(
    Effect.catch((e: E) =>
      Effect.andThen(
        say(`deq ${command}: error: ${describeError(e)}`),
        Effect.fail(new CommandFailed({ command, message: describeError(e), exitCode: 1 }))
      )
    )
  )

/** Chooses the tfjs backend (Backend.auto: DEQ_BACKEND or the fastest available), then runs `self`. */
const withBackend = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.andThen(Effect.service(Backend), self).pipe(Effect.provide(Backend.auto))

// ---------------------------------------------------------------------------------------------------------------
// flags
// ---------------------------------------------------------------------------------------------------------------

const outFlagWith = (description: string) => Flag.String("out").pipe(Flag.withDescription(description), Flag.optional)
const outFlag = outFlagWith("output directory (default: runs/<preset or config name>)")
const presetFlag = Flag.String("preset").pipe(
  Flag.withDescription(`a shipped preset (deq presets lists them): ${presetNames().join(", ")}`),
  Flag.optional
)
const configFlag = Flag.String("config").pipe(
  Flag.withDescription("a training config (JSON, Train's TrainConfig; unknown keys are rejected)"),
  Flag.optional
)
const checkpointFlag = Flag.String("checkpoint").pipe(
  Flag.withDescription("a checkpoint directory, or a run directory holding last/ (preferred) or best/")
)
const intFlag = (name: string, description: string) => Flag.Int(name).pipe(Flag.withDescription(description), Flag.optional)
const numberFlag = (name: string, description: string) => Flag.Finite(name).pipe(Flag.withDescription(description), Flag.optional)

const opt = <A>(o: Option.Option<A>): A | undefined => Option.getOrUndefined(o)

const workersFlag = Flag.String("workers").pipe(
  Flag.withDescription('threads computing each batch: a positive integer or "auto" (default: the config\'s "workers")'),
  Flag.optional
)

/** The config with `--workers` applied (absent: as it is); a bad value is a ConfigError naming the flag. */
const withWorkers = (config: Train.TrainConfig, flag: string | undefined): Effect.Effect<Train.TrainConfig, ConfigError> => {
  if (flag === undefined) return Effect.succeed(config)
  const n = Number(flag)
  if (flag !== "auto" && !(Number.isInteger(n) && n >= 1)) {
    return Effect.fail(new ConfigError({ path: "workers", message: `--workers ${flag}: give a positive integer or "auto"` }))
  }
  return Train.decodeConfig({ ...(Train.encodeConfig(config) as object), workers: flag === "auto" ? "auto" : n })
}

/** The preset or config file a command names (exactly one of them). */
const chooseConfig = (preset: string | undefined, config: string | undefined, fallback?: string): Effect.Effect<Preset, ConfigError> => {
  if (preset !== undefined && config !== undefined) {
    return Effect.fail(new ConfigError({ path: "config", message: "give either --config or --preset, not both" }))
  }
  if (config !== undefined) return loadConfigFile(config)
  if (preset !== undefined) return loadPreset(preset)
  if (fallback !== undefined) return loadPreset(fallback)
  return Effect.fail(new ConfigError({ path: "config", message: "give --config FILE.json or --preset NAME (deq presets lists the presets)" }))
}

// ---------------------------------------------------------------------------------------------------------------
// commands
// ---------------------------------------------------------------------------------------------------------------

/**
 * `deq train`: trains a config file or a preset; `--resume DIR` continues the run in DIR (its stored config is
 * used when no config is given).
 *
 * @category commands
 */
export const train = Command.make("train", {
  config: configFlag,
  preset: presetFlag,
  out: outFlag,
  resume: Flag.String("resume").pipe(Flag.withDescription("continue the run in this directory from its last checkpoint"), Flag.optional),
  workers: workersFlag
}, (flags) =>
  Effect.gen(function*() {
    const resume = opt(flags.resume), out = opt(flags.out), preset = opt(flags.preset), file = opt(flags.config)
    if (resume !== undefined && out !== undefined && path.resolve(resume) !== path.resolve(out)) {
      return yield* new ConfigError({ path: "out", message: `--resume ${resume} continues in its own directory; drop --out ${out}` })
    }
    // --resume needs a checkpoint to continue; its stored config is used unless one is given (Train then checks
    // that the given one is the same)
    const stored = resume !== undefined ? yield* resumableConfig(resume) : undefined
    const config = stored !== undefined && preset === undefined && file === undefined
      ? { name: path.basename(path.resolve(resume!)), train: stored }
      : yield* Effect.map(chooseConfig(preset, file), (p) => ({ name: p.name, train: p.train }))
    const dir = resume ?? out ?? path.join("runs", config.name)
    const { summary } = yield* trainRun(yield* withWorkers(config.train, opt(flags.workers)), { out: dir, resume: resume !== undefined })
    yield* Effect.sync(() =>
      console.log(
        `trained ${config.name}: epoch ${summary.epoch}, ${summary.step} steps in ${summary.seconds.toFixed(1)} s` +
          (summary.lastEvaluation !== undefined
            ? `; held-out clean ${Report.percent(summary.lastEvaluation.clean)}` +
              (summary.lastEvaluation.robust !== undefined ? `, PGD ${Report.percent(summary.lastEvaluation.robust)}` : "")
            : "") + `; checkpoints in ${dir}`
      )
    )
  }).pipe(withBackend, reported("train"))).pipe(
  Command.withDescription("Train a DEQ from a config file or a preset (progress on stderr, events.jsonl, checkpoints)")
)

const parseFamilies = (list: string | undefined): Effect.Effect<ReadonlySet<Family>, ConfigError> => {
  if (list === undefined) return Effect.succeed(new Set(families))
  const names = list.split(",").map((s) => s.trim()).filter((s) => s.length > 0)
  const bad = names.find((n) => !(families as ReadonlyArray<string>).includes(n))
  if (bad !== undefined || names.length === 0) {
    return Effect.fail(new ConfigError({ path: "attacks", message: `unknown attack family "${bad ?? ""}"; valid: ${families.join(", ")}` }))
  }
  return Effect.succeed(new Set(names as Array<Family>))
}

/**
 * `deq eval`: the evaluation suite on a checkpoint (paper protocol and adaptive attacks side by side); writes
 * report.md and report.json (default `<run>/eval/`).
 *
 * @category commands
 */
export const evaluate = Command.make("eval", {
  checkpoint: checkpointFlag,
  attacks: Flag.String("attacks").pipe(
    Flag.withDescription(`comma-separated attack families: ${families.join(", ")} (default: all)`),
    Flag.optional
  ),
  defence: Flag.Literals("defence", ["none", "entropy"]).pipe(
    Flag.withDescription("also evaluate with the input entropy-reduction defence (paper protocol, BPDA, full)"),
    Flag.withDefault("none")
  ),
  samples: intFlag("samples", "test images evaluated (default 500)"),
  defendedSamples: intFlag("defended-samples", "test images evaluated with the defence (default 200)"),
  eps: numberFlag("eps", "Linf radius (default: the training attack's)"),
  pgdSteps: intFlag("pgd-steps", "PGD steps (default 20)"),
  grid: Flag.Literals("grid", ["small", "paper", "none"]).pipe(Flag.withDescription("intermediate-state grid (default small)"), Flag.optional),
  apgdSteps: intFlag("apgd-steps", "APGD steps of the ensemble (default 50)"),
  squareQueries: intFlag("square-queries", "Square queries of the ensemble (default 1000)"),
  out: outFlagWith("output directory (default: <run>/eval)")
}, (flags) =>
  Effect.gen(function*() {
    const families = yield* parseFamilies(opt(flags.attacks))
    const suite: Record<string, unknown> = {}
    const set = (key: string, v: unknown) => {
      if (v !== undefined) suite[key] = v
    }
    set("samples", opt(flags.samples))
    set("defendedSamples", opt(flags.defendedSamples))
    set("eps", opt(flags.eps))
    set("pgdSteps", opt(flags.pgdSteps))
    set("grid", opt(flags.grid))
    set("apgdSteps", opt(flags.apgdSteps))
    set("squareQueries", opt(flags.squareQueries))
    const out = opt(flags.out)
    yield* evalJob({
      checkpoint: flags.checkpoint,
      families,
      defence: flags.defence === "entropy",
      suite: suite as any,
      ...(out !== undefined ? { out } : {})
    })
  }).pipe(withBackend, reported("eval"))).pipe(
  Command.withDescription("Evaluate a checkpoint: ready-made, intermediate-state and ensemble attacks, with and without the entropy defence")
)

/**
 * `deq dynamics`: per intermediate state, clean and robust accuracy, mean prediction entropy and relative
 * residual; a table and SVG plots (default `<run>/dynamics/`).
 *
 * @category commands
 */
export const dynamics = Command.make("dynamics", {
  checkpoint: checkpointFlag,
  samples: Flag.Int("samples").pipe(Flag.withDescription("test images"), Flag.withDefault(200)),
  attackSteps: Flag.Int("attack-steps").pipe(Flag.withDescription("PGD steps of the attack whose inputs are observed"), Flag.withDefault(10)),
  eps: numberFlag("eps", "Linf radius (default: the training attack's)"),
  steps: intFlag("steps", "solver states to observe (default: the model's budget)"),
  out: outFlagWith("output directory (default: <run>/dynamics)")
}, (flags) =>
  Effect.gen(function*() {
    const eps = opt(flags.eps), steps = opt(flags.steps), out = opt(flags.out)
    yield* dynamicsJob({
      checkpoint: flags.checkpoint,
      samples: flags.samples,
      attackSteps: flags.attackSteps,
      ...(eps !== undefined ? { eps } : {}),
      ...(steps !== undefined ? { steps } : {}),
      ...(out !== undefined ? { out } : {})
    })
  }).pipe(withBackend, reported("dynamics"))).pipe(
  Command.withDescription("Per-state accuracy (clean and robust), entropy and residual of a checkpoint, with SVG plots")
)

/**
 * `deq bench`: solver, conv-gradient, attack-step and training-step benchmarks, with the PyTorch peer beside.
 *
 * @category commands
 */
export const bench = Command.make("bench", {
  quick: Flag.Boolean("quick").pipe(Flag.withDescription("small sizes (about a minute)"), Flag.withDefault(false)),
  peer: Flag.Boolean("peer").pipe(Flag.withDescription("run the PyTorch peer when torch is importable (--no-peer skips it)"), Flag.withDefault(true)),
  out: Flag.String("out").pipe(Flag.withDescription("output directory"), Flag.withDefault("runs/bench"))
}, (flags) => benchJob(flags).pipe(Effect.asVoid, withBackend, reported("bench"))).pipe(
  Command.withDescription("Benchmarks: solvers, conv gradients, an attack step and a training step; PyTorch peer")
)

const runMain = (preset: string | undefined, config: string | undefined, out: string | undefined, resume: boolean, command: string, workers?: string) =>
  Effect.gen(function*() {
    const chosen = yield* chooseConfig(preset, config, mainPreset)
    const p = { ...chosen, train: yield* withWorkers(chosen.train, workers) }
    yield* pipelineJob({ preset: p, out: out ?? path.join("runs", p.name), resume, command })
  })

/**
 * `deq main`: the whole pipeline (train, eval with and without the defence, dynamics, report) for a preset or a
 * config file; the main job by default.
 *
 * @category commands
 */
export const main = Command.make("main", {
  preset: presetFlag,
  config: configFlag,
  out: outFlag,
  resume: Flag.Boolean("resume").pipe(Flag.withDescription("continue training from <out>/last"), Flag.withDefault(false)),
  workers: workersFlag
}, (flags) =>
  runMain(opt(flags.preset), opt(flags.config), opt(flags.out), flags.resume, `deq main ${process.argv.slice(3).join(" ")}`.trim(), opt(flags.workers)).pipe(
    withBackend,
    reported("main")
  )).pipe(Command.withDescription(`The whole pipeline: train, evaluate, analyse, report (default preset ${mainPreset})`))

/**
 * `deq presets`: lists the shipped presets with their descriptions.
 *
 * @category commands
 */
export const presets = Command.make("presets", {}, () =>
  Effect.gen(function*() {
    for (const name of presetNames()) {
      const p = yield* loadPreset(name)
      yield* Effect.sync(() => console.log(`${name.padEnd(22)} ${p.description}`))
    }
  }).pipe(reported("presets"))).pipe(Command.withDescription("List the shipped presets"))

/**
 * The root command: without a subcommand it runs the main job (`npm start`).
 *
 * @category commands
 */
export const deq = Command.make("deq", {}, () =>
  runMain(undefined, undefined, undefined, false, "npm start").pipe(withBackend, reported("main"))).pipe(
    Command.withDescription("Robust deep equilibrium models: train, evaluate, analyse the dynamics, benchmark"),
    Command.withSubcommands([main, train, evaluate, dynamics, bench, presets])
  )

/**
 * The package version (from package.json).
 *
 * @category commands
 */
export const version: string = (() => {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version?: string }
    return pkg.version ?? "0.0.0"
  } catch {
    return "0.0.0"
  }
})()

/**
 * Runs `deq` with explicit arguments (tests, scripts), with Node's platform services.
 *
 * @category running
 */
export const runArgs = (args: ReadonlyArray<string>) =>
  Command.runWith(deq, { version })(args).pipe(Effect.provide(NodeServices.layer))

/**
 * Runs `deq` on the process arguments (what src/bin.ts hands to `NodeRuntime.runMain`).
 *
 * @category running
 */
export const program = Command.run(deq, { version }).pipe(Effect.provide(NodeServices.layer))
