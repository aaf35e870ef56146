//! `memory-hog` — hostile: grows its memory without bound.
//!
//! It keeps allocating (and touching) 1 MiB blocks until the host's memory
//! limiter refuses to grow linear memory, which traps it. Input `"<n>"` caps
//! the allocation at n MiB instead (then it answers how much it allocated),
//! so tests can check that a hog *under* the cap works.

use agent_sdk::{Agent, export_agent, log};

struct MemoryHog;

impl Agent for MemoryHog {
    fn run(input: String) -> Result<String, String> {
        let cap: Option<usize> = input.trim().parse().ok();
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            if cap.is_some_and(|c| blocks.len() >= c) {
                return Ok(format!("allocated {} MiB", blocks.len()));
            }
            let mut block = vec![0u8; 1 << 20];
            block[blocks.len() % (1 << 20)] = 1;
            blocks.push(std::hint::black_box(block));
            if blocks.len().is_multiple_of(16) {
                log::debug!("{} MiB so far", blocks.len());
            }
        }
    }
}

export_agent!(MemoryHog);
