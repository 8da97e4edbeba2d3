/**
 * The worker side of a pool (pool.ts): `serve(handle)` answers the parent's requests one at a time, in the order
 * they were posted, each with the Effect `handle` returns. A typed failure (an error with a `_tag`) travels back
 * as plain data the parent can revive; a defect travels as its message. Logs below Warn are dropped (the parent
 * reports progress).
 *
 * @example
 * ```
 * serve((body) => Effect.succeed({ body: (body as { x: number }).x ** 2 }))
 * ```
 *
 * @internal
 */
import { parentPort } from "node:worker_threads"
import { Cause, Effect, Exit, Option, References } from "effect"
import { messageOf } from "../../Errors.ts"
import type { Message, RemoteFailure } from "./pool.ts"

/** A typed error as plain data: its tag, message and the fields that survive a structured clone. */
const encodeFailure = (e: unknown): RemoteFailure => {
  const tagged = typeof e === "object" && e !== null && typeof (e as { _tag?: unknown })._tag === "string"
  if (!tagged) return { _tag: "Error", message: messageOf(e), fields: {} }
  const fields: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(e as object)) {
    if (k !== "_tag" && (v === null || ["string", "number", "boolean"].includes(typeof v))) fields[k] = v
  }
  return { _tag: (e as { _tag: string })._tag, message: String((e as { message?: unknown }).message ?? ""), fields }
}

const failureOf = (cause: Cause.Cause<unknown>): RemoteFailure => {
  const error = Cause.findErrorOption(cause)
  if (Option.isSome(error)) return encodeFailure(error.value)
  return { _tag: "Defect", message: messageOf(Cause.squash(cause)), fields: {} }
}

/** Answers the parent's requests with `handle`, one at a time. Call once, at the top of the worker script. */
export const serve = (handle: (body: unknown) => Effect.Effect<Message, unknown>): void => {
  const port = parentPort
  if (port === null) throw new Error("serve: not inside a worker thread")
  let queue: Promise<void> = Promise.resolve()
  port.on("message", (request: { readonly id: number; readonly body: unknown }) => {
    queue = queue.then(async () => {
      const exit = await Effect.runPromiseExit(
        Effect.suspend(() => handle(request.body)).pipe(Effect.provideService(References.MinimumLogLevel, "Warn"))
      )
      if (Exit.isSuccess(exit)) port.postMessage({ id: request.id, ok: true, body: exit.value.body }, exit.value.transfer as Array<ArrayBuffer> | undefined)
      else port.postMessage({ id: request.id, ok: false, failure: failureOf(exit.cause) })
    })
  })
}
