//! `stack-bomb` — hostile: unbounded recursion.
//!
//! Each level does work after the recursive call, so the optimiser cannot turn
//! the recursion into a loop, and keeps nothing in linear memory, so it is the
//! host's wasm stack limit (not the guest's shadow stack) that stops it.

use agent_sdk::{Agent, export_agent};

struct StackBomb;

#[inline(never)]
fn dive(depth: u64, stop: u64) -> u64 {
    if depth == stop {
        return depth;
    }
    dive(depth + 1, stop).rotate_left(7) ^ depth.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Agent for StackBomb {
    fn run(input: String) -> Result<String, String> {
        // The stop depth is never reached unless the input asks for it.
        let stop = input.trim().parse().unwrap_or(u64::MAX);
        Ok(format!("bottom: {}", dive(0, stop)))
    }
}

export_agent!(StackBomb);
