/**
 * The per-sample worst case over several evaluations of the same samples: a sample counts as robust only if every
 * evaluation left it correct. Used by the intermediate-state grid and by the evaluation suite's headline numbers.
 *
 * @internal
 */
import type { EvaluationResult, StageSummary } from "./evaluation.ts"
import { type AttackRole, type Flag, type MaskingStats, unreliableFlags } from "./flags.ts"

/** One evaluation that takes part in a worst case, with the label its row gets. */
export interface Component {
  readonly label: string
  readonly result: EvaluationResult
}

/** A worst case and, per sample, the label of the first component that broke it ("clean", or null when robust). */
export interface Worst {
  readonly worst: EvaluationResult
  readonly brokenBy: Array<string | null>
}

const max = (vs: ReadonlyArray<number | undefined>): number | undefined => {
  const d = vs.filter((v): v is number => v !== undefined)
  return d.length === 0 ? undefined : Math.max(...d)
}
const min = (vs: ReadonlyArray<number | undefined>): number | undefined => {
  const d = vs.filter((v): v is number => v !== undefined)
  return d.length === 0 ? undefined : Math.min(...d)
}

/** The most pessimistic of the components' measurements. */
export const mergeDiagnostics = (ds: ReadonlyArray<MaskingStats>): MaskingStats => ({
  zeroGradientFraction: max(ds.map((d) => d.zeroGradientFraction)) ?? 0,
  zeroCoordinateFraction: max(ds.map((d) => d.zeroCoordinateFraction)),
  forwardNotConvergedClean: max(ds.map((d) => d.forwardNotConvergedClean)),
  forwardNotConvergedAdv: max(ds.map((d) => d.forwardNotConvergedAdv)),
  backwardResidual: max(ds.map((d) => d.backwardResidual)),
  gradientCosine: min(ds.map((d) => d.gradientCosine)),
  blackBoxFraction: max(ds.map((d) => d.blackBoxFraction))
})

/** Every distinct flag of the components (same kind and message once). */
export const unionFlags = (flags: ReadonlyArray<Flag>): Array<Flag> => {
  const seen = new Set<string>()
  return flags.filter((f) => {
    const key = `${f.kind}\u0000${f.message}`
    if (seen.has(key)) return false
    seen.add(key)
    return true
  })
}

/**
 * Combines evaluations of the same samples (in the same order) into their per-sample worst case. The result's
 * stages are the components (`perSample.brokenAt` = 1-based index of the first component that broke a sample),
 * its passes their sum, its diagnostics the most pessimistic, and its flags `flagsOf(diagnostics)` (default: the
 * union of the components' flags). A sample is clean-correct only if every component found it so.
 */
export const combineWorst = (
  components: ReadonlyArray<Component>,
  label: string,
  flagsOf?: (diagnostics: MaskingStats) => Array<Flag>
): Worst => {
  if (components.length === 0) throw new RangeError("effect-deq worstCase: no evaluations to combine")
  const first = components[0]!.result
  const n = Math.min(...components.map((c) => c.result.perSample.brokenAt.length))
  const cleanCorrect: Array<number> = []
  const brokenAt: Array<number> = []
  const brokenBy: Array<string | null> = []
  for (let s = 0; s < n; s++) {
    const clean = components.every((c) => c.result.perSample.cleanCorrect[s] === 1 && c.result.perSample.brokenAt[s] !== 0)
    cleanCorrect.push(clean ? 1 : 0)
    if (!clean) {
      brokenAt.push(0)
      brokenBy.push("clean")
      continue
    }
    const j = components.findIndex((c) => c.result.perSample.brokenAt[s]! > 0)
    brokenAt.push(j === -1 ? -1 : j + 1)
    brokenBy.push(j === -1 ? null : components[j]!.label)
  }
  const frac = (c: number) => (n === 0 ? 0 : c / n)
  const count = (p: (v: number) => boolean) => brokenAt.reduce((a, v) => a + (p(v) ? 1 : 0), 0)
  const sum = (c: Component, key: "queries" | "forward" | "backward") => c.result.stages.reduce((q, s) => q + s[key], 0)
  const stages: Array<StageSummary> = components.map((c, j) => ({
    name: c.label,
    settings: {
      kind: c.result.stages.some((s) => s.settings.kind === "white-box") ? "white-box" : "black-box",
      norm: c.result.norm,
      eps: c.result.eps,
      steps: Math.max(...c.result.steps),
      restarts: Math.max(...c.result.restarts),
      options: { gradientSource: c.result.gradientSource, attack: c.result.attack }
    },
    robustAccuracy: frac(count((b) => b === -1 || b > j + 1)),
    broken: count((b) => b === j + 1),
    queries: sum(c, "queries"),
    forward: sum(c, "forward"),
    backward: sum(c, "backward")
  }))
  const diagnostics = mergeDiagnostics(components.map((c) => c.result.diagnostics))
  const worst: EvaluationResult = {
    classifier: first.classifier,
    attack: [...new Set(components.map((c) => c.result.attack))].join(", "),
    gradientSource: label,
    norm: first.norm,
    eps: first.eps,
    steps: components.flatMap((c) => c.result.steps),
    restarts: components.flatMap((c) => c.result.restarts),
    seed: first.seed,
    backend: first.backend,
    samples: n,
    total: first.total,
    complete: components.every((c) => c.result.complete),
    cleanAccuracy: frac(cleanCorrect.reduce((a, v) => a + v, 0)),
    robustAccuracy: frac(count((b) => b === -1)),
    stages,
    passes: {
      forward: components.reduce((a, c) => a + c.result.passes.forward, 0),
      backward: components.reduce((a, c) => a + c.result.passes.backward, 0)
    },
    diagnostics,
    flags: flagsOf === undefined ? unionFlags(components.flatMap((c) => c.result.flags)) : flagsOf(diagnostics),
    perSample: { cleanCorrect, brokenAt }
  }
  return { worst, brokenBy }
}

/** One evaluation in a {@link worstCase}: its label and, for the reliability checks, how it attacked. */
export interface WorstCaseInput {
  readonly label: string
  readonly result: EvaluationResult
  readonly role?: AttackRole
}

/** The robust accuracy after an evaluation's gradient-based stages (before any black-box stage that follows them). */
export const whiteBoxRobust = (r: EvaluationResult): number => {
  let k = -1
  r.stages.forEach((s, j) => {
    if (s.settings.kind === "white-box") k = j
  })
  return k === -1 || k === r.stages.length - 1 ? r.robustAccuracy : r.stages[k]!.robustAccuracy
}

/**
 * The per-sample worst case over evaluations of the same samples (see src/Adversary.ts `worstCase`): the union of
 * their flags plus `unreliable` where the roles contradict each other or `sweep` does not fall with eps.
 */
export const worstCase = (
  inputs: ReadonlyArray<WorstCaseInput>,
  options: { readonly label: string; readonly sweep?: ReadonlyArray<EvaluationResult> }
): EvaluationResult => {
  const { worst } = combineWorst(inputs, options.label)
  const roles = inputs.flatMap((c) =>
    c.role === undefined ? [] : [{
      label: c.label,
      role: c.role,
      robust: c.result.robustAccuracy,
      whiteBoxRobust: whiteBoxRobust(c.result)
    }]
  )
  const extra = unreliableFlags(roles, options.sweep ?? [])
  return { ...worst, flags: unionFlags([...worst.flags, ...extra]) }
}
