/**
 * The guides in docs/guides/ run as written: each guide's ```ts blocks, joined in order, are one program (its
 * `effect-deq/<Module>` imports pointed at src/), imported here on the wasm backend. What it prints is checked
 * against what the guide says it prints, and it leaves no tensor behind. (test/Docs.test.ts type-checks them.)
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { tf, useBackend } from "../src/Tensor.ts"
import { guides } from "./guides.ts"

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const dir = fs.mkdtempSync(path.join(repo, ".tmp-guides-"))

/** What each guide must print (one pattern per line it promises), by file name. */
const expected: Record<string, ReadonlyArray<RegExp>> = {
  "attack-any-tfjs-model.md": [
    /^classifier \S+: 4 classes, input \[8,8,1\]$/,
    /^max \|x_adv - x\| = 0\.1\d*, \d+ of 16 fooled$/,
    /^refused: sample 0: pixel \d+ is [\d.]+, outside the input bounds \[0, 1\]$/,
    /^clean accuracy \d+(\.\d)?%, robust accuracy \d+(\.\d)?% \(PGD-10, eps 0\.1\)$/,
    /^same x_adv as the Effect API: true$/
  ],
  "write-your-own-deq-cell.md": [
    /^stopped after epoch 2; resumed into a new cell at epoch 3: 4 epochs, clean accuracy \d+(\.\d)?%$/,
    /^residual after 30 steps: \d\.\d+e-\d+$/,
    /^state 1: entropy \d\.\d+$/,
    /^robust accuracy \d+(\.\d)?%$/
  ]
}

/** Runs one guide's program and returns what it printed with console.log. */
const run = async (file: string, code: string): Promise<Array<string>> => {
  const module = path.join(dir, path.basename(file).replace(/\.md$/, ".ts"))
  // `effect-deq/X` is src/X.ts here, as the package's exports map it to dist/X.js for a user
  fs.writeFileSync(module, code.replace(/from "effect-deq\/(\w+)"/g, (_m, name: string) => `from ${JSON.stringify(path.join(repo, "src", `${name}.ts`))}`))
  const printed: Array<string> = []
  const log = console.log
  console.log = (...args: Array<unknown>) => void printed.push(args.map(String).join(" "))
  try {
    await import(pathToFileURL(module).href)
  } finally {
    console.log = log
  }
  return printed
}

beforeAll(async () => {
  await useBackend("wasm")
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

describe("the guides run as written", () => {
  const all = guides()

  it("finds both guides", () => {
    expect(all.map((g) => path.basename(g.file)).sort()).toEqual(Object.keys(expected).sort())
  })

  for (const guide of all) {
    it(`${guide.file} prints what it says and leaks no tensor`, async () => {
      const before = tf.memory().numTensors
      const printed = await run(guide.file, guide.code)
      for (const pattern of expected[path.basename(guide.file)] ?? []) {
        expect(printed.some((l) => pattern.test(l)), `${guide.file} printed:\n${printed.join("\n")}\nexpected a line like ${pattern}`).toBe(true)
      }
      expect(tf.memory().numTensors, `${guide.file} left tensors behind`).toBe(before)
    }, 60_000)
  }
})
