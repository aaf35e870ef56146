//! `escalator` — hostile: calls capabilities above its ring.
//!
//! The input picks what it tries:
//! - anything else (default): `vfs-write` `write("escalated.txt", input)`: allowed from
//!   ring 2, a ring breach in ring 3;
//! - `"action:<text>"`: the reversible action `note.append`: allowed from ring 2, a
//!   breach in ring 3;
//! - `"effect:<text>"`: the non-reversible effect `notify.send`: allowed from ring 1,
//!   a breach in rings 2 and 3;
//! - `"state:<text>"`: `state-write` `put("escalated", text)`: allowed from ring 2, a
//!   breach in ring 3;
//! - `"lock:<key>"`: `locks` `acquire(key, exclusive)`: allowed from ring 2, a breach
//!   in ring 3.
//!
//! On a breach the host records it and traps the agent before anything happens.

use agent_sdk::{Agent, actions, effects, export_agent, locks, log, state, vfs};

struct Escalator;

impl Agent for Escalator {
    fn run(input: String) -> Result<String, String> {
        if let Some(text) = input.strip_prefix("action:") {
            log::warn!("escalator trying a reversible action");
            let out =
                actions::invoke("note.append", text).map_err(|e| format!("action refused: {e}"))?;
            return Ok(format!("action ran: {out}"));
        }
        if let Some(text) = input.strip_prefix("effect:") {
            log::warn!("escalator trying an effect");
            let out =
                effects::invoke("notify.send", text).map_err(|e| format!("effect refused: {e}"))?;
            return Ok(format!("effect ran: {out}"));
        }
        if let Some(text) = input.strip_prefix("state:") {
            log::warn!("escalator trying to write shared state");
            // Reading is in every ring; a failed read just means version 0.
            let version = state::get("escalated")
                .ok()
                .flatten()
                .map_or(0, |v| v.version);
            let v = state::put("escalated", text, version)
                .map_err(|e| format!("state write refused: {e}"))?;
            return Ok(format!("wrote state version {v}"));
        }
        if let Some(key) = input.strip_prefix("lock:") {
            log::warn!("escalator trying to lock");
            locks::acquire(
                &locks::Target::Key(key.to_string()),
                locks::Mode::Exclusive,
                0,
            )
            .map_err(|e| format!("lock refused: {e}"))?;
            return Ok(format!("locked {key}"));
        }
        log::warn!("escalator trying to write");
        vfs::write("escalated.txt", input.as_bytes()).map_err(|e| format!("write refused: {e}"))?;
        Ok("wrote escalated.txt".to_string())
    }
}

export_agent!(Escalator);
