/**
 * What the `deq` subcommands do, as Effects: evaluate a checkpoint, analyse its dynamics, run the whole pipeline
 * (train, evaluate, analyse, report), run the benchmarks. src/Cli.ts parses flags and calls these.
 *
 * @internal
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Schema } from "effect"
import * as Adversary from "../../Adversary.ts"
import { decode } from "../../Config.ts"
import type * as Data from "../../Data.ts"
import type * as Dynamics from "../../Dynamics.ts"
import { type CheckpointError, ConfigError, type DatasetError } from "../../Errors.ts"
import { analyseDynamics, type AttackFamily, BatchProgress, type MechanismCheck, mechanismCheck, mechanismSection, runSuite, SuiteConfig, type SuiteResult, suiteFlags, suiteJson, suiteTable } from "../../Evaluation.ts"
import * as Models from "../../Models.ts"
import * as Report from "../../Report.ts"
import { Rng, tf } from "../../Tensor.ts"
import * as Train from "../../Train.ts"
import { loadCheckpoint, type Loaded, testSubset } from "./load.ts"
import { evaluationTicker, makeStageProgress, silentProgress, type StageProgress } from "./progress.ts"
import { type Preset } from "./presets.ts"
import { epochRows, epochTable, trainingPlot } from "./reports.ts"
import { eventsFile, say, stderrSink, trainRun } from "./train.ts"

/** The errors a job can end with. */
export type JobError =
  | ConfigError
  | CheckpointError
  | DatasetError
  | Adversary.AttackError
  | Adversary.ResumeError
  | Report.ReportError
  | Train.RunError

const rel = (p: string): string => path.relative(process.cwd(), p) || "."

const attackEpsOf = (config: Train.TrainConfig, suite: SuiteConfig): number => suite.eps ?? config.eval.eps ?? config.attack.eps

/** The stage display of a job on stderr, or none in quiet mode (a sweep runs many jobs in one process). */
const progressFor = (label: string, quiet = false): StageProgress => (quiet ? silentProgress : makeStageProgress(stderrSink, label))

/**
 * The first `requested` test images, checked against what the test split holds: a count the user asked for by
 * `flag` that exceeds it is a ConfigError naming the flag; a default that exceeds it uses the whole split and
 * says so (a result on fewer images than asked for is never silent).
 */
const subsetOf = (
  config: Train.TrainConfig,
  requested: number,
  o: { readonly flag?: string; readonly progress: StageProgress }
): Effect.Effect<Data.Split, ConfigError | DatasetError> =>
  Effect.gen(function*() {
    const split = yield* testSubset(config, requested)
    if (split.count >= requested) return split
    const where = `the test split of ${config.data.name} holds only ${split.count} images`
    if (o.flag !== undefined) {
      return yield* new ConfigError({ path: o.flag.replace(/^--/, ""), message: `${o.flag} ${requested}: ${where}` })
    }
    o.progress.note(`warning: ${where}, fewer than the default ${requested}: using all ${split.count}`)
    return split
  })

// ---------------------------------------------------------------------------------------------------------------
// eval
// ---------------------------------------------------------------------------------------------------------------

/** Options of {@link evalJob}. */
export interface EvalOptions {
  readonly checkpoint: string
  readonly out?: string
  readonly families: ReadonlySet<AttackFamily>
  readonly defence: boolean
  /** suite settings as JSON-like overrides (decoded strictly) */
  readonly suite?: typeof SuiteConfig.Encoded
  /** no tables on stdout or progress on stderr (a sweep runs many jobs in one process) */
  readonly quiet?: boolean
  /** the flags that set `samples` / `defendedSamples`, when the user gave them (more than exist is then an error) */
  readonly asked?: { readonly samples?: string; readonly defendedSamples?: string }
}

/** The provenance line of a report: backend, seed, machine and the wall time since `started` (performance.now). */
const provenance = (seed: number, started: number): string =>
  `Backend ${tf.getBackend()}, seed ${seed}, ${Report.machine()}; wall time ${Report.duration(performance.now() - started)}.`

/** The suite's section of a report: notes, the table, the flags. */
const suiteSection = (suite: SuiteResult): string =>
  [suite.notes.map((n) => `- ${n}`).join("\n"), "", suiteTable(suite), "", "Flags:", "", suiteFlags(suite), "", `Evaluation time: ${Report.duration(1000 * suite.seconds)}.`].join("\n")

/** Runs the suite on a loaded checkpoint, its stages shown by `progress`. */
const evaluateLoaded = (
  loaded: Loaded,
  suite: SuiteConfig,
  families: ReadonlySet<AttackFamily>,
  defence: boolean,
  progress: StageProgress,
  asked: EvalOptions["asked"] = {}
) =>
  Effect.gen(function*() {
    const split = yield* subsetOf(loaded.config, suite.samples, { progress, ...(asked.samples !== undefined ? { flag: asked.samples } : {}) })
    if (defence && asked.defendedSamples !== undefined && suite.defendedSamples > split.count) {
      return yield* new ConfigError({
        path: "defended-samples",
        message: `${asked.defendedSamples} ${suite.defendedSamples}: more than the ${split.count} images evaluated (the defended ones are the first of them)`
      })
    }
    const eps = attackEpsOf(loaded.config, suite)
    const ticker = evaluationTicker(progress)
    // the attacks' batches on worker threads when the run's `workers` asks for more than one
    const threads = yield* Train.evaluationThreads(loaded.config)
    const run = runSuite(loaded.deq, loaded.readOut, split, {
      suite,
      eps,
      steps: loaded.steps,
      families,
      defence,
      log: (m) => Effect.sync(() => ticker.stage(m))
    }).pipe(Effect.provideService(BatchProgress, ticker.batch), Effect.provide(Rng.seeded(loaded.config.seed)))
    return yield* (threads > 1 ? Effect.provide(run, Train.evaluationWorkers(loaded, threads)) : run).pipe(
      Effect.ensuring(Effect.sync(() => progress.close()))
    )
  })

const describeCheckpoint = (loaded: Loaded): string =>
  [
    `Checkpoint \`${rel(loaded.checkpoint)}\` (epoch ${loaded.metadata.epoch ?? "?"}, step ${loaded.metadata.step ?? "?"}, ` +
    `trained on ${loaded.metadata.backend}).`,
    "",
    Report.code(Models.describe(loaded.model)),
    "",
    `Solver ${loaded.config.solver._tag}, ${loaded.steps} steps; evaluated read-out: ` +
    (loaded.readOut._tag === "State" ? `h(z_${loaded.readOut.n}) (random intermediate states evaluate the last state)` : "the final state")
  ].join("\n")

/** `deq eval`: the evaluation suite on a checkpoint; writes report.md and report.json. */
export const evalJob = (options: EvalOptions): Effect.Effect<{ readonly markdown: string; readonly json: string }, JobError> =>
  Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const loaded = yield* loadCheckpoint(options.checkpoint)
    const suite = yield* decode(SuiteConfig, "suite")(options.suite ?? {})
    const result = yield* evaluateLoaded(loaded, suite, options.families, options.defence, progressFor("eval", options.quiet), options.asked)
    const out = path.resolve(options.out ?? path.join(loaded.runDir, "eval"))
    const markdown = Report.document(`Evaluation of ${rel(loaded.runDir)}`, [
      { title: "Model", body: describeCheckpoint(loaded) },
      { title: "Robustness", body: suiteSection(result) },
      {
        title: "Provenance",
        body: `${provenance(loaded.config.seed, started)} Command: \`deq eval --checkpoint ${rel(options.checkpoint)}` +
          `${options.defence ? " --defence entropy" : ""}\`.`
      }
    ])
    const files = yield* Report.writeReport(out, {
      markdown,
      json: {
        checkpoint: loaded.checkpoint,
        config: Train.encodeConfig(loaded.config),
        suite: Schema.encodeSync(SuiteConfig)(suite),
        evaluation: suiteJson(result),
        backend: tf.getBackend(),
        machine: Report.machine(),
        seconds: (performance.now() - started) / 1000
      }
    })
    if (options.quiet !== true) {
      yield* Effect.sync(() => console.log(suiteTable(result)))
      yield* say(`eval: wrote ${rel(files.markdown)} and ${rel(files.json)}`)
    }
    return files
  }))

// ---------------------------------------------------------------------------------------------------------------
// dynamics
// ---------------------------------------------------------------------------------------------------------------

/** Options of {@link dynamicsJob}. */
export interface DynamicsOptions {
  readonly checkpoint: string
  readonly out?: string
  readonly samples: number
  readonly attackSteps: number
  readonly eps?: number
  /** solver states to observe (default: the model's budget) */
  readonly steps?: number
  readonly batchSize?: number
  /** no table on stdout or progress on stderr */
  readonly quiet?: boolean
  /** the flag that set `samples`, when the user gave it (more than exist is then an error) */
  readonly asked?: { readonly samples?: string }
  /**
   * also attack with APGD-CE, APGD-T, FAB-T and Square (same threat model and gradient source as PGD): each
   * state's robust accuracy is then the per-sample worst case over the five
   */
  readonly worstCase?: WorstCaseAttacks
}

/** The budgets of the per-state worst case's extra attacks. */
export interface WorstCaseAttacks {
  readonly apgdSteps: number
  readonly targets: number
  readonly squareQueries: number
}

/** What the dynamics analysis found. */
export interface DynamicsResult {
  readonly rows: ReadonlyArray<Report.StateRow>
  readonly attack: string
  readonly source: string
  readonly samples: number
  readonly seconds: number
  /** can random intermediate states act: tail(z_n) against tail(z_N) on the clean inputs */
  readonly mechanism: MechanismCheck
}

/** The dynamics analysis of a loaded DEQ. */
const analyse = (
  deq: Dynamics.Deq,
  readOut: Dynamics.ReadOut,
  split: Data.Split,
  o: {
    readonly steps: number
    readonly eps: number
    readonly attackSteps: number
    readonly batchSize: number
    readonly seed: number
    readonly source?: Adversary.GradientSource
    readonly progress: StageProgress
    readonly worstCase?: WorstCaseAttacks
  }
) =>
  Effect.gen(function*() {
    const started = performance.now()
    const source = o.source ?? Adversary.GradientSource.intermediate(o.steps, 5, 0.5)
    const attack = yield* Adversary.pgd({ eps: o.eps, steps: o.attackSteps })
    const w = o.worstCase
    const more = w === undefined ? [] : [
      yield* Adversary.apgd({ eps: o.eps, steps: w.apgdSteps, loss: "ce" }),
      yield* Adversary.apgdTargeted({ eps: o.eps, steps: w.apgdSteps, targets: w.targets }),
      yield* Adversary.fabTargeted({ eps: o.eps, steps: w.apgdSteps, targets: w.targets }),
      yield* Adversary.square({ eps: o.eps, queries: w.squareQueries })
    ]
    const classifier = Adversary.deqClassifier(deq, { source, readOut, diagnostics: false })
    const rows = yield* analyseDynamics(deq, split, {
      steps: o.steps,
      batchSize: o.batchSize,
      attack: { attack, classifier },
      more,
      onBatch: (done, total) => Effect.sync(() => o.progress.tick(done, total))
    }).pipe(Effect.provide(Rng.seeded(o.seed)), Effect.ensuring(Effect.sync(() => o.progress.close())))
    const mechanism = yield* mechanismCheck(deq, split, { steps: o.steps, batchSize: o.batchSize })
    return {
      rows,
      mechanism,
      attack: w === undefined
        ? `PGD-${o.attackSteps} (eps ${Number(o.eps.toPrecision(4))})`
        : `PGD-${o.attackSteps}, APGD-CE-${w.apgdSteps}, APGD-T-${w.apgdSteps} x ${w.targets}, FAB-T-${w.apgdSteps} x ${w.targets} ` +
          `and Square-${w.squareQueries} (eps ${Number(o.eps.toPrecision(4))}; per-sample worst case)`,
      source: Adversary.GradientSource.label(source),
      samples: split.count,
      seconds: (performance.now() - started) / 1000
    } satisfies DynamicsResult
  })

/** A model as a figure names it: its kind and size ("FC DEQ, 26,538 parameters"). */
const modelName = (model: Models.Model): string =>
  `${model.summary.split(":")[0]}, ${model.parameterCount.toLocaleString("en-US")} parameters`

/** The subtitle of a loaded checkpoint's figures over `n` test images. */
const subtitleOf = (loaded: Loaded, n: number): string =>
  Report.subtitle({ model: modelName(loaded.model), data: loaded.config.data.name, n: `${n} test images`, seed: loaded.config.seed })

/** The dynamics section: the table and the three plots (written into `dir`). */
const dynamicsSection = (dir: string, result: DynamicsResult, loaded: Loaded, prefix = "") =>
  Effect.gen(function*() {
    const files = yield* Report.writeDynamicsPlots(dir, [{ name: "model", rows: result.rows }], {
      attack: `${result.attack} through ${result.source}`,
      subtitle: subtitleOf(loaded, result.samples),
      prefix
    })
    return [
      `${result.samples} test images; adversarial inputs from ${result.attack} through ${result.source}, made once and ` +
      "observed along the whole trajectory (each state read out directly, h(z_n)). Residual: ||f(z_n) - z_n|| / ||f(z_n)||." +
        (result.rows[0]?.attacks !== undefined
          ? " Robust accuracy: a sample counts at state n only when h(z_n) is right under every attack; the entropy and " +
            "residual of adversarial inputs are those of PGD's."
          : ""),
      "",
      Report.dynamicsTable(result.rows),
      "",
      Report.image(files.entropy, "prediction entropy per state"),
      Report.image(files.accuracy, "accuracy per state"),
      Report.image(files.residual, "relative residual per step"),
      "",
      "**Can random intermediate states act?**",
      "",
      mechanismSection(result.mechanism),
      "",
      `Analysis time: ${Report.duration(1000 * result.seconds)}.`
    ].join("\n")
  })

/** `deq dynamics`: per-state accuracy (clean and robust), entropy and residual; a table and SVG plots. */
export const dynamicsJob = (options: DynamicsOptions): Effect.Effect<{ readonly markdown: string; readonly json: string }, JobError> =>
  Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const loaded = yield* loadCheckpoint(options.checkpoint)
    const progress = progressFor("dynamics", options.quiet)
    const split = yield* subsetOf(loaded.config, options.samples, {
      progress,
      ...(options.asked?.samples !== undefined ? { flag: options.asked.samples } : {})
    })
    const steps = options.steps ?? loaded.steps
    progress.stage(`${steps} states on ${split.count} test images`)
    const result = yield* analyse(loaded.deq, loaded.readOut, split, {
      progress,
      steps,
      eps: options.eps ?? loaded.config.eval.eps ?? loaded.config.attack.eps,
      attackSteps: options.attackSteps,
      batchSize: options.batchSize ?? 100,
      seed: loaded.config.seed,
      ...(options.worstCase !== undefined ? { worstCase: options.worstCase } : {})
    })
    const out = path.resolve(options.out ?? path.join(loaded.runDir, "dynamics"))
    const section = yield* dynamicsSection(out, result, loaded)
    const markdown = Report.document(`Neural dynamics of ${rel(loaded.runDir)}`, [
      { title: "Model", body: describeCheckpoint(loaded) },
      { title: "Per-state accuracy, entropy and residual", body: section },
      { title: "Provenance", body: provenance(loaded.config.seed, started) }
    ])
    const files = yield* Report.writeReport(out, {
      markdown,
      json: { checkpoint: loaded.checkpoint, ...result, backend: tf.getBackend(), machine: Report.machine() }
    })
    if (options.quiet !== true) {
      yield* Effect.sync(() => console.log(`${Report.dynamicsTable(result.rows)}\n\n${mechanismSection(result.mechanism)}`))
      yield* say(`dynamics: wrote ${rel(files.markdown)} and the plots in ${rel(out)}`)
    }
    return files
  }))

// ---------------------------------------------------------------------------------------------------------------
// the pipeline (main job)
// ---------------------------------------------------------------------------------------------------------------

/** Options of {@link pipelineJob}. */
export interface PipelineOptions {
  readonly preset: Preset
  readonly out: string
  readonly resume: boolean
  /** the command line to print in the report */
  readonly command: string
}

/**
 * The whole pipeline: train the preset, evaluate the last checkpoint with the suite (with and without the entropy
 * defence), analyse its dynamics, and write `<out>/report.md` + `report.json` with the tables, plots, the exact
 * config and the wall time.
 */
export const pipelineJob = (options: PipelineOptions): Effect.Effect<{ readonly markdown: string; readonly json: string; readonly seconds: number }, JobError> =>
  Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const { preset } = options
    const out = path.resolve(options.out)
    yield* say(`main job: preset ${preset.name} (${preset.description}) -> ${rel(out)}`)
    const trained = yield* trainRun(preset.train, { out, resume: options.resume })
    const trainSeconds = (performance.now() - started) / 1000
    const loaded = yield* loadCheckpoint(Train.checkpointDirs(out).last)
    const suite = preset.suite
    const evalStarted = performance.now()
    const evaluation = yield* evaluateLoaded(loaded, suite, new Set<AttackFamily>(["ready-made", "grid", "aa"]), true, makeStageProgress(stderrSink, "eval"))
    const source = evaluation.strongestSource
    const progress = makeStageProgress(stderrSink, "dynamics")
    const split = yield* subsetOf(loaded.config, suite.dynamicsSamples, { progress })
    progress.stage(`${loaded.steps} states on ${split.count} test images`)
    const dynamics = yield* analyse(loaded.deq, loaded.readOut, split, {
      progress,
      steps: loaded.steps,
      eps: attackEpsOf(loaded.config, suite),
      attackSteps: suite.dynamicsAttackSteps,
      batchSize: suite.batchSize,
      seed: loaded.config.seed,
      source
    })
    const evalSeconds = (performance.now() - evalStarted) / 1000
    // the whole log, so a resumed run's report shows every epoch, not only this invocation's
    const history = epochRows(yield* Effect.sync(() => readEvents(eventsFile(out), trained.events)))
    const trainedOn = `${preset.train.data.name}, ${preset.train.data.trainSize ?? "all"} training images`
    yield* Report.writeSvg(
      path.join(out, "training.svg"),
      trainingPlot(history, Report.subtitle({ model: modelName(loaded.model), data: trainedOn, seed: preset.train.seed }))
    )
    const dynamicsBody = yield* dynamicsSection(out, dynamics, loaded)
    const seconds = (performance.now() - started) / 1000
    const c = preset.train
    const summaryRows: Array<ReadonlyArray<Report.Cell>> = evaluation.rows.map((r) => [
      r.defence,
      r.protocol,
      r.attack,
      Report.pct(r.result.cleanAccuracy),
      Report.pct(r.result.robustAccuracy),
      r.result.samples
    ])
    const markdown = Report.document(`effect-deq main job: ${preset.name}`, [
      {
        title: "Summary",
        body: [
          preset.description,
          "",
          `- Wall time: **${Report.duration(1000 * seconds)}** (training ${Report.duration(1000 * trainSeconds)}, ` +
          `evaluation and dynamics ${Report.duration(1000 * evalSeconds)}).`,
          `- Machine: ${Report.machine()}; backend ${tf.getBackend()}; seed ${c.seed}.`,
          `- Command: \`${options.command}\`.`,
          `- Data: ${c.data.name}, ${c.data.trainSize ?? "all"} training images; evaluation on the first ` +
          `${suite.samples} test images (${suite.defendedSamples} with the defence).`,
          `- Model: ${Models.describe(loaded.model).split("\n").join("; ")}.`,
          `- Training: ${c.method._tag}${c.regularizers.randomStates !== undefined ? " + random intermediate states" : ""}, ` +
          `${c.epochs} epochs, batch ${c.batchSize}, attack eps ${c.attack.eps} (${c.attack.steps} steps of ${c.attack.stepSize}); ` +
          `solver ${c.solver._tag} with ${c.solver.maxIter} steps. The evaluated checkpoint is the last one ` +
          `(\`${rel(loaded.checkpoint)}\`).`,
          "",
          Report.table(["defence", "protocol", "attack", "clean %", "robust %", "n"], summaryRows)
        ].join("\n")
      },
      { title: "Training", body: [epochTable(history), "", Report.image("training.svg", "training curves")].join("\n") },
      { title: "Robustness: paper protocol and adaptive attacks", body: suiteSection(evaluation) },
      { title: "Neural dynamics", body: dynamicsBody },
      { title: "Exact config", body: Report.code(JSON.stringify({ train: Train.encodeConfig(c), suite: Schema.encodeSync(SuiteConfig)(suite) }, null, 2), "json") }
    ])
    const files = yield* Report.writeReport(out, {
      markdown,
      json: {
        preset: preset.name,
        command: options.command,
        seconds,
        trainSeconds,
        evalSeconds,
        machine: Report.machine(),
        backend: tf.getBackend(),
        config: Train.encodeConfig(c),
        suite: Schema.encodeSync(SuiteConfig)(suite),
        training: { summary: trained.summary, epochs: history },
        evaluation: suiteJson(evaluation),
        dynamics
      }
    })
    yield* Effect.sync(() => console.log(Report.table(["defence", "protocol", "attack", "clean %", "robust %", "n"], summaryRows)))
    yield* say(`main job: wrote ${rel(files.markdown)} (${Report.duration(1000 * seconds)})`)
    return { ...files, seconds }
  }))

/** The events of a JSONL log (an incomplete or foreign line is skipped); `fallback` when the log is unreadable. */
const readEvents = (file: string, fallback: ReadonlyArray<Train.TrainEvent>): ReadonlyArray<Train.TrainEvent> => {
  try {
    return fs.readFileSync(file, "utf8").split("\n").flatMap((line) => {
      try {
        const e = JSON.parse(line) as { _tag?: unknown }
        return typeof e._tag === "string" ? [e as Train.TrainEvent] : []
      } catch {
        return []
      }
    })
  } catch {
    return fallback
  }
}

// ---------------------------------------------------------------------------------------------------------------
// bench
// ---------------------------------------------------------------------------------------------------------------

/** Options of {@link benchJob}. */
export interface BenchOptions {
  readonly quick: boolean
  readonly peer: boolean
  readonly out: string
}

/** The part of bench/suite.ts that `deq bench` uses (its own type is outside the package). */
interface BenchSuite {
  readonly runBench: (options: {
    readonly quick: boolean
    readonly peer: boolean
    readonly command: string
    readonly onProgress: (message: string) => void
  }) => Promise<BenchRun>
  /** writes bench.md, bench.json and the scaling plot into a directory */
  readonly writeBench: (result: BenchRun, out: string) => Effect.Effect<void, Report.ReportError>
}

/** What `runBench` returns, as far as `deq bench` looks at it. */
type BenchRun = { readonly markdown: string } & Record<string, unknown>

/** `deq bench`: the benchmark suite (bench/suite.ts), printed and written to `<out>/bench.md` + `bench.json`. */
export const benchJob = (
  options: BenchOptions
): Effect.Effect<{ readonly markdown: string; readonly json: string }, Report.ReportError | ConfigError> =>
  Effect.gen(function*() {
    // bench/ is not part of the library's import graph nor of the package: loaded only when asked for, in a clone
    // (a variable specifier keeps tsc from compiling it into dist/)
    const suite = new URL("../../../bench/suite.ts", import.meta.url)
    const unavailable = (message: string) => new ConfigError({ path: "bench", message })
    if (!fs.existsSync(suite)) {
      return yield* unavailable("the benchmarks (bench/) are not part of the installed package: run `npm run bench` in a clone of the repository")
    }
    const { runBench, writeBench } = yield* Effect.tryPromise({
      try: () => import(suite.href) as Promise<BenchSuite>,
      // plain node running dist/ cannot load bench/'s TypeScript
      catch: (e) => unavailable(`bench/suite.ts could not be loaded (${e instanceof Error ? e.message.split("\n")[0] : String(e)}): run \`npm run bench\``)
    })
    const result = yield* Effect.promise(() =>
      runBench({
        quick: options.quick,
        peer: options.peer,
        command: `deq bench${options.quick ? " --quick" : ""}${options.peer ? "" : " --no-peer"}`,
        onProgress: (m) => process.stderr.write(`bench: ${m}\n`)
      })
    )
    yield* writeBench(result, options.out)
    yield* Effect.sync(() => console.log(result.markdown))
    return { markdown: path.join(options.out, "bench.md"), json: path.join(options.out, "bench.json") }
  })
