/**
 * The layout rules of DEVELOPERS.md, checked on src/: no file over 600 lines, no function over 150 lines
 * (counted from its first to its last line, nested functions included), no loose files in src/internal/, and
 * code cites docs/ of this repository, never the background notes outside it.
 *
 * Known offenders in work still in progress are listed in `pending` (printed in one line); empty it as they are
 * fixed.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import ts from "typescript"
import { describe, expect, it } from "vitest"

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const src = path.join(repo, "src")

const maxFileLines = 600
const maxFunctionLines = 150

/** Files (relative to the repository) still being split or re-cited by their owners. */
const pending: ReadonlyArray<string> = []

const files = (dir: string): Array<string> =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name)
    return e.isDirectory() ? files(p) : p.endsWith(".ts") ? [p] : []
  })

interface Finding {
  readonly file: string
  readonly message: string
}

/** Every function-like node with a body, with its length in lines. */
const functionLengths = (file: string, text: string): Array<{ readonly name: string; readonly line: number; readonly lines: number }> => {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true)
  const out: Array<{ name: string; line: number; lines: number }> = []
  const nameOf = (n: ts.Node): string => {
    const own = (n as { name?: ts.Node }).name
    if (own !== undefined) return own.getText(sf)
    const p = n.parent
    if (ts.isVariableDeclaration(p) || ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p)) return p.name.getText(sf)
    return "(anonymous)"
  }
  const visit = (n: ts.Node): void => {
    if (ts.isFunctionLike(n) && (n as { body?: ts.Node }).body !== undefined) {
      const first = sf.getLineAndCharacterOfPosition(n.getStart(sf)).line
      const last = sf.getLineAndCharacterOfPosition(n.getEnd()).line
      out.push({ name: nameOf(n), line: first + 1, lines: last - first + 1 })
    }
    ts.forEachChild(n, visit)
  }
  visit(sf)
  return out
}

const outside = /\b(method|stack|design|anchors)\.md\b/

const findings = (): Array<Finding> => {
  const out: Array<Finding> = []
  for (const file of files(src)) {
    const rel = path.relative(repo, file)
    const text = fs.readFileSync(file, "utf8")
    const lines = text.split("\n").length
    if (lines > maxFileLines) out.push({ file: rel, message: `${rel}: ${lines} lines (max ${maxFileLines})` })
    for (const f of functionLengths(file, text)) {
      if (f.lines > maxFunctionLines) {
        out.push({ file: rel, message: `${rel}:${f.line} ${f.name}: ${f.lines} lines (max ${maxFunctionLines})` })
      }
    }
    text.split("\n").forEach((l, i) => {
      // docs/method.md is ours; the background notes are not in the repository
      if (outside.test(l.replaceAll("docs/method.md", ""))) {
        out.push({ file: rel, message: `${rel}:${i + 1} cites a file outside the repository: ${l.trim()}` })
      }
    })
  }
  const loose = fs.readdirSync(path.join(src, "internal"), { withFileTypes: true }).filter((e) => !e.isDirectory())
  for (const e of loose) out.push({ file: `src/internal/${e.name}`, message: `src/internal/${e.name}: a loose file (internals go in src/internal/<module>/)` })
  return out
}

describe("layout", () => {
  it("src/ keeps the size, folder and citation rules", () => {
    const all = findings()
    const open = all.filter((f) => !pending.includes(f.file))
    const waiting = pending.map((file) => `${file} (${all.filter((f) => f.file === file).length})`)
    if (waiting.length > 0) console.log(`layout: pending files (findings) ${waiting.join(", ")}`)
    expect(open.map((f) => f.message)).toEqual([])
  })

  it("the function counter measures nested and arrow functions", () => {
    const text = "const outer = () => {\n  function inner() {\n    return 1\n  }\n  return inner()\n}\n"
    expect(functionLengths("x.ts", text).map((f) => [f.name, f.line, f.lines])).toEqual([["outer", 1, 6], ["inner", 2, 3]])
  })
})
