/**
 * A seeded synthetic image dataset: one smooth prototype per class (an oriented grating plus a blob, with a
 * per-channel phase), images = prototype with random contrast plus Gaussian noise, clipped to [0, 1].
 *
 * Class k's grating has orientation pi*k/classes, so prototypes are distinct and a nearest-class-mean rule
 * already separates them; small models get far above chance.
 *
 * @internal
 */
import { heapProblem } from "../../Config.ts"
import { deriveSeed, stream } from "../../Tensor.ts"

/**
 * Parameters of the synthetic dataset (already validated).
 *
 * @internal
 */
export interface SyntheticParams {
  readonly classes: number
  readonly height: number
  readonly width: number
  readonly channels: number
  readonly trainSize: number
  readonly testSize: number
  readonly noise: number
  readonly seed: number
}

/**
 * Which size of a synthetic dataset does not fit the wasm heap (Config.heapBytes), naming the leaf key: one image
 * (its largest dimension), else a split (`trainSize` / `testSize`); undefined when everything fits.
 *
 * @internal
 */
export const sizeProblem = (
  p: Pick<SyntheticParams, "height" | "width" | "channels" | "trainSize" | "testSize">
): { readonly key: "height" | "width" | "channels" | "trainSize" | "testSize"; readonly message: string } | undefined => {
  const pixels = p.height * p.width * p.channels
  const image = heapProblem(pixels * 4, `one image (${p.height}x${p.width}x${p.channels} = ${pixels} values, float32)`)
  if (image !== undefined) {
    const dims = [["height", p.height], ["width", p.width], ["channels", p.channels]] as const
    const key = dims.reduce((a, b) => (b[1] > a[1] ? b : a))[0]
    return { key, message: image }
  }
  for (const key of ["trainSize", "testSize"] as const) {
    const problem = heapProblem(p[key] * pixels * 4, `a split of ${p[key]} images of ${pixels} values (float32)`)
    if (problem !== undefined) return { key, message: problem }
  }
  return undefined
}

/**
 * The class prototypes, each height*width*channels NHWC values in [0, 1].
 *
 * @internal
 */
export const prototypes = (p: SyntheticParams): ReadonlyArray<Float32Array> => {
  const out: Array<Float32Array> = []
  const size = Math.max(p.height, p.width)
  for (let k = 0; k < p.classes; k++) {
    const rng = stream(deriveSeed(p.seed, "synthetic", "prototype", k))
    const theta = (Math.PI * k) / p.classes
    const freq = 2 + (k % 2)
    const phases = Array.from({ length: p.channels }, () => rng.next() * 2 * Math.PI)
    const cy = (0.2 + 0.6 * rng.next()) * p.height, cx = (0.2 + 0.6 * rng.next()) * p.width
    const sigma = 0.2 * size
    const sign = rng.next() < 0.5 ? -1 : 1
    const proto = new Float32Array(p.height * p.width * p.channels)
    for (let y = 0; y < p.height; y++) {
      for (let x = 0; x < p.width; x++) {
        const t = (2 * Math.PI * freq * (x * Math.cos(theta) + y * Math.sin(theta))) / size
        const blob = Math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
        for (let c = 0; c < p.channels; c++) {
          const v = 0.5 + 0.25 * Math.sin(t + phases[c]!) + 0.3 * sign * blob
          proto[(y * p.width + x) * p.channels + c] = Math.min(1, Math.max(0, v))
        }
      }
    }
    out.push(proto)
  }
  return out
}

/**
 * One split of `count` images; labels cycle 0, 1, ..., classes-1 so every prefix is balanced.
 *
 * @internal
 */
export const syntheticSplit = (
  p: SyntheticParams,
  protos: ReadonlyArray<Float32Array>,
  count: number,
  name: string
) => {
  const rng = stream(deriveSeed(p.seed, "synthetic", name))
  const pixels = p.height * p.width * p.channels
  const images = new Float32Array(count * pixels)
  const labels = new Int32Array(count)
  let spare: number | undefined
  const gaussian = (): number => {
    if (spare !== undefined) {
      const s = spare
      spare = undefined
      return s
    }
    const u = 1 - rng.next(), v = rng.next()
    const r = Math.sqrt(-2 * Math.log(u))
    spare = r * Math.sin(2 * Math.PI * v)
    return r * Math.cos(2 * Math.PI * v)
  }
  for (let i = 0; i < count; i++) {
    const label = i % p.classes
    labels[i] = label
    const proto = protos[label]!
    const contrast = 0.7 + 0.6 * rng.next()
    const offset = i * pixels
    for (let j = 0; j < pixels; j++) {
      const v = 0.5 + contrast * (proto[j]! - 0.5) + p.noise * gaussian()
      images[offset + j] = v < 0 ? 0 : v > 1 ? 1 : v
    }
  }
  return { images, labels, count, height: p.height, width: p.width, channels: p.channels, classes: p.classes }
}
