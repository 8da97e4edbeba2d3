/**
 * Anderson acceleration (Type II, as in locuslab/deq and TorchDEQ).
 *
 * Memory: the last n <= m pairs (F_i = f(X_i), G_i = F_i - X_i), each [B, N], in a ring of separate tensors
 * (no concat: on wasm rebuilding a stacked [B, m, N] buffer each step costs more than the whole update).
 * Per sample, alpha solves  min ||sum_i alpha_i G_i||^2 + r ||alpha||^2  s.t.  sum_i alpha_i = 1,
 * i.e. the bordered system [[0, 1^T], [1, G G^T + r I]] [mu; alpha] = [1; 0], with the ridge r = lambda *
 * max_i ||G_i||^2 relative to the Gram scale. The Gram matrix lives on the
 * host (float64) and gains one row per step (n dot products on the device, one transfer); the small systems are
 * solved in JS. The next iterate is X = sum_i alpha_i (F_i - (1 - beta) G_i); the bracket is stored once per pair
 * (P_i below) so a step costs n scaled adds, not 2n.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import { solveDense } from "./linalg.ts"
import type { Iterate, Method, Reducer, Stepper } from "./iteration.ts"
import { share } from "./iteration.ts"

/** Anderson with memory m, ridge lambda, mixing beta. */
export const andersonMethod = (m: number, lambda: number, beta: number): Method => ({
  name: "anderson",
  start: (first: Iterate, _imported: unknown, reducer: Reducer): Stepper => {
    const B = first.z.shape[0]!
    // P_i = F_i - (1 - beta) G_i, the mixed point of pair i
    const P: Array<tf.Tensor | undefined> = new Array(m).fill(undefined)
    const G: Array<tf.Tensor | undefined> = new Array(m).fill(undefined)
    // gram[b * m * m + i * m + j] = G_i . G_j for sample b (slots, not ages)
    const gram = new Float64Array(B * m * m)
    let inserted = 0
    // dots of the pending iterate with the slots that survive its insertion, from `measure`
    let pending: { readonly slot: number; readonly dots: Float32Array; readonly others: ReadonlyArray<number> } | undefined

    const occupied = (): Array<number> => {
      const out: Array<number> = []
      for (let i = 0; i < m; i++) if (G[i] !== undefined) out.push(i)
      return out
    }

    /** Dots of `g` with itself and with the slots in `others`, plus ||f||^2: [self (B), f2 (B), others (B each)]. */
    const rowOf = (it: Iterate, others: ReadonlyArray<number>): Float32Array =>
      tf.tidy(() =>
        tf.concat([reducer.norm2(it.g), reducer.norm2(it.fz), ...others.map((j) => reducer.dot(it.g, G[j]!))])
      )
        .dataSync() as Float32Array

    const insert = (it: Iterate, slot: number, dots: Float32Array, others: ReadonlyArray<number>): void => {
      P[slot]?.dispose()
      G[slot]?.dispose()
      P[slot] = tf.keep(beta === 1 ? share(it.fz) : tf.tidy(() => tf.sub(it.fz, tf.mul(it.g, 1 - beta))))
      G[slot] = tf.keep(share(it.g))
      for (let b = 0; b < B; b++) {
        const base = b * m * m
        gram[base + slot * m + slot] = dots[b]!
        others.forEach((j, o) => {
          const v = dots[(2 + o) * B + b]!
          gram[base + slot * m + j] = v
          gram[base + j * m + slot] = v
        })
      }
      inserted++
    }

    {
      const others: Array<number> = []
      insert(first, 0, rowOf(first, others), others)
    }

    return {
      measure: (next) => {
        const slot = inserted % m
        const others = occupied().filter((j) => j !== slot)
        const row = rowOf(next, others)
        pending = { slot, dots: row, others }
        return row.subarray(0, 2 * B)
      },
      accept: (next) => {
        const p = pending!
        pending = undefined
        insert(next, p.slot, p.dots, p.others)
      },
      propose: (_cur, _step, active) => {
        const slots = occupied()
        const n = slots.length
        if (n === 1) {
          // one pair (the current iterate): alpha = [1], the damped Picard step, already stored as its P
          return share(P[slots[0]!]!)
        }
        const alpha = new Float32Array(n * B) // column-major by slot: alpha[i * B + b]
        const size = n + 1
        for (let b = 0; b < B; b++) {
          const H = new Float64Array(size * size)
          const base = b * m * m
          // the ridge is relative to the Gram scale: an absolute lambda (TorchDEQ) dominates once residuals are
          // small and stalls the iteration near tol (measured: rel residual stuck at 3e-4 with lambda = 1e-4)
          let scale = 0
          for (let i = 0; i < n; i++) scale = Math.max(scale, gram[base + slots[i]! * m + slots[i]!]!)
          const ridge = lambda * scale
          for (let i = 0; i < n; i++) {
            H[i + 1] = 1
            H[(i + 1) * size] = 1
            for (let j = 0; j < n; j++) {
              H[(i + 1) * size + j + 1] = gram[base + slots[i]! * m + slots[j]!]! + (i === j ? ridge : 0)
            }
          }
          const rhs = new Float64Array(size)
          rhs[0] = 1
          const x = solveDense(H, rhs, size)
          if (x === undefined) {
            if (active !== undefined && active[b] === 0) {
              // a frozen sample's proposal is discarded anyway: take the newest f(z)
              alpha[slots.indexOf((inserted - 1) % m) * B + b] = 1
              continue
            }
            return {
              _tag: "Singular",
              message: `singular Anderson system for sample ${b} (n = ${n}, lambda = ${lambda}); raise lambda`
            }
          }
          for (let i = 0; i < n; i++) alpha[i * B + b] = x[i + 1]!
        }
        const terms: Array<tf.Tensor> = []
        for (let i = 0; i < n; i++) {
          const a = tf.tensor2d(alpha.subarray(i * B, (i + 1) * B), [B, 1])
          terms.push(tf.mul(P[slots[i]!]!, a))
        }
        return tf.addN(terms)
      },
      dispose: () => {
        P.forEach((t) => t?.dispose())
        G.forEach((t) => t?.dispose())
      }
    }
  }
})
