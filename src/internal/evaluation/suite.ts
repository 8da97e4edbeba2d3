/**
 * The evaluation suite of `deq eval` and the main job: the paper's protocol and adaptive attacks side by side.
 *
 * Undefended (on `samples` test images):
 * - PGD with the ready-made gradients at the read-out state (implicit, phantom): what gradient obfuscation looks
 *   like;
 * - PGD over a grid of intermediate-state surrogates (Eq. (11)), per-sample worst case: the paper's white-box
 *   protocol;
 * - the AutoAttack-style ensemble (APGD-CE, APGD-T, Square) through the strongest grid surrogate.
 * With the entropy-reduction defence (on the first `defendedSamples` of them):
 * - the paper's protocol: x_adv from the undefended DEQ (non-adaptive), prediction from the defended one;
 * - adaptive: BPDA (identity backward of the purification), full differentiation through the defence, EOT (only
 *   meaningful for randomized defences: skipped with a note otherwise), and the ensemble through BPDA.
 *
 * @internal
 */
import { Effect, Schema } from "effect"
import * as Adversary from "../../Adversary.ts"
import { defaulted, NonNegativeInt, Positive, PositiveInt } from "../../Config.ts"
import type * as Data from "../../Data.ts"
import type * as Dynamics from "../../Dynamics.ts"
import type { ConfigError } from "../../Errors.ts"
import * as Regularizers from "../../Regularizers.ts"
import * as Report from "../../Report.ts"
import type { Rng } from "../../Tensor.ts"


/** The attack families of the suite (`deq eval --attacks`). */
export const attackFamilies = ["ready-made", "grid", "aa"] as const

/** One attack family. */
export type AttackFamily = typeof attackFamilies[number]

/**
 * Settings of the evaluation suite (decoded strictly, like every config).
 * - `samples` / `defendedSamples`: test images evaluated without / with the defence (the defended subset is the
 *   first `defendedSamples` of the undefended one).
 * - `eps`: the threat model (Linf); default: the training attack's eps.
 * - `pgdSteps`: PGD steps (step size 2.5 eps / steps, random start, last iterate kept only if it fools).
 * - `grid`: the intermediate-state grid ("small": lambda {1, 0.5} x i {0, N/2, N-1} x K_a {1, 5}; "paper":
 *   lambda {1, 0.5} x i 1..N x K_a 1..9; "none").
 * - `apgdSteps`, `squareQueries`, `targets`: the AutoAttack-style ensemble's budget (AutoAttack: 100, 5000, 9);
 *   `defended*`: the same for the ensemble through the defence (every query runs the defence's optimisation).
 * - `defence`: entropy-reduction settings (default: Regularizers' MNIST preset with the attack eps as radius).
 * - `eot`: EOT draws of the adaptive attack on a randomized defence.
 */
export class SuiteConfig extends Schema.Class<SuiteConfig>("SuiteConfig")({
  samples: defaulted(PositiveInt, 500),
  defendedSamples: defaulted(PositiveInt, 200),
  batchSize: defaulted(PositiveInt, 100),
  eps: Schema.optional(Positive),
  pgdSteps: defaulted(PositiveInt, 20),
  grid: defaulted(Schema.Literals(["small", "paper", "none"]), "small"),
  apgdSteps: defaulted(PositiveInt, 50),
  squareQueries: defaulted(PositiveInt, 1000),
  targets: defaulted(PositiveInt, 3),
  defendedApgdSteps: defaulted(PositiveInt, 10),
  defendedTargets: defaulted(PositiveInt, 2),
  defendedSquareQueries: defaulted(NonNegativeInt, 50),
  defence: Schema.optional(Schema.Struct({
    rounds: Schema.optional(PositiveInt),
    solverSteps: Schema.optional(PositiveInt),
    inputSteps: Schema.optional(NonNegativeInt),
    alpha: Schema.optional(Positive),
    eps: Schema.optional(Positive)
  })),
  eot: defaulted(PositiveInt, 4),
  dynamicsSamples: defaulted(PositiveInt, 200),
  dynamicsAttackSteps: defaulted(PositiveInt, 10)
}) {}

/** One row of the suite: which defence, which protocol, which attack, and the evaluation. */
export interface SuiteRow {
  readonly defence: string
  readonly protocol: string
  readonly attack: string
  readonly result: Adversary.EvaluationResult
  /** wall time of this row's evaluation (grid rows: the whole grid) */
  readonly seconds: number
}

/** Everything the suite measured. */
export interface SuiteResult {
  readonly eps: number
  readonly rows: ReadonlyArray<SuiteRow>
  /** the grid point with the lowest robust accuracy (the surrogate the ensemble and the defended attacks use) */
  readonly strongest: string
  /** that grid point's gradient source */
  readonly strongestSource: Adversary.GradientSource
  readonly notes: ReadonlyArray<string>
  readonly seconds: number
}


/** The undefended per-sample worst case restricted to the first `n` samples, as a result row (same subset). */
const restrict = (r: Adversary.EvaluationResult, n: number): Adversary.EvaluationResult => {
  const cleanCorrect = r.perSample.cleanCorrect.slice(0, n)
  const brokenAt = r.perSample.brokenAt.slice(0, n)
  const m = cleanCorrect.length
  return {
    ...r,
    samples: m,
    total: m,
    complete: true,
    cleanAccuracy: cleanCorrect.reduce((a, v) => a + v, 0) / Math.max(1, m),
    robustAccuracy: brokenAt.filter((b) => b === -1).length / Math.max(1, m),
    perSample: { cleanCorrect, brokenAt }
  }
}

/**
 * Runs the suite on `deq` (read out with `readOut`) over `split`. `families` picks the attack families;
 * `defence` adds the entropy-reduction block. `log` is told what runs.
 */
export const runSuite = (
  deq: Dynamics.Deq,
  readOut: Dynamics.ReadOut,
  split: Data.Split,
  settings: {
    readonly suite: SuiteConfig
    readonly eps: number
    readonly steps: number
    readonly families: ReadonlySet<AttackFamily>
    readonly defence: boolean
    readonly log: (message: string) => Effect.Effect<void>
  }
): Effect.Effect<SuiteResult, Adversary.AttackError | ConfigError | Adversary.ResumeError, Rng> =>
  Effect.gen(function*() {
    const started = performance.now()
    const { suite, eps, families, log } = settings
    const count = Math.min(split.count, suite.samples)
    const dCount = Math.min(count, suite.defendedSamples)
    const pixels = split.height * split.width * split.channels
    const dataOf = (n: number): Adversary.EvaluationData => ({
      x: split.images.subarray(0, n * pixels),
      shape: [split.height, split.width, split.channels],
      y: split.labels.subarray(0, n)
    })
    const data = dataOf(count)
    const dData = dataOf(dCount)
    const evaluate = { batchSize: suite.batchSize }
    const pgd = yield* Adversary.pgd({ eps, steps: suite.pgdSteps })
    const pgdName = `PGD-${suite.pgdSteps}`
    const aaStages = (steps: number, queries: number, targets: number) =>
      Effect.gen(function*() {
        const stages = [
          yield* Adversary.apgd({ eps, steps, loss: "ce" }),
          yield* Adversary.apgdTargeted({ eps, steps, targets: Math.min(targets, split.classes - 1) })
        ]
        if (queries > 0) stages.push(yield* Adversary.square({ eps, queries }))
        return stages
      })
    const aaName = (steps: number, queries: number, targets: number) =>
      `AutoAttack-style (APGD-CE ${steps}, APGD-T ${steps} x ${Math.min(targets, split.classes - 1)}` +
      `${queries > 0 ? `, Square ${queries}` : ""})`
    const rows: Array<SuiteRow> = []
    const notes: Array<string> = []
    let clock = performance.now()
    /** seconds since the previous row was added */
    const lap = (): number => {
      const now = performance.now()
      const s = (now - clock) / 1000
      clock = now
      return s
    }
    const none = "none"

    if (families.has("ready-made")) {
      yield* log(`${pgdName} with the ready-made gradients (implicit, phantom) on ${count} images`)
      for (const source of [Adversary.GradientSource.implicit(), Adversary.GradientSource.phantom(5, 0.5)]) {
        const [r] = yield* Adversary.evaluateDeq(deq, data, pgd, { readOut, sources: [source], evaluate })
        rows.push({ defence: none, protocol: `ready-made: ${r!.gradientSource} at the read-out`, attack: pgdName, result: r!, seconds: lap() })
      }
    }

    let strongest: Adversary.GradientSource = Adversary.GradientSource.intermediate(settings.steps, 5, 0.5)
    let gridWorst: Adversary.EvaluationResult | undefined
    if (families.has("grid") && suite.grid !== "none") {
      const grid = suite.grid === "paper" ? Adversary.Grid.paper(settings.steps) : Adversary.Grid.small(settings.steps)
      yield* log(`${pgdName} over ${Adversary.Grid.sources(grid).length} intermediate-state surrogates on ${count} images`)
      const g = yield* Adversary.evaluateGrid(deq, data, pgd, { grid, readOut, evaluate })
      const best = [...g.points].sort((a, b) => a.result.robustAccuracy - b.result.robustAccuracy)[0]!
      strongest = best.source
      gridWorst = g.worst
      rows.push({ defence: none, protocol: "intermediate states (grid worst case)", attack: pgdName, result: g.worst, seconds: lap() })
      rows.push({
        defence: none,
        protocol: `intermediate state, strongest point`,
        attack: pgdName,
        result: best.result,
        seconds: 0
      })
    }
    const strongestLabel = Adversary.GradientSource.label(strongest)

    if (families.has("aa")) {
      yield* log(`${aaName(suite.apgdSteps, suite.squareQueries, suite.targets)} through ${strongestLabel} on ${count} images`)
      const stages = yield* aaStages(suite.apgdSteps, suite.squareQueries, suite.targets)
      const classifier = Adversary.deqClassifier(deq, { source: strongest, readOut })
      const r = yield* Adversary.evaluate(classifier, data, stages, { ...evaluate, gradientSource: classifier.gradientSource })
      rows.push({ defence: none, protocol: "intermediate state (strongest grid point)", attack: aaName(suite.apgdSteps, suite.squareQueries, suite.targets), result: r, seconds: lap() })
    }

    if (settings.defence) {
      const d = suite.defence ?? {}
      const defence = yield* Regularizers.makeEntropyReduction({
        ...Regularizers.entropyReductionPresets.mnist,
        eps,
        alpha: eps / 5,
        ...d
      })
      const dname = "entropy reduction"
      yield* log(`entropy-reduction defence (${defence.name}) on ${dCount} images: paper protocol and adaptive attacks`)
      if (gridWorst !== undefined) {
        lap()
        rows.push({ defence: none, protocol: `same ${dCount} images: grid worst case`, attack: pgdName, result: restrict(gridWorst, dCount), seconds: 0 })
      }
      const modes: ReadonlyArray<readonly [Adversary.DefenceMode, string]> = [
        ["paper", "paper (non-adaptive: x_adv from the undefended DEQ)"],
        ["bpda", "adaptive: BPDA"],
        ["full", "adaptive: full differentiation"]
      ]
      for (const [mode, protocol] of modes) {
        const classifier = Adversary.deqClassifier(deq, { source: strongest, readOut, defence, mode })
        const r = yield* Adversary.evaluate(classifier, dData, pgd, { ...evaluate, gradientSource: classifier.gradientSource })
        rows.push({ defence: dname, protocol, attack: pgdName, result: r, seconds: lap() })
      }
      if (defence.randomized) {
        const eotPgd = yield* Adversary.pgd({ eps, steps: suite.pgdSteps, eot: suite.eot })
        const classifier = Adversary.deqClassifier(deq, { source: strongest, readOut, defence, mode: "bpda" })
        const r = yield* Adversary.evaluate(classifier, dData, eotPgd, { ...evaluate, gradientSource: classifier.gradientSource })
        rows.push({ defence: dname, protocol: `adaptive: EOT (${suite.eot} draws) + BPDA`, attack: pgdName, result: r, seconds: lap() })
      } else {
        notes.push(
          `EOT: the entropy-reduction defence is deterministic (no randomness to average over), so EOT over ` +
            `${suite.eot} draws computes the same gradient as plain BPDA; it is not run separately.`
        )
      }
      if (families.has("aa")) {
        const stages = yield* aaStages(suite.defendedApgdSteps, suite.defendedSquareQueries, suite.defendedTargets)
        const classifier = Adversary.deqClassifier(deq, { source: strongest, readOut, defence, mode: "bpda" })
        yield* log(`${aaName(suite.defendedApgdSteps, suite.defendedSquareQueries, suite.defendedTargets)} with BPDA through the defence`)
        const r = yield* Adversary.evaluate(classifier, dData, stages, { ...evaluate, gradientSource: classifier.gradientSource })
        rows.push({ defence: dname, protocol: "adaptive: BPDA", attack: aaName(suite.defendedApgdSteps, suite.defendedSquareQueries, suite.defendedTargets), result: r, seconds: lap() })
      }
    }
    notes.unshift(
      `Threat model: Linf, eps ${Report.formatEps(eps)}; ${pgdName} step size ${Report.formatEps((2.5 * eps) / suite.pgdSteps)}, ` +
        `random start. The ensemble and the defended attacks differentiate through ${strongestLabel} ` +
        `(${Adversary.GradientSource.describe(strongest)}), the grid point with the lowest robust accuracy.`
    )
    return { eps, rows, strongest: strongestLabel, strongestSource: strongest, notes, seconds: (performance.now() - started) / 1000 }
  })
