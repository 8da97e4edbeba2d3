/**
 * The PyTorch peer as a long-lived child process (bench/peer.py --serve, one JSON object per line each way), so
 * the suite can alternate rounds of ours and the peer's. Models travel as a JSON file: the config, the weights in
 * the project's layout, the batch and the {@link StepSpec}. Without torch, {@link startPeer} says why in one line.
 */
import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { encodeConfig, type Model } from "../src/Models.ts"
import type { CheckValues, StepSpec, WorkloadName, Workloads } from "./workloads.ts"

/** The GLIBC_TUNABLES the peer (and `npm run bench` / `npm start`) run with. */
export const glibcTunables = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"

/**
 * OpenMP's wait policy for the peer: PASSIVE unless OMP_WAIT_POLICY says otherwise. With torch's default, its idle
 * threads keep spinning after a call and take the cores from our rounds in between (ours' conv f measured 26.5 ms
 * instead of 11.9 right after torch calls); passive waiting also made torch's own 2-thread solve faster on these
 * shared cores (53 vs 173 ms at load 3.4). docs/performance.md, "The comparison with PyTorch".
 */
export const peerWaitPolicy = (): string => process.env["OMP_WAIT_POLICY"] ?? "PASSIVE"

/** The interpreter that has Debian's python3-torch. */
export const python = "/usr/bin/python3"

const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "peer.py")

/** Whether `/usr/bin/python3 -c "import torch"` works here, with the reason when it does not. */
export const torchAvailable = (): { readonly ok: boolean; readonly reason: string } => {
  const r = spawnSync(python, ["-c", "import torch"], { encoding: "utf8", timeout: 60_000 })
  if (r.error !== undefined) return { ok: false, reason: `${python} cannot run: ${r.error.message}` }
  if (r.status !== 0) return { ok: false, reason: `torch is not importable: ${(r.stderr ?? "").trim().split("\n").pop()}` }
  return { ok: true, reason: "" }
}

/** A running peer. Requests are answered in order; a failed request rejects with the peer's message. */
export interface Peer {
  readonly torch: string
  readonly python: string
  /** loads a model (weights, batch, settings) under `key` */
  readonly load: (key: string, model: Model, w: Workloads, spec: StepSpec) => Promise<void>
  /** per-call milliseconds of `runs` timed samples (each the mean of `reps` calls) after `warmup` calls */
  readonly time: (
    key: string,
    workload: WorkloadName,
    o: { readonly threads: number; readonly warmup: number; readonly runs: number; readonly reps: number }
  ) => Promise<ReadonlyArray<number>>
  /** the peer's values of the check (bench/peer.py `check`) */
  readonly check: (key: string) => Promise<CheckValues>
  readonly drop: (key: string) => Promise<void>
  readonly close: () => Promise<void>
}

/** A started peer, or why there is none. */
export type PeerStart = { readonly _tag: "Ready"; readonly peer: Peer } | { readonly _tag: "Skipped"; readonly reason: string }

const toArrays = (r: any): CheckValues => {
  const grads = (g: Record<string, Array<number> | null>) =>
    Object.fromEntries(Object.entries(g).flatMap(([k, v]) => (v === null ? [] : [[k, Float32Array.from(v)]])))
  return {
    f: Float32Array.from(r.f),
    attackGrad: Float32Array.from(r.attackGrad),
    trainLoss: r.trainLoss,
    trainGrads: grads(r.trainGrads),
    implicitGrads: grads(r.implicitGrads)
  }
}

/** Starts bench/peer.py; never throws (no torch, a crash at start-up: Skipped with the reason). */
export const startPeer = async (): Promise<PeerStart> => {
  const available = torchAvailable()
  if (!available.ok) return { _tag: "Skipped", reason: available.reason }
  const child: ChildProcessWithoutNullStreams = spawn(python, [script, "--serve"], {
    env: { ...process.env, GLIBC_TUNABLES: glibcTunables, OMP_WAIT_POLICY: peerWaitPolicy() },
    stdio: ["pipe", "pipe", "pipe"]
  })
  let stderr = ""
  child.stderr.on("data", (d) => (stderr = (stderr + String(d)).slice(-2000)))
  const lines = createInterface({ input: child.stdout })
  const waiting: Array<{ resolve: (v: any) => void; reject: (e: Error) => void }> = []
  const fail = (why: string) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`${why}${stderr.length > 0 ? `: ${stderr.trim().split("\n").pop()}` : ""}`))
  }
  lines.on("line", (line) => {
    const w = waiting.shift()
    if (w === undefined) return
    try {
      const v = JSON.parse(line)
      if (typeof v === "object" && v !== null && "error" in v) w.reject(new Error(`peer: ${v.error}`))
      else w.resolve(v)
    } catch {
      w.reject(new Error(`peer printed a non-JSON line: ${line.slice(0, 200)}`))
    }
  })
  child.on("exit", (code) => fail(`the peer exited with ${code}`))
  child.on("error", (e) => fail(`the peer failed: ${e.message}`))
  const next = (): Promise<any> => new Promise((resolve, reject) => waiting.push({ resolve, reject }))
  const request = (cmd: object): Promise<any> => {
    const p = next()
    child.stdin.write(JSON.stringify(cmd) + "\n")
    return p
  }
  const files: Array<string> = []
  try {
    const hello = await next()
    const peer: Peer = {
      torch: hello.torch,
      python: hello.python,
      load: async (key, model, w, spec) => {
        const file = path.join(os.tmpdir(), `effect-deq-peer-${process.pid}-${key.replace(/\W+/g, "_")}.json`)
        files.push(file)
        fs.writeFileSync(file, JSON.stringify({
          config: encodeConfig(model.config),
          weights: model.params.map((p) => ({ name: p.name, shape: p.variable.shape, values: Array.from(p.variable.dataSync()) })),
          x: Array.from(w.x.dataSync()),
          xShape: w.x.shape,
          y: Array.from(w.y.dataSync()),
          z: Array.from(w.z.dataSync()),
          zShape: w.z.shape,
          spec
        }))
        await request({ op: "load", key, file })
      },
      time: async (key, workload, o) => (await request({ op: "time", key, workload, ...o })).ms,
      check: async (key) => toArrays(await request({ op: "check", key })),
      drop: async (key) => {
        await request({ op: "drop", key })
      },
      close: async () => {
        if (child.exitCode === null) {
          await request({ op: "quit" }).catch(() => undefined)
        }
        child.kill()
        for (const f of files) fs.rmSync(f, { force: true })
      }
    }
    return { _tag: "Ready", peer }
  } catch (e) {
    child.kill()
    return { _tag: "Skipped", reason: e instanceof Error ? e.message : String(e) }
  }
}

/** Largest |a - b| over max(|b|) of every compared value (0 when both are zero), per check field. */
export const compareValues = (ours: CheckValues, peer: CheckValues): Record<string, number> => {
  const rel = (a: Float32Array, b: Float32Array): number => {
    if (a.length !== b.length) return Number.POSITIVE_INFINITY
    let d = 0, m = 0
    for (let i = 0; i < a.length; i++) {
      d = Math.max(d, Math.abs(a[i]! - b[i]!))
      m = Math.max(m, Math.abs(b[i]!))
    }
    return m === 0 ? d : d / m
  }
  const grads = (a: Readonly<Record<string, Float32Array>>, b: Readonly<Record<string, Float32Array>>) => {
    let worst = 0
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const x = a[k], y = b[k]
      worst = Math.max(worst, x === undefined || y === undefined ? Number.POSITIVE_INFINITY : rel(x, y))
    }
    return worst
  }
  return {
    f: rel(ours.f, peer.f),
    attackGrad: rel(ours.attackGrad, peer.attackGrad),
    trainLoss: Math.abs(ours.trainLoss - peer.trainLoss) / Math.max(1e-12, Math.abs(peer.trainLoss)),
    trainGrads: grads(ours.trainGrads, peer.trainGrads),
    implicitGrads: grads(ours.implicitGrads, peer.implicitGrads)
  }
}
