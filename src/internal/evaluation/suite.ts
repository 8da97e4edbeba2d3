/**
 * The evaluation suite of `deq eval` and the main job: every attack we have against the undefended DEQ and against
 * the entropy-reduction defence, and for each of the two the one number to report, the per-sample worst case over
 * all of them (docs/attacks.md, "The numbers to report").
 *
 * Undefended (on `samples` test images): PGD with the ready-made gradients (implicit, phantom) at the read-out
 * state; PGD over the grid of intermediate-state surrogates (Eq. (11)), worst case; AutoAttack (APGD-CE, APGD-T,
 * FAB-T, Square) through the strongest grid surrogate; Square alone (black-box).
 * With the defence (on the first `defendedSamples` of them): the paper's transfer protocol (x_adv from the
 * undefended DEQ), BPDA, full differentiation through the defence, EOT when the defence is randomized, Square
 * against the defended prediction, AutoAttack through BPDA; the PGD attacks with `defendedRestarts` restarts.
 * An eps sweep of the strongest attack (eps/2 and 2 eps undefended, 2 eps defended) feeds the `unreliable` check.
 *
 * @internal
 */
import { Effect, Schema } from "effect"
import * as Adversary from "../../Adversary.ts"
import { defaulted, NonNegativeInt, Positive, PositiveInt } from "../../Config.ts"
import type * as Data from "../../Data.ts"
import type * as Dynamics from "../../Dynamics.ts"
import type { ConfigError } from "../../Errors.ts"
import * as Report from "../../Report.ts"
import type { Rng } from "../../Tensor.ts"
import { defendedBlock, type SuiteContext, type SuiteRow, undefendedBlock } from "./blocks.ts"

export type { SuiteRow } from "./blocks.ts"

/** The attack families of the suite (`deq eval --attacks`). */
export const attackFamilies = ["ready-made", "grid", "aa"] as const

/** One attack family. */
export type AttackFamily = typeof attackFamilies[number]

/**
 * Settings of the evaluation suite (decoded strictly, like every config).
 * - `samples` / `defendedSamples`: test images evaluated without / with the defence (the defended subset is the
 *   first `defendedSamples` of the undefended one).
 * - `eps`: the threat model (Linf); default: the training attack's eps.
 * - `pgdSteps`: PGD steps (step size 2.5 eps / steps, random start, the first fooling iterate kept).
 * - `grid`: the intermediate-state grid ("small": lambda {1, 0.5} x states z_{N/4}, z_{N/2}, z_N x K_a {1, 5};
 *   "paper": lambda {1, 0.5} x z_1..z_N x K_a 1..9; "none").
 * - `apgdSteps`, `squareQueries`, `targets`: AutoAttack's budget (AutoAttack: 100, 5000, 9; FAB-T uses
 *   `apgdSteps` and `targets` too); `squareQueries` is also the budget of the stand-alone Square row.
 *   `defended*`: the same through the defence (every query runs the defence's optimisation; 0 queries: no Square).
 * - `defendedRestarts`: restarts of the defended PGD attacks (each on the samples not yet broken).
 * - `sweep`: also run the strongest attack at other radii (eps/2 and 2 eps undefended, 2 eps defended).
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
  defendedRestarts: defaulted(PositiveInt, 2),
  sweep: defaulted(Schema.Boolean, true),
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

/** Everything the suite measured. */
export interface SuiteResult {
  readonly eps: number
  /** the two worst cases first (undefended, then defended), then every evaluation they combine, then details */
  readonly rows: ReadonlyArray<SuiteRow>
  /** the undefended per-sample worst case over every attack (absent when no attack ran) */
  readonly undefended?: Adversary.EvaluationResult
  /** the defended per-sample worst case over every attack on the defence (absent without the defence) */
  readonly defended?: Adversary.EvaluationResult
  /** the grid point with the lowest robust accuracy (the surrogate the ensemble and the defended attacks use) */
  readonly strongest: string
  /** that grid point's gradient source */
  readonly strongestSource: Adversary.GradientSource
  readonly notes: ReadonlyArray<string>
  readonly seconds: number
}

/**
 * Runs the suite on `deq` (read out with `readOut`) over `split`. `families` picks the undefended attack
 * families; `defence` adds the entropy-reduction block. `log` is told what runs.
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
    const { suite, eps } = settings
    const count = Math.min(split.count, suite.samples)
    const pixels = split.height * split.width * split.channels
    const ctx: SuiteContext = {
      deq,
      readOut,
      suite,
      eps,
      steps: settings.steps,
      classes: split.classes,
      families: settings.families,
      log: settings.log,
      count,
      defendedCount: Math.min(count, suite.defendedSamples),
      dataOf: (n) => ({
        x: split.images.subarray(0, n * pixels),
        shape: [split.height, split.width, split.channels],
        y: split.labels.subarray(0, n)
      })
    }
    const open = yield* undefendedBlock(ctx)
    const guarded = settings.defence ? yield* defendedBlock(ctx, open.strongest, open.worst) : undefined
    const strongestLabel = Adversary.GradientSource.label(open.strongest)
    const notes = [
      `Threat model: Linf, eps ${Report.formatEps(eps)}; PGD-${suite.pgdSteps} step size ` +
      `${Report.formatEps((2.5 * eps) / suite.pgdSteps)}, random start. AutoAttack and the defended attacks ` +
      `differentiate through ${strongestLabel} (${Adversary.GradientSource.describe(open.strongest)}), the grid point ` +
      `with the lowest robust accuracy.`,
      ...headlines(open.worst?.result, guarded?.worst?.result, ctx),
      ...(guarded?.notes ?? [])
    ]
    const rows = [
      ...(open.worst !== undefined ? [open.worst] : []),
      ...(guarded?.worst !== undefined ? [guarded.worst] : []),
      ...open.rows,
      ...(guarded?.rows ?? [])
    ]
    return {
      eps,
      rows,
      ...(open.worst !== undefined ? { undefended: open.worst.result } : {}),
      ...(guarded?.worst !== undefined ? { defended: guarded.worst.result } : {}),
      strongest: strongestLabel,
      strongestSource: open.strongest,
      notes,
      seconds: (performance.now() - started) / 1000
    }
  })

/** The report's lead sentences: the two worst cases and whether they are reliable. */
const headlines = (
  open: Adversary.EvaluationResult | undefined,
  guarded: Adversary.EvaluationResult | undefined,
  ctx: SuiteContext
): Array<string> => {
  const line = (what: string, r: Adversary.EvaluationResult, n: number) => {
    const unreliable = r.flags.filter((f) => f.kind === "unreliable").length
    return `**${what}: ${Report.pct(r.robustAccuracy)}%** robust (clean ${Report.pct(r.cleanAccuracy)}%), the ` +
      `per-sample worst case over ${r.stages.length} evaluations on ${n} test images` +
      (unreliable > 0 ? `; flagged \`unreliable\` ${unreliable} time${unreliable > 1 ? "s" : ""} (see the flags)` : "") + "."
  }
  return [
    ...(open !== undefined ? [line("Undefended robust accuracy", open, ctx.count)] : []),
    ...(guarded !== undefined ? [line("Defended robust accuracy (entropy reduction)", guarded, ctx.defendedCount)] : [])
  ]
}
