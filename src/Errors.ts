/**
 * Typed failures shared by every module of effect-deq.
 *
 * Each error says what failed and carries the data needed to act on it: the field of a config, the file of a
 * dataset, the statistics of a solve. Module-specific errors (NotConverged, Diverged, ...) live in their module;
 * the ones here are used across modules.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * What a caught value says, in one line: the first line of an Error's message, anything else as text. The
 * `message` of a typed error made from a caught exception.
 *
 * @category constructors
 */
export const messageOf = (u: unknown): string => (u instanceof Error ? u.message : String(u)).split("\n")[0]!

/**
 * A configuration value is wrong: an unknown key, a value out of range, an unknown backend name.
 * `path` names the field (e.g. `solver.maxIter`), `message` says what is wrong and what is allowed.
 *
 * @category errors
 */
export class ConfigError extends Schema.TaggedError<ConfigError>()("ConfigError", {
  path: Schema.String,
  message: Schema.String
}) {}

/**
 * A dataset could not be read: `file` names the file or directory, `message` the problem
 * (missing, wrong magic number, truncated, count mismatch, label out of range).
 *
 * @category errors
 */
export class DatasetError extends Schema.TaggedError<DatasetError>()("DatasetError", {
  file: Schema.String,
  message: Schema.String
}) {}

/**
 * A checkpoint could not be written or read back: `path` names the directory or file, `tensor` the offending
 * tensor when there is one.
 *
 * @category errors
 */
export class CheckpointError extends Schema.TaggedError<CheckpointError>()("CheckpointError", {
  path: Schema.String,
  tensor: Schema.optional(Schema.String),
  message: Schema.String
}) {}

/**
 * A block of tensor code left tensors behind (or disposed more than it created).
 *
 * @category errors
 */
export class TensorLeak extends Schema.TaggedError<TensorLeak>()("TensorLeak", {
  before: Schema.Number,
  after: Schema.Number,
  message: Schema.String
}) {}

/**
 * A worker thread failed: it could not start (`spawn`), threw outside a request or ran out of memory (`crash`),
 * exited (`exit`: process.exit, terminated) or failed a request with an error that is not one of the caller's
 * typed errors (`failure`). `worker` is its index in its pool (1-based: index 0 is the calling thread).
 *
 * @category errors
 */
export class WorkerError extends Schema.TaggedError<WorkerError>()("WorkerError", {
  worker: Schema.Number,
  reason: Schema.Literals(["spawn", "crash", "exit", "failure"]),
  message: Schema.String
}) {}
