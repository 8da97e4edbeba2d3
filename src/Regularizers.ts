/**
 * The regulations of Yang et al. (ICML 2023) and the usual DEQ regularizers, each a service with Layers, so an
 * ablation turns one on or off by providing a different layer:
 *
 * - {@link TrainReadOut}: which state the training loss (and the training attack) reads. {@link finalState} is
 *   the baseline; {@link randomIntermediateStates} is Sec. 3.3: every forward call draws n ~ U{1..N} (one n per
 *   call, shared by the batch, as the official code; per sample as an option), solves exactly n steps, applies the
 *   phantom tail (f, then 5 damped steps with lambda 0.5) and reads out. Evaluation uses n = N. It also says
 *   whether training forwards draw variational dropout masks, and holds the optional fixed-point correction loss.
 * - {@link JacobianPenalty}: Hutchinson estimate of ||J_f||_F^2 at the read-out state, with a weight, a per-batch
 *   probability and a cut-off epoch ({@link jacobian} / {@link noJacobian}).
 * - {@link InputDefence}: an inference-time `Dynamics.Defence`; {@link entropyReduction} is Sec. 3.2 (input
 *   entropy reduction along the dynamics), {@link noDefence} the plain read-out.
 *
 * @example
 * ```ts
 * import { Effect, Layer } from "effect"
 * import type * as Data from "effect-deq/Data"
 * import type { Solver } from "effect-deq/FixedPoint"
 * import type * as Models from "effect-deq/Models"
 * import * as Regularizers from "effect-deq/Regularizers"
 * import { Rng } from "effect-deq/Tensor"
 * import * as Train from "effect-deq/Train"
 *
 * declare const model: Models.Model
 * declare const data: Data.Dataset
 * declare const config: Train.TrainConfig
 * declare const solver: Layer.Layer<Solver>
 *
 * // the same program with and without random intermediate states (Sec. 3.3)
 * const ablation = (ris: boolean) =>
 *   Train.fit(model, data, config).pipe(
 *     Effect.provide(Layer.mergeAll(
 *       ris ? Regularizers.randomIntermediateStates({ max: 8 }) : Regularizers.finalState(),
 *       Regularizers.jacobian({ weight: 0.4, probability: 0.02, untilEpoch: 90 }),
 *       Train.attackLayer(config),
 *       solver,
 *       Rng.seeded(42)
 *     ))
 *   )
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Schema } from "effect"
import { decode, defaulted, NonNegative, NonNegativeInt, PositiveInt, Probability } from "./Config.ts"
import * as Dynamics from "./Dynamics.ts"
import type { ConfigError } from "./Errors.ts"
import type { FixedPointMap } from "./FixedPoint.ts"
import { type EntropySettings, meanEntropy as meanEntropyInternal, runEntropyReduction } from "./internal/regularizers/entropy.ts"
import { hutchinson as hutchinsonInternal, rowsOfDraw as rowsOfDrawInternal } from "./internal/regularizers/jacobian.ts"
import { type Stream, tf } from "./Tensor.ts"

// ---------------------------------------------------------------------------------------------------------------
// Training read-out
// ---------------------------------------------------------------------------------------------------------------

/**
 * The fixed-point correction loss (TorchDEQ style): weight x sum_i gamma^(k - i) CE(h(tail(z_{n_i}))) over
 * k = `states` states evenly spaced along the trajectory (n_i = round(i N / k), so n_k = N), added to the training
 * loss. All k states come from one solve of N steps.
 *
 * @category config
 */
export class CorrectionOptions extends Schema.Class<CorrectionOptions>("CorrectionOptions")({
  states: defaulted(PositiveInt, 2),
  gamma: defaulted(Probability, 0.8),
  weight: defaulted(NonNegative, 1)
}) {}

/**
 * Options shared by the training read-outs: `dropout` (default true) makes training forwards draw variational
 * dropout masks (one per forward call; models without dropout ignore it); `correction` adds the fixed-point
 * correction loss.
 *
 * @category config
 */
export class ReadOutOptions extends Schema.Class<ReadOutOptions>("ReadOutOptions")({
  dropout: defaulted(Schema.Boolean, true),
  correction: Schema.optional(CorrectionOptions)
}) {}

/**
 * Random intermediate states as a run configures them (docs/method.md, "Training"): `max` (default: the solver's
 * budget N, filled in by Train from its solver config) and `perSample` (one n per sample instead of one per call).
 *
 * @category config
 */
export class RandomStatesOptions extends Schema.Class<RandomStatesOptions>("RandomStatesOptions")({
  max: Schema.optional(PositiveInt),
  perSample: defaulted(Schema.Boolean, false)
}) {}

/**
 * Options of the {@link randomIntermediateStates} layer: those of {@link RandomStatesOptions} with `max`
 * required, plus the read-out options.
 *
 * @category config
 */
export class RandomIntermediateStatesOptions
  extends Schema.Class<RandomIntermediateStatesOptions>("RandomIntermediateStatesOptions")({
    ...RandomStatesOptions.fields,
    max: PositiveInt,
    ...ReadOutOptions.fields
  })
{}

/**
 * Which state training reads: `readOut` for the loss and for the training attack, `evalReadOut` for evaluation
 * (n = N under random intermediate states). `dropout`: training forwards draw variational dropout masks.
 * `correction`: the optional fixed-point correction loss.
 *
 * @category services
 */
export class TrainReadOut extends Context.Service<TrainReadOut, {
  readonly name: string
  readonly readOut: Dynamics.ReadOut
  readonly evalReadOut: Dynamics.ReadOut
  readonly dropout: boolean
  readonly correction?: CorrectionOptions
}>()("effect-deq/TrainReadOut") {}

const readOutCommon = (o: ReadOutOptions) => ({
  dropout: o.dropout,
  ...(o.correction !== undefined ? { correction: o.correction } : {})
})

/**
 * The baseline read-out as a value: the final state of the solve (the deq's solve options, e.g. 8 Broyden steps
 * returning the lowest-residual iterate) with the deq's gradient, for training and evaluation alike. Options are
 * decoded strictly (a bad key is a ConfigError naming it).
 *
 * @category constructors
 */
export const makeFinalState = (
  options: typeof ReadOutOptions.Encoded = {}
): Effect.Effect<TrainReadOut["Service"], ConfigError> =>
  Effect.map(decode(ReadOutOptions, "finalState")(options), (o) =>
    TrainReadOut.of({
      name: "final",
      readOut: Dynamics.readOut.final,
      evalReadOut: Dynamics.readOut.final,
      ...readOutCommon(o)
    }))

/**
 * Random intermediate states (Sec. 3.3; docs/method.md, "Training") as a value: training forwards draw
 * n ~ U{1..max} per call (per sample with `perSample`), solve exactly n steps and apply the deq's tail
 * (Dynamics.paperTail by default); evaluation reads z_max the same way (`Dynamics.readOut.state(max)`).
 *
 * @category constructors
 */
export const makeRandomIntermediateStates = (
  options: typeof RandomIntermediateStatesOptions.Encoded
): Effect.Effect<TrainReadOut["Service"], ConfigError> =>
  Effect.map(decode(RandomIntermediateStatesOptions, "randomIntermediateStates")(options), (o) =>
    TrainReadOut.of({
      name: `random-states(1..${o.max}${o.perSample ? ", per sample" : ""})`,
      readOut: Dynamics.readOut.randomState(o.max, { perSample: o.perSample }),
      evalReadOut: Dynamics.readOut.state(o.max),
      ...readOutCommon(o)
    }))

/**
 * Layer of the baseline read-out ({@link makeFinalState}).
 *
 * @category layers
 */
export const finalState = (options: typeof ReadOutOptions.Encoded = {}): Layer.Layer<TrainReadOut, ConfigError> =>
  Layer.effect(TrainReadOut, makeFinalState(options))

/**
 * Layer of random intermediate states ({@link makeRandomIntermediateStates}); paper: max 8, one n per call.
 *
 * @category layers
 */
export const randomIntermediateStates = (
  options: typeof RandomIntermediateStatesOptions.Encoded
): Layer.Layer<TrainReadOut, ConfigError> => Layer.effect(TrainReadOut, makeRandomIntermediateStates(options))

/**
 * A read-out with its solver budget moved by `delta` steps (the F_THRES jitter of Jacobian batches,
 * docs/method.md, "Training"): RandomState max and State n move (never below 1); Final is unchanged (move the
 * deq's maxIter instead).
 *
 * @category combinators
 */
export const jitterReadOut = (r: Dynamics.ReadOut, delta: number): Dynamics.ReadOut => {
  switch (r._tag) {
    case "RandomState":
      return Dynamics.readOut.randomState(Math.max(1, r.max + delta), { perSample: r.perSample ?? false })
    case "State":
      return Dynamics.readOut.state(Math.max(1, r.n + delta))
    default:
      return r
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Jacobian penalty
// ---------------------------------------------------------------------------------------------------------------

/**
 * The rows of a batch one call computes: rows `offset`.. of a batch of `total` rows (a shard of a data-parallel
 * step). Batch-shaped draws (Jacobian probes, dropout masks) are drawn at the whole batch's shape and the call
 * takes its rows, and batch means divide by `total`, so the shards of a batch sum to the whole batch.
 *
 * @category models
 */
export interface Rows {
  readonly offset: number
  readonly total: number
}

/**
 * A batch-shaped random draw for the {@link Rows} of a batch: `draw` is called once at the whole batch's shape and
 * the rows are taken (no rows: `draw(shape)` itself), so a shard gets exactly its rows of the batch's draw.
 *
 * @category models
 */
export const rowsOfDraw: (
  shape: ReadonlyArray<number>,
  rows: Rows | undefined,
  draw: (shape: Array<number>) => tf.Tensor
) => tf.Tensor = rowsOfDrawInternal

/**
 * Hutchinson estimate of ||J_f(z)||_F^2: the mean over `probes` probe vectors v (Gaussian or Rademacher, seeded)
 * of sum_b ||v_b^T J_f(z_b)||^2, divided by z.size (= B N) when `normalize` (default, as locuslab's
 * `jac_loss_estimate`). v^T J is a VJP; inside `tf.variableGrads` the estimate is differentiable w.r.t. the
 * parameters f closes over (double backward). z is a constant point. With `rows`, z holds those rows of a larger
 * batch: probes are that batch's rows and the normalisation is the whole batch's. Plain tfjs; the caller owns the
 * scalar.
 *
 * @category jacobian
 */
export const hutchinson = (
  f: FixedPointMap | ((z: tf.Tensor) => tf.Tensor),
  z: tf.Tensor,
  options: {
    readonly probes?: number
    readonly distribution?: "normal" | "rademacher"
    readonly seed?: number
    readonly normalize?: boolean
    readonly rows?: Rows
  } = {}
): tf.Scalar =>
  hutchinsonInternal(f, z, {
    probes: options.probes ?? 2,
    distribution: options.distribution ?? "normal",
    seed: options.seed ?? 0,
    normalize: options.normalize ?? true,
    ...(options.rows !== undefined ? { rows: options.rows } : {})
  })

/** lo <= hi */
const Jitter = Schema.Tuple([Schema.Int, Schema.Int]).check(
  Schema.makeFilter(([lo, hi]) => lo <= hi ? undefined : `[${lo}, ${hi}] has lo > hi`)
)

/**
 * Settings of the Jacobian penalty (docs/method.md, "Training"); the defaults are the paper's (locuslab MDEQ):
 * weight 0.4, probability 0.02 per batch, 2 Gaussian probes. `untilEpoch`: active for epochs < it (paper: 90).
 * `jitter` [lo, hi]: on batches with the penalty the solver budget moves by a uniform integer in lo..hi (paper
 * [-2, 1]).
 *
 * @category config
 */
export class JacobianOptions extends Schema.Class<JacobianOptions>("JacobianOptions")({
  weight: defaulted(NonNegative, 0.4),
  probability: defaulted(Probability, 0.02),
  untilEpoch: Schema.optional(PositiveInt),
  probes: defaulted(PositiveInt, 2),
  distribution: defaulted(Schema.Literals(["normal", "rademacher"]), "normal"),
  jitter: Schema.optional(Jitter)
}) {}

/**
 * The Jacobian penalty of training. `active(epoch, stream)` draws once from `stream` and says whether this batch
 * computes it (epoch < untilEpoch, 1-based, and a uniform draw < probability); `penalty(f, z, seed, rows)` is
 * weight x {@link hutchinson} (normalised; `rows` as there). `jitter` [lo, hi] moves the solver budget of the
 * batch's training forwards by a uniform integer in lo..hi when the penalty is active.
 *
 * @category services
 */
export class JacobianPenalty extends Context.Service<JacobianPenalty, {
  readonly name: string
  readonly enabled: boolean
  readonly weight: number
  readonly probability: number
  readonly untilEpoch?: number
  readonly probes: number
  readonly distribution: "normal" | "rademacher"
  readonly jitter?: readonly [number, number]
  readonly active: (epoch: number, stream: Stream) => boolean
  readonly penalty: (f: FixedPointMap, z: tf.Tensor, seed: number, rows?: Rows) => tf.Scalar
}>()("effect-deq/JacobianPenalty") {}

const jacobianOf = (o: JacobianOptions): JacobianPenalty["Service"] => {
  const { weight, probability, probes, distribution, untilEpoch: until } = o
  return JacobianPenalty.of({
    name: `jacobian(${weight} w.p. ${probability}${until !== undefined ? `, until epoch ${until}` : ""})`,
    enabled: weight > 0 && probability > 0,
    weight,
    probability,
    ...(until !== undefined ? { untilEpoch: until } : {}),
    probes,
    distribution,
    ...(o.jitter !== undefined ? { jitter: o.jitter } : {}),
    active: (epoch, stream) => {
      const u = stream.next()
      return weight > 0 && (until === undefined || epoch < until) && u < probability
    },
    penalty: (f, z, seed, rows) =>
      tf.mul(
        hutchinsonInternal(f, z, { probes, distribution, seed, normalize: true, ...(rows !== undefined ? { rows } : {}) }),
        weight
      ) as tf.Scalar
  })
}

/**
 * The Jacobian penalty as a value (see {@link JacobianPenalty}); options are decoded strictly (a bad key or a
 * jitter with lo > hi is a ConfigError naming it).
 *
 * @category constructors
 */
export const makeJacobian = (
  options: typeof JacobianOptions.Encoded = {}
): Effect.Effect<JacobianPenalty["Service"], ConfigError> =>
  Effect.map(decode(JacobianOptions, "jacobian")(options), jacobianOf)

/**
 * Layer of the Jacobian penalty ({@link makeJacobian}).
 *
 * @category layers
 */
export const jacobian = (options: typeof JacobianOptions.Encoded = {}): Layer.Layer<JacobianPenalty, ConfigError> =>
  Layer.effect(JacobianPenalty, makeJacobian(options))

/**
 * No Jacobian penalty (never active).
 *
 * @category layers
 */
export const noJacobian: Layer.Layer<JacobianPenalty> = Layer.sync(JacobianPenalty, () => ({
  ...jacobianOf(new JacobianOptions({ weight: 0, probability: 0 })),
  name: "none"
}))

// ---------------------------------------------------------------------------------------------------------------
// Input entropy reduction
// ---------------------------------------------------------------------------------------------------------------


/**
 * Settings of input entropy reduction (docs/method.md, "Input entropy reduction"; defaults are the paper's
 * CIFAR-10 values):
 * - `rounds` (4) rounds of `solverSteps` (T_f = 2) solver steps, warm-started from the round's `warmStart` state
 *   ("best": the lowest-residual iterate, as the official code; "last": the last iterate) and, with Broyden, from
 *   the previous low-rank memory; with another solver the warm start carries no memory.
 * - then `inputSteps` (R = 10) steps x' <- clip(x' - alpha sign(grad_x' H), x - eps, x + eps) clipped to [0, 1],
 *   H the mean prediction entropy of h(f(z; inj(x'))) with z held fixed (alpha 2/255, eps 8/255);
 * - then f switches to inj(x') and, with `lift` and Broyden, the last rank-1 pair is lifted (FixedPoint.liftBroyden).
 * - `state`: the recorded raw iterate read out (1-based; default rounds x solverSteps = z_8, docs/method.md,
 *   "Evaluation protocol");
 *   `readOut` "state" gives h(z_state) (value) with the gradient of the tail, "tail" gives h(tail(z_state)).
 * - `tailK` / `tailLambda`: the unrolled tail from the read-out state under the last injection (5, 0.5).
 *
 * @category config
 */
export class EntropyReductionOptions extends Schema.Class<EntropyReductionOptions>("EntropyReductionOptions")({
  rounds: defaulted(PositiveInt, 4),
  solverSteps: defaulted(PositiveInt, 2),
  inputSteps: defaulted(NonNegativeInt, 10),
  alpha: defaulted(NonNegative, 2 / 255),
  eps: defaulted(NonNegative, 8 / 255),
  state: Schema.optional(PositiveInt),
  readOut: defaulted(Schema.Literals(["state", "tail"]), "state"),
  warmStart: defaulted(Schema.Literals(["best", "last"]), "best"),
  lift: defaulted(Schema.Boolean, true),
  tailK: defaulted(NonNegativeInt, 5),
  tailLambda: defaulted(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1, exclusiveMinimum: true })), 0.5)
}) {}

/**
 * Preset settings of entropy reduction.
 * - `cifar`: the paper's (alpha 2/255, eps 8/255, 4 rounds, T_f 2, R 10).
 * - `mnist`: eps 0.1, alpha 0.02. MNIST attacks use eps up to 0.3 (about 10x CIFAR's 8/255); we keep the
 *   purification radius at the tiny-run attack eps of 0.1, since a 0.3-ball lets x' move far enough to
 *   erase strokes, and alpha = eps / 5 so the R = 10 sign steps still cover 2 eps (the paper's covers 2.5 eps)
 *   while each step stays well below the 0.3 scale.
 *
 * @category config
 */
export const entropyReductionPresets = {
  cifar: { rounds: 4, solverSteps: 2, inputSteps: 10, alpha: 2 / 255, eps: 8 / 255 },
  mnist: { rounds: 4, solverSteps: 2, inputSteps: 10, alpha: 0.02, eps: 0.1 }
} as const

/**
 * The inference-time defence a classifier runs: a `Dynamics.Defence` plus whether it changes anything.
 *
 * @category services
 */
export class InputDefence extends Context.Service<InputDefence, Dynamics.Defence & { readonly enabled: boolean }>()(
  "effect-deq/InputDefence"
) {}

/**
 * Input entropy reduction (Sec. 3.2) as a `Dynamics.Defence` value; options are decoded strictly (a bad key is a
 * ConfigError naming it).
 *
 * `run(deq, x)` returns the logits h(z_state) of the defended trajectory and the purified input x' (for BPDA).
 * Differentiability: called inside `tf.grad`, the logits are differentiable w.r.t. x through the whole defence.
 * The solver states and the inner entropy gradients are computed off the tape: sign() has zero derivative almost
 * everywhere, so the sign step is a constant s_t, and the solver trajectory is a constant as in every read-out.
 * On the tape stay: the chain x'_{t+1} = P(x'_t - alpha s_t), P the projection to the eps-ball and [0, 1] made
 * straight-through (its value the clip, its Jacobian the identity, so dx'/dx = I), the injections inj(x') of each round,
 * and the unrolled read-out tail from z_state under the last injection. With `readOut: "state"` the value is
 * exactly h(z_state) and the gradient that of h(tail(z_state; inj(x'))); with "tail" both are the tail's.
 *
 * @category constructors
 */
export const makeEntropyReduction = (
  options: typeof EntropyReductionOptions.Encoded = {}
): Effect.Effect<InputDefence["Service"], ConfigError> =>
  Effect.map(decode(EntropyReductionOptions, "entropyReduction")(options), (o) => {
    const settings: EntropySettings = { ...o }
    return InputDefence.of({
      name: `entropy-reduction(${o.rounds}x(${o.solverSteps} solver, ${o.inputSteps} input steps), eps ${o.eps})`,
      randomized: false,
      enabled: true,
      run: (deq, x) => runEntropyReduction(settings, deq, x)
    })
  })

/**
 * Layer of input entropy reduction ({@link makeEntropyReduction}).
 *
 * @category layers
 */
export const entropyReduction = (
  options: typeof EntropyReductionOptions.Encoded = {}
): Layer.Layer<InputDefence, ConfigError> => Layer.effect(InputDefence, makeEntropyReduction(options))

/**
 * The undefended read-out as a defence value: logits of `readOut` (default the final state), x unchanged.
 *
 * @category constructors
 */
export const makeNoDefence = (readOut: Dynamics.ReadOut = Dynamics.readOut.final): InputDefence["Service"] =>
  InputDefence.of({
    name: "none",
    randomized: false,
    enabled: false,
    run: (deq, x) => ({ logits: Dynamics.logits(deq, x, readOut), purified: x.clone() as tf.Tensor4D })
  })

/**
 * No inference-time defence ({@link makeNoDefence} with the final state).
 *
 * @category layers
 */
export const noDefence: Layer.Layer<InputDefence> = Layer.sync(InputDefence, () => makeNoDefence())

/**
 * Mean over the batch of the prediction entropy -sum_c p_c log p_c of logits [B, C] (what entropy reduction
 * lowers). Plain tfjs; the caller owns the scalar.
 *
 * @category entropy
 */
export const meanEntropy: (logits: tf.Tensor) => tf.Scalar = meanEntropyInternal
