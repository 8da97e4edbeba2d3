/**
 * The training loop as a short sequence of units: set-up (checks, step context, schedule, optimiser, evaluator,
 * resume), then per epoch its batches (`step.ts` gradients, then the update), its evaluation and its checkpoint.
 * The only mutable thing is one Ref holding the TrainState (`state.ts`), replaced together with the parameters in
 * an uninterruptible block, so an interruption (which lands between batches) always finds them in agreement.
 * Named spans at the seams: Train.batch, Train.epoch, Train.evaluation, Train.checkpoint.
 *
 * @internal
 */
import { Effect, Ref, Schema } from "effect"
import type { Attack } from "../../Adversary.ts"
import { type Dataset, toTensors } from "../../Data.ts"
import { ConfigError } from "../../Errors.ts"
import type { Solver } from "../../FixedPoint.ts"
import * as Dynamics from "../../Dynamics.ts"
import { isModel, type Model } from "../../Models.ts"
import type { JacobianPenalty, TrainReadOut } from "../../Regularizers.ts"
import { acquire, type Rng, tf } from "../../Tensor.ts"
import { type Adam, makeAdam } from "./adam.ts"
import * as Checkpoints from "./checkpoint.ts"
import { TrainConfig } from "./config.ts"
import { type Evaluator, evaluate, makeEvaluator } from "./evaluate.ts"
import type { BatchDone, EpochDone, Evaluated, FitOptions, TrainError, TrainEvent, TrainSummary } from "../../Train.ts"
import { NaNLoss } from "./events.ts"
import { makeSchedule, type Position, type Schedule } from "./schedule.ts"
import * as State from "./state.ts"
import { flatDraws, gradients, makeStepContext, type StepContext, type StepGradients } from "./step.ts"
import { makeSharder, resolveWorkers, type Sharder } from "./workers.ts"

/**
 * How `fit` was called: `servicesFromConfig` when the services are the config's own (`Train.run`), the only case
 * where worker threads, which rebuild them from the config, compute what this thread would.
 */
export interface FitMode {
  readonly servicesFromConfig: boolean
}

/** Everything one run holds. */
interface Run {
  readonly model: Dynamics.DeqModel
  readonly data: Dataset
  readonly config: TrainConfig
  readonly context: StepContext
  readonly evaluator: Evaluator
  readonly schedule: Schedule
  readonly optimizer: Adam
  readonly target: Checkpoints.Target
  readonly dirs: { readonly last: string; readonly best: string } | undefined
  readonly emit: (event: TrainEvent) => Effect.Effect<void>
  readonly state: Ref.Ref<State.TrainState>
  /** the data-parallel step (workers > 1 and services from the config), else undefined: this thread alone */
  readonly sharder: Sharder | undefined
}

const checkShapes = (model: Model | Dynamics.DeqModel, data: Dataset): Effect.Effect<void, ConfigError> => {
  if (!isModel(model)) return checkCustom(model, data)
  const shape = model.config.inputShape
  if (shape[0] !== data.shape[0] || shape[1] !== data.shape[1] || shape[2] !== data.shape[2]) {
    return Effect.fail(new ConfigError({
      path: "model.inputShape",
      message: `model.inputShape [${shape}] does not match the dataset's images [${data.shape}]`
    }))
  }
  if (model.config.classes !== data.classes) {
    return Effect.fail(new ConfigError({
      path: "model.classes",
      message: `model.classes ${model.config.classes} does not match the dataset's ${data.classes} classes`
    }))
  }
  return Effect.void
}

/**
 * A custom DeqModel declares no shapes: one forward of one of the dataset's images (f applied once) must give
 * [1, classes] logits, and its variables' names (the checkpoint keys) must be unique.
 */
const checkCustom = (model: Dynamics.DeqModel, data: Dataset): Effect.Effect<void, ConfigError> => {
  const fail = (path: string, message: string) => Effect.fail(new ConfigError({ path, message }))
  const names = new Set<string>()
  for (const p of model.params) {
    if (names.has(p.name)) return fail("model.params", `two variables are named "${p.name}"; names are the checkpoint keys and must be unique`)
    names.add(p.name)
  }
  let shape: ReadonlyArray<number>
  try {
    shape = tf.tidy(() => {
      const x = tf.zeros([1, ...data.shape]) as tf.Tensor4D
      const u = model.inject(x)
      const f = Dynamics.mapOf(model, u, Dynamics.contextOf(model, 1))
      return model.head(f(model.initState(u))).shape
    })
  } catch (e) {
    return fail("model", `the model cannot classify one of the dataset's [${data.shape}] images: ${e instanceof Error ? e.message : String(e)}`)
  }
  if (shape.length !== 2 || shape[0] !== 1 || shape[1] !== data.classes) {
    return fail("model", `the model's head gives logits of shape [${shape}] for one image; the dataset has ${data.classes} classes`)
  }
  return Effect.void
}

/** The config a checkpoint stores and a resume compares: a custom model's has no `model` (it does not describe it). */
const storedConfig = (model: Dynamics.DeqModel, config: TrainConfig): unknown => {
  const encoded = Schema.encodeSync(TrainConfig)(config) as Record<string, unknown>
  if (isModel(model)) return encoded
  const { model: _model, ...rest } = encoded
  return rest
}

/** Worker threads rebuild the model from the config: a custom model trains here, so asking for more is an error. */
const checkWorkers = (model: Dynamics.DeqModel, config: TrainConfig): Effect.Effect<void, ConfigError> =>
  isModel(model) || config.workers === "auto" || config.workers === 1 ?
    Effect.void :
    Effect.fail(new ConfigError({
      path: "workers",
      message: `workers: ${config.workers} threads need a built-in model (worker threads rebuild it from config.model); ` +
        `a custom DeqModel trains on the calling thread: use workers 1 or "auto"`
    }))

/** The run's units, and its state: restored from `<out>/last` with `resume`, else fresh. */
const setUp = (model: Dynamics.DeqModel, data: Dataset, config: TrainConfig, options: FitOptions, mode: FitMode) =>
  Effect.gen(function*() {
    yield* checkShapes(model, data)
    yield* checkWorkers(model, config)
    const context = yield* makeStepContext(model, config)
    const schedule = yield* makeSchedule(config, data.train.count, context.rng.seed)
    const optimizer = yield* Effect.acquireRelease(
      Effect.sync(() => makeAdam(model.params, config.adam)),
      (a) => Effect.sync(() => a.dispose())
    )
    const evaluator = yield* makeEvaluator(context, config, data.test)
    const target = { model, optimizer, config: storedConfig(model, config), seed: context.rng.root }
    const dirs = options.out !== undefined ? Checkpoints.checkpointDirs(options.out) : undefined
    const restored = options.resume === true && dirs !== undefined ? yield* Checkpoints.restore(dirs.last, target) : undefined
    const builtIn = isModel(model) ? model : undefined
    if (!mode.servicesFromConfig && builtIn !== undefined && typeof config.workers === "number" && config.workers > 1) {
      // worker threads rebuild the services from the config; fit's come from the caller's context
      yield* Effect.logWarning(
        `workers ${config.workers} ignored: Train.fit takes its solver, attack and read-out from the context, which ` +
          "worker threads cannot rebuild, so it trains on this thread; Train.run(config) trains with the workers"
      )
    }
    const threads = mode.servicesFromConfig && builtIn !== undefined ?
      Math.min(yield* resolveWorkers(config.workers, config.model), config.batchSize) :
      1
    const sharder = threads > 1 && builtIn !== undefined ?
      yield* makeSharder({ model: builtIn, data, config, context, evaluator }, threads) :
      undefined
    const run: Run = {
      model,
      data,
      config,
      context,
      evaluator,
      schedule,
      optimizer,
      target,
      dirs,
      emit: options.onEvent ?? (() => Effect.void),
      state: yield* Ref.make(restored !== undefined ? State.resumePoint(restored) : State.initial),
      sharder
    }
    return { run, resumed: restored !== undefined }
  })

const mean = (a: ArrayLike<number>): number => {
  let s = 0
  for (let i = 0; i < a.length; i++) s += a[i]!
  return a.length === 0 ? 0 : s / a.length
}

/** The summed gradients of the batch's shards as tensors owned by the Scope (the update applies them here). */
const shardedGradients = (run: Run, sharder: Sharder, indices: Int32Array, position: Position) =>
  Effect.gen(function*() {
    const out = yield* sharder.step(indices, position)
    const grads = yield* acquire(() => {
      const byName: Record<string, tf.Tensor> = {}
      for (const p of run.model.params) {
        const g = out.grads[p.name]
        if (g !== undefined) byName[p.name] = tf.tensor(g, p.variable.shape)
      }
      return byName
    })
    const result: StepGradients = { ...out, grads: new Map(Object.entries(grads)) }
    return result
  })

/** One batch: its gradients, then (finite loss only) the update and the state, together. */
const runBatch = Effect.fn("Train.batch")(function*(run: Run, indices: Int32Array) {
  const t0 = performance.now()
  const s = yield* Ref.get(run.state)
  const position = run.schedule.position(s.epoch, s.batch, s.step)
  const lr = run.schedule.lrAt(position.step)
  const event = yield* Effect.scoped(Effect.gen(function*() {
    const g = run.sharder !== undefined ?
      yield* shardedGradients(run, run.sharder, indices, position) :
      yield* Effect.flatMap(acquire(() => toTensors(run.data.train, indices)), ({ x, y }) =>
        gradients({ context: run.context, batch: { x, y, keys: indices, rows: { offset: 0, total: indices.length } }, position }))
    if (!Number.isFinite(g.loss)) {
      return yield* new NaNLoss({
        epoch: s.epoch,
        batch: s.batch,
        step: s.step,
        loss: g.loss,
        message: `the loss is ${g.loss} at epoch ${s.epoch}, batch ${s.batch} (step ${s.step}, lr ${lr.toExponential(3)}); ` +
          "the update was not applied"
      })
    }
    const byVariable: Record<string, tf.Tensor> = {}
    for (const p of run.model.params) {
      const t = g.grads.get(p.name)
      if (t !== undefined) byVariable[p.variable.name] = t
    }
    // the update and the position change together: an interruption never separates them
    const gradNorm = yield* Effect.uninterruptible(Effect.gen(function*() {
      const norm = yield* Effect.sync(() => run.optimizer.apply(byVariable, lr, run.config.clip))
      run.sharder?.updated()
      yield* Ref.set(
        run.state,
        State.afterBatch(s, {
          loss: g.loss,
          correct: g.correct,
          ...(g.advCorrect !== undefined ? { advCorrect: g.advCorrect } : {}),
          samples: indices.length,
          seconds: (performance.now() - t0) / 1000
        })
      )
      return norm
    }))
    const drawn = flatDraws(g.drawn)
    const done: BatchDone = {
      _tag: "Batch",
      phase: position.pretrain ? "pretrain" : "train",
      epoch: s.epoch,
      batch: s.batch,
      batches: run.schedule.batchesPerEpoch,
      step: s.step + 1,
      loss: g.loss,
      accuracy: g.correct / indices.length,
      ...(g.advCorrect !== undefined ? { advAccuracy: g.advCorrect / indices.length } : {}),
      ...(g.jacobian !== undefined ? { jacobian: g.jacobian } : {}),
      solverSteps: g.solverSteps,
      residual: mean(g.residual),
      ...(drawn.length > 0 ? { drawn } : {}),
      lr,
      gradNorm,
      seconds: (performance.now() - t0) / 1000
    }
    return done
  }))
  yield* run.emit(event)
})

/** Writes `<out>/<which>` from the current state and says so. */
const checkpoint = (run: Run, which: "last" | "best") =>
  Effect.gen(function*() {
    if (run.dirs === undefined) return
    const s = yield* Ref.get(run.state)
    const dir = run.dirs[which]
    yield* Checkpoints.save(dir, run.target, s)
    yield* run.emit({
      _tag: "Checkpoint",
      epoch: s.epoch,
      step: s.step,
      batch: s.batch,
      path: dir,
      reason: which === "last" ? "epoch" : "best"
    })
  })

/** The evaluation after `epoch`: accuracies, the best so far, and `<out>/best` when it improved. */
const evaluateEpoch = (run: Run, epoch: number) =>
  Effect.gen(function*() {
    const acc = yield* evaluate(run.evaluator, epoch, run.sharder?.evaluate)
    const metric = run.config.eval.select === "robust" && acc.robust !== undefined ? acc.robust : acc.clean
    const { state, improved } = State.recordEvaluation(yield* Ref.get(run.state), metric, epoch)
    // a new best and its checkpoint go together: an interruption never leaves a state naming a best/ not written
    const saved = improved && run.dirs !== undefined
    yield* Effect.uninterruptible(Effect.andThen(
      Ref.set(run.state, state),
      saved ? Checkpoints.save(run.dirs!.best, run.target, state) : Effect.void
    ))
    const event: Evaluated = {
      _tag: "Evaluation",
      epoch,
      step: state.step,
      samples: acc.samples,
      clean: acc.clean,
      ...(acc.robust !== undefined ? { robust: acc.robust } : {}),
      metric,
      best: improved,
      seconds: acc.seconds
    }
    yield* run.emit(event)
    if (saved) {
      yield* run.emit({ _tag: "Checkpoint", epoch, step: state.step, batch: state.batch, path: run.dirs!.best, reason: "best" })
    }
    return event
  })

/** The rest of the epoch in progress, its evaluation (when due) and its checkpoint; then the next epoch. */
const runEpoch = Effect.fn("Train.epoch")(function*(run: Run) {
  const epoch = (yield* Ref.get(run.state)).epoch
  const plan = run.schedule.plan(epoch)
  for (let s = yield* Ref.get(run.state); s.batch < plan.length; s = yield* Ref.get(run.state)) {
    yield* runBatch(run, plan[s.batch]!)
    yield* Effect.yieldNow
  }
  const s = yield* Ref.get(run.state)
  const m = State.means(s)
  const done: EpochDone = {
    _tag: "Epoch",
    epoch,
    step: s.step,
    batches: s.sums.batches,
    loss: m.loss,
    accuracy: m.accuracy,
    ...(run.config.method._tag !== "standard" && s.sums.samples > 0 ? { advAccuracy: m.advAccuracy } : {}),
    lr: run.schedule.lrAt(Math.max(0, s.step - 1)),
    seconds: s.sums.seconds
  }
  yield* run.emit(done)
  const evaluation = run.schedule.evaluates(epoch) ? yield* evaluateEpoch(run, epoch) : undefined
  yield* Ref.update(run.state, State.endEpoch)
  yield* checkpoint(run, "last")
  yield* Ref.update(run.state, State.nextEpoch)
  return { epoch: done, evaluation }
})

/**
 * Trains `model` on `data` with the method, schedule, optimiser and evaluation of `config`; the solver, the
 * training read-out, the Jacobian penalty, the attack and the random source come from the context.
 */
export const fit = (
  model: Dynamics.DeqModel,
  data: Dataset,
  config: TrainConfig,
  options: FitOptions = {},
  mode: FitMode = { servicesFromConfig: false }
): Effect.Effect<TrainSummary, TrainError, Solver | TrainReadOut | JacobianPenalty | Attack | Rng> =>
  Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const { run, resumed } = yield* setUp(model, data, config, options, mode)
    const first = yield* Ref.get(run.state)
    const c = run.context
    yield* run.emit({
      _tag: "Started",
      epoch: first.epoch,
      step: first.step,
      batch: first.batch,
      epochs: config.epochs,
      batchesPerEpoch: run.schedule.batchesPerEpoch,
      totalSteps: run.schedule.totalSteps,
      resumed,
      parameterCount: model.parameterCount,
      backend: tf.getBackend(),
      method: config.method._tag,
      readOut: c.readOut.name,
      jacobian: c.jacobian.name,
      attack: config.method._tag === "pgd-at" ? c.attack.name : config.method._tag === "trades" ? "trades-kl" : "none",
      workers: run.sharder?.threads ?? 1,
      ...(options.out !== undefined ? { out: options.out } : {})
    })
    const until = Math.min(config.epochs, options.untilEpoch ?? config.epochs)
    let lastEpoch: EpochDone | undefined
    let lastEvaluation: Evaluated | undefined
    const body = Effect.gen(function*() {
      while ((yield* Ref.get(run.state)).epoch <= until) {
        const r = yield* runEpoch(run)
        lastEpoch = r.epoch
        lastEvaluation = r.evaluation ?? lastEvaluation
      }
    })
    // Ctrl-C between batches: the position and the parameters agree, so save them where a resume continues
    yield* body.pipe(
      Effect.onInterrupt(() =>
        Effect.flatMap(Ref.get(run.state), (s) =>
          run.dirs === undefined || s.epoch > config.epochs ?
            Effect.void :
            Effect.ignore(Checkpoints.save(run.dirs.last, run.target, s)))
      )
    )
    const end = yield* Ref.get(run.state)
    const complete = end.epoch > config.epochs
    const seconds = (performance.now() - started) / 1000
    const best = end.best !== undefined ? { bestMetric: end.best.metric, bestEpoch: end.best.epoch } : {}
    if (complete) yield* run.emit({ _tag: "Finished", epoch: config.epochs, step: end.step, ...best, seconds })
    const summary: TrainSummary = {
      epoch: end.epoch - 1,
      step: end.step,
      resumed,
      complete,
      ...(lastEpoch !== undefined ? { lastEpoch } : {}),
      ...(lastEvaluation !== undefined ? { lastEvaluation } : {}),
      ...best,
      seconds
    }
    return summary
  }))
