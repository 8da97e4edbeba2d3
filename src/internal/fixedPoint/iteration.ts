/**
 * The loop every fixed-point solver shares: flattening, residuals, stopping, best/last selection, per-sample
 * freezing, trajectory, divergence detection. A method (Picard, Anderson, Broyden) only says how to propose the
 * next iterate from its memory.
 *
 * Everything is plain synchronous tfjs: one `tf.tidy` per step, the tape off, tensors that live across steps are
 * returned from the step's tidy (iterates) or `tf.keep`-ed by the method (its memory) and disposed explicitly.
 *
 * @internal
 */
import * as tf from "@tensorflow/tfjs"
import { untaped } from "../../Tensor.ts"

/** The resolved options of one solve (plain values; the Schema classes live in FixedPoint.ts). */
export interface CoreOptions {
  readonly maxIter: number
  readonly tol: number
  readonly stopMode: "abs" | "rel"
  readonly returnMode: "best" | "last"
  readonly stopping: "batch" | "sample"
  readonly recordTrajectory: boolean
  readonly returnState: boolean
}

/** One iterate, flattened to [B, N]: z, f(z) and g = f(z) - z. */
export interface Iterate {
  readonly z: tf.Tensor
  readonly fz: tf.Tensor
  readonly g: tf.Tensor
}

/** What a method's proposal step returns. */
export type Proposal = tf.Tensor | { readonly _tag: "Singular"; readonly message: string }

/**
 * The per-solve memory of a method. `propose` and `accept` run inside the step's tidy: tensors they keep across
 * steps must be `tf.keep`-ed and disposed by the stepper.
 */
export interface Stepper {
  /** `active`: samples still moving (undefined: all); proposals for the others are discarded */
  readonly propose: (current: Iterate, step: number, active: Uint8Array | undefined) => Proposal
  /**
   * Optional: per-sample [||g||^2 (B), ||f(z)||^2 (B)] of a new iterate, when the method computes them anyway
   * (Anderson's Gram row contains ||g||^2); called before `accept`, one host transfer per step.
   */
  readonly measure?: (next: Iterate) => Float32Array
  /** records the new iterate; `active` is the per-sample mask of samples that moved (undefined: all) */
  readonly accept: (next: Iterate, step: number, active: Uint8Array | undefined) => void
  /** fresh (non-kept) tensors of the resumable state, created inside the current tidy */
  readonly exportState?: () => ExportedState
  readonly dispose: () => void
}

/** A resumable state as tensors plus a wrapper that builds the public value once the tensors left the tidy. */
export interface ExportedState {
  readonly tensors: Record<string, tf.Tensor>
  readonly build: (tensors: Record<string, tf.Tensor>) => unknown
}

/** A solver method: how to start its memory from the first iterate (and an optional imported state). */
export interface Method {
  readonly name: string
  readonly start: (first: Iterate, imported: unknown, reducer: Reducer) => Stepper
}

/**
 * Statistics of a solve (FixedPoint's public SolveStats). Per-sample arrays have length B; traces have one entry
 * per step.
 * - `steps`: iterates computed after z0 (each costs one f evaluation, plus one for f(z0)).
 * - `stepsPerSample`: with `stopping: "sample"`, the step at which each sample froze; with "batch", `steps`.
 * - `absResidual` / `relResidual`: ||f(z) - z|| and ||f(z) - z|| / ||f(z)|| of the returned iterate, per sample.
 * - `converged`: 1 where the returned iterate meets `tol` on its own (per-sample criterion).
 * - `absTrace` / `relTrace`: per-sample residuals of z_1..z_n.
 */
export interface CoreStats {
  readonly solver: string
  readonly status: "converged" | "maxIter" | "diverged" | "singular"
  readonly steps: number
  readonly stepsPerSample: Int32Array
  readonly absResidual: Float32Array
  readonly relResidual: Float32Array
  readonly converged: Uint8Array
  readonly absTrace: ReadonlyArray<Float32Array>
  readonly relTrace: ReadonlyArray<Float32Array>
  /** the batch-global residuals (abs, rel) of each step, as the paper's code computes them */
  readonly globalAbsTrace: ReadonlyArray<number>
  readonly globalRelTrace: ReadonlyArray<number>
  /** index (1-based step) of the returned iterate; 0 means z0 was returned */
  readonly returnedStep: number
  /** the step that failed (non-finite or singular), when status says so */
  readonly failedStep?: number
  readonly message?: string
}

/** The raw result of the core loop. */
export interface CoreResult {
  readonly z: tf.Tensor
  readonly trajectory?: ReadonlyArray<tf.Tensor>
  readonly stats: CoreStats
  readonly state?: unknown
}

/** Small constant in rel = ||g|| / (||f|| + eps), as in locuslab/deq. */
export const REL_EPS = 1e-9

/**
 * Per-sample reductions of [B, N] tensors, as [B, 1] columns. A reduction as `matMul(x, ones[N, 1])` (XNNPACK's
 * gemv) is 2-4x faster on wasm than `tf.sum(x, 1)` or a batched [1, N] x [N, 1] matMul when the operands are not
 * in cache (measured: 0.9 ms vs 2.1 / 3.7 ms for 64 x 25088), and reductions dominate a solver's own cost.
 */
export interface Reducer {
  readonly dot: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor
  readonly norm2: (a: tf.Tensor) => tf.Tensor
}

/** A reducer for rows of length N; `ones` must outlive its uses. */
export const makeReducer = (ones: tf.Tensor): Reducer => ({
  dot: (a, b) => tf.matMul(tf.mul(a, b), ones),
  norm2: (a) => tf.matMul(tf.square(a), ones)
})

const isFiniteAll = (xs: Float32Array | Float64Array): boolean => {
  for (let i = 0; i < xs.length; i++) if (!Number.isFinite(xs[i]!)) return false
  return true
}

interface Residuals {
  readonly abs: Float32Array
  readonly rel: Float32Array
  readonly globalAbs: number
  readonly globalRel: number
  readonly finite: boolean
}

const residuals = (g2f2: Float32Array, B: number): Residuals => {
  const abs = new Float32Array(B)
  const rel = new Float32Array(B)
  let sg = 0
  let sf = 0
  for (let b = 0; b < B; b++) {
    const g2 = g2f2[b]!
    const f2 = g2f2[B + b]!
    sg += g2
    sf += f2
    abs[b] = Math.sqrt(g2)
    rel[b] = Math.sqrt(g2) / (Math.sqrt(f2) + REL_EPS)
  }
  const globalAbs = Math.sqrt(sg)
  return {
    abs,
    rel,
    globalAbs,
    globalRel: globalAbs / (Math.sqrt(sf) + REL_EPS),
    finite: isFiniteAll(g2f2)
  }
}

/** Reads ||g||^2 and ||f(z)||^2 per sample in one transfer: [2B]. */
const readNorms = (r: Reducer, it: Iterate): Float32Array =>
  tf.tidy(() => tf.concat([r.norm2(it.g), r.norm2(it.fz)])).dataSync() as Float32Array

const disposeIterate = (it: Iterate | undefined): void => {
  if (it === undefined) return
  it.z.dispose()
  it.fz.dispose()
  it.g.dispose()
}

/**
 * A new handle on the same data (reshape to the same shape bumps a refcount). `tf.clone` copies the whole buffer
 * on wasm (its Identity kernel), which matters for [B, N] states copied every step.
 */
export const share = <T extends tf.Tensor>(t: T): T => tf.reshape(t, t.shape) as T

/**
 * Runs a method from z0 (any shape [B, ...]). The caller owns the returned tensors; they are ordinary tensors of
 * the caller's tidy scope (nothing stays kept).
 */
export const runCore = (
  method: Method,
  f: (z: tf.Tensor) => tf.Tensor,
  z0: tf.Tensor,
  options: CoreOptions,
  imported?: unknown
): CoreResult =>
  untaped(() => {
    const shape = z0.shape
    const B = shape[0] ?? 1
    const N = B === 0 ? 0 : z0.size / B
    const flatF = (z: tf.Tensor): tf.Tensor => {
      const out = f(tf.reshape(z, shape))
      if (out.size !== z0.size) {
        throw new Error(`fixed-point map changed the state size: input ${shape}, output ${out.shape}`)
      }
      // reshape always gives a new handle, so f may return its input (or z) without aliasing the iterate
      return tf.reshape(out, [B, N])
    }
    const perSample = options.stopping === "sample"
    const crit = (r: Residuals, b: number) => (options.stopMode === "abs" ? r.abs[b]! : r.rel[b]!)
    const globalCrit = (r: Residuals) => (options.stopMode === "abs" ? r.globalAbs : r.globalRel)

    let stats: CoreStats | undefined
    let exported: ExportedState | undefined
    const tensors = tf.tidy(() => {
      let stepper: Stepper | undefined
      let current: Iterate = undefined as unknown as Iterate
      // `best` owns its own handle (`share` bumps a refcount, so keeping it costs no copy)
      let best: tf.Tensor = undefined as unknown as tf.Tensor
      const trajectory: Array<tf.Tensor> = []
      try {
        const reducer = makeReducer(tf.ones([N, 1]))
        current = tf.tidy(() => {
          const z = tf.reshape(z0, [B, N]) as tf.Tensor
          const fz = flatF(z)
          return { z, fz, g: tf.sub(fz, z) }
        })
        let res = residuals(readNorms(reducer, current), B)
        const absTrace: Array<Float32Array> = []
        const relTrace: Array<Float32Array> = []
        const gAbs: Array<number> = []
        const gRel: Array<number> = []
        const stepsPerSample = new Int32Array(B)
        const active = new Uint8Array(B).fill(1)
        // selection: z0 is only a fallback (as in locuslab/deq), any finite step replaces it
        best = share(current.z)
        let bestRes = res
        let bestStep = 0
        let bestGlobal = Infinity
        const bestPerSample = new Float64Array(B).fill(Infinity)
        const bestAbs = Float32Array.from(res.abs)
        const bestRel = Float32Array.from(res.rel)
        let status: CoreStats["status"] = "maxIter"
        let steps = 0
        let failedStep: number | undefined
        let message: string | undefined

        if (!res.finite) {
          status = "diverged"
          failedStep = 0
          message = "f(z0) is not finite"
        } else {
          stepper = method.start(current, imported, reducer)
          for (let k = 1; k <= options.maxIter; k++) {
            const cur: Iterate = current
            const frozen = perSample && active.some((a) => a === 0)
            const mask = frozen ? Uint8Array.from(active) : undefined
            const next: Iterate | Exclude<Proposal, tf.Tensor> = tf.tidy((): any => {
              const p = stepper!.propose(cur, k, mask)
              if (!(p instanceof tf.Tensor)) return p
              let z = p
              let fz: tf.Tensor
              if (mask !== undefined) {
                // frozen samples keep z and f(z) bit for bit: x + 0 * d == x for finite d. (A broadcast
                // tf.where is ~12x slower on wasm than this arithmetic: 67 vs 5.6 ms on 64 x 25088.)
                const m = tf.tensor2d(Float32Array.from(mask), [B, 1])
                z = tf.add(cur.z, tf.mul(m, tf.sub(p, cur.z)))
                fz = tf.add(cur.fz, tf.mul(m, tf.sub(flatF(z), cur.fz)))
              } else {
                fz = flatF(z)
              }
              const it: Iterate = { z, fz, g: tf.sub(fz, z) }
              return it
            })
            if (!("z" in next)) {
              status = "singular"
              failedStep = k
              message = next.message
              break
            }
            const r = residuals(stepper.measure !== undefined ? stepper.measure(next) : readNorms(reducer, next), B)
            if (!r.finite) {
              disposeIterate(next)
              status = "diverged"
              failedStep = k
              message = `non-finite residual at step ${k}`
              break
            }
            tf.tidy(() => stepper!.accept(next, k, mask))
            disposeIterate(current)
            current = next
            res = r
            steps = k
            absTrace.push(r.abs)
            relTrace.push(r.rel)
            gAbs.push(r.globalAbs)
            gRel.push(r.globalRel)
            if (options.recordTrajectory) trajectory.push(tf.reshape(next.z, shape))
            for (let b = 0; b < B; b++) if (active[b] === 1) stepsPerSample[b] = k

            if (perSample) {
              // per-sample best: a where over the samples that improved
              const improved = new Uint8Array(B)
              let anyImproved = false
              let allImproved = true
              for (let b = 0; b < B; b++) {
                const c = crit(r, b)
                if (c < bestPerSample[b]!) {
                  improved[b] = 1
                  anyImproved = true
                  bestPerSample[b] = c
                  bestAbs[b] = r.abs[b]!
                  bestRel[b] = r.rel[b]!
                } else allImproved = false
              }
              if (allImproved) {
                best.dispose()
                best = share(next.z)
                bestStep = k
              } else if (anyImproved) {
                const old = best
                best = tf.tidy(() => {
                  const m = tf.tensor2d(Float32Array.from(improved), [B, 1])
                  return tf.add(old, tf.mul(m, tf.sub(next.z, old)))
                })
                old.dispose()
                bestStep = k
              }
              let all = true
              for (let b = 0; b < B; b++) {
                if (crit(r, b) <= options.tol) active[b] = 0
                else all = false
              }
              if (all) {
                status = "converged"
                break
              }
            } else {
              const c = globalCrit(r)
              if (c < bestGlobal) {
                bestGlobal = c
                best.dispose()
                best = share(next.z)
                bestRes = r
                bestStep = k
              }
              if (c <= options.tol) {
                status = "converged"
                break
              }
            }
          }
        }

        // which iterate is returned (the reshape below is its own handle: current and best are freed in finally)
        const useLast = options.returnMode === "last" && status !== "diverged"
        const z = useLast ? current.z : best
        const outAbs = useLast ? res.abs : perSample ? bestAbs : bestRes.abs
        const outRel = useLast ? res.rel : perSample ? bestRel : bestRes.rel
        const returnedStep = useLast ? steps : bestStep
        const converged = new Uint8Array(B)
        for (let b = 0; b < B; b++) {
          const c = options.stopMode === "abs" ? outAbs[b]! : outRel[b]!
          converged[b] = c <= options.tol ? 1 : 0
        }
        if (!perSample) stepsPerSample.fill(steps)
        stats = {
          solver: method.name,
          status,
          steps,
          stepsPerSample,
          absResidual: outAbs,
          relResidual: outRel,
          converged,
          absTrace,
          relTrace,
          globalAbsTrace: gAbs,
          globalRelTrace: gRel,
          returnedStep,
          ...(failedStep !== undefined ? { failedStep } : {}),
          ...(message !== undefined ? { message } : {})
        }
        if (options.returnState && stepper?.exportState !== undefined) exported = stepper.exportState()
        return {
          z: tf.reshape(z, shape),
          trajectory,
          state: exported?.tensors ?? {}
        }
      } finally {
        stepper?.dispose()
        disposeIterate(current as Iterate | undefined)
        ;(best as tf.Tensor | undefined)?.dispose()
      }
    })
    return {
      z: tensors.z,
      ...(options.recordTrajectory ? { trajectory: tensors.trajectory } : {}),
      stats: stats!,
      ...(exported !== undefined ? { state: exported.build(tensors.state) } : {})
    }
  })
