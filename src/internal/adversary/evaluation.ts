/**
 * Evaluation over a dataset: clean accuracy, an ensemble of attacks on the correctly classified samples, the
 * gradient-masking measurements, a resumable per-batch record, and the summary with its flags.
 */
import { Context, Effect, Option } from "effect"
import type { Scope } from "effect"
import { decode } from "../../Config.ts"
import { ConfigError } from "../../Errors.ts"
import { acquire, Backend, Rng, tf } from "../../Tensor.ts"
import { margin } from "./losses.ts"
import { makeEnv, predictLogits, probe, validate } from "./run.ts"
import { checkCompatible, flatten, runStages } from "./ensemble.ts"
import { maskingFlags, sweepFlags } from "./flags.ts"
import type { Flag, MaskingStats } from "./flags.ts"
import { EvaluateOptions } from "./options.ts"
import * as Resume from "./resume.ts"
import type { BatchRecord } from "./resume.ts"
import { AttackError } from "./types.ts"
import { EvaluationWorkers, onWorkers } from "./workers.ts"
import type { AttackSettings, AttackShape, Classifier, Diagnostics, Norm, ResumeError } from "./types.ts"

/**
 * A dataset to evaluate on: NHWC images in [0, 1] as one tensor, as a flat Float32Array with its per-image shape,
 * or as ready-made batches. Labels are class indices.
 */
export type EvaluationData =
  | { readonly x: tf.Tensor4D; readonly y: tf.Tensor1D | ArrayLike<number> }
  | { readonly x: Float32Array; readonly shape: readonly [number, number, number]; readonly y: ArrayLike<number> }
  | { readonly batches: ReadonlyArray<{ readonly x: tf.Tensor4D; readonly y: tf.Tensor1D | ArrayLike<number> }> }

/** One stage of an evaluation, summarised. */
export interface StageSummary {
  readonly name: string
  readonly settings: AttackSettings
  /** robust accuracy after this stage and all before it */
  readonly robustAccuracy: number
  /** samples this stage broke first */
  readonly broken: number
  readonly queries: number
  /** forward / backward passes through the classifier, per sample, summed over the samples */
  readonly forward: number
  readonly backward: number
}

/** The record of one evaluation (JSON-safe). */
export interface EvaluationResult {
  readonly classifier: string
  /** stage names joined by "+" */
  readonly attack: string
  readonly gradientSource: string
  readonly norm: Norm
  readonly eps: number
  /** per stage: gradient steps (Square: query budget) */
  readonly steps: ReadonlyArray<number>
  /** per stage */
  readonly restarts: ReadonlyArray<number>
  readonly seed: number
  readonly backend: string
  /** samples evaluated (all of them when `complete`) */
  readonly samples: number
  readonly total: number
  readonly complete: boolean
  readonly cleanAccuracy: number
  readonly robustAccuracy: number
  readonly stages: ReadonlyArray<StageSummary>
  /**
   * forward / backward passes through the classifier, counted per sample and summed: the stages' and the
   * evaluation's own (clean prediction, zero-gradient probe); solver diagnostics are not counted
   */
  readonly passes: { readonly forward: number; readonly backward: number }
  readonly diagnostics: MaskingStats
  readonly flags: ReadonlyArray<Flag>
  /** per sample: 1 when clean-correct; the stage that first broke it (0 clean, -1 robust) */
  readonly perSample: { readonly cleanCorrect: ReadonlyArray<number>; readonly brokenAt: ReadonlyArray<number> }
}

interface Loader {
  readonly total: number
  readonly batches: number
  readonly load: (i: number) => { readonly x: tf.Tensor4D; readonly y: Int32Array; readonly start: number }
}

const labelsOf = (y: tf.Tensor1D | ArrayLike<number>): Int32Array =>
  y instanceof tf.Tensor ? Int32Array.from(y.dataSync()) : Int32Array.from(y)

/** Consecutive batches of `batchSize` over labels `y`; `images(start, n)` makes the images of rows start..start+n. */
const batched = (y: Int32Array, batchSize: number, images: (start: number, n: number) => tf.Tensor4D): Loader => ({
  total: y.length,
  batches: Math.ceil(y.length / batchSize),
  load: (i) => {
    const start = i * batchSize
    const n = Math.min(batchSize, y.length - start)
    return { x: images(start, n), y: y.slice(start, start + n), start }
  }
})

const loader = (data: EvaluationData, batchSize: number): Effect.Effect<Loader, ConfigError> =>
  Effect.gen(function*() {
    const bad = (path: string, message: string) => new ConfigError({ path: `data.${path}`, message })
    if ("batches" in data) {
      const starts: Array<number> = []
      const labels: Array<Int32Array> = []
      let total = 0
      for (let i = 0; i < data.batches.length; i++) {
        const b = data.batches[i]!
        const y = labelsOf(b.y)
        if (b.x.rank !== 4) return yield* bad(`batches[${i}].x`, `expected NHWC images, got shape [${b.x.shape}]`)
        if (y.length !== b.x.shape[0]) {
          return yield* bad(`batches[${i}].y`, `${y.length} labels for ${b.x.shape[0]} images`)
        }
        starts.push(total)
        labels.push(y)
        total += y.length
      }
      return {
        total,
        batches: data.batches.length,
        load: (i) => ({ x: data.batches[i]!.x.clone(), y: labels[i]!, start: starts[i]! })
      }
    }
    const y = labelsOf(data.y)
    if (data.x instanceof Float32Array) {
      const [h, w, c] = (data as { shape: readonly [number, number, number] }).shape
      const d = h * w * c
      if (!(d > 0) || data.x.length !== y.length * d) {
        return yield* bad("x", `${data.x.length} values are not ${y.length} images of shape [${h}, ${w}, ${c}]`)
      }
      const x = data.x
      return batched(y, batchSize, (start, n) => tf.tensor4d(x.slice(start * d, (start + n) * d), [n, h, w, c]))
    }
    const x = data.x as tf.Tensor4D
    if (x.rank !== 4) return yield* bad("x", `expected NHWC images, got shape [${x.shape}]`)
    if (x.shape[0] !== y.length) return yield* bad("y", `${y.length} labels for ${x.shape[0]} images`)
    return batched(y, batchSize, (start, n) => tf.slice(x, [start, 0, 0, 0], [n, -1, -1, -1]))
  })

const bits = (a: ArrayLike<number>): Array<number> => Array.from(a, (v) => (v ? 1 : 0))

/** One batch: clean prediction, zero-gradient probe, diagnostics, the stages, diagnostics at x_adv. */
export const runBatch = (
  classifier: Classifier,
  stages: ReadonlyArray<AttackShape>,
  x: tf.Tensor4D,
  labels: Int32Array,
  index: number,
  start: number,
  hash: string,
  salt: string | undefined
): Effect.Effect<BatchRecord, AttackError, Rng | Scope.Scope> =>
  Effect.gen(function*() {
    const rng = yield* Rng
    const n = labels.length
    const keys = Array.from({ length: n }, (_, i) => start + i)
    const y = yield* acquire(() => tf.tensor1d(labels, "int32"))
    const env = makeEnv("evaluate", classifier, rng, keys, salt)
    const fail = (what: string) => (u: unknown) =>
      u instanceof AttackError ? u : new AttackError({
        attack: "evaluate",
        message: `${what} failed on batch ${index}: ${u instanceof Error ? u.message : String(u)}`
      })
    const clean = yield* Effect.try({
      try: () => {
        // samples are named by their dataset index
        validate(env, x, y)
        return tf.tidy(() => {
          const scores = predictLogits(env, x, "clean", index)
          const cleanCorrect = tf.equal(tf.argMax(scores, 1), y).dataSync() as Uint8Array
          // margin of the gradient source: unlike cross-entropy it does not saturate on confident samples
          const p = probe(env, x, (logits) => margin(logits, y), 1, "zero-gradient", index)
          const zeroCoordinate = tf.equal(p.grad.reshape([n, -1]), 0)
          const zero = tf.all(zeroCoordinate, 1).dataSync() as Uint8Array
          const zeroCoordinates = tf.sum(tf.cast(zeroCoordinate, "int32")).dataSync()[0]!
          return { cleanCorrect: Uint8Array.from(cleanCorrect), zero: Uint8Array.from(zero), zeroCoordinates }
        })
      },
      catch: fail("clean prediction")
    })
    const diagnose = (at: tf.Tensor4D, what: string) =>
      classifier.diagnostics === undefined
        ? Effect.succeed(undefined)
        : Effect.try({
          try: (): Diagnostics | undefined => {
            let d: Diagnostics | undefined
            tf.tidy(() => {
              d = classifier.diagnostics!(at)
            })
            return d
          },
          catch: fail(what)
        })
    const diagClean = yield* diagnose(x, "diagnostics on x")
    const result = yield* runStages(stages, classifier, x, y, {
      keys,
      cleanCorrect: clean.cleanCorrect,
      ...(salt !== undefined ? { salt } : {})
    })
    const diagAdv = yield* diagnose(result.xAdv, "diagnostics on x_adv")
    const worst = (a?: number, b?: number) => (a === undefined ? b ?? null : b === undefined ? a : Math.max(a, b))
    const least = (a?: number, b?: number) => (a === undefined ? b ?? null : b === undefined ? a : Math.min(a, b))
    return {
      type: "batch" as const,
      index,
      start,
      count: n,
      hash,
      cleanCorrect: bits(clean.cleanCorrect),
      brokenAt: Array.from(result.brokenAt),
      zeroGradient: bits(clean.zero),
      zeroCoordinates: clean.zeroCoordinates,
      coordinates: x.size,
      convergedClean: diagClean?.forwardConverged === undefined ? null : bits(diagClean.forwardConverged),
      convergedAdv: diagAdv?.forwardConverged === undefined ? null : bits(diagAdv.forwardConverged),
      backwardResidual: worst(diagClean?.backwardResidual, diagAdv?.backwardResidual),
      gradientCosine: least(diagClean?.gradientCosine, diagAdv?.gradientCosine),
      queries: result.stages.map((s) => s.queries),
      forward: result.stages.map((s) => s.forward),
      backward: result.stages.map((s) => s.backward),
      overhead: [env.counts.forward, env.counts.backward]
    }
  })

/** The largest `eot` option among the stages (1 when none sets it). */
export const eotOf = (stages: ReadonlyArray<AttackShape>): number =>
  Math.max(1, ...stages.map((s) => (typeof s.settings.options["eot"] === "number" ? s.settings.options["eot"] : 1)))

/** Summarises batch records (in index order) into a result. */
const summarize = (
  meta: {
    readonly classifier: Classifier
    readonly stages: ReadonlyArray<AttackShape>
    readonly options: EvaluateOptions
    readonly seed: number
    readonly backend: string
    readonly total: number
  },
  records: ReadonlyArray<BatchRecord>
): EvaluationResult => {
  const { stages, options } = meta
  const cleanCorrect = records.flatMap((r) => r.cleanCorrect)
  const brokenAt = records.flatMap((r) => r.brokenAt)
  const zero = records.flatMap((r) => r.zeroGradient)
  const n = cleanCorrect.length
  const frac = (count: number) => (n === 0 ? 0 : count / n)
  const count = (p: (v: number) => boolean, a: ReadonlyArray<number>) => a.reduce((s, v) => s + (p(v) ? 1 : 0), 0)
  const summaries: Array<StageSummary> = stages.map((s, k) => ({
    name: s.name,
    settings: s.settings,
    robustAccuracy: frac(count((b) => b === -1 || b > k + 1, brokenAt)),
    broken: count((b) => b === k + 1, brokenAt),
    queries: records.reduce((q, r) => q + (r.queries[k] ?? 0), 0),
    forward: records.reduce((q, r) => q + (r.forward?.[k] ?? r.queries[k] ?? 0), 0),
    backward: records.reduce((q, r) => q + (r.backward?.[k] ?? 0), 0)
  }))
  const passes = {
    forward: summaries.reduce((a, s) => a + s.forward, 0) + records.reduce((a, r) => a + (r.overhead?.[0] ?? 0), 0),
    backward: summaries.reduce((a, s) => a + s.backward, 0) + records.reduce((a, r) => a + (r.overhead?.[1] ?? 0), 0)
  }
  const coordinates = records.reduce((a, r) => a + (r.coordinates ?? 0), 0)
  const notConverged = (key: "convergedClean" | "convergedAdv") =>
    records.length > 0 && records.every((r) => r[key] !== null)
      ? frac(records.reduce((s, r) => s + count((v) => v === 0, r[key]!), 0))
      : undefined
  const residuals = records.flatMap((r) => (r.backwardResidual === null ? [] : [r.backwardResidual]))
  const cosines = records.flatMap((r) => (r.gradientCosine === null ? [] : [r.gradientCosine]))
  // black-box stages that ran after at least one white-box stage
  const blackAfterWhite = stages.map((s, k) =>
    s.settings.kind === "black-box" && stages.slice(0, k).some((p) => p.settings.kind === "white-box")
  )
  const diagnostics: MaskingStats = {
    zeroGradientFraction: frac(count((v) => v === 1, zero)),
    zeroCoordinateFraction: coordinates > 0 ? records.reduce((a, r) => a + (r.zeroCoordinates ?? 0), 0) / coordinates : undefined,
    forwardNotConvergedClean: notConverged("convergedClean"),
    forwardNotConvergedAdv: notConverged("convergedAdv"),
    backwardResidual: residuals.length > 0 ? Math.max(...residuals) : undefined,
    gradientCosine: cosines.length > 0 ? Math.min(...cosines) : undefined,
    blackBoxFraction: blackAfterWhite.some((b) => b)
      ? frac(count((b) => b > 0 && blackAfterWhite[b - 1] === true, brokenAt))
      : undefined
  }
  const first = stages[0]!.settings
  return {
    classifier: meta.classifier.name,
    attack: stages.map((s) => s.name).join("+"),
    gradientSource: options.gradientSource,
    norm: first.norm,
    eps: first.eps,
    steps: stages.map((s) => s.settings.steps),
    restarts: stages.map((s) => s.settings.restarts),
    seed: meta.seed,
    backend: meta.backend,
    samples: n,
    total: meta.total,
    complete: n === meta.total,
    cleanAccuracy: frac(count((v) => v === 1, cleanCorrect)),
    robustAccuracy: frac(count((b) => b === -1, brokenAt)),
    stages: summaries,
    passes,
    diagnostics,
    flags: maskingFlags(diagnostics, options, meta.classifier, eotOf(stages)),
    perSample: { cleanCorrect, brokenAt }
  }
}

/**
 * Told `(0, batches)` when an evaluation starts and `(done, batches)` after each of its batches (resumed ones
 * included), for a progress display; the default does nothing.
 */
export const BatchProgress = Context.Reference<(done: number, total: number) => void>("effect-deq/Adversary/BatchProgress", {
  defaultValue: () => () => {}
})

/**
 * Evaluates `classifier` on `data` under `attacks` (one attack, or stages run as an ensemble): see
 * src/Adversary.ts `evaluate`.
 */
export const evaluate = (
  classifier: Classifier,
  data: EvaluationData,
  attacks: AttackShape | ReadonlyArray<AttackShape>,
  options: typeof EvaluateOptions.Encoded = {}
): Effect.Effect<EvaluationResult, AttackError | ConfigError | ResumeError, Rng> =>
  Effect.gen(function*() {
    // the classifier's own gradient-source label (a DEQ classifier's) unless the caller names one
    const o = yield* decode(EvaluateOptions, "evaluate")(
      options.gradientSource === undefined && classifier.gradientSource !== undefined
        ? { ...options, gradientSource: classifier.gradientSource }
        : options
    )
    const stages = flatten(attacks)
    yield* checkCompatible(stages, "attacks")
    const rng = yield* Rng
    const backend = Option.match(yield* Effect.serviceOption(Backend), {
      onNone: () => tf.getBackend(),
      onSome: (b) => b.name
    })
    const source = yield* loader(data, o.batchSize)
    if (source.total === 0) return yield* new ConfigError({ path: "data", message: "no samples to evaluate" })
    const meta = { classifier, stages, options: o, seed: rng.root, backend, total: source.total }
    const fingerprint: Resume.Fingerprint = {
      classifier: classifier.name,
      gradientSource: o.gradientSource,
      seed: rng.root,
      backend,
      batchSize: "batches" in data ? -1 : o.batchSize,
      total: source.total,
      stages: stages.map((s) => ({ name: s.name, settings: s.settings })),
      ...(o.salt !== undefined ? { salt: o.salt } : {})
    }
    const file = o.resumeFile
    const done = file === undefined ? new Map<number, BatchRecord>() : yield* Resume.open(file, fingerprint)
    const records: Array<BatchRecord> = []
    const report = yield* Effect.service(BatchProgress)
    report(0, source.batches)
    // with worker threads (workers.ts) the fresh batches go to them, in any order; records stay in index order
    const workers = Option.getOrUndefined(yield* Effect.serviceOption(EvaluationWorkers))
    const recipe = workers?.describe(classifier, stages)
    const remote: Array<number> = []
    let fresh = 0
    for (let i = 0; i < source.batches; i++) {
      const previous = done.get(i)
      if (previous === undefined && o.maxBatches !== undefined && fresh >= o.maxBatches) continue
      if (previous === undefined && recipe !== undefined) {
        remote.push(i)
        fresh++
        continue
      }
      const record = yield* Effect.scoped(Effect.gen(function*() {
        const batch = yield* acquire(() => source.load(i))
        const hash = Resume.hashBatch(batch.x.dataSync() as Float32Array, batch.y)
        if (previous !== undefined) {
          if (previous.hash !== hash || previous.start !== batch.start || previous.count !== batch.y.length) {
            return yield* new ConfigError({
              path: "data",
              message: `batch ${i} differs from the one recorded in the resume file ${file}`
            })
          }
          return previous
        }
        const r = yield* runBatch(classifier, stages, batch.x, batch.y, i, batch.start, hash, o.salt)
        if (file !== undefined) yield* Resume.append(file, r)
        return r
      }))
      if (previous === undefined) {
        fresh++
        yield* Effect.logDebug(`evaluate ${classifier.name}: batch ${i + 1}/${source.batches}`)
      }
      records.push(record)
      report(i + 1, source.batches)
    }
    if (workers !== undefined && remote.length > 0) {
      const load = (i: number) => Effect.scoped(Effect.map(acquire(() => source.load(i)), (b) => {
        const x = Float32Array.from(b.x.dataSync() as Float32Array)
        const shape = b.x.shape as [number, number, number, number]
        return { x, shape, labels: Int32Array.from(b.y), index: i, start: b.start, hash: Resume.hashBatch(x, b.y), salt: o.salt, seed: rng.root }
      }))
      const more = yield* onWorkers(workers, recipe, remote, load, (r) => (file === undefined ? Effect.void : Resume.append(file, r)))
      records.push(...more)
      records.sort((a, b) => a.index - b.index)
      report(source.batches, source.batches)
    }
    return summarize(meta, records)
  })

/**
 * Evaluates over several epsilons and adds the "accuracy-not-decreasing" flag where robust accuracy does not fall
 * as epsilon grows. `resumeFile`, when given, is a prefix: one file per epsilon.
 */
export const evaluateSweep = <E>(
  classifier: Classifier,
  data: EvaluationData,
  epsilons: ReadonlyArray<number>,
  attacksFor: (eps: number) => Effect.Effect<AttackShape | ReadonlyArray<AttackShape>, E>,
  options: typeof EvaluateOptions.Encoded = {}
): Effect.Effect<Array<EvaluationResult>, E | AttackError | ConfigError | ResumeError, Rng> =>
  Effect.gen(function*() {
    const results: Array<EvaluationResult> = []
    for (const eps of epsilons) {
      const attacks = yield* attacksFor(eps)
      const opts = options.resumeFile === undefined ? options : { ...options, resumeFile: `${options.resumeFile}.eps-${eps}.jsonl` }
      results.push(yield* evaluate(classifier, data, attacks, opts))
    }
    return withSweepFlags(results)
  })

/** Adds the epsilon-sweep flags to results of one classifier and attack at several epsilons. */
export const withSweepFlags = (results: ReadonlyArray<EvaluationResult>): Array<EvaluationResult> => {
  const extra = sweepFlags(results)
  return results.map((r, i) => (extra[i]!.length === 0 ? r : { ...r, flags: [...r.flags, ...extra[i]!] }))
}
