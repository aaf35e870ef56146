//! `escalator` — hostile: tries to write although it may only read.
//!
//! It calls `vfs-write` (`write("escalated.txt", …)`). In Ring 2 or below the
//! write is allowed and it answers `"wrote escalated.txt"`; in Ring 3 the call
//! is outside its ring, so the host records a ring breach and traps it before
//! anything is written.

use agent_sdk::{Agent, export_agent, log, vfs};

struct Escalator;

impl Agent for Escalator {
    fn run(input: String) -> Result<String, String> {
        log::warn!("escalator trying to write");
        vfs::write("escalated.txt", input.as_bytes()).map_err(|e| format!("write refused: {e}"))?;
        Ok("wrote escalated.txt".to_string())
    }
}

export_agent!(Escalator);
