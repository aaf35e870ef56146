// The Agent Hypervisor SDK for JavaScript agents: the `sandbox` world (ring 3).
//
// An agent built against the `sandbox` WIT world imports this module; one
// built against `standard` (ring 2) imports `./standard.js`, which has all of
// this and the ring 2 capabilities. There is one module per world because
// componentize-js links exactly the interfaces of the world it builds for:
// importing an interface the world lacks fails the build, so a ring 3 agent
// cannot even name `vfs-write`.
//
//   import { agent, context, log, vfs } from "../sdk/sandbox.js";
//
//   export const run = agent((input) => {
//     const me = context.whoami();
//     log.info(`${me.agentId} running in ring ${me.ring}`);
//     return `Hello, ${input}!`;
//   });
//
// Conventions (the same as the Rust SDK, guest-sdk/src/lib.rs):
// * a refused request throws an `AhvError` whose `.code` is the WIT error case
//   (`"not-found"`, `"conflict"`, ...) and whose message is `describe`'s line;
// * `agent(fn)` makes the exported `run`: whatever `fn` throws becomes the
//   `err` answer (a string), never a trap;
// * `json.input` / `json.answer` carry structured input and answers;
// * `u64` values (versions, milliseconds) are BigInts; records use camelCase.

import * as rawContext from "agent-hypervisor:agent/context@0.1.0";
import { log as rawLog } from "agent-hypervisor:agent/log@0.1.0";
import * as rawVfsRead from "agent-hypervisor:agent/vfs-read@0.1.0";
import * as rawStateRead from "agent-hypervisor:agent/state-read@0.1.0";
import * as rawElevation from "agent-hypervisor:agent/elevation@0.1.0";

/** The largest u64: `rate-limited` with it means the budget does not refill. */
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/**
 * Why the host refused a request: one case of the WIT `error` variant.
 * `code` is the case's WIT name (`"not-found"`, `"rate-limited"`, ...);
 * `detail` its payload (the host's explanation, or for `rate-limited` the
 * milliseconds to wait as a BigInt); `message` is `describe`'s one line.
 */
export class AhvError extends Error {
  constructor(code, detail) {
    super(describe(code, detail));
    this.name = "AhvError";
    this.code = code;
    this.detail = detail;
  }
}

/**
 * An error as one line: its WIT case and the host's explanation (for
 * `rate-limited`, how long to wait), like the Rust SDK's `describe`:
 * `not-found: notes/today.md`.
 */
export function describe(code, detail) {
  let why;
  if (code === "rate-limited") {
    why = BigInt(detail) === U64_MAX ? "the budget does not refill" : `retry in ${detail} ms`;
  } else {
    why = String(detail);
  }
  return `${code}: ${why}`;
}

/**
 * Calls a raw import; an `err(error)` it returns (thrown by the bindings as
 * an object with `payload = { tag, val }`) is rethrown as an `AhvError`.
 * Exported for the world modules that build on this one.
 */
export function host(f, ...args) {
  try {
    return f(...args);
  } catch (e) {
    const p = e !== null && typeof e === "object" ? e.payload : undefined;
    if (p !== null && typeof p === "object" && typeof p.tag === "string") {
      throw new AhvError(p.tag, p.val);
    }
    throw e;
  }
}

/** The text a thrown value becomes as `run`'s `err` answer. */
export function failureMessage(e) {
  try {
    if (typeof e === "string") return e;
    if (e instanceof AhvError) return e.message;
    const p = e !== null && typeof e === "object" ? e.payload : undefined;
    if (p !== null && typeof p === "object" && typeof p.tag === "string") {
      return describe(p.tag, p.val);
    }
    if (e instanceof Error) {
      // A TypeError or a RangeError is a bug worth naming; a plain Error is the agent's message.
      return e.name && e.name !== "Error" ? `${e.name}: ${e.message}` : e.message;
    }
    if (e !== null && typeof e === "object" && typeof e.message === "string") {
      return e.message;
    }
    return String(e);
  } catch {
    // A value whose conversion itself throws (a Symbol, a hostile toString).
    return "the agent threw a value that cannot be shown as text";
  }
}

/**
 * Makes the exported `run` from `fn(input)`: a string it returns is the
 * `ok` answer; anything it throws (an `AhvError`, an `Error`, a string, any
 * other value) becomes the `err` answer, its message as text. Without this,
 * a thrown value that is not a string traps the agent.
 *
 *   export const run = agent((input) => `Hello, ${input}!`);
 */
export function agent(fn) {
  return function run(input) {
    let out;
    try {
      out = fn(input);
    } catch (e) {
      throw String(failureMessage(e));
    }
    if (typeof out === "string") return out;
    if (out !== null && typeof out === "object" && typeof out.then === "function") {
      throw "run returned a Promise: agents are synchronous (no await)";
    }
    throw `run returned ${out === null ? "null" : typeof out} where a string is expected (json.answer(value) writes JSON)`;
  };
}

/** Structured input and answers: JSON in, JSON out; a failure stays a message. */
export const json = {
  /**
   * Parses `input` as JSON. Throws (and so fails `run` with) a message
   * naming the parser's reason: `input is not the JSON expected: ...`.
   */
  input(input) {
    try {
      return JSON.parse(input);
    } catch (e) {
      throw new Error(`input is not the JSON expected: ${e?.message ?? failureMessage(e)}`);
    }
  },
  /**
   * Writes `value` as the JSON answer. BigInts (versions) are written as
   * numbers when they fit in one exactly. Throws a message when `value`
   * cannot be written as JSON (a cycle, a huge BigInt, `undefined`).
   */
  answer(value) {
    try {
      return toJson(value);
    } catch (e) {
      throw new Error(`the answer cannot be written as JSON: ${e.message}`);
    }
  },
};

/**
 * `value` as JSON text, BigInts written as numbers when they fit in one
 * exactly; throws an Error saying why when `value` has no JSON form.
 */
export function toJson(value) {
  let text;
  try {
    text = JSON.stringify(value, bigintAsNumber);
  } catch (e) {
    throw new Error(failureMessage(e));
  }
  if (typeof text !== "string") throw new Error(`${typeof value} has no JSON form`);
  return text;
}

function bigintAsNumber(_key, v) {
  // JSON.stringify would write NaN and the infinities as null, silently;
  // the Rust and Python SDKs refuse them.
  if (typeof v === "number" && !Number.isFinite(v)) {
    throw new Error(`${v} is not a JSON number`);
  }
  if (typeof v !== "bigint") return v;
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new Error(`${v} does not fit in a JSON number exactly`);
  }
  return Number(v);
}

const encoder = new TextEncoder();

/** Bytes of `data`: a string is UTF-8 encoded, a Uint8Array taken as is. */
export function bytes(data) {
  if (typeof data === "string") return encoder.encode(data);
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError(`expected a string or a Uint8Array, got ${typeof data}`);
}

/** `bytes` as UTF-8 text; invalid UTF-8 is an `io` AhvError naming `what`. */
export function text(what, data) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(data);
  } catch (e) {
    throw new AhvError("io", `${what}: not UTF-8 text: ${failureMessage(e)}`);
  }
}

/** Who am I: the calling agent's identity and ring (capability `context`). */
export const context = {
  /** `{ agentId, sessionId, ring, traceId }`. */
  whoami: () => rawContext.whoami(),
  /** The agent's current ring (0 root ... 3 sandbox). */
  ring: () => rawContext.currentRing(),
};

function line(parts) {
  return parts.map(show).join(" ");
}

// One log argument as text: strings as they are, errors by their message,
// other values as JSON when they have a JSON form.
function show(p) {
  if (typeof p === "string") return p;
  if (p instanceof Error) return failureMessage(p);
  try {
    const text = JSON.stringify(p, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
    if (typeof text === "string") return text;
  } catch {
    // A cycle: fall back to its plain text form.
  }
  return failureMessage(p);
}

/**
 * Structured log lines (capability `log`): `log.info("x =", x)` joins its
 * arguments with spaces. `console.log` and `console.error` also reach the
 * agent's log (as stdout and stderr lines).
 */
export const log = {
  trace: (...parts) => rawLog("trace", line(parts)),
  debug: (...parts) => rawLog("debug", line(parts)),
  info: (...parts) => rawLog("info", line(parts)),
  warn: (...parts) => rawLog("warn", line(parts)),
  error: (...parts) => rawLog("error", line(parts)),
};

/**
 * The agent's files, read side (capability `vfs-read`). Paths are relative
 * POSIX paths; in a shared session `shared/...` is the session's shared
 * area and every other path the agent's private area.
 */
export const vfs = {
  /** A whole file, as a Uint8Array. */
  read: (path) => host(rawVfsRead.read, path),
  /** A whole file as UTF-8 text (invalid UTF-8: an `io` AhvError). */
  readText: (path) => text(path, host(rawVfsRead.read, path)),
  /** A directory's entry names, sorted (`"."` is the root). */
  list: (path) => host(rawVfsRead.listDir, path),
  /** `{ kind: "file" | "directory", size }` (size a BigInt). */
  stat: (path) => host(rawVfsRead.stat, path),
  /** SHA-256 of a file, 64 lower-case hex digits. */
  hash: (path) => host(rawVfsRead.hash, path),
  /** A shared file's ACL `{ owner, read, write }`. */
  acl: (path) => host(rawVfsRead.getAcl, path),
};

/**
 * The session's shared key-value state, read side (capability `state-read`).
 * A value is `{ value: Uint8Array, version: BigInt, clock, writer }`.
 */
export const state = {
  /** `key`'s value, or `undefined` if it does not exist. */
  get: (key) => host(rawStateRead.get, key),
  /** `key`'s value parsed as JSON, or `undefined` if it does not exist. */
  getJson: (key) => {
    const v = host(rawStateRead.get, key);
    return v === undefined ? undefined : decodeJson(key, v.value);
  },
  /** Keys starting with `prefix`, sorted. */
  keys: (prefix) => host(rawStateRead.keys, prefix),
};

/** `bytes` parsed as JSON; an `invalid-key` AhvError naming `key` otherwise. */
export function decodeJson(key, data) {
  try {
    return JSON.parse(text(key, data));
  } catch (e) {
    throw new AhvError("invalid-key", `the value of ${JSON.stringify(key)} is not JSON: ${failureMessage(e)}`);
  }
}

/** Ask for a more privileged ring for a while (capability `elevation`). */
export const elevation = {
  /** Asks for `ring` for `ttlSecs` seconds; `{ ring, remainingMs }`. */
  request: (ring, ttlSecs, justification, sponsorship) =>
    host(rawElevation.request, ring, ttlSecs, justification, sponsorship),
  /** Ends the caller's elevation early; true if one was in force. */
  relinquish: () => host(rawElevation.relinquish),
  /** The elevation in force, or `undefined`. */
  current: () => host(rawElevation.current),
};
