/**
 * The input domain of an attack call: NHWC shapes, finite pixels inside the classifier's bounds, labels that are
 * class indices. A bad input is named by its sample, so no attack ever runs on (and reports success for) NaN
 * pixels, 0..255 images or fractional labels.
 *
 * @internal
 */
import { defaultBounds } from "./types.ts"
import type { Classifier } from "./types.ts"

/** What is wrong with an input, and which sample (row, or the key it was given) is to blame. */
export interface Problem {
  readonly message: string
  readonly sample?: number
}

const shapeText = (s: ReadonlyArray<number>) => `[${s.join(", ")}]`

/** The classifier's input bounds (default [0, 1]). */
export const boundsOf = (c: Classifier): readonly [number, number] => c.bounds ?? defaultBounds

/** Shape problems of an image batch and its labels (rank, per-sample shape, one label per sample). */
export const shapeProblem = (
  c: Classifier,
  xShape: ReadonlyArray<number>,
  yShape: ReadonlyArray<number>
): Problem | undefined => {
  if (xShape.length !== 4) {
    const want = c.inputShape === undefined ? "[batch, height, width, channels]" : shapeText([-1, ...c.inputShape]).replace("-1", "batch")
    return { message: `x must be a 4-D NHWC batch ${want}, got shape ${shapeText(xShape)}` }
  }
  if (c.inputShape !== undefined && c.inputShape.some((v, i) => v !== xShape[i + 1])) {
    return {
      message: `x has per-sample shape ${shapeText(xShape.slice(1))} (batch shape ${shapeText(xShape)}), the classifier ` +
        `"${c.name}" expects ${shapeText(c.inputShape)}`
    }
  }
  if (yShape.length !== 1 || yShape[0] !== xShape[0]) {
    return { message: `y must hold one label per sample: x has ${xShape[0]} samples, y has shape ${shapeText(yShape)}` }
  }
  return undefined
}

/** The first pixel that is not finite or lies outside [lo, hi]. */
export const pixelProblem = (
  values: ArrayLike<number>,
  perSample: number,
  bounds: readonly [number, number],
  keys?: ArrayLike<number>
): Problem | undefined => {
  const [lo, hi] = bounds
  for (let j = 0; j < values.length; j++) {
    const v = values[j]!
    if (v >= lo && v <= hi) continue
    const row = Math.floor(j / perSample)
    const sample = keys === undefined ? row : keys[row]!
    const what = Number.isNaN(v) ? "NaN" : !Number.isFinite(v) ? `${v}` : `${v}, outside the input bounds [${lo}, ${hi}]`
    return {
      sample,
      message: `sample ${sample}: pixel ${j - row * perSample} is ${what}; inputs must be finite and inside ` +
        `[${lo}, ${hi}] (scale the images, or declare the classifier's \`bounds\`)`
    }
  }
  return undefined
}

/** The first label that is not an integer class index in [0, classes). */
export const labelProblem = (
  labels: ArrayLike<number>,
  classes: number,
  keys?: ArrayLike<number>
): Problem | undefined => {
  for (let i = 0; i < labels.length; i++) {
    const v = labels[i]!
    if (Number.isInteger(v) && v >= 0 && v < classes) continue
    const sample = keys === undefined ? i : keys[i]!
    return {
      sample,
      message: `sample ${sample}: label ${v} is not a class index (an integer in [0, ${classes}))`
    }
  }
  return undefined
}
