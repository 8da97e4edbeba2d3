/**
 * Gradients through an equilibrium: implicit (IFT hook), phantom (damped unroll from z*) and plain unrolling.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { CoreOptions, CoreStats, Method } from "./iteration.ts"
import { runCore, share } from "./iteration.ts"
import { untaped } from "../../Tensor.ts"

/** The parts of a fixed-point map the backward pass needs (structurally the public FixedPointMap). */
export interface MapLike {
  (z: tf.Tensor): tf.Tensor
  readonly linearize?: (z: tf.Tensor) => { readonly vjp: (v: tf.Tensor) => tf.Tensor; readonly dispose: () => void }
}

/** Settings of the implicit backward solve. */
export interface ImplicitSettings {
  readonly method: Method
  readonly options: CoreOptions
  readonly onStats?: (stats: CoreStats) => void
}

/** Broyden's memory in the backward solve when none is given: the Broyden solver's own default. */
export const defaultBackwardMemory = 30

/** A copy of `z` that is not connected to any tape (tfjs has no stopGradient op). */
export const detach = (z: tf.Tensor): tf.Tensor => untaped(() => share(z))

/**
 * Solves g = v + J^T g (the adjoint fixed point) with `vjp(u) = J^T u`, and returns g.
 */
export const adjointSolve = (vjp: (u: tf.Tensor) => tf.Tensor, v: tf.Tensor, settings: ImplicitSettings): tf.Tensor =>
  untaped(() => {
    const h = (g: tf.Tensor): tf.Tensor => tf.add(v, vjp(g))
    const result = runCore(settings.method, h, v, settings.options)
    settings.onStats?.(result.stats)
    return result.z
  })

// ---------------------------------------------------------------------------------------------------------------
// VJP by tape replay (tfjs 4.22 engine internals; tfjs is pinned)
// ---------------------------------------------------------------------------------------------------------------

interface TapeNode {
  readonly kernelName: string
  readonly inputs: Record<string, tf.Tensor>
  readonly outputs: Array<tf.Tensor>
  readonly gradient?: (dys: Array<tf.Tensor | null>) => Record<string, () => tf.Tensor>
  readonly saved?: ReadonlyArray<{ dispose: () => void }>
}

interface EngineInternals {
  readonly state: { activeTape: Array<TapeNode> | null; gradientDepth: number; kernelDepth: number }
}

const engine = (): EngineInternals => tf.engine() as unknown as EngineInternals

const tapeOn = (): boolean => {
  const s = engine().state
  return s.gradientDepth > 0 && s.kernelDepth === 0 && s.activeTape !== null
}

/** The nodes of `nodes` on a path from x to y, each with only its inputs that depend on x. */
const prune = (nodes: ReadonlyArray<TapeNode>, x: tf.Tensor, y: tf.Tensor) => {
  const reach = new Set<number>([x.id])
  const fromX: Array<{ node: TapeNode; inputs: Array<[string, tf.Tensor]> }> = []
  for (const node of nodes) {
    const inputs = Object.entries(node.inputs).filter(([, t]) => reach.has(t.id))
    if (inputs.length === 0) continue
    fromX.push({ node, inputs })
    node.outputs.forEach((o) => reach.add(o.id))
  }
  const need = new Set<number>([y.id])
  const kept: Array<{ node: TapeNode; inputs: Array<[string, tf.Tensor]> }> = []
  for (let i = fromX.length - 1; i >= 0; i--) {
    const entry = fromX[i]!
    if (!entry.node.outputs.some((o) => need.has(o.id))) continue
    kept.push(entry)
    entry.inputs.forEach(([, t]) => need.add(t.id))
  }
  return kept // in reverse (backprop) order
}

/**
 * Backpropagates `dy` from y to x through recorded nodes, reusing the tensors the forward pass saved: a VJP
 * without re-running f, and without touching tensors f closed over (they may be gone by the backward pass).
 */
const replay = (kept: ReturnType<typeof prune>, x: tf.Tensor, y: tf.Tensor) => (dy: tf.Tensor): tf.Tensor => {
  const grads = new Map<number, tf.Tensor>([[y.id, dy]])
  for (const { node, inputs } of kept) {
    const dys = node.outputs.map((o) => grads.get(o.id) ?? null)
    if (dys.every((d) => d === null)) continue
    if (node.gradient === undefined) {
      throw new Error(`implicit backward: no gradient registered for kernel ${node.kernelName}`)
    }
    const inputGrads = node.gradient(dys)
    for (const [name, input] of inputs) {
      const thunk = inputGrads[name]
      if (thunk === undefined) throw new Error(`implicit backward: ${node.kernelName} has no gradient for ${name}`)
      const g = thunk()
      const prev = grads.get(input.id)
      grads.set(input.id, prev === undefined ? g : tf.add(prev, g))
    }
  }
  return grads.get(x.id) ?? tf.zerosLike(x)
}

/**
 * The IFT hook (TorchDEQ's construction): z1 = f(z*) on the tape, then an identity whose gradient maps dy to the
 * solution of g = dy + J_f(z*)^T g. Backpropagating g through z1 = f(z*) gives the implicit gradient w.r.t. the
 * input and the parameters f closes over. Memory does not depend on the forward solve.
 *
 * J^T is applied by replaying the tape nodes f(z*) just recorded (no forward re-run per adjoint iteration), or by
 * `f.linearize(z*)` when the map offers it; both are prepared now, while the tensors f closes over are alive.
 */
export const attachImplicit = (f: MapLike, zStar: tf.Tensor, settings: ImplicitSettings): tf.Tensor => {
  const zs = detach(zStar)
  if (!tapeOn()) return f(zs)
  const tape = engine().state.activeTape!
  const start = tape.length
  const z1 = f(zs)
  let vjp: (u: tf.Tensor) => tf.Tensor
  if (f.linearize !== undefined) {
    const lin = untaped(() => f.linearize!(zs))
    let alive = true
    const release = () => {
      if (alive) lin.dispose()
      alive = false
    }
    // the engine disposes every tape node's `saved` entries when the outermost backward pass ends: a sentinel
    // node frees the linearization then, even if this gradient is never requested
    tape.push({ kernelName: "effect-deq/Linearization", inputs: {}, outputs: [], saved: [{ dispose: release }] })
    vjp = lin.vjp
  } else {
    vjp = replay(prune(tape.slice(start), zs, z1), zs, z1)
  }
  const hook = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const a = args[0] as tf.Tensor
    return {
      value: share(a),
      gradFunc: (dy: tf.Tensor | Array<tf.Tensor>): tf.Tensor =>
        tf.tidy(() => adjointSolve(vjp, Array.isArray(dy) ? dy[0]! : dy, settings))
    }
  })
  return hook(z1) as tf.Tensor
}

/** Phantom gradient: k damped steps z <- (1 - tau) z + tau f(z) on the tape from the detached z*. */
export const attachPhantom = (f: MapLike, zStar: tf.Tensor, k: number, tau: number): tf.Tensor => {
  let z = detach(zStar)
  for (let i = 0; i < k; i++) {
    const fz = f(z)
    z = tau === 1 ? fz : tf.add(tf.mul(z, 1 - tau), tf.mul(fz, tau))
  }
  return z
}

/** Unrolled: n plain steps z <- f(z) from z0 (zeros when absent), all on the tape. */
export const attachUnrolled = (f: MapLike, zStar: tf.Tensor, n: number, z0: tf.Tensor | undefined): tf.Tensor => {
  let z = z0 ?? tf.zerosLike(zStar)
  for (let i = 0; i < n; i++) z = f(z)
  return n === 0 ? tf.clone(z) : z
}
