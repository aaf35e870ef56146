//! `stack-bomb` — hostile: unbounded recursion.
//!
//! Each frame keeps a buffer alive so the optimiser cannot turn the recursion
//! into a loop; it ends when the host's wasm stack limit traps it.

use agent_sdk::{Agent, export_agent};

struct StackBomb;

// Unbounded on purpose: this agent exists to overflow the stack.
#[allow(unconditional_recursion)]
#[inline(never)]
fn dive(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 32]);
    dive(depth + 1).wrapping_add(frame[(depth % 32) as usize])
}

impl Agent for StackBomb {
    fn run(_input: String) -> Result<String, String> {
        Ok(format!("bottom at {}", dive(0)))
    }
}

export_agent!(StackBomb);
