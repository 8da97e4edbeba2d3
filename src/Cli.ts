/**
 * The `deq` command line (effect/cli):
 *
 * - `deq`: the usage (the commands and the global flags).
 * - `deq main [--preset NAME | --config FILE] [--out DIR] [--resume] [--workers N|auto]`: the main job: train,
 *   evaluate (paper protocol and adaptive attacks, with and without the entropy defence), analyse the dynamics,
 *   write `runs/<name>/report.md`. Without a preset (and as `npm start`) it runs `mnist-fc-pgdat-ris`.
 * - `deq train --config FILE.json | --preset NAME [--out DIR] [--resume DIR] [--workers N|auto]`: training with a
 *   progress bar, a JSONL event log and checkpoints; Ctrl-C saves a checkpoint and exits (code 130). `--workers`
 *   sets how many threads compute each batch (docs/performance.md, "Workers").
 * - `deq eval --checkpoint DIR [--attacks ready-made,grid,aa] [--defence entropy]`: the evaluation suite.
 * - `deq dynamics --checkpoint DIR`: per-state accuracy, entropy and residual, a table and SVG plots.
 * - `deq bench [--quick] [--no-peer]`: the benchmarks, with the PyTorch peer when torch is importable.
 * - `deq presets`: the shipped presets.
 * - `deq sweep --grid FILE --out DIR [--storage postgres://...]` / `deq runner --storage postgres://...`: sweeps as
 *   durable workflows on Effect Cluster (docs/sweeps.md).
 *
 * Failures print one line naming the problem (a config key, a file, a checkpoint, a flag) and exit with code 1; a
 * wrong invocation (a missing flag, a count out of range, a flag that does nothing with the others) prints one line
 * and a hint. Nothing already written is replaced silently: a default output directory that holds a report gives
 * way to `<dir>-2`, an explicit `--out` that holds one needs `--force`.
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
import * as os from "node:os"
import * as path from "node:path"
import { NodeServices } from "@effect/platform-node"
import { Effect, Logger, Option, Runtime, Schema } from "effect"
import { CliError, Command, Flag } from "effect/cli"
import { ConfigError } from "./Errors.ts"
import { checkCombination, count, countWithDefault, force as forceFlag, opt, positive, presenter } from "./internal/cli/flags.ts"
import { benchJob, dynamicsJob, evalJob, pipelineJob } from "./internal/cli/jobs.ts"
import { resolveCheckpoint } from "./internal/cli/load.ts"
import { chooseOut, holdsCheckpoint, holdsReport, holdsRun } from "./internal/cli/outputs.ts"
import { loadConfigFile, loadPreset, mainPreset, type Preset, presetNames } from "./internal/cli/presets.ts"
import { attackFamilies as families, type AttackFamily as Family } from "./Evaluation.ts"
import { resumableConfig, say, trainRun } from "./internal/cli/train.ts"
import * as Report from "./Report.ts"
import * as Sweep from "./Sweep.ts"
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
    // a ConfigError / CheckpointError names its path, a DatasetError its file
    const at = (e as { path?: unknown }).path ?? (e as { file?: unknown }).file
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
const given = (o: Option.Option<unknown>): boolean => Option.isSome(o)

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

/** The report directory of eval / dynamics: `--out` or the default, never one holding a report unless --force. */
const reportOut = (command: string, out: string | undefined, fallback: string, force: boolean) =>
  chooseOut({ command, out, fallback, force, holds: holdsReport, what: "a report" })

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
  force: forceFlag,
  workers: workersFlag
}, (flags) =>
  Effect.gen(function*() {
    const resume = opt(flags.resume), out = opt(flags.out), preset = opt(flags.preset), file = opt(flags.config)
    if (resume !== undefined && out !== undefined && path.resolve(resume) !== path.resolve(out)) {
      return yield* new ConfigError({ path: "out", message: `--resume ${resume} continues in its own directory; drop --out ${out}` })
    }
    yield* checkCombination([{ flag: "--force", given: flags.force, used: resume === undefined, why: "with --resume (the run continues where it stopped)" }])
    // --resume needs a checkpoint to continue; its stored config is used unless one is given (Train then checks
    // that the given one is the same)
    const stored = resume !== undefined ? yield* resumableConfig(resume) : undefined
    const config = stored !== undefined && preset === undefined && file === undefined
      ? { name: path.basename(path.resolve(resume!)), train: stored }
      : yield* Effect.map(chooseConfig(preset, file), (p) => ({ name: p.name, train: p.train }))
    const dir = resume ?? (yield* chooseOut({
      command: "deq train",
      out,
      fallback: path.join("runs", config.name),
      force: flags.force,
      holds: holdsCheckpoint,
      what: "a run (a checkpoint in last/)",
      alternative: (d) => `deq train --resume ${d} continues it`
    }))
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
  samples: count("samples", "test images evaluated (default 500, at most the test split)"),
  defendedSamples: count("defended-samples", "test images evaluated with the defence (default 200; needs --defence entropy)"),
  eps: positive("eps", "Linf radius (default: the training attack's)"),
  pgdSteps: count("pgd-steps", "PGD steps (default 20)"),
  grid: Flag.Literals("grid", ["small", "paper", "none"]).pipe(Flag.withDescription("intermediate-state grid (default small)"), Flag.optional),
  apgdSteps: count("apgd-steps", "APGD steps of the ensemble (default 50; needs aa in --attacks)"),
  squareQueries: count("square-queries", "Square queries of the ensemble (default 1000; needs aa in --attacks)"),
  out: outFlagWith("output directory (default: <run>/eval, or <run>/eval-2, ... when it holds a report)"),
  force: forceFlag
}, (flags) =>
  Effect.gen(function*() {
    const families = yield* parseFamilies(opt(flags.attacks))
    const defence = flags.defence === "entropy"
    // a flag the chosen attacks never read would leave a report that looks like it used the value
    yield* checkCombination([
      { flag: "--defended-samples", given: given(flags.defendedSamples), used: defence, why: "without --defence entropy" },
      { flag: "--grid", given: given(flags.grid), used: families.has("grid"), why: "without grid in --attacks" },
      { flag: "--apgd-steps", given: given(flags.apgdSteps), used: families.has("aa"), why: "without aa in --attacks" },
      { flag: "--square-queries", given: given(flags.squareQueries), used: families.has("aa"), why: "without aa in --attacks" },
      {
        flag: "--pgd-steps",
        given: given(flags.pgdSteps),
        used: defence || families.has("ready-made") || families.has("grid"),
        why: "without ready-made or grid in --attacks or --defence entropy"
      }
    ])
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
    const { runDir } = yield* resolveCheckpoint(flags.checkpoint)
    const out = yield* reportOut("deq eval", opt(flags.out), path.join(runDir, "eval"), flags.force)
    yield* withBackend(evalJob({
      checkpoint: flags.checkpoint,
      families,
      defence,
      suite: suite as any,
      out,
      asked: {
        ...(given(flags.samples) ? { samples: "--samples" } : {}),
        ...(given(flags.defendedSamples) ? { defendedSamples: "--defended-samples" } : {})
      }
    }))
  }).pipe(reported("eval"))).pipe(
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
  samples: count("samples", "test images (default 200, at most the test split)"),
  attackSteps: countWithDefault("attack-steps", "PGD steps of the attack whose inputs are observed", 10),
  eps: positive("eps", "Linf radius (default: the training attack's)"),
  steps: count("steps", "solver states to observe (default: the model's budget)"),
  out: outFlagWith("output directory (default: <run>/dynamics, or <run>/dynamics-2, ... when it holds a report)"),
  worstCase: Flag.Boolean("worst-case").pipe(
    Flag.withDescription(
      "robust accuracy per state as the per-sample worst case over PGD, APGD-CE, APGD-T, FAB-T (--attack-steps steps, 2 targets) and Square (100 queries)"
    ),
    Flag.withDefault(false)
  ),
  force: forceFlag
}, (flags) =>
  Effect.gen(function*() {
    const eps = opt(flags.eps), steps = opt(flags.steps), samples = opt(flags.samples)
    const { runDir } = yield* resolveCheckpoint(flags.checkpoint)
    const out = yield* reportOut("deq dynamics", opt(flags.out), path.join(runDir, "dynamics"), flags.force)
    yield* withBackend(dynamicsJob({
      checkpoint: flags.checkpoint,
      samples: samples ?? 200,
      attackSteps: flags.attackSteps,
      ...(eps !== undefined ? { eps } : {}),
      ...(steps !== undefined ? { steps } : {}),
      out,
      ...(samples !== undefined ? { asked: { samples: "--samples" } } : {}),
      ...(flags.worstCase ? { worstCase: { apgdSteps: flags.attackSteps, targets: 2, squareQueries: 100 } } : {})
    }))
  }).pipe(reported("dynamics"))).pipe(
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

/**
 * `deq main`: the whole pipeline (train, eval with and without the defence, dynamics, report) for a preset or a
 * config file; the main job by default (`npm start`).
 *
 * @category commands
 */
export const main = Command.make("main", {
  preset: presetFlag,
  config: configFlag,
  out: outFlagWith("output directory (default: runs/<preset or config name>, or runs/<name>-2, ... when it holds a run)"),
  resume: Flag.Boolean("resume").pipe(Flag.withDescription("continue training from <out>/last"), Flag.withDefault(false)),
  force: forceFlag,
  workers: workersFlag
}, (flags) =>
  Effect.gen(function*() {
    yield* checkCombination([{ flag: "--force", given: flags.force, used: !flags.resume, why: "with --resume (the run continues where it stopped)" }])
    const chosen = yield* chooseConfig(opt(flags.preset), opt(flags.config), mainPreset)
    const p = { ...chosen, train: yield* withWorkers(chosen.train, opt(flags.workers)) }
    const fallback = path.join("runs", p.name)
    const out = flags.resume
      ? path.resolve(opt(flags.out) ?? fallback)
      : yield* chooseOut({
        command: "deq main",
        out: opt(flags.out),
        fallback,
        force: flags.force,
        holds: holdsRun,
        what: "a run (a report or a checkpoint)",
        alternative: (d) => `deq main --out ${d} --resume continues it`
      })
    const command = `deq main ${process.argv.slice(3).join(" ")}`.trim()
    yield* withBackend(pipelineJob({ preset: p, out, resume: flags.resume, command }))
  }).pipe(reported("main"))).pipe(Command.withDescription(`The whole pipeline: train, evaluate, analyse, report (default preset ${mainPreset}; npm start runs it)`))

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
 * `deq sweep`: submits a sweep file's runs as durable workflows and follows them (embedded SQLite storage in
 * `--out`, or the runners of a PostgreSQL cluster with `--storage`); writes summary.md/json, SVG curves, index.html.
 *
 * @category commands
 */
export const sweep = Command.make("sweep", {
  grid: Flag.String("grid").pipe(Flag.withDescription("the sweep file (JSON: base preset, axes, eval; presets/sweep-*.json)")),
  out: Flag.String("out").pipe(Flag.withDescription("output directory (runs/<id>/, summary, index.html; the embedded storage)")),
  storage: Flag.String("storage").pipe(Flag.withDescription("postgres://user@host:port/db of a cluster of deq runners (default: embedded, in-process)"), Flag.optional),
  workers: countWithDefault("workers", "activities at once in the embedded process", 1)
}, (flags) =>
  Effect.gen(function*() {
    const storage = opt(flags.storage)
    const r = yield* Sweep.sweep({ grid: flags.grid, out: flags.out, workers: flags.workers, ...(storage !== undefined ? { storage } : {}) })
    yield* Effect.sync(() => console.log(r.summary))
    if (r.failed > 0) return yield* new ConfigError({ path: "sweep", message: `${r.failed} of ${r.done + r.failed} runs failed (see ${flags.out}/summary.md)` })
  }).pipe(reported("sweep"))).pipe(
  Command.withDescription("Run a sweep (grid of configs x seeds) as durable workflows; live table, summary, index.html")
)

/**
 * `deq runner`: joins the PostgreSQL cluster and runs sweep workflows until stopped.
 *
 * @category commands
 */
export const runner = Command.make("runner", {
  storage: Flag.String("storage").pipe(Flag.withDescription("postgres://user@host:port/db shared by all runners and deq sweep")),
  host: Flag.String("host").pipe(Flag.withDescription("the address other runners reach this one at"), Flag.withDefault(os.hostname())),
  port: countWithDefault("port", "the runner's TCP port", 34431, { max: 65535 }),
  workers: countWithDefault("workers", "activities at once (each is a training or evaluation)", 1),
  verbose: Flag.Boolean("verbose").pipe(Flag.withDescription("log the cluster's info lines"), Flag.withDefault(false))
}, (flags) => Sweep.runner(flags).pipe(withBackend, reported("runner"))).pipe(
  Command.withDescription("Join a sweep cluster (PostgreSQL storage) and run its workflows until stopped")
)

/**
 * The root command: without a subcommand it prints the usage (the main job is `deq main`, which `npm start` runs;
 * a bare command never starts minutes of work).
 *
 * @category commands
 */
export const deq = Command.make("deq").pipe(
    Command.withDescription(
      "Robust deep equilibrium models: train, evaluate, analyse the dynamics, benchmark. " +
        `\`deq main\` (npm start) runs the main job (preset ${mainPreset}); \`deq <command> --help\` lists a command's flags.`
    ),
    Command.withSubcommands([main, train, evaluate, dynamics, bench, presets, sweep, runner])
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

/** Bare `deq` prints the usage (effect/cli's help without errors) and succeeds; a wrong invocation still fails. */
const usageIsSuccess = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A | void, E, R> =>
  Effect.catchIf(
    self,
    (e): e is E => CliError.isCliError(e) && e._tag === "ShowHelp" && e.errors.length === 0,
    () => Effect.void
  )

/**
 * What every run of `deq` gets: bare `deq` succeeds with the usage, a wrong invocation is one line and a hint, log
 * lines go to stderr (stdout carries only results: tables, reports), Node's platform services.
 */
const asCli = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  self.pipe(
    usageIsSuccess,
    Effect.provide(presenter),
    Effect.provideService(Logger.LogToStderr, true),
    Effect.provide(NodeServices.layer)
  )

/**
 * Runs `deq` with explicit arguments (tests, scripts), with Node's platform services.
 *
 * @category running
 */
export const runArgs = (args: ReadonlyArray<string>) =>
  Command.runWith(deq, { version })(args).pipe(asCli)

/**
 * Runs `deq` on the process arguments (what src/bin.ts hands to `NodeRuntime.runMain`).
 *
 * @category running
 */
export const program = Command.run(deq, { version }).pipe(asCli)
