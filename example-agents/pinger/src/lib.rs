//! `pinger` — a benchmark agent: does no I/O, or calls the host in a loop.
//!
//! Input `""` answers `"pong"` at once (the no-I/O agent of the
//! instantiate-and-call bench). Input `"<n>"` calls `context::current-ring`
//! n times (the guest→host call bench) and answers the sum of the rings seen.

use agent_sdk::{Agent, context, export_agent};

struct Pinger;

impl Agent for Pinger {
    fn run(input: String) -> Result<String, String> {
        let Ok(n) = input.trim().parse::<u64>() else {
            return Ok("pong".to_string());
        };
        let mut sum = 0u64;
        for _ in 0..n {
            sum += u64::from(context::ring());
        }
        Ok(sum.to_string())
    }
}

export_agent!(Pinger);
