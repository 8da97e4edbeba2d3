/**
 * Claim (Yang et al., ICML 2023, Sec. 3.2): updating the input along the dynamics to lower the prediction
 * entropy (input entropy reduction) raises robust accuracy. The paper measures it with a non-adaptive PGD
 * (gradients of the undefended DEQ; docs/method.md, "Evaluation protocol"); this example also runs adaptive
 * attacks and reports, for each model, the per-sample worst case over every attack.
 *
 * Trains one FC DEQ with plain PGD-AT, then evaluates h(z_N) without the defence (PGD with the z_N surrogate, the
 * intermediate-state grid, Square) and with `Regularizers.makeEntropyReduction(entropyReductionPresets.mnist)`
 * under Adversary.deqClassifier's modes: "paper" (the non-adaptive transfer attack), "bpda" (identity backward of
 * the purification), "full" (through the whole defence, whose projections are straight-through), BPDA with EOT
 * over 4 draws, and Square against the defended prediction. The defended PGD attacks use 2 restarts (full size).
 *
 *   npx tsx examples/entropy-reduction.ts [--quick]
 */
import { Effect } from "effect"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import type * as Dynamics from "../src/Dynamics.ts"
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
  trainModel,
  unreliableNote,
  worstOf
} from "./common.ts"

/** One row: a defence setting and an attack protocol. */
export interface DefenceRow {
  readonly defence: "none" | "entropy-reduction"
  /** "single source", "grid worst", "square", "paper", "bpda", "full", "bpda+eot", "worst case" */
  readonly protocol: string
  readonly gradientSource: string
  readonly clean: number
  readonly robust: number
  readonly flags: ReadonlyArray<string>
  readonly details: ReturnType<typeof summarize>
}

/** What the example writes. */
export interface EntropyReductionResult {
  readonly eps: number
  readonly defence: string
  readonly trainSeconds: number
  /** mean prediction entropy of the evaluated prediction h(z_N) on clean test images, without and with the defence */
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
      const defendedPgd = (restarts: number, eot: number) =>
        Adversary.pgd({ eps: scale.eps, stepSize: scale.stepSize, steps: scale.evalSteps, randomStartClamp: false, restarts, eot })
      const square = yield* Adversary.square({ eps: scale.eps, queries: scale.aaQueries })
      const defendedSquare = yield* Adversary.square({ eps: scale.eps, queries: Math.ceil(scale.aaQueries / 3) })
      const defence = yield* Regularizers.makeEntropyReduction(Regularizers.entropyReductionPresets.mnist)
      const trained = yield* trainModel(data, scale, { method: "pgd-at", seed })
      const deq = deqOf(trained.model, scale)
      // the paper's intermediate-state gradient at the read-out: f(z_N) and 5 damped steps ("Munroll-7-5" for N = 8)
      const source = Adversary.GradientSource.intermediate(scale.steps, 5, 0.5)
      const evaluate = { batchSize: scale.evalBatch }
      const rows: Array<DefenceRow> = []
      const parts: Record<DefenceRow["defence"], Array<{ label: string; result: Adversary.EvaluationResult; role: Adversary.AttackRole }>> = {
        none: [],
        "entropy-reduction": []
      }
      const push = (d: DefenceRow["defence"], protocol: string, r: Adversary.EvaluationResult, role?: Adversary.AttackRole) => {
        rows.push({
          defence: d,
          protocol,
          gradientSource: r.gradientSource,
          clean: r.cleanAccuracy,
          robust: r.robustAccuracy,
          flags: [...new Set(r.flags.map((f) => f.kind))],
          details: summarize(r)
        })
        if (role !== undefined) parts[d].push({ label: protocol, result: r, role })
      }

      const plain = yield* Adversary.evaluateDeq(deq, test, pgd, {
        sources: [source],
        readOut: reportedReadOut(scale),
        grid: smallGrid(scale),
        diagnostics: false,
        evaluate
      })
      push("none", "single source", plain[0]!, "white-box")
      push("none", "grid worst", plain[plain.length - 1]!, "white-box")
      push("none", "square", yield* Adversary.evaluate(classifier(deq, scale, source), test, square, { ...evaluate, gradientSource: "none (black-box)" }), "black-box")
      const openWorst = worstOf(parts.none)
      push("none", "worst case", openWorst)

      const run = (mode: Adversary.DefenceMode, attack: Adversary.Attack["Service"], gradientSource?: string) => {
        const c = classifier(deq, scale, source, { defence, mode })
        return Adversary.evaluate(c, test, attack, { ...evaluate, gradientSource: gradientSource ?? c.gradientSource })
      }
      const restarted = yield* defendedPgd(scale.defendedRestarts, 1)
      push("entropy-reduction", "paper", yield* run("paper", restarted), "transfer")
      push("entropy-reduction", "bpda", yield* run("bpda", restarted), "adaptive")
      push("entropy-reduction", "full", yield* run("full", restarted), "adaptive")
      // a sanity check on BPDA (one start): the defence is deterministic, so EOT averages identical gradients
      push("entropy-reduction", "bpda+eot", yield* run("bpda", yield* defendedPgd(1, scale.eot)), "adaptive")
      push("entropy-reduction", "square", yield* run("bpda", defendedSquare, "none (black-box)"), "black-box")
      const guardedWorst = worstOf(parts["entropy-reduction"])
      push("entropy-reduction", "worst case", guardedWorst)

      // the evaluated prediction h(z_N) itself (no tail), undefended and defended
      const evaluated = classifier(deq, scale, source)
      const entropy = {
        undefended: meanEntropyOver(data, scale, (x) => evaluated.predict!(x)),
        defended: meanEntropyOver(data, scale, (x) => {
          const out = (defence as Dynamics.Defence).run(deq, x)
          out.purified.dispose()
          return out.logits
        })
      }
      const markdown = table(
        ["defence", "attack protocol", "gradient", "clean", "robust", "flags"],
        rows.map((r) => [r.defence, r.protocol, r.gradientSource, pct(r.clean), pct(r.robust), r.flags.join(", ") || "none"])
      ) + `\n\nPGD-${scale.evalSteps}, eps ${scale.eps} Linf, read-out h(z_${scale.steps}); defence ${defence.name}; ` +
        `the defended PGD attacks with ${scale.defendedRestarts} restart${scale.defendedRestarts > 1 ? "s" : ""} (EOT: 1); Square ${scale.aaQueries} queries undefended, ` +
        `${Math.ceil(scale.aaQueries / 3)} against the defended prediction. "worst case": per-sample worst case over the ` +
        `rows above it. Mean prediction entropy of h(z_${scale.steps}) on clean test images: ${num(entropy.undefended)} ` +
        `undefended, ${num(entropy.defended)} defended. The defence is deterministic, so EOT (${scale.eot} draws) averages identical ` +
        `gradients: a sanity check on BPDA.` + unreliableNote(guardedWorst)
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
