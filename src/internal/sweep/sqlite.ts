/**
 * A SqlClient (effect/sql) over better-sqlite3: the storage of an embedded sweep, one file in the sweep's output
 * directory. Effect ships no SQLite driver for effect 4.1 on Node 20 (the effect-4 `@effect/sql-sqlite-node`
 * betas import modules 4.1 no longer exports, and use `node:sqlite`, which Node 20 lacks), so this is our own,
 * small: one connection, statements serialized by a semaphore, WAL journal so a killed process loses nothing that
 * was committed (docs/sweeps.md, "Storage"). better-sqlite3 is an optional peer dependency, loaded on first use, so
 * the rest of the package works without it.
 *
 * @internal
 */
import type Database from "better-sqlite3"
import { Effect, Layer, Scope, Semaphore, Stream } from "effect"
import * as Reactivity from "effect/reactivity/Reactivity"
import * as SqlClient from "effect/sql/SqlClient"
import type * as SqlConnection from "effect/sql/SqlConnection"
import { classifySqliteError, SqlError } from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"

/** better-sqlite3 binds booleans as errors and undefined as missing: map them to what SQLite stores. */
const bindable = (params: ReadonlyArray<unknown>): Array<unknown> =>
  params.map((p) => (typeof p === "boolean" ? (p ? 1 : 0) : p === undefined ? null : p))

const failure = (operation: string) => (cause: unknown) =>
  new SqlError({ reason: classifySqliteError(cause, { message: `SQLite ${operation} failed`, operation }) })

/** Opens `file` (created when absent) and wraps it as one effect/sql connection. */
const connect = (file: string): Effect.Effect<SqlConnection.Connection, SqlError, Scope.Scope> =>
  Effect.gen(function*() {
    const Driver = yield* Effect.tryPromise({
      try: () => import("better-sqlite3").then((m) => m.default),
      catch: (cause) =>
        new SqlError({
          reason: classifySqliteError(cause, {
            message: "the embedded sweep storage needs the package better-sqlite3 12 (npm install better-sqlite3@12)",
            operation: "open"
          })
        })
    })
    const db = yield* Effect.acquireRelease(
      Effect.try({ try: () => new Driver(file, { timeout: 10_000 }), catch: failure("open") }),
      (d) => Effect.sync(() => d.close())
    )
    yield* Effect.try({
      try: () => {
        db.pragma("journal_mode = WAL")
        db.pragma("synchronous = NORMAL")
      },
      catch: failure("open")
    })
    const cache = new Map<string, Database.Statement>()
    const prepare = (sql: string): Database.Statement => {
      let s = cache.get(sql)
      if (s === undefined) {
        s = db.prepare(sql)
        if (cache.size > 500) cache.clear()
        cache.set(sql, s)
      }
      return s
    }
    const rows = (s: Database.Statement, params: ReadonlyArray<unknown>, raw: boolean): ReadonlyArray<any> | unknown => {
      if (s.reader) return s.all(...bindable(params))
      const info = s.run(...bindable(params))
      return raw ? { changes: info.changes, lastInsertRowid: info.lastInsertRowid } : []
    }
    const values = (s: Database.Statement, params: ReadonlyArray<unknown>): ReadonlyArray<ReadonlyArray<unknown>> => {
      if (!s.reader) {
        s.run(...bindable(params))
        return []
      }
      return s.raw(true).all(...bindable(params)) as Array<Array<unknown>>
    }
    const run = <A>(f: () => A) => Effect.try({ try: f, catch: failure("execute") })
    const transform = (out: ReadonlyArray<any>, t: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined) =>
      t === undefined ? out : t(out)
    return {
      execute: (sql, params, t) => run(() => transform(rows(prepare(sql), params, false) as ReadonlyArray<any>, t)),
      executeRaw: (sql, params) => run(() => rows(prepare(sql), params, true)),
      executeValues: (sql, params) => run(() => values(db.prepare(sql), params)),
      executeValuesUnprepared: (sql, params) => run(() => values(db.prepare(sql), params)),
      executeUnprepared: (sql, params, t) => run(() => transform(rows(db.prepare(sql), params, false) as ReadonlyArray<any>, t)),
      executeStream: () => Stream.die("streaming queries are not supported by the embedded SQLite storage")
    } satisfies SqlConnection.Connection
  })

/**
 * A SqlClient on the SQLite file `file` (the SQLite dialect, so Effect Cluster's SQL storage uses its SQLite
 * statements). One connection; transactions hold it for their whole duration.
 */
export const make = (file: string): Effect.Effect<SqlClient.SqlClient, SqlError, Scope.Scope | Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const connection = yield* connect(file)
    const semaphore = yield* Semaphore.make(1)
    const acquirers = SqlClient.makeSqliteAcquirers({ connection: Effect.succeed(connection), semaphore })
    return yield* SqlClient.make({
      ...acquirers,
      compiler: Statement.makeCompilerSqlite(),
      spanAttributes: [["db.system.name", "sqlite"]],
      driver: "sqlite"
    })
  })

/** The SqlClient of {@link make} as a layer. */
export const layer = (file: string): Layer.Layer<SqlClient.SqlClient, SqlError> =>
  Layer.effect(SqlClient.SqlClient, make(file)).pipe(Layer.provide(Reactivity.layer))
