/**
 * Picard vs Anderson vs Broyden on a trained DEQ: steps to tolerance, wall time and accuracy, on clean test images
 * and on PGD inputs (adversarial inputs tend to slow the forward solve of an AT-trained DEQ).
 *
 * Trains one FC DEQ with plain PGD-AT (Broyden, as the paper), then solves the test set with each solver
 * (`FixedPoint.makePicard`, `makeAnderson`, `makeBroyden`) to rel tol 1e-4 within a budget of 60 steps, per-sample
 * stopping, and reads out h(z*).
 *
 *   npx tsx examples/solvers.ts [--quick]
 */
import { Effect } from "effect"
import * as Adversary from "../src/Adversary.ts"
import * as Data from "../src/Data.ts"
import * as Dynamics from "../src/Dynamics.ts"
import * as FixedPoint from "../src/FixedPoint.ts"
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
  table,
  trainModel
} from "./common.ts"

/** One solver on one input set. */
export interface SolverRow {
  readonly solver: string
  readonly inputs: "clean" | "pgd"
  /** mean over samples of the step at which each sample met the tolerance (or the budget) */
  readonly meanSteps: number
  /** solver iterations of the slowest sample, averaged over batches */
  readonly batchSteps: number
  readonly converged: number
  readonly meanRelResidual: number
  readonly accuracy: number
  /** wall time of the forward solves and read-outs over the whole test set */
  readonly seconds: number
}

/** What the example writes. */
export interface SolversResult {
  readonly tol: number
  readonly maxIter: number
  readonly trainSeconds: number
  readonly rows: ReadonlyArray<SolverRow>
}

const tol = 1e-4
const maxIter = 60

/** The example: three solvers on the same trained model. */
export const main = (options: ExampleOptions = {}) =>
  runExample("solvers", options, (scale, seed) =>
    Effect.gen(function*() {
      const data = yield* loadData(scale)
      const trained = yield* trainModel(data, scale, { method: "pgd-at", seed })
      const solveOptions = { maxIter, tol, stopping: "sample" as const }
      const solvers: ReadonlyArray<readonly [string, FixedPoint.Solver["Service"]]> = [
        ["picard", FixedPoint.makePicardSync(solveOptions)],
        ["anderson (m 5)", FixedPoint.makeAndersonSync({ ...solveOptions, m: 5 })],
        ["broyden (memory 30)", FixedPoint.makeBroydenSync(solveOptions)]
      ]
      // PGD inputs made once (intermediate-state gradient at z_N, the paper's Broyden deq), shared by every solver
      const attack = yield* evalPgd(scale)
      const attackDeq = deqOf(trained.model, scale)
      const source = Adversary.GradientSource.intermediate(scale.steps, 5, 0.5)
      const total = data.test.count
      const batches: Array<{ x: tf.Tensor4D; y: tf.Tensor1D; adv: tf.Tensor4D }> = []
      for (let start = 0; start < total; start += scale.evalBatch) {
        const idx = Int32Array.from({ length: Math.min(scale.evalBatch, total - start) }, (_, j) => start + j)
        const { x, y } = yield* Effect.acquireRelease(
          Effect.sync(() => Data.toTensors(data.test, idx)),
          (t) => Effect.sync(() => tf.dispose([t.x, t.y]))
        )
        const r = yield* attack.perturb(classifier(attackDeq, scale, source), x, y)
        batches.push({ x, y, adv: r.xAdv })
      }
      const rows: Array<SolverRow> = []
      for (const inputs of ["clean", "pgd"] as const) {
        for (const [name, solver] of solvers) {
          // Implicit backward: the Final read-out's value is h(f(z*)), no phantom tail moving it
          const deq = Dynamics.makeWith(trained.model, solver, { backward: FixedPoint.Backward.implicit() })
          let stepSum = 0, batchSteps = 0, conv = 0, rel = 0, correct = 0
          const started = performance.now()
          for (const b of batches) {
            let stats: FixedPoint.SolveStats | undefined
            const logits = Dynamics.logits(deq, inputs === "clean" ? b.x : b.adv, Dynamics.readOut.final, {
              onStats: (s) => {
                stats = s
              }
            })
            const pred = tf.tidy(() => tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), tf.cast(b.y, "int32")), "float32")))
            correct += pred.dataSync()[0]!
            tf.dispose([logits, pred])
            const s = stats!
            for (let j = 0; j < s.stepsPerSample.length; j++) {
              stepSum += s.stepsPerSample[j]!
              conv += s.converged[j]!
              rel += s.relResidual[j]!
            }
            batchSteps += s.steps / batches.length
          }
          rows.push({
            solver: name,
            inputs,
            meanSteps: stepSum / total,
            batchSteps,
            converged: conv / total,
            meanRelResidual: rel / total,
            accuracy: correct / total,
            seconds: (performance.now() - started) / 1000
          })
        }
      }
      const markdown = table(
        ["solver", "inputs", "mean steps to tol", "batch steps", "converged", "mean rel residual", "accuracy", "time (ms)"],
        rows.map((r) => [r.solver, r.inputs, num(r.meanSteps, 1), num(r.batchSteps, 1), pct(r.converged), num(r.meanRelResidual, 5), pct(r.accuracy), num(1000 * r.seconds, 1)])
      ) + `\n\nRel tol ${tol}, at most ${maxIter} steps, per-sample stopping; the model was trained with Broyden (8 steps). ` +
        `PGD inputs: PGD-${scale.evalSteps}, eps ${scale.eps} Linf, Munroll-${scale.steps - 1}-5 gradients.`
      const result: SolversResult = { tol, maxIter, trainSeconds: trained.seconds, rows }
      return { result, markdown }
    }))

runIfScript(import.meta.url, main)
