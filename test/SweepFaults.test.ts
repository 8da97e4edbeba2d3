/**
 * `deq sweep` and `deq runner` as real processes, with real components: the embedded sweep (SQLite file) run
 * once as the reference, then SIGKILLed mid-training and restarted; the bad-input failures; two runners on a
 * PostgreSQL server started by the test harness, one SIGKILLed mid-training, and PostgreSQL stopped and restarted
 * mid-sweep; the results page opened in headless Chromium. Every sweep is presets/sweep-quick.json (4 tiny runs)
 * and every fault must end with the reference's results.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Postgres from "./harness/postgres.ts"
import * as Processes from "./harness/processes.ts"

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deq-sweep-"))
const grid = path.resolve("presets", "sweep-quick.json")
const env = { DEQ_BACKEND: "wasm" }
const chromium = "/usr/bin/chromium"
const pgSkip = Postgres.skipReason()
const pageSkip = fs.existsSync(chromium) ? undefined : `${chromium} is not installed (apt-get install chromium; .ci/run does it)`
if (pgSkip !== undefined) console.log(`SweepFaults: PostgreSQL cluster tests skipped: ${pgSkip}`)
if (pageSkip !== undefined) console.log(`SweepFaults: results page test skipped: ${pageSkip}`)

afterAll(() => Processes.stopAll())

type Json = Record<string, any>
const readJson = (file: string): Json => JSON.parse(fs.readFileSync(file, "utf8")) as Json
const lines = (file: string): Array<Json> =>
  fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim().length > 0).map((l) => JSON.parse(l) as Json) : []
const runIds = (out: string): Array<string> => readJson(path.join(out, "sweep.json")).runs.map((r: Json) => r.id)

/** The numbers two sweeps must share: per-arm aggregates and per-run results. */
const results = (out: string) => {
  const s = readJson(path.join(out, "summary.json"))
  return { arms: s.arms, runs: s.runs.map((r: Json) => ({ id: r.id, state: r.state, result: r.result })) }
}

/** A run directory whose training is in epoch 2 (batches logged, epoch not finished), if any. */
const inEpoch2 = (out: string): string | undefined => {
  const runs = path.join(out, "runs")
  if (!fs.existsSync(runs)) return undefined
  return fs.readdirSync(runs).map((id) => path.join(runs, id)).find((dir) => {
    const events = lines(path.join(dir, "events.jsonl"))
    return events.some((e) => e._tag === "Batch" && e.epoch === 2 && e.batch >= 2) && !events.some((e) => e._tag === "Epoch" && e.epoch === 2)
  })
}

/** The invariants of a finished sweep: every run done once, trained from scratch once, epochs contiguous. */
const expectFinishedOnce = (out: string) => {
  for (const id of runIds(out)) {
    const dir = path.join(out, "runs", id)
    const attempts = lines(path.join(dir, "attempts.jsonl"))
    expect(attempts.filter((a) => a.activity === "train-1" && a.from === 0).length, `${id} trained from scratch once`).toBe(1)
    expect(attempts.filter((a) => a.from === 0).length, `${id}: no other attempt from scratch`).toBe(1)
    for (const activity of ["evaluate", "dynamics", "report"]) {
      expect(attempts.filter((a) => a.activity === activity).length, `${id}: ${activity} once`).toBe(1)
    }
    const events = lines(path.join(dir, "events.jsonl"))
    expect(events.filter((e) => e._tag === "Epoch").map((e) => e.epoch), `${id}: epochs contiguous`).toEqual([1, 2])
    expect(events.filter((e) => e._tag === "Checkpoint" && e.reason === "epoch").map((e) => e.epoch)).toEqual([1, 2])
  }
}

const reference = path.join(tmp, "reference")

describe("embedded deq sweep (no server)", () => {
  it("runs sweep-quick in one process: every run's directory, summary.md/json, plots, index.html", async () => {
    const p = Processes.deq(["sweep", "--grid", grid, "--out", reference], tmp, env)
    expect(await p.exited, p.stderr()).toBe(0)
    expect(fs.existsSync(path.join(reference, "sweep.db"))).toBe(true)
    const ids = runIds(reference)
    expect(ids.length).toBe(4)
    for (const id of ids) {
      const dir = path.join(reference, "runs", id)
      for (const f of ["config.json", "events.jsonl", "last/checkpoint.json", "eval/report.json", "dynamics/report.json", "report.md", "training.svg"]) {
        expect(fs.existsSync(path.join(dir, f)), `${id}/${f}`).toBe(true)
      }
    }
    expectFinishedOnce(reference)
    const summary = readJson(path.join(reference, "summary.json"))
    expect(summary.arms.map((a: Json) => a.arm)).toEqual(["final", "ris"])
    for (const a of summary.arms) {
      expect(a.seeds).toEqual([1, 2])
      expect(a.clean.mean).toBeGreaterThan(0.1)
      expect(a.robust.mean).toBeLessThanOrEqual(a.clean.mean)
      expect(a.states.length).toBe(4)
    }
    const md = fs.readFileSync(path.join(reference, "summary.md"), "utf8")
    expect(md).toContain("| final | 1, 2 |")
    expect(md).toContain("![accuracy per state](accuracy.svg)")
    for (const svg of ["accuracy.svg", "entropy.svg"]) expect(fs.readFileSync(path.join(reference, svg), "utf8")).toContain("mark-area")
    expect(fs.readFileSync(path.join(reference, "index.html"), "utf8")).toContain("<table id=\"arms\">")
    // the live table went to stderr, the arm table to stdout
    expect(p.stderr()).toMatch(/sweep sweep-quick: \d queued, \d running, \d done, 0 failed/)
    expect(p.stderr()).toContain("0 queued, 0 running, 4 done, 0 failed")
    expect(p.stdout()).toContain("| arm | seeds |")
  }, 150_000)

  it("SIGKILLed mid-training and started again: continues where it stopped and ends with the same summary", async () => {
    const out = path.join(tmp, "embedded-killed")
    const first = Processes.deq(["sweep", "--grid", grid, "--out", out], tmp, env)
    let victim: string | undefined
    await Processes.waitFor(() => (victim = inEpoch2(out)) !== undefined, 120_000, "a run in epoch 2")
    first.kill("SIGKILL")
    expect(await first.exited).toBe("SIGKILL")
    const second = Processes.deq(["sweep", "--grid", grid, "--out", out], tmp, env)
    expect(await second.exited, second.stderr()).toBe(0)
    expect(results(out)).toEqual(results(reference))
    expectFinishedOnce(out)
    const retried = lines(path.join(victim!, "attempts.jsonl")).filter((a) => a.activity === "train-2")
    expect(retried.length).toBe(2)
    expect(retried.map((a) => a.from)).toEqual([1, 1])
    expect(new Set(retried.map((a) => a.runner)).size).toBe(2)
  }, 150_000)

  it("a bad sweep file, an unreachable storage URL, an unwritable output directory: one line each, exit 1, nothing lost", async () => {
    const before = new Map(["summary.json", "summary.md", "index.html", "sweep.json"].map((f) => [f, fs.readFileSync(path.join(reference, f), "utf8")]))
    const bad = path.join(tmp, "bad-sweep.json")
    fs.writeFileSync(bad, JSON.stringify({ base: "smoke", axes: { optimizer: ["adam"] } }))
    const notDir = path.join(tmp, "a-file")
    fs.writeFileSync(notDir, "")
    const port = await Postgres.freePort()
    const [badFile, unreachable, unwritable] = [
      Processes.deq(["sweep", "--grid", bad, "--out", reference], tmp, env),
      Processes.deq(["sweep", "--grid", grid, "--out", reference, "--storage", `postgres://deq@127.0.0.1:${port}/nothing`], tmp, env),
      Processes.deq(["sweep", "--grid", grid, "--out", path.join(notDir, "out")], tmp, env)
    ]
    const codes = await Promise.all([badFile.exited, unreachable.exited, unwritable.exited])
    expect(codes).toEqual([1, 1, 1])
    const only = (p: Processes.Deq) => p.stderr().trim().split("\n")
    expect(only(badFile)).toEqual([expect.stringMatching(/^deq sweep: error: ConfigError \(at axes\.optimizer\): .*unknown axis "optimizer"/)])
    expect(only(unreachable)).toEqual([expect.stringMatching(new RegExp(`^deq sweep: error: StorageError: cannot reach postgres://deq@127\\.0\\.0\\.1:${port}/nothing: .*ECONNREFUSED`))])
    expect(only(unwritable)).toEqual([expect.stringMatching(/^deq sweep: error: ConfigError: output directory .*a-file\/out is not writable: ENOTDIR$/)])
    for (const [f, text] of before) expect(fs.readFileSync(path.join(reference, f), "utf8"), f).toBe(text)
  }, 60_000)
})

describe.skipIf(pgSkip !== undefined)("a cluster of runners on PostgreSQL", () => {
  let server: Postgres.Server | undefined
  beforeAll(async () => {
    server = await Postgres.start()
  }, 60_000)
  afterAll(() => server?.teardown())

  /** Two runners on `url`, both ready. */
  const runners = async (url: string) => {
    const rs = await Promise.all([0, 1].map(async () => {
      const port = await Postgres.freePort()
      return Processes.deq(["runner", "--storage", url, "--host", "127.0.0.1", "--port", String(port)], tmp, env)
    }))
    await Processes.waitFor(() => rs.every((r) => r.stderr().includes("runner ready")), 60_000, "two runners ready")
    return rs
  }

  it("4 runs on 2 runners, one SIGKILLed mid-training: every run finishes once, epochs contiguous, same results", async () => {
    const url = Postgres.createDatabase(server!, "sweep_kill")
    const rs = await runners(url)
    const out = path.join(tmp, "cluster-killed")
    const sweep = Processes.deq(["sweep", "--grid", grid, "--out", out, "--storage", url], tmp, env)
    let victim: string | undefined
    await Processes.waitFor(() => (victim = inEpoch2(out)) !== undefined, 120_000, "a run in epoch 2")
    const runner = readJson(path.join(victim!, "progress.json")).runner as string
    const killed = rs.find((r) => runner.endsWith(`:${r.pid}`))!
    killed.kill("SIGKILL")
    expect(await sweep.exited, sweep.stderr()).toBe(0)
    expect(results(out)).toEqual(results(reference))
    expectFinishedOnce(out)
    const retried = lines(path.join(victim!, "attempts.jsonl")).filter((a) => a.activity === "train-2")
    expect(retried.map((a) => a.from)).toEqual([1, 1])
    expect(retried[0]!.runner).toBe(runner)
    expect(retried[1]!.runner).not.toBe(runner)
    const survivor = rs.find((r) => r !== killed)!
    expect(survivor.stderr()).toContain(`run ${path.basename(victim!)}: train-2 (from epoch 1)`)
    for (const r of rs) r.kill("SIGKILL")
  }, 240_000)

  it("PostgreSQL stalled for 6 s mid-training (every server process SIGSTOPped): runners keep their shards, nothing runs twice", async () => {
    const url = Postgres.createDatabase(server!, "sweep_stall")
    const rs = await runners(url)
    const out = path.join(tmp, "cluster-stalled")
    const half = path.join(tmp, "sweep-half-final.json")
    fs.writeFileSync(half, JSON.stringify({ ...readJson(grid), axes: { readOut: ["final"], seed: [1, 2] } }))
    const sweep = Processes.deq(["sweep", "--grid", half, "--out", out, "--storage", url], tmp, env)
    await Processes.waitFor(() => inEpoch2(out) !== undefined, 120_000, "a run in epoch 2")
    // a shard-lock refresh is in flight during the stall: with a refresh timeout shorter than it, the runner
    // declares its storage unhealthy, drops its shards and the run's activity starts again (the conv ablation's
    // evaluations did, when synchronous batches held the runners' event loops in the same way)
    server!.signal("SIGSTOP")
    await new Promise((resolve) => setTimeout(resolve, 6_000))
    server!.signal("SIGCONT")
    expect(await sweep.exited, sweep.stderr()).toBe(0)
    const mine = results(out).runs
    expect(mine.map((r: Json) => r.state)).toEqual(["done", "done"])
    expect(mine).toEqual(results(reference).runs.filter((r: Json) => mine.some((m: Json) => m.id === r.id)))
    expectFinishedOnce(out)
    for (const id of runIds(out)) {
      const activities = lines(path.join(out, "runs", id, "attempts.jsonl")).map((a) => a.activity as string)
      expect(activities, `${id}: no activity started twice`).toEqual([...new Set(activities)])
    }
    for (const r of rs) expect(r.stderr()).not.toContain("Shard lock storage is unhealthy")
    for (const r of rs) r.kill("SIGKILL")
  }, 150_000)

  it("PostgreSQL stopped and restarted mid-sweep: runners report the outage and carry on; same results", async () => {
    const url = Postgres.createDatabase(server!, "sweep_outage")
    const rs = await runners(url)
    const out = path.join(tmp, "cluster-outage")
    // two of sweep-quick's runs (the same resolved configs, so the same ids and results), to keep the test short
    const half = path.join(tmp, "sweep-half.json")
    fs.writeFileSync(half, JSON.stringify({ ...readJson(grid), axes: { readOut: ["ris"], seed: [1, 2] } }))
    const sweep = Processes.deq(["sweep", "--grid", half, "--out", out, "--storage", url], tmp, env)
    await Processes.waitFor(() => inEpoch2(out) !== undefined, 120_000, "a run in epoch 2")
    server!.stop()
    await Processes.waitFor(() => rs.some((r) => r.stderr().includes("storage unreachable")), 20_000, "a runner reporting the outage")
    server!.restart()
    expect(await sweep.exited, sweep.stderr()).toBe(0)
    expect(rs.filter((r) => /storage back after \d+ s/.test(r.stderr())).length).toBeGreaterThan(0)
    const mine = results(out).runs
    expect(mine.map((r: Json) => r.state)).toEqual(["done", "done"])
    expect(mine).toEqual(results(reference).runs.filter((r: Json) => mine.some((m: Json) => m.id === r.id)))
    expectFinishedOnce(out)
    for (const r of rs) r.kill("SIGKILL")
  }, 150_000)
})

describe.skipIf(pageSkip !== undefined)("index.html in headless Chromium", () => {
  it("shows the arm and run tables and both plots, with no console errors or failed loads", async () => {
    const { chromium: browserType } = await import("playwright-core")
    const browser = await browserType.launch({
      executablePath: chromium,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    })
    try {
      const page = await browser.newPage()
      const problems: Array<string> = []
      page.on("console", (m) => {
        if (m.type() === "error") problems.push(`console: ${m.text()}`)
      })
      page.on("pageerror", (e) => problems.push(`page: ${e.message}`))
      page.on("requestfailed", (r) => problems.push(`failed: ${r.url()}`))
      await page.goto(`file://${path.join(reference, "index.html")}`, { waitUntil: "load" })
      expect(await page.title()).toBe("Sweep sweep-quick")
      expect(await page.locator("#arms tbody tr").count()).toBe(2)
      expect(await page.locator("#runs tbody tr").count()).toBe(4)
      expect(await page.locator("#arms tbody tr").first().locator("td").first().textContent()).toBe("final")
      for (const id of ["#plot-accuracy", "#plot-entropy"]) {
        const width = await page.locator(id).evaluate((img) => (img as unknown as { naturalWidth: number }).naturalWidth)
        expect(width, id).toBeGreaterThan(100)
      }
      const links = await page.locator("#runs a").evaluateAll((as) => as.map((a) => (a as unknown as { getAttribute: (n: string) => string }).getAttribute("href")))
      expect(links.length).toBe(16)
      for (const href of links) expect(fs.existsSync(path.join(reference, href)), href).toBe(true)
      expect(problems).toEqual([])
    } finally {
      await browser.close()
    }
  }, 60_000)
})
