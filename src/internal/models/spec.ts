/**
 * Shared shapes of the model internals: parameter specifications (what `Models.build` turns into scoped
 * variables) and the function part of a built model.
 *
 * @internal
 */
import type * as tf from "@tensorflow/tfjs"
import type { DeqModel } from "../../Dynamics.ts"

/**
 * One parameter to create: a stable name (checkpoint key) and its seeded initial value.
 */
export interface ParamSpec {
  readonly name: string
  readonly shape: ReadonlyArray<number>
  readonly init: () => tf.Tensor
}

/**
 * The functions of a model, given its variables by name.
 */
export type ModelCore = Omit<DeqModel, "params" | "parameterCount"> & {
  /** per-sample shape of the state z */
  readonly stateShape: ReadonlyArray<number>
  /** one line per part, for `describe` */
  readonly summary: string
}

/**
 * Looks a parameter up by name; a missing one is a programming error in the model file.
 */
export const lookup = (params: ReadonlyMap<string, tf.Variable>) => (name: string): tf.Variable => {
  const v = params.get(name)
  if (v === undefined) throw new Error(`effect-deq internal: parameter "${name}" was not built`)
  return v
}
