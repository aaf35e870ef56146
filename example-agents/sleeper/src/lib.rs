//! `sleeper` — hostile: blocks inside the host instead of spinning.
//!
//! It calls `std::thread::sleep`, which becomes a WASI poll the host serves
//! asynchronously: no wasm runs, so fuel and epoch checks cannot stop it. The
//! host's deadline and kill switch must still end the call. Input `"<ms>"`
//! sleeps that long and answers; the default is an hour.

use std::time::Duration;

use agent_sdk::{Agent, export_agent, log};

struct Sleeper;

impl Agent for Sleeper {
    fn run(input: String) -> Result<String, String> {
        let ms = input.trim().parse().unwrap_or(3_600_000u64);
        log::info!("sleeping {ms} ms");
        std::thread::sleep(Duration::from_millis(ms));
        Ok(format!("slept {ms} ms"))
    }
}

export_agent!(Sleeper);
