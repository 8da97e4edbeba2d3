/**
 * A pool of worker threads as a scoped resource: spawned (and each one's first message answered) when the Scope
 * opens, terminated when it closes, whether the program ended, failed or was interrupted. Requests are posted at
 * once and answered in order by each worker (poolWorker.ts `serve`); typed arrays travel as transferables. A
 * worker that throws outside a request, exits or is terminated fails its pending and later requests with a
 * WorkerError naming it, so nothing waits for a reply that cannot come.
 *
 * The worker script is found next to the calling module (`entryOf(import.meta.url, "name")`): a `.ts` file in a
 * clone (run through tsx's loader, registered inside the worker), a `.js` file when built.
 *
 * @example
 * ```
 * const pool = yield* Pool.make({ entry: Pool.entryOf(import.meta.url, "myWorker"), size: 1, init: () => ({ body: {} }) })
 * const reply = yield* pool.request(1, { body: { kind: "square", x: 3 } })
 * ```
 *
 * @internal
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { Worker } from "node:worker_threads"
import { Deferred, Effect, type Scope } from "effect"
import { messageOf, WorkerError } from "../../Errors.ts"

/** One message and the buffers it hands over (they are unusable in the sender afterwards). */
export interface Message {
  readonly body: unknown
  readonly transfer?: ReadonlyArray<ArrayBuffer>
}

/** A request a worker failed with a typed error, as plain data (`_tag`, `message` and its other fields). */
export interface RemoteFailure {
  readonly _tag: string
  readonly message: string
  readonly fields: Readonly<Record<string, unknown>>
}

/** How a pool is made. */
export interface PoolOptions<E> {
  /** the worker script (see {@link entryOf}) */
  readonly entry: URL
  /** worker threads, numbered 1..size */
  readonly size: number
  /** the first message of worker i; the pool is ready when every worker answered it */
  readonly init: (worker: number) => Message
  /** added to the workers' environment */
  readonly env?: Readonly<Record<string, string>>
  /** turns a typed failure of a request back into the caller's error; undefined: a WorkerError ("failure") */
  readonly revive?: (failure: RemoteFailure) => E | undefined
}

/** A running pool. */
export interface Pool<E> {
  readonly size: number
  /** posts a request to worker i now (it starts at once); the returned Effect waits for the reply */
  readonly post: (worker: number, message: Message) => Effect.Effect<Effect.Effect<unknown, E | WorkerError>>
  /** posts a request and waits for the reply */
  readonly request: (worker: number, message: Message) => Effect.Effect<unknown, E | WorkerError>
  /** terminates worker i as if killed from outside (its requests fail with a WorkerError) */
  readonly kill: (worker: number) => Effect.Effect<void>
}

/** the wire format: requests { id, body }, replies { id, ok, body | failure } */
interface Reply {
  readonly id: number
  readonly ok: boolean
  readonly body?: unknown
  readonly failure?: RemoteFailure
}

/**
 * The worker script `name` next to the module at `moduleUrl` (pass `import.meta.url`), with that module's own
 * extension: `.ts` when the sources run through tsx, `.js` when built.
 */
export const entryOf = (moduleUrl: string, name: string): URL =>
  new URL(`./${name}${moduleUrl.endsWith(".ts") ? ".ts" : ".js"}`, moduleUrl)

/** tsx's ESM API (its `register()` installs the TypeScript loader in the calling thread), from its exports map. */
const tsxApi = (): string => {
  const require = createRequire(import.meta.url)
  const manifest = require.resolve("tsx/package.json")
  const exports = (JSON.parse(fs.readFileSync(manifest, "utf8")) as { exports?: Record<string, unknown> }).exports
  const api = exports?.["./esm/api"] as { import?: string | { default?: string } } | undefined
  const file = typeof api?.import === "string" ? api.import : api?.import?.default
  if (file === undefined) throw new Error(`${manifest} has no "./esm/api" import export`)
  return pathToFileURL(path.join(path.dirname(manifest), file)).href
}

const live = new Set<Worker>()

/** Worker threads of every pool in this thread that have started and not yet exited (tests: nothing is left over). */
export const liveWorkers = (): number => live.size

/** Terminates every live worker thread of this thread, as if killed from outside (fault tests). */
export const killAll = (): Promise<void> => Promise.all([...live].map((w) => w.terminate())).then(() => undefined)

/** Starts one worker thread on `entry`; a `.ts` entry first registers tsx inside the worker. */
const spawn = (entry: URL, env: Readonly<Record<string, string>>): Worker => {
  const options = { env: { ...process.env, ...env } }
  const bootstrap = () => `import(${JSON.stringify(tsxApi())}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}) })`
  const worker = entry.pathname.endsWith(".ts") ? new Worker(bootstrap(), { ...options, eval: true }) : new Worker(entry, options)
  live.add(worker)
  worker.once("exit", () => live.delete(worker))
  return worker
}

/** One worker and what waits on it. */
interface Slot {
  readonly index: number
  readonly worker: Worker
  readonly pending: Map<number, Deferred.Deferred<unknown, unknown>>
  next: number
  /** set once the worker is gone: every later request fails with it */
  dead: WorkerError | undefined
  closing: boolean
}

const remoteError = (index: number, f: RemoteFailure) =>
  new WorkerError({ worker: index, reason: "failure", message: `worker ${index} failed: ${f._tag}: ${f.message}` })

/** Marks the slot dead and fails everything waiting on it. */
const bury = (slot: Slot, error: WorkerError): void => {
  if (slot.dead !== undefined || slot.closing) return
  slot.dead = error
  for (const d of slot.pending.values()) Deferred.doneUnsafe(d, Effect.fail(error))
  slot.pending.clear()
}

const listen = <E>(slot: Slot, revive: PoolOptions<E>["revive"]): void => {
  const i = slot.index
  slot.worker.on("message", (reply: Reply) => {
    const d = slot.pending.get(reply.id)
    if (d === undefined) return
    slot.pending.delete(reply.id)
    if (reply.ok) Deferred.doneUnsafe(d, Effect.succeed(reply.body))
    else Deferred.doneUnsafe(d, Effect.fail(revive?.(reply.failure!) ?? remoteError(i, reply.failure!)))
  })
  slot.worker.on("error", (e) =>
    bury(slot, new WorkerError({ worker: i, reason: "crash", message: `worker ${i} crashed: ${messageOf(e)}` })))
  slot.worker.on("messageerror", (e) =>
    bury(slot, new WorkerError({ worker: i, reason: "crash", message: `worker ${i} sent a message that could not be read: ${messageOf(e)}` })))
  slot.worker.on("exit", (code) =>
    bury(slot, new WorkerError({ worker: i, reason: "exit", message: `worker ${i} exited with code ${code}` })))
}

const post = (slot: Slot, message: Message): Effect.Effect<unknown, unknown> => {
  if (slot.dead !== undefined) return Effect.fail(slot.dead)
  const id = slot.next++
  const d = Deferred.makeUnsafe<unknown, unknown>()
  slot.pending.set(id, d)
  try {
    slot.worker.postMessage({ id, body: message.body }, message.transfer as Array<ArrayBuffer> | undefined)
  } catch (e) {
    slot.pending.delete(id)
    return Effect.fail(new WorkerError({ worker: slot.index, reason: "failure", message: `cannot post to worker ${slot.index}: ${messageOf(e)}` }))
  }
  return Deferred.await(d)
}

/** Terminates a worker and waits for it to be gone (never fails). */
const terminate = (slot: Slot): Effect.Effect<void> =>
  Effect.promise(async () => {
    slot.closing = true
    slot.worker.removeAllListeners("message")
    await slot.worker.terminate().catch(() => undefined)
  })

/**
 * Spawns `size` workers, sends each its init message and waits for every answer; the workers are terminated when
 * the Scope closes. A worker that cannot start or fails its init is a WorkerError ("spawn") naming it.
 */
export const make = <E>(options: PoolOptions<E>): Effect.Effect<Pool<E>, WorkerError, Scope.Scope> =>
  Effect.gen(function*() {
    const slots = yield* Effect.forEach(
      Array.from({ length: options.size }, (_, k) => k + 1),
      (index) =>
        Effect.acquireRelease(
          Effect.try({
            try: (): Slot => {
              const slot: Slot = { index, worker: spawn(options.entry, options.env ?? {}), pending: new Map(), next: 0, dead: undefined, closing: false }
              listen(slot, options.revive)
              return slot
            },
            catch: (e) => new WorkerError({ worker: index, reason: "spawn", message: `worker ${index} could not start: ${messageOf(e)}` })
          }),
          terminate
        )
    )
    // every worker starts at once; the pool is ready when all answered their init
    yield* Effect.forEach(slots, (slot) =>
      post(slot, options.init(slot.index)).pipe(
        Effect.mapError((e) =>
          new WorkerError({
            worker: slot.index,
            reason: "spawn",
            message: `worker ${slot.index} could not start: ${e instanceof WorkerError ? e.message : (e as { message?: string }).message ?? String(e)}`
          })
        )
      ), { concurrency: "unbounded", discard: true })
    const slotOf = (worker: number): Slot => {
      const s = slots[worker - 1]
      if (s === undefined) throw new RangeError(`no worker ${worker} in a pool of ${slots.length}`)
      return s
    }
    const pool: Pool<E> = {
      size: slots.length,
      post: (worker, message) => Effect.sync(() => post(slotOf(worker), message) as Effect.Effect<unknown, E | WorkerError>),
      request: (worker, message) => Effect.suspend(() => post(slotOf(worker), message) as Effect.Effect<unknown, E | WorkerError>),
      kill: (worker) => Effect.promise(() => slotOf(worker).worker.terminate().then(() => undefined))
    }
    return pool
  })
