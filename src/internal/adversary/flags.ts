/**
 * Gradient-masking flags (after AutoAttack's checks and RobustBench's admission rules, plus DEQ-specific ones).
 * A flag is a warning attached to a result: the robust accuracy may be an overestimate, and why.
 */

/** The kinds of flag an evaluation can raise. */
export type FlagKind =
  | "zero-gradients"
  | "zero-gradient-coordinates"
  | "forward-not-converged"
  | "backward-residual-high"
  | "gradient-cosine-low"
  | "black-box-stronger"
  | "accuracy-not-decreasing"
  | "dynamic-defence"
  | "randomized-defence"
  | "unreliable"

/** One raised flag: what was measured, against which threshold, and what to do about it. */
export interface Flag {
  readonly kind: FlagKind
  readonly value: number
  readonly threshold: number
  readonly message: string
}

/** The measurements flags are computed from (fractions are over all evaluated samples). */
export interface MaskingStats {
  readonly zeroGradientFraction: number
  /** fraction of input coordinates (over all samples) whose gradient is exactly zero */
  readonly zeroCoordinateFraction?: number | undefined
  readonly forwardNotConvergedClean?: number | undefined
  readonly forwardNotConvergedAdv?: number | undefined
  readonly backwardResidual?: number | undefined
  readonly gradientCosine?: number | undefined
  /** fraction broken by black-box stages after surviving every white-box stage before them; undefined without both kinds */
  readonly blackBoxFraction?: number | undefined
}

/** Thresholds (see EvaluateOptions). */
export interface Thresholds {
  readonly zeroGradientFraction: number
  readonly zeroCoordinateFraction: number
  readonly notConvergedFraction: number
  readonly backwardResidual: number
  readonly gradientCosine: number
  readonly blackBoxFraction: number
}

import { pct as pctOf } from "../../Report.ts"

const pct = (v: number) => `${pctOf(v)}%`

/** The flags of one evaluation. */
export const maskingFlags = (
  stats: MaskingStats,
  t: Thresholds,
  classifier: { readonly dynamic?: boolean; readonly randomized?: boolean },
  eot: number
): Array<Flag> => {
  const flags: Array<Flag> = []
  if (stats.zeroGradientFraction > t.zeroGradientFraction) {
    flags.push({
      kind: "zero-gradients",
      value: stats.zeroGradientFraction,
      threshold: t.zeroGradientFraction,
      message: `${pct(stats.zeroGradientFraction)} of the samples have an all-zero input gradient: gradient attacks ` +
        "cannot move them (shattered or rounded read-out?); use BPDA, a surrogate gradient or a black-box attack"
    })
  }
  if (stats.zeroCoordinateFraction !== undefined && stats.zeroCoordinateFraction > t.zeroCoordinateFraction) {
    flags.push({
      kind: "zero-gradient-coordinates",
      value: stats.zeroCoordinateFraction,
      threshold: t.zeroCoordinateFraction,
      message: `${pct(stats.zeroCoordinateFraction)} of the input coordinates get an exactly zero gradient: a clip or ` +
        "rounding on the gradient path pins them (e.g. a projection to [0, 1] inside a defence); those pixels never " +
        "move, so the attack is weaker than it looks; use straight-through projections, BPDA or a black-box attack"
    })
  }
  const notConverged = Math.max(stats.forwardNotConvergedClean ?? 0, stats.forwardNotConvergedAdv ?? 0)
  if ((stats.forwardNotConvergedClean !== undefined || stats.forwardNotConvergedAdv !== undefined) &&
    notConverged > t.notConvergedFraction) {
    flags.push({
      kind: "forward-not-converged",
      value: notConverged,
      threshold: t.notConvergedFraction,
      message: `forward solves did not converge on ${pct(stats.forwardNotConvergedClean ?? 0)} of x and ` +
        `${pct(stats.forwardNotConvergedAdv ?? 0)} of x_adv: gradients at a non-equilibrium state are unreliable; ` +
        "attack through intermediate states (unrolled z_i)"
    })
  }
  if (stats.backwardResidual !== undefined && stats.backwardResidual > t.backwardResidual) {
    flags.push({
      kind: "backward-residual-high",
      value: stats.backwardResidual,
      threshold: t.backwardResidual,
      message: `backward residual ${stats.backwardResidual.toExponential(2)}: the implicit gradient is inexact`
    })
  }
  if (stats.gradientCosine !== undefined && stats.gradientCosine < t.gradientCosine) {
    flags.push({
      kind: "gradient-cosine-low",
      value: stats.gradientCosine,
      threshold: t.gradientCosine,
      message: `gradient cosine ${stats.gradientCosine.toFixed(3)}: the attack's gradient and the reference ` +
        "gradient disagree (forward/backward misalignment)"
    })
  }
  if (stats.blackBoxFraction !== undefined && stats.blackBoxFraction > t.blackBoxFraction) {
    flags.push({
      kind: "black-box-stronger",
      value: stats.blackBoxFraction,
      threshold: t.blackBoxFraction,
      message: `a black-box attack broke ${pct(stats.blackBoxFraction)} of the samples the white-box attacks ` +
        "could not: the gradients are likely masked"
    })
  }
  if (classifier.dynamic === true) {
    flags.push({
      kind: "dynamic-defence",
      value: 1,
      threshold: 0,
      message: "the defence runs an optimisation loop at inference: report an adaptive attack through it " +
        "(differentiate through the loop, or BPDA/EOT); RobustBench rule 3"
    })
  }
  if (classifier.randomized === true) {
    flags.push({
      kind: "randomized-defence",
      value: eot,
      threshold: 1,
      message: `the classifier is randomized: gradients ${eot > 1 ? `averaged over ${eot} draws (EOT)` : "from single draws; use eot > 1"}; ` +
        "a single evaluation of x_adv may overestimate robustness; RobustBench rule 2"
    })
  }
  return flags
}

/**
 * Flags of an epsilon sweep (results sorted by eps): accuracy rising with eps, or not falling at all.
 * Returns, per input result, the flags to add.
 */
export const sweepFlags = (points: ReadonlyArray<{ readonly eps: number; readonly robustAccuracy: number }>) => {
  const order = points.map((_, i) => i).sort((a, b) => points[a]!.eps - points[b]!.eps)
  const out: Array<Array<Flag>> = points.map(() => [])
  for (let j = 1; j < order.length; j++) {
    const lo = points[order[j - 1]!]!
    const hi = points[order[j]!]!
    if (hi.robustAccuracy > lo.robustAccuracy) {
      out[order[j]!]!.push({
        kind: "accuracy-not-decreasing",
        value: hi.robustAccuracy - lo.robustAccuracy,
        threshold: 0,
        message: `robust accuracy rises from ${pct(lo.robustAccuracy)} at eps ${lo.eps} to ${pct(hi.robustAccuracy)} ` +
          `at eps ${hi.eps}: a larger ball contains the smaller one, so the attack is failing`
      })
    }
  }
  if (order.length > 1) {
    const first = points[order[0]!]!
    const last = points[order[order.length - 1]!]!
    if (first.robustAccuracy > 0 && last.robustAccuracy >= first.robustAccuracy && last.eps > first.eps) {
      for (const i of order) {
        out[i]!.push({
          kind: "accuracy-not-decreasing",
          value: last.robustAccuracy,
          threshold: first.robustAccuracy,
          message: `robust accuracy does not fall from eps ${first.eps} (${pct(first.robustAccuracy)}) to eps ` +
            `${last.eps} (${pct(last.robustAccuracy)}): the attack is likely not working (masked gradients?)`
        })
      }
    }
  }
  return out
}

/** How an evaluation attacked the model it is a worst case of (for the `unreliable` checks). */
export type AttackRole = "transfer" | "adaptive" | "white-box" | "black-box"

/** A labelled evaluation with its role, as the reliability checks see it. */
export interface RoleRow {
  readonly label: string
  readonly role: AttackRole
  /** robust accuracy */
  readonly robust: number
  /** robust accuracy after the gradient-based part only (an ensemble's stages before its black-box ones) */
  readonly whiteBoxRobust: number
}

const pts = (v: number) => `${pctOf(v)}%`

/**
 * RobustBench's "unreliable": an evaluation whose attacks contradict each other, so its number is not a measured
 * upper bound. Raised when an adaptive attack scores above the non-adaptive transfer attack on the same images
 * (the adaptive gradients are poor), when a black-box attack beats every gradient-based one (masked gradients),
 * and when robust accuracy does not fall as eps grows (`sweep`, points of one attack at several eps).
 */
export const unreliableFlags = (
  rows: ReadonlyArray<RoleRow>,
  sweep: ReadonlyArray<{ readonly eps: number; readonly robustAccuracy: number }> = []
): Array<Flag> => {
  const flags: Array<Flag> = []
  const transfer = rows.filter((r) => r.role === "transfer")
  if (transfer.length > 0) {
    const best = transfer.reduce((a, r) => (r.robust < a.robust ? r : a))
    for (const r of rows.filter((x) => x.role === "adaptive" && x.robust > best.robust)) {
      flags.push({
        kind: "unreliable",
        value: r.robust - best.robust,
        threshold: 0,
        message: `the adaptive attack "${r.label}" leaves ${pts(r.robust)} robust, above the non-adaptive transfer ` +
          `attack "${best.label}" (${pts(best.robust)}) on the same images: its gradients through the defence are ` +
          "poor, so it bounds nothing; the transfer attack and the worst case are the numbers to report"
      })
    }
  }
  const gradient = rows.filter((r) => r.role !== "black-box")
  if (gradient.length > 0) {
    const strongest = Math.min(...gradient.map((r) => r.whiteBoxRobust))
    for (const r of rows.filter((x) => x.role === "black-box" && x.robust < strongest)) {
      flags.push({
        kind: "unreliable",
        value: strongest - r.robust,
        threshold: 0,
        message: `the black-box attack "${r.label}" (${pts(r.robust)}) beats every gradient-based attack (best ` +
          `${pts(strongest)}): the gradients are likely masked`
      })
    }
  }
  if (sweepFlags(sweep).some((f) => f.length > 0)) {
    const sorted = [...sweep].sort((a, b) => a.eps - b.eps)
    flags.push({
      kind: "unreliable",
      value: sorted.at(-1)!.robustAccuracy,
      threshold: sorted[0]!.robustAccuracy,
      message: `robust accuracy does not fall as eps grows (${sorted.map((p) => `eps ${p.eps}: ${pts(p.robustAccuracy)}`).join(", ")}): ` +
        "a larger ball contains the smaller one, so the attack is failing"
    })
  }
  return flags
}
