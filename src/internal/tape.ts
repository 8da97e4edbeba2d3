/**
 * Tape control for tfjs 4.22 (private engine state; tfjs is pinned).
 *
 * tfjs records a tape node for every kernel while a gradient scope is open (`gradientDepth > 0`), and a nested
 * `tf.grad` clears `state.activeTape` when it finishes, which crashes the outer backward pass (stack.md).
 * `noGrad` saves and restores both.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"

interface EngineState {
  gradientDepth: number
  activeTape: unknown
}

const state = (): EngineState => (tf.engine() as unknown as { state: EngineState }).state

/**
 * Runs `f` with the tape off (like `torch.no_grad`): nothing it computes is recorded or saved for a backward pass,
 * so a solver's memory does not grow with its iterations even when called inside `tf.grad`.
 */
export const noGrad = <A>(f: () => A): A => {
  const s = state()
  const depth = s.gradientDepth
  const tape = s.activeTape
  s.gradientDepth = 0
  try {
    return f()
  } finally {
    s.gradientDepth = depth
    s.activeTape = tape
  }
}
