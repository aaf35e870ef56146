//! `pinger` — a benchmark and lifecycle agent: no I/O, or host calls in a loop.
//!
//! Input `""` answers `"pong"` at once (the no-I/O agent of the
//! instantiate-and-call bench). Input `"<n>"` calls `context::current-ring`
//! n times (the guest→host call bench) and answers the sum of the rings seen.
//! Input `"calls"` answers how many times `run` was called on this instance,
//! which shows whether the host reused the instance. Input `"vfs"` writes
//! 1 KiB to `shared/bench.bin` and reads it back (the VFS bench; needs ring 2
//! and a session), answering the number of bytes read. Input `"held <n>"`
//! calls `locks::held` (a rate-metered read, ring 2) n times and answers
//! `"<a> ok <r> rate-limited"` (the metered host call and rate-limit
//! benches); any other error ends the loop as the failure.

use std::sync::atomic::{AtomicU64, Ordering};

use agent_sdk::{Agent, Error, context, export_agent, locks, vfs};

struct Pinger;

static CALLS: AtomicU64 = AtomicU64::new(0);

impl Agent for Pinger {
    fn run(input: String) -> Result<String, String> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if input == "calls" {
            return Ok(calls.to_string());
        }
        if input == "vfs" {
            let data = [0x5au8; 1024];
            vfs::write("shared/bench.bin", data).map_err(|e| e.to_string())?;
            let back = vfs::read("shared/bench.bin").map_err(|e| e.to_string())?;
            return Ok(back.len().to_string());
        }
        if let Some(n) = input.strip_prefix("held ") {
            let n: u64 = n.trim().parse().map_err(|e| format!("held {n:?}: {e}"))?;
            let (mut admitted, mut limited) = (0u64, 0u64);
            for _ in 0..n {
                match locks::held() {
                    Ok(_) => admitted += 1,
                    Err(Error::RateLimited(_)) => limited += 1,
                    Err(e) => return Err(e.to_string()),
                }
            }
            return Ok(format!("{admitted} ok {limited} rate-limited"));
        }
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
