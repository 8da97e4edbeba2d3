/**
 * "Bad Broyden" as in locuslab/deq (lib/solvers.py), no line search.
 *
 * The inverse Jacobian of g(z) = f(z) - z is approximated per sample as -I + sum_i u_i v_i^T, stored as
 * U, V of shape [B, k, N] (k <= memory). Step: z <- z - (-I + U^T V) g, so the first step (empty memory) is
 * z <- f(z). After each step the rank-1 pair for (dz, dg) is
 *   v^T = dz^T P,  u = (dz - P dg) / (v^T dg)   with P the memory before the pair (NaN/Inf -> 0).
 * When the memory is full the oldest pair is overwritten. The memory can be exported, resumed from, and lifted
 * to a new map (docs/method.md, "Input entropy reduction").
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import type { BroydenState } from "../../FixedPoint.ts"
import type { Iterate, Method, Reducer, Stepper } from "./iteration.ts"
import { share } from "./iteration.ts"

/** Broyden's resumable memory without its tag and dispose (FixedPoint's public BroydenState, defined there). */
export type BroydenStateData = Omit<BroydenState, "_tag" | "dispose">

const makeState = (data: BroydenStateData): BroydenState => ({
  _tag: "BroydenState",
  ...data,
  dispose: () => {
    data.U.dispose()
    data.V.dispose()
    data.dz.dispose()
    data.dg.dispose()
    data.gLast.dispose()
  }
})

const col = (x: tf.Tensor): tf.Tensor => tf.expandDims(x, 2)

/** (-I + U^T V) x per sample; U, V [B, k, N] or undefined (empty memory), x [B, N]. */
const matvec = (U: tf.Tensor | undefined, V: tf.Tensor | undefined, x: tf.Tensor): tf.Tensor => {
  if (U === undefined || V === undefined) return tf.neg(x)
  const c = tf.matMul(V, col(x)) // [B, k, 1]: v_i . x
  return tf.sub(tf.squeeze(tf.matMul(U, c, true, false), [2]), x)
}

/** x^T (-I + U^T V) per sample, as a [B, N] row. */
const rmatvec = (U: tf.Tensor | undefined, V: tf.Tensor | undefined, x: tf.Tensor): tf.Tensor => {
  if (U === undefined || V === undefined) return tf.neg(x)
  const c = tf.matMul(U, col(x)) // [B, k, 1]: u_i . x
  return tf.sub(tf.squeeze(tf.matMul(V, c, true, false), [2]), x)
}

const zeroNonFinite = (x: tf.Tensor): tf.Tensor => tf.where(tf.isFinite(x), x, tf.zerosLike(x))

/** The rank-1 pair (u, v) for the secant (dz, dg) given the memory P = (U, V) without that pair. */
const pair = (
  U: tf.Tensor | undefined,
  V: tf.Tensor | undefined,
  dz: tf.Tensor,
  dg: tf.Tensor
): { u: tf.Tensor; v: tf.Tensor } => {
  const v = rmatvec(U, V, dz)
  const denom = tf.sum(tf.mul(v, dg), 1, true) // [B, 1]
  const u = tf.div(tf.sub(dz, matvec(U, V, dg)), denom)
  return { u: zeroNonFinite(u), v: zeroNonFinite(v) }
}

/** Memory with slot `i` removed (undefined when nothing is left). */
const without = (X: tf.Tensor, i: number): tf.Tensor | undefined => {
  const k = X.shape[1]!
  if (k <= 1) return undefined
  const parts: Array<tf.Tensor> = []
  if (i > 0) parts.push(tf.slice(X, [0, 0, 0], [-1, i, -1]))
  if (i < k - 1) parts.push(tf.slice(X, [0, i + 1, 0], [-1, k - i - 1, -1]))
  return parts.length === 1 ? parts[0]! : (tf.concat(parts, 1))
}

/** Memory with slot `i` set to `x` (appended when i === k). */
const withSlot = (X: tf.Tensor | undefined, i: number, x: tf.Tensor): tf.Tensor => {
  const row = tf.expandDims(x, 1)
  if (X === undefined) return row
  const k = X.shape[1]!
  if (i === k) return tf.concat([X, row], 1)
  const parts: Array<tf.Tensor> = []
  if (i > 0) parts.push(tf.slice(X, [0, 0, 0], [-1, i, -1]))
  parts.push(row)
  if (i < k - 1) parts.push(tf.slice(X, [0, i + 1, 0], [-1, k - i - 1, -1]))
  return tf.concat(parts, 1)
}

const isState = (u: unknown): u is BroydenState =>
  typeof u === "object" && u !== null && (u as { _tag?: unknown })._tag === "BroydenState"

/** sum_i xs[i] * cs[i] (cs are [B, 1] columns), or undefined for an empty sum. */
const combine = (xs: ReadonlyArray<tf.Tensor>, cs: ReadonlyArray<tf.Tensor>): tf.Tensor | undefined =>
  xs.length === 0 ? undefined : xs.length === 1 ? tf.mul(xs[0]!, cs[0]!) : tf.addN(xs.map((x, i) => tf.mul(x, cs[i]!)))

const minus = (a: tf.Tensor, b: tf.Tensor | undefined): tf.Tensor => (b === undefined ? a : tf.sub(a, b))

/**
 * The pairs of an imported state as kept [B, N] tensors, its step counter and last slot (an empty memory when
 * `imported` is not a BroydenState). A state from a solver with a larger memory keeps its newest pairs.
 */
const importPairs = (imported: unknown, B: number, N: number, memory: number) => {
  const U: Array<tf.Tensor> = []
  const V: Array<tf.Tensor> = []
  if (!isState(imported)) return { U, V, writes: 0, last: -1 }
  if (imported.U.shape[0] !== B || imported.U.shape[2] !== N) {
    throw new Error(`Broyden state of shape ${imported.shape} does not fit z0 of shape [${B}, ${N}] (flattened)`)
  }
  const k = imported.U.shape[1]!
  const order = Array.from({ length: k }, (_, j) => (imported.last + 1 + j) % k)
  const keep = order.slice(Math.max(0, k - memory))
  const us = tf.unstack(imported.U, 1)
  const vs = tf.unstack(imported.V, 1)
  const keepAll = keep.length === k
  const idx = keepAll ? Array.from({ length: k }, (_, j) => j) : keep
  for (const j of idx) {
    U.push(tf.keep(us[j]!))
    V.push(tf.keep(vs[j]!))
  }
  us.forEach((t) => { if (!U.includes(t)) t.dispose() })
  vs.forEach((t) => { if (!V.includes(t)) t.dispose() })
  return { U, V, writes: keepAll ? imported.steps : keep.length, last: keepAll ? imported.last : keep.length - 1 }
}

/**
 * Broyden with at most `memory` rank-1 pairs.
 *
 * The pairs are kept as separate [B, N] tensors (appending to a stacked buffer would copy the whole memory each
 * step). With c_i = v_i . g_old (from the step), d_i = v_i . g_new, and dz = g_old - sum_i u_i c_i, the update
 * algebra collapses to 2k + 2 dot products per step instead of 3k:
 *   q = g_new - sum_{i in P} u_i d_i,   dz - P dg = q - [full] u_s c_s,   next step = q - u_new (v_new . g_new).
 */
export const broydenMethod = (memory: number): Method => ({
  name: "broyden",
  start: (first: Iterate, imported: unknown, reducer: Reducer): Stepper => {
    // per-sample dots as [B, 1] columns: they stay on the device and only scale other tensors
    const dotCol = reducer.dot
    const [B, N] = first.z.shape as [number, number]
    // slot i holds u_i, v_i ([B, N]) and c_i = v_i . g at the current iterate ([B, 1])
    const resumed = importPairs(imported, B, N, memory)
    const U = resumed.U, V = resumed.V
    let C: Array<tf.Tensor> | undefined
    let writes = resumed.writes
    let last = resumed.last
    let prevZ = tf.keep(share(first.z))
    let prevG = tf.keep(share(first.g))
    let dz: tf.Tensor | undefined
    let dg: tf.Tensor | undefined
    let nextUpdate: tf.Tensor | undefined
    const replace = <T extends tf.Tensor | undefined>(old: T, next: T): T => {
      if (old !== next) old?.dispose()
      if (next !== undefined) tf.keep(next)
      return next
    }
    return {
      propose: (cur) => {
        if (nextUpdate !== undefined) return tf.add(cur.z, nextUpdate)
        // first step (or first after an import): c_i from scratch
        C?.forEach((c) => c.dispose())
        C = V.map((v) => tf.keep(dotCol(v, cur.g)))
        // with empty memory the step is z <- f(z) exactly
        if (U.length === 0) return share(cur.fz)
        return tf.add(cur.z, minus(cur.g, combine(U, C)))
      },
      accept: (next) => {
        const c = C!
        const sdz = tf.sub(next.z, prevZ)
        const sdg = tf.sub(next.g, prevG)
        const k = U.length
        const full = k >= memory
        const slot = full ? writes % memory : k
        const P = Array.from({ length: k }, (_, i) => i).filter((i) => !(full && i === slot))
        const d = V.map((v) => dotCol(v, next.g))
        const q = minus(next.g, combine(P.map((i) => U[i]!), P.map((i) => d[i]!)))
        const numerator = full ? tf.sub(q, tf.mul(U[slot]!, c[slot]!)) : q
        const e = P.map((i) => dotCol(U[i]!, sdz))
        const pv = combine(P.map((i) => V[i]!), e)
        const v = pv === undefined ? tf.neg(sdz) : tf.sub(pv, sdz)
        const denom = dotCol(v, sdg)
        // u = NaN/Inf (v^T dg = 0, e.g. a frozen sample) -> 0, as locuslab/deq does
        const inv = zeroNonFinite(tf.div(1, denom))
        const u = tf.mul(numerator, inv)
        const cNew = dotCol(v, next.g)
        if (full) {
          U[slot]!.dispose()
          V[slot]!.dispose()
          U[slot] = tf.keep(u)
          V[slot] = tf.keep(v)
        } else {
          U.push(tf.keep(u))
          V.push(tf.keep(v))
        }
        const newC = d.map((x) => tf.keep(x))
        if (full) {
          newC[slot]!.dispose()
          newC[slot] = tf.keep(cNew)
        } else newC.push(tf.keep(cNew))
        c.forEach((x) => x.dispose())
        C = newC
        writes++
        last = slot
        nextUpdate = replace(nextUpdate, tf.sub(q, tf.mul(u, cNew)))
        dz = replace(dz, sdz)
        dg = replace(dg, sdg)
        prevZ = replace(prevZ, share(next.z))
        prevG = replace(prevG, share(next.g))
      },
      exportState: () => ({
        tensors: {
          U: U.length > 0 ? tf.stack(U, 1) : tf.zeros([B, 0, N]),
          V: V.length > 0 ? tf.stack(V, 1) : tf.zeros([B, 0, N]),
          dz: dz !== undefined ? share(dz) : tf.zeros([B, N]),
          dg: dg !== undefined ? share(dg) : tf.zeros([B, N]),
          gLast: share(prevG)
        },
        build: (t) =>
          makeState({
            U: t["U"]!,
            V: t["V"]!,
            dz: t["dz"]!,
            dg: t["dg"]!,
            gLast: t["gLast"]!,
            steps: writes,
            capacity: memory,
            last,
            shape: [B, N]
          })
      }),
      dispose: () => {
        U.forEach((t) => t.dispose())
        V.forEach((t) => t.dispose())
        C?.forEach((t) => t.dispose())
        nextUpdate?.dispose()
        dz?.dispose()
        dg?.dispose()
        prevZ.dispose()
        prevG.dispose()
      }
    }
  }
})

/**
 * Lifts a Broyden memory to a new map: dg' = dg + gNew - gLast, then the last pair is recomputed from (dz, dg') against
 * the memory without it (docs/method.md, "Input entropy reduction"). Returns a new state; the input is left untouched.
 */
export const liftBroydenState = (state: BroydenStateData, gNew: tf.Tensor): BroydenState => {
  const k = state.U.shape[1]!
  const [B, N] = [state.U.shape[0]!, state.U.shape[2]!]
  const data = tf.tidy(() => {
    const g = tf.reshape(gNew, [B, N])
    const dg = tf.add(state.dg, tf.sub(g, state.gLast))
    if (k === 0 || state.last < 0) {
      return { U: share(state.U), V: share(state.V), dz: share(state.dz), dg, gLast: share(g) }
    }
    const { u, v } = pair(without(state.U, state.last), without(state.V, state.last), state.dz, dg)
    return {
      U: withSlot(state.U, state.last, u),
      V: withSlot(state.V, state.last, v),
      dz: share(state.dz),
      dg,
      gLast: share(g)
    }
  })
  return makeState({
    ...data,
    steps: state.steps,
    capacity: state.capacity,
    last: state.last,
    shape: state.shape
  })
}
