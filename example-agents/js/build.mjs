// Builds a JavaScript agent into a WebAssembly component for Agent Hypervisor.
//
//   npm ci                                   # once: the pinned componentize-js
//   node build.mjs hello/agent.js --world sandbox -o hello.wasm
//
// It calls componentize-js (StarlingMonkey) through its JS API rather than
// the `jco componentize` command: jco 1.35's command cannot read WIT files
// (its WASI shim starts without preopened directories), while the API reads
// them with Node's own file system, and it needs one package, not jco's CLI.
// package.json pins componentize-js 0.23.0 and @bytecodealliance/preview2-shim
// 0.25.0: componentize-js imports the shim at run time but declares it only as
// a development dependency.
//
// Options:
//   --world <name>  the WIT world (required): the narrowest that has every
//                   capability the agent calls. The component imports every
//                   interface of the world, and `ahv inspect` ranks it by them.
//   -o <file>       where to write the component (default: <agent>.wasm)
//   --wit <dir>     the WIT directory (default: the repository's wit/)
//
// Always disabled: `http` and `fetch-event` (the host refuses `wasi:http/*`
// imports: agents have no network). Kept: stdio (console.log reaches the
// agent's log), clocks (Date.now) and random (Math.random).
//
// An agent may import other modules by relative path (the SDK in sdk/ is
// one): componentize-js resolves them inside the directory the build runs
// in, so this script runs it from the nearest directory holding both the
// agent and the SDK.

import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
import { dirname, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    world: { type: "string" },
    out: { type: "string", short: "o" },
    wit: { type: "string", default: resolve(here, "../../wit") },
  },
});
if (positionals.length !== 1 || !values.world) {
  console.error("usage: node build.mjs <agent.js> --world <sandbox|standard|...> [-o out.wasm] [--wit dir]");
  process.exit(2);
}
const source = resolve(positionals[0]);
const out = resolve(values.out ?? source.replace(/\.m?js$/, "") + ".wasm");
const wit = resolve(values.wit);

// The nearest directory holding both the agent and this script's sdk/.
let root = dirname(source);
while (relative(root, here).startsWith("..")) root = dirname(root);
// With no common directory but `/`, the agent's own directory is the whole
// workspace (componentize-js mishandles `/`): keep a copy of sdk/ beside it.
process.chdir(root === dirname(root) ? dirname(source) : root);

const started = Date.now();
let built;
try {
  built = await componentize({
    sourcePath: source,
    witPath: wit,
    worldName: values.world,
    disableFeatures: ["http", "fetch-event"],
  });
} catch (e) {
  const missing = /Error loading module "(agent-hypervisor:agent\/[^"]+)"/.exec(String(e?.message));
  if (missing) {
    console.error(
      `the world ${values.world} has no interface ${missing[1]}: build against a world that has it ` +
        `(sdk/standard.js needs --world standard), or import sdk/sandbox.js\n\n${e.message}`,
    );
    process.exit(1);
  }
  throw e;
}
const { component, imports } = built;
await writeFile(out, component);
const interfaces = [...new Set(imports.map(([specifier]) => specifier))].sort();
console.log(
  `built ${out}: ${component.length} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s, ` +
    `world ${values.world}, imports ${interfaces.join(" ")}`,
);
