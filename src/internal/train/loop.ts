/**
 * The training loop: batch steps (plain tfjs inside one variableGrads), epochs, evaluation, checkpoints, resume.
 * Effect at the seams: one Effect per batch step, per evaluation batch and per checkpoint; the fiber yields between
 * batches so interruption lands between them, where the state (parameters, optimizer, position) is consistent.
 *
 * @internal
 */
import * as path from "node:path"
import * as fs from "node:fs/promises"
import { Effect, Schema } from "effect"
import type { AttackError, Classifier } from "../../Adversary.ts"
import { Attack, pgd as pgdAttack } from "../../Adversary.ts"
import * as Checkpoint from "../../Checkpoint.ts"
import { batchIndices, type Dataset, toTensors } from "../../Data.ts"
import * as Dynamics from "../../Dynamics.ts"
import { CheckpointError, ConfigError } from "../../Errors.ts"
import { Backward, type SolveOptions, type SolveStats, Solver } from "../../FixedPoint.ts"
import type { Model } from "../../Models.ts"
import { JacobianPenalty, jitterReadOut, TrainReadOut } from "../../Regularizers.ts"
import { acquire, makeRng, Rng, type Stream, tf, untaped } from "../../Tensor.ts"
import { makeAdam } from "./adam.ts"
import { TrainConfig } from "./config.ts"
import type { GradientConfig } from "./config.ts"
import { type BatchDone, type EpochDone, type Evaluated, NaNLoss, type TrainEvent } from "./events.ts"
import { correct, meanCrossEntropy, klSum, tradesAttack } from "./losses.ts"

/** Options of a run besides its config. */
export interface FitOptions {
  /** output directory: checkpoints go to `<out>/last` (every epoch, and on interruption) and `<out>/best` */
  readonly out?: string
  /** continue from `<out>/last` when it exists (a fresh run otherwise) */
  readonly resume?: boolean
  /** called with every progress event, in order */
  readonly onEvent?: (event: TrainEvent) => Effect.Effect<void>
}

/** What a finished run reports. */
export interface TrainSummary {
  readonly epoch: number
  readonly step: number
  readonly resumed: boolean
  readonly lastEpoch?: EpochDone
  readonly lastEvaluation?: Evaluated
  readonly bestMetric?: number
  readonly bestEpoch?: number
  readonly seconds: number
}

/** The errors of a run. */
export type TrainError = ConfigError | CheckpointError | AttackError | NaNLoss

/** The checkpoint directories of an output directory. */
export const checkpointDirs = (out: string): { readonly last: string; readonly best: string } => ({
  last: path.join(out, "last"),
  best: path.join(out, "best")
})

/** The Dynamics gradient of a gradient config. */
export const gradientOf = (g: GradientConfig): Dynamics.Gradient => {
  switch (g._tag) {
    case "unroll":
      return Dynamics.unroll(g.k, g.lambda)
    case "phantom":
      return Backward.phantom(g.k, g.tau)
    case "implicit":
      return Backward.implicit({ maxIter: g.maxIter, tol: g.tol, solver: g.solver })
    case "unrolled":
      return Backward.unrolled(g.n)
  }
}

const describeReadOut = (r: Dynamics.ReadOut): string => {
  switch (r._tag) {
    case "Final":
      return "final"
    case "State":
      return `state ${r.n}`
    case "Ensemble":
      return `ensemble ${r.from}..${r.to}`
    case "RandomState":
      return `random state 1..${r.max}${r.perSample === true ? " per sample" : ""}`
  }
}

/** the resumable training state stored in a checkpoint's metadata.extra */
const TrainState = Schema.Struct({
  format: Schema.Literal("effect-deq/train-state"),
  config: Schema.Unknown,
  epoch: Schema.Int,
  batch: Schema.Int,
  ended: Schema.Boolean,
  adamSteps: Schema.Int,
  bestMetric: Schema.optional(Schema.Number),
  bestEpoch: Schema.optional(Schema.Int),
  sums: Schema.Struct({
    loss: Schema.Number,
    accuracy: Schema.Number,
    advAccuracy: Schema.Number,
    samples: Schema.Number,
    batches: Schema.Number,
    seconds: Schema.Number
  })
})

interface Sums {
  loss: number
  accuracy: number
  advAccuracy: number
  samples: number
  batches: number
  seconds: number
}

const zeroSums = (): Sums => ({ loss: 0, accuracy: 0, advAccuracy: 0, samples: 0, batches: 0, seconds: 0 })

/** the first path where two JSON values differ, or undefined */
const firstDifference = (a: unknown, b: unknown, at = ""): string | undefined => {
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return Object.is(a, b) ? undefined : at.length > 0 ? at : "<root>"
  }
  const keys = new Set([...Object.keys(a), ...Object.keys(b)])
  for (const k of keys) {
    const d = firstDifference((a as any)[k], (b as any)[k], at.length > 0 ? `${at}.${k}` : k)
    if (d !== undefined) return d
  }
  return undefined
}

const mean = (a: ArrayLike<number>): number => {
  let s = 0
  for (let i = 0; i < a.length; i++) s += a[i]!
  return a.length === 0 ? 0 : s / a.length
}

/**
 * Trains `model` on `data` with the method, schedule, optimiser and evaluation of `config`; the solver, the
 * training read-out, the Jacobian penalty, the attack and the random source come from the context.
 */
export const fit = (
  model: Model,
  data: Dataset,
  config: TrainConfig,
  options: FitOptions = {}
): Effect.Effect<TrainSummary, TrainError, Solver | TrainReadOut | JacobianPenalty | Attack | Rng> =>
  Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const solver = yield* Solver
    const readOut = yield* TrainReadOut
    const jacobian = yield* JacobianPenalty
    const attack = yield* Attack
    const rng = yield* Rng
    const emit = options.onEvent ?? (() => Effect.void)
    const method = config.method
    const deq = Dynamics.makeWith(model, solver, { backward: gradientOf(config.gradient) })
    const pretrainDeq = Dynamics.makeWith(model, solver, { backward: Backward.unrolled(config.pretrainLayers) })
    const baseMax = Dynamics.budget(deq)
    const split = data.train
    const test = data.test
    const shape = model.config.inputShape
    if (shape[0] !== data.shape[0] || shape[1] !== data.shape[1] || shape[2] !== data.shape[2]) {
      return yield* new ConfigError({
        path: "model.inputShape",
        message: `model.inputShape [${shape}] does not match the dataset's images [${data.shape}]`
      })
    }
    if (model.config.classes !== data.classes) {
      return yield* new ConfigError({
        path: "model.classes",
        message: `model.classes ${model.config.classes} does not match the dataset's ${data.classes} classes`
      })
    }
    const batchesPerEpoch = config.dropLast ? Math.floor(split.count / config.batchSize) : Math.ceil(split.count / config.batchSize)
    if (batchesPerEpoch < 1) {
      return yield* new ConfigError({
        path: "batchSize",
        message: `batchSize ${config.batchSize} leaves no batch of the ${split.count} training images`
      })
    }
    const totalSteps = config.epochs * batchesPerEpoch
    const lrAt = (step: number): number =>
      config.lrMin + (config.lr - config.lrMin) * (1 + Math.cos((Math.PI * step) / totalSteps)) / 2
    const params = model.params
    const varList = params.map((p) => p.variable)
    const adam = yield* Effect.acquireRelease(
      Effect.sync(() => makeAdam(params, config.adam)),
      (a) => Effect.sync(() => a.dispose())
    )
    const evalAttack = config.eval.steps > 0 ?
      yield* pgdAttack({
        eps: config.eval.eps ?? config.attack.eps,
        stepSize: config.eval.stepSize ?? config.attack.stepSize,
        steps: config.eval.steps,
        randomStartClamp: false,
        keepBest: false
      }) :
      undefined
    const dirs = options.out !== undefined ? checkpointDirs(options.out) : undefined
    const encodedConfig = Schema.encodeSync(TrainConfig)(config) as unknown

    // ------------------------------------------------------------------------------------------------------------
    // position (changes only together with the parameters, inside one synchronous block)
    // ------------------------------------------------------------------------------------------------------------
    const pos = { epoch: 1, batch: 0, step: 0, ended: false, sums: zeroSums() }
    let best: { metric: number; epoch: number } | undefined
    let resumed = false
    let lastEpoch: EpochDone | undefined
    let lastEvaluation: Evaluated | undefined

    if (options.resume === true && dirs !== undefined) {
      const present = yield* Effect.promise(() => fs.stat(path.join(dirs.last, Checkpoint.MANIFEST)).then(() => true, () => false))
      if (present) {
        const loaded = yield* Checkpoint.load(dirs.last, model)
        const state = yield* Schema.decodeUnknownEffect(TrainState)(loaded.metadata.extra).pipe(
          Effect.mapError((e) => new CheckpointError({ path: dirs.last, message: `not a training checkpoint: ${e.message}` }))
        )
        const diff = firstDifference(state.config, encodedConfig)
        if (diff !== undefined) {
          return yield* new ConfigError({
            path: diff,
            message: `resume: the checkpoint in ${dirs.last} was trained with a different "${diff}"; start a new run or use the same config`
          })
        }
        const byName = new Map(loaded.extras.map((t) => [t.name, t]))
        yield* Effect.try({
          try: () => adam.restore(state.adamSteps, (name) => {
            const t = byName.get(name)
            return t === undefined ? undefined : Checkpoint.toTensor(t)
          }),
          catch: (e) => new CheckpointError({ path: dirs.last, message: e instanceof Error ? e.message : String(e) })
        })
        pos.epoch = state.epoch
        pos.batch = state.batch
        pos.step = loaded.metadata.step ?? 0
        pos.ended = state.ended
        pos.sums = { ...state.sums }
        if (state.bestMetric !== undefined && state.bestEpoch !== undefined) best = { metric: state.bestMetric, epoch: state.bestEpoch }
        resumed = true
        if (pos.ended) {
          pos.epoch++
          pos.batch = 0
          pos.ended = false
          pos.sums = zeroSums()
        }
      }
    }

    const save = (dir: string) =>
      Effect.uninterruptible(Effect.suspend(() =>
        Checkpoint.save(dir, model, {
          metadata: {
            epoch: pos.epoch,
            step: pos.step,
            seed: rng.root,
            extra: {
              format: "effect-deq/train-state",
              config: encodedConfig,
              epoch: pos.epoch,
              batch: pos.batch,
              ended: pos.ended,
              adamSteps: adam.steps(),
              ...(best !== undefined ? { bestMetric: best.metric, bestEpoch: best.epoch } : {}),
              sums: { ...pos.sums },
              backend: tf.getBackend()
            }
          },
          extras: adam.tensors()
        })
      ))

    // ------------------------------------------------------------------------------------------------------------
    // read-outs and classifiers
    // ------------------------------------------------------------------------------------------------------------
    const randomized = (r: Dynamics.ReadOut) => r._tag === "RandomState"
    const classifierFor = (r: Dynamics.ReadOut, name: string): Classifier => ({
      name,
      logits: (x, ctx) => Dynamics.logits(deq, x, r, { stream: rng.stream("classifier", ctx?.seed ?? 0) }),
      randomized: randomized(r)
    })
    const trainClassifier = classifierFor(readOut.readOut, `deq/${readOut.name}`)
    const evalClassifier = classifierFor(readOut.evalReadOut, `deq/eval/${describeReadOut(readOut.evalReadOut)}`)

    // ------------------------------------------------------------------------------------------------------------
    // one batch
    // ------------------------------------------------------------------------------------------------------------
    interface StepOut {
      readonly loss: number
      readonly correct: number
      readonly advCorrect?: number
      readonly jacobian?: number
      readonly stats?: SolveStats
      readonly drawn: Array<number>
      readonly gradNorm: number
    }

    /** the loss, its gradient and the update; nothing is applied when the loss is not finite */
    const trainStep = (
      epoch: number,
      step: number,
      lr: number,
      x: tf.Tensor4D,
      y: tf.Tensor1D,
      xAdv: tf.Tensor4D | undefined,
      pretrain: boolean
    ): StepOut => {
      const drawn: Array<number> = []
      let stats: SolveStats | undefined
      let nCorrect = 0
      let advCorrect: number | undefined
      let jacValue: number | undefined
      const jStream = rng.stream("jacobian", step)
      const jacOn = !pretrain && jacobian.enabled && jacobian.active(epoch, jStream)
      const delta = jacOn && jacobian.jitter !== undefined ? jStream.int(jacobian.jitter[0], jacobian.jitter[1]) : 0
      const r = jitterReadOut(readOut.readOut, delta)
      const deqB: Dynamics.Deq = delta === 0 ? deq : {
        ...deq,
        solveOptions: { ...deq.solveOptions, maxIter: Math.max(1, baseMax + delta) }
      }
      const dropoutSeed = (use: string) => readOut.dropout ? rng.seed("dropout", step, use) : undefined

      /** one training forward: its own draw of n and its own dropout mask */
      const forward = (input: tf.Tensor4D, use: string) => {
        const stream: Stream = rng.stream("readout", step, use)
        const resolved = Dynamics.draw(r, stream)
        if (r._tag === "RandomState" && resolved._tag === "State") drawn.push(resolved.n)
        const seed = dropoutSeed(use)
        const logits = Dynamics.logits(deqB, input, resolved, {
          stream,
          ...(seed !== undefined ? { dropoutSeed: seed } : {}),
          onDraw: (n) => {
            if (typeof n !== "number") drawn.push(...n)
          },
          onStats: (s) => {
            stats = s
          }
        })
        return { logits, resolved, seed }
      }

      /** the Jacobian penalty at the state a forward read out (z_max for per-sample draws) */
      const penaltyAt = (input: tf.Tensor4D, resolved: Dynamics.ReadOut, seed: number | undefined, use: string) => {
        const { f, z0 } = Dynamics.prepare(deqB, input, seed)
        const exact = (n: number): Partial<SolveOptions> => Dynamics.exactSteps(deqB, n)
        const o: Partial<SolveOptions> = resolved._tag === "State" ?
          exact(resolved.n) :
          resolved._tag === "RandomState" ?
          exact(resolved.max) :
          resolved._tag === "Ensemble" ?
          exact(resolved.to) :
          { ...deqB.solveOptions, recordTrajectory: false }
        const z = untaped(() => {
          const res = solver.run(f, z0, o)
          res.state?.dispose()
          return res.z
        })
        return jacobian.penalty(f, z, rng.seed("jacobian", "probes", step, use))
      }

      /** the fixed-point correction loss on `input` */
      const correctionLoss = (input: tf.Tensor4D, y: tf.Tensor1D, seed: number | undefined): tf.Scalar => {
        const c = readOut.correction!
        const top = r._tag === "RandomState" ? r.max : r._tag === "State" ? r.n : r._tag === "Ensemble" ? r.to : baseMax
        const terms: Array<tf.Tensor> = []
        for (let i = 1; i <= c.states; i++) {
          const n = Math.max(1, Math.round((i * top) / c.states))
          const l = Dynamics.logits(deqB, input, Dynamics.readOut.state(n), seed !== undefined ? { dropoutSeed: seed } : {})
          terms.push(tf.mul(meanCrossEntropy(l, y), Math.pow(c.gamma, c.states - i)))
        }
        return tf.mul(tf.addN(terms), c.weight) as tf.Scalar
      }

      const { value, grads } = tf.variableGrads(() => {
        if (pretrain) {
          const l = Dynamics.logits(pretrainDeq, x, Dynamics.readOut.final)
          nCorrect = correct(l, y)
          return meanCrossEntropy(l, y)
        }
        let loss: tf.Scalar
        let main: { input: tf.Tensor4D; seed: number | undefined }
        const penalties: Array<tf.Scalar> = []
        switch (method._tag) {
          case "standard": {
            const c = forward(x, "clean")
            nCorrect = correct(c.logits, y)
            loss = meanCrossEntropy(c.logits, y)
            main = { input: x, seed: c.seed }
            if (jacOn) penalties.push(penaltyAt(x, c.resolved, c.seed, "clean"))
            break
          }
          case "pgd-at": {
            const a = forward(xAdv!, "adv")
            nCorrect = correct(a.logits, y)
            advCorrect = nCorrect
            loss = meanCrossEntropy(a.logits, y)
            main = { input: xAdv!, seed: a.seed }
            if (jacOn) penalties.push(penaltyAt(xAdv!, a.resolved, a.seed, "adv"))
            break
          }
          case "trades": {
            const c = forward(x, "clean")
            const a = forward(xAdv!, "adv")
            nCorrect = correct(c.logits, y)
            advCorrect = correct(a.logits, y)
            loss = tf.add(meanCrossEntropy(c.logits, y), tf.mul(klSum(c.logits, a.logits), method.beta / x.shape[0])) as tf.Scalar
            main = { input: x, seed: c.seed }
            if (jacOn) {
              penalties.push(penaltyAt(x, c.resolved, c.seed, "clean"))
              penalties.push(penaltyAt(xAdv!, a.resolved, a.seed, "adv"))
            }
            break
          }
        }
        if (readOut.correction !== undefined) loss = tf.add(loss, correctionLoss(main.input, y, main.seed)) as tf.Scalar
        if (penalties.length > 0) {
          const p = tf.addN(penalties) as tf.Scalar
          jacValue = p.dataSync()[0]!
          loss = tf.add(loss, p) as tf.Scalar
        }
        return loss
      }, varList)
      const lossValue = value.dataSync()[0]!
      value.dispose()
      const gradNorm = Number.isFinite(lossValue) ? adam.apply(grads, lr, config.clip) : 0
      tf.dispose(grads)
      return {
        loss: lossValue,
        correct: nCorrect,
        ...(advCorrect !== undefined ? { advCorrect } : {}),
        ...(jacValue !== undefined ? { jacobian: jacValue } : {}),
        ...(stats !== undefined ? { stats } : {}),
        drawn,
        gradNorm
      }
    }

    const runBatch = (epoch: number, b: number, indices: Int32Array) =>
      Effect.scoped(Effect.gen(function*() {
        const t0 = performance.now()
        const step = pos.step
        const lr = lrAt(step)
        const pretrain = step < config.pretrainSteps
        const { x, y } = yield* acquire(() => toTensors(split, indices))
        let xAdv: tf.Tensor4D | undefined
        if (!pretrain && method._tag === "pgd-at") {
          const result = yield* attack.perturb(trainClassifier, x, y, { keys: indices }).pipe(
            Effect.provideService(Rng, makeRng(rng.seed("attack", epoch, b)))
          )
          xAdv = result.xAdv
        } else if (!pretrain && method._tag === "trades") {
          const r = readOut.readOut
          const start = config.attack.start ?? "normal"
          xAdv = yield* acquire(() =>
            tradesAttack(
              (input, call) =>
                Dynamics.logits(deq, input, r, { stream: rng.stream("trades", step, call) }),
              x,
              {
                eps: config.attack.eps,
                stepSize: config.attack.stepSize,
                steps: config.attack.steps,
                start,
                seed: rng.seed("trades", "start", step)
              }
            )
          )
        }
        // the update and the position change together: an interruption never separates them
        const out = yield* Effect.sync(() => {
          const o = trainStep(epoch, step, lr, x, y, xAdv, pretrain)
          if (Number.isFinite(o.loss)) {
            const seconds = (performance.now() - t0) / 1000
            pos.step++
            pos.batch++
            pos.sums.loss += o.loss * indices.length
            pos.sums.accuracy += o.correct
            pos.sums.advAccuracy += o.advCorrect ?? 0
            pos.sums.samples += indices.length
            pos.sums.batches++
            pos.sums.seconds += seconds
          }
          return o
        })
        if (!Number.isFinite(out.loss)) {
          return yield* new NaNLoss({
            epoch,
            batch: b,
            step,
            loss: out.loss,
            message: `the loss is ${out.loss} at epoch ${epoch}, batch ${b} (step ${step}, lr ${lr.toExponential(3)}); ` +
              "the update was not applied"
          })
        }
        const event: BatchDone = {
          _tag: "Batch",
          phase: pretrain ? "pretrain" : "train",
          epoch,
          batch: b,
          batches: batchesPerEpoch,
          step: pos.step,
          loss: out.loss,
          accuracy: out.correct / indices.length,
          ...(out.advCorrect !== undefined ? { advAccuracy: out.advCorrect / indices.length } : {}),
          ...(out.jacobian !== undefined ? { jacobian: out.jacobian } : {}),
          solverSteps: out.stats?.steps ?? 0,
          residual: out.stats !== undefined ? mean(out.stats.relResidual) : 0,
          ...(out.drawn.length > 0 ? { drawn: out.drawn } : {}),
          lr,
          gradNorm: out.gradNorm,
          seconds: (performance.now() - t0) / 1000
        }
        yield* emit(event)
      }))

    // ------------------------------------------------------------------------------------------------------------
    // evaluation
    // ------------------------------------------------------------------------------------------------------------
    const evaluate = (epoch: number) =>
      Effect.gen(function*() {
        const t0 = performance.now()
        const n = Math.min(config.eval.subset, test.count)
        const plan = batchIndices(n, { batchSize: config.eval.batchSize, shuffle: false })
        let clean = 0, robust = 0
        const evalRng = makeRng(rng.seed("eval", epoch))
        for (const indices of plan) {
          yield* Effect.scoped(Effect.gen(function*() {
            const { x, y } = yield* acquire(() => toTensors(test, indices))
            clean += yield* Effect.sync(() =>
              tf.tidy(() => correct(evalClassifier.logits(x, { seed: evalRng.seed("clean", indices[0]!) }), y))
            )
            if (evalAttack !== undefined) {
              const r = yield* evalAttack.perturb(evalClassifier, x, y, { keys: indices }).pipe(
                Effect.provideService(Rng, evalRng)
              )
              robust += yield* Effect.sync(() =>
                tf.tidy(() => correct(evalClassifier.logits(r.xAdv, { seed: evalRng.seed("robust", indices[0]!) }), y))
              )
            }
          }))
          yield* Effect.yieldNow
        }
        const cleanAcc = n === 0 ? 0 : clean / n
        const robustAcc = evalAttack !== undefined && n > 0 ? robust / n : undefined
        const metric = config.eval.select === "robust" && robustAcc !== undefined ? robustAcc : cleanAcc
        const improved = best === undefined || metric > best.metric
        if (improved) best = { metric, epoch }
        const event: Evaluated = {
          _tag: "Evaluation",
          epoch,
          step: pos.step,
          samples: n,
          clean: cleanAcc,
          ...(robustAcc !== undefined ? { robust: robustAcc } : {}),
          metric,
          best: improved,
          seconds: (performance.now() - t0) / 1000
        }
        lastEvaluation = event
        yield* emit(event)
        if (improved && dirs !== undefined) {
          yield* save(dirs.best)
          yield* emit({ _tag: "Checkpoint", epoch, step: pos.step, batch: pos.batch, path: dirs.best, reason: "best" })
        }
      })

    const evalDue = (epoch: number): boolean =>
      config.eval.every > 0 &&
      (epoch === config.epochs || (epoch >= config.eval.fromEpoch && (epoch - config.eval.fromEpoch) % config.eval.every === 0))

    // ------------------------------------------------------------------------------------------------------------
    // the run
    // ------------------------------------------------------------------------------------------------------------
    const body = Effect.gen(function*() {
      yield* emit({
        _tag: "Started",
        epoch: pos.epoch,
        step: pos.step,
        batch: pos.batch,
        epochs: config.epochs,
        batchesPerEpoch,
        totalSteps,
        resumed,
        parameterCount: model.parameterCount,
        backend: tf.getBackend(),
        method: method._tag,
        readOut: readOut.name,
        jacobian: jacobian.name,
        attack: method._tag === "pgd-at" ? attack.name : method._tag === "trades" ? "trades-kl" : "none",
        ...(options.out !== undefined ? { out: options.out } : {})
      })
      while (pos.epoch <= config.epochs) {
        const epoch = pos.epoch
        const plan = batchIndices(split.count, { batchSize: config.batchSize, seed: rng.seed("shuffle", epoch), dropLast: config.dropLast })
        while (pos.batch < plan.length) {
          yield* runBatch(epoch, pos.batch, plan[pos.batch]!)
          yield* Effect.yieldNow
        }
        const s = pos.sums
        const epochEvent: EpochDone = {
          _tag: "Epoch",
          epoch,
          step: pos.step,
          batches: s.batches,
          loss: s.samples > 0 ? s.loss / s.samples : 0,
          accuracy: s.samples > 0 ? s.accuracy / s.samples : 0,
          ...(method._tag !== "standard" && s.samples > 0 ? { advAccuracy: s.advAccuracy / s.samples } : {}),
          lr: lrAt(Math.max(0, pos.step - 1)),
          seconds: s.seconds
        }
        lastEpoch = epochEvent
        yield* emit(epochEvent)
        if (evalDue(epoch)) yield* evaluate(epoch)
        pos.ended = true
        if (dirs !== undefined) {
          yield* save(dirs.last)
          yield* emit({ _tag: "Checkpoint", epoch, step: pos.step, batch: pos.batch, path: dirs.last, reason: "epoch" })
        }
        pos.epoch++
        pos.batch = 0
        pos.ended = false
        pos.sums = zeroSums()
      }
      const seconds = (performance.now() - started) / 1000
      yield* emit({
        _tag: "Finished",
        epoch: config.epochs,
        step: pos.step,
        ...(best !== undefined ? { bestMetric: best.metric, bestEpoch: best.epoch } : {}),
        seconds
      })
      const summary: TrainSummary = {
        epoch: config.epochs,
        step: pos.step,
        resumed,
        ...(lastEpoch !== undefined ? { lastEpoch } : {}),
        ...(lastEvaluation !== undefined ? { lastEvaluation } : {}),
        ...(best !== undefined ? { bestMetric: best.metric, bestEpoch: best.epoch } : {}),
        seconds
      }
      return summary
    })

    // Ctrl-C between batches: the position and the parameters agree, so save them where a resume continues
    return yield* body.pipe(
      Effect.onInterrupt(() =>
        dirs === undefined || pos.epoch > config.epochs ? Effect.void : Effect.ignore(save(dirs.last))
      )
    )
  }))
