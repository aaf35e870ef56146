// The Agent Hypervisor SDK for JavaScript agents: the `standard` world (ring 2).
//
// Everything of `./sandbox.js`, plus writing files (`vfs-write`), writing
// shared state (`state-write`), intent locks (`locks`) and reversible
// actions (`actions`). Build the agent against the `standard` world.
//
//   import { agent, json, state, locks, vfs } from "../sdk/standard.js";
//
//   export const run = agent((input) => {
//     const { who } = json.input(input);
//     const version = state.update("visits", (old) => String(Number(old ?? "0") + 1));
//     locks.withLock(locks.path("shared/visitors.txt"), "write", 1000, () =>
//       vfs.append("shared/visitors.txt", `${who}\n`));
//     return json.answer({ version });
//   });
//
// Admitted at ring 3, an agent built against this world breaches its ring
// (and is stopped) the moment it calls one of these capabilities.

import * as rawVfsWrite from "agent-hypervisor:agent/vfs-write@0.1.0";
import * as rawStateWrite from "agent-hypervisor:agent/state-write@0.1.0";
import * as rawLocks from "agent-hypervisor:agent/locks@0.1.0";
import * as rawActions from "agent-hypervisor:agent/actions@0.1.0";

import {
  AhvError,
  bytes,
  decodeJson,
  host,
  state as sandboxState,
  toJson,
  vfs as sandboxVfs,
} from "./sandbox.js";

export {
  AhvError,
  agent,
  bytes,
  context,
  describe,
  elevation,
  failureMessage,
  json,
  log,
  toJson,
} from "./sandbox.js";

/**
 * The agent's files (capabilities `vfs-read` and `vfs-write`). `data` is a
 * string (written as UTF-8) or a Uint8Array.
 */
export const vfs = {
  ...sandboxVfs,
  /** Replaces or creates a file atomically, creating parent directories. */
  write: (path, data) => host(rawVfsWrite.write, path, bytes(data)),
  /** Appends to a file, creating it if needed. */
  append: (path, data) => host(rawVfsWrite.append, path, bytes(data)),
  /** Deletes a file or an empty directory. */
  delete: (path) => host(rawVfsWrite.delete, path),
  /** Renames `src` to `dst` (which must not exist). */
  rename: (src, dst) => host(rawVfsWrite.rename, src, dst),
  /** Creates a directory and its parents. */
  createDir: (path) => host(rawVfsWrite.createDir, path),
  /** Replaces a shared file's ACL (its owner, or ring 1 or 0, only). */
  setAcl: (path, acl) => host(rawVfsWrite.setAcl, path, acl),
};

/** How many times `state.update` tries before it gives up on a busy key. */
export const UPDATE_ATTEMPTS = 16;

/**
 * The compare-and-set loop of the Rust SDK's `state::update`, written once:
 * reads `key`, computes the new value with `next(old)` and writes it if
 * nobody wrote in between; on a `conflict` it reads again and calls `next`
 * again, up to `UPDATE_ATTEMPTS` times. Under snapshot isolation a re-read
 * that shows the version that lost means the race cannot be won within this
 * call: the `conflict` is thrown at once. Returns the new version.
 */
function casLoop(key, read, next) {
  let lost;
  for (let attempt = 0; attempt < UPDATE_ATTEMPTS; attempt++) {
    const current = sandboxState.get(key);
    const version = current === undefined ? 0n : current.version;
    if (lost !== undefined) {
      const [v, e] = lost;
      lost = undefined;
      if (v === version) throw e;
    }
    const value = bytes(next(read(current)));
    try {
      return host(rawStateWrite.put, key, value, version);
    } catch (e) {
      if (e instanceof AhvError && e.code === "conflict") {
        lost = [version, e];
      } else {
        throw e;
      }
    }
  }
  throw lost !== undefined ? lost[1] : new AhvError("conflict", `${JSON.stringify(key)}: no attempt made`);
}

/**
 * The session's shared key-value state (capabilities `state-read` and
 * `state-write`). Every value has a version (a BigInt); a write names the
 * version it read (0 for a key that must not exist yet).
 */
export const state = {
  ...sandboxState,
  /** Writes `key` if it is still at `expectedVersion`; the new version. */
  put: (key, value, expectedVersion) =>
    host(rawStateWrite.put, key, bytes(value), BigInt(expectedVersion)),
  /** Writes `value` as JSON under the same rule as `put`. */
  putJson: (key, value, expectedVersion) =>
    host(rawStateWrite.put, key, encodeJson(key, value), BigInt(expectedVersion)),
  /** Deletes `key` if it is still at `expectedVersion`. */
  delete: (key, expectedVersion) => host(rawStateWrite.delete, key, BigInt(expectedVersion)),
  /**
   * Computes `key`'s new value from its current one and writes it with
   * compare-and-set, retrying lost races (see `UPDATE_ATTEMPTS`). `next`
   * gets the current value (a Uint8Array, `undefined` if the key does not
   * exist), returns a string or a Uint8Array, and may run more than once:
   * it should only compute. Returns the new version.
   */
  update: (key, next) => casLoop(key, (v) => v?.value, next),
  /** `update` on a JSON value: `next` gets the parsed value (or `undefined`). */
  updateJson: (key, next) =>
    casLoop(key, (v) => (v === undefined ? undefined : decodeJson(key, v.value)), (old) => encodeJson(key, next(old))),
};

/** `value` as JSON bytes; an `invalid-key` AhvError naming `key` when it has no JSON form. */
function encodeJson(key, value) {
  try {
    return bytes(toJson(value));
  } catch (e) {
    throw new AhvError("invalid-key", `the new value of ${JSON.stringify(key)} cannot be written as JSON: ${e.message}`);
  }
}

/**
 * Intent locks on shared paths and state keys (capability `locks`). A
 * target is `locks.path(p)` or `locks.key(k)`; a mode `"read"`, `"write"`
 * or `"exclusive"`. The host releases an agent's locks when it leaves the
 * session, traps or is killed.
 */
export const locks = {
  /** The lock target naming a VFS path. */
  path: (p) => ({ tag: "path", val: p }),
  /** The lock target naming a state key. */
  key: (k) => ({ tag: "key", val: k }),
  /** Takes (or strengthens) a lock, waiting up to `waitMs` (0: `conflict` at once). */
  acquire: (target, mode, waitMs) => host(rawLocks.acquire, target, mode, waitMs),
  /** Releases a lock the caller holds. */
  release: (target) => host(rawLocks.release, target),
  /** The locks the caller holds, as `[target, mode]` pairs. */
  held: () => host(rawLocks.held),
  /**
   * Runs `fn()` while holding `mode` on `target` and returns what it
   * returns; the lock is released afterwards, even when `fn` throws, unless
   * the caller held it before (the host keeps one lock per target, so
   * releasing it would drop the caller's own). Throws the acquire's error,
   * `fn`'s, or the release's.
   */
  withLock(target, mode, waitMs, fn) {
    const already = locks.held().some(([t]) => t.tag === target.tag && t.val === target.val);
    locks.acquire(target, mode, waitMs);
    let out;
    try {
      out = fn();
    } catch (e) {
      if (!already) {
        try {
          locks.release(target);
        } catch {
          // `fn`'s error is the one to report; the host withdrew the lock.
        }
      }
      throw e;
    }
    if (!already) locks.release(target);
    return out;
  },
};

/** Host-registered reversible actions (capability `actions`). */
export const actions = {
  /** Runs the action `name` with `args`; its output. */
  invoke: (name, args) => host(rawActions.invoke, name, args),
  /** Names of the reversible actions this host offers. */
  available: () => host(rawActions.available),
};
