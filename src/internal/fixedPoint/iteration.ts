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
import type { SolveStats } from "../../FixedPoint.ts"
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

/** Statistics of a solve: FixedPoint's public SolveStats (defined there), without the fallback's attempts. */
export type CoreStats = Omit<SolveStats, "attempts">

/** Thrown by the loop when the map returns another size than the state; FixedPoint makes it a typed error. */
export class StateSizeError extends Error {
  constructor(readonly input: ReadonlyArray<number>, readonly output: ReadonlyArray<number>) {
    super(`fixed-point map changed the state size: input [${input}], output [${output}]`)
  }
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

/** The map on flattened [B, N] states; it checks that f keeps the state size. */
const flatMap = (f: (z: tf.Tensor) => tf.Tensor, shape: ReadonlyArray<number>, B: number, N: number) =>
(z: tf.Tensor): tf.Tensor => {
  const out = f(tf.reshape(z, shape as Array<number>))
  if (out.size !== B * N) throw new StateSizeError(shape, out.shape)
  // reshape always gives a new handle, so f may return its input (or z) without aliasing the iterate
  return tf.reshape(out, [B, N])
}

/**
 * One proposal of the method, evaluated: the next iterate, or the method's reason to stop. With a `mask`, frozen
 * samples keep z and f(z) bit for bit: x + 0 * d == x for finite d. (A broadcast tf.where is ~12x slower on wasm
 * than this arithmetic: 67 vs 5.6 ms on 64 x 25088.)
 */
const nextIterate = (
  stepper: Stepper,
  flatF: (z: tf.Tensor) => tf.Tensor,
  cur: Iterate,
  k: number,
  mask: Uint8Array | undefined,
  B: number
): Iterate | Exclude<Proposal, tf.Tensor> =>
  tf.tidy((): any => {
    const p = stepper.propose(cur, k, mask)
    if (!(p instanceof tf.Tensor)) return p
    if (mask === undefined) {
      const fz = flatF(p)
      return { z: p, fz, g: tf.sub(fz, p) }
    }
    const m = tf.tensor2d(Float32Array.from(mask), [B, 1])
    const z = tf.add(cur.z, tf.mul(m, tf.sub(p, cur.z)))
    const fz = tf.add(cur.fz, tf.mul(m, tf.sub(flatF(z), cur.fz)))
    return { z, fz, g: tf.sub(fz, z) }
  })

/**
 * Which iterate a solve returns so far, and whether it may stop: the batch-wide best (one residual for the whole
 * batch, the paper's rule) or the per-sample best with per-sample freezing. `best` owns its own handle (`share`
 * bumps a refcount, so keeping it costs no copy); `dispose` frees it.
 */
interface Selection {
  /** samples still moving (all 1 with batch stopping) */
  readonly active: Uint8Array
  /** records step k's iterate; true when the solve has converged */
  readonly offer: (next: Iterate, r: Residuals, k: number) => boolean
  /** the returned z (reshape it for a handle of its own), its per-sample residuals and step */
  readonly result: (last: Iterate, lastRes: Residuals, steps: number, useLast: boolean) => {
    readonly z: tf.Tensor
    readonly abs: Float32Array
    readonly rel: Float32Array
    readonly step: number
  }
  readonly dispose: () => void
}

const makeSelection = (options: CoreOptions, first: Iterate, firstRes: Residuals, B: number): Selection => {
  const perSample = options.stopping === "sample"
  const crit = (r: Residuals, b: number) => (options.stopMode === "abs" ? r.abs[b]! : r.rel[b]!)
  const active = new Uint8Array(B).fill(1)
  // z0 is only a fallback (as in locuslab/deq): any finite step replaces it
  let best = share(first.z)
  let bestStep = 0
  let bestGlobal = Infinity
  let bestRes = firstRes
  const bestPerSample = new Float64Array(B).fill(Infinity)
  const bestAbs = Float32Array.from(firstRes.abs)
  const bestRel = Float32Array.from(firstRes.rel)
  const replace = (z: tf.Tensor, k: number) => {
    best.dispose()
    best = share(z)
    bestStep = k
  }
  const offerBatch = (next: Iterate, r: Residuals, k: number): boolean => {
    const c = options.stopMode === "abs" ? r.globalAbs : r.globalRel
    if (c < bestGlobal) {
      bestGlobal = c
      bestRes = r
      replace(next.z, k)
    }
    return c <= options.tol
  }
  const offerSample = (next: Iterate, r: Residuals, k: number): boolean => {
    // per-sample best: a masked blend over the samples that improved
    const improved = new Uint8Array(B)
    let any = false, all = true
    for (let b = 0; b < B; b++) {
      const c = crit(r, b)
      if (c < bestPerSample[b]!) {
        improved[b] = 1
        any = true
        bestPerSample[b] = c
        bestAbs[b] = r.abs[b]!
        bestRel[b] = r.rel[b]!
      } else all = false
    }
    if (all) replace(next.z, k)
    else if (any) {
      const old = best
      best = tf.tidy(() => {
        const m = tf.tensor2d(Float32Array.from(improved), [B, 1])
        return tf.add(old, tf.mul(m, tf.sub(next.z, old)))
      })
      old.dispose()
      bestStep = k
    }
    let done = true
    for (let b = 0; b < B; b++) {
      if (crit(r, b) <= options.tol) active[b] = 0
      else done = false
    }
    return done
  }
  return {
    active,
    offer: perSample ? offerSample : offerBatch,
    result: (last, lastRes, steps, useLast) =>
      useLast
        ? { z: last.z, abs: lastRes.abs, rel: lastRes.rel, step: steps }
        : {
          z: best,
          abs: perSample ? bestAbs : bestRes.abs,
          rel: perSample ? bestRel : bestRes.rel,
          step: bestStep
        },
    dispose: () => best.dispose()
  }
}

/** The per-step record of a solve: traces and the ending. */
interface Progress {
  readonly absTrace: Array<Float32Array>
  readonly relTrace: Array<Float32Array>
  readonly gAbs: Array<number>
  readonly gRel: Array<number>
  readonly stepsPerSample: Int32Array
  status: CoreStats["status"]
  steps: number
  failedStep?: number
  message?: string
}

const stop = (p: Progress, status: "diverged" | "singular", step: number, message: string): void => {
  p.status = status
  p.failedStep = step
  p.message = message
}

/** The statistics of a finished solve from its progress and the returned iterate's residuals. */
const statsOf = (
  name: string,
  options: CoreOptions,
  p: Progress,
  out: { readonly abs: Float32Array; readonly rel: Float32Array; readonly step: number }
): CoreStats => {
  const converged = new Uint8Array(out.abs.length)
  for (let b = 0; b < converged.length; b++) {
    converged[b] = (options.stopMode === "abs" ? out.abs[b]! : out.rel[b]!) <= options.tol ? 1 : 0
  }
  if (options.stopping !== "sample") p.stepsPerSample.fill(p.steps)
  return {
    solver: name,
    status: p.status,
    steps: p.steps,
    stepsPerSample: p.stepsPerSample,
    absResidual: out.abs,
    relResidual: out.rel,
    converged,
    absTrace: p.absTrace,
    relTrace: p.relTrace,
    globalAbsTrace: p.gAbs,
    globalRelTrace: p.gRel,
    returnedStep: out.step,
    ...(p.failedStep !== undefined ? { failedStep: p.failedStep } : {}),
    ...(p.message !== undefined ? { message: p.message } : {})
  }
}

/**
 * Runs a method from z0 (any shape [B, ...]). The caller owns the returned tensors; they are ordinary tensors of
 * the caller's tidy scope (nothing stays kept). A map that changes the state size throws a {@link StateSizeError}.
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
    const flatF = flatMap(f, shape, B, N)
    let stats: CoreStats | undefined
    let exported: ExportedState | undefined
    const tensors = tf.tidy(() => {
      let stepper: Stepper | undefined
      let current: Iterate | undefined
      let selection: Selection | undefined
      const trajectory: Array<tf.Tensor> = []
      try {
        const reducer = makeReducer(tf.ones([N, 1]))
        current = tf.tidy(() => {
          const z = tf.reshape(z0, [B, N]) as tf.Tensor
          const fz = flatF(z)
          return { z, fz, g: tf.sub(fz, z) }
        })
        let res = residuals(readNorms(reducer, current), B)
        selection = makeSelection(options, current, res, B)
        const active = selection.active
        const p: Progress = {
          absTrace: [], relTrace: [], gAbs: [], gRel: [], stepsPerSample: new Int32Array(B), status: "maxIter", steps: 0
        }
        if (!res.finite) stop(p, "diverged", 0, "f(z0) is not finite")
        else {
          stepper = method.start(current, imported, reducer)
          for (let k = 1; k <= options.maxIter; k++) {
            const mask = options.stopping === "sample" && active.includes(0) ? Uint8Array.from(active) : undefined
            const next = nextIterate(stepper, flatF, current, k, mask, B)
            if (!("z" in next)) {
              stop(p, "singular", k, next.message)
              break
            }
            const r = residuals(stepper.measure !== undefined ? stepper.measure(next) : readNorms(reducer, next), B)
            if (!r.finite) {
              disposeIterate(next)
              stop(p, "diverged", k, `non-finite residual at step ${k}`)
              break
            }
            tf.tidy(() => stepper!.accept(next, k, mask))
            disposeIterate(current)
            current = next
            res = r
            p.steps = k
            p.absTrace.push(r.abs)
            p.relTrace.push(r.rel)
            p.gAbs.push(r.globalAbs)
            p.gRel.push(r.globalRel)
            if (options.recordTrajectory) trajectory.push(tf.reshape(next.z, shape))
            for (let b = 0; b < B; b++) if (active[b] === 1) p.stepsPerSample[b] = k
            if (selection.offer(next, r, k)) {
              p.status = "converged"
              break
            }
          }
        }
        // the reshape below is the returned z's own handle: current and best are freed in finally
        const out = selection.result(current, res, p.steps, options.returnMode === "last" && p.status !== "diverged")
        stats = statsOf(method.name, options, p, out)
        if (options.returnState && stepper?.exportState !== undefined) exported = stepper.exportState()
        return { z: tf.reshape(out.z, shape), trajectory, state: exported?.tensors ?? {} }
      } finally {
        stepper?.dispose()
        disposeIterate(current)
        selection?.dispose()
      }
    })
    return {
      z: tensors.z,
      ...(options.recordTrajectory ? { trajectory: tensors.trajectory } : {}),
      stats: stats!,
      ...(exported !== undefined ? { state: exported.build(tensors.state) } : {})
    }
  })
