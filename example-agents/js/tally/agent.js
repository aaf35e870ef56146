// `tally` in JavaScript: a ring 2 (standard) session participant that counts
// votes with the other agents of its session.
//
// Input (JSON): `{ "vote": "<option>" }`, optionally `"ballot": "<path>"`
// (default `shared/ballot.txt`). For one vote it
//   1. reads the ballot another agent wrote (the question being voted on);
//      a missing ballot is fine (`question` is then null), any other
//      refusal fails the run;
//   2. adds the vote to the shared state key `tally` (a JSON object of
//      counts) with `state.updateJson`, the compare-and-set loop, so votes
//      cast at the same time by other agents are never lost;
//   3. under a write lock on `shared/votes.log`, appends a line naming the
//      voter (read, then write: in a strongly consistent session a write
//      must have seen the file's latest version);
// and answers (JSON) `{ question, vote, counts, version, voter }`: the counts
// its own write produced and the state version it wrote.
//
// Build it (from example-agents/js):
//
//     node build.mjs tally/agent.js --world standard -o tally.wasm

import { AhvError, agent, context, json, locks, log, state, vfs } from "../sdk/standard.js";

function readOr(path, fallback) {
  try {
    return vfs.readText(path);
  } catch (e) {
    if (e instanceof AhvError && e.code === "not-found") return fallback;
    throw e;
  }
}

export const run = agent((input) => {
  const { vote, ballot = "shared/ballot.txt" } = json.input(input);
  if (typeof vote !== "string" || vote === "") {
    throw new Error(`"vote" must be a non-empty string, got ${JSON.stringify(vote)}`);
  }
  const me = context.whoami();
  const question = readOr(ballot, null)?.trim() ?? null;

  let counts;
  const version = state.updateJson("tally", (old) => {
    // May run more than once (a lost race): only compute here.
    // A null-prototype copy: a vote named "constructor" or "__proto__"
    // is a key like any other, not an inherited property.
    counts = Object.assign(Object.create(null), old ?? {});
    counts[vote] = (Object.hasOwn(counts, vote) ? counts[vote] : 0) + 1;
    return counts;
  });

  const logPath = "shared/votes.log";
  locks.withLock(locks.path(logPath), "write", 5000, () => {
    const before = readOr(logPath, "");
    vfs.write(logPath, `${before}${me.agentId} voted ${vote}\n`);
  });
  log.info(`${me.agentId} voted ${vote}: ${JSON.stringify(counts)} (state version ${version})`);
  return json.answer({ question, vote, counts, version, voter: me.agentId });
});
