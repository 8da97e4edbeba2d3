/**
 * The API reference, generated from the doc comments of the published modules (the `exports` of package.json:
 * every src/<Module>.ts but the bin entry) with the TypeScript compiler API: docs/api/<Module>.md per module
 * (its module comment, then every export by category: its signature, doc comment and examples) and
 * docs/api/README.md (the index).
 *
 *   npm run docs:api            # rewrites docs/api/
 *   tsx scripts/api-docs.ts DIR # writes into DIR (test/ApiDocs.test.ts compares that with docs/api/)
 *
 * The output depends only on the sources (sorted, no dates), so a stale reference is a test failure.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import ts from "typescript"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

/** The public modules: the files `effect-deq/<Module>` resolves to (package.json's "./*" export, minus "./bin"). */
export const publicModules = (): Array<string> => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as { exports: Record<string, unknown> }
  const hidden = new Set(Object.entries(pkg.exports).filter(([, v]) => v === null).map(([k]) => k.replace(/^\.\//, "")))
  return fs.readdirSync(path.join(root, "src"))
    .filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts") && !hidden.has(f.slice(0, -3)))
    .map((f) => f.slice(0, -3))
    .sort()
}

/** One documented export. */
interface Entry {
  readonly name: string
  readonly kind: string
  readonly signature: string
  readonly doc: string
  readonly category: string
  readonly examples: ReadonlyArray<string>
  readonly since?: string
}

const tagText = (tag: ts.JSDocTagInfo): string => ts.displayPartsToString(tag.text ?? []).trim()

/** The JSDoc comment of a node: its text and tags (for export specifiers, read from the comment itself). */
const jsDocOf = (node: ts.Node): { readonly doc: string; readonly tags: ReadonlyArray<ts.JSDocTagInfo> } | undefined => {
  const docs = ts.getJSDocCommentsAndTags(node).filter(ts.isJSDoc)
  const last = docs.at(-1)
  if (last === undefined) return undefined
  const doc = typeof last.comment === "string" ? last.comment : ts.getTextOfJSDocComment(last.comment) ?? ""
  const tags = (last.tags ?? []).map((t) => ({
    name: t.tagName.text,
    text: [{ kind: "text", text: typeof t.comment === "string" ? t.comment : ts.getTextOfJSDocComment(t.comment) ?? "" }]
  }))
  return { doc, tags }
}

/** The declaration text without its doc comment and without function bodies (signatures of what is written). */
const declarationText = (decl: ts.Declaration, source: ts.SourceFile): string => {
  const printer = ts.createPrinter({ removeComments: true })
  const strip: ts.TransformerFactory<ts.Node> = (context) => {
    const visit = (node: ts.Node): ts.Node => {
      if (ts.isMethodDeclaration(node) || ts.isGetAccessorDeclaration(node)) {
        return ts.isMethodDeclaration(node)
          ? context.factory.updateMethodDeclaration(node, node.modifiers, node.asteriskToken, node.name, node.questionToken, node.typeParameters, node.parameters, node.type, undefined)
          : context.factory.updateGetAccessorDeclaration(node, node.modifiers, node.name, node.parameters, node.type, undefined)
      }
      return ts.visitEachChild(node, visit, context)
    }
    return visit
  }
  const [node] = ts.transform(decl, [strip]).transformed
  return printer.printNode(ts.EmitHint.Unspecified, node!, source).trim()
}

const flags = ts.TypeFormatFlags.NoTruncation | ts.TypeFormatFlags.UseAliasDefinedOutsideCurrentScope |
  ts.TypeFormatFlags.WriteArrowStyleSignature

/** The source text of a node as written (without its doc comment), re-indented to start at column 0. */
const written = (node: ts.Node): string => {
  const source = node.getSourceFile()
  const start = node.getStart(source)
  const column = start - source.text.lastIndexOf("\n", start - 1) - 1
  return source.text.slice(start, node.end).split("\n").map((l, i) => (i === 0 ? l : l.slice(Math.min(column, l.search(/\S|$/))))).join("\n")
}

/** A function's signature as written: type parameters, parameters and the return type (inferred when not written). */
const writtenSignature = (fn: ts.SignatureDeclaration, checker: ts.TypeChecker): string => {
  const typeParams = fn.typeParameters !== undefined ? `<${fn.typeParameters.map(written).join(", ")}>` : ""
  const params = fn.parameters.map((p) => written(p).replace(/\s*=\s*[^,]*$/, "").replace(/^(\w+)(?=:)/, p.initializer !== undefined && p.questionToken === undefined ? "$1?" : "$1"))
  const signature = checker.getSignatureFromDeclaration(fn)
  const returns = fn.type !== undefined ? written(fn.type) : signature !== undefined ? checker.typeToString(signature.getReturnType(), fn, flags) : "void"
  return `${typeParams}(${params.join(", ")}) => ${returns}`
}

/** What a reader needs to call an export: a function's signature, a type's definition, a value's type. */
const signatureOf = (name: string, symbol: ts.Symbol, decl: ts.Declaration, checker: ts.TypeChecker): { kind: string; text: string } => {
  const source = decl.getSourceFile()
  if (ts.isInterfaceDeclaration(decl) || ts.isTypeAliasDeclaration(decl)) {
    return { kind: ts.isInterfaceDeclaration(decl) ? "interface" : "type", text: written(decl) }
  }
  if (ts.isClassDeclaration(decl)) return { kind: "class", text: declarationText(decl, source) }
  if (ts.isFunctionDeclaration(decl)) return { kind: "function", text: `declare function ${name}${writtenSignature(decl, checker).replace(") => ", "): ")}` }
  if (ts.isVariableDeclaration(decl)) {
    // the signature as the source writes it (type names, not their expansions)
    if (decl.type !== undefined) {
      const kind = ts.isFunctionTypeNode(decl.type) || decl.type.getText().startsWith("<") ? "function" : "constant"
      return { kind, text: `declare const ${name}: ${written(decl.type)}` }
    }
    const init = decl.initializer
    if (init !== undefined && (ts.isArrowFunction(init) || ts.isFunctionExpression(init))) {
      return { kind: "function", text: `declare const ${name}: ${writtenSignature(init, checker)}` }
    }
  }
  const type = checker.getTypeOfSymbolAtLocation(symbol, decl)
  const calls = type.getCallSignatures()
  if (calls.length > 0 && (ts.isFunctionDeclaration(decl) || ts.isVariableDeclaration(decl) || ts.isExportSpecifier(decl))) {
    const typeParams = (s: ts.Signature) => {
      const ps = s.getTypeParameters() ?? []
      return ps.length === 0 ? "" : `<${ps.map((p) => checker.typeToString(p, undefined, flags)).join(", ")}>`
    }
    const text = calls.map((s) => {
      const params = s.getParameters().map((p) => {
        const pd = p.valueDeclaration
        const optional = pd !== undefined && ts.isParameter(pd) && (pd.questionToken !== undefined || pd.initializer !== undefined)
        const rest = pd !== undefined && ts.isParameter(pd) && pd.dotDotDotToken !== undefined
        return `${rest ? "..." : ""}${p.name}${optional ? "?" : ""}: ${checker.typeToString(checker.getTypeOfSymbolAtLocation(p, decl), undefined, flags)}`
      })
      return `declare const ${name}: ${typeParams(s)}(${params.join(", ")}) => ${checker.typeToString(s.getReturnType(), undefined, flags)}`
    }).join("\n")
    return { kind: "function", text }
  }
  if (symbol.flags & ts.SymbolFlags.TypeAlias || symbol.flags & ts.SymbolFlags.Interface) {
    return { kind: "type", text: `type ${name} = ${checker.typeToString(checker.getDeclaredTypeOfSymbol(symbol), undefined, flags)}` }
  }
  return { kind: "constant", text: `declare const ${name}: ${checker.typeToString(type, undefined, flags)}` }
}

/** The documented exports of one module, in source order. */
const entriesOf = (file: ts.SourceFile, checker: ts.TypeChecker): Array<Entry> => {
  const moduleSymbol = checker.getSymbolAtLocation(file)
  if (moduleSymbol === undefined) return []
  const entries: Array<Entry> = []
  for (const exported of checker.getExportsOfModule(moduleSymbol)) {
    const local = exported.declarations?.[0]
    if (local === undefined) continue
    const target = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported
    const decl = target.declarations?.[0] ?? local
    // a re-export's own comment (on the specifier) wins over the internal declaration's
    const docNode = ts.isExportSpecifier(local) && jsDocOf(local) !== undefined ? local : decl
    const js = jsDocOf(ts.isVariableDeclaration(docNode) ? docNode.parent.parent : docNode)
    const tags = js?.tags ?? []
    const { kind, text } = signatureOf(exported.name, target, decl, checker)
    const since = tags.find((t) => t.name === "since")
    entries.push({
      name: exported.name,
      kind,
      signature: text,
      doc: (js?.doc ?? "").trim(),
      category: tags.find((t) => t.name === "category") !== undefined ? tagText(tags.find((t) => t.name === "category")!) : "",
      examples: tags.filter((t) => t.name === "example").map(tagText),
      ...(since !== undefined ? { since: tagText(since) } : {})
    })
  }
  const position = (e: Entry) => {
    const s = checker.getExportsOfModule(moduleSymbol).find((x) => x.name === e.name)?.declarations?.[0]
    return s !== undefined && s.getSourceFile() === file ? s.getStart() : Number.MAX_SAFE_INTEGER
  }
  return entries.sort((a, b) => position(a) - position(b) || a.name.localeCompare(b.name))
}

/** The module comment: the first JSDoc of the file, with its example and since tags. */
const moduleDoc = (file: ts.SourceFile): { readonly doc: string; readonly examples: ReadonlyArray<string> } => {
  const first = file.statements[0]
  const js = first !== undefined ? jsDocOf(first) : undefined
  // a module comment is one with @since or @example, placed before the first statement
  if (js === undefined || !js.tags.some((t) => t.name === "since" || t.name === "example")) return { doc: "", examples: [] }
  return { doc: js.doc.trim(), examples: js.tags.filter((t) => t.name === "example").map(tagText) }
}

const fence = (code: string): string => "```ts\n" + code.replace(/\n+$/, "") + "\n```"

/** A package's type as its users import it: `import("/abs/node_modules/pkg/dist/index")` is `import("pkg")` (the
 * reference must not depend on the checkout it was generated in). */
const portable = (signature: string): string =>
  signature.replace(/import\("[^"]*\/node_modules\/((?:@[^/"]+\/)?[^/"]+)(?:\/[^"]*)?"\)/g, (_m, pkg: string) => `import("${pkg}")`)

/** An example as written in the comment (a fenced block) or bare code, as one fenced block. */
const example = (text: string): string => (text.trimStart().startsWith("```") ? text.trim() : fence(text))

/** GitHub's heading anchors, in document order: a repeated one gets "-1", "-2", ... ("Series" then "series"). */
const anchors = (headings: ReadonlyArray<string>): Array<string> => {
  const seen = new Map<string, number>()
  return headings.map((h) => {
    const base = h.toLowerCase().replace(/[^\w\- ]/g, "").replaceAll(" ", "-")
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    return n === 0 ? base : `${base}-${n}`
  })
}

/** The Markdown page of one module. */
const page = (name: string, file: ts.SourceFile, checker: ts.TypeChecker): string => {
  const mod = moduleDoc(file)
  const entries = entriesOf(file, checker)
  const categories = [...new Set(entries.map((e) => e.category || "other"))].sort((a, b) =>
    a === "other" ? 1 : b === "other" ? -1 : a.localeCompare(b)
  )
  const out: Array<string> = [
    `# ${name}`,
    "",
    `\`import * as ${name} from "effect-deq/${name}"\` (source: [src/${name}.ts](../../src/${name}.ts)). Generated from the`,
    "doc comments by `npm run docs:api`; do not edit.",
    ""
  ]
  if (mod.doc !== "") out.push(mod.doc, "")
  for (const e of mod.examples) out.push(example(e), "")
  out.push("## Contents", "")
  const inCategory = (c: string) => entries.filter((e) => (e.category || "other") === c)
  const headings = [name, "Contents", ...categories.flatMap((c) => [c, ...inCategory(c).map((e) => e.name)])]
  const ids = anchors(headings)
  const linkOf = new Map<Entry, string>()
  let at = 2 // after the title and "Contents"
  for (const c of categories) {
    at++ // the category's heading
    for (const e of inCategory(c)) linkOf.set(e, ids[at++]!)
  }
  for (const c of categories) {
    out.push(`- ${c}: ` + inCategory(c).map((e) => `[${e.name}](#${linkOf.get(e)})`).join(", "))
  }
  for (const c of categories) {
    out.push("", `## ${c}`)
    for (const e of entries.filter((x) => (x.category || "other") === c)) {
      out.push("", `### ${e.name}`, "", `${e.kind}${e.since !== undefined ? `, since ${e.since}` : ""}`, "", fence(portable(e.signature)))
      if (e.doc !== "") out.push("", e.doc)
      for (const x of e.examples) out.push("", example(x))
    }
  }
  return out.join("\n") + "\n"
}

/** The index page. */
const index = (modules: ReadonlyArray<{ readonly name: string; readonly summary: string }>): string =>
  [
    "# API reference",
    "",
    "The published modules of effect-deq (`effect-deq/<Module>`), generated from their doc comments by",
    "`npm run docs:api` (test/ApiDocs.test.ts fails when this reference no longer matches the sources).",
    "",
    "| module | what |",
    "|---|---|",
    ...modules.map((m) => `| [${m.name}](${m.name}.md) | ${m.summary.replaceAll("|", "\\|")} |`)
  ].join("\n") + "\n"

/** The first sentence of a module comment, on one line. */
const summaryOf = (doc: string): string => {
  const text = doc.split(/\n\s*\n/)[0]!.replace(/\s+/g, " ").trim()
  const end = text.search(/[.:](\s|$)/)
  return end < 0 ? text : text.slice(0, end + 1).replace(/:$/, ".")
}

/** Every page of the reference, by file name. */
export const generate = (): Map<string, string> => {
  const modules = publicModules()
  const files = modules.map((m) => path.join(root, "src", `${m}.ts`))
  const config = ts.getParsedCommandLineOfConfigFile(path.join(root, "tsconfig.json"), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, "\n"))
    }
  })!
  const program = ts.createProgram(files, { ...config.options, noEmit: true })
  const checker = program.getTypeChecker()
  const pages = new Map<string, string>()
  const summaries: Array<{ name: string; summary: string }> = []
  for (const [i, name] of modules.entries()) {
    const file = program.getSourceFile(files[i]!)!
    pages.set(`${name}.md`, page(name, file, checker))
    summaries.push({ name, summary: summaryOf(moduleDoc(file).doc) })
  }
  pages.set("README.md", index(summaries))
  return pages
}

/** Writes the reference into `dir` (its old pages removed first). */
export const writeTo = (dir: string): void => {
  const pages = generate()
  fs.mkdirSync(dir, { recursive: true })
  for (const f of fs.readdirSync(dir)) if (f.endsWith(".md") && !pages.has(f)) fs.rmSync(path.join(dir, f))
  for (const [f, text] of pages) fs.writeFileSync(path.join(dir, f), text)
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = path.resolve(process.argv[2] ?? path.join(root, "docs", "api"))
  writeTo(dir)
  console.log(`wrote the API reference of ${publicModules().length} modules to ${path.relative(process.cwd(), dir) || "."}`)
}
