/**
 * The typed error a training run stops with when its loss is not finite (re-exported by src/Train.ts; the event
 * types are defined there).
 *
 * @internal
 */
import { Schema } from "effect"

/**
 * The loss became NaN or infinite: training stops before the update is applied. Names the epoch, the batch of the
 * epoch and the global step.
 */
export class NaNLoss extends Schema.TaggedError<NaNLoss>()("NaNLoss", {
  epoch: Schema.Number,
  batch: Schema.Number,
  step: Schema.Number,
  loss: Schema.Number,
  message: Schema.String
}) {}
