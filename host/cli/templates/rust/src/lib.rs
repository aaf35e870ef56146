//! `{{name}}`: an Agent Hypervisor agent written for ring {{ring}} ({{world}}).
//!
//! Build:  cargo build --release --target wasm32-wasip2
//! Run:    ahv run target/wasm32-wasip2/release/{{crate}}.wasm --ring {{ring}} --input Ada
//! Test:   cargo test   (the unit tests of its pure logic, on this machine)
//!
//! `run` asks the host who it is (`context`), reads `greeting.txt` from its
//! directory if there is one (`vfs-read`; a missing file is an error value,
//! not a crash), logs a line (`log`) and answers. The component's imports,
//! the capabilities it calls, decide the lowest ring it runs in: see
//! `ahv inspect`.

use agent_sdk::{Agent, context, export_agent, log, vfs};

/// The answer to `input`, given the greeting and the ring: the agent's logic
/// without host calls, so that `cargo test` runs it natively.
pub fn answer(greeting: &str, input: &str, ring: u8) -> String {
    let name = match input.trim() {
        "" => "world",
        name => name,
    };
    format!("{greeting}, {name}! (ring {ring})")
}

struct App;

impl Agent for App {
    fn run(input: String) -> Result<String, String> {
        let me = context::whoami();
        let greeting = match vfs::read_to_string("greeting.txt") {
            Ok(text) => text.trim().to_string(),
            Err(vfs::Error::NotFound(_)) => "Hello".to_string(),
            // Any other refusal ends the run with its message (`not-found: …`).
            Err(e) => return Err(e.into()),
        };
        log::info!("{} answering in ring {}", me.agent_id, me.ring);
        Ok(answer(&greeting, &input, me.ring))
    }
}

export_agent!(App);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_the_input_or_the_world() {
        assert_eq!(answer("Hello", " Ada ", 3), "Hello, Ada! (ring 3)");
        assert_eq!(answer("Howdy", "", 2), "Howdy, world! (ring 2)");
    }
}
