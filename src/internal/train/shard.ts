/**
 * One training step on one shard of a batch, from plain data to plain data, so it can run where the tensors are
 * not (a worker thread with its own backend and its own copy of the model): parameters in as Float32Arrays by
 * parameter name, the shard's rows as typed arrays, the position and the root seed as numbers; gradients out as
 * Float32Arrays by name, with the shard's loss share and counts. `combineShards` sums the shards of a batch into
 * what the whole batch gives (to float summation order); the optimiser update stays with the caller.
 *
 * @internal
 */
import { Effect } from "effect"
import type { AttackError } from "../../Adversary.ts"
import { ConfigError } from "../../Errors.ts"
import { isModel } from "../../Models.ts"
import { makeRng, tf } from "../../Tensor.ts"
import { type Draw, gradients, type StepContext } from "./step.ts"

/** One shard of one step, as plain data. */
export interface ShardInput {
  /** parameter values by Param.name (absent: the context's model keeps its current values) */
  readonly params?: Readonly<Record<string, Float32Array>>
  /** the shard's images [n, ...inputShape], row-major */
  readonly x: Float32Array
  /** the shard's labels [n] */
  readonly y: Int32Array
  /** the shard's dataset indices [n] (attack starts are keyed by them) */
  readonly keys: Int32Array
  /** the shard is rows offset..offset + n of a batch of `batchSize` rows */
  readonly offset: number
  readonly batchSize: number
  /** the step's position: 1-based epoch, 0-based batch of the epoch, steps done, pre-training or not */
  readonly epoch: number
  readonly batch: number
  readonly step: number
  readonly pretrain: boolean
  /** the run's root seed (every draw derives from it and the position) */
  readonly seed: number
}

/** What one shard computed, as plain data; fields add up over the shards of a batch (see combineShards). */
export interface ShardOutput {
  /** gradients by Param.name */
  readonly grads: Readonly<Record<string, Float32Array>>
  /** the shard's share of the batch loss */
  readonly loss: number
  readonly correct: number
  readonly advCorrect?: number
  /** the shard's share of the weighted Jacobian penalty (on batches that compute it) */
  readonly jacobian?: number
  readonly samples: number
  /** states drawn by random intermediate states, per training forward: n, or per sample the shard's rows' */
  readonly drawn: ReadonlyArray<Draw>
  readonly solverSteps: number
  /** per-row relative residual of the last training forward */
  readonly residual: Float32Array
}

const bad = (path: string, message: string) => Effect.fail(new ConfigError({ path, message: `shard ${path}: ${message}` }))

/**
 * Runs one step on one shard: sets the parameters (when given), builds the rows' tensors, computes the step's
 * gradients with `context` (its Rng is replaced by one seeded with `input.seed`) and reads them out. Leaves no
 * tensor behind. Malformed input is a ConfigError naming the field.
 */
export const shardStep = (context: StepContext, input: ShardInput): Effect.Effect<ShardOutput, AttackError | ConfigError> =>
  Effect.gen(function*() {
    const model = context.model
    // worker shards rebuild the model from the config: built-in models only (Train.run)
    if (!isModel(model)) return yield* bad("model", "a custom DeqModel is trained on the calling thread only")
    const shape = model.config.inputShape
    const n = input.y.length
    const per = shape[0] * shape[1] * shape[2]
    if (input.x.length !== n * per) return yield* bad("x", `${input.x.length} values for ${n} images of [${shape}]`)
    if (input.keys.length !== n) return yield* bad("keys", `${input.keys.length} keys for ${n} labels`)
    if (!(Number.isInteger(input.offset) && input.offset >= 0 && input.offset + n <= input.batchSize)) {
      return yield* bad("offset", `rows ${input.offset}..${input.offset + n} are not inside a batch of ${input.batchSize}`)
    }
    if (input.params !== undefined) {
      for (const p of model.params) {
        const v = input.params[p.name]
        if (v === undefined) return yield* bad(`params.${p.name}`, "missing")
        if (v.length !== p.variable.size) return yield* bad(`params.${p.name}`, `${v.length} values, the parameter has ${p.variable.size}`)
      }
      const values = input.params
      yield* Effect.sync(() => {
        for (const p of model.params) tf.tidy(() => p.variable.assign(tf.tensor(values[p.name]!, p.variable.shape)))
      })
    }
    return yield* Effect.scoped(Effect.gen(function*() {
      const { x, y } = yield* Effect.acquireRelease(
        Effect.sync(() => ({
          x: tf.tensor4d(input.x, [n, shape[0], shape[1], shape[2]]),
          y: tf.tensor1d(input.y, "int32")
        })),
        (t) => Effect.sync(() => tf.dispose([t.x, t.y]))
      )
      const g = yield* gradients({
        context: { ...context, rng: makeRng(input.seed) },
        batch: { x, y, keys: input.keys, rows: { offset: input.offset, total: input.batchSize } },
        position: { epoch: input.epoch, batch: input.batch, step: input.step, pretrain: input.pretrain }
      })
      const grads: Record<string, Float32Array> = {}
      for (const [name, t] of g.grads) grads[name] = t.dataSync() as Float32Array
      return {
        grads,
        loss: g.loss,
        correct: g.correct,
        ...(g.advCorrect !== undefined ? { advCorrect: g.advCorrect } : {}),
        ...(g.jacobian !== undefined ? { jacobian: g.jacobian } : {}),
        samples: n,
        drawn: g.drawn,
        solverSteps: g.solverSteps,
        residual: g.residual
      }
    }))
  })

/**
 * The shards of one batch, in row order, as one output: gradients, loss, counts and the penalty summed, per-row
 * draws and residuals concatenated, solver steps the most any shard took. Batch-wide draws (one n per call)
 * are the same in every shard and kept once.
 */
export const combineShards = (shards: ReadonlyArray<ShardOutput>): ShardOutput => {
  if (shards.length === 1) return shards[0]!
  const grads: Record<string, Float32Array> = {}
  for (const s of shards) {
    for (const [name, g] of Object.entries(s.grads)) {
      const acc = grads[name]
      if (acc === undefined) grads[name] = Float32Array.from(g)
      else for (let i = 0; i < g.length; i++) acc[i] = acc[i]! + g[i]!
    }
  }
  const sum = (f: (s: ShardOutput) => number | undefined) => shards.reduce((a, s) => a + (f(s) ?? 0), 0)
  const adv = shards.some((s) => s.advCorrect !== undefined)
  const jac = shards.some((s) => s.jacobian !== undefined)
  const residual = new Float32Array(sum((s) => s.residual.length))
  let at = 0
  for (const s of shards) {
    residual.set(s.residual, at)
    at += s.residual.length
  }
  // a call's one n is the same in every shard; per-sample draws are the rows', in shard order
  const drawn = shards[0]!.drawn.map((d, i) => (typeof d === "number" ? d : shards.flatMap((s) => [...(s.drawn[i] as ReadonlyArray<number>)])))
  return {
    grads,
    loss: sum((s) => s.loss),
    correct: sum((s) => s.correct),
    ...(adv ? { advCorrect: sum((s) => s.advCorrect) } : {}),
    ...(jac ? { jacobian: sum((s) => s.jacobian) } : {}),
    samples: sum((s) => s.samples),
    drawn,
    solverSteps: Math.max(...shards.map((s) => s.solverSteps)),
    residual
  }
}
