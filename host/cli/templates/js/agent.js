// `{{name}}`: an Agent Hypervisor agent in JavaScript, written for ring {{ring}} ({{world}}).
//
// Build:  npm ci && npm run build     (componentize-js, pinned by package-lock.json)
// Run:    ahv run {{name}}.wasm --ring {{ring}} --input Ada
// Test:   npm test                    (`node --test`: the pure logic in logic.js)
//
// `run(input)` asks the host who it is (`context`), reads `greeting.txt` from
// its directory if there is one (`vfs-read`; a missing file is an AhvError
// with code "not-found", not a crash), logs a line (`log`) and answers. The
// SDK module matches the world the build targets (sdk/sandbox.js for
// `sandbox`, sdk/standard.js for `standard` and wider): importing a
// capability the world lacks fails the build.

import { AhvError, agent, context, log, vfs } from "./sdk/{{sdk_module}}.js";
import { answer } from "./logic.js";

export const run = agent((input) => {
  const me = context.whoami();
  let greeting = "Hello";
  try {
    greeting = vfs.readText("greeting.txt").trim();
  } catch (e) {
    // Any other refusal ends the run: `agent` turns it into the `err` answer.
    if (!(e instanceof AhvError && e.code === "not-found")) throw e;
  }
  log.info(`${me.agentId} answering in ring ${me.ring}`);
  return answer(greeting, input, me.ring);
});
