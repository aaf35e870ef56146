// Unit tests of the agent's logic: `npm test` (`node --test`).

import assert from "node:assert/strict";
import { test } from "node:test";

import { answer } from "../logic.js";

test("greets the input or the world", () => {
  assert.equal(answer("Hello", " Ada ", 3), "Hello, Ada! (ring 3)");
  assert.equal(answer("Howdy", "", 2), "Howdy, world! (ring 2)");
});
