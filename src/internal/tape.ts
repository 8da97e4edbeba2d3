/**
 * Tape control for the internals: `noGrad` is `Tensor.untaped` (tape off, outer tape restored), named as the
 * internals have always called it.
 *
 * @internal
 */
export { untaped as noGrad } from "../Tensor.ts"
