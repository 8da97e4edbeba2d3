/**
 * The services a run builds from its config (re-exported by src/Train.ts): the solver, the training read-out, the
 * Jacobian penalty, the training attack and the random source. Here so that both `Train.run` and a training worker
 * thread (workersEntry.ts) build the same services from the same config.
 *
 * @internal
 */
import { Layer } from "effect"
import { Attack, pgd as pgdAttack } from "../../Adversary.ts"
import type { ConfigError } from "../../Errors.ts"
import { Solver } from "../../FixedPoint.ts"
import * as Regularizers from "../../Regularizers.ts"
import { Rng } from "../../Tensor.ts"
import type { TrainConfig } from "./config.ts"

/**
 * The solver a config names, as a Layer (a bad option is a ConfigError naming it).
 */
export const solverLayer = (config: TrainConfig): Layer.Layer<Solver, ConfigError> => {
  const s = config.solver
  switch (s._tag) {
    case "picard": {
      const { _tag, ...options } = s
      return Solver.picard(options)
    }
    case "anderson": {
      const { _tag, ...options } = s
      return Solver.anderson(options)
    }
    case "broyden": {
      const { _tag, ...options } = s
      return Solver.broyden(options)
    }
  }
}

/**
 * The training read-out a config names: random intermediate states (max defaulting to the solver's maxIter) or
 * the final state; with its dropout switch and correction loss.
 */
export const readOutLayer = (config: TrainConfig): Layer.Layer<Regularizers.TrainReadOut, ConfigError> => {
  const reg = config.regularizers
  const common = {
    dropout: reg.dropout,
    ...(reg.correction !== undefined ? { correction: reg.correction } : {})
  }
  return reg.randomStates === undefined ?
    Regularizers.finalState(common) :
    Regularizers.randomIntermediateStates({
      ...common,
      max: reg.randomStates.max ?? config.solver.maxIter,
      perSample: reg.randomStates.perSample
    })
}

/**
 * The Jacobian penalty a config names (or none).
 */
export const jacobianLayer = (config: TrainConfig): Layer.Layer<Regularizers.JacobianPenalty, ConfigError> => {
  const j = config.regularizers.jacobian
  return j === undefined ? Regularizers.noJacobian : Regularizers.jacobian(j)
}

/**
 * The training attack a config names: PGD (Linf, CE, one restart, last iterate) with the config's eps, step size
 * and steps, uniform start clamped to [0, 1] unless `start: "none"`. (TRADES runs its own KL maximisation with the
 * same settings; the Attack service is then unused.)
 */
export const attackLayer = (config: TrainConfig): Layer.Layer<Attack, ConfigError> =>
  Layer.effect(
    Attack,
    pgdAttack({
      eps: config.attack.eps,
      stepSize: config.attack.stepSize,
      steps: config.attack.steps,
      randomStart: config.attack.start !== "none",
      randomStartClamp: true,
      keepBest: false
    })
  )

/**
 * Every service a run needs, from its config: Solver, TrainReadOut, JacobianPenalty, Attack and Rng (seeded with
 * `config.seed`).
 */
export const layersFromConfig = (
  config: TrainConfig
): Layer.Layer<Solver | Regularizers.TrainReadOut | Regularizers.JacobianPenalty | Attack | Rng, ConfigError> =>
  Layer.mergeAll(
    solverLayer(config),
    readOutLayer(config),
    jacobianLayer(config),
    attackLayer(config),
    Rng.seeded(config.seed)
  )
