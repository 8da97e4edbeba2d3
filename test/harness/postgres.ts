/**
 * A throwaway PostgreSQL server for tests: `initdb` in a temp directory, started on a free loopback port (TCP on
 * 127.0.0.1 only, its socket in the same directory), stopped and restarted on demand, removed at teardown.
 * PostgreSQL refuses to run as root, so as root the binaries run as the `postgres` user (runuser).
 *
 * @example
 * ```ts
 * const pg = await Postgres.start()
 * if (pg === undefined) console.log(Postgres.skipReason())
 * else { use(pg.url); await pg.stop(); await pg.restart(); await pg.teardown() }
 * ```
 */
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"

const candidates = () => {
  const dirs = ["/usr/lib/postgresql"].flatMap((root) => {
    try {
      return fs.readdirSync(root).sort((a, b) => Number(b) - Number(a)).map((v) => path.join(root, v, "bin"))
    } catch {
      return []
    }
  })
  return dirs.filter((d) => fs.existsSync(path.join(d, "initdb")) && fs.existsSync(path.join(d, "pg_ctl")))
}

/** The directory of PostgreSQL's server binaries, or undefined when none is installed. */
export const binDir = (): string | undefined => candidates()[0]

const isRoot = (): boolean => typeof process.getuid === "function" && process.getuid() === 0

/** Why the PostgreSQL tests cannot run here, or undefined when they can. */
export const skipReason = (): string | undefined => {
  if (binDir() === undefined) return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)"
  if (isRoot()) {
    const r = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" })
    if (r.status !== 0) return "running as root and there is no postgres user to run the server as"
  }
  return undefined
}

/** A free TCP port on 127.0.0.1. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

/** A running test server. */
export interface Server {
  readonly url: string
  readonly port: number
  readonly dir: string
  /** stops the server (fast shutdown: connections are closed) */
  readonly stop: () => void
  /** starts it again on the same port and data */
  readonly restart: () => void
  /** sends `signal` to the server and all its backends (SIGSTOP / SIGCONT: a stall, not an outage) */
  readonly signal: (signal: "SIGSTOP" | "SIGCONT") => void
  /** stops it and removes its directory */
  readonly teardown: () => void
}

/** Runs a PostgreSQL binary, as the postgres user when we are root. */
const run = (bin: string, args: ReadonlyArray<string>): string => {
  const exe = path.join(binDir()!, bin)
  const [cmd, argv] = isRoot() ? ["runuser", ["-u", "postgres", "--", exe, ...args]] : [exe, [...args]]
  return execFileSync(cmd, argv, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 60_000 })
}

/** Creates database `name` on a running server; returns its URL. */
export const createDatabase = (server: Server, name: string): string => {
  execFileSync(path.join(binDir()!, "psql"), ["-h", "127.0.0.1", "-p", String(server.port), "-U", "deq", "-d", "postgres", "-qc", `CREATE DATABASE ${name}`], {
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 30_000
  })
  return `postgres://deq@127.0.0.1:${server.port}/${name}`
}

/** Initialises and starts a server on a free loopback port; undefined (see {@link skipReason}) when it cannot. */
export const start = async (): Promise<Server | undefined> => {
  if (skipReason() !== undefined) return undefined
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "deq-pg-"))
  const data = path.join(dir, "data")
  if (isRoot()) execFileSync("chown", ["-R", "postgres", dir])
  run("initdb", ["-D", data, "-U", "deq", "--auth=trust", "--no-sync", "-E", "UTF8"])
  const port = await freePort()
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`
  const startServer = () => {
    run("pg_ctl", ["-D", data, "-o", options, "-l", path.join(dir, "server.log"), "-w", "-t", "60", "start"])
  }
  const stop = () => {
    try {
      run("pg_ctl", ["-D", data, "-m", "fast", "-w", "-t", "60", "stop"])
    } catch {
      // already stopped
    }
  }
  const signal = (sig: "SIGSTOP" | "SIGCONT") => {
    const postmaster = Number(fs.readFileSync(path.join(data, "postmaster.pid"), "utf8").split("\n")[0])
    const children = spawnSync("pgrep", ["-P", String(postmaster)], { encoding: "utf8" }).stdout.split("\n").filter((l) => l.trim() !== "")
    for (const pid of [postmaster, ...children.map(Number)]) process.kill(pid, sig)
  }
  startServer()
  return {
    url: `postgres://deq@127.0.0.1:${port}/postgres`,
    port,
    dir,
    stop,
    restart: startServer,
    signal,
    teardown: () => {
      stop()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}
