/**
 * Claim (Yang et al., ICML 2023, Sec. 3.1): adversarial training leaves the intermediate states z_1..z_N of a
 * DEQ unregulated: they are high in prediction entropy and weak under attack, compared with the final state.
 *
 * Trains an FC DEQ twice (standard training, plain PGD-AT) and reads every state z_n with Dynamics.trajectory,
 * on clean test images and on PGD inputs made with intermediate-state gradients (the 12-point grid
 * lambda {1, 0.5} x states z_{N/4}, z_{N/2}, z_N x K_a {1, 5}; per state and sample the worst case over the 12
 * inputs). Each attack keeps per sample the first iterate that fools the read-out h(z_N); that input is then read
 * out at every state (as the paper's per-state evaluation does), so the per-state rows are not per-state attacks.
 *
 *   npx tsx examples/dynamics-under-at.ts [--quick]
 */
import { Effect } from "effect"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import { tf } from "../src/Tensor.ts"
import {
  classifier,
  deqOf,
  evalPgd,
  type ExampleOptions,
  loadData,
  num,
  pct,
  runExample,
  runIfScript,
  type Scale,
  smallGrid,
  table,
  trainModel
} from "./common.ts"

/** Per-state numbers of one model: clean and worst-case adversarial accuracy and mean entropy of h(z_n). */
export interface StateRow {
  readonly n: number
  readonly cleanAccuracy: number
  readonly cleanEntropy: number
  readonly robustAccuracy: number
  /** mean over the grid's adversarial inputs of the mean entropy of h(z_n) */
  readonly advEntropy: number
  readonly relResidual: number
}

/** One model's trajectory report. */
export interface ModelDynamics {
  readonly model: string
  readonly trainSeconds: number
  readonly states: ReadonlyArray<StateRow>
}

/** What the example writes. */
export interface DynamicsResult {
  readonly eps: number
  readonly grid: string
  readonly models: ReadonlyArray<ModelDynamics>
}

/** Per-state dynamics of a trained model on `data.test`, clean and under the grid's PGD inputs. */
const dynamicsOf = (deq: Dynamics.Deq, data: Data.Dataset, scale: Scale) =>
  Effect.gen(function*() {
    const attack = yield* evalPgd(scale)
    const sources = Adversary.Grid.sources(smallGrid(scale))
    const N = scale.steps
    const total = data.test.count
    const cleanCorrect = new Float64Array(N), cleanEnt = new Float64Array(N), rel = new Float64Array(N)
    const robust = new Float64Array(N), advEnt = new Float64Array(N)
    for (let start = 0; start < total; start += scale.evalBatch) {
      const idx = Int32Array.from({ length: Math.min(scale.evalBatch, total - start) }, (_, j) => start + j)
      yield* Effect.scoped(Effect.gen(function*() {
        const { x, y } = yield* Effect.acquireRelease(
          Effect.sync(() => Data.toTensors(data.test, idx)),
          (t) => Effect.sync(() => tf.dispose([t.x, t.y]))
        )
        const b = idx.length
        const clean = Dynamics.trajectory(deq, x, y, { steps: N })
        clean.states.forEach((s, n) => {
          cleanCorrect[n]! += (s.accuracy ?? 0) * b
          cleanEnt[n]! += s.meanEntropy * b
          rel[n]! += s.meanRelResidual * b
        })
        // per state and sample: correct under every one of the grid's adversarial inputs (and clean)
        const allCorrect = clean.states.map((s) => Uint8Array.from(s.predictions, (p, j) => (p === data.test.labels[start + j] ? 1 : 0)))
        for (const source of sources) {
          const result = yield* attack.perturb(classifier(deq, scale, source), x, y)
          const adv = Dynamics.trajectory(deq, result.xAdv, y, { steps: N })
          adv.states.forEach((s, n) => {
            advEnt[n]! += (s.meanEntropy * b) / sources.length
            for (let j = 0; j < b; j++) if (s.predictions[j] !== data.test.labels[start + j]) allCorrect[n]![j] = 0
          })
        }
        allCorrect.forEach((c, n) => {
          robust[n]! += c.reduce((a, v) => a + v, 0)
        })
      }))
    }
    return Array.from({ length: N }, (_, n): StateRow => ({
      n: n + 1,
      cleanAccuracy: cleanCorrect[n]! / total,
      cleanEntropy: cleanEnt[n]! / total,
      robustAccuracy: robust[n]! / total,
      advEntropy: advEnt[n]! / total,
      relResidual: rel[n]! / total
    }))
  })

/** The example: standard training vs plain PGD-AT, every state read out. */
export const main = (options: ExampleOptions = {}) =>
  runExample("dynamics-under-at", options, (scale, seed) =>
    Effect.gen(function*() {
      const data = yield* loadData(scale)
      const models: Array<ModelDynamics> = []
      for (const method of ["standard", "pgd-at"] as const) {
        const trained = yield* trainModel(data, scale, { method, seed })
        const states = yield* dynamicsOf(deqOf(trained.model, scale), data, scale)
        models.push({ model: trained.label, trainSeconds: trained.seconds, states })
      }
      const grid = Adversary.Grid.label(smallGrid(scale))
      const markdown = table(
        ["state", ...models.flatMap((m) => [`${m.model} clean`, `${m.model} robust`, `${m.model} H clean`, `${m.model} H adv`, `${m.model} rel res`])],
        models[0]!.states.map((_, n) => [
          `z_${n + 1}`,
          ...models.flatMap((m) => {
            const s = m.states[n]!
            return [pct(s.cleanAccuracy), pct(s.robustAccuracy), num(s.cleanEntropy), num(s.advEntropy), num(s.relResidual, 4)]
          })
        ])
      ) + `\n\nrobust: PGD-${scale.evalSteps} (eps ${scale.eps} Linf; each attack keeps per sample the first iterate that ` +
        `fools the read-out h(z_${scale.steps}), then that input is read out at every state), per state the worst case over the ` +
        `${grid} inputs; H: mean prediction entropy of h(z_n) (max log 10 = 2.303); rel res: ||f(z_n) - z_n|| / ||f(z_n)|| (clean).`
      const result: DynamicsResult = { eps: scale.eps, grid, models }
      return { result, markdown }
    }))

runIfScript(import.meta.url, main)
