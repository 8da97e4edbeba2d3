/**
 * Claim (Yang et al., ICML 2023, Sec. 3.2): updating the input along the dynamics to lower the prediction
 * entropy (input entropy reduction) raises robust accuracy. The paper measures it with a non-adaptive PGD
 * (gradients of the undefended DEQ, method.md 7.2); this example also runs adaptive attacks.
 *
 * Trains one FC DEQ with plain PGD-AT, then evaluates h(z_N) without the defence and with
 * `Regularizers.makeEntropyReduction(entropyReductionPresets.mnist)` under Adversary.deqClassifier's modes:
 * "paper" (non-adaptive), "bpda" (identity backward of the purification), "full" (through the whole defence),
 * and BPDA with EOT over 4 draws.
 *
 *   npx tsx examples/entropy-reduction.ts [--quick]
 */
import { Effect } from "effect"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import * as Regularizers from "../src/Regularizers.ts"
import { tf } from "../src/Tensor.ts"
import {
  classifier,
  deqOf,
  evalPgd,
  type ExampleOptions,
  loadData,
  num,
  pct,
  reportedReadOut,
  runExample,
  runIfScript,
  type Scale,
  smallGrid,
  summarize,
  table,
  testData,
  trainModel
} from "./common.ts"

/** One row: a defence setting and an attack protocol. */
export interface DefenceRow {
  readonly defence: "none" | "entropy-reduction"
  /** "none", "paper", "bpda", "full", "bpda+eot" */
  readonly protocol: string
  readonly gradientSource: string
  readonly clean: number
  readonly robust: number
  readonly details: ReturnType<typeof summarize>
}

/** What the example writes. */
export interface EntropyReductionResult {
  readonly eps: number
  readonly defence: string
  readonly trainSeconds: number
  /** mean prediction entropy of the evaluated logits on clean test images */
  readonly entropy: { readonly undefended: number; readonly defended: number }
  readonly rows: ReadonlyArray<DefenceRow>
}

/** Mean prediction entropy of logits computed batch by batch over the test split. */
const meanEntropyOver = (data: Data.Dataset, scale: Scale, logits: (x: tf.Tensor4D) => tf.Tensor2D): number => {
  let sum = 0
  for (let start = 0; start < data.test.count; start += scale.evalBatch) {
    const idx = Int32Array.from({ length: Math.min(scale.evalBatch, data.test.count - start) }, (_, j) => start + j)
    const { x, y } = Data.toTensors(data.test, idx)
    const l = logits(x)
    const h = Regularizers.meanEntropy(l)
    sum += h.dataSync()[0]! * idx.length
    tf.dispose([x, y, l, h])
  }
  return sum / data.test.count
}

/** The example: PGD-AT DEQ with and without input entropy reduction, non-adaptive and adaptive attacks. */
export const main = (options: ExampleOptions = {}) =>
  runExample("entropy-reduction", options, (scale, seed) =>
    Effect.gen(function*() {
      const data = yield* loadData(scale)
      const test = testData(data)
      const pgd = yield* evalPgd(scale)
      const pgdEot = yield* Adversary.pgd({
        eps: scale.eps,
        stepSize: scale.stepSize,
        steps: scale.evalSteps,
        randomStartClamp: false,
        eot: 4
      })
      const defence = yield* Regularizers.makeEntropyReduction(Regularizers.entropyReductionPresets.mnist)
      const trained = yield* trainModel(data, scale, { method: "pgd-at", seed })
      const deq = deqOf(trained.model, scale)
      // the paper's intermediate-state gradient at the read-out: f(z_{N-1}) and 5 damped steps
      const source = Adversary.GradientSource.intermediate(scale.steps - 1, 5, 0.5)
      const evaluate = { batchSize: scale.evalBatch }
      const rows: Array<DefenceRow> = []
      const push = (d: DefenceRow["defence"], protocol: string, r: Adversary.EvaluationResult) =>
        rows.push({ defence: d, protocol, gradientSource: r.gradientSource, clean: r.cleanAccuracy, robust: r.robustAccuracy, details: summarize(r) })

      const plain = yield* Adversary.evaluateDeq(deq, test, pgd, {
        sources: [source],
        readOut: reportedReadOut(scale),
        grid: smallGrid(scale),
        diagnostics: false,
        evaluate
      })
      push("none", "single source", plain[0]!)
      push("none", "grid worst", plain[plain.length - 1]!)

      const defended = yield* Adversary.evaluateDeq(deq, test, pgd, {
        sources: [source],
        readOut: reportedReadOut(scale),
        defence: defence as Dynamics.Defence,
        modes: ["paper", "bpda", "full"],
        diagnostics: false,
        evaluate
      })
      for (const r of defended) push("entropy-reduction", r.gradientSource.split(":")[0]!, r)
      const eot = yield* Adversary.evaluate(
        classifier(deq, scale, source, { defence, mode: "bpda" }),
        test,
        pgdEot,
        evaluate
      )
      push("entropy-reduction", "bpda+eot", eot)

      const entropy = {
        undefended: meanEntropyOver(data, scale, (x) => Dynamics.logits(deq, x, reportedReadOut(scale))),
        defended: meanEntropyOver(data, scale, (x) => {
          const out = defence.run(deq, x)
          out.purified.dispose()
          return out.logits
        })
      }
      const markdown = table(
        ["defence", "attack protocol", "gradient", "clean", "robust"],
        rows.map((r) => [r.defence, r.protocol, r.gradientSource, pct(r.clean), pct(r.robust)])
      ) + `\n\nPGD-${scale.evalSteps}, eps ${scale.eps} Linf, read-out h(z_${scale.steps}); defence ${defence.name}. ` +
        `Mean prediction entropy on clean test images: ${num(entropy.undefended)} undefended, ${num(entropy.defended)} defended. ` +
        `The defence is deterministic, so EOT (4 draws) averages identical gradients: a sanity check on BPDA.`
      const result: EntropyReductionResult = {
        eps: scale.eps,
        defence: defence.name,
        trainSeconds: trained.seconds,
        entropy,
        rows
      }
      return { result, markdown }
    }))

runIfScript(import.meta.url, main)
