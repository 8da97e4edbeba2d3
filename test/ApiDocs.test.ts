/**
 * The API reference in docs/api/ is what `npm run docs:api` generates from the current doc comments: regenerated
 * here and compared page by page, so it never goes stale. It covers the published modules only (package.json's
 * exports), and every export of them has a page entry with its signature.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import { generate, publicModules } from "../scripts/api-docs.ts"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const committed = path.join(root, "docs", "api")

describe("the API reference (docs/api)", () => {
  const pages = generate()

  it("is up to date with the doc comments (else: npm run docs:api)", () => {
    const onDisk = fs.readdirSync(committed).filter((f) => f.endsWith(".md")).sort()
    expect(onDisk, "pages differ: run `npm run docs:api`").toEqual([...pages.keys()].sort())
    for (const [file, text] of pages) {
      expect(fs.readFileSync(path.join(committed, file), "utf8"), `docs/api/${file} is stale: run \`npm run docs:api\``).toBe(text)
    }
  })

  it("covers exactly the published modules, each export with its signature", () => {
    const modules = publicModules()
    expect(modules).toContain("Adversary")
    expect(modules).not.toContain("bin")
    expect([...pages.keys()].sort()).toEqual([...modules.map((m) => `${m}.md`), "README.md"].sort())
    const report = pages.get("Report.md")!
    expect(report).toContain("### writeSvg")
    expect(report).toContain("declare const writeSvg: (file: string, plot: LinePlot) => Effect.Effect<void, ReportError>")
    expect(report).toContain("Renders a line plot and writes it atomically as an SVG file.")
    // a re-export from an internal file carries the comment written at the re-export
    expect(pages.get("Evaluation.md")).toContain("The evaluation suite (`deq eval`)")
    for (const [file, text] of pages) expect(text, file).not.toMatch(/internal\/[\w/]+\.ts\)/)
  })
})
