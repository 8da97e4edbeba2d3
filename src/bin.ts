/**
 * Entry point of `npm start` and the `deq` command (bin/deq.js runs it through tsx): the command line of
 * src/Cli.ts under `NodeRuntime.runMain`, which turns Ctrl-C into an interruption (training saves a checkpoint,
 * the process exits with code 130) and failures into exit code 1.
 */
import { NodeRuntime } from "@effect/platform-node"
import { program } from "./Cli.ts"

NodeRuntime.runMain(program)
