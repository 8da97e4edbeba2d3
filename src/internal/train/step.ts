/**
 * One training step's gradients on rows of a batch: the training attack (PGD-AT: the Attack service; TRADES: its
 * KL ascent), then the loss of the method with its regularizers and its parameter gradients, in one
 * `tf.variableGrads`. The optimiser update is not here: the caller applies the gradients (or, data-parallel, sums
 * those of the shards first).
 *
 * Every draw is keyed so that rows computed apart give what they would in the whole batch: attack starts by dataset
 * index (`keys`), the random-state n of a call, the Jacobian schedule and jitter by (root seed, step, use), and
 * batch-shaped draws (dropout masks, per-sample n, TRADES start, Jacobian probes) are the whole batch's rows
 * (Regularizers.Rows). Batch means divide by the whole batch's size, so shard losses and gradients sum to the
 * batch's. What stays batch-wide: a solve that stops on the batch's residual (tol > 0 with `stopping: "batch"`,
 * and `returnMode: "best"` with it) stops where the rows computed together say; exact-n reads (random states,
 * Jacobian and correction solves, tol 0) are per sample.
 *
 * @internal
 */
import { Effect, type Scope } from "effect"
import { Attack, type AttackError, type Classifier } from "../../Adversary.ts"
import * as Dynamics from "../../Dynamics.ts"
import { Backward, Solver, type SolveStats } from "../../FixedPoint.ts"
import { JacobianPenalty, jitterReadOut, type Rows, TrainReadOut } from "../../Regularizers.ts"
import { acquire, makeRng, Rng, tf } from "../../Tensor.ts"
import { gradientOf, type MethodConfig, type TrainAttackConfig, type TrainConfig } from "./config.ts"
import { correctionLoss, type Forward, forward, forwardLogits } from "./forward.ts"
import { correct, klSum, meanCrossEntropy, tradesAttack } from "./losses.ts"
import type { Position } from "./schedule.ts"

/** What every step of a run shares: the model, its DEQs, the services and the method's settings. */
export interface StepContext {
  /** a built-in model or a custom DeqModel */
  readonly model: Dynamics.DeqModel
  /** the training DEQ (the config's gradient) */
  readonly deq: Dynamics.Deq
  /** pre-training: `pretrainLayers` weight-tied applications of f from z_0, differentiated through */
  readonly pretrainDeq: Dynamics.Deq
  readonly readOut: TrainReadOut["Service"]
  readonly jacobian: JacobianPenalty["Service"]
  readonly attack: Attack["Service"]
  readonly rng: Rng["Service"]
  readonly method: MethodConfig
  readonly attackConfig: TrainAttackConfig
}

/** The step context of `model` under `config`, from the services in the context. */
export const makeStepContext = (
  model: Dynamics.DeqModel,
  config: TrainConfig
): Effect.Effect<StepContext, never, Solver | TrainReadOut | JacobianPenalty | Attack | Rng> =>
  Effect.gen(function*() {
    const solver = yield* Solver
    return {
      model,
      deq: Dynamics.makeWith(model, solver, { backward: gradientOf(config.gradient) }),
      pretrainDeq: Dynamics.makeWith(model, solver, { backward: Backward.unrolled(config.pretrainLayers) }),
      readOut: yield* TrainReadOut,
      jacobian: yield* JacobianPenalty,
      attack: yield* Attack,
      rng: yield* Rng,
      method: config.method,
      attackConfig: config.attack
    }
  })

/** The rows of a batch one step computes. */
export interface StepBatch {
  readonly x: tf.Tensor4D
  readonly y: tf.Tensor1D
  /** dataset indices of the rows (attack starts are keyed by them) */
  readonly keys: ArrayLike<number>
  /** which rows of the batch these are (the whole batch: offset 0, total = rows) */
  readonly rows: Rows
}

/** The state(s) one training forward drew: one n for the call, or one per row. */
export type Draw = number | ReadonlyArray<number>

/** Draws flattened in call order (what a Batch event reports). */
export const flatDraws = (drawn: ReadonlyArray<Draw>): Array<number> =>
  drawn.flatMap((d) => (typeof d === "number" ? [d] : [...d]))

/** One step: the run's context, the batch rows and the schedule position. */
export interface StepInput {
  readonly context: StepContext
  readonly batch: StepBatch
  readonly position: Position
}

/**
 * What a step computed on its rows. Sums over rows add up over the shards of a batch: `loss` is these rows' share
 * of the batch loss (the batch loss when the rows are the batch), `correct` / `advCorrect` count rows.
 */
export interface StepGradients {
  /** gradients by parameter name (Param.name), owned by the step's Scope */
  readonly grads: ReadonlyMap<string, tf.Tensor>
  readonly loss: number
  readonly correct: number
  readonly advCorrect?: number
  /** these rows' share of the weighted Jacobian penalty, when the batch computed it */
  readonly jacobian?: number
  /** the states drawn by random intermediate states, one entry per training forward: n, or per sample these rows' */
  readonly drawn: ReadonlyArray<Draw>
  /** solver steps and per-row relative residual of the last training forward (0 and empty in pre-training) */
  readonly solverSteps: number
  readonly residual: Float32Array
}

/** The training attack's classifier: the training read-out without dropout, each call its own draw. */
const trainClassifier = (c: StepContext, rows: Rows, n: number): Classifier => ({
  name: `deq/${c.readOut.name}`,
  // calls on a subset of the rows (not made by the training attacks) read their own draws
  logits: (x, ctx) =>
    forwardLogits(c.deq, x, c.readOut.readOut, {
      stream: c.rng.stream("classifier", ctx?.seed ?? 0),
      ...(x.shape[0] === n ? { rows } : {})
    }),
  randomized: c.readOut.readOut._tag === "RandomState"
})

/** x_adv of the method (undefined for standard training and pre-training), owned by the Scope. */
const adversarial = (input: StepInput): Effect.Effect<tf.Tensor4D | undefined, AttackError, Scope.Scope> => {
  const { context: c, batch: b, position: p } = input
  if (p.pretrain || c.method._tag === "standard") return Effect.succeed(undefined)
  if (c.method._tag === "pgd-at") {
    return c.attack.perturb(trainClassifier(c, b.rows, b.x.shape[0]), b.x, b.y, { keys: b.keys }).pipe(
      Effect.provideService(Rng, makeRng(c.rng.seed("attack", p.epoch, p.batch))),
      Effect.map((r) => r.xAdv)
    )
  }
  const r = c.readOut.readOut
  return acquire(() =>
    tradesAttack(
      (input, call) => forwardLogits(c.deq, input, r, { stream: c.rng.stream("trades", p.step, call), rows: b.rows }),
      b.x,
      {
        eps: c.attackConfig.eps,
        stepSize: c.attackConfig.stepSize,
        steps: c.attackConfig.steps,
        start: c.attackConfig.start ?? "normal",
        seed: c.rng.seed("trades", "start", p.step),
        rows: b.rows
      }
    )
  )
}

/** What the loss reports besides its value (filled while the loss is built). */
interface Notes {
  correct: number
  advCorrect?: number
  jacobian?: number
  stats?: SolveStats
  readonly drawn: Array<Draw>
}

/** the Jacobian schedule of a step: whether it computes the penalty, and the jittered DEQ and read-out */
const jacobianPlan = (c: StepContext, p: Position) => {
  const stream = c.rng.stream("jacobian", p.step)
  const on = c.jacobian.enabled && c.jacobian.active(p.epoch, stream)
  const delta = on && c.jacobian.jitter !== undefined ? stream.int(c.jacobian.jitter[0], c.jacobian.jitter[1]) : 0
  const deq: Dynamics.Deq = delta === 0 ? c.deq : {
    ...c.deq,
    solveOptions: { ...c.deq.solveOptions, maxIter: Math.max(1, Dynamics.budget(c.deq) + delta) }
  }
  return { on, deq, readOut: jitterReadOut(c.readOut.readOut, delta) }
}

/** The loss of one step (inside `tf.variableGrads`); fills `rec`. */
const objective = (input: StepInput, xAdv: tf.Tensor4D | undefined, rec: Notes): tf.Scalar => {
  const { context: c, batch: { x, y, rows }, position: p } = input
  const total = rows.total
  if (p.pretrain) {
    const l = Dynamics.logits(c.pretrainDeq, x, Dynamics.readOut.final)
    rec.correct = correct(l, y)
    return meanCrossEntropy(l, y, total)
  }
  const plan = jacobianPlan(c, p)
  const penalties: Array<tf.Scalar> = []
  /** one training forward: its own draw of n and dropout mask; its penalty from the same call's state */
  const run = (input: tf.Tensor4D, use: string): Forward => {
    const seed = c.readOut.dropout ? c.rng.seed("dropout", p.step, use) : undefined
    const fwd = forward(plan.deq, input, plan.readOut, {
      stream: c.rng.stream("readout", p.step, use),
      rows,
      penaltyState: plan.on,
      ...(seed !== undefined ? { dropoutSeed: seed } : {}),
      onDraw: (n) => rec.drawn.push(typeof n === "number" ? n : Array.from(n)),
      onStats: (s) => (rec.stats = s)
    })
    if (plan.on) penalties.push(c.jacobian.penalty(fwd.f, fwd.state!, c.rng.seed("jacobian", "probes", p.step, use), rows))
    return fwd
  }
  let loss: tf.Scalar
  let main: { readonly input: tf.Tensor4D; readonly fwd: Forward }
  switch (c.method._tag) {
    case "standard": {
      const clean = run(x, "clean")
      rec.correct = correct(clean.logits, y)
      loss = meanCrossEntropy(clean.logits, y, total)
      main = { input: x, fwd: clean }
      break
    }
    case "pgd-at": {
      const adv = run(xAdv!, "adv")
      rec.correct = correct(adv.logits, y)
      rec.advCorrect = rec.correct
      loss = meanCrossEntropy(adv.logits, y, total)
      main = { input: xAdv!, fwd: adv }
      break
    }
    case "trades": {
      const clean = run(x, "clean")
      const adv = run(xAdv!, "adv")
      rec.correct = correct(clean.logits, y)
      rec.advCorrect = correct(adv.logits, y)
      loss = tf.add(
        meanCrossEntropy(clean.logits, y, total),
        tf.mul(klSum(clean.logits, adv.logits), c.method.beta / total)
      ) as tf.Scalar
      main = { input: x, fwd: clean }
      break
    }
  }
  const corr = c.readOut.correction
  if (corr !== undefined) {
    const r = plan.readOut
    const top = r._tag === "RandomState" ? r.max : r._tag === "State" ? r.n : r._tag === "Ensemble" ? r.to : Dynamics.budget(c.deq)
    loss = tf.add(loss, correctionLoss(plan.deq, main.fwd, y, corr, top, total)) as tf.Scalar
  }
  if (penalties.length > 0) {
    const pen = tf.addN(penalties) as tf.Scalar
    rec.jacobian = pen.dataSync()[0]!
    loss = tf.add(loss, pen) as tf.Scalar
  }
  return loss
}

/** The loss and gradients of one step, plain tfjs; the caller disposes the gradients. */
const lossAndGradients = (input: StepInput, xAdv: tf.Tensor4D | undefined): StepGradients => {
  const params = input.context.model.params
  const rec: Notes = { correct: 0, drawn: [] }
  const { value, grads } = tf.variableGrads(() => objective(input, xAdv, rec), params.map((q) => q.variable))
  const loss = value.dataSync()[0]!
  value.dispose()
  const byName = new Map<string, tf.Tensor>()
  for (const q of params) {
    const g = grads[q.variable.name]
    if (g !== undefined) byName.set(q.name, g)
  }
  return {
    grads: byName,
    loss,
    correct: rec.correct,
    ...(rec.advCorrect !== undefined ? { advCorrect: rec.advCorrect } : {}),
    ...(rec.jacobian !== undefined ? { jacobian: rec.jacobian } : {}),
    drawn: rec.drawn,
    solverSteps: rec.stats?.steps ?? 0,
    residual: rec.stats?.relResidual ?? new Float32Array(0)
  }
}

/**
 * One step's gradients on its rows: the training attack, then the loss and its gradients. The gradients belong
 * to the current Scope. Nothing is applied.
 */
export const gradients = (input: StepInput): Effect.Effect<StepGradients, AttackError, Scope.Scope> =>
  Effect.flatMap(adversarial(input), (xAdv) =>
    Effect.acquireRelease(
      Effect.sync(() => lossAndGradients(input, xAdv)),
      (g) => Effect.sync(() => g.grads.forEach((t) => t.dispose()))
    ))
