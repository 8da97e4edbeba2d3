/**
 * Docs that compile: every ```ts example in the doc comments of src/**\/*.ts and in README.md is type-checked as
 * written, as a user would paste it; a guide in docs/guides/ is one program (its blocks in order, as a reader
 * follows it; test/Guides.test.ts runs them). Each block becomes its own module in a temporary directory inside the
 * repository, with `effect-deq/<Module>` mapped to `src/<Module>.ts` by a generated tsconfig (the project's own
 * compiler options plus `paths`); one TypeScript program checks them all. A failure names the file and line of the
 * block and the compiler's message.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import ts from "typescript"
import { describe, expect, it } from "vitest"
import { guides } from "./guides.ts"

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

/**
 * Files whose examples are known not to compile yet, owned by other work in progress. Their blocks are still
 * compiled and their errors printed, but do not fail the test. Empty this list as they are fixed.
 */
const pending: ReadonlyArray<string> = []

/** One ```ts block: where it starts (1-based line of its first code line) and its code. */
interface Block {
  readonly file: string
  readonly line: number
  readonly code: string
}

const fence = /^```(ts|typescript)\s*$/

/** The ```ts blocks of Markdown lines (`strip` removes a comment prefix such as " * "). */
const blocksOf = (file: string, lines: ReadonlyArray<string>, strip: (line: string) => string | undefined): Array<Block> => {
  const out: Array<Block> = []
  let start = -1
  let code: Array<string> = []
  lines.forEach((raw, i) => {
    const line = strip(raw)
    if (line === undefined) {
      start = -1
      return
    }
    if (start < 0) {
      if (fence.test(line.trim())) {
        start = i + 2
        code = []
      }
    } else if (line.trim() === "```") {
      out.push({ file, line: start, code: code.join("\n") })
      start = -1
    } else code.push(line)
  })
  return out
}

/** Lines inside a JSDoc comment lose their " * " prefix; lines outside comments end any open block. */
const docCommentLines = (source: string): Array<string | undefined> => {
  let inComment = false
  return source.split("\n").map((l) => {
    const t = l.trim()
    if (t.startsWith("/**")) inComment = !t.endsWith("*/")
    else if (inComment && t.startsWith("*/")) inComment = false
    else if (inComment) return l.replace(/^\s*\* ?/, "")
    return undefined
  })
}

const sourceFiles = (dir: string): Array<string> =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name)
    return e.isDirectory() ? sourceFiles(p) : p.endsWith(".ts") ? [p] : []
  })

const collect = (): Array<Block> => {
  const blocks: Array<Block> = []
  for (const file of sourceFiles(path.join(repo, "src")).sort()) {
    const lines = docCommentLines(fs.readFileSync(file, "utf8"))
    blocks.push(...blocksOf(path.relative(repo, file), lines as Array<string>, (l) => l))
  }
  const readme = fs.readFileSync(path.join(repo, "README.md"), "utf8").split("\n")
  blocks.push(...blocksOf("README.md", readme, (l) => l))
  blocks.push(...guides().map((g) => ({ file: g.file, line: g.line, code: g.code })))
  return blocks
}

interface Failure {
  readonly where: string
  readonly file: string
  readonly message: string
}

/** Type-checks every block in one program; returns the diagnostics mapped to the blocks' source lines. */
const check = (blocks: ReadonlyArray<Block>): Array<Failure> => {
  const dir = fs.mkdtempSync(path.join(repo, ".tmp-docs-"))
  try {
    const names = blocks.map((b, i) => {
      const name = path.join(dir, `block${i}.ts`)
      // `export {}` makes every block a module of its own, so their top-level names never collide
      fs.writeFileSync(name, `${b.code}\nexport {}\n`)
      return name
    })
    const base = ts.readConfigFile(path.join(repo, "tsconfig.json"), ts.sys.readFile).config as {
      compilerOptions: Record<string, unknown>
    }
    fs.writeFileSync(
      path.join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          ...base.compilerOptions,
          // examples are read, not run: unused names in them are fine
          noUnusedLocals: false,
          noUnusedParameters: false,
          paths: { "effect-deq/*": [path.join(repo, "src", "*.ts")] }
        },
        files: names
      })
    )
    const parsed = ts.getParsedCommandLineOfConfigFile(path.join(dir, "tsconfig.json"), {}, {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, "\n"))
      }
    })!
    const program = ts.createProgram({ rootNames: names, options: parsed.options })
    const failures: Array<Failure> = []
    names.forEach((name, i) => {
      const sf = program.getSourceFile(name)!
      const block = blocks[i]!
      for (const d of [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)]) {
        const line = d.start === undefined ? 0 : sf.getLineAndCharacterOfPosition(d.start).line
        failures.push({
          where: `${block.file}:${block.line + line}`,
          file: block.file,
          message: ts.flattenDiagnosticMessageText(d.messageText, "\n").split("\n")[0]!
        })
      }
    })
    return failures
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

describe("documentation examples", () => {
  it("every ```ts block in src/ doc comments and README.md type-checks as written", () => {
    const blocks = collect()
    // the extraction itself must find the examples (a broken extractor would pass vacuously)
    expect(blocks.length).toBeGreaterThan(10)
    expect(blocks.some((b) => b.file === "README.md")).toBe(true)
    const failures = check(blocks)
    const allowed = failures.filter((f) => pending.includes(f.file))
    const errors = failures.filter((f) => !pending.includes(f.file))
    if (pending.length > 0) {
      const summary = pending.map((file) => {
        const own = allowed.filter((f) => f.file === file)
        return own.length === 0 ? `${file} (now passes: remove it)` : `${file} (${own.length} errors, first ${own[0]!.where})`
      })
      console.log(`docs examples: skipped pending files ${summary.join(", ")}`)
    }
    expect(errors.map((f) => `${f.where}: ${f.message}`)).toEqual([])
  })

  it("the checker reports a broken example with its file and line", () => {
    const failures = check([
      { file: "fake.ts", line: 10, code: `const ok = 1\nconst s: number = "text"` },
      { file: "fake.ts", line: 40, code: `export const fine: number = 1` }
    ])
    expect(failures.map((f) => f.where)).toEqual(["fake.ts:11"])
  })
})
