/**
 * Keyed randomness: the random draws of sample i depend on its key (dataset index), never on its batch position.
 * Plain synchronous tfjs, meant to run inside `tf.tidy`.
 *
 * @internal
 */
import { tf, type Stream } from "../../Tensor.ts"
import { type Env, streamOf } from "./run.ts"

/** A seeded stream per row: the randomness of row i depends on its key, never on its position in the batch. */
export const keyedStreams = (env: Env, ...path: ReadonlyArray<string | number>): Array<Stream> =>
  env.keys.map((key) => streamOf(env, ...path, "key", key))

/** A standard normal draw (Box-Muller). */
export const normal = (s: Stream): number => {
  const u = Math.max(s.next(), 1e-12)
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * s.next())
}

/**
 * Keyed random noise of the shape of x: `"uniform"` in [-1, 1] per coordinate, `"normal"` N(0, 1).
 */
export const keyedNoise = (
  env: Env,
  shape: ReadonlyArray<number>,
  kind: "uniform" | "normal",
  ...path: ReadonlyArray<string | number>
): tf.Tensor4D => {
  const b = shape[0]!
  const d = shape.slice(1).reduce((a, n) => a * n, 1)
  const out = new Float32Array(b * d)
  const streams = keyedStreams(env, ...path)
  for (let i = 0; i < b; i++) {
    const s = streams[i]!
    for (let j = 0; j < d; j++) out[i * d + j] = kind === "uniform" ? 2 * s.next() - 1 : normal(s)
  }
  return tf.tensor4d(out, shape as [number, number, number, number])
}

