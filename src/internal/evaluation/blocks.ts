/**
 * The two blocks of the evaluation suite: the attacks on the undefended DEQ and the attacks on the
 * entropy-reduction defence, each ending in its per-sample worst case.
 *
 * @internal
 */
import { Effect } from "effect"
import * as Adversary from "../../Adversary.ts"
import type { ConfigError } from "../../Errors.ts"
import * as Regularizers from "../../Regularizers.ts"
import type { Rng } from "../../Tensor.ts"
import { describeDefence } from "../adversary/workers.ts"
import type * as Dynamics from "../../Dynamics.ts"
import type { AttackFamily, SuiteConfig } from "./suite.ts"

type SuiteError = Adversary.AttackError | ConfigError | Adversary.ResumeError

/** One row of the suite: which defence, which protocol, which attack, and the evaluation. */
export interface SuiteRow {
  readonly defence: string
  readonly protocol: string
  readonly attack: string
  readonly result: Adversary.EvaluationResult
  /** wall time of this row's evaluation (grid rows: the whole grid; worst cases: their components) */
  readonly seconds: number
  /** how the row attacked; rows with a role take part in their block's worst case */
  readonly role?: Adversary.AttackRole
  /** true for the worst-case rows, the numbers to report */
  readonly headline?: boolean
  /** what the seconds column says when the row's time is counted elsewhere */
  readonly timedWith?: string
}

/** What the blocks of the suite share. */
export interface SuiteContext {
  readonly deq: Dynamics.Deq
  readonly readOut: Dynamics.ReadOut
  readonly suite: SuiteConfig
  readonly eps: number
  readonly steps: number
  readonly classes: number
  readonly families: ReadonlySet<AttackFamily>
  readonly log: (message: string) => Effect.Effect<void>
  readonly dataOf: (n: number) => Adversary.EvaluationData
  readonly count: number
  readonly defendedCount: number
}

/** The worst-case row of a block, from its rows that have a role. */
export const worstRow = (
  defence: string,
  rows: ReadonlyArray<SuiteRow>,
  sweep: ReadonlyArray<Adversary.EvaluationResult>
): SuiteRow | undefined => {
  const parts = rows.filter((r) => r.role !== undefined)
  if (parts.length === 0) return undefined
  const result = Adversary.worstCase(parts.map((r) => ({ label: `${r.protocol} (${r.attack})`, result: r.result, role: r.role! })), {
    label: `worst case over ${parts.length} evaluations`,
    sweep
  })
  return {
    defence,
    protocol: `per-sample worst case over every attack below (${parts.length})`,
    attack: "all",
    result,
    seconds: parts.reduce((a, r) => a + r.seconds, 0),
    headline: true
  }
}

/** A stopwatch for rows: seconds since the previous lap. */
export const stopwatch = () => {
  let clock = performance.now()
  return (): number => {
    const now = performance.now()
    const s = (now - clock) / 1000
    clock = now
    return s
  }
}


const none = "none"
const defenceName = "entropy reduction"

/** AutoAttack's four attacks at a budget (Square only with queries > 0). */
const autoAttackStages = (ctx: SuiteContext, steps: number, queries: number, targets: number) =>
  Effect.gen(function*() {
    const t = Math.min(targets, ctx.classes - 1)
    const eps = ctx.eps
    const stages = [
      yield* Adversary.apgd({ eps, steps, loss: "ce" }),
      yield* Adversary.apgdTargeted({ eps, steps, targets: t }),
      yield* Adversary.fabTargeted({ eps, steps, targets: t })
    ]
    if (queries > 0) stages.push(yield* Adversary.square({ eps, queries }))
    return {
      stages,
      name: `AutoAttack (APGD-CE ${steps}, APGD-T ${steps} x ${t}, FAB-T ${steps} x ${t}${queries > 0 ? `, Square ${queries}` : ""})`
    }
  })

/**
 * A per-sample result restricted to its first `n` samples (the defended subset). Pass counts are not recorded per
 * sample: they are scaled to the subset.
 */
export const restrict = (r: Adversary.EvaluationResult, n: number): Adversary.EvaluationResult => {
  const cleanCorrect = r.perSample.cleanCorrect.slice(0, n)
  const brokenAt = r.perSample.brokenAt.slice(0, n)
  const m = cleanCorrect.length
  const scale = m / Math.max(1, r.samples)
  return {
    ...r,
    passes: { forward: r.passes.forward * scale, backward: r.passes.backward * scale },
    samples: m,
    total: m,
    complete: true,
    cleanAccuracy: cleanCorrect.reduce((a, v) => a + v, 0) / Math.max(1, m),
    robustAccuracy: brokenAt.filter((b) => b === -1).length / Math.max(1, m),
    perSample: { cleanCorrect, brokenAt }
  }
}

/** What the undefended block measured. */
export interface Undefended {
  readonly rows: ReadonlyArray<SuiteRow>
  readonly worst?: SuiteRow
  /** the strongest grid point's source (z_N with K_a 5, lambda 0.5 when no grid ran) */
  readonly strongest: Adversary.GradientSource
}

/** Ready-made gradients, the intermediate-state grid, AutoAttack, Square, and the eps sweep, on `count` images. */
export const undefendedBlock = (ctx: SuiteContext): Effect.Effect<Undefended, SuiteError, Rng> =>
  Effect.gen(function*() {
    const { suite, eps, families, log, deq, readOut } = ctx
    const data = ctx.dataOf(ctx.count)
    const evaluate = { batchSize: suite.batchSize }
    const pgdName = `PGD-${suite.pgdSteps}`
    const pgd = yield* Adversary.pgd({ eps, steps: suite.pgdSteps })
    const rows: Array<SuiteRow> = []
    const lap = stopwatch()
    if (families.has("ready-made")) {
      yield* log(`${pgdName} with the ready-made gradients (implicit, phantom) on ${ctx.count} images`)
      for (const source of [Adversary.GradientSource.implicit(), Adversary.GradientSource.phantom(5, 0.5)]) {
        const [r] = yield* Adversary.evaluateDeq(deq, data, pgd, { readOut, sources: [source], evaluate })
        rows.push({ defence: none, protocol: `ready-made: ${r!.gradientSource} at the read-out`, attack: pgdName, result: r!, seconds: lap(), role: "white-box" })
      }
    }
    let strongest: Adversary.GradientSource = Adversary.GradientSource.intermediate(ctx.steps, 5, 0.5)
    let strongestResult: Adversary.EvaluationResult | undefined
    if (families.has("grid") && suite.grid !== "none") {
      const grid = suite.grid === "paper" ? Adversary.Grid.paper(ctx.steps) : Adversary.Grid.small(ctx.steps)
      yield* log(`${pgdName} over ${Adversary.Grid.sources(grid).length} intermediate-state surrogates on ${ctx.count} images`)
      const g = yield* Adversary.evaluateGrid(deq, data, pgd, { grid, readOut, evaluate })
      const best = [...g.points].sort((a, b) => a.result.robustAccuracy - b.result.robustAccuracy)[0]!
      strongest = best.source
      strongestResult = best.result
      rows.push({ defence: none, protocol: "intermediate states (grid worst case)", attack: pgdName, result: g.worst, seconds: lap(), role: "white-box" })
      rows.push({ defence: none, protocol: "intermediate state, strongest point", attack: pgdName, result: best.result, seconds: 0, timedWith: "(in the grid)" })
    }
    const classifier = Adversary.deqClassifier(deq, { source: strongest, readOut })
    const label = classifier.gradientSource
    if (families.has("aa")) {
      const aa = yield* autoAttackStages(ctx, suite.apgdSteps, suite.squareQueries, suite.targets)
      yield* log(`${aa.name} through ${label} on ${ctx.count} images`)
      const r = yield* Adversary.evaluate(classifier, data, aa.stages, { ...evaluate, gradientSource: label })
      rows.push({ defence: none, protocol: "intermediate state (strongest grid point)", attack: aa.name, result: r, seconds: lap(), role: "white-box" })
      yield* log(`Square ${suite.squareQueries} (black-box) on ${ctx.count} images`)
      const sq = yield* Adversary.evaluate(classifier, data, yield* Adversary.square({ eps, queries: suite.squareQueries }), {
        ...evaluate,
        gradientSource: "none (black-box)"
      })
      rows.push({ defence: none, protocol: "black-box (scores of the read-out)", attack: `Square ${suite.squareQueries}`, result: sq, seconds: lap(), role: "black-box" })
    }
    const sweep: Array<Adversary.EvaluationResult> = []
    if (suite.sweep && strongestResult !== undefined) {
      yield* log(`${pgdName} through ${label} at eps/2 and 2 eps (the eps sweep)`)
      for (const factor of [0.5, 2]) {
        const at = yield* Adversary.pgd({ eps: factor * eps, steps: suite.pgdSteps })
        const r = yield* Adversary.evaluate(classifier, data, at, { ...evaluate, gradientSource: label })
        rows.push({ defence: none, protocol: `eps sweep: ${label} at ${factor} eps`, attack: pgdName, result: r, seconds: lap() })
        sweep.push(r)
      }
      sweep.splice(1, 0, strongestResult)
    }
    const worst = worstRow(none, rows, sweep)
    return { rows, strongest, ...(worst !== undefined ? { worst } : {}) }
  })

/** What the defended block measured. */
export interface Defended {
  readonly rows: ReadonlyArray<SuiteRow>
  readonly worst?: SuiteRow
  readonly notes: ReadonlyArray<string>
}

/**
 * The entropy-reduction defence on the first `defendedCount` images: transfer, BPDA, full, EOT, Square against
 * the defended prediction, AutoAttack through BPDA, the 2 eps sweep point; `undefended` (the undefended worst case)
 * adds a detail row on the same images.
 */
export const defendedBlock = (
  ctx: SuiteContext,
  strongest: Adversary.GradientSource,
  undefended: SuiteRow | undefined
): Effect.Effect<Defended, SuiteError, Rng> =>
  Effect.gen(function*() {
    const { suite, eps, log, deq, readOut } = ctx
    const n = ctx.defendedCount
    const data = ctx.dataOf(n)
    const evaluate = { batchSize: suite.batchSize }
    const defenceOptions = { ...Regularizers.entropyReductionPresets.mnist, eps, alpha: eps / 5, ...suite.defence }
    // described, so evaluation workers (when provided) rebuild it
    const defence = describeDefence(yield* Regularizers.makeEntropyReduction(defenceOptions), { entropyReduction: defenceOptions })
    const restarts = suite.defendedRestarts
    const pgdName = `PGD-${suite.pgdSteps}${restarts > 1 ? ` x ${restarts} restarts` : ""}`
    const pgd = yield* Adversary.pgd({ eps, steps: suite.pgdSteps, restarts })
    const rows: Array<SuiteRow> = []
    const notes: Array<string> = []
    yield* log(`entropy-reduction defence (${defence.name}) on ${n} images: transfer, BPDA, full, Square, AutoAttack`)
    const lap = stopwatch()
    const classifierOf = (mode: Adversary.DefenceMode) => Adversary.deqClassifier(deq, { source: strongest, readOut, defence, mode })
    const run = (
      c: Adversary.DeqClassifier,
      attacks: Adversary.Attack["Service"] | ReadonlyArray<Adversary.Attack["Service"]>,
      gradientSource = c.gradientSource
    ) => Adversary.evaluate(c, data, attacks, { ...evaluate, gradientSource })
    const modes: ReadonlyArray<readonly [Adversary.DefenceMode, string, Adversary.AttackRole]> = [
      ["paper", "paper (non-adaptive transfer: x_adv from the undefended DEQ)", "transfer"],
      ["bpda", "adaptive: BPDA", "adaptive"],
      ["full", "adaptive: full differentiation", "adaptive"]
    ]
    const results = new Map<Adversary.DefenceMode, Adversary.EvaluationResult>()
    for (const [mode, protocol, role] of modes) {
      const r = yield* run(classifierOf(mode), pgd)
      results.set(mode, r)
      rows.push({ defence: defenceName, protocol, attack: pgdName, result: r, seconds: lap(), role })
    }
    const bpda = classifierOf("bpda")
    if (defence.randomized) {
      const eotPgd = yield* Adversary.pgd({ eps, steps: suite.pgdSteps, restarts, eot: suite.eot })
      rows.push({ defence: defenceName, protocol: `adaptive: EOT (${suite.eot} draws) + BPDA`, attack: pgdName, result: yield* run(bpda, eotPgd), seconds: lap(), role: "adaptive" })
    } else {
      notes.push(
        `EOT: the entropy-reduction defence is deterministic (no randomness to average over), so EOT over ` +
          `${suite.eot} draws computes the same gradient as plain BPDA; it is not run separately.`
      )
    }
    if (suite.defendedSquareQueries > 0) {
      const sq = yield* Adversary.square({ eps, queries: suite.defendedSquareQueries })
      rows.push({ defence: defenceName, protocol: "black-box (scores of the defended prediction)", attack: `Square ${suite.defendedSquareQueries}`, result: yield* run(bpda, sq, "none (black-box)"), seconds: lap(), role: "black-box" })
    }
    if (ctx.families.has("aa")) {
      const aa = yield* autoAttackStages(ctx, suite.defendedApgdSteps, suite.defendedSquareQueries, suite.defendedTargets)
      yield* log(`${aa.name} with BPDA through the defence`)
      rows.push({ defence: defenceName, protocol: "adaptive: BPDA", attack: aa.name, result: yield* run(bpda, aa.stages), seconds: lap(), role: "adaptive" })
    }
    const sweep: Array<Adversary.EvaluationResult> = []
    if (suite.sweep) {
      yield* log(`BPDA ${pgdName} at 2 eps (the eps sweep)`)
      const at = yield* Adversary.pgd({ eps: 2 * eps, steps: suite.pgdSteps, restarts })
      const r = yield* run(bpda, at)
      rows.push({ defence: defenceName, protocol: `eps sweep: BPDA at 2 eps`, attack: pgdName, result: r, seconds: lap() })
      sweep.push(results.get("bpda")!, r)
    }
    const worst = worstRow(defenceName, rows, sweep)
    if (undefended !== undefined) {
      rows.push({
        defence: none,
        protocol: `same ${n} images: undefended worst case`,
        attack: "all",
        result: restrict(undefended.result, n),
        seconds: 0,
        timedWith: "(above)"
      })
    }
    return { rows, notes, ...(worst !== undefined ? { worst } : {}) }
  })
