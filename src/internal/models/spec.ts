/**
 * Shared shapes of the model internals: parameter specifications (what `Models.build` turns into scoped
 * variables) and the function part of a built model.
 *
 * @internal
 */
import type * as tf from "@tensorflow/tfjs"

// the shapes are public (src/Models.ts defines them); the model files import them from here
export type { ModelCore, ParamSpec } from "../../Models.ts"

/**
 * Looks a parameter up by name; a missing one is a programming error in the model file.
 */
export const lookup = (params: ReadonlyMap<string, tf.Variable>) => (name: string): tf.Variable => {
  const v = params.get(name)
  if (v === undefined) throw new Error(`effect-deq internal: parameter "${name}" was not built`)
  return v
}
