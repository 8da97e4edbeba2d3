/**
 * The guides in docs/guides/: each is one program, its ```ts blocks joined in the order a reader follows them.
 * test/Docs.test.ts type-checks them, test/Guides.test.ts runs them.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

/** One guide: its file, the line of its first code block, and its whole code. */
export interface Guide {
  readonly file: string
  readonly line: number
  readonly code: string
}

/** The guides with at least one ```ts block. */
export const guides = (): Array<Guide> => {
  const dir = path.join(repo, "docs", "guides")
  if (!fs.existsSync(dir)) return []
  return fs.readdirSync(dir).filter((f) => f.endsWith(".md")).sort().flatMap((f) => {
    const file = path.join("docs", "guides", f)
    const blocks: Array<{ line: number; code: Array<string> }> = []
    let open: { line: number; code: Array<string> } | undefined
    fs.readFileSync(path.join(repo, file), "utf8").split("\n").forEach((l, i) => {
      if (open === undefined) {
        if (/^```(ts|typescript)\s*$/.test(l.trim())) open = { line: i + 2, code: [] }
      } else if (l.trim() === "```") {
        blocks.push(open)
        open = undefined
      } else open.code.push(l)
    })
    return blocks.length === 0 ? [] : [{ file, line: blocks[0]!.line, code: blocks.map((b) => b.code.join("\n")).join("\n") }]
  })
}
