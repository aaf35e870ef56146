//! `hello` — a Ring 3 (sandbox) agent: reads its input and a file, logs, answers.
//!
//! It only observes: `context`, `log` and `vfs-read`. It reads `greeting.txt`
//! if present (a missing file is handled as a value, not a crash) and answers
//! `"<greeting>, <input>! (agent <id>, ring <n>)"`.

use agent_sdk::{Agent, context, export_agent, log, vfs};

struct Hello;

impl Agent for Hello {
    fn run(input: String) -> Result<String, String> {
        let me = context::whoami();
        let name = if input.trim().is_empty() {
            "world"
        } else {
            input.trim()
        };
        let greeting = match vfs::read_to_string("greeting.txt") {
            Ok(text) => text.trim().to_string(),
            Err(vfs::Error::NotFound(_)) => {
                log::debug!("no greeting.txt, using the default");
                "Hello".to_string()
            }
            Err(e) => return Err(format!("cannot read greeting.txt: {e}")),
        };
        log::info!("greeting {name} from {} in ring {}", me.agent_id, me.ring);
        println!("hello says hi on stdout");
        Ok(format!(
            "{greeting}, {name}! (agent {}, ring {})",
            me.agent_id, me.ring
        ))
    }
}

export_agent!(Hello);
