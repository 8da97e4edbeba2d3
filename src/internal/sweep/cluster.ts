/**
 * The three ways a process joins a sweep's Effect Cluster (docs/sweeps.md, "The model" and "Storage"):
 * - embedded: one process, SingleRunner on a SQLite file in the output directory (no server);
 * - runner: a socket runner on PostgreSQL that runs workflows and their activities (`deq runner`);
 * - client: PostgreSQL storage, no shards (`deq sweep --storage`): submits workflows and polls them.
 *
 * @internal
 */
import * as path from "node:path"
import { NodeClusterSocket } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Cause, Duration, Effect, Layer, Logger, Option, Redacted, References, Schema } from "effect"
import { ClusterWorkflowEngine, RunnerAddress, SingleRunner } from "effect/cluster"
import * as Digest from "effect/crypto/Digest"
import * as SqlClient from "effect/sql/SqlClient"
import type { WorkflowEngine } from "effect/workflow"
import * as Sqlite from "./sqlite.ts"
import { RunWorkflowLive, type Workers, workersLayer } from "./workflow.ts"

/** The storage could not be reached or used: `storage` names it (password hidden). */
export class StorageError extends Schema.TaggedError<StorageError>()("StorageError", {
  storage: Schema.String,
  message: Schema.String
}) {}

/** The embedded storage file of an output directory. */
export const embeddedFile = (out: string): string => path.join(out, "sweep.db")

/** A storage URL with its password hidden (for messages). */
export const redact = (url: string): string => url.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:***@")

/** Checks a `--storage` value: a postgres:// (or postgresql://) URL. */
export const parseStorage = (url: string): Effect.Effect<string, StorageError> =>
  /^postgres(ql)?:\/\/[^/]+/.test(url)
    ? Effect.succeed(url)
    : Effect.fail(new StorageError({ storage: redact(url), message: `unsupported storage "${redact(url)}": give a postgres://user@host:port/database URL (or no --storage for the embedded SQLite file)` }))

const pg = (url: string) =>
  PgClient.layer({ url: Redacted.make(url), connectTimeout: "5 seconds", maxConnections: 8, applicationName: "deq-sweep" })

/** The innermost message of a cause, on one line. */
export const describeCause = (cause: Cause.Cause<unknown>): string => {
  const e = Cause.squash(cause) as { message?: unknown; reason?: { message?: unknown; cause?: { message?: unknown } } }
  const parts = [e?.reason?.message ?? e?.message, e?.reason?.cause?.message]
    .filter((m): m is string => typeof m === "string" && m.length > 0)
    .map((m) => m.split("\n")[0]!)
  const text = [...new Set(parts)].join(": ")
  return text.length > 0 ? text : Cause.pretty(cause).split("\n")[0] ?? "unknown error"
}

/** One `SELECT 1` against the storage, failing with a one-line {@link StorageError}. */
export const ping = (url: string): Effect.Effect<void, StorageError> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`SELECT 1`
  }).pipe(
    Effect.provide(pg(url)),
    Effect.scoped,
    Effect.timeout("10 seconds"),
    Effect.catchCause((cause) =>
      Effect.fail(new StorageError({ storage: redact(url), message: `cannot reach ${redact(url)}: ${describeCause(cause)}` }))
    )
  )

/**
 * Reports storage outages on stderr, one line when it goes away and one when it is back (the cluster itself
 * retries; this says why a sweep pauses).
 */
export const watchStorage = (url: string, say: (line: string) => Effect.Effect<void>) =>
  Effect.gen(function*() {
    let down: number | undefined
    while (true) {
      const ok = yield* Effect.match(ping(url), { onFailure: (e) => e.message, onSuccess: () => undefined })
      if (ok !== undefined && down === undefined) {
        down = Date.now()
        yield* say(`storage unreachable (${ok}); runs continue, results are recorded when it is back`)
      } else if (ok === undefined && down !== undefined) {
        yield* say(`storage back after ${((Date.now() - down) / 1000).toFixed(0)} s`)
        down = undefined
      }
      yield* Effect.sleep(ok === undefined ? "2 seconds" : "1 second")
    }
  })

/**
 * Cluster timings for small sweeps: a dead runner's shards move within seconds (the defaults take about a
 * minute), and messages are polled from storage every 2 s when a notification is missed.
 */
const shardingConfig = {
  shardsPerGroup: 64,
  shardLockRefreshInterval: Duration.seconds(2),
  shardLockExpiration: Duration.seconds(10),
  refreshAssignmentsInterval: Duration.seconds(1),
  runnerHealthCheckInterval: Duration.seconds(3),
  entityMessagePollInterval: Duration.seconds(2),
  entityMaxIdleTime: Duration.minutes(5)
}

/**
 * A socket runner's timings. The shard-lock refresh times out after min(refresh, expiration / 3); a runner whose
 * event loop is held longer (an attack runs a whole batch synchronously: over 20 s, the timeout that fired, for
 * 100 images of the conv ablation with two runners on 2 cores) declares its storage unhealthy, drops its shards,
 * and the same activity starts again, on it or on another runner. With 2 s the conv ablation's first evaluation restarted four times,
 * with 20 s still twice. The expiration bounds how long a SIGKILLed runner's shards stay locked before another
 * runner takes them (5 minutes made test/SweepFaults.test.ts's kill test time out), so 30 s / 90 s is the
 * compromise; test/SweepFaults.test.ts also stalls PostgreSQL to check the refresh timeout.
 */
const runnerShardingConfig = {
  ...shardingConfig,
  shardLockRefreshInterval: Duration.seconds(30),
  shardLockExpiration: Duration.seconds(90)
}

/** Cluster log lines: one line each, warnings and errors only unless `verbose`. */
export const loggerLayer = (verbose: boolean, write: (line: string) => void) =>
  Layer.mergeAll(
    Logger.layer([
      Logger.make(({ message, logLevel, date, cause }) => {
        const text = (Array.isArray(message) ? message : [message]).map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join(" ")
        const why = cause.reasons.length > 0 ? `: ${describeCause(cause)}` : ""
        write(`${date.toISOString().slice(11, 19)} ${logLevel.toLowerCase()} ${text}${why}`)
      })
    ]),
    Layer.succeed(References.MinimumLogLevel, verbose ? "Info" : "Error")
  )

/** A layer's failure as one StorageError line. */
const failAs = (storage: string, what: string) => <A, E, R>(self: Layer.Layer<A, E, R>): Layer.Layer<A, StorageError, R> =>
  Layer.catchCause(self, (cause) => Layer.effectDiscard(Effect.fail(new StorageError({ storage, message: `${what}: ${describeCause(cause)}` }))) as unknown as Layer.Layer<A, StorageError>)

/** Everything a process that runs workflows needs besides the cluster: the workflow and its worker permits. */
const handlers = (workers: number) => RunWorkflowLive.pipe(Layer.provideMerge(workersLayer(workers)))

/** The embedded cluster: one process, SQLite storage in `out`, the workflows registered and run here. */
export const embedded = (out: string, workers = 1): Layer.Layer<WorkflowEngine.WorkflowEngine | Workers, StorageError> =>
  handlers(workers).pipe(
    Layer.provideMerge(ClusterWorkflowEngine.layer),
    Layer.provide(SingleRunner.layer({ runnerStorage: "memory", shardingConfig })),
    Layer.provide(Sqlite.layer(embeddedFile(out))),
    Layer.provide(Digest.layerWebCrypto),
    failAs(embeddedFile(out), `cannot open ${embeddedFile(out)}`)
  )

/** Options of {@link runner}. */
export interface RunnerOptions {
  readonly storage: string
  /** the address other runners reach this one at */
  readonly host: string
  readonly port: number
  readonly workers: number
}

/** A socket runner on PostgreSQL storage that runs the sweep workflows (`deq runner`). */
export const runner = (o: RunnerOptions): Layer.Layer<WorkflowEngine.WorkflowEngine | Workers, StorageError> =>
  handlers(o.workers).pipe(
    Layer.provideMerge(ClusterWorkflowEngine.layer),
    Layer.provide(NodeClusterSocket.layer({
      storage: "sql",
      shardingConfig: {
        ...runnerShardingConfig,
        runnerAddress: Option.some(RunnerAddress.make(o.host, o.port)),
        runnerListenAddress: Option.some(RunnerAddress.make("0.0.0.0", o.port))
      }
    })),
    Layer.provide(pg(o.storage)),
    Layer.provide(Digest.layerWebCrypto),
    failAs(redact(o.storage), `runner cannot start on ${redact(o.storage)}`)
  )

/** A client of a PostgreSQL cluster: submits and polls workflows, runs none (`deq sweep --storage`). */
export const client = (storage: string): Layer.Layer<WorkflowEngine.WorkflowEngine, StorageError> =>
  ClusterWorkflowEngine.layer.pipe(
    Layer.provide(NodeClusterSocket.layer({ storage: "sql", clientOnly: true, shardingConfig })),
    Layer.provide(pg(storage)),
    failAs(redact(storage), `cannot join ${redact(storage)}`)
  )
