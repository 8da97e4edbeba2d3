/**
 * Entry point of the `deq` command (bin/deq.js imports it, or its build dist/bin.js, in its own process): the
 * command line of src/Cli.ts under `NodeRuntime.runMain`, which turns Ctrl-C into an interruption (training saves
 * a checkpoint, the process exits with code 130) and failures into exit code 1.
 */
import { NodeRuntime } from "@effect/platform-node"
import { program } from "./Cli.ts"

NodeRuntime.runMain(program)
