/**
 * The training forward: the logits of a read-out together with what the regularizers reuse from the same call
 * (the map f with its injection and dropout masks, z_0, and the state the read-out solved to), so the Jacobian
 * penalty and the correction loss never re-inject or re-solve from z_0. It runs on the rows of a batch
 * (Regularizers.Rows): batch-shaped draws (dropout masks, per-sample state draws) are the whole batch's rows.
 *
 * Plain tfjs in the caller's scope (inside `tf.variableGrads`): the returned f closes over tensors that live until
 * the caller's tidy ends.
 *
 * @internal
 */
import * as Dynamics from "../../Dynamics.ts"
import type { FixedPointMap, SolveOptions, SolveResult, SolveStats } from "../../FixedPoint.ts"
import type { Rows } from "../../Regularizers.ts"
import { type Stream, tf, untaped } from "../../Tensor.ts"
import { meanCrossEntropy } from "./losses.ts"

/** Options of one training forward. */
export interface ForwardOptions {
  /** the source of RandomState draws (one n per call; per sample: the whole batch's draws, in row order) */
  readonly stream?: Stream
  /** draw variational dropout masks from this seed (the whole batch's masks; these rows taken) */
  readonly dropoutSeed?: number
  /** the rows of a batch this call computes (default: all of x is the batch) */
  readonly rows?: Rows
  /** also return the state the read-out solved to, for the Jacobian penalty (z_max for per-sample draws) */
  readonly penaltyState?: boolean
  readonly onDraw?: (n: number | Int32Array) => void
  readonly onStats?: (stats: SolveStats) => void
}

/** One training forward. */
export interface Forward {
  readonly logits: tf.Tensor2D
  readonly f: FixedPointMap
  readonly z0: tf.Tensor
  /** the state the Jacobian penalty reads (with `penaltyState`) */
  readonly state?: tf.Tensor
}

const whole = (x: tf.Tensor, rows: Rows | undefined): boolean =>
  rows === undefined || (rows.offset === 0 && rows.total === x.shape[0])

/**
 * Dynamics.prepare on rows of a batch: the context (dropout masks) is the whole batch's, cut to these rows (the
 * other context entries, precomputed weights, are not batch-shaped).
 */
export const prepareRows = (deq: Dynamics.Deq, x: tf.Tensor4D, dropoutSeed?: number, rows?: Rows): Dynamics.Prepared => {
  if (whole(x, rows)) return Dynamics.prepare(deq, x, dropoutSeed)
  const r = rows!
  const model = deq.model
  const u = model.inject(x)
  const z0 = untaped(() => model.initState(u))
  const ctx = Dynamics.contextOf(model, r.total, dropoutSeed)
  const masks = ctx?.dropoutMask?.map((m) =>
    m.shape[0] === r.total ? tf.slice(m, [r.offset, ...m.shape.slice(1).map(() => 0)], [x.shape[0], ...m.shape.slice(1)]) : m
  )
  return { f: Dynamics.mapOf(model, u, masks === undefined ? ctx : { ...ctx, dropoutMask: masks }), z0 }
}

/** the per-sample draws of these rows: the whole batch's draws in row order, these rows taken */
const perSampleDraws = (stream: Stream, max: number, n: number, rows: Rows | undefined): Int32Array => {
  const total = rows?.total ?? n
  const all = new Int32Array(total)
  for (let b = 0; b < total; b++) all[b] = stream.int(1, max)
  return all.slice(rows?.offset ?? 0, (rows?.offset ?? 0) + n)
}

/**
 * The logits of read-out `r` (as Dynamics.logits: the solve off the tape, the deq's gradient from the state) and
 * the call's f, z_0 and, with `penaltyState`, the state the penalty reads.
 */
export const forward = (deq: Dynamics.Deq, x: tf.Tensor4D, r: Dynamics.ReadOut, o: ForwardOptions = {}): Forward => {
  const model = deq.model
  const p = prepareRows(deq, x, o.dropoutSeed, o.rows)
  const solve = (options: Partial<SolveOptions>, report = true): SolveResult =>
    untaped(() => {
      const res = deq.solver.run(p.f, p.z0, options)
      res.state?.dispose()
      if (report) o.onStats?.(res.stats)
      return res
    })
  const head = (z: tf.Tensor) => model.head(Dynamics.applyGradient(p.f, z, deq.backward, p.z0)) as tf.Tensor2D
  const out = (logits: tf.Tensor2D, state: tf.Tensor | undefined): Forward => ({
    logits,
    f: p.f,
    z0: p.z0,
    ...(o.penaltyState === true && state !== undefined ? { state } : {})
  })
  const final = { ...deq.solveOptions, recordTrajectory: false }
  switch (r._tag) {
    case "Final": {
      // Unrolled differentiates through plain steps from z0: nothing to solve, unless the penalty needs z*
      const solved = deq.backward._tag === "Unrolled" ? undefined : solve(final).z
      const state = o.penaltyState === true ? solved ?? solve(final, false).z : undefined
      return out(head(solved ?? p.z0), state)
    }
    case "State": {
      const z = solve(Dynamics.exactSteps(deq, r.n)).z
      return out(head(z), z)
    }
    case "Ensemble": {
      const states = solve(Dynamics.exactSteps(deq, r.to, { trajectory: true })).trajectory ?? []
      const all: Array<tf.Tensor2D> = []
      for (let n = r.from; n <= r.to; n++) all.push(head(states[n - 1]!))
      return out(tf.div(tf.addN(all), all.length) as tf.Tensor2D, states[r.to - 1])
    }
    case "RandomState": {
      const stream = o.stream
      if (stream === undefined) throw new Error("effect-deq Train: a RandomState read-out needs a stream")
      if (r.perSample !== true) {
        const n = stream.int(1, r.max)
        o.onDraw?.(n)
        const z = solve(Dynamics.exactSteps(deq, n)).z
        return out(head(z), z)
      }
      const ns = perSampleDraws(stream, r.max, x.shape[0], o.rows)
      o.onDraw?.(ns)
      // the penalty reads z_max, so solve that far when it is wanted (z_1..z_top are the same either way)
      const top = o.penaltyState === true ? r.max : ns.reduce((a, b) => Math.max(a, b), 1)
      const states = solve(Dynamics.exactSteps(deq, top, { trajectory: true })).trajectory ?? []
      const picked = untaped(() => {
        const stacked = tf.stack(states.slice(0, top) as Array<tf.Tensor>) // [top, B, ...]
        const idx = tf.tensor2d(Array.from(ns, (n, b) => [n - 1, b]), [ns.length, 2], "int32")
        return tf.gatherND(stacked, idx)
      })
      return out(head(picked), states[top - 1])
    }
  }
}

/** The logits of a training forward alone, leak-free (attacks' classifiers). */
export const forwardLogits = (deq: Dynamics.Deq, x: tf.Tensor4D, r: Dynamics.ReadOut, o: ForwardOptions = {}): tf.Tensor2D =>
  tf.tidy(() => forward(deq, x, r, o).logits)

/** Settings of the fixed-point correction loss. */
export interface CorrectionSettings {
  readonly states: number
  readonly gamma: number
  readonly weight: number
}

/**
 * The fixed-point correction loss on a forward's input: weight x sum_i gamma^(k - i) CE(h(tail(z_{n_i}))) with
 * n_i = round(i top / k), all k states read from one trajectory of `top` steps from the forward's z_0 (under the
 * forward's f, so the same injection and dropout masks). CE is the batch mean over `total` rows.
 */
export const correctionLoss = (
  deq: Dynamics.Deq,
  fwd: Forward,
  y: tf.Tensor1D,
  c: CorrectionSettings,
  top: number,
  total: number = y.shape[0]
): tf.Scalar => {
  const ns = Array.from({ length: c.states }, (_, i) => Math.max(1, Math.round(((i + 1) * top) / c.states)))
  const last = Math.max(...ns)
  const states = untaped(() => {
    const res = deq.solver.run(fwd.f, fwd.z0, Dynamics.exactSteps(deq, last, { trajectory: true }))
    res.state?.dispose()
    return res.trajectory ?? []
  })
  const terms = ns.map((n, i) => {
    const logits = deq.model.head(Dynamics.applyGradient(fwd.f, states[n - 1]!, deq.backward, fwd.z0)) as tf.Tensor2D
    return tf.mul(meanCrossEntropy(logits, y, total), Math.pow(c.gamma, c.states - (i + 1)))
  })
  return tf.mul(tf.addN(terms), c.weight) as tf.Scalar
}
