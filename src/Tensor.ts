/**
 * The TensorFlow.js backend as an Effect layer, tensors tied to Scopes, and a seeded random source.
 *
 * tfjs keeps one global engine per process; the {@link Backend} service records which backend this program runs
 * on and its layers choose it once at start-up. Everything numeric inside effect-deq is plain synchronous tfjs in
 * `tf.tidy`; tensors that outlive a tidy are owned by an Effect Scope through {@link acquire} / {@link own}.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import * as Tensor from "effect-deq/Tensor"
 * import { tf } from "effect-deq/Tensor"
 *
 * const program = Effect.gen(function*() {
 *   const backend = yield* Tensor.Backend
 *   const w = yield* Tensor.acquire(() => tf.randomNormal([4, 4], 0, 1, "float32", 7))
 *   yield* Effect.log(`${backend.name}: ${w.shape}`)
 * }).pipe(Effect.scoped, Effect.provide(Tensor.Backend.auto))
 * ```
 *
 * @since 0.1.0
 */
import * as tf from "@tensorflow/tfjs"
import { Config, Context, Effect, Layer, Schema, Scope } from "effect"
import { defaulted } from "./Config.ts"
import { ConfigError, messageOf, TensorLeak } from "./Errors.ts"
import { registerWasmConvGradients } from "./internal/tensor/convGrad.ts"
import { describeKernels, registerNativeKernels } from "./internal/tensor/native.ts"

/** TensorFlow.js itself, re-exported so user code and examples use the same instance as effect-deq. */
export { tf }

/**
 * The optional oneDNN kernels on wasm: `nativeKernels()` says whether they are active and which;
 * `setNativeThreads(n)` sets their thread count for the calling thread (1 per worker_thread, say).
 *
 * @category backend
 */
export { nativeKernels, setNativeThreads } from "./internal/tensor/native.ts"

// ---------------------------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------------------------

/**
 * Backends effect-deq knows, fastest first. `tensorflow-gpu` and `tensorflow` come from the optional packages
 * `@tensorflow/tfjs-node-gpu` / `@tensorflow/tfjs-node`; `wasm` is the default; `cpu` is the pure-JS fallback.
 *
 * @category models
 */
export const backendNames = ["tensorflow-gpu", "tensorflow", "wasm", "cpu"] as const

/**
 * One of {@link backendNames}.
 *
 * @category models
 */
export type BackendName = typeof backendNames[number]

/**
 * Backend settings: `"auto"` tries every backend in {@link backendNames} order.
 *
 * @category config
 */
export class BackendConfig extends Schema.Class<BackendConfig>("BackendConfig")({
  name: defaulted(Schema.Literals(["auto", ...backendNames]), "auto")
}) {}

/**
 * The backend this program runs on: its name, the tfjs backend id, and why others were skipped.
 *
 * @category services
 */
export class Backend extends Context.Service<Backend, {
  readonly name: BackendName
  /** the id tfjs reports (`tf.getBackend()`) */
  readonly tfBackend: string
  /** for each backend tried before this one, why it was not used */
  readonly skipped: ReadonlyArray<{ readonly name: BackendName; readonly reason: string }>
}>()("effect-deq/Backend") {
  /**
   * Picks the first backend that loads, in {@link backendNames} order, unless `DEQ_BACKEND` names one.
   */
  static get auto(): Layer.Layer<Backend, ConfigError> {
    return fromConfig
  }
  /**
   * A layer for one named backend; an unknown name is a ConfigError listing the valid ones.
   */
  static named(name: string): Layer.Layer<Backend, ConfigError> {
    return Layer.effect(Backend, select(name))
  }
  /** The WebAssembly backend (the default; its conv-gradient kernels are registered on activation). */
  static get wasm(): Layer.Layer<Backend, ConfigError> {
    return Backend.named("wasm")
  }
  /** The pure-JS cpu backend (slow; the last fallback). */
  static get cpu(): Layer.Layer<Backend, ConfigError> {
    return Backend.named("cpu")
  }
}

const moduleFor: Record<Exclude<BackendName, "cpu">, string> = {
  "tensorflow-gpu": "@tensorflow/tfjs-node-gpu",
  tensorflow: "@tensorflow/tfjs-node",
  wasm: "@tensorflow/tfjs-backend-wasm"
}


/**
 * Loads and activates one backend; throws with the reason when it cannot.
 * tfjs-node and tfjs-node-gpu both register the id "tensorflow"; the GPU build is told apart by its package.
 */
const activate = async (name: BackendName): Promise<string> => {
  if (name !== "cpu") {
    // a variable specifier keeps bundlers and tsc from requiring the optional packages
    const specifier = moduleFor[name]
    await import(specifier)
  }
  const id = name === "tensorflow-gpu" ? "tensorflow" : name
  if (tf.engine().registryFactory[id] === undefined) throw new Error(`backend "${id}" was not registered`)
  const ok = await tf.setBackend(id)
  if (!ok) throw new Error(`tf.setBackend("${id}") failed`)
  await tf.ready()
  if (id === "wasm") {
    registerWasmConvGradients()
    // optional oneDNN kernels over wasm's and ours (they fall back to them); off without the addon or DEQ_NATIVE=0
    registerNativeKernels()
  }
  return tf.getBackend()
}

const isBackendName = (s: string): s is BackendName => (backendNames as ReadonlyArray<string>).includes(s)

const select = (requested: string): Effect.Effect<Backend["Service"], ConfigError> =>
  Effect.gen(function*() {
    if (requested !== "auto" && !isBackendName(requested)) {
      return yield* new ConfigError({
        path: "backend",
        message: `unknown backend "${requested}"; valid names: auto, ${backendNames.join(", ")}`
      })
    }
    const order: ReadonlyArray<BackendName> = requested === "auto" ? backendNames : [requested]
    const skipped: Array<{ name: BackendName; reason: string }> = []
    for (const name of order) {
      const result = yield* Effect.result(Effect.tryPromise({ try: () => activate(name), catch: messageOf }))
      if (result._tag === "Success") {
        const service = Backend.of({ name, tfBackend: result.success, skipped })
        // one line at INFO; why each faster backend was skipped is detail (`--log-level debug`)
        yield* Effect.logInfo(
          `effect-deq backend: ${name}` + (name === "wasm" ? `, ${describeKernels()}` : "") +
            (skipped.length > 0 ? ` (skipped: ${skipped.map((s) => s.name).join(", ")})` : "")
        )
        if (skipped.length > 0) yield* Effect.logDebug(`backends skipped: ${skipped.map((s) => `${s.name}: ${s.reason}`).join("; ")}`)
        return service
      }
      skipped.push({ name, reason: result.failure })
    }
    return yield* new ConfigError({
      path: "backend",
      message: `no backend could be loaded: ${skipped.map((s) => `${s.name}: ${s.reason}`).join("; ")}`
    })
  })

const fromConfig: Layer.Layer<Backend, ConfigError> = Layer.effect(
  Backend,
  Effect.gen(function*() {
    const name = yield* Config.String("DEQ_BACKEND").pipe(Config.withDefault("auto"), Effect.orElseSucceed(() => "auto"))
    return yield* select(name.trim().toLowerCase())
  })
)

/**
 * Activates a backend outside Effect (test set-up, scripts). Same rules as {@link Backend.named}.
 *
 * @category constructors
 */
export const useBackend = (name: BackendName | "auto" = "auto"): Promise<Backend["Service"]> =>
  Effect.runPromise(select(name))

// ---------------------------------------------------------------------------------------------------------------
// Scoped tensors
// ---------------------------------------------------------------------------------------------------------------

const disposeAll = (value: tf.TensorContainer): void => {
  tf.dispose(value as any)
}

/**
 * Runs `make` inside `tf.tidy` and keeps the tensors it returns alive until the current Scope closes.
 * Intermediate tensors of `make` are freed at once.
 *
 * @category scoped tensors
 */
export const acquire = <T extends tf.TensorContainer>(make: () => T): Effect.Effect<T, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.sync(() => tf.tidy(make)), (value) => Effect.sync(() => disposeAll(value)))

/**
 * Ties tensors created elsewhere (e.g. returned from a solver) to the current Scope.
 *
 * @category scoped tensors
 */
export const own = <T extends tf.TensorContainer>(value: T): Effect.Effect<T, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.succeed(value), (v) => Effect.sync(() => disposeAll(v)))

/**
 * A trainable variable owned by the current Scope.
 *
 * @category scoped tensors
 */
export const variable = (
  init: () => tf.Tensor,
  name?: string
): Effect.Effect<tf.Variable, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const value = init()
      const v = tf.variable(value, true, name === undefined ? undefined : `${name}_${variableCounter++}`)
      value.dispose()
      return v
    }),
    (v) => Effect.sync(() => v.dispose())
  )
let variableCounter = 0

/**
 * Counts live tensors around `effect` and fails with {@link TensorLeak} if the count changed.
 * Use it in every tensor test; the effect's own Scope must close inside it.
 *
 * @category testing
 */
export const leakCheck = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | TensorLeak, R> =>
  Effect.gen(function*() {
    const before = tf.memory().numTensors
    const a = yield* effect
    const after = tf.memory().numTensors
    if (after !== before) {
      return yield* new TensorLeak({
        before,
        after,
        message: `${after - before} tensor(s) ${after > before ? "left behind" : "disposed too many"}`
      })
    }
    return a
  })

/**
 * Synchronous twin of {@link leakCheck} for plain tfjs blocks: runs `f`, disposes nothing, and throws a
 * TensorLeak if the live tensor count changed.
 *
 * @category testing
 */
export const noLeaks = <A>(f: () => A): A => {
  const before = tf.memory().numTensors
  const a = f()
  const after = tf.memory().numTensors
  if (after !== before) {
    throw new TensorLeak({ before, after, message: `${after - before} tensor(s) left behind` })
  }
  return a
}

// ---------------------------------------------------------------------------------------------------------------
// Rng
// ---------------------------------------------------------------------------------------------------------------

/**
 * 32-bit mixing (murmur3 finaliser): spreads nearby seeds far apart.
 */
const mix32 = (h: number): number => {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

const hashString = (s: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/**
 * Derives a 32-bit seed from a root seed and a path of labels, e.g. `derive(7, "attack", epoch, batch)`.
 * A pure function: the same path always gives the same seed, whatever was drawn before, so a resumed run draws
 * exactly what an uninterrupted one would.
 *
 * @category rng
 */
export const deriveSeed = (root: number, ...path: ReadonlyArray<string | number>): number => {
  let h = mix32((root >>> 0) ^ 0x9e3779b9)
  for (const part of path) {
    const p = typeof part === "number" ? mix32((part >>> 0) + 0x6a09e667) ^ (Math.floor(part / 2 ** 32) >>> 0) : hashString(part)
    h = mix32(h ^ p ^ Math.imul(h, 0x27d4eb2d))
  }
  return h
}

/**
 * A small, fast, seeded generator (sfc32) for JS-side draws: shuffles, state indices, target classes.
 *
 * @category rng
 */
export interface Stream {
  /** uniform in [0, 1) */
  readonly next: () => number
  /** uniform integer in [lo, hi] (inclusive) */
  readonly int: (lo: number, hi: number) => number
  /** a fresh 32-bit seed for a tfjs random op */
  readonly seed: () => number
  /** a seeded Fisher-Yates permutation of 0..n-1 */
  readonly permutation: (n: number) => Int32Array
}

/**
 * A {@link Stream} from a 32-bit seed.
 *
 * @category rng
 */
export const stream = (seed: number): Stream => {
  let a = mix32(seed ^ 0xdeadbeef), b = mix32(seed + 0x9e3779b9), c = mix32(seed ^ 0x85ebca6b), d = 1
  const u32 = (): number => {
    const t = (((a + b) >>> 0) + d) >>> 0
    d = (d + 1) >>> 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) >>> 0
    c = ((c << 21) | (c >>> 11)) >>> 0
    c = (c + t) >>> 0
    return t
  }
  for (let i = 0; i < 12; i++) u32()
  const next = () => u32() / 4294967296
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1))
  return {
    next,
    int,
    seed: u32,
    permutation: (n) => {
      const p = new Int32Array(n)
      for (let i = 0; i < n; i++) p[i] = i
      for (let i = n - 1; i > 0; i--) {
        const j = int(0, i)
        const tmp = p[i]!
        p[i] = p[j]!
        p[j] = tmp
      }
      return p
    }
  }
}

/**
 * The program's random source. Every use derives its own seed from the root and a label path
 * (`rng.seed("dropout", step)`), so uses are independent and reproducible: same seed, same backend, same numbers.
 *
 * @category services
 */
export class Rng extends Context.Service<Rng, {
  readonly root: number
  /** a 32-bit seed for a tfjs random op, derived from the root and the path */
  readonly seed: (...path: ReadonlyArray<string | number>) => number
  /** a JS generator derived from the root and the path */
  readonly stream: (...path: ReadonlyArray<string | number>) => Stream
}>()("effect-deq/Rng") {
  /**
   * A random source with a fixed root seed.
   */
  static seeded(root: number): Layer.Layer<Rng> {
    return Layer.succeed(Rng, makeRng(root))
  }
}

/**
 * A random source value outside a Layer (scripts, tests).
 *
 * @category constructors
 */
export const makeRng = (root: number): Rng["Service"] =>
  Rng.of({
    root,
    seed: (...path) => deriveSeed(root, ...path),
    stream: (...path) => stream(deriveSeed(root, ...path))
  })

// ---------------------------------------------------------------------------------------------------------------
// Tape control
// ---------------------------------------------------------------------------------------------------------------

/**
 * Runs `f` with gradient recording off, even inside `tf.grad` / `tf.variableGrads`: nothing `f` computes is
 * recorded or kept for the backward pass. A forward solve runs this way so its memory does not grow with the
 * number of iterations; its result is a constant for the surrounding gradient (like `tf.stopGradient`).
 * Relies on tfjs 4.22's engine state (`gradientDepth`), which is why tfjs is pinned.
 *
 * @category tape
 */
export const untaped = <A>(f: () => A): A => {
  const state = (tf.engine() as any).state as { gradientDepth: number; activeTape: unknown }
  const depth = state.gradientDepth
  // a nested tf.grad inside f clears the outer activeTape when it finishes: restore it too
  const tape = state.activeTape
  state.gradientDepth = 0
  try {
    return f()
  } finally {
    state.gradientDepth = depth
    state.activeTape = tape
  }
}
