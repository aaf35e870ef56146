// `hello` in JavaScript: a ring 3 (sandbox) agent built with componentize-js.
//
// `run(input)` asks the host who it is (`context`), reads `greeting.txt` if
// there is one (a missing file is an AhvError value with code "not-found",
// not a crash), logs one line through the `log` capability, prints one to
// stdout (which the host also puts in the agent's log) and answers
// `"<greeting>, <input>! (agent <id>, ring <n>, from JavaScript)"`.
//
// Build it against the narrowest world it needs, `sandbox` (from example-agents/js):
//
//     node build.mjs hello/agent.js --world sandbox -o hello.wasm

import { AhvError, agent, context, log, vfs } from "../sdk/sandbox.js";

export const run = agent((input) => {
  const me = context.whoami();
  const name = input.trim() || "world";
  let greeting = "Hello";
  try {
    greeting = vfs.readText("greeting.txt").trim();
  } catch (e) {
    // Any other refusal ends the run: `agent` turns it into the `err` answer.
    if (!(e instanceof AhvError && e.code === "not-found")) throw e;
    log.debug("no greeting.txt, using the default");
  }
  log.info(`greeting ${name} from ${me.agentId} in ring ${me.ring}`);
  console.log("hello.js says hi on stdout");
  return `${greeting}, ${name}! (agent ${me.agentId}, ring ${me.ring}, from JavaScript)`;
});
