/**
 * Ours against the PyTorch peer on the project's real models: per workload (bench/workloads.ts), warm-up calls on
 * each side, then rounds that alternate ours (one sample per lever combination), torch with 1 thread and torch
 * with 2 threads, so load from other processes hits every column alike. Medians over the rounds.
 * Also the scaling of the conv training step over batch and channels.
 */
import { Effect } from "effect"
import * as Models from "../src/Models.ts"
import { benchWorkers, type Combination, nativeEnv } from "./levers.ts"
import { compareValues, type Peer } from "./peer.ts"
import { makeSplit } from "./split.ts"
import { median } from "./timing.ts"
import { makeWorkloads, repsOf, type StepSpec, stepsPerCall, type WorkloadName, workloadNames, type Workloads } from "./workloads.ts"

/** A model the comparison runs, with its table name and its kind ("fc" | "conv") for the ratio keys. */
export interface BenchModel {
  readonly name: string
  readonly kind: "fc" | "conv"
  readonly config: Models.ModelConfig
  readonly batch: number
}

/** One measured workload of one model: ours per lever combination, torch per thread count (ms per step). */
export interface CompareRow {
  readonly model: string
  readonly kind: "fc" | "conv"
  readonly batch: number
  readonly workload: WorkloadName
  readonly label: string
  /** median ms per call, keyed by the combination's label */
  readonly ours: Readonly<Record<string, number>>
  /** median CPU ms (user + system) of this process per call: less sensitive to other processes than wall time */
  readonly oursCpu: Readonly<Record<string, number>>
  /** median ms per call with 1 and 2 threads; absent without the peer */
  readonly torch1?: number
  readonly torch2?: number
  readonly rounds: number
}

/** The table label of a workload. */
export const workloadLabel = (w: WorkloadName, spec: StepSpec): string => {
  switch (w) {
    case "f":
      return "one f evaluation"
    case "solve":
      return `Picard solve (${spec.budget} steps, tol 0)`
    case "implicit":
      return `solve + implicit backward (${spec.adjointIterations} adjoint it.)`
    case "attack-step":
      return `attack step (PGD, z_${spec.budget} + tail f + ${spec.tailK} x lambda ${spec.tailLambda})`
    case "train-step":
      return `training step (PGD-AT ${spec.pgdSteps} steps + RIS at n in {${spec.trainStates.join(", ")}}, Adam; per step)`
  }
}

/** Rounds and warm-up calls of a workload (the long ones get fewer). */
export interface Rounds {
  readonly rounds: (w: WorkloadName) => number
  readonly warmup: (w: WorkloadName) => number
}

const timeOurs = (run: () => void, reps: number): { readonly ms: number; readonly cpuMs: number } => {
  const cpu = process.cpuUsage()
  const start = performance.now()
  for (let i = 0; i < reps; i++) run()
  const ms = (performance.now() - start) / reps
  const used = process.cpuUsage(cpu)
  return { ms, cpuMs: (used.user + used.system) / 1000 / reps }
}

/** Times every workload of one built model against the peer (when there is one). */
const compareModel = async (
  m: BenchModel,
  model: Models.Model,
  spec: StepSpec,
  combos: ReadonlyArray<Combination>,
  peer: Peer | undefined,
  rounds: Rounds,
  log: (message: string) => void,
  only: ReadonlyArray<WorkloadName>
): Promise<{ rows: Array<CompareRow>; check?: Record<string, number>; w: Workloads }> => {
  const w = makeWorkloads(model, m.batch, spec)
  // the workers lever's columns: the batch split over this thread and a worker (started once per model)
  const split = combos.some((c) => c.label.includes("workers 2")) ? await makeSplit(m, model, spec) : undefined
  const sample = async (workload: WorkloadName, reps: number) => {
    if (benchWorkers() === 1 || split === undefined) return timeOurs(w.run[workload], reps)
    await split.native(nativeEnv())
    return split.time(workload, reps)
  }
  const key = `${m.kind}-${m.batch}`
  if (peer !== undefined) await peer.load(key, model, w, spec)
  const rows: Array<CompareRow> = []
  // the train step moves the weights (Adam): it runs last so the other workloads see the initial weights
  for (const workload of workloadNames.filter((x) => only.includes(x))) {
    log(`${m.name}: ${workload}`)
    const reps = repsOf(workload)
    const per = stepsPerCall(workload, spec)
    const n = rounds.rounds(workload)
    const ours: Record<string, Array<number>> = {}
    const oursCpu: Record<string, Array<number>> = {}
    const t1: Array<number> = [], t2: Array<number> = []
    for (const c of combos) {
      await c.apply()
      for (let i = 0; i < rounds.warmup(workload); i++) await sample(workload, 1)
    }
    if (peer !== undefined) {
      for (const threads of [1, 2]) await peer.time(key, workload, { threads, warmup: rounds.warmup(workload), runs: 0, reps })
    }
    for (let r = 0; r < n; r++) {
      for (const c of combos) {
        await c.apply()
        const t = await sample(workload, reps)
        ;(ours[c.label] ??= []).push(t.ms / per)
        ;(oursCpu[c.label] ??= []).push(t.cpuMs / per)
      }
      if (peer !== undefined) {
        t1.push((await peer.time(key, workload, { threads: 1, warmup: 0, runs: 1, reps }))[0]! / per)
        t2.push((await peer.time(key, workload, { threads: 2, warmup: 0, runs: 1, reps }))[0]! / per)
      }
    }
    rows.push({
      model: m.name,
      kind: m.kind,
      batch: m.batch,
      workload,
      label: workloadLabel(workload, spec),
      ours: Object.fromEntries(Object.entries(ours).map(([k, v]) => [k, median(v)])),
      oursCpu: Object.fromEntries(Object.entries(oursCpu).map(([k, v]) => [k, median(v)])),
      ...(peer !== undefined ? { torch1: median(t1), torch2: median(t2) } : {}),
      rounds: n
    })
  }
  if (peer !== undefined) await peer.drop(key)
  await split?.close()
  return { rows, w }
}

/**
 * Builds each model (seed 1), checks the peer computes the same values on it (before any training step), and
 * times every workload. `check` holds, per model kind, the largest relative differences (bench/peer.ts
 * `compareValues`).
 */
export const compare = async (
  models: ReadonlyArray<BenchModel>,
  spec: StepSpec,
  combos: ReadonlyArray<Combination>,
  peer: Peer | undefined,
  rounds: Rounds,
  log: (message: string) => void,
  only: ReadonlyArray<WorkloadName> = workloadNames
): Promise<{ rows: Array<CompareRow>; check: Record<string, Record<string, number>> }> => {
  const rows: Array<CompareRow> = []
  const check: Record<string, Record<string, number>> = {}
  for (const m of models) {
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const model = yield* Models.build(m.config, { seed: 1 })
      if (peer !== undefined) yield* Effect.promise(() => checkModel(m, model, spec, peer).then((c) => void (check[m.kind] = c)))
      const out = yield* Effect.promise(() => compareModel(m, model, spec, combos, peer, rounds, log, only))
      out.w.dispose()
      rows.push(...out.rows)
    })))
  }
  return { rows, check }
}

/** The peer check on a small batch of the same model (values before any update). */
const checkModel = async (m: BenchModel, model: Models.Model, spec: StepSpec, peer: Peer): Promise<Record<string, number>> => {
  const w = makeWorkloads(model, Math.min(8, m.batch), spec)
  try {
    const ours = w.values()
    const key = `check-${m.kind}`
    await peer.load(key, model, w, spec)
    const theirs = await peer.check(key)
    await peer.drop(key)
    return compareValues(ours, theirs)
  } finally {
    w.dispose()
  }
}

/** One cell of the scaling table: the conv training step (ms per step) at one batch and channel count. */
export interface ScalingRow {
  readonly batch: number
  readonly channels: number
  readonly ours: number
  readonly oursCpu: number
  readonly torch2?: number
}

/**
 * The conv training step for every batch x channels (ours, torch with 2 threads), one warm-up call and `rounds`
 * alternating samples each.
 */
export const scaling = async (
  base: Omit<Models.ConvConfig, "_tag" | "channels">,
  batches: ReadonlyArray<number>,
  channels: ReadonlyArray<number>,
  spec: StepSpec,
  peer: Peer | undefined,
  rounds: number,
  log: (message: string) => void
): Promise<Array<ScalingRow>> => {
  const out: Array<ScalingRow> = []
  for (const c of channels) {
    for (const b of batches) {
      log(`scaling: conv ${c} ch, batch ${b}`)
      await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
        const model = yield* Models.build(new Models.ConvConfig({ ...base, channels: c }), { seed: 1 })
        const w = makeWorkloads(model, b, spec)
        const key = `scaling-${c}-${b}`
        const per = stepsPerCall("train-step", spec)
        const ours: Array<number> = [], oursCpu: Array<number> = [], torch: Array<number> = []
        yield* Effect.promise(async () => {
          if (peer !== undefined) await peer.load(key, model, w, spec)
          w.run["train-step"]()
          if (peer !== undefined) await peer.time(key, "train-step", { threads: 2, warmup: 1, runs: 0, reps: 1 })
          for (let r = 0; r < rounds; r++) {
            const t = timeOurs(w.run["train-step"], 1)
            ours.push(t.ms / per)
            oursCpu.push(t.cpuMs / per)
            if (peer !== undefined) torch.push((await peer.time(key, "train-step", { threads: 2, warmup: 0, runs: 1, reps: 1 }))[0]! / per)
          }
          if (peer !== undefined) await peer.drop(key)
        })
        w.dispose()
        out.push({ batch: b, channels: c, ours: median(ours), oursCpu: median(oursCpu), ...(torch.length > 0 ? { torch2: median(torch) } : {}) })
      })))
    }
  }
  return out
}
