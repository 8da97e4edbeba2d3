/**
 * Timing helpers shared by the benchmarks: medians after a warm-up.
 */

/** The median of a non-empty list. */
export const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** Runs `f` `warmup` times untimed, then returns the median wall time in ms of `runs` timed calls. */
export const timeIt = (f: () => void, warmup: number, runs: number): number => {
  for (let i = 0; i < warmup; i++) f()
  const ms: Array<number> = []
  for (let i = 0; i < runs; i++) {
    const start = performance.now()
    f()
    ms.push(performance.now() - start)
  }
  return median(ms)
}
