//! `spinner` — hostile: an infinite loop that never calls the host.
//!
//! It must be stopped by fuel exhaustion, its wall-clock deadline or the kill
//! switch; it never returns on its own.

use agent_sdk::{Agent, export_agent, log};

struct Spinner;

impl Agent for Spinner {
    fn run(input: String) -> Result<String, String> {
        log::info!("spinning forever");
        let mut x: u64 = input.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export_agent!(Spinner);
